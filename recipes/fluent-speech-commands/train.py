#!/usr/bin/env python3
"""QUADS on Fluent Speech Commands: distil and quantize a Whisper intent classifier.

    python train.py hparams/fsc_4bit.yaml --data_folder=/path/to/fluent_speech_commands_dataset

Writes into the output folder: train_log.txt, test_metrics.json (intent accuracy, macro-F1),
predictions.jsonl, model/ (packed export) and summary.json (sizes and GMACs).
"""

import sys

import speechbrain as sb
from prepare import prepare_fsc

from speechbrain_quads.experiment import run_experiment


def prediction_line(entry: dict, intent: str) -> dict:
    """One predictions.jsonl line: the audio path and the predicted action, object, location."""
    action, obj, location = intent.split("_", 2)
    return {"file": entry["wav"], "intent": intent, "action": action, "object": obj,
            "location": location}


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    run_experiment(hparams_file, run_opts, overrides, prepare_fsc,
                   ("data_folder", "manifest_folder", "skip_prep"), prediction_line)
