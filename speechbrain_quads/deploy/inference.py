"""SpeechBrain-style inference for an exported QUADS intent classifier.

An export folder (written by :func:`speechbrain_quads.deploy.export.export_model`) holds
``config.json`` (labels, front-end settings, the student's WhisperConfig) and ``model.safetensors``
(packed b-bit indices + codebooks, or a plain float32 state_dict). No ``hyperparams.yaml`` is
needed: the architecture is rebuilt from ``config.json``, and packed weights dequantize to exactly
the values the quantized model used in training, so the logits are identical.

    from speechbrain_quads.deploy.inference import QuadsIntentClassifier
    classifier = QuadsIntentClassifier.from_hparams(source="results/slurp_4bit/model",
                                                    run_opts={"device": "cpu"})
    label, score = classifier.classify_file("turn_on_the_lights.wav")
    scores, indices, labels = classifier.classify_batch(wavs, wav_lens)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import soundfile
import torch
import torchaudio
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from speechbrain.dataio.dataio import read_audio
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.data_utils import batch_pad_right
from speechbrain.utils.run_opts import RunOptions
from torch import nn

from speechbrain_quads.codebook.packing import FORMAT_NAME, load_packed_into
from speechbrain_quads.deploy.export import FLOAT_FORMAT, MODEL_FORMAT
from speechbrain_quads.models.features import MIN_SAMPLES, WHISPER_SAMPLE_RATE
from speechbrain_quads.models.heads import IntentClassifier
from speechbrain_quads.models.whisper import WhisperStudent

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
CONFIG_VERSION = 1
CONFIG_TYPES = {"labels": list, "pad_to_30s": bool, "sampling_rate": int, "student_size": int,
                "whisper_config": dict}
"""Keys every export ``config.json`` must hold, with their JSON types."""


class AudioFileError(ValueError):
    """An audio file that cannot be classified.

    Attributes:
        path: the file, as given.
        reason: what is wrong with it.
    """

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_export_config(folder: str | Path) -> dict:
    """Read and check the ``config.json`` of an export folder.

    Raises:
        FileNotFoundError: ``folder`` is not a directory, or lacks ``config.json`` or
            ``model.safetensors`` (the message names the missing file).
        ValueError: ``config.json`` is not JSON, not a QUADS model config, or misses a key.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory (expected an exported model folder "
                                f"holding {CONFIG_FILE} and {MODEL_FILE})")
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: missing; {folder} is not an exported QUADS "
                                    "model folder")
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path}: format is {found!r}, expected {MODEL_FORMAT!r}")
    if config.get("version") != CONFIG_VERSION:
        raise ValueError(f"{path}: unsupported version {config.get('version')!r} "
                         f"(this reader knows {CONFIG_VERSION})")
    for key, kind in CONFIG_TYPES.items():
        if not isinstance(config.get(key), kind):
            raise ValueError(f"{path}: key {key!r} is missing or not a JSON {kind.__name__}")
    labels = config["labels"]
    if len(labels) < 2 or not all(isinstance(label, str) for label in labels):
        raise ValueError(f"{path}: 'labels' must list at least 2 intent strings")
    return config


def _file_format(path: Path) -> str | None:
    """The ``format`` entry of a safetensors file's header metadata (None if absent)."""
    try:
        with safe_open(path, framework="pt") as handle:
            return (handle.metadata() or {}).get("format")
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an export's ``model.safetensors`` (packed or float32) into a plain ``model``.

    Returns:
        ``model``; packed weights hold ``codebook[indices]`` exactly.

    Raises:
        ValueError: naming the file, if it is foreign, corrupt or does not fit ``model``.
    """
    path = Path(path)
    found = _file_format(path)
    if found == FORMAT_NAME:
        return load_packed_into(model, path)
    if found != FLOAT_FORMAT:
        raise ValueError(f"{path}: header metadata format is {found!r}, expected {FORMAT_NAME!r} "
                         f"(packed) or {FLOAT_FORMAT!r}")
    try:
        model.load_state_dict(load_file(path), strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: does not fit the model described by {CONFIG_FILE} "
                         f"({error})") from None
    return model


def load_export(folder: str | Path) -> tuple[nn.ModuleDict, dict]:
    """Rebuild an exported model: ``({"student": WhisperStudent, "classifier":
    IntentClassifier}, config)``, weights loaded, in training mode (call ``eval()``)."""
    config = read_export_config(folder)
    student = WhisperStudent.from_config(config["whisper_config"], pad_to_30s=config["pad_to_30s"],
                                         sampling_rate=config["sampling_rate"])
    classifier = IntentClassifier(config["student_size"], len(config["labels"]))
    model = nn.ModuleDict({"student": student, "classifier": classifier})
    load_weights(model, Path(folder) / MODEL_FILE)
    return model, config


class QuadsIntentClassifier(Pretrained):
    """A ready-to-use spoken intent classifier loaded from a QUADS export folder.

    Build it with :meth:`from_hparams` (or its alias :meth:`from_pretrained`). The modules are
    ``self.mods.student`` (:class:`WhisperStudent`) and ``self.mods.classifier``
    (:class:`IntentClassifier`); ``self.hparams`` holds the export's ``config.json`` entries.

    Example
    -------
    >>> classifier = QuadsIntentClassifier.from_hparams("results/model")  # doctest: +SKIP
    >>> classifier.classify_file("play_jazz.wav")  # doctest: +SKIP
    ('play_music', 0.93)
    """

    MODULES_NEEDED = ["student", "classifier"]
    HPARAMS_NEEDED = ["labels", "sampling_rate", "pad_to_30s"]

    @classmethod
    def from_hparams(cls, source: str | Path, run_opts: dict | RunOptions | None = None,
                     freeze_params: bool = True) -> QuadsIntentClassifier:
        """Load the export folder ``source``.

        Arguments
        ---------
        source : str or Path
            A folder written by ``export_model`` (``config.json`` + ``model.safetensors``).
        run_opts : dict or RunOptions, optional
            SpeechBrain run options, e.g. ``{"device": "cuda:0"}`` (default: best device found).
        freeze_params : bool
            Put the modules in eval mode and stop their gradients (the usual for inference).

        Raises
        ------
        FileNotFoundError, ValueError
            Naming the file, if ``source`` is not a readable export folder.
        """
        model, config = load_export(source)
        hparams = {key: config[key] for key in ("labels", "sampling_rate", "pad_to_30s", "bits")
                   if key in config}
        return cls(modules=dict(model.items()), hparams=hparams, run_opts=run_opts,
                   freeze_params=freeze_params)

    from_pretrained = from_hparams

    @property
    def labels(self) -> list[str]:
        """Intent labels in class-index order."""
        return self.hparams.labels

    @property
    def sampling_rate(self) -> int:
        """Sample rate in Hz that :meth:`classify_batch` expects its waveforms at."""
        return self.hparams.sampling_rate

    @torch.no_grad()
    def compute_logits(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> torch.Tensor:
        """Waveforms (B, T) at :attr:`sampling_rate` Hz and relative lengths (B,) in (0, 1]
        -> intent logits (B, n_intents). ``wav_lens`` None means every waveform is full length."""
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        wavs = wavs.to(self.device, torch.float32)
        if wav_lens is not None:
            wav_lens = wav_lens.to(self.device)
        hidden, frame_lens = self.mods.student(wavs, wav_lens)
        return self.mods.classifier(hidden[-1], frame_lens)

    def classify_batch(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> tuple:
        """Classify a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, T) waveforms at :attr:`sampling_rate` Hz, zero-padded to the longest.
        wav_lens : torch.Tensor, optional
            (B,) lengths relative to T, in (0, 1]; None means all full length.

        Returns
        -------
        scores : torch.Tensor
            (B,) softmax probability of the predicted intent.
        indices : torch.Tensor
            (B,) int64 index of the predicted intent.
        labels : list of str
            The B predicted intents.
        """
        scores, indices = self.compute_logits(wavs, wav_lens).softmax(dim=-1).max(dim=-1)
        return scores, indices, [self.labels[i] for i in indices.tolist()]

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> tuple:
        """Same as :meth:`classify_batch` (SpeechBrain's convention)."""
        return self.classify_batch(wavs, wav_lens)

    def load_audio(self, path: str | Path) -> torch.Tensor:
        """Read an audio file as a mono (T,) float32 waveform at :attr:`sampling_rate` Hz.

        Channels are averaged; other sample rates are resampled.

        Raises
        ------
        AudioFileError
            If the file is missing, unreadable, empty, shorter than 25 ms or not finite.
        """
        if not Path(path).is_file():
            raise AudioFileError(path, "no such file" if not Path(path).exists() else "not a file")
        try:
            rate = soundfile.info(str(path)).samplerate
            wave = read_audio(str(path))
        except (OSError, RuntimeError, ValueError) as error:  # LibsndfileError is a RuntimeError
            raise AudioFileError(path, f"cannot read audio ({error})") from None
        if wave.dim() == 2:
            wave = wave.mean(dim=-1)
        wave = wave.float()
        if rate != self.sampling_rate and wave.numel():
            wave = torchaudio.functional.resample(wave, rate, self.sampling_rate)
        shortest = math.ceil(MIN_SAMPLES * self.sampling_rate / WHISPER_SAMPLE_RATE)
        if wave.numel() < shortest:
            raise AudioFileError(path, f"{wave.numel() / self.sampling_rate:.3f} s of audio; at "
                                       f"least {MIN_SAMPLES / WHISPER_SAMPLE_RATE:.3f} s is needed")
        if not torch.isfinite(wave).all():
            raise AudioFileError(path, "contains NaN or infinite samples")
        return wave

    def classify_file(self, path: str | Path) -> tuple[str, float]:
        """Classify one audio file -> (intent, softmax probability of that intent).

        Raises
        ------
        AudioFileError
            If the file cannot be read or classified.
        """
        result = self.classify_files([path], batch_size=1)[0]
        if isinstance(result, AudioFileError):
            raise result
        return result

    def classify_files(self, paths: Sequence[str | Path],
                       batch_size: int = 8) -> list[tuple[str, float] | AudioFileError]:
        """Classify audio files, ``batch_size`` at a time; a bad file does not stop the others.

        Returns
        -------
        list
            One entry per path, in order: ``(intent, probability)``, or the file's
            :class:`AudioFileError`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        results: list[tuple[str, float] | AudioFileError] = []
        for start in range(0, len(paths), batch_size):
            results.extend(self._classify_chunk(paths[start:start + batch_size]))
        return results

    def _classify_chunk(self, paths: Sequence[str | Path]) -> list[tuple[str, float] | AudioFileError]:
        """Read ``paths`` and classify the readable ones as one batch."""
        results: list = []
        waves: dict[int, torch.Tensor] = {}
        for i, path in enumerate(paths):
            try:
                waves[i] = self.load_audio(path)
                results.append(None)
            except AudioFileError as error:
                results.append(error)
        if waves:
            for i, outcome in zip(waves, self._classify_waves(paths, waves), strict=True):
                results[i] = outcome
        return results

    def _classify_waves(self, paths: Sequence[str | Path],
                        waves: dict[int, torch.Tensor]) -> list[tuple[str, float] | AudioFileError]:
        """Classify waveforms {index in paths: (T_i,)} as one batch; if the batch fails, one by
        one, so that only the offending file (e.g. longer than the model accepts) gets the error."""
        try:
            batch, lens = batch_pad_right(list(waves.values()))
            scores, _, labels = self.classify_batch(batch, lens)
            return list(zip(labels, scores.tolist(), strict=True))
        except ValueError as error:
            if len(waves) == 1:
                return [AudioFileError(paths[next(iter(waves))], str(error))]
        return [self._classify_waves(paths, {i: wave})[0] for i, wave in waves.items()]
