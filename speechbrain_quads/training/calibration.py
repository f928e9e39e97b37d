"""Calibration for a Brain's codebooks: weight sensitivities from training recordings and the
per-tensor widths of a size target, kept in the experiment folder so a resumed run rebuilds the
same codebook shapes before its checkpoint is loaded."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from torch.utils.data import DataLoader

from speechbrain_quads.codebook.allocation import CANDIDATE_BITS, allocation_for_target
from speechbrain_quads.codebook.quantization import CodebookQuantizer
from speechbrain_quads.codebook.sensitivity import squared_gradients
from speechbrain_quads.training.experiment import write_text_atomic


def brain_sensitivity(brain: sb.Brain, quantizer: CodebookQuantizer, dataset,
                      samples: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Squared gradients of the Brain's own validation loss over ``samples`` shuffled
    recordings of ``dataset`` (one per batch, modules in eval mode, on the Brain's device).
    Every parameter's gradient is cleared afterwards and the Brain's tally reset."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=1, shuffle=True, generator=generator,
                        collate_fn=PaddedBatch)

    def loss_of(batch) -> torch.Tensor:
        predictions = brain.compute_forward(batch, sb.Stage.VALID)
        return brain.compute_objectives(predictions, batch, sb.Stage.VALID)

    brain.modules.eval()
    try:
        return squared_gradients(quantizer, loss_of, itertools.islice(loader, samples))
    finally:
        brain.modules.train()
        for parameter in brain.modules.parameters():  # no calibration gradient reaches a step
            parameter.grad = None
        tally = getattr(brain, "tally", None)
        if tally is not None:
            tally.reset()


def load_or_allocate_widths(path: Path, quantizer: CodebookQuantizer, target_mb: float,
                            sensitivity: Callable[[], dict[str, torch.Tensor]],
                            candidate_bits: Sequence[int] = CANDIDATE_BITS) -> dict[str, int]:
    """The widths stored in ``path`` for ``target_mb`` and ``candidate_bits``, or new ones
    (``allocation_for_target`` on ``sensitivity()``) written there atomically.

    Raises:
        ValueError: ``path`` holds widths for another target, other candidate widths or other
            modules (named).
    """
    path = Path(path)
    candidates = sorted(int(bits) for bits in candidate_bits)
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        stored_candidates = stored.get("candidate_bits", sorted(CANDIDATE_BITS))
        if stored.get("target_mb") != target_mb or stored_candidates != candidates or set(
                stored.get("widths", {})) != set(quantizer.modules):
            raise ValueError(f"{path}: widths for target_mb {stored.get('target_mb')} from "
                             f"{stored_candidates} bits and {len(stored.get('widths', {}))} "
                             f"modules, but this run has target_mb {target_mb} from "
                             f"{candidates} bits and {len(quantizer.modules)} modules; "
                             "use another output folder")
        return {name: int(bits) for name, bits in stored["widths"].items()}
    widths = allocation_for_target(quantizer, sensitivity(), target_mb, candidates)
    write_text_atomic(path, json.dumps({"target_mb": target_mb, "candidate_bits": candidates,
                                        "widths": widths}, indent=1) + "\n")
    return widths
