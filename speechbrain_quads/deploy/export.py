"""The exported model folder: ``model.safetensors`` (packed b-bit codebooks when quantized, plain
float32 otherwise) and ``config.json`` (labels, front-end and Whisper settings), written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from speechbrain_quads.codebook.packing import export_packed

MODEL_FORMAT = "speechbrain-quads-model"
FLOAT_FORMAT = "float32"  # header ``format`` of an unquantized export's model.safetensors
PARAMETRIZED = ".parametrizations.weight."


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under plain names: a quantizer's latent weight becomes ``weight`` and its
    codebook tensors are dropped (for exporting a model whose quantizer is off)."""
    state = {}
    for key, value in model.state_dict().items():
        if PARAMETRIZED + "original" in key:
            key = key.replace(PARAMETRIZED + "original", ".weight")
        elif PARAMETRIZED in key:
            continue
        state[key] = value.detach().contiguous().cpu()
    return state


def _atomic_folder(final: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp_dir)`` and rename the result to ``final`` (replacing it)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_model(brain, hparams: dict, labels: list[str], folder: Path) -> dict:
    """Write ``model.safetensors`` (packed when quantized) + ``config.json``; returns sizes."""
    quantizer = getattr(brain, "quantizer", None)
    quantized = quantizer is not None and quantizer.mode != "off"
    student = brain.deployable["student"]
    config = {
        "format": MODEL_FORMAT, "version": 1, "labels": labels,
        "bits": hparams["bits"] if quantized else 32, "pad_to_30s": student.pad_to_30s,
        "sampling_rate": student.frontend.sampling_rate, "student_size": student.output_size,
        "whisper_config": student.encoder.config.to_dict(),
    }
    sizes: dict = {}

    def write(tmp: Path) -> None:
        if quantized:
            sizes.update(export_packed(brain.deployable, tmp / "model.safetensors").as_dict())
        else:
            state = plain_state_dict(brain.deployable)
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": FLOAT_FORMAT})
            params = sum(v.numel() for v in state.values())
            size = (tmp / "model.safetensors").stat().st_size
            sizes.update({"packed_bytes": size, "fp32_bytes": params * 4, "total_params": params,
                          "packed_mb": size / 2**20, "fp32_mb": params * 4 / 2**20, "bits": 32})
        (tmp / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")

    _atomic_folder(folder, write)
    return sizes


