"""Real synthetic speech for tests, cached on disk.

    from speech import synthesize_clips
    waves = synthesize_clips(["turn on the lights", "play some jazz"])  # list of (samples,) tensors

Speech comes from the fastest real voice of ``recipes/mini_corpus/voices.py`` (eSpeak NG through
``espeakng-loader``, about 400 times real time), with a small speed and pitch variation drawn
from ``seed`` and the text, and no noise. Each clip is cached as a float wav under
``$QUADS_TEST_CACHE`` (default ``~/.cache/speechbrain_quads/test_speech``), keyed by text, voice,
seed and sample rate, so repeated test runs read files instead of synthesizing.
Needs the ``demo`` extra (``espeakng-loader``).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import random
import sys
import tempfile
from pathlib import Path

import soundfile
import torch
import torchaudio

_VOICES_DIR = str(Path(__file__).resolve().parents[1] / "recipes" / "mini_corpus")
if _VOICES_DIR not in sys.path:
    sys.path.insert(0, _VOICES_DIR)
voices = importlib.import_module("voices")

CACHE_VERSION = 1
"""Bump to invalidate cached clips after a change in how they are rendered."""


def cache_dir() -> Path:
    """The clip cache directory: ``$QUADS_TEST_CACHE`` or ``~/.cache/speechbrain_quads/
    test_speech``."""
    default = Path.home() / ".cache" / "speechbrain_quads" / "test_speech"
    return Path(os.environ.get("QUADS_TEST_CACHE", default))


def _variation(text: str, seed: int) -> voices.Variation:
    """Speed in 0.9-1.1, pitch factor in 0.9-1.1, 0.1 s silence each side, no noise."""
    rng = random.Random(f"{seed}:{text}")
    return voices.Variation(
        speed=round(rng.uniform(0.9, 1.1), 3),
        pitch_factor=round(rng.uniform(0.9, 1.1), 3),
        lead_s=0.1,
        tail_s=0.1,
    )


def _cache_key(text: str, voice: voices.Voice, seed: int, sample_rate: int) -> str:
    """Hex digest naming one clip in the cache."""
    key = f"v{CACHE_VERSION}|{voice!r}|{seed}|{sample_rate}|{text}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def _write_wav(path: Path, wave: torch.Tensor, sample_rate: int) -> None:
    """Write a float32 wav atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(suffix=".wav", dir=path.parent)
    os.close(handle)
    try:
        soundfile.write(temp, wave.numpy(), sample_rate, subtype="FLOAT")
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def _clip(text: str, voice: voices.Voice, seed: int, sample_rate: int) -> torch.Tensor:
    """One clip from the cache, synthesized and stored there on a miss."""
    path = cache_dir() / f"{_cache_key(text, voice, seed, sample_rate)}.wav"
    if path.is_file():
        data, file_rate = soundfile.read(path, dtype="float32")
        if file_rate == sample_rate and data.ndim == 1 and data.size:
            return torch.from_numpy(data)
    wave = voices.render(voice, text, _variation(text, seed))
    if sample_rate != voices.SAMPLE_RATE:
        wave = torchaudio.functional.resample(wave, voices.SAMPLE_RATE, sample_rate)
    _write_wav(path, wave, sample_rate)
    return wave


def synthesize_clips(
    texts: list[str], out_dir: str | Path | None = None, sample_rate: int = 16000, seed: int = 0
) -> list[torch.Tensor]:
    """Synthesize one spoken clip per text.

    Args:
        texts: sentences to speak (plain English words).
        out_dir: if given, also write ``out_dir/clip_000.wav``, ``clip_001.wav``... (float32 wav,
            same order as ``texts``).
        sample_rate: output sample rate in Hz.
        seed: selects the small per-clip speed/pitch variation; same seed, same audio.

    Returns:
        list of (samples,) float32 tensors at ``sample_rate`` Hz, peak 0.7, with 0.1 s of
        silence at both ends (about 0.4 s per word of speech).
    """
    if isinstance(texts, str):
        raise TypeError("synthesize_clips: texts must be a list of strings, not one string")
    voice = voices.fastest_voice()
    waves = []
    for index, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"synthesize_clips: text {index} is empty")
        wave = _clip(text, voice, seed, sample_rate)
        if out_dir is not None:
            _write_wav(Path(out_dir) / f"clip_{index:03d}.wav", wave, sample_rate)
        waves.append(wave)
    return waves
