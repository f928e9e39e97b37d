#!/usr/bin/env python3
"""QUADS on SLURP: distil and quantize a Whisper intent classifier.

    python train.py hparams/slurp_4bit.yaml --data_folder=/path/to/slurp

Writes into the output folder: train_log.txt, test_metrics.json (intent accuracy, macro-F1,
scenario and action accuracy), predictions.jsonl (official SLURP evaluation format), model/
(packed export) and summary.json (sizes and GMACs).
"""

import sys

import speechbrain as sb
from prepare import prepare_slurp

from speechbrain_quads.evaluation.metrics import accuracy
from speechbrain_quads.experiment import run_experiment, split_intent


def prediction_line(entry: dict, intent: str) -> dict:
    """One line of SLURP's official predictions format (intent only: no entities)."""
    scenario, action = split_intent(intent)
    return {"file": entry["file"], "scenario": scenario, "action": action, "entities": []}


def scenario_action_accuracy(predicted: list[str], truth: list[str]) -> dict:
    """Scenario and action accuracy, as SLURP's evaluator reports them."""
    pairs = [(split_intent(p), split_intent(t)) for p, t in zip(predicted, truth, strict=True)]
    return {"scenario_accuracy": accuracy([p[0] for p, _ in pairs], [t[0] for _, t in pairs]),
            "action_accuracy": accuracy([p[1] for p, _ in pairs], [t[1] for _, t in pairs])}


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    run_experiment(hparams_file, run_opts, overrides, prepare_slurp,
                   ("data_folder", "manifest_folder", "audio_folder", "train_splits", "skip_prep"),
                   prediction_line, scenario_action_accuracy)
