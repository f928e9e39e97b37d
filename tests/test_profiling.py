"""Compute and size profiling: meta-device counts against the hand formula and real weights."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import WhisperModel

from speechbrain_quads.evaluation.profiling import (
    WHISPER_ENCODERS,
    encoder_profile_on_meta,
    gmacs,
    whisper_encoder_config,
    whisper_encoder_gmacs_formula,
)

REPO = Path(__file__).resolve().parents[1]


def test_gmacs_feeds_the_model_on_its_own_device():
    """The summary's GMACs count builds its input where the model lives, not on the default
    device (which crashed the recipes' last step after GPU training): with another default
    device, a CPU model is counted the same."""
    from speechbrain_quads.models.heads import IntentClassifier
    from speechbrain_quads.models.whisper import WhisperStudent

    student = WhisperStudent.from_config({"d_model": 64, "encoder_layers": 1,
                                          "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
                                          "num_mel_bins": 80, "max_source_positions": 1500})
    head = IntentClassifier(student.output_size, 5)
    expected = gmacs(student, 1.0, head)
    with torch.device("meta"):
        assert gmacs(student, 1.0, head) == expected
    assert expected > whisper_encoder_gmacs_formula(64, 1, 128, 80, frames=100)  # + front end


@pytest.mark.parametrize("name", ["tiny", "medium", "large-v3"])
def test_meta_count_is_the_hand_formula(name):
    config = whisper_encoder_config(name)
    profile = encoder_profile_on_meta(config)
    expected = whisper_encoder_gmacs_formula(config.d_model, config.encoder_layers,
                                             config.encoder_ffn_dim, config.num_mel_bins, 3000)
    assert profile["gmacs_30s"] == pytest.approx(expected, rel=1e-9)


def test_meta_parameters_are_the_real_checkpoints(tiny_dir, base_dir):
    for name, folder in (("tiny", tiny_dir), ("base", base_dir)):
        encoder = WhisperModel.from_pretrained(folder).get_encoder()
        real = sum(p.numel() for p in encoder.parameters())
        assert encoder_profile_on_meta(whisper_encoder_config(name))["params"] == real


def test_unknown_size_is_named():
    with pytest.raises(ValueError, match="'huge'.*large-v3"):
        whisper_encoder_config("huge")
    assert set(WHISPER_ENCODERS) >= {"tiny", "base", "large-v2", "large-v3"}


def test_size_and_compute_table(tmp_path):
    """README's ``python benchmarks/size_and_compute.py``, run as written from the root of a
    copy of the script's folder: it writes the committed table again, byte for byte, and its
    rows keep the bit arithmetic and the paper's compute ratio."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy2(REPO / "benchmarks" / "size_and_compute.py", tmp_path / "benchmarks")
    result = subprocess.run([sys.executable, "benchmarks/size_and_compute.py"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    written = tmp_path / "benchmarks"
    for name in ("size_and_compute.md", "size_and_compute.json"):
        assert (written / name).read_text() == (REPO / "benchmarks" / name).read_text(), name
    rows = {row["model"]: row for row in json.loads((written / "size_and_compute.json").read_text())}
    large, full = rows["Whisper large-v3 encoder"], rows[
        "QUADS student (tiny.en + head), full precision"]
    four, two = rows["QUADS student, 4-bit packed"], rows["QUADS student, 2-bit packed"]
    assert four["compute_ratio"] == pytest.approx(large["gmacs_30s"] / four["gmacs_30s"])
    assert 55 < four["compute_ratio"] < 70  # the paper: 60-73x fewer GMACs than Whisper-large
    # packed size: b-bit indices of the quantized weights plus what stays float, never params x b
    assert two["size_mb"] < four["size_mb"] < full["size_mb"] / 7
    assert four["size_mb"] == pytest.approx(four["bit_arithmetic_mb"], abs=0.02)  # + header
    assert four["size_mb"] > four["bit_arithmetic_mb"]
    assert "| QUADS student, 4-bit packed |" in (written / "size_and_compute.md").read_text()
