"""The packed file format: its constants and every check a file passes before anything is
built from it (see :mod:`~speechbrain_quads.codebook.packing` for the layout, the writer and
the reader)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from speechbrain_quads.codebook.parametrization import MAX_BITS
from speechbrain_quads.models.positional import RECIPES

FORMAT_NAME = "speechbrain-quads-packed"
FORMAT_VERSION = "3"
READABLE_VERSIONS = ("1", "2", "3")
"""Version 1 files (no ``generated`` header) and version 2 (no ``payload_sha256``) load too."""
GENERATED_SUFFIX = "embed_positions.weight"
INDICES_SUFFIX = "::indices"
CODEBOOK_SUFFIX = "::codebook"
OUTLIER_INDEX_SUFFIX = "::outlier_index"
OUTLIER_VALUE_SUFFIX = "::outlier_value"
QUANTIZED_SUFFIXES = (INDICES_SUFFIX, CODEBOOK_SUFFIX, OUTLIER_INDEX_SUFFIX, OUTLIER_VALUE_SUFFIX)
"""A quantized weight's file keys: indices and codebook, then (with outliers) their two."""
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
"""The only dtype names a header may give a quantized weight (never resolved with getattr)."""
MAX_GENERATED_ELEMENTS = 2**21
"""Largest positional table a header may ask to rebuild: 2,097,152 values (8 MiB in float32),
above Whisper's largest (1500 positions x 1280 channels)."""


def check_bits(bits: int) -> None:
    """ValueError unless ``bits`` is an int in [1, MAX_BITS]."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits: expected an integer in [1, {MAX_BITS}], got {bits!r}")


def packed_length(numel: int, bits: int) -> int:
    """Bytes that ``numel`` indices of ``bits`` bits occupy when packed: ceil(numel*bits/8)."""
    return (numel * bits + 7) // 8


class PackedFormatError(ValueError):
    """A packed file that cannot be loaded; the message names the file (and the key at fault)."""


def payload_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a file's tensors: per key in sorted order, the length-prefixed JSON
    ``[key, dtype, shape]`` then the length-prefixed raw (little-endian) bytes."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        header = json.dumps([key, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)])
        data = tensor.reshape(-1).view(torch.uint8).numpy()
        for part in (header.encode(), data):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return digest.hexdigest()


def read_file(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Header metadata and tensors of a safetensors file (each no larger than the file)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such packed model file")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise PackedFormatError(f"{path}: not a readable safetensors file ({error})") from None
    return metadata, tensors


def header_json(path: Path, metadata: dict[str, str], name: str, default: str | None) -> dict:
    """The JSON object under header metadata ``name`` (``default`` text if absent)."""
    text = metadata.get(name, default)
    try:
        value = json.loads(text) if text is not None else None
    except json.JSONDecodeError as error:
        raise PackedFormatError(f"{path}: header metadata {name!r} is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise PackedFormatError(f"{path}: header metadata {name!r} is missing or not a JSON object")
    return value


@dataclass(frozen=True)
class QuantizedEntry:
    """A checked ``quantized`` header entry: index width, weight shape (numel), codebooks, dtype."""

    bits: int
    shape: tuple[int, ...]
    numel: int
    groups: int
    dtype: torch.dtype
    outliers: int = 0


def is_int(value: object, low: int = 0) -> bool:
    """True for a plain int (not bool) >= ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def quantized_entry(path: Path, key: str, entry: object) -> QuantizedEntry:
    """Check one ``quantized`` header entry (types, ranges, dtype whitelist, shape vs numel)."""
    where = f"{path}: tensor {key!r}"
    if not isinstance(entry, dict):
        raise PackedFormatError(f"{where}: metadata entry is not a JSON object")
    missing = {"bits", "shape", "numel", "groups", "dtype"} - set(entry)
    if missing:
        raise PackedFormatError(f"{where}: incomplete metadata entry (missing {sorted(missing)})")
    bits, shape, numel, groups, dtype = (entry[f] for f in ("bits", "shape", "numel", "groups", "dtype"))
    if not is_int(bits, 1) or bits > MAX_BITS:
        raise PackedFormatError(f"{where}: bits {bits!r} out of range [1, {MAX_BITS}]")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise PackedFormatError(f"{where}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not (isinstance(shape, list) and shape and all(is_int(d) for d in shape)
            and is_int(numel) and math.prod(shape) == numel):
        raise PackedFormatError(f"{where}: shape {shape!r} does not hold numel {numel!r}")
    if not is_int(groups, 1) or shape[0] % groups:
        raise PackedFormatError(f"{where}: groups {groups!r} does not divide shape {shape}")
    outliers = entry.get("outliers", 0)
    if not is_int(outliers) or outliers > numel:
        raise PackedFormatError(f"{where}: outliers {outliers!r} out of range [0, {numel}]")
    return QuantizedEntry(bits, tuple(shape), numel, groups, DTYPES[dtype], outliers)


def generated_entry(
    path: Path, key: str, entry: object, expected: Sequence[int] | None
) -> tuple[int, int, str, object]:
    """Check one ``generated`` header entry; returns ``(length, channels, recipe, sha256)``.

    The declared shape is bounded by :data:`MAX_GENERATED_ELEMENTS` and, when ``expected``
    (the model's shape for ``key``) is given, must equal it, so nothing is built before this.
    """
    where = f"{path}: generated tensor {key!r}"
    if not isinstance(entry, dict) or entry.get("kind") != "whisper_sinusoids":
        raise PackedFormatError(f"{where}: unknown kind (expected 'whisper_sinusoids'): {entry!r}")
    shape, recipe = entry.get("shape"), entry.get("recipe")
    if recipe not in RECIPES:
        raise PackedFormatError(f"{where}: recipe {recipe!r} is not one of {RECIPES}")
    if not (isinstance(shape, list) and len(shape) == 2 and all(is_int(d) for d in shape)):
        raise PackedFormatError(f"{where}: shape {shape!r} is not [length, channels]")
    if math.prod(shape) > MAX_GENERATED_ELEMENTS:
        raise PackedFormatError(
            f"{where}: declared shape {shape} ({math.prod(shape)} values) exceeds the "
            f"{MAX_GENERATED_ELEMENTS} of the largest Whisper positional table; refused"
        )
    if expected is not None and tuple(shape) != tuple(expected):
        raise PackedFormatError(
            f"{where}: declared shape {shape} does not match the model's {list(expected)}"
        )
    return shape[0], shape[1], recipe, entry.get("sha256")


def check_layout(
    path: Path, entries: dict[str, QuantizedEntry], generated: set[str], tensors: dict[str, torch.Tensor]
) -> None:
    """Every stored tensor is accounted for exactly once, at the dtype/shape the header says."""
    for key, entry in entries.items():
        where = f"{path}: tensor {key!r}"
        suffixes = QUANTIZED_SUFFIXES if entry.outliers else QUANTIZED_SUFFIXES[:2]
        for suffix in suffixes:
            if key + suffix not in tensors:
                raise PackedFormatError(f"{where}: missing {key + suffix!r}")
        for suffix in QUANTIZED_SUFFIXES[len(suffixes):]:
            if key + suffix in tensors:
                raise PackedFormatError(f"{where}: stray {key + suffix!r} (no outliers declared)")
        if entry.outliers:
            index, value = tensors[key + OUTLIER_INDEX_SUFFIX], tensors[key + OUTLIER_VALUE_SUFFIX]
            shape = (entry.outliers,)
            if (index.dtype != torch.int32 or tuple(index.shape) != shape
                    or value.dtype != torch.float32 or tuple(value.shape) != shape):
                raise PackedFormatError(
                    f"{where}: outliers must be int32 and float32 {shape}, got {index.dtype} "
                    f"{tuple(index.shape)} and {value.dtype} {tuple(value.shape)}")
            if (int(index.min()) < 0 or int(index.max()) >= entry.numel
                                   or bool((index[1:] <= index[:-1]).any())):
                raise PackedFormatError(f"{where}: outlier positions are not strictly "
                                        f"increasing within [0, {entry.numel})")
        indices, codebook = tensors[key + INDICES_SUFFIX], tensors[key + CODEBOOK_SUFFIX]
        k = 2**entry.bits
        if codebook.dtype != torch.float32 or tuple(codebook.shape) != (entry.groups, k):
            raise PackedFormatError(
                f"{where}: codebook must be float32 {(entry.groups, k)} (one entry per "
                f"{entry.bits}-bit index), got {codebook.dtype} {tuple(codebook.shape)}"
            )
        length = packed_length(entry.numel, entry.bits)
        if indices.dtype != torch.uint8 or tuple(indices.shape) != (length,):
            raise PackedFormatError(
                f"{where}: indices inconsistent with the metadata (expected uint8 ({length},) "
                f"for {entry.numel} indices of {entry.bits} bits, got {indices.dtype} "
                f"{tuple(indices.shape)})"
            )
    for key in tensors:
        base, separator, suffix = key.partition("::")
        if separator and (base not in entries or separator + suffix not in QUANTIZED_SUFFIXES):
            raise PackedFormatError(f"{path}: tensor {key!r} has no entry in the header metadata")
        if not separator and key in entries:
            raise PackedFormatError(f"{path}: tensor {key!r} is both stored and quantized")
        if not separator and key in generated:
            raise PackedFormatError(f"{path}: tensor {key!r} is both stored and generated")
    for key in generated & set(entries):
        raise PackedFormatError(f"{path}: tensor {key!r} is both quantized and generated")


def check_digest(path: Path, metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """Version 3: the payload's SHA-256 must equal the header's ``payload_sha256``."""
    if metadata["format_version"] in ("1", "2"):
        return
    recorded = metadata.get("payload_sha256")
    if not isinstance(recorded, str) or len(recorded) != 64:
        raise PackedFormatError(f"{path}: header metadata 'payload_sha256' is missing or malformed")
    actual = payload_digest(tensors)
    if actual != recorded:
        raise PackedFormatError(
            f"{path}: payload checksum mismatch (SHA-256 of the tensors {actual[:16]}..., header "
            f"payload_sha256 {recorded[:16]}...): the file is corrupted or was edited"
        )
