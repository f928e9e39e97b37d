"""Run an ONNX QUADS classifier (written by :mod:`speechbrain_quads.deploy.onnx_export`) with
onnxruntime and numpy only: this module never imports torch (``soundfile`` reads audio files).

    from speechbrain_quads.deploy.onnx_runtime import OnnxIntentClassifier
    classifier = OnnxIntentClassifier("model.onnx", threads=2)          # or compute="int8"
    label, probability, probabilities = classifier.classify_file("a.wav")

``compute="float"`` (default) lets onnxruntime's constant folding rebuild the codebook weights once,
at session start, and runs in float32. ``compute="int8"`` folds them into a float graph (an
onnxruntime session at the basic level, written to a temporary file), then re-quantizes every
weight MatMul per output channel to int8 with ``onnxruntime.quantization.quantize_dynamic``
(needs the ``onnx`` package): faster on CPUs with int8 dot products, not bit-exact with the codebook
model.

Audio must be 16 kHz (the model's ``sampling_rate``): other rates are refused with the file named,
not resampled. Channels are averaged.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile

from speechbrain_quads.deploy.errors import AudioFileError

ONNX_FORMAT = "speechbrain-quads-onnx"
READABLE_VERSIONS = ("1",)
COMPUTE = ("float", "int8")


class OnnxModelError(ValueError):
    """A file that is not a loadable ONNX QUADS classifier; the message names it."""


def session_options(threads: int | None = None,
                    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                    spinning: bool = True) -> ort.SessionOptions:
    """onnxruntime options: ``threads`` intra-op threads (None: onnxruntime's default), one
    inter-op thread, sequential execution, graph optimisation ``level``; ``spinning`` False
    stops the intra-op threads from busy-waiting for the next call after each one."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = level
    options.log_severity_level = 3
    return options


def _session(model: str | bytes, options: ort.SessionOptions, path: Path) -> ort.InferenceSession:
    """An onnxruntime CPU session of ``model`` (a file path or serialized bytes), with load
    errors turned into :class:`OnnxModelError` naming ``path``."""
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/... classes
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if len(first) > 300:  # its reason comes last, after a C++ source location
            first = "..." + first[-300:]
        raise OnnxModelError(f"{path}: not a loadable ONNX model: truncated, corrupt, not ONNX or "
                             f"too new for this onnxruntime (onnxruntime: {first})") from None


def int8_model(path: str | Path, threads: int | None = None) -> bytes:
    """The int8 version of an ONNX classifier: codebook weights folded to float32, then every
    weight MatMul dynamically quantized, per output channel, to int8 (``MatMulInteger`` kernels).

    Returns:
        the serialized int8 model.

    Raises:
        OnnxModelError: naming ``path``, if it does not load.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="quads_int8_") as tmp:
        folded, quantized = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        options = session_options(threads, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
        options.optimized_model_filepath = str(folded)
        _session(str(path), options, path)
        logging.disable(logging.WARNING)  # quantize_dynamic's root-logger advice on pre-processing
        try:
            quantize_dynamic(folded, quantized, op_types_to_quantize=["MatMul"], per_channel=True,
                             weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        return quantized.read_bytes()


class OnnxIntentClassifier:
    """An ONNX QUADS intent classifier on onnxruntime's CPU provider.

    Arguments
    ---------
    path : str or Path
        The ``.onnx`` file written by ``onnx_export``.
    threads : int, optional
        Intra-op threads (default: onnxruntime's choice, one per core).
    compute : str
        ``"float"`` (codebook weights rebuilt at session start, float32 compute) or ``"int8"``
        (see :func:`int8_model`).
    spinning : bool
        True (onnxruntime's default): after each call the intra-op threads busy-wait a while
        for the next one, which speeds up back-to-back calls. False: they sleep at once, which
        leaves the cores to the rest of the application between utterances.

    Raises
    ------
    FileNotFoundError
        No such file.
    OnnxModelError
        Naming the file: not ONNX, truncated, or an ONNX model that is not a QUADS classifier.
    """

    def __init__(self, path: str | Path, threads: int | None = None, compute: str = "float",
                 spinning: bool = True):
        if compute not in COMPUTE:
            raise ValueError(f"compute must be one of {COMPUTE}, got {compute!r}")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX model file")
        session = _session(str(self.path), session_options(threads, spinning=spinning),
                           self.path)
        meta = session.get_modelmeta().custom_metadata_map
        if meta.get("format") != ONNX_FORMAT:
            raise OnnxModelError(f"{self.path}: an ONNX model without {ONNX_FORMAT!r} metadata "
                                 f"(format={meta.get('format')!r}): not a QUADS classifier")
        if meta.get("format_version") not in READABLE_VERSIONS:
            raise OnnxModelError(f"{self.path}: unsupported format_version "
                                 f"{meta.get('format_version')!r} (this reader knows "
                                 f"{', '.join(READABLE_VERSIONS)})")
        try:
            self.labels: list[str] = json.loads(meta["labels"])
            self.sampling_rate = int(meta["sampling_rate"])
            self.min_samples = int(meta["min_samples"])
            self.max_samples = int(meta["max_samples"])
        except (KeyError, ValueError) as error:
            raise OnnxModelError(f"{self.path}: metadata entry {error} is missing or "
                                 "malformed") from None
        self.bits = meta.get("bits")
        self.compute = compute
        if compute == "int8":
            session = _session(int8_model(self.path, threads),
                               session_options(threads, spinning=spinning), self.path)
        self.session = session

    def logits(self, waveform: np.ndarray) -> np.ndarray:
        """Waveforms (T,) or (B, T) float at :attr:`sampling_rate` Hz, every row a whole
        utterance -> intent logits (B, n_intents) float32."""
        wave = np.asarray(waveform, dtype=np.float32)
        if wave.ndim == 1:
            wave = wave[None]
        if wave.ndim != 2:
            raise ValueError(f"waveform must be (samples,) or (batch, samples); got {wave.shape}")
        self._check_length(wave.shape[1], "waveform")
        return self.session.run(["logits"], {"waveform": np.ascontiguousarray(wave)})[0]

    def _check_length(self, samples: int, name: str | Path) -> None:
        """AudioFileError naming ``name`` unless ``samples`` is within the model's limits."""
        rate = self.sampling_rate
        if samples == 0:
            raise AudioFileError(name, "no audio samples (empty recording)")
        if samples < self.min_samples:
            raise AudioFileError(name, f"{samples / rate * 1000:.1f} ms of audio; at least "
                                       f"{self.min_samples / rate * 1000:.0f} ms is needed")
        if self.max_samples and samples > self.max_samples:
            raise AudioFileError(name, f"{samples / rate:.2f} s of audio; this model takes at most "
                                       f"{self.max_samples / rate:.2f} s: split longer audio")

    def read_audio(self, path: str | Path) -> np.ndarray:
        """A 16-kHz audio file -> mono (T,) float32 waveform (channels averaged).

        Raises:
            AudioFileError: the file is missing, unreadable, at another sample rate, empty, too
                short or too long, or holds NaN/infinite samples.
        """
        if not Path(path).is_file():
            raise AudioFileError(path, "no such file" if not Path(path).exists() else "not a file")
        try:
            wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (OSError, RuntimeError, ValueError) as error:  # LibsndfileError is a RuntimeError
            raise AudioFileError(path, f"cannot read audio ({error})") from None
        if rate != self.sampling_rate:
            raise AudioFileError(path, f"sample rate {rate} Hz; this model takes "
                                       f"{self.sampling_rate} Hz audio (resample it first, e.g. "
                                       f"`sox IN -r {self.sampling_rate} OUT.wav`)")
        wave = wave.mean(axis=1, dtype=np.float32)
        self._check_length(wave.shape[0], path)
        if not np.isfinite(wave).all():
            raise AudioFileError(path, "contains NaN or infinite samples")
        return wave

    def classify(self, waveform: np.ndarray) -> tuple[str, float, np.ndarray]:
        """One utterance (T,) at :attr:`sampling_rate` Hz -> (intent, its softmax probability,
        probabilities (n_intents,) float32)."""
        logits = self.logits(waveform)[0].astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best = int(probabilities.argmax())
        return self.labels[best], float(probabilities[best]), probabilities.astype(np.float32)

    def classify_file(self, path: str | Path) -> tuple[str, float, np.ndarray]:
        """:meth:`classify` of an audio file read by :meth:`read_audio` (its errors name it)."""
        return self.classify(self.read_audio(path))

