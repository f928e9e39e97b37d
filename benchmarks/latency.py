#!/usr/bin/env python3
"""CPU latency of one utterance (batch 1) through each model, variable length vs 30-s padding.

    python benchmarks/latency.py [--model EXPORT_DIR] [--seconds 1 3 10] [--repeats 7]
                                 [--threads 2] [--json OUT.json]

Models, all measured in the same process, interleaved per input so that machine load affects
them alike:

- ``quads``: an exported QUADS model loaded through ``QuadsIntentClassifier`` (``--model``; by
  default a 4-bit export made here: the offline tiny.en student + a 12-intent head, clustered
  with ``quantize_`` and written by ``export_model``; weight values do not change the timing).
- ``fp_student``: the full-precision Whisper tiny.en student + head, called directly.
- ``teacher``: the Whisper base encoder (``WhisperTeacher``; no head).
- ``dynamic_int8``: ``torch.ao.quantization.quantize_dynamic`` of the fp student's Linear
  layers (int8), SpeechBrain's quantization-tutorial method.

Each latency is the median of ``--repeats`` timed forwards after one warm-up, under
``torch.no_grad()`` with ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from student_forward import speech_batch  # noqa: E402

from speechbrain_quads.codebook.quantization import QuantizationConfig, quantize_  # noqa: E402
from speechbrain_quads.deploy.export import export_model  # noqa: E402
from speechbrain_quads.deploy.inference import QuadsIntentClassifier  # noqa: E402
from speechbrain_quads.models.heads import IntentClassifier  # noqa: E402
from speechbrain_quads.models.pretrained import convert  # noqa: E402
from speechbrain_quads.models.whisper import WhisperStudent, WhisperTeacher  # noqa: E402

MODES = {"variable": False, "pad_30s": True}
"""Input modes: name -> ``pad_to_30s``."""


def make_export(folder: Path, bits: int = 4, n_intents: int = 12) -> Path:
    """Write a ``bits``-bit QUADS export of the offline tiny.en student + a random head."""
    model = nn.ModuleDict({"student": WhisperStudent(str(convert("tiny.en"))),
                           "classifier": IntentClassifier(384, n_intents)})
    quantizer = quantize_(model, QuantizationConfig(bits=bits))
    labels = [f"intent_{i}" for i in range(n_intents)]
    export_model(SimpleNamespace(deployable=model, quantizer=quantizer), {"bits": bits}, labels,
                 folder)
    return folder


def set_mode(encoder: nn.Module, pad_to_30s: bool) -> None:
    """Switch a WhisperStudent/WhisperTeacher between variable length and 30-s padding."""
    encoder.pad_to_30s = encoder.frontend.pad_to_30s = pad_to_30s


def build_models(export: Path) -> tuple[dict[str, Callable], dict[str, nn.Module], dict]:
    """Forward callables ``wav (1, T) -> output`` by model name, the encoder whose input mode
    each one uses, and facts about them (load time of the export, parameter counts)."""
    start = time.perf_counter()
    quads = QuadsIntentClassifier.from_hparams(str(export), run_opts={"device": "cpu"})
    load_seconds = time.perf_counter() - start
    n_intents = len(quads.labels)
    student = WhisperStudent(str(convert("tiny.en"))).eval()
    head = IntentClassifier(student.output_size, n_intents).eval()
    fp = nn.ModuleDict({"student": student, "classifier": head}).eval()
    int8 = torch.ao.quantization.quantize_dynamic(
        nn.ModuleDict({"student": WhisperStudent(str(convert("tiny.en"))),
                       "classifier": IntentClassifier(student.output_size, n_intents)}).eval(),
        {nn.Linear}, dtype=torch.qint8)
    teacher = WhisperTeacher(str(convert("base"))).eval()

    def head_forward(model: nn.Module) -> Callable:
        def forward(wav: torch.Tensor) -> torch.Tensor:
            hidden, lens = model["student"](wav)
            return model["classifier"](hidden[-1], lens)
        return forward

    forwards = {"quads": quads.compute_logits, "fp_student": head_forward(fp),
                "teacher": lambda wav: teacher(wav), "dynamic_int8": head_forward(int8)}
    encoders = {"quads": quads.mods.student, "fp_student": student, "teacher": teacher,
                "dynamic_int8": int8["student"]}
    facts = {"quads_bits": quads.hparams.bits,
             "quads_load_seconds": load_seconds,
             "quads_file_mb": (export / "model.safetensors").stat().st_size / 2**20,
             "student_params": sum(p.numel() for p in fp.parameters()),
             "teacher_params": sum(p.numel() for p in teacher.parameters())}
    return forwards, encoders, facts


@torch.no_grad()
def measure(forwards: dict[str, Callable], encoders: dict[str, nn.Module], seconds: list[float],
            repeats: int) -> list[dict]:
    """Median latency (ms) of every model at every length and mode; timings interleave models."""
    results = []
    for length in seconds:
        wav, _ = speech_batch(1, length)
        for mode, pad in MODES.items():
            for encoder in encoders.values():
                set_mode(encoder, pad)
            times: dict[str, list[float]] = {name: [] for name in forwards}
            for repeat in range(repeats + 1):
                for name, forward in forwards.items():
                    start = time.perf_counter()
                    forward(wav)
                    if repeat:
                        times[name].append(time.perf_counter() - start)
            for name, values in times.items():
                results.append({"model": name, "mode": mode, "seconds": length,
                                "latency_ms": 1000 * statistics.median(values),
                                "min_ms": 1000 * min(values)})
    return results


def ratios(results: list[dict]) -> list[dict]:
    """Speed ratios within the run: teacher / QUADS, fp / QUADS, fp / int8, 30-s / variable."""
    table = {(r["model"], r["mode"], r["seconds"]): r["latency_ms"] for r in results}
    out = []
    for (model, mode, length), value in table.items():
        if model != "quads":
            continue
        out.append({"mode": mode, "seconds": length,
                    "teacher_over_quads": table[("teacher", mode, length)] / value,
                    "fp_over_quads": table[("fp_student", mode, length)] / value,
                    "fp_over_int8": table[("fp_student", mode, length)]
                    / table[("dynamic_int8", mode, length)],
                    "quads_30s_over_variable": table[("quads", "pad_30s", length)]
                    / table[("quads", "variable", length)]})
    return out


def markdown(results: list[dict], ratio_rows: list[dict]) -> str:
    """Latency table (ms) with one column per model, and the ratio table."""
    models = list(dict.fromkeys(r["model"] for r in results))
    table = {(r["model"], r["mode"], r["seconds"]): r["latency_ms"] for r in results}
    keys = list(dict.fromkeys((r["seconds"], r["mode"]) for r in results))
    lines = ["| audio (s) | input | " + " | ".join(f"{m} (ms)" for m in models) + " |",
             "|---|---|" + "---|" * len(models)]
    for length, mode in keys:
        cells = " | ".join(f"{table[(m, mode, length)]:.1f}" for m in models)
        lines.append(f"| {length:g} | {mode} | {cells} |")
    lines += ["", "| audio (s) | input | teacher / QUADS | fp / QUADS | fp / int8 | "
              "QUADS 30-s / variable |", "|---|---|---|---|---|---|"]
    for r in ratio_rows:
        lines.append(f"| {r['seconds']:g} | {r['mode']} | {r['teacher_over_quads']:.2f} | "
                     f"{r['fp_over_quads']:.2f} | {r['fp_over_int8']:.2f} | "
                     f"{r['quads_30s_over_variable']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Measure and print; returns the results dict (also written to ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a QUADS export folder (default: make a 4-bit one here)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        export = args.model or make_export(Path(tmp) / "quads_4bit")
        forwards, encoders, facts = build_models(export)
        results = measure(forwards, encoders, args.seconds, args.repeats)
    facts["quads_export"] = str(args.model) if args.model else "4-bit export made by latency.py"
    ratio_rows = ratios(results)
    output = {"threads": torch.get_num_threads(), "batch": 1, "repeats": args.repeats,
              "statistic": "median", **facts, "results": results, "ratios": ratio_rows}
    print(markdown(results, ratio_rows))
    for key, value in facts.items():
        print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(output, indent=1) + "\n")
    return output


if __name__ == "__main__":
    main()
