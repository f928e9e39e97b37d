"""Student forward time on a batch of 3-s utterances: variable length vs 30-s padding, one run.

    python benchmarks/student_forward.py [--batch 16] [--seconds 3] [--repeats 5] [--json OUT.json]

Uses the offline Whisper tiny.en weights and synthesized speech when the ``demo`` extra is
installed (random noise of the same length otherwise: the timing does not depend on the content).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from speechbrain_quads.models.pretrained import convert  # noqa: E402
from speechbrain_quads.models.whisper import WhisperStudent  # noqa: E402


def speech_batch(batch: int, seconds: float) -> tuple[torch.Tensor, str]:
    """(batch, seconds * 16000) waveforms: synthesized speech looped/cut to length, or noise."""
    samples = int(seconds * 16000)
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from speech import synthesize_clips

        texts = ["turn on the lights in the kitchen please", "what is the weather tomorrow",
                 "set an alarm for seven in the morning", "play some jazz music"]
        clips = synthesize_clips([texts[i % len(texts)] for i in range(batch)], seed=1)
        rows = [clip.repeat(samples // clip.shape[0] + 1)[:samples] for clip in clips]
        return torch.stack(rows), "synthesized speech"
    except ImportError:
        return 0.05 * torch.randn(batch, samples), "noise (demo extra not installed)"


def time_forward(student: WhisperStudent, wavs: torch.Tensor, repeats: int) -> float:
    """Median seconds of one no-grad forward over ``repeats`` runs after one warm-up."""
    lens = torch.ones(wavs.shape[0])
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            student(wavs, lens)
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    wavs, content = speech_batch(args.batch, args.seconds)
    student = WhisperStudent(str(convert("tiny.en"))).eval()
    results = {"model": "whisper tiny.en encoder", "batch": args.batch,
               "seconds_per_utterance": args.seconds, "content": content,
               "threads": torch.get_num_threads()}
    for mode, pad in (("variable_length", False), ("pad_to_30s", True)):
        student.frontend.pad_to_30s = student.pad_to_30s = pad
        results[f"{mode}_seconds"] = time_forward(student, wavs, args.repeats)
    speedup = results["pad_to_30s_seconds"] / results["variable_length_seconds"]
    results["speedup_variable_vs_30s"] = speedup
    for key, value in results.items():
        print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
