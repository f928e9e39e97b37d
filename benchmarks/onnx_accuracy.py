#!/usr/bin/env python3
"""Accuracy of an exported model's ONNX paths (float and int8 compute) against PyTorch, on a test
split written by the SLURP recipe's preparation.

    python benchmarks/onnx_accuracy.py MODEL_DIR TEST_CSV [--json benchmarks/onnx_accuracy.json]

``MODEL_DIR`` is an export folder (``model.safetensors`` + ``config.json``); ``TEST_CSV`` is a
``test-type=direct.csv`` (columns ``ID, duration, wav, semantics, transcript``). The model is
exported to ONNX (:func:`speechbrain_quads.deploy.onnx_export.export_onnx`) and every recording is
classified by ``QuadsIntentClassifier`` (PyTorch), by onnxruntime in float32 and by onnxruntime
with int8 compute. Each path gets its accuracy with an exact 95% interval; the ONNX paths are
compared with PyTorch by an exact McNemar test on the same recordings, and label agreement and the
largest logit difference are reported. One thread each; the JSON is written atomically.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from speechbrain_quads.deploy.inference import QuadsIntentClassifier  # noqa: E402
from speechbrain_quads.deploy.onnx_export import export_onnx  # noqa: E402
from speechbrain_quads.deploy.onnx_runtime import OnnxIntentClassifier  # noqa: E402
from speechbrain_quads.evaluation.stats import clopper_pearson, compare  # noqa: E402


def read_test_csv(path: Path) -> list[tuple[str, str, str]]:
    """``(ID, wav, intent)`` per row of a SLURP test CSV (intent = scenario_action)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            fields = ast.literal_eval(row["semantics"].replace("|", ","))
            rows.append((row["ID"], row["wav"], f"{fields['scenario']}_{fields['action']}"))
    return rows


def summary(correct: dict[str, int]) -> dict:
    """Accuracy and its exact 95% interval of ``{ID: 0/1}``."""
    hits, total = sum(correct.values()), len(correct)
    return {"accuracy": hits / total, "ci95": list(clopper_pearson(hits, total)), "n": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("test_csv", type=Path)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/onnx_accuracy.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = read_test_csv(args.test_csv)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        exported = export_onnx(args.model_dir, onnx_path)
        reference = QuadsIntentClassifier.from_hparams(source=str(args.model_dir))
        paths = {"onnx_float": OnnxIntentClassifier(onnx_path, threads=1),
                 "onnx_int8": OnnxIntentClassifier(onnx_path, threads=1, compute="int8")}
        correct: dict[str, dict[str, int]] = {"torch": {}, "onnx_float": {}, "onnx_int8": {}}
        logits: dict[str, list[np.ndarray]] = {name: [] for name in correct}
        for utt_id, wav, intent in rows:
            out_prob, _, _, text_lab = reference.classify_file(wav)
            correct["torch"][utt_id] = int(text_lab[0] == intent)
            logits["torch"].append(out_prob.detach().numpy().reshape(-1))
            for name, classifier in paths.items():
                scores = classifier.logits(classifier.read_audio(wav)).reshape(-1)
                correct[name][utt_id] = int(classifier.labels[int(scores.argmax())] == intent)
                logits[name].append(scores)
    result = {"model_dir": str(args.model_dir), "test_csv": str(args.test_csv),
              "bits": exported["bits"], "bit_widths": exported["bit_widths"],
              "recordings": len(rows), "threads": 1,
              "paths": {name: summary(values) for name, values in correct.items()},
              "comparisons": [], "label_agreement_with_torch": {}, "max_abs_logit_diff": {}}
    torch_labels = np.array([v.argmax() for v in logits["torch"]])
    for name in paths:
        result["comparisons"].append({"a": name, "b": "torch",
                                      **compare(correct[name], correct["torch"]).as_dict()})
        labels = np.array([v.argmax() for v in logits[name]])
        result["label_agreement_with_torch"][name] = float((labels == torch_labels).mean())
    float_logits, int8_logits = (np.stack(logits[n]) for n in ("onnx_float", "onnx_int8"))
    result["max_abs_logit_diff"]["int8_vs_float"] = float(np.abs(int8_logits - float_logits).max())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(f".{args.json.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, args.json)
    for name, values in result["paths"].items():
        low, high = values["ci95"]
        print(f"{name:11s} {100 * values['accuracy']:6.2f} % [{100 * low:.1f}, {100 * high:.1f}]"
              f" on {values['n']} recordings")
    for comparison in result["comparisons"]:
        print(f"{comparison['a']} vs {comparison['b']}: exact McNemar p = "
              f"{comparison['p_value']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
