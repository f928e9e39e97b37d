"""from_hparams finds an export as SpeechBrain's Pretrained does: a local folder, a Hugging Face hub
id (the hub download SpeechBrain calls is replaced by an offline stand-in), a savedir."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import soundfile
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from speechbrain.utils.fetching import LocalStrategy
from torch import nn

from speechbrain_quads.deploy import classify
from speechbrain_quads.deploy.export import export_model
from speechbrain_quads.deploy.inference import QuadsIntentClassifier
from speechbrain_quads.models.heads import IntentClassifier
from speechbrain_quads.models.whisper import WhisperStudent

LABELS = ["lights_on", "weather_query", "stop"]
REPO_ID = "someone/quads-intents"


@pytest.fixture(scope="module")
def export(tiny_dir, tmp_path_factory) -> Path:
    """A float32 export folder of a one-layer tiny.en student with a random head."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"student": WhisperStudent(tiny_dir, keep_layers=[0]),
                           "classifier": IntentClassifier(384, len(LABELS))}).eval()
    folder = tmp_path_factory.mktemp("export") / "model"
    export_model(SimpleNamespace(deployable=model), LABELS, folder)
    return folder


class OfflineHub:
    """Stands in for ``huggingface_hub.hf_hub_download``: serves ``root/<repo_id>/<filename>``
    and records each ``(repo_id, filename)`` asked for."""

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[tuple[str, str]] = []

    def __call__(self, repo_id: str, filename: str, **kwargs) -> str:
        self.calls.append((repo_id, filename))
        path = self.root / repo_id / filename
        if not path.is_file():
            raise LocalEntryNotFoundError(f"{repo_id}/{filename}: not in the cache (offline)")
        return str(path)


@pytest.fixture
def hub(export, tmp_path, monkeypatch) -> OfflineHub:
    """The export published as REPO_ID on a stand-in hub that SpeechBrain's fetch downloads from."""
    shutil.copytree(export, tmp_path / "hub" / REPO_ID)
    stand_in = OfflineHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", stand_in)
    return stand_in


def _logits(classifier: QuadsIntentClassifier) -> torch.Tensor:
    torch.manual_seed(1)
    return classifier.compute_logits(torch.randn(2, 16000) * 0.1, torch.tensor([1.0, 0.6]))


def test_hub_id_is_fetched_into_savedir(export, hub, tmp_path):
    savedir = tmp_path / "save"
    fetched = QuadsIntentClassifier.from_hparams(source=REPO_ID, savedir=savedir,
                                                 run_opts={"device": "cpu"})
    assert hub.calls == [(REPO_ID, "config.json"), (REPO_ID, "model.safetensors")]
    for name in ("config.json", "model.safetensors"):
        assert (savedir / name).is_symlink()
        assert (savedir / name).resolve() == (hub.root / REPO_ID / name).resolve()
    local = QuadsIntentClassifier.from_hparams(source=export, run_opts={"device": "cpu"})
    assert fetched.labels == LABELS
    assert torch.equal(_logits(fetched), _logits(local))


def test_hub_id_without_savedir_reads_the_hub_cache(hub):
    assert QuadsIntentClassifier.from_hparams(source=REPO_ID).labels == LABELS
    assert {filename for _, filename in hub.calls} == {"config.json", "model.safetensors"}


def test_bad_hub_config_is_refused_before_the_weights_are_downloaded(hub, tmp_path):
    path = hub.root / REPO_ID / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "sampling_rate": -5}))
    with pytest.raises(ValueError, match=r"config\.json: key 'sampling_rate' must be in"):
        QuadsIntentClassifier.from_hparams(source=REPO_ID, savedir=tmp_path / "save")
    assert hub.calls == [(REPO_ID, "config.json")]


def test_hub_id_that_cannot_be_fetched_is_named(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="someone/missing: no such local folder; as a hub id "
                                                "or URL, fetching config.json failed"):
        QuadsIntentClassifier.from_hparams(source="someone/missing", savedir=tmp_path / "save")


def test_local_folder_is_copied_into_savedir(export, tmp_path):
    savedir = tmp_path / "save"
    classifier = QuadsIntentClassifier.from_hparams(source=str(export), savedir=savedir,
                                                    local_strategy=LocalStrategy.COPY)
    for name in ("config.json", "model.safetensors"):
        assert (savedir / name).is_file() and not (savedir / name).is_symlink()
        assert (savedir / name).read_bytes() == (export / name).read_bytes()
    assert classifier.labels == LABELS


def test_source_that_is_neither_a_folder_nor_a_hub_id(export, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder, and not a Hugging Face hub id"):
        QuadsIntentClassifier.from_hparams(source=tmp_path / "no" / "such" / "model")
    with pytest.raises(FileNotFoundError, match="model.safetensors: not a directory"):
        QuadsIntentClassifier.from_hparams(source=export / "model.safetensors")


def test_cli_classifies_with_a_hub_model(hub, clips, tmp_path, capsys):
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, clips[0].numpy(), 16000)
    status = classify.main([REPO_ID, str(wav), "--savedir", str(tmp_path / "save"),
                            "--device", "cpu"])
    path, label, score = capsys.readouterr().out.strip().split("\t")
    assert status == classify.EXIT_OK and path == str(wav) and label in LABELS
    assert 0.0 < float(score) <= 1.0
