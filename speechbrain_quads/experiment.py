"""Temporary home of what the recipes' train.py will hold (data pipeline, experiment driver)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import ruamel.yaml
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import run_on_main

from speechbrain_quads.deploy.export import export_model
from speechbrain_quads.evaluation.metrics import accuracy, macro_f1
from speechbrain_quads.evaluation.profiling import compute_summary


def _top_level_keys(path: Path) -> set[str]:
    """Keys an hparams file defines, including those of the files it extends."""
    data = ruamel.yaml.YAML().load(path.read_text(encoding="utf-8")) or {}
    keys = set(data)
    if "extends" in data:
        keys |= _top_level_keys(path.parent / data["extends"])
    return keys - {"extends"}


def load_hparams(path: str | Path, overrides: str | dict | None = None) -> dict:
    """Load a HyperPyYAML file; a top-level ``extends: PARENT.yaml`` loads the parent instead,
    with this file's keys (tags allowed; new keys too) and then ``overrides`` applied on top.

    Arguments
    ---------
    path : str or Path
        The hparams file.
    overrides : str or dict, optional
        Command-line overrides (YAML text, as ``sb.parse_arguments`` returns, or a dict); each
        must name a key of the file or of a file it extends.
    """
    path = Path(path)
    yaml = ruamel.yaml.YAML()
    child = yaml.load(path.read_text(encoding="utf-8")) or {}
    if "extends" not in child:
        with open(path, encoding="utf-8") as handle:
            return load_hyperpyyaml(handle, overrides)
    parent_path = path.parent / child.pop("extends")
    if not parent_path.is_file():
        raise FileNotFoundError(f"{path}: extends {parent_path.name}, which does not exist "
                                f"({parent_path})")
    extra = yaml.load(overrides) if isinstance(overrides, str) and overrides else overrides
    unknown = set(extra or {}) - _top_level_keys(path)
    if unknown:
        raise KeyError(f"override(s) {sorted(unknown)} match no key of {path} or the files it "
                       "extends")
    for key, value in (extra or {}).items():
        child[key] = value
    text = io.StringIO()
    yaml.dump(child, text)
    return _load_extended(parent_path, text.getvalue())


def _load_extended(path: Path, overrides: str) -> dict:
    """Load ``path`` (following its own ``extends``) with already-validated ``overrides``."""
    yaml = ruamel.yaml.YAML()
    data = yaml.load(path.read_text(encoding="utf-8")) or {}
    if "extends" in data:
        parent_path = path.parent / data.pop("extends")
        for key, value in (yaml.load(overrides) or {}).items():
            data[key] = value
        text = io.StringIO()
        yaml.dump(data, text)
        return _load_extended(parent_path, text.getvalue())
    with open(path, encoding="utf-8") as handle:
        return load_hyperpyyaml(handle, overrides, overrides_must_match=False)


def build_datasets(hparams: dict) -> tuple[dict[str, DynamicItemDataset], CategoricalEncoder]:
    """Train/valid/test datasets from the manifests, and the intent encoder (saved for re-use)."""
    folder = Path(hparams["manifest_folder"])
    datasets = {split: DynamicItemDataset.from_json(str(folder / f"{split}.json"))
                for split in ("train", "valid", "test")}
    encoder = CategoricalEncoder()
    encoder.load_or_create(
        path=str(Path(hparams["save_folder"]) / "label_encoder.txt"),
        from_didatasets=[datasets["train"]], output_key="intent")
    for dataset in datasets.values():
        add_intent_pipelines(dataset, encoder)
    if hparams.get("sorting", "random") != "random":
        datasets["train"] = datasets["train"].filtered_sorted(
            sort_key="duration", reverse=hparams["sorting"] == "descending")
    return datasets, encoder


def add_intent_pipelines(dataset: DynamicItemDataset, encoder: CategoricalEncoder) -> None:
    """Make ``dataset`` (entries with ``wav`` and ``intent``) yield ``id``, ``sig`` (the
    waveform) and ``intent_encoded`` (the label index as a (1,) tensor)."""

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return sb.dataio.dataio.read_audio(wav)

    @sb.utils.data_pipeline.takes("intent")
    @sb.utils.data_pipeline.provides("intent_encoded")
    def label_pipeline(intent):
        return encoder.encode_label_torch(intent)

    dataset.add_dynamic_item(audio_pipeline)
    dataset.add_dynamic_item(label_pipeline)
    dataset.set_output_keys(["id", "sig", "intent_encoded"])


def run_experiment(hparams_file: str, run_opts: dict, overrides: str,
                   prepare: Callable[..., None], prepare_keys: tuple[str, ...],
                   prediction_line: Callable[[dict, str], dict],
                   extra_metrics: Callable[[list[str], list[str]], dict] | None = None) -> dict:
    """Run a whole recipe; returns the test metrics.

    Arguments
    ---------
    hparams_file, run_opts, overrides
        What ``sb.parse_arguments`` returns.
    prepare : callable
        The recipe's data preparation; called with the hparams named in ``prepare_keys``.
    prepare_keys : tuple of str
        Hparams keys passed to ``prepare`` as keyword arguments.
    prediction_line : callable
        ``(manifest entry, predicted intent) -> dict``: one line of ``predictions.jsonl``.
    extra_metrics : callable, optional
        ``(predicted intents, true intents) -> dict`` of dataset-specific metrics.
    """
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams = load_hparams(hparams_file, overrides)
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                   hyperparams_to_save=hparams_file, overrides=overrides)
    run_on_main(prepare, kwargs={key: hparams[key] for key in prepare_keys})
    datasets, encoder = build_datasets(hparams)
    labels = [encoder.ind2lab[i] for i in range(len(encoder))]
    hparams["classifier"].set_intents(len(labels))
    brain = hparams["brain_class"](modules=hparams["modules"], opt_class=None, hparams=hparams,
                                   run_opts=run_opts, checkpointer=hparams["checkpointer"])
    brain.fit(hparams["epoch_counter"], datasets["train"], datasets["valid"],
              train_loader_kwargs=hparams["train_dataloader_opts"],
              valid_loader_kwargs=hparams["test_dataloader_opts"])
    brain.evaluate(datasets["test"], test_loader_kwargs=hparams["test_dataloader_opts"])
    if not sb.utils.distributed.if_main_process():
        return brain.test_stats
    return _write_outputs(brain, hparams, datasets["test"], labels, prediction_line, extra_metrics)


def _write_outputs(brain, hparams, test_set, labels, prediction_line, extra_metrics) -> dict:
    """Metrics, predictions, exported model and summary into the output folder."""
    output = Path(hparams["output_folder"])
    predicted = [labels[i] for i in brain.predicted]
    truth = [labels[i] for i in brain.targets]
    metrics = {"intent_accuracy": accuracy(predicted, truth),
               "macro_f1": macro_f1(predicted, truth), "utterances": len(truth)}
    if extra_metrics is not None:
        metrics.update(extra_metrics(predicted, truth))
    entries = test_set.data
    with open(output / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for utt_id, intent in zip(brain.predicted_ids, predicted, strict=True):
            handle.write(json.dumps(prediction_line(entries[utt_id], intent)) + "\n")
    sizes = export_model(brain, hparams, labels, output / "model")
    summary = {"metrics": metrics, "size": sizes,
               "compute": compute_summary(brain, hparams, [e["duration"] for e in entries.values()])}
    (output / "test_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (output / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return metrics


def split_intent(intent: str) -> tuple[str, str]:
    """SLURP ``scenario_action`` -> (scenario, action) (scenarios hold no underscore)."""
    scenario, _, action = intent.partition("_")
    return scenario, action

