#!/usr/bin/env python3
"""Size and compute of the QUADS student against every Whisper encoder: the paper's Table 1.

    python benchmarks/size_and_compute.py [--n-intents 60] [--bits 8 4 2] [--seconds 3]
                                 [--output benchmarks]

Whisper rows (tiny ... large-v3) are encoders built on the meta device from their published
shapes: parameters and 30-s GMACs are counted by torch's FlopCounterMode without weights or
arithmetic. Student rows are the real offline tiny.en student + intent head (the recipes'
default), clustered with ``quantize_`` at each width and serialised in the packed format, so
their sizes are the bytes an export writes. Writes ``size_and_compute.md`` and ``size_and_compute.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from speechbrain_quads.codebook.packing import MB, size_report  # noqa: E402
from speechbrain_quads.codebook.quantization import QuantizationConfig, quantize_  # noqa: E402
from speechbrain_quads.deploy.export import plain_state_dict  # noqa: E402
from speechbrain_quads.evaluation.profiling import (  # noqa: E402
    WHISPER_ENCODERS,
    encoder_profile_on_meta,
    gmacs,
    whisper_encoder_config,
)
from speechbrain_quads.models.heads import IntentClassifier  # noqa: E402
from speechbrain_quads.models.whisper import WhisperStudent  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REFERENCE = "large-v3"
"""The ratios are taken against this Whisper encoder (the paper compares with Whisper-large)."""


def whisper_rows() -> list[dict]:
    """One row per Whisper size: fp32 encoder parameters, size in MiB and 30-s GMACs."""
    rows = []
    for name in WHISPER_ENCODERS:
        profile = encoder_profile_on_meta(whisper_encoder_config(name))
        rows.append({"model": f"Whisper {name} encoder", "bits": 32, "params": profile["params"],
                     "size_mb": profile["params"] * 4 / MB, "paper_mb": profile["params"] * 4 / MB,
                     "gmacs_30s": profile["gmacs_30s"], "gmacs_real": None})
    return rows


def student_rows(n_intents: int, bits_list: list[int], seconds: float) -> list[dict]:
    """The tiny.en student + head at full precision and at each width in ``bits_list``."""
    torch.manual_seed(0)
    student = WhisperStudent("offline:tiny.en").eval()
    head = IntentClassifier(student.output_size, n_intents=n_intents).eval()
    encoder = encoder_profile_on_meta(student.encoder.config)
    real = gmacs(student, seconds, head)
    common = {"gmacs_30s": encoder["gmacs_30s"], "gmacs_real": real}
    model = nn.ModuleDict({"student": student, "classifier": head})
    state = plain_state_dict(model)
    params = sum(v.numel() for v in state.values())
    rows = [{"model": "QUADS student (tiny.en + head), full precision", "bits": 32,
             "params": params, "size_mb": len(save(state)) / MB, "paper_mb": params * 4 / MB,
             **common}]
    for bits in bits_list:
        quantized = nn.ModuleDict({"student": WhisperStudent("offline:tiny.en").eval(),
                                   "classifier": IntentClassifier(student.output_size,
                                                                  n_intents=n_intents)})
        quantize_(quantized, QuantizationConfig(bits=bits))
        report = size_report(quantized)
        rows.append({"model": f"QUADS student, {bits}-bit packed", "bits": bits,
                     "params": report.total_params, "size_mb": report.packed_mb,
                     "paper_mb": report.paper_mb, "bit_arithmetic_mb": report.bit_arithmetic_mb,
                     **common})
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Size and compute ratios of every row against :data:`REFERENCE`."""
    reference = next(row for row in rows if row["model"] == f"Whisper {REFERENCE} encoder")
    for row in rows:
        row["size_ratio"] = reference["size_mb"] / row["size_mb"]
        row["compute_ratio"] = reference["gmacs_30s"] / row["gmacs_30s"]


def markdown(rows: list[dict], seconds: float, argv_line: str) -> str:
    """The Table-1 style markdown."""
    lines = [
        "# Size and compute: the QUADS student against Whisper (the paper's Table 1)", "",
        "```bash", argv_line, "```", "",
        f"| model | params (M) | bits | size (MB) | params x bits (MB) | GMACs (30 s) | "
        f"GMACs ({seconds:g} s) | smaller than {REFERENCE} | fewer GMACs than {REFERENCE} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        real = f"{row['gmacs_real']:.2f}" if row["gmacs_real"] is not None else "-"
        lines.append(
            f"| {row['model']} | {row['params'] / 1e6:.2f} | {row['bits']} | {row['size_mb']:.2f} "
            f"| {row['paper_mb']:.2f} | {row['gmacs_30s']:.2f} | {real} "
            f"| {row['size_ratio']:.1f}x | {row['compute_ratio']:.1f}x |")
    lines += [
        "",
        "- Whisper rows: fp32 encoder parameters (positional table included) x 4 bytes; GMACs of "
        "the encoder on Whisper's 30-s window (1500 frames), counted by FlopCounterMode on the "
        "meta device (no weights needed; the log-mel FFT front end is not counted).",
        "- Student rows: Whisper tiny.en (all 4 layers) + a linear intent head. Size: the bytes "
        "the packed export writes (indices, float32 codebooks, biases and norms, header; the "
        "positional table is rebuilt at load, not stored); params x bits: the paper's "
        "convention (every parameter at b bits). GMACs (30 s): encoder only, like the Whisper "
        f"rows; GMACs ({seconds:g} s): the whole model (log-mel matmul, encoder, head) on a "
        f"{seconds:g}-s utterance with variable-length input, the recipes' default.",
        "- MB = MiB (2^20 bytes), the paper's convention.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """Profile, print and write ``size_and_compute.md`` / ``size_and_compute.json``; returns the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-intents", type=int, default=60,
                        help="classes of the head (its 385 x n weights change sizes by KBs)")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2])
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="utterance length for the variable-length GMACs column")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    rows = whisper_rows() + student_rows(args.n_intents, args.bits, args.seconds)
    add_ratios(rows)
    command = " ".join(["python benchmarks/size_and_compute.py", *argv])
    text = markdown(rows, args.seconds, command)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "size_and_compute.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.output / "size_and_compute.md").write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
