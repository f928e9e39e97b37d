"""Inference from an export folder: Python interface and CLI against the in-memory model."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile
import torch
import torchaudio
from conftest import SENTENCES, pad_batch
from readme_commands import documented_commands
from speech import synthesize_clips
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.lobes.features import Fbank
from speechbrain.utils.data_utils import batch_pad_right
from torch import nn

from speechbrain_quads.codebook.quantization import QuantizationConfig, quantize_
from speechbrain_quads.deploy.export import export_model
from speechbrain_quads.deploy.inference import AudioFileError, QuadsIntentClassifier
from speechbrain_quads.models.heads import IntentClassifier
from speechbrain_quads.models.whisper import WhisperStudent

LABELS = ["lights_on", "weather_query", "stop", "alarm_set"]
REPO = Path(__file__).resolve().parents[1]


def _model(tiny_dir: str, clips: list[torch.Tensor]) -> nn.ModuleDict:
    """One-layer tiny.en student + a head whose class i is prototype clip i (centred pooled
    features), so that predictions differ from clip to clip without training."""
    student = WhisperStudent(tiny_dir, keep_layers=[0]).eval()
    head = IntentClassifier(384, len(LABELS))
    with torch.no_grad():
        pooled = torch.cat([student(clip[None])[0][-1].mean(dim=1) for clip in clips])  # (K, C)
        centred = pooled - pooled.mean(dim=0)
        head.linear.weight.copy_(10.0 * centred / centred.norm(dim=1, keepdim=True))
        head.linear.bias.zero_()
    return nn.ModuleDict({"student": student, "classifier": head})


def _logits(model: nn.ModuleDict, wavs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """The training-time forward: (B, T) waveforms, (B,) relative lengths -> (B, K) logits."""
    with torch.no_grad():
        hidden, frame_lens = model["student"](wavs, lens)
        return model["classifier"](hidden[-1], frame_lens)


@pytest.fixture(scope="module")
def quantized(tiny_dir, clips, tmp_path_factory) -> tuple[nn.ModuleDict, Path]:
    """The in-memory 4-bit model (eval mode) and its export folder."""
    model = _model(tiny_dir, clips)
    quantizer = quantize_(model, QuantizationConfig(bits=4, min_numel=1024))
    model.eval()
    folder = tmp_path_factory.mktemp("export") / "model"
    export_model(SimpleNamespace(deployable=model, quantizer=quantizer), LABELS, folder)
    return model, folder


@pytest.fixture(scope="module")
def loaded(quantized) -> QuadsIntentClassifier:
    return QuadsIntentClassifier.from_hparams(source=str(quantized[1]), run_opts={"device": "cpu"})


@pytest.fixture(scope="module")
def wav_files(tmp_path_factory) -> list[str]:
    """The four test sentences as 16 kHz wav files."""
    folder = tmp_path_factory.mktemp("audio")
    synthesize_clips(SENTENCES, out_dir=folder)
    return [str(folder / f"clip_{i:03d}.wav") for i in range(len(SENTENCES))]


def test_loaded_export_gives_identical_logits(quantized, loaded, clips):
    model, folder = quantized
    assert json.loads((folder / "config.json").read_text())["bits"] == 4
    wavs, lens = pad_batch(clips)
    expected = _logits(model, wavs, lens)
    assert (loaded.compute_logits(wavs, lens) - expected).abs().max().item() == 0.0
    out_prob, score, index, text_lab = loaded.classify_batch(wavs, lens)
    assert torch.equal(out_prob, expected.log_softmax(dim=-1))
    assert index.tolist() == expected.argmax(dim=-1).tolist()
    assert text_lab == [LABELS[i] for i in index.tolist()]
    assert torch.equal(score, out_prob.max(dim=-1).values)
    assert len(set(text_lab)) > 1, "the test head should not predict one class for every clip"


def test_files_match_in_memory_model(quantized, loaded, wav_files, clips):
    model, _ = quantized
    expected = [LABELS[int(_logits(model, clip[None], None).argmax())] for clip in clips]
    assert [loaded.classify_file(path)[3][0] for path in wav_files] == expected
    results = loaded.classify_files(wav_files, batch_size=3)
    assert [text_lab[0] for _, _, _, text_lab in results] == expected
    # the best of K log-posteriors lies in [log(1/K), 0]
    assert all(score.shape == (1,) and -math.log(len(LABELS)) <= score.item() <= 0.0
               for _, score, _, _ in results)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_other_sample_rate_is_resampled(loaded, clips, tmp_path, rate):
    path = tmp_path / f"clip_{rate}.wav"
    soundfile.write(path, torchaudio.functional.resample(clips[0], 16000, rate).numpy(), rate)
    wave = loaded.load_audio(path)
    assert abs(wave.shape[0] - clips[0].shape[0]) <= 1
    assert loaded.classify_file(path)[3][0] in LABELS


@pytest.mark.parametrize(("rate", "ms"), [(16000, 24), (44100, 20), (8000, 10)])
def test_audio_under_25_ms_is_refused(loaded, clips, tmp_path, rate, ms):
    path = tmp_path / "short.wav"
    soundfile.write(path, clips[0][: rate * ms // 1000].numpy(), rate)
    with pytest.raises(AudioFileError, match=r"short\.wav: .* ms of audio; at least 25 ms"):
        loaded.classify_file(path)
    soundfile.write(path, clips[0][: rate * 30 // 1000].numpy(), rate)
    assert loaded.classify_file(path)[3][0] in LABELS


def test_bad_audio_files_are_reported_by_name(loaded, wav_files, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(os.urandom(2000))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    silent = tmp_path / "no_samples.wav"
    soundfile.write(silent, torch.zeros(0).numpy(), 16000)
    for path in (corrupt, empty, silent, tmp_path / "missing.wav"):
        with pytest.raises(AudioFileError, match=path.name):
            loaded.classify_file(path)
    with pytest.raises(AudioFileError, match="no audio samples"):
        loaded.classify_file(silent)
    results = loaded.classify_files([wav_files[0], str(corrupt), wav_files[1], str(empty)])
    assert [isinstance(r, AudioFileError) for r in results] == [False, True, False, True]


@pytest.fixture(scope="module")
def cli_run(quantized, wav_files, tmp_path_factory) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The classify CLI on the good files with a corrupt and an empty one between them; returns
    the finished process and the two bad paths."""
    folder = tmp_path_factory.mktemp("bad_audio")
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(os.urandom(4000))
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    files = [wav_files[0], str(corrupt), *wav_files[1:3], str(empty), wav_files[3]]
    done = subprocess.run(
        [sys.executable, "-m", "speechbrain_quads.deploy.classify", str(quantized[1]), *files,
         "--batch-size", "2", "--device", "cpu"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120)
    return done, [str(corrupt), str(empty)]


def test_cli_classifies_good_files_and_reports_bad_ones(cli_run, loaded, wav_files):
    done, bad = cli_run
    assert done.returncode == 1, done.stderr
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert [line[0] for line in lines] == wav_files
    expected = loaded.classify_files(wav_files)
    assert [line[1] for line in lines] == [text_lab[0] for _, _, _, text_lab in expected]
    assert [line[2] for line in lines] == [f"{score.exp().item():.4f}" for _, score, _, _ in expected]
    errors = [line.split("\t") for line in done.stderr.splitlines() if "\tERROR\t" in line]
    assert [error[0] for error in errors] == bad


def _predict_like_encoder_classifier(classifier, files: list[str], n_classes: int) -> list[str]:
    """Code written against ``speechbrain.inference.classifiers.EncoderClassifier``: load, pad,
    ``classify_batch``, unpack its 4-tuple, and check what its docstring promises."""
    batch, lens = batch_pad_right([classifier.load_audio(path) for path in files])
    out_prob, score, index, text_lab = classifier.classify_batch(batch, lens)
    assert out_prob.shape == (len(files), n_classes) and score.shape == index.shape == (len(files),)
    assert torch.allclose(out_prob.exp().sum(dim=-1), torch.ones(len(files)), atol=1e-5)
    assert torch.equal(score, out_prob.max(dim=-1).values)
    assert torch.equal(index, out_prob.argmax(dim=-1)) and index.dtype == torch.int64
    single = classifier.classify_file(files[0])
    assert len(single) == 4 and single[0].shape == (1, n_classes) and single[3] == text_lab[:1]
    assert isinstance(text_lab, list) and all(isinstance(label, str) for label in text_lab)
    return text_lab


class _Pool(nn.Module):
    """(B, T, F) features, (B,) lengths -> (B, 1, F) mean (an embedding_model for the reference)."""

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return feats.mean(dim=1, keepdim=True)


class _Identity(nn.Module):
    """A mean_var_norm that leaves (B, T, F) features as they are."""

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return feats


def test_encoder_classifier_code_runs_unchanged_and_agrees_with_cli(loaded, wav_files, cli_run):
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(LABELS)
    encoder.expect_len(len(LABELS))
    reference = EncoderClassifier(
        modules={"compute_features": Fbank(n_mels=20), "mean_var_norm": _Identity(),
                 "embedding_model": _Pool(),
                 "classifier": nn.Sequential(nn.Linear(20, len(LABELS)), nn.LogSoftmax(dim=-1))},
        hparams={"label_encoder": encoder}, run_opts={"device": "cpu"})
    assert set(_predict_like_encoder_classifier(reference, wav_files, len(LABELS))) <= set(LABELS)
    labels = _predict_like_encoder_classifier(loaded, wav_files, len(LABELS))
    printed = [line.split("\t")[1] for line in cli_run[0].stdout.splitlines()]
    assert labels == printed
    assert len(set(labels)) > 1


def test_readme_classify_command_runs_as_written(quantized, loaded, wav_files, tmp_path):
    """README's ``python -m speechbrain_quads.deploy.classify results/slurp_4bit/1986/model
    a.wav b.flac``, from a folder holding those three (this test's export and speech): a
    ``file<TAB>intent<TAB>probability`` line per file, as the Python API classifies them."""
    (words,) = documented_commands(REPO / "README.md",
                                   "python -m speechbrain_quads.deploy.classify")
    model_dir, wav, flac = (tmp_path / word for word in words[3:])
    shutil.copytree(quantized[1], model_dir)
    shutil.copy2(wav_files[0], wav)
    audio, rate = soundfile.read(wav_files[1])
    soundfile.write(flac, audio, rate, format="FLAC")
    done = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    expected = loaded.classify_files([str(wav), str(flac)])
    assert lines == [[word, text_lab[0], f"{score.exp().item():.4f}"]
                     for word, (_, score, _, text_lab) in zip(words[4:], expected, strict=True)]


def test_cli_bad_model_folder_exits_2(tmp_path, wav_files):
    done = subprocess.run(
        [sys.executable, "-m", "speechbrain_quads.deploy.classify", str(tmp_path), wav_files[0]],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120)
    assert done.returncode == 2
    assert "config.json" in done.stderr and done.stdout == ""


def test_bad_model_folders_error_clearly(quantized, tmp_path):
    _, good = quantized
    with pytest.raises(FileNotFoundError, match="config.json"):
        QuadsIntentClassifier.from_hparams(tmp_path)
    (tmp_path / "config.json").write_text((good / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        QuadsIntentClassifier.from_hparams(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="model.safetensors"):
        QuadsIntentClassifier.from_hparams(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match=r"config.json.*format"):
        QuadsIntentClassifier.from_hparams(tmp_path)


def test_float32_export_loads(tiny_dir, clips, tmp_path):
    model = _model(tiny_dir, clips).eval()
    export_model(SimpleNamespace(deployable=model), LABELS, tmp_path / "model")
    loaded = QuadsIntentClassifier.from_pretrained(tmp_path / "model", run_opts={"device": "cpu"})
    assert loaded.hparams.bits == 32
    wavs, lens = pad_batch(clips)
    assert torch.equal(loaded.compute_logits(wavs, lens), _logits(model, wavs, lens))


def test_export_of_a_prepared_model_with_the_quantizer_off_loads(tmp_path, tiny_dir):
    """A plan ending in distillation exports float32 weights under plain names."""
    from types import SimpleNamespace

    from torch import nn

    from speechbrain_quads.codebook.quantization import CodebookQuantizer, QuantizationConfig
    from speechbrain_quads.deploy.export import export_model
    from speechbrain_quads.deploy.inference import QuadsIntentClassifier
    from speechbrain_quads.models.heads import IntentClassifier
    from speechbrain_quads.models.whisper import WhisperStudent

    model = nn.ModuleDict({"student": WhisperStudent(tiny_dir, keep_layers=[0]),
                           "classifier": IntentClassifier(384, 3)}).eval()
    quantizer = CodebookQuantizer(QuantizationConfig(bits=4, min_numel=1024))
    quantizer.prepare(model)  # prepared, never clustered: mode off
    export_model(SimpleNamespace(deployable=model, quantizer=quantizer),
                 ["a", "b", "c"], tmp_path / "model")
    loaded = QuadsIntentClassifier.from_hparams(str(tmp_path / "model"))
    wavs = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        hidden, lens = model["student"](wavs, torch.ones(2))
        expected = model["classifier"](hidden[-1], lens)
    assert torch.equal(loaded.compute_logits(wavs, torch.ones(2)), expected)
