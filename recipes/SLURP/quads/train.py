#!/usr/bin/env python3
"""Recipe for QUADS (quantized distillation, arXiv 2505.14723) on SLURP intent classification.

A frozen Whisper teacher is distilled into a smaller Whisper student with an intent head, and the
student is quantized to b-bit k-means codebooks by multi-stage combined training (MCT): the
distillation and quantization phases alternate, then a final quantization phase; the model is
exported as packed b-bit indices + codebooks.

To run this recipe, do the following:
> python train.py hparams/slurp_4bit.yaml --data_folder=/path/to/slurp

Writes into the output folder (``results/slurp_<bits>bit/<seed>``): train_log.txt,
test_metrics.json (intent accuracy, macro-F1, scenario and action accuracy), predictions.jsonl
(SLURP's official evaluation format), model/ (the export), summary.json (sizes and GMACs), and
SpeechBrain's hyperparams.yaml, train.py (+ prepare.py), log.txt and env.log, so the folder alone
re-runs or re-evaluates the experiment:
> python results/slurp_4bit/1986/train.py results/slurp_4bit/1986/hyperparams.yaml

Authors
 * speechbrain-quads developers
"""

import ast
import csv
import json
import logging
import sys
from pathlib import Path

# SpeechBrain warns at import that torchvision is missing; it is needed only to save figures.
logging.getLogger("speechbrain.utils.train_logger").addFilter(
    lambda record: "torchvision" not in record.getMessage())

import speechbrain as sb  # noqa: E402
from hyperpyyaml import load_hyperpyyaml  # noqa: E402
from speechbrain.utils.distributed import if_main_process, run_on_main  # noqa: E402
from speechbrain.utils.logger import get_logger  # noqa: E402

from speechbrain_quads.data.pipeline import load_or_fit_encoder, sort_train_set  # noqa: E402
from speechbrain_quads.deploy.report import copy_beside_the_script, write_test_outputs  # noqa: E402
from speechbrain_quads.evaluation.metrics import accuracy  # noqa: E402
from speechbrain_quads.training.experiment import check_same_experiment, record_experiment  # noqa: E402

logger = get_logger(__name__)


def parse_semantics(semantics: str) -> dict:
    """SpeechBrain's SLURP ``semantics`` column (a dict string, ``|`` for ``,``) -> dict."""
    return ast.literal_eval(semantics.replace("|", ","))


def dataio_prepare(hparams):
    """Datasets yielding ``id``, ``sig`` (16-kHz waveform) and ``intent_encoded``, and the intent
    label encoder. The intent is ``scenario_action``; valid and test are sorted by duration."""
    datasets = {split: sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=hparams[f"csv_{split}"])
                for split in ("train", "valid", "test")}
    datasets["train"] = sort_train_set(datasets["train"], hparams["sorting"],
                                       hparams["train_dataloader_opts"])
    for split in ("valid", "test"):
        datasets[split] = datasets[split].filtered_sorted(sort_key="duration")
    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return sb.dataio.dataio.read_audio(wav)

    @sb.utils.data_pipeline.takes("semantics")
    @sb.utils.data_pipeline.provides("intent", "intent_encoded")
    def label_pipeline(semantics):
        fields = parse_semantics(semantics)
        intent = f"{fields['scenario']}_{fields['action']}"
        yield intent
        yield label_encoder.encode_label_torch(intent)

    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), label_pipeline)
    load_or_fit_encoder(label_encoder, hparams["label_encoder_file"], datasets["train"])
    sb.dataio.dataset.set_output_keys(list(datasets.values()), ["id", "sig", "intent_encoded"])
    return datasets, label_encoder


def prediction_line(utt_id: str, row: dict, intent: str) -> dict:
    """One line of SLURP's official predictions format (intent only: no entities)."""
    scenario, _, action = intent.partition("_")
    return {"file": Path(row["wav"]).name, "scenario": scenario, "action": action,
            "entities": []}


def read_test_intents(output_folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """A finished run's test intents (``scenario_action``) by audio file name: the truth from
    its test CSV and the prediction from its ``predictions.jsonl``.

    Raises ValueError naming both files when they hold different recordings.
    """
    csv_path, jsonl_path = output_folder / "test-type=direct.csv", output_folder / "predictions.jsonl"
    with open(csv_path, newline="", encoding="utf-8") as handle:
        truth = {}
        for row in csv.DictReader(handle):
            fields = parse_semantics(row["semantics"])
            truth[Path(row["wav"]).name] = f"{fields['scenario']}_{fields['action']}"
    predicted = {}
    for line in jsonl_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        predicted[record["file"]] = f"{record['scenario']}_{record['action']}"
    if predicted.keys() != truth.keys():
        raise ValueError(f"{jsonl_path} has {len(predicted)} recordings, {csv_path} "
                         f"{len(truth)}; they differ")
    return truth, predicted


def scenario_action_accuracy(predicted: list[str], truth: list[str]) -> dict:
    """Scenario and action accuracy, as SLURP's evaluator reports them."""
    def parts(intents, index):
        return [intent.partition("_")[index] for intent in intents]
    return {"scenario_accuracy": accuracy(parts(predicted, 0), parts(truth, 0)),
            "action_accuracy": accuracy(parts(predicted, 2), parts(truth, 2))}


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    # a folder holding a run of other settings is refused before its hyperparams.yaml is rewritten
    check_same_experiment(hparams, hparams["save_folder"])
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                   hyperparams_to_save=hparams_file, overrides=overrides)
    run_on_main(record_experiment, args=[hparams, hparams["save_folder"]])
    run_on_main(copy_beside_the_script,  # prepare.py too, so the output folder re-runs alone
                args=[Path(__file__).with_name("prepare.py"), hparams["output_folder"]])

    from prepare import prepare_SLURP  # noqa: E402

    run_on_main(prepare_SLURP, kwargs={
        "data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"],
        "slu_type": hparams["slu_type"], "train_splits": hparams["train_splits"],
        "skip_prep": hparams["skip_prep"]})
    datasets, label_encoder = dataio_prepare(hparams)
    labels = [label_encoder.ind2lab[i] for i in range(len(label_encoder))]
    hparams["classifier"].set_intents(len(labels))

    brain = hparams["brain_class"](modules=hparams["modules"], hparams=hparams,
                                   run_opts=run_opts, checkpointer=hparams["checkpointer"])
    brain.fit(brain.hparams.epoch_counter, datasets["train"], datasets["valid"],
              train_loader_kwargs=hparams["train_dataloader_opts"],
              valid_loader_kwargs=hparams["valid_dataloader_opts"])
    brain.evaluate(datasets["test"], test_loader_kwargs=hparams["test_dataloader_opts"])
    if if_main_process():
        metrics = write_test_outputs(brain, hparams, labels, datasets["test"].data,
                                     prediction_line, scenario_action_accuracy)
        logger.info("test metrics: %s", metrics)
