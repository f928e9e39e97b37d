#!/usr/bin/env python3
"""Recipe for QUADS (quantized distillation, arXiv 2505.14723) on Fluent Speech Commands.

A frozen Whisper teacher is distilled into a smaller Whisper student with an intent head, and the
student is quantized to b-bit k-means codebooks by multi-stage combined training (MCT): the
distillation and quantization phases alternate, then a final quantization phase; the model is
exported as packed b-bit indices + codebooks.

To run this recipe, do the following:
> python train.py hparams/fsc_4bit.yaml --data_folder=/path/to/fluent_speech_commands_dataset

Writes into the output folder (``results/fsc_<bits>bit/<seed>``): train_log.txt,
test_metrics.json (intent accuracy, macro-F1), predictions.jsonl (``{"file", "intent", "action",
"object", "location"}`` per test file), model/ (the export), summary.json (sizes and GMACs), and
SpeechBrain's hyperparams.yaml, train.py (+ prepare.py), log.txt and env.log, so the folder alone
re-runs or re-evaluates the experiment:
> python results/fsc_4bit/1986/train.py results/fsc_4bit/1986/hyperparams.yaml

Authors
 * speechbrain-quads developers
"""

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
from speechbrain_quads.training.experiment import check_same_experiment, record_experiment  # noqa: E402

logger = get_logger(__name__)


def parse_semantics(semantics: str) -> dict:
    """The FSC ``semantics`` column (JSON with ``|`` for ``,``) -> dict."""
    return json.loads(semantics.replace("|", ","))


def dataio_prepare(hparams):
    """Datasets yielding ``id``, ``sig`` (16-kHz waveform) and ``intent_encoded``, and the intent
    label encoder. The intent is ``action_object_location``; valid and test are sorted by
    duration."""
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
        intent = f"{fields['action']}_{fields['object']}_{fields['location']}"
        yield intent
        yield label_encoder.encode_label_torch(intent)

    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), label_pipeline)
    load_or_fit_encoder(label_encoder, hparams["label_encoder_file"], datasets["train"])
    sb.dataio.dataset.set_output_keys(list(datasets.values()), ["id", "sig", "intent_encoded"])
    return datasets, label_encoder


def prediction_line(utt_id: str, row: dict, intent: str) -> dict:
    """One predictions.jsonl line: the audio path and the predicted action, object, location."""
    action, obj, location = intent.split("_", 2)
    return {"file": row["wav"], "intent": intent, "action": action, "object": obj,
            "location": location}


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

    from prepare import prepare_FSC  # noqa: E402

    run_on_main(prepare_FSC, kwargs={
        "data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"],
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
                                     prediction_line)
        logger.info("test metrics: %s", metrics)
