"""SpeechBrain-style inference for an exported QUADS intent classifier.

An export folder (written by :func:`speechbrain_quads.deploy.export.export_model`) holds
``config.json`` (labels, front-end settings, the student's WhisperConfig, the SHA-256 of the weights)
and ``model.safetensors`` (packed b-bit indices + codebooks, or a plain float32 state_dict). No
``hyperparams.yaml`` is needed: the architecture is rebuilt from ``config.json``, and packed weights
dequantize to exactly the values the quantized model used in training, so the logits are identical.
The folder is found like SpeechBrain's ``Pretrained.from_hparams`` finds its files (a local folder,
a Hugging Face hub id or a URL, through ``speechbrain.utils.fetching.fetch``), and the results have
``EncoderClassifier``'s shapes:

    from speechbrain_quads.deploy.inference import QuadsIntentClassifier
    classifier = QuadsIntentClassifier.from_hparams(source="results/slurp_4bit/model",
                                                    run_opts={"device": "cpu"})
    out_prob, score, index, text_lab = classifier.classify_file("turn_on_the_lights.wav")
    out_prob, score, index, text_lab = classifier.classify_batch(wavs, wav_lens)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import soundfile
import torch
import torchaudio
from huggingface_hub.utils import validate_repo_id
from speechbrain.dataio.dataio import read_audio
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.data_utils import batch_pad_right
from speechbrain.utils.fetching import FetchConfig, FetchSource, LocalStrategy, fetch
from speechbrain.utils.run_opts import RunOptions
from torch import nn

from speechbrain_quads.deploy.errors import AudioFileError
from speechbrain_quads.deploy.export import (
    CONFIG_FILE,
    MODEL_FILE,
    load_weights,
    read_config,
    verify_model_file,
)
from speechbrain_quads.models.features import MIN_SAMPLES, WHISPER_SAMPLE_RATE
from speechbrain_quads.models.heads import IntentClassifier
from speechbrain_quads.models.whisper import WhisperStudent

Classification = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]
"""``(out_prob (B, K) log-posteriors, score (B,) best log-posterior, index (B,) int64, text_lab)``,
as ``speechbrain.inference.classifiers.EncoderClassifier.classify_batch`` returns."""


def _check_source(source: str | FetchSource) -> None:
    """FileNotFoundError naming ``source`` if it can be neither a local export folder (one that
    holds both files) nor a remote one (a Hugging Face hub id or a URL)."""
    if isinstance(source, FetchSource) or source.startswith(("http:", "https:")):
        return
    folder = Path(source)
    if folder.is_dir():
        for name in (CONFIG_FILE, MODEL_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: missing; {folder} is not an exported "
                                        f"QUADS model folder ({CONFIG_FILE} + {MODEL_FILE})")
        return
    if folder.exists():
        raise FileNotFoundError(f"{folder}: not a directory (expected an exported model folder "
                                f"holding {CONFIG_FILE} and {MODEL_FILE})")
    try:
        validate_repo_id(source)
    except ValueError:
        raise FileNotFoundError(f"{source}: no such folder, and not a Hugging Face hub id (expected "
                                f"an exported model folder holding {CONFIG_FILE} and "
                                f"{MODEL_FILE})") from None


def _fetch(filename: str, source: str | FetchSource, savedir: str | Path | None,
           local_strategy: LocalStrategy, fetch_config: FetchConfig) -> Path:
    """``speechbrain.utils.fetching.fetch`` of one export file, with errors that name it."""
    try:
        path = Path(fetch(filename, source=source, savedir=savedir, local_strategy=local_strategy,
                          fetch_config=fetch_config))
    except (OSError, ValueError) as error:
        local = isinstance(source, str) and Path(source).is_dir()
        where = "" if local else "no such local folder; as a hub id or URL, "
        raise FileNotFoundError(f"{source}: {where}fetching {filename} failed "
                                f"({type(error).__name__}: {error})") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: fetched {filename} from {source}, but it is not a file")
    return path


def fetch_export(source: str | Path | FetchSource, savedir: str | Path | None = None,
                 local_strategy: LocalStrategy = LocalStrategy.SYMLINK,
                 fetch_config: FetchConfig | None = None) -> tuple[dict, Path]:
    """Fetch and check an export: ``config.json`` first, then ``model.safetensors``, verified
    against the config's ``model_sha256`` before anything parses it.

    Arguments
    ---------
    source : str, Path or FetchSource
        A local export folder, a Hugging Face hub id (``owner/name``) or a URL folder, as in
        ``speechbrain.utils.fetching.fetch``.
    savedir : str or Path, optional
        Where the files are linked or copied (``local_strategy``); needed for URLs. Without it a
        local folder is read in place and hub files from the Hugging Face cache.
    local_strategy, fetch_config
        Passed to ``fetch``.

    Returns
    -------
    (config, model_path)
        The checked ``config.json`` entries and the local path of ``model.safetensors``.

    Raises
    ------
    FileNotFoundError
        Naming the source and file, if a file cannot be found or fetched.
    ValueError
        Naming the file (and key), if ``config.json`` is invalid or ``model.safetensors`` does not
        match its checksum (zeroed, truncated, bit-flipped or from another export).
    """
    if not isinstance(source, FetchSource):
        source = str(source)
    _check_source(source)
    args = (source, savedir, local_strategy, fetch_config or FetchConfig())
    config_path = _fetch(CONFIG_FILE, *args)
    config = read_config(config_path)
    model_path = _fetch(MODEL_FILE, *args)
    verify_model_file(config, model_path, config_path)
    return config, model_path


def build_model(config: dict, model_path: str | Path) -> nn.ModuleDict:
    """``{"student": WhisperStudent, "classifier": IntentClassifier}`` rebuilt from checked
    ``config`` entries, with the weights of ``model_path`` loaded (training mode; call ``eval()``)."""
    try:
        student = WhisperStudent.from_config(config["whisper_config"],
                                             pad_to_30s=config["pad_to_30s"],
                                             sampling_rate=config["sampling_rate"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{CONFIG_FILE} for {model_path}: whisper_config does not build a Whisper "
                         f"encoder ({error})") from None
    classifier = IntentClassifier(config["student_size"], len(config["labels"]))
    return load_weights(nn.ModuleDict({"student": student, "classifier": classifier}),
                        model_path, config.get("bit_widths"))


def load_export(source: str | Path | FetchSource,
                savedir: str | Path | None = None) -> tuple[nn.ModuleDict, dict]:
    """Rebuild an exported model (see :func:`fetch_export` for ``source`` and ``savedir``):
    ``({"student": WhisperStudent, "classifier": IntentClassifier}, config)``, weights loaded,
    in training mode (call ``eval()``)."""
    config, model_path = fetch_export(source, savedir)
    return build_model(config, model_path), config


class QuadsIntentClassifier(Pretrained):
    """A ready-to-use spoken intent classifier loaded from a QUADS export, with the interface of
    SpeechBrain's ``EncoderClassifier`` (``classify_batch`` / ``classify_file`` / ``forward``).

    Build it with :meth:`from_hparams` (or its alias :meth:`from_pretrained`). The modules are
    ``self.mods.student`` (:class:`WhisperStudent`) and ``self.mods.classifier``
    (:class:`IntentClassifier`); ``self.hparams`` holds ``labels``, ``sampling_rate``,
    ``pad_to_30s`` and ``bits`` from the export's ``config.json``.

    Example
    -------
    >>> classifier = QuadsIntentClassifier.from_hparams(source="results/model")  # doctest: +SKIP
    >>> out_prob, score, index, text_lab = classifier.classify_file("play_jazz.wav")  # doctest: +SKIP
    >>> text_lab, score.exp()  # doctest: +SKIP
    (['play_music'], tensor([0.9300]))
    """

    MODULES_NEEDED = ["student", "classifier"]
    HPARAMS_NEEDED = ["labels", "sampling_rate", "pad_to_30s"]

    @classmethod
    def from_hparams(cls, source: str | Path | FetchSource, savedir: str | Path | None = None,
                     run_opts: dict | RunOptions | None = None, freeze_params: bool = True,
                     local_strategy: LocalStrategy = LocalStrategy.SYMLINK,
                     fetch_config: FetchConfig | None = None) -> QuadsIntentClassifier:
        """Fetch and load an export, as ``Pretrained.from_hparams`` does for a SpeechBrain model.

        Arguments
        ---------
        source : str, Path or FetchSource
            A folder written by ``export_model`` (``config.json`` + ``model.safetensors``), a
            Hugging Face hub id holding those two files, or a URL folder (needs ``savedir``).
        savedir : str or Path, optional
            Where the fetched files are linked or copied; not needed for a local folder. Files
            already there are used as they are unless ``fetch_config.overwrite`` (SpeechBrain's rule).
        run_opts : dict or RunOptions, optional
            SpeechBrain run options, e.g. ``{"device": "cuda:0"}`` (default: best device found).
        freeze_params : bool
            Put the modules in eval mode and stop their gradients (the usual for inference).
        local_strategy, fetch_config
            Passed to ``speechbrain.utils.fetching.fetch`` (symlink or copy into ``savedir``,
            revision, token, offline use, ...).

        Raises
        ------
        FileNotFoundError, ValueError
            Naming the source or file (and config key), if ``source`` is not a readable export.
        """
        config, model_path = fetch_export(source, savedir, local_strategy, fetch_config)
        model = build_model(config, model_path)
        hparams = {key: config[key] for key in ("labels", "sampling_rate", "pad_to_30s", "bits")}
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

    def classify_batch(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> Classification:
        """Classify a batch of waveforms; returns what ``EncoderClassifier.classify_batch`` does.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, T) waveforms at :attr:`sampling_rate` Hz, zero-padded to the longest, or one (T,).
        wav_lens : torch.Tensor, optional
            (B,) lengths relative to T, in (0, 1]; None means all full length.

        Returns
        -------
        out_prob : torch.Tensor
            (B, n_intents) log posterior probabilities (log-softmax of the logits).
        score : torch.Tensor
            (B,) log posterior of the best intent (``score.exp()`` is its probability).
        index : torch.Tensor
            (B,) int64 index of the best intent in :attr:`labels`.
        text_lab : list of str
            The B best intents.

        Raises
        ------
        ValueError
            If a waveform is shorter than 25 ms, not finite, or longer than the model accepts.
        """
        out_prob = self.compute_logits(wavs, wav_lens).log_softmax(dim=-1)
        score, index = torch.max(out_prob, dim=-1)
        return out_prob, score, index, [self.labels[i] for i in index.tolist()]

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> Classification:
        """Same as :meth:`classify_batch` (SpeechBrain's convention)."""
        return self.classify_batch(wavs, wav_lens)

    def load_audio(self, path: str | Path) -> torch.Tensor:
        """Read a local audio file as a mono (T,) float32 waveform at :attr:`sampling_rate` Hz.

        Channels are averaged; a file at another sample rate is resampled to :attr:`sampling_rate`.

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
        if wave.numel() == 0:
            raise AudioFileError(path, "no audio samples (empty recording)")
        if rate != self.sampling_rate:
            wave = torchaudio.functional.resample(wave, rate, self.sampling_rate)
        shortest = math.ceil(MIN_SAMPLES * self.sampling_rate / WHISPER_SAMPLE_RATE)
        if wave.numel() < shortest:
            raise AudioFileError(path, f"{wave.numel() / self.sampling_rate * 1000:.1f} ms of audio; "
                                       f"at least {MIN_SAMPLES / WHISPER_SAMPLE_RATE * 1000:.0f} ms "
                                       "is needed")
        if not torch.isfinite(wave).all():
            raise AudioFileError(path, "contains NaN or infinite samples")
        return wave

    def classify_file(self, path: str | Path) -> Classification:
        """Classify one audio file, as ``EncoderClassifier.classify_file`` does.

        The file may be at any sample rate soundfile reads (resampled to :attr:`sampling_rate`)
        and have any number of channels (averaged).

        Returns
        -------
        (out_prob, score, index, text_lab)
            As :meth:`classify_batch` for a batch of one: shapes (1, n_intents), (1,), (1,) and a
            one-label list.

        Raises
        ------
        AudioFileError
            If the file cannot be read or classified (missing, empty, under 25 ms, ...).
        """
        result = self.classify_files([path], batch_size=1)[0]
        if isinstance(result, AudioFileError):
            raise result
        return result

    def classify_files(self, paths: Sequence[str | Path],
                       batch_size: int = 8) -> list[Classification | AudioFileError]:
        """Classify audio files, ``batch_size`` at a time; a bad file does not stop the others.

        Returns
        -------
        list
            One entry per path, in order: the file's :meth:`classify_file` result, or its
            :class:`AudioFileError`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        results: list[Classification | AudioFileError] = []
        for start in range(0, len(paths), batch_size):
            results.extend(self._classify_chunk(paths[start:start + batch_size]))
        return results

    def _classify_chunk(self, paths: Sequence[str | Path]) -> list[Classification | AudioFileError]:
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
                        waves: dict[int, torch.Tensor]) -> list[Classification | AudioFileError]:
        """Classify waveforms {index in paths: (T_i,)} as one batch, split per file; if the batch
        fails, one by one, so that only the offending file (e.g. too long) gets the error."""
        try:
            batch, lens = batch_pad_right(list(waves.values()))
            out_prob, score, index, text_lab = self.classify_batch(batch, lens)
            return [(out_prob[i:i + 1], score[i:i + 1], index[i:i + 1], text_lab[i:i + 1])
                    for i in range(len(waves))]
        except ValueError as error:
            if len(waves) == 1:
                return [AudioFileError(paths[next(iter(waves))], str(error))]
        return [self._classify_waves(paths, {i: wave})[0] for i, wave in waves.items()]
