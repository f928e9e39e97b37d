"""Training epoch times, measured in one run on this machine.

    python benchmarks/training.py [--seeds 4] [--rounds 3] [--json OUT.json]

On a synthesized 4-intent corpus (8 phrases x ``--seeds`` speaker variations), with the tests'
tiny experiment (teacher Whisper base, student Whisper tiny.en with 1 layer, 4 bits), it times
one training epoch (no validation) of:

- distillation without the teacher cache (the teacher runs every epoch),
- distillation with a warm teacher cache (every round after the first, which fills it),
- quantization (codebooks in the loop; its first epoch includes clustering, as every
  quantization phase's first epoch does).

The three run in turn for ``--rounds`` rounds and each figure is a median, so load from other
processes affects them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from training_setup import make_brain, make_dataset, write_corpus  # noqa: E402

from speechbrain_quads.models.pretrained import convert  # noqa: E402


def epoch_seconds(output: Path, data, overrides: dict) -> float:
    """Seconds of the training epoch (no validation) of a one-epoch run with ``overrides``."""
    brain, hparams = make_brain(output, str(convert("tiny.en")), str(convert("base")), overrides)
    times = []
    fit_train = brain._fit_train

    def timed(*args, **kwargs):
        start = time.perf_counter()
        fit_train(*args, **kwargs)
        times.append(time.perf_counter() - start)

    brain._fit_train = timed
    brain.fit(hparams["epoch_counter"], data, None,
              train_loader_kwargs=hparams["dataloader_options"], progressbar=False)
    return times[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="speaker variations per phrase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    distill = {"strategy": "distill_only", "mct_iterations": 1, "distill_epochs": 1,
               "quant_epochs": 0, "final_quant_epochs": 0}
    quant = {"strategy": "quant_only", "mct_iterations": 0, "final_quant_epochs": 1}
    cached, uncached, quantized = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, _ = make_dataset(write_corpus(root / "corpus", seeds=tuple(range(args.seeds))))
        shared_cache = str(root / "teacher_cache")
        for r in range(args.rounds):
            cached.append(epoch_seconds(root / f"cached{r}", data,
                                        {**distill, "teacher_cache_dir": shared_cache}))
            uncached.append(epoch_seconds(root / f"uncached{r}", data,
                                          {**distill, "teacher_cache": None}))
            quantized.append(epoch_seconds(root / f"quant{r}", data, quant))
    warm = statistics.median(cached[1:])
    results = {
        "utterances": len(data),
        "rounds": args.rounds,
        "distill_epoch_seconds_no_cache": statistics.median(uncached),
        "distill_epoch_seconds_cache_cold": cached[0],
        "distill_epoch_seconds_cache_warm": warm,
        "cache_speedup": statistics.median(uncached) / warm,
        "quant_epoch_seconds": statistics.median(quantized),
        "quant_vs_full_precision_epoch_ratio": statistics.median(quantized) / warm,
    }
    for key, value in results.items():
        print(f"{key:38s} {value:.3f}" if isinstance(value, float) else f"{key:38s} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
