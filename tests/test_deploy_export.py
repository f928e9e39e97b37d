"""The export folder's config.json checks and the model.safetensors checksum (float and packed)."""

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from speechbrain_quads.codebook.quantization import QuantizationConfig, quantize_
from speechbrain_quads.deploy.export import CONFIG_VERSION, export_model
from speechbrain_quads.deploy.inference import QuadsIntentClassifier
from speechbrain_quads.models.heads import IntentClassifier
from speechbrain_quads.models.whisper import WhisperStudent

LABELS = ["lights_on", "weather_query", "stop"]


def _model(tiny_dir: str) -> nn.ModuleDict:
    return nn.ModuleDict({"student": WhisperStudent(tiny_dir, keep_layers=[0]),
                          "classifier": IntentClassifier(384, len(LABELS))}).eval()


@pytest.fixture(scope="module", params=["float", "packed"])
def export(request, tiny_dir, tmp_path_factory) -> Path:
    """A float32 and a 4-bit packed export folder of a one-layer tiny.en student."""
    model = _model(tiny_dir)
    folder = tmp_path_factory.mktemp(request.param) / "model"
    if request.param == "float":
        export_model(SimpleNamespace(deployable=model), LABELS, folder)
    else:
        quantizer = quantize_(model, QuantizationConfig(bits=4, min_numel=1024))
        export_model(SimpleNamespace(deployable=model, quantizer=quantizer), LABELS, folder)
    return folder


def _copy(folder: Path, tmp_path: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """A copy of export ``folder`` with ``edit`` applied to its config.json entries."""
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    if edit is not None:
        config = json.loads((copy / "config.json").read_text())
        edit(config)
        (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_export_records_the_sha256_of_its_weights(export):
    config = json.loads((export / "config.json").read_text())
    assert config["version"] == CONFIG_VERSION
    digest = hashlib.sha256((export / "model.safetensors").read_bytes()).hexdigest()
    assert config["model_sha256"] == digest
    assert QuadsIntentClassifier.from_hparams(source=export, run_opts={"device": "cpu"}).labels == LABELS


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda config: config.__setitem__(key, value)


def _set_whisper(key: str, value: object) -> Callable[[dict], None]:
    return lambda config: config["whisper_config"].__setitem__(key, value)


def _drop_whisper(key: str) -> Callable[[dict], None]:
    return lambda config: config["whisper_config"].pop(key)


BAD_CONFIGS = {
    "negative sampling_rate": (_set("sampling_rate", -5), r"'sampling_rate' must be in \[4000"),
    "string sampling_rate": (_set("sampling_rate", "16000"), "'sampling_rate' must be an integer"),
    "bool sampling_rate": (_set("sampling_rate", True), "'sampling_rate' must be an integer"),
    "float sampling_rate": (_set("sampling_rate", 16000.0), "'sampling_rate' must be an integer"),
    "bits 0": (_set("bits", 0), r"'bits' must be an integer in \[1, 16\] or 32, got 0"),
    "bits 17": (_set("bits", 17), r"'bits' must be an integer in \[1, 16\] or 32, got 17"),
    "bits 64": (_set("bits", 64), r"'bits' must be an integer in \[1, 16\] or 32, got 64"),
    "string bits": (_set("bits", "4"), r"'bits' must be an integer in \[1, 16\] or 32, got '4'"),
    "missing bits": (lambda config: config.pop("bits"), "'bits' must be an integer .* got None"),
    "no labels": (_set("labels", []), "'labels' must list at least 2"),
    "labels not a list": (_set("labels", "stop,go"), "'labels' must list at least 2"),
    "empty label": (_set("labels", ["stop", " "]), "'labels' holds ' '"),
    "non-string label": (_set("labels", ["stop", 3]), "'labels' holds 3"),
    "repeated label": (_set("labels", ["stop", "go", "stop"]), "'labels' repeats 'stop'"),
    "student_size 0": (_set("student_size", 0), "'student_size' must be >= 1"),
    "student_size not d_model": (_set("student_size", 512), "'student_size' is 512 but"),
    "pad_to_30s string": (_set("pad_to_30s", "no"), "'pad_to_30s' must be true or false"),
    "whisper_config list": (_set("whisper_config", []), "'whisper_config' must be a JSON object"),
    "whisper_config without d_model": (_drop_whisper("d_model"), "'whisper_config' misses d_model"),
    "whisper_config string layers": (_set_whisper("encoder_layers", "1"),
                                     "whisper_config: key 'encoder_layers' must be an integer"),
    "whisper_config heads not dividing": (_set_whisper("encoder_attention_heads", 5),
                                          "not a multiple of encoder_attention_heads"),
    "bad model_sha256": (_set("model_sha256", "abc"), "'model_sha256' must be 64"),
    "missing model_sha256": (lambda config: config.pop("model_sha256"), "'model_sha256' must be 64"),
    "future version": (_set("version", CONFIG_VERSION + 1), "unsupported version"),
    "float version": (_set("version", 2.0), "unsupported version 2.0"),
    "other format": (_set("format", "hf-whisper"), "format is 'hf-whisper'"),
    "bit_widths not a list": (_set("bit_widths", 4), r"'bit_widths' must list .* got 4"),
    "bit_widths past bits": (_set("bit_widths", [3, 5]), r"ending at 'bits' \(\d+\), got \[3, 5\]"),
    "bit_widths unsorted": (_set("bit_widths", [4, 3]), r"'bit_widths' must list increasing"),
    "bit_widths of 0": (_set("bit_widths", [0, 4]), r"'bit_widths' must list .* got \[0, 4\]"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_values_are_refused_naming_the_file_and_key(export, tmp_path, case):
    edit, message = BAD_CONFIGS[case]
    folder = _copy(export, tmp_path, edit)
    with pytest.raises(ValueError, match=r"config\.json: .*" + message):
        QuadsIntentClassifier.from_hparams(source=folder, run_opts={"device": "cpu"})


def test_bit_widths_that_are_not_the_file_s_are_refused(export, tmp_path):
    """config.json's ``bit_widths`` must be the widths model.safetensors stores (a float32 file:
    none, so the key is refused there too)."""
    folder = _copy(export, tmp_path, lambda config: config.update(bits=5, bit_widths=[4, 5]))
    with pytest.raises(ValueError, match=r"config\.json for .*'bit_widths' is \[4, 5\], but the "
                                         r"file stores widths \[(4)?\]"):
        QuadsIntentClassifier.from_hparams(source=folder, run_opts={"device": "cpu"})


def test_config_that_is_not_json_is_refused(export, tmp_path):
    folder = _copy(export, tmp_path)
    (folder / "config.json").write_text("{'labels': ")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        QuadsIntentClassifier.from_hparams(source=folder)


@pytest.mark.parametrize("damage", ["zeroed", "bit-flipped", "truncated"])
def test_damaged_weights_fail_the_checksum(export, tmp_path, damage):
    folder = _copy(export, tmp_path)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "zeroed":
        data = bytearray(len(data))
    elif damage == "bit-flipped":
        data[len(data) // 2] ^= 0x10
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors: SHA-256 is [0-9a-f]{64}, but "
                                         r"model_sha256 in .*config\.json"):
        QuadsIntentClassifier.from_hparams(source=folder)


def test_truncated_weights_without_a_checksum_are_refused(export, tmp_path):
    """A version-1 folder (no model_sha256) still loads, and truncation is still caught."""

    def version_1(config: dict) -> None:
        config["version"] = 1
        del config["model_sha256"]

    folder = _copy(export, tmp_path, version_1)
    assert QuadsIntentClassifier.from_hparams(source=folder).labels == LABELS
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        QuadsIntentClassifier.from_hparams(source=folder)


def test_foreign_safetensors_file_is_refused_by_its_header(export, tmp_path):
    """A safetensors file that is not ours, even with a matching checksum, is refused."""
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(4)}, str(path), metadata={"format": "pt"})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    folder = _copy(export, tmp_path, _set("model_sha256", digest))
    shutil.copy(path, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: header metadata format is 'pt'.*not "
                                         "a QUADS model file"):
        QuadsIntentClassifier.from_hparams(source=folder)


def test_export_refuses_repeated_labels_and_writes_nothing(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="'labels' repeats 'stop'"):
        export_model(SimpleNamespace(deployable=_model(tiny_dir)),
                     ["stop", "go", "stop"], tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_a_failed_re_export_keeps_the_previous_model(export, tiny_dir, tmp_path, monkeypatch):
    """Re-exporting over a model folder: if putting the new folder in place fails, the old
    folder is back at its path, byte for byte, and nothing else is left beside it."""
    import speechbrain_quads.deploy.export as export_module

    folder = _copy(export, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    rename = os.rename

    def fail_on_the_new_folder(source, target):
        if Path(target) == folder and ".old" not in Path(source).name:
            raise OSError("disk full")
        rename(source, target)

    other = _model(tiny_dir)
    torch.nn.init.constant_(other["classifier"].linear.weight, 0.5)
    monkeypatch.setattr(export_module.os, "rename", fail_on_the_new_folder)
    with pytest.raises(OSError, match="disk full"):
        export_model(SimpleNamespace(deployable=other), LABELS, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    monkeypatch.undo()
    export_model(SimpleNamespace(deployable=other), LABELS, folder)
    assert (folder / "model.safetensors").read_bytes() != before["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]
