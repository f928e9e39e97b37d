"""What a QUADS recipe writes after testing: metrics, predictions, the exported model, a summary.

Into the output folder: ``test_metrics.json`` (intent accuracy, macro-F1, number of utterances and
any dataset-specific metrics), ``predictions.jsonl`` (one line per test utterance, in the format the
recipe chooses), ``model/`` (the export, see :func:`speechbrain_quads.deploy.export.export_model`)
and ``summary.json`` (metrics, sizes and GMACs).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from speechbrain_quads.deploy.export import export_model
from speechbrain_quads.evaluation.metrics import accuracy, macro_f1
from speechbrain_quads.evaluation.profiling import compute_summary
from speechbrain_quads.training.experiment import write_text_atomic


def write_test_outputs(brain, hparams: dict, labels: list[str], test_rows: dict[str, dict],
                       prediction_line: Callable[[str, dict, str], dict],
                       extra_metrics: Callable[[list[str], list[str]], dict] | None = None
                       ) -> dict:
    """Write the test outputs of a fitted and evaluated ``brain``; returns the metrics.

    Arguments
    ---------
    brain : DistillationBrain
        After ``evaluate``: ``predicted``/``targets`` (label indices) and ``predicted_ids``.
    hparams : dict
        The recipe hparams (``output_folder``, ``bits``).
    labels : list of str
        Label index -> intent.
    test_rows : dict
        The test manifest rows by ID (``duration`` in seconds, ``wav``, ...).
    prediction_line : callable
        ``(ID, row, predicted intent) -> dict``: one line of ``predictions.jsonl``.
    extra_metrics : callable, optional
        ``(predicted intents, true intents) -> dict`` of dataset-specific metrics.
    """
    output = Path(hparams["output_folder"])
    predicted = [labels[i] for i in brain.predicted]
    truth = [labels[i] for i in brain.targets]
    metrics = {"intent_accuracy": accuracy(predicted, truth),
               "macro_f1": macro_f1(predicted, truth), "utterances": len(truth)}
    if extra_metrics is not None:
        metrics.update(extra_metrics(predicted, truth))
    lines = [json.dumps(prediction_line(utt_id, test_rows[utt_id], intent))
             for utt_id, intent in zip(brain.predicted_ids, predicted, strict=True)]
    write_text_atomic(output / "predictions.jsonl", "".join(line + "\n" for line in lines))
    sizes = export_model(brain, labels, output / "model")
    durations = [float(row["duration"]) for row in test_rows.values()]
    summary = {"metrics": metrics, "size": sizes, "compute": compute_summary(brain, hparams,
                                                                             durations)}
    write_text_atomic(output / "test_metrics.json", json.dumps(metrics, indent=1) + "\n")
    write_text_atomic(output / "summary.json", json.dumps(summary, indent=1) + "\n")
    return metrics


def copy_beside_the_script(source: str | Path, output_folder: str | Path) -> None:
    """Copy ``source`` (e.g. the recipe's ``prepare.py``, followed through its link) into
    ``output_folder``, next to the ``train.py`` SpeechBrain copied there, so the folder re-runs
    alone; nothing to do when it already is that file (a re-run from a copy of the folder)."""
    source = Path(source).resolve()
    target = Path(output_folder) / source.name
    if not target.exists() or not target.samefile(source):
        shutil.copyfile(source, target)
