#!/usr/bin/env python3
"""CPU latency of one utterance (batch 1) through each model, variable length vs 30-s padding.

    python benchmarks/latency.py [--model EXPORT_DIR] [--seconds 1 3 10] [--repeats 7]
                                 [--threads 1 2] [--json OUT.json] [--markdown OUT.md]

Models, all measured in the same process, each one's forwards back to back (see
:func:`measure`):

- ``quads``: an exported QUADS model loaded through ``QuadsIntentClassifier`` (``--model``; by
  default a 4-bit export made here: the offline tiny.en student + a 12-intent head, clustered
  with ``quantize_`` and written by ``export_model``; weight values do not change the timing).
- ``fp_student``: the full-precision Whisper tiny.en student + head, called directly.
- ``teacher``: the Whisper base encoder (``WhisperTeacher``; no head).
- ``dynamic_int8``: ``torch.ao.quantization.quantize_dynamic`` of the fp student's Linear
  layers (int8), SpeechBrain's quantization-tutorial method.
- ``ort_fp32``: the fp student exported with ``speechbrain_quads.deploy.onnx_export`` (float32
  weights), on onnxruntime with all graph optimisations.
- ``ort_quads``: the QUADS export's ONNX file (codebook weights, rebuilt once at session start by
  constant folding; float32 compute).
- ``ort_quads_int8``: the same file, weights re-quantized per channel to int8 at load
  (``OnnxIntentClassifier(compute="int8")``).

The ONNX graphs are exported once per input mode (``pad_to_30s`` false / true). Each latency is the
median of ``--repeats`` timed forwards after one warm-up, under ``torch.no_grad()``, with each
``--threads`` value as torch's and onnxruntime's intra-op threads in turn. ``int8_vs_float``
compares the two onnxruntime paths of the QUADS model on synthesized clips (``accuracy`` only
means something for the default export, whose head holds one prototype per sentence).
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

import numpy as np
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from speech import synthesize_clips  # noqa: E402
from student_forward import speech_batch  # noqa: E402

from speechbrain_quads.codebook.quantization import QuantizationConfig, quantize_  # noqa: E402
from speechbrain_quads.deploy.export import export_model  # noqa: E402
from speechbrain_quads.deploy.inference import QuadsIntentClassifier, load_export  # noqa: E402
from speechbrain_quads.deploy.onnx_export import build_graph  # noqa: E402
from speechbrain_quads.deploy.onnx_runtime import OnnxIntentClassifier  # noqa: E402
from speechbrain_quads.models.heads import IntentClassifier  # noqa: E402
from speechbrain_quads.models.pretrained import convert  # noqa: E402
from speechbrain_quads.models.whisper import WhisperStudent, WhisperTeacher  # noqa: E402
from speechbrain_quads.training.experiment import write_text_atomic  # noqa: E402

MODES = {"variable": False, "pad_30s": True}
"""Input modes: name -> ``pad_to_30s``."""
SENTENCES = ["turn on the lights in the kitchen", "what is the weather like tomorrow",
             "set an alarm for seven in the morning", "play some jazz music", "stop the music",
             "how long is my commute today", "order a large pizza", "call my mother",
             "remind me to buy milk", "what time is it in tokyo", "turn the volume down",
             "read me the latest news"]
"""One intent per sentence: the default export's head holds one prototype each."""


def make_export(folder: Path, bits: int = 4) -> Path:
    """Write a ``bits``-bit QUADS export of the offline tiny.en student + a head whose class i is
    the (centred, scaled) pooled encoding of sentence i spoken with seed 0."""
    student = WhisperStudent(str(convert("tiny.en"))).eval()
    head = IntentClassifier(384, len(SENTENCES))
    with torch.no_grad():
        pooled = torch.cat([student(clip[None])[0][-1].mean(dim=1)
                            for clip in synthesize_clips(SENTENCES, seed=0)])
        centred = pooled - pooled.mean(dim=0)
        head.linear.weight.copy_(10.0 * centred / centred.norm(dim=1, keepdim=True))
        head.linear.bias.zero_()
    model = nn.ModuleDict({"student": student, "classifier": head})
    quantizer = quantize_(model, QuantizationConfig(bits=bits))
    labels = [f"intent_{i}" for i in range(len(SENTENCES))]
    export_model(SimpleNamespace(deployable=model, quantizer=quantizer), labels, folder)
    return folder


def write_onnx(folder: Path, pad_to_30s: bool, out: Path) -> Path:
    """The ONNX graph of export ``folder`` in input mode ``pad_to_30s``, written to ``out``."""
    model, config = load_export(folder)
    graph = build_graph(model.eval(), {**config, "pad_to_30s": pad_to_30s}, folder / "model.safetensors")
    out.write_bytes(graph.SerializeToString())
    return out


def set_mode(encoder: nn.Module, pad_to_30s: bool) -> None:
    """Switch a WhisperStudent/WhisperTeacher between variable length and 30-s padding."""
    encoder.pad_to_30s = encoder.frontend.pad_to_30s = pad_to_30s



def build_models(export: Path, work: Path, threads: list[int]) -> tuple[dict, dict, dict]:
    """Torch forwards ``wav (1, T) -> output`` by model name, onnxruntime classifiers by
    ``(name, mode, threads)``, and facts (load times, file sizes, parameter counts)."""
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
    encoders = [quads.mods.student, student, teacher, int8["student"]]
    fp_export = work / "fp_export"
    export_model(SimpleNamespace(deployable=fp), quads.labels, fp_export)
    sessions: dict[tuple[str, str, int], OnnxIntentClassifier] = {}
    facts: dict = {}
    for mode, pad in MODES.items():
        files = {"ort_fp32": write_onnx(fp_export, pad, work / f"fp32_{mode}.onnx"),
                 "ort_quads": write_onnx(export, pad, work / f"quads_{mode}.onnx")}
        for count in threads:
            for name, path in files.items():
                sessions[(name, mode, count)] = OnnxIntentClassifier(path, threads=count)
            start = time.perf_counter()
            sessions[("ort_quads_int8", mode, count)] = OnnxIntentClassifier(
                files["ort_quads"], threads=count, compute="int8")
            facts["ort_quads_int8_load_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        OnnxIntentClassifier(files["ort_quads"], threads=max(threads))
        facts["ort_quads_load_seconds"] = time.perf_counter() - start
        facts["ort_quads_file_mb"] = files["ort_quads"].stat().st_size / 2**20
        facts["ort_fp32_file_mb"] = files["ort_fp32"].stat().st_size / 2**20
    facts.update({"quads_bits": quads.hparams.bits,
                  "quads_load_seconds": load_seconds,
                  "quads_file_mb": (export / "model.safetensors").stat().st_size / 2**20,
                  "student_params": sum(p.numel() for p in fp.parameters()),
                  "teacher_params": sum(p.numel() for p in teacher.parameters())})
    return {"forwards": forwards, "encoders": encoders}, sessions, facts


@torch.no_grad()
def measure(torch_models: dict, sessions: dict, seconds: list[float], threads: list[int],
            repeats: int) -> list[dict]:
    """Median latency (ms) of every model at every length, mode and thread count.

    Each model runs its warm-up and timed forwards back to back, one model after another: with
    2 threads, a thread pool that keeps spinning after a call (onnxruntime's by default) took a
    core from the next model's forward when models were interleaved (a 16-ms torch forward
    took 45 ms right after a 2-thread onnxruntime run)."""
    results = []
    for count in threads:
        torch.set_num_threads(count)
        for length in seconds:
            wav, _ = speech_batch(1, length)
            for mode, pad in MODES.items():
                for encoder in torch_models["encoders"]:
                    set_mode(encoder, pad)
                forwards = dict(torch_models["forwards"])
                for (name, session_mode, session_threads), session in sessions.items():
                    if session_mode == mode and session_threads == count:
                        forwards[name] = lambda w, s=session: s.logits(w.numpy())
                for name, forward in forwards.items():
                    forward(wav)
                    times = []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        forward(wav)
                        times.append(time.perf_counter() - start)
                    results.append({"model": name, "mode": mode, "seconds": length, "threads": count,
                                    "latency_ms": 1000 * statistics.median(times),
                                    "min_ms": 1000 * min(times)})
    return results


def int8_vs_float(sessions: dict, threads: int) -> dict:
    """The QUADS model's two onnxruntime paths (variable length) on the sentences spoken with
    seeds 1 and 2: accuracy (sentence i = class i), label agreement, logit differences."""
    floating, int8 = (sessions[(name, "variable", threads)] for name in ("ort_quads", "ort_quads_int8"))
    clips = [clip.numpy() for seed in (1, 2) for clip in synthesize_clips(SENTENCES, seed=seed)]
    truth = np.arange(len(clips)) % len(SENTENCES)
    a = np.concatenate([floating.logits(clip) for clip in clips])
    b = np.concatenate([int8.logits(clip) for clip in clips])
    return {"clips": len(clips), "audio": "synthesized (tests/speech.py, eSpeak NG), seeds 1-2",
            "float_accuracy": float((a.argmax(1) == truth).mean()),
            "int8_accuracy": float((b.argmax(1) == truth).mean()),
            "label_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(a - b).max()),
            "max_abs_logit": float(np.abs(a).max())}


def ratios(results: list[dict]) -> list[dict]:
    """Speed ratios within the run, per (mode, seconds, threads): teacher / QUADS, fp / QUADS,
    fp / int8, torch int8 / each onnxruntime path, QUADS 30-s / variable."""
    table = {(r["model"], r["mode"], r["seconds"], r["threads"]): r["latency_ms"] for r in results}
    out = []
    for (model, mode, length, count), value in table.items():
        if model != "quads":
            continue
        row = {"mode": mode, "seconds": length, "threads": count,
               "teacher_over_quads": table[("teacher", mode, length, count)] / value,
               "fp_over_quads": table[("fp_student", mode, length, count)] / value,
               "fp_over_int8": table[("fp_student", mode, length, count)]
               / table[("dynamic_int8", mode, length, count)],
               "quads_30s_over_variable": table[("quads", "pad_30s", length, count)]
               / table[("quads", "variable", length, count)]}
        for name in ("ort_fp32", "ort_quads", "ort_quads_int8"):
            row[f"int8_over_{name}"] = table[("dynamic_int8", mode, length, count)] / table[
                (name, mode, length, count)]
        out.append(row)
    return out


def markdown(results: list[dict], ratio_rows: list[dict]) -> str:
    """Latency table (ms) with one column per model, and the ratio table."""
    models = list(dict.fromkeys(r["model"] for r in results))
    table = {(r["model"], r["mode"], r["seconds"], r["threads"]): r["latency_ms"] for r in results}
    keys = sorted(dict.fromkeys((r["seconds"], r["mode"] != "variable", r["mode"], r["threads"])
                                for r in results))
    lines = ["| audio (s) | input | threads | " + " | ".join(f"{m} (ms)" for m in models) + " |",
             "|---|---|---|" + "---|" * len(models)]
    for length, _, mode, count in keys:
        cells = " | ".join(f"{table[(m, mode, length, count)]:.1f}" for m in models)
        lines.append(f"| {length:g} | {mode} | {count} | {cells} |")
    lines += ["", "| audio (s) | input | threads | teacher / QUADS | fp / QUADS | fp / int8 | "
              "int8 / ort_fp32 | int8 / ort_quads | int8 / ort_quads_int8 | QUADS 30-s / variable |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(ratio_rows, key=lambda r: (r["seconds"], r["mode"] != "variable", r["threads"])):
        lines.append(f"| {r['seconds']:g} | {r['mode']} | {r['threads']} | "
                     f"{r['teacher_over_quads']:.2f} | {r['fp_over_quads']:.2f} | "
                     f"{r['fp_over_int8']:.2f} | {r['int8_over_ort_fp32']:.2f} | "
                     f"{r['int8_over_ort_quads']:.2f} | {r['int8_over_ort_quads_int8']:.2f} | "
                     f"{r['quads_30s_over_variable']:.2f} |")
    return "\n".join(lines)

def report(output: dict, command: str) -> str:
    """The markdown file: the command, the setting, the latency and ratio tables, int8 vs float."""
    agreement = output["int8_vs_float"]
    return "\n".join([
        "# CPU latency, batch 1", "", "```bash", command, "```", "",
        f"Written by `benchmarks/latency.py` on {output['cpu']} ({output['cores']} cores); "
        f"threads {', '.join(map(str, output['threads']))} (torch and onnxruntime intra-op); "
        f"medians of {output['repeats']} timed forwards after a warm-up, each model's run back "
        f"to back, one model after another, in one process. QUADS: {output['quads_export']} "
        f"({output['quads_bits']} bits, "
        f"{output['quads_file_mb']:.2f} MiB safetensors, {output['ort_quads_file_mb']:.2f} MiB "
        f"ONNX); teacher: the Whisper base encoder alone. onnxruntime "
        f"{output['onnxruntime']}, torch {output['torch']}.", "",
        markdown(output["results"], output["ratios"]), "",
        f"int8 vs float onnxruntime paths of the QUADS model on {agreement['clips']} "
        f"{agreement['audio']} clips: accuracy {100 * agreement['float_accuracy']:.1f} % (float) "
        f"vs {100 * agreement['int8_accuracy']:.1f} % (int8), labels agree on "
        f"{100 * agreement['label_agreement']:.1f} %, max |logit difference| "
        f"{agreement['max_abs_logit_diff']:.3f} (logits up to {agreement['max_abs_logit']:.1f}). "
        f"Session start: {output['ort_quads_load_seconds']:.2f} s (codebook weights rebuilt), "
        f"{output['ort_quads_int8_load_seconds']:.2f} s with int8 re-quantization.", ""])


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> dict:
    """Measure and print; returns the results dict (also written to ``--json`` / ``--markdown``)."""
    import onnxruntime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a QUADS export folder (default: make a 4-bit one here)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        export = args.model or make_export(Path(tmp) / "quads_4bit")
        torch_models, sessions, facts = build_models(export, Path(tmp), args.threads)
        results = measure(torch_models, sessions, args.seconds, args.threads, args.repeats)
        agreement = int8_vs_float(sessions, max(args.threads))
    facts["quads_export"] = str(args.model) if args.model else "4-bit export made by latency.py"
    ratio_rows = ratios(results)
    output = {"threads": args.threads, "batch": 1, "repeats": args.repeats,
              "statistic": "median", "cpu": cpu_name(), "cores": os.cpu_count(),
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, **facts,
              "int8_vs_float": agreement, "results": results, "ratios": ratio_rows}
    print(markdown(results, ratio_rows))
    for key, value in {**facts, **agreement}.items():
        print(f"{key}: {value}")
    if args.json:
        write_text_atomic(args.json, json.dumps(output, indent=1) + "\n")
    if args.markdown:
        command = "python benchmarks/latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_text_atomic(args.markdown, report(output, command.strip()))
    return output


if __name__ == "__main__":
    main()
