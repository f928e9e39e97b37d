"""Export a QUADS model folder to one ONNX graph whose weights stay in codebook form.

    python -m speechbrain_quads.deploy.onnx_export results/slurp_4bit/1986/model model.onnx

The graph is the whole classifier: ``waveform`` (batch, samples) float32 at 16 kHz -> Whisper
log-mel (reflect-padded STFT as a strided convolution with an in-graph DFT basis, mel filters,
log10, per-utterance max clamp) -> the student encoder (convolutions, sinusoidal positions, the
transformer layers, final layer norm) -> mean pooling -> the intent head -> ``logits``
(batch, n_intents). The time axis is dynamic; every row of a batch must be a whole utterance of the
same length (no padding: use batch 1 for files of different lengths).

A quantized weight is stored as its packed b-bit indices (uint8 bytes, exactly as in
``model.safetensors``) and float32 codebooks; the graph unpacks the bits (``BitShift`` /
``BitwiseAnd``), ``Gather``-s the codebook, scatters the weights kept exactly over it
(``outlier_fraction``: int32 positions and float32 values, as in the file) and reshapes. Those
nodes depend only on initializers, so onnxruntime's constant folding rebuilds every weight once,
at session start, and inference runs on float32 weights. Whisper's positional table is rebuilt
in the graph from its recipe (see :mod:`speechbrain_quads.models.positional`) instead of being
stored. The file is therefore about the size of the packed safetensors file (4 bits: 1.01x), not
the 31 MB of float32 weights.

``metadata_props`` hold ``format`` (:data:`ONNX_FORMAT`), ``format_version``, ``labels`` (JSON
list in class-index order), ``sampling_rate`` (16000), ``min_samples``, ``max_samples`` (0: no
limit), ``bits`` (the widest index width), ``bit_widths`` (JSON list of every width stored, for a
quantized export), ``pad_to_30s`` and ``source_sha256`` (the export's ``model_sha256``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors import safe_open

from speechbrain_quads.codebook.packed_format import OUTLIER_INDEX_SUFFIX, OUTLIER_VALUE_SUFFIX
from speechbrain_quads.codebook.packing import CODEBOOK_SUFFIX, FORMAT_NAME, INDICES_SUFFIX
from speechbrain_quads.deploy.export import MODEL_FILE, describe_bits
from speechbrain_quads.deploy.inference import load_export
from speechbrain_quads.deploy.onnx_runtime import ONNX_FORMAT, READABLE_VERSIONS
from speechbrain_quads.models.features import (
    CHUNK_SAMPLES,
    HOP_LENGTH,
    MIN_SAMPLES,
    N_FFT,
    WHISPER_SAMPLE_RATE,
)
from speechbrain_quads.models.positional import sinusoid_recipe

ONNX_FORMAT_VERSION = READABLE_VERSIONS[-1]
OPSET = 20
"""ONNX opset of the graph (``Gelu`` needs 20); onnxruntime 1.16 and later run it."""
POSITIONS_KEY = "student.encoder.embed_positions.weight"


class _Builder:
    """Accumulates nodes and initializers; every ``op`` returns its output name(s)."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._count = 0
        self._cache: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        """A new unique tensor name starting with ``hint``."""
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray, name: str | None = None) -> str:
        """Add ``value`` as an initializer (small constants are shared by value)."""
        value = np.array(value, order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
        key = None
        if name is None and value.size <= 16:
            key = (value.dtype.str, value.shape, value.tobytes())
            if key in self._cache:
                return self._cache[key]
        name = name or self.fresh("const")
        if name in self._names:
            raise ValueError(f"duplicate initializer name {name!r}")
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(value, name))
        if key is not None:
            self._cache[key] = name
        return name

    def i64(self, *values: int) -> str:
        """A shared int64 vector constant."""
        return self.const(np.array(values, dtype=np.int64))

    def f32(self, value: float) -> str:
        """A shared float32 scalar constant."""
        return self.const(np.array(value, dtype=np.float32))

    def arange(self, stop: int, dtype: type) -> str:
        """Graph: ``Range(0, stop, 1)`` of numpy ``dtype``."""
        return self.op("Range", [self.const(np.array(value, dtype)) for value in (0, stop, 1)])

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        """Append a node; returns its output name (or names when ``outputs`` > 1)."""
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names


def _unpack_indices(g: _Builder, packed: str, bits: int, numel: int) -> str:
    """Graph: packed uint8 bytes (ceil(numel*bits/8),) -> int64 indices (numel,), least
    significant bit first (the layout of :func:`speechbrain_quads.codebook.packing.pack_indices`)."""
    if bits == 8:
        return g.op("Cast", [packed], to=TensorProto.INT64)
    if 8 % bits == 0:  # 1, 2, 4 bits: whole indices per byte, shifted out and masked
        shifts = g.const(np.arange(0, 8, bits, dtype=np.uint8))
        fields = g.op("BitShift", [g.op("Unsqueeze", [packed, g.i64(1)]), shifts], direction="RIGHT")
        fields = g.op("BitwiseAnd", [fields, g.const(np.array(2**bits - 1, dtype=np.uint8))])
        flat = g.op("Slice", [g.op("Reshape", [fields, g.i64(-1)]), g.i64(0), g.i64(numel)])
        return g.op("Cast", [flat], to=TensorProto.INT64)
    # any other width: bit planes (bytes, 8) -> (numel, bits) rows -> weighted sum of the bits
    shifts = g.const(np.arange(8, dtype=np.uint8))
    planes = g.op("BitShift", [g.op("Unsqueeze", [packed, g.i64(1)]), shifts], direction="RIGHT")
    planes = g.op("BitwiseAnd", [planes, g.const(np.array(1, dtype=np.uint8))])  # (bytes, 8)
    flat = g.op("Slice", [g.op("Reshape", [planes, g.i64(-1)]), g.i64(0), g.i64(numel * bits)])
    rows = g.op("Cast", [g.op("Reshape", [flat, g.i64(numel, bits)])], to=TensorProto.FLOAT)
    powers = g.const((2.0 ** np.arange(bits)).astype(np.float32))
    return g.op("Cast", [g.op("MatMul", [rows, powers])], to=TensorProto.INT64)


def _codebook_weight(g: _Builder, key: str, entry: dict, packed: np.ndarray,
                     codebook: np.ndarray, outlier_index: np.ndarray | None = None,
                     outlier_value: np.ndarray | None = None) -> str:
    """Graph: a quantized weight ``codebook[group, index]`` of shape ``entry["shape"]`` (float32),
    with the weights kept exactly (``outlier_index`` int32 flat positions, ``outlier_value``
    float32, both ``(n,)``) scattered over it when given."""
    bits, numel, groups = entry["bits"], entry["numel"], entry["groups"]
    indices = _unpack_indices(g, g.const(packed, key + INDICES_SUFFIX), bits, numel)
    if groups > 1:  # group r's indices address row r of the (groups, 2**bits) codebook
        offsets = (np.arange(groups, dtype=np.int64) * 2**bits)[:, None]
        indices = g.op("Reshape", [g.op("Add", [g.op("Reshape", [indices, g.i64(groups, -1)]),
                                                g.const(offsets)]), g.i64(-1)])
    table = g.const(codebook.reshape(-1).astype(np.float32), key + CODEBOOK_SUFFIX)
    flat = g.op("Gather", [table, indices])
    if outlier_index is not None and outlier_index.size:  # stored as in the file: int32 + float32
        positions = g.op("Cast", [g.const(outlier_index, key + OUTLIER_INDEX_SUFFIX)],
                         to=TensorProto.INT64)
        flat = g.op("ScatterND", [flat, g.op("Unsqueeze", [positions, g.i64(1)]),
                                  g.const(outlier_value, key + OUTLIER_VALUE_SUFFIX)])
    return g.op("Reshape", [flat, g.i64(*entry["shape"])])


class _Weights:
    """The model's tensors by state_dict key, as graph names: codebook subgraphs for quantized
    weights (read from the packed file), float32 initializers for the rest."""

    def __init__(self, g: _Builder, state: dict[str, torch.Tensor], model_path: Path):
        self.g, self.state = g, state
        self.quantized: dict[str, dict] = {}
        self.packed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        with safe_open(model_path, framework="np") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") == FORMAT_NAME:
                self.quantized = json.loads(metadata["quantized"])
                for key, entry in self.quantized.items():
                    exact = ((handle.get_tensor(key + OUTLIER_INDEX_SUFFIX),
                              handle.get_tensor(key + OUTLIER_VALUE_SUFFIX))
                             if entry.get("outliers") else ())
                    self.packed[key] = (handle.get_tensor(key + INDICES_SUFFIX),
                                        handle.get_tensor(key + CODEBOOK_SUFFIX), *exact)

    def __call__(self, key: str, transpose: bool = False) -> str:
        """Graph name of tensor ``key`` (float32), transposed (2-D) when ``transpose``."""
        if key in self.quantized:
            name = _codebook_weight(self.g, key, self.quantized[key], *self.packed[key])
            return self.g.op("Transpose", [name], perm=[1, 0]) if transpose else name
        value = self.state[key].detach().float().cpu().numpy()
        return self.g.const(value.T if transpose else value, key + (".T" if transpose else ""))


def _positions(g: _Builder, table: torch.Tensor) -> str:
    """Graph name of Whisper's (1500, C) positional table: rebuilt from its recipe when one
    reproduces it bit for bit, else stored."""
    recipe = sinusoid_recipe(table)
    if recipe is None:
        return g.const(table.detach().float().cpu().numpy(), POSITIONS_KEY)
    computed, stored = recipe.split(">")
    dtype = {"float64": (np.float64, TensorProto.DOUBLE), "float32": (np.float32, TensorProto.FLOAT)}
    np_type, onnx_type = dtype[computed]
    length, channels = table.shape
    increment = math.log(10000) / (channels // 2 - 1)
    steps = g.arange(channels // 2, np_type)
    inverse = g.op("Exp", [g.op("Mul", [g.const(np.array(-increment, np_type)), steps])])
    positions = g.arange(length, np_type)
    angles = g.op("Mul", [g.op("Unsqueeze", [positions, g.i64(1)]),
                          g.op("Unsqueeze", [inverse, g.i64(0)])])
    result = g.op("Concat", [g.op("Sin", [angles]), g.op("Cos", [angles])], axis=1)
    if stored == "float16":
        result = g.op("Cast", [result], to=TensorProto.FLOAT16)
    return result if onnx_type == TensorProto.FLOAT and stored == "float32" else g.op(
        "Cast", [result], to=TensorProto.FLOAT)


def _log_mel(g: _Builder, wave: str, mel_filters: np.ndarray, window: np.ndarray) -> str:
    """Graph: waveform (B, T) at 16 kHz -> Whisper's log-mel (B, n_mels, T // 160), as
    :meth:`speechbrain_quads.models.features.WhisperLogMel.log_mel` computes it per utterance."""
    bins = N_FFT // 2 + 1
    # DFT basis (2 * bins, 1, N_FFT) = window * [cos; sin](2 pi k n / N_FFT), built in float64
    k = g.op("Unsqueeze", [g.arange(bins, np.int64), g.i64(1)])
    n = g.arange(N_FFT, np.int64)
    phase = g.op("Cast", [g.op("Mod", [g.op("Mul", [k, n]), g.const(np.array(N_FFT, np.int64))])],
                 to=TensorProto.DOUBLE)
    angle = g.op("Mul", [phase, g.const(np.array(2 * math.pi / N_FFT, np.float64))])
    weighted = [g.op("Mul", [g.op(f, [angle]), g.const(window.astype(np.float64))])
                for f in ("Cos", "Sin")]
    basis = g.op("Cast", [g.op("Unsqueeze", [g.op("Concat", weighted, axis=0), g.i64(1)])],
                 to=TensorProto.FLOAT)
    padded = g.op("Pad", [wave, g.i64(0, N_FFT // 2, 0, N_FFT // 2)], mode="reflect")
    spectrum = g.op("Conv", [g.op("Unsqueeze", [padded, g.i64(1)]), basis],
                    strides=[HOP_LENGTH])  # (B, 2 * bins, T // 160 + 1)
    real = g.op("Slice", [spectrum, g.i64(0, 0), g.i64(bins, -1), g.i64(1, 2)])
    imag = g.op("Slice", [spectrum, g.i64(bins, 0), g.i64(2 * bins, -1), g.i64(1, 2)])
    power = g.op("Add", [g.op("Mul", [real, real]), g.op("Mul", [imag, imag])])
    mel = g.op("MatMul", [g.const(mel_filters.astype(np.float32), "mel_filters"), power])
    log_spec = g.op("Mul", [g.op("Log", [g.op("Max", [mel, g.f32(1e-10)])]),
                            g.f32(1 / math.log(10))])
    floor = g.op("Sub", [g.op("ReduceMax", [log_spec, g.i64(1, 2)], keepdims=1), g.f32(8.0)])
    return g.op("Mul", [g.op("Add", [g.op("Max", [log_spec, floor]), g.f32(4.0)]), g.f32(0.25)])


def _linear(g: _Builder, w: _Weights, x: str, prefix: str) -> str:
    """Graph: ``x @ W.T (+ b)`` for the ``nn.Linear`` at state_dict ``prefix``."""
    y = g.op("MatMul", [x, w(prefix + ".weight", transpose=True)])
    return g.op("Add", [y, w(prefix + ".bias")]) if prefix + ".bias" in w.state else y


def _layer_norm(g: _Builder, w: _Weights, x: str, prefix: str) -> str:
    """Graph: ``nn.LayerNorm`` (eps 1e-5) over the last axis."""
    return g.op("LayerNormalization", [x, w(prefix + ".weight"), w(prefix + ".bias")],
                axis=-1, epsilon=1e-5)


def _encoder_layer(g: _Builder, w: _Weights, x: str, prefix: str, heads: int, width: int) -> str:
    """Graph: one Hugging Face ``WhisperEncoderLayer`` (pre-norm attention + GELU MLP), (B, T, C)."""
    head_dim = width // heads
    h = _layer_norm(g, w, x, prefix + ".self_attn_layer_norm")
    attn = prefix + ".self_attn"
    q = g.op("Mul", [_linear(g, w, h, attn + ".q_proj"), g.f32(head_dim ** -0.5)])
    split = g.i64(0, 0, heads, head_dim)
    q = g.op("Transpose", [g.op("Reshape", [q, split])], perm=[0, 2, 1, 3])  # (B, H, T, D)
    k = g.op("Transpose", [g.op("Reshape", [_linear(g, w, h, attn + ".k_proj"), split])],
             perm=[0, 2, 3, 1])  # (B, H, D, T)
    v = g.op("Transpose", [g.op("Reshape", [_linear(g, w, h, attn + ".v_proj"), split])],
             perm=[0, 2, 1, 3])
    probs = g.op("Softmax", [g.op("MatMul", [q, k])], axis=-1)
    context = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    context = g.op("Reshape", [context, g.i64(0, 0, width)])
    x = g.op("Add", [x, _linear(g, w, context, attn + ".out_proj")])
    h = _layer_norm(g, w, x, prefix + ".final_layer_norm")
    h = _linear(g, w, g.op("Gelu", [_linear(g, w, h, prefix + ".fc1")]), prefix + ".fc2")
    return g.op("Add", [x, h])


def build_graph(model: torch.nn.Module, config: dict, model_path: str | Path) -> onnx.ModelProto:
    """The ONNX classifier of a loaded export (see the module docstring).

    Arguments
    ---------
    model : ModuleDict
        ``{"student": WhisperStudent, "classifier": IntentClassifier}`` from ``load_export``.
    config : dict
        The export's checked ``config.json`` entries.
    model_path : str or Path
        Its ``model.safetensors``: a packed file's indices and codebooks go into the graph as
        they are; the other tensors are taken from ``model``.

    Returns
    -------
    onnx.ModelProto
        Inputs ``waveform`` float32 (batch, samples) at 16 kHz; output ``logits`` float32
        (batch, n_intents).
    """
    encoder = model["student"].encoder
    whisper = encoder.config
    if whisper.activation_function != "gelu":
        raise ValueError(f"{model_path}: activation {whisper.activation_function!r} is not "
                         "supported by the ONNX export (Whisper uses 'gelu')")
    state = model.state_dict()
    g = _Builder()
    w = _Weights(g, state, Path(model_path))
    pad_to_30s = bool(config["pad_to_30s"])
    wave = "waveform"
    samples = g.op("Shape", [wave], start=1, end=2)  # (1,) int64
    if pad_to_30s:  # Whisper's window: pad with zeros or trim to 30 s
        missing = g.op("Max", [g.op("Sub", [g.i64(CHUNK_SAMPLES), samples]), g.i64(0)])
        wave = g.op("Pad", [wave, g.op("Concat", [g.i64(0, 0, 0), missing], axis=0)])
        wave = g.op("Slice", [wave, g.i64(0), g.i64(CHUNK_SAMPLES), g.i64(1)])
    frontend = model["student"].frontend
    mel = _log_mel(g, wave, frontend.mel_filters.cpu().numpy(), frontend.window.cpu().numpy())
    x = g.op("Gelu", [g.op("Conv", [mel, w("student.encoder.conv1.weight"),
                                    w("student.encoder.conv1.bias")], pads=[1, 1])])
    x = g.op("Gelu", [g.op("Conv", [x, w("student.encoder.conv2.weight"),
                                    w("student.encoder.conv2.bias")], pads=[1, 1], strides=[2])])
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # (B, T', C)
    frames = g.op("Shape", [x], start=1, end=2)
    table = g.op("Slice", [_positions(g, state[POSITIONS_KEY]), g.i64(0), frames, g.i64(0)])
    x = g.op("Add", [x, table])
    for i in range(len(encoder.layers)):
        x = _encoder_layer(g, w, x, f"student.encoder.layers.{i}", whisper.encoder_attention_heads,
                           whisper.d_model)
    x = _layer_norm(g, w, x, "student.encoder.layer_norm")
    if pad_to_30s:  # pool over the frames that hold audio: ceil(min(samples, 30 s) / 160 / 2)
        mel_frames = g.op("Div", [g.op("Min", [samples, g.i64(CHUNK_SAMPLES)]), g.i64(HOP_LENGTH)])
        valid = g.op("Div", [g.op("Add", [mel_frames, g.i64(1)]), g.i64(2)])
        x = g.op("Slice", [x, g.i64(0), valid, g.i64(1)])
    pooled = g.op("ReduceMean", [x, g.i64(1)], keepdims=0)
    logits = _linear(g, w, pooled, "classifier.linear")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    n_labels = len(config["labels"])
    graph = helper.make_graph(
        g.nodes, "quads_intent_classifier",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_labels])],
        g.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="speechbrain-quads")
    onnx_model.ir_version = 9  # readable by onnxruntime >= 1.16
    max_frames = 2 * whisper.max_source_positions
    metadata = {
        "format": ONNX_FORMAT, "format_version": ONNX_FORMAT_VERSION,
        "labels": json.dumps(config["labels"]), "sampling_rate": str(WHISPER_SAMPLE_RATE),
        "min_samples": str(MIN_SAMPLES),
        "max_samples": "0" if pad_to_30s else str(max_frames * HOP_LENGTH + HOP_LENGTH - 1),
        "bits": str(config["bits"]), "pad_to_30s": json.dumps(pad_to_30s),
        "source_sha256": config.get("model_sha256", ""),
    }
    if "bit_widths" in config:
        metadata["bit_widths"] = json.dumps(config["bit_widths"])
    helper.set_model_props(onnx_model, metadata)
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def export_onnx(model_dir: str | Path, out_path: str | Path) -> dict:
    """Write the ONNX classifier of the export folder ``model_dir`` to ``out_path`` atomically.

    Returns
    -------
    dict
        ``onnx_bytes``, ``safetensors_bytes`` (the export's ``model.safetensors``), their ratio
        ``size_ratio``, ``bits`` (the widest width), ``bit_widths`` (every width stored) and
        ``labels``.

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file, if ``model_dir`` is not a readable QUADS export (missing, foreign,
        truncated or corrupt files: the checks of ``deploy.inference.load_export``).
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: not an export folder (expected a directory holding "
                                f"config.json and {MODEL_FILE})")
    model, config = load_export(model_dir)
    onnx_model = build_graph(model.eval(), config, model_dir / MODEL_FILE)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_name(f".{out_path.name}.{secrets.token_hex(4)}.tmp")
    try:
        onnx.save_model(onnx_model, str(temporary))
        os.replace(temporary, out_path)
    finally:
        temporary.unlink(missing_ok=True)
    onnx_bytes = out_path.stat().st_size
    safetensors_bytes = (model_dir / MODEL_FILE).stat().st_size
    return {"onnx_bytes": onnx_bytes, "safetensors_bytes": safetensors_bytes,
            "size_ratio": onnx_bytes / safetensors_bytes, "bits": config["bits"],
            "bit_widths": config.get("bit_widths", [config["bits"]]),
            "labels": config["labels"]}


def main(argv: list[str] | None = None) -> int:
    """CLI: export; prints the sizes. Exit status 2 (message on stderr) for a bad model folder."""
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_quads.deploy.onnx_export",
        description="Export a QUADS model folder to one ONNX graph with codebook weights.")
    parser.add_argument("model_dir", type=Path, help="folder written by export_model")
    parser.add_argument("out", type=Path, help="the .onnx file to write")
    args = parser.parse_args(argv)
    try:
        sizes = export_onnx(args.model_dir, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.out}\t{describe_bits(sizes)}\t{sizes['onnx_bytes']} bytes\t"
          f"{sizes['size_ratio']:.3f}x {MODEL_FILE} ({sizes['safetensors_bytes']} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
