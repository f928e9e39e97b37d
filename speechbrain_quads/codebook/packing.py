"""Dense b-bit index packing, packed safetensors export/import and honest size accounting.

File layout (one safetensors file, no pickle):
    ``<name>.weight::indices``  uint8 (ceil(numel * bits / 8),): the b-bit indices (1 <= b <= 16) of
                                a quantized weight packed densely, least significant bit first,
                                element after element (3, 5, 7, 9, ..., 15 bits are not rounded up
                                to a byte); the unused high bits of the last byte are 0.
    ``<name>.weight::codebook`` float32 (groups, 2**bits): its codebooks.
    ``<name>.weight::outlier_index`` int32 (n,), ``::outlier_value`` float32 (n,): only for a
                                weight with ``n > 0`` outliers (``outlier_fraction``): the
                                strictly increasing flat positions kept exactly, and their values.
    ``<key>``                   every other tensor of the model's state_dict, unchanged, except
                                Whisper's sinusoidal positional tables (``*embed_positions.weight``)
                                when :mod:`~speechbrain_quads.models.positional` rebuilds them
                                bit for bit.
Header metadata: ``format`` (:data:`FORMAT_NAME`), ``format_version``, ``quantized``: JSON
``{weight name: {"module", "bits", "shape", "numel", "groups", "dtype"[, "outliers"]}}``,
``generated``: JSON
``{key: {"kind": "whisper_sinusoids", "shape": [length, channels], "recipe", "sha256"}}``
(since version 2) and ``payload_sha256`` (since version 3): the hex SHA-256 of every stored
tensor's name, dtype, shape and bytes (see :func:`payload_digest`).

Loading refuses, with a :class:`PackedFormatError` naming the file and key, a file whose header
or layout is inconsistent (unknown dtype names, bit widths, shapes, numel, groups, missing or
stray tensors, a key both stored and rebuilt, a generated table larger than any Whisper's or
than the model's), before anything larger than the file is allocated; then a version 3 file
whose payload does not match its digest (a zeroed or bit-flipped file); then packed indices
with non-zero padding bits. Indices cannot leave their codebook: a codebook must hold exactly
``2**bits`` entries. Version 1 and 2 files, written before the digest existed, still load,
without the payload check. The digest detects corruption, not deliberate edits (it has no key).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save, save_file
from torch import nn

from speechbrain_quads.codebook.parametrization import MAX_BITS
from speechbrain_quads.codebook.quantization import quantized_modules
from speechbrain_quads.models.positional import RECIPES, sinusoid_recipe, table_digest, whisper_sinusoids

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
MB = 2**20
"""Bytes per MB in the MB helpers (MiB, the paper's convention: 7.25M fp32 params = 27.66 MB)."""


class PackedFormatError(ValueError):
    """A packed file that cannot be loaded; the message names the file (and the key at fault)."""


def _check_bits(bits: int) -> None:
    """ValueError unless ``bits`` is an int in [1, MAX_BITS]."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits: expected an integer in [1, {MAX_BITS}], got {bits!r}")


def packed_length(numel: int, bits: int) -> int:
    """Bytes that ``numel`` indices of ``bits`` bits occupy when packed: ceil(numel*bits/8)."""
    return (numel * bits + 7) // 8


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer indices densely, ``bits`` bits each, least significant bit first.

    Args:
        indices: integer tensor of any shape with values in ``[0, 2**bits)``.
        bits: width b, 1 <= b <= 16.

    Returns:
        (ceil(numel * bits / 8),) uint8 tensor; the unused high bits of the last byte are 0.
    """
    _check_bits(bits)
    flat = indices.detach().reshape(-1).cpu()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"indices: values must lie in [0, {2**bits}) for bits={bits}")
    values = flat.to(torch.int32).numpy().astype("<u2")
    if bits in (8, 16):
        return torch.from_numpy(values.astype(np.uint8) if bits == 8 else values.view(np.uint8))
    planes = ((values[:, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_indices(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_indices`.

    Args:
        packed: (ceil(numel * bits / 8),) uint8 tensor whose padding bits are 0.
        bits: width b, 1 <= b <= 16.
        numel: number of indices packed.

    Returns:
        (numel,) tensor of indices, dtype ``index_dtype(bits)`` (uint8 up to 8 bits, else int32).

    Raises:
        ValueError: wrong length or dtype, or a non-zero padding bit in the last byte.
    """
    _check_bits(bits)
    expected = packed_length(numel, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != expected:
        raise ValueError(
            f"packed: expected a uint8 vector of {expected} bytes for {numel} indices of {bits} "
            f"bits, got {packed.dtype} with shape {tuple(packed.shape)}"
        )
    raw = packed.cpu().numpy()
    used = numel * bits % 8
    if used and raw[-1] >> used:
        raise ValueError(
            f"packed: non-zero padding bits in the last byte ({int(raw[-1]):#010b}; only its "
            f"{used} low bits hold index bits)"
        )
    if bits == 8:
        return torch.from_numpy(raw.copy())
    if bits == 16:
        return torch.from_numpy(raw.view("<u2").astype(np.int32))
    planes = np.unpackbits(raw, count=numel * bits, bitorder="little").reshape(numel, bits)
    padded = np.zeros((numel, 8 if bits < 8 else 16), dtype=np.uint8)
    padded[:, :bits] = planes
    rows = np.packbits(padded, axis=1, bitorder="little")
    if bits < 8:
        return torch.from_numpy(rows.reshape(numel))
    return torch.from_numpy(rows.view("<u2").reshape(numel).astype(np.int32))


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


@dataclass(frozen=True)
class SizeReport:
    """Model sizes in bytes under three conventions, and the fp32 reference.

    Attributes:
        packed_bytes: the packed safetensors file (its size on disk when exported, otherwise
            the exact length of its serialisation, header included).
        bit_arithmetic_bytes: sum over quantized tensors of ceil(numel * b / 8), plus the
            float32 codebooks, plus the stored full-precision tensors at their own dtype
            (a regenerated positional table costs nothing).
        paper_bytes: the paper's convention: every parameter at b bits (total_params * b / 8;
            with mixed widths, the widest), codebooks and headers ignored.
        fp32_bytes: total_params * 4.
        total_params: elements of every floating tensor of the plain state_dict (regenerated
            positional tables included).
        quantized_params: elements of the quantized weights.
        bits: the widest index width used.
    """

    packed_bytes: int
    bit_arithmetic_bytes: int
    paper_bytes: float
    fp32_bytes: int
    total_params: int
    quantized_params: int
    bits: int

    def as_dict(self) -> dict[str, float]:
        """All fields plus their MB (MiB) values under ``<field>_mb`` keys."""
        values = asdict(self)
        for name in ("packed", "bit_arithmetic", "paper", "fp32"):
            values[f"{name}_mb"] = getattr(self, f"{name}_mb")
        return values

    @property
    def packed_mb(self) -> float:
        """``packed_bytes`` in MB (MiB)."""
        return self.packed_bytes / MB

    @property
    def bit_arithmetic_mb(self) -> float:
        """``bit_arithmetic_bytes`` in MB (MiB)."""
        return self.bit_arithmetic_bytes / MB

    @property
    def paper_mb(self) -> float:
        """``paper_bytes`` in MB (MiB)."""
        return self.paper_bytes / MB

    @property
    def fp32_mb(self) -> float:
        """``fp32_bytes`` in MB (MiB)."""
        return self.fp32_bytes / MB


def packed_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata that :func:`export_packed` writes for ``model``.

    Args:
        model: a model prepared and clustered by ``CodebookQuantizer``.

    Returns:
        ``(tensors, metadata)``: CPU tensors by file key, and the header metadata strings.
    """
    quantized = quantized_modules(model)
    if not quantized:
        raise ValueError("model: no codebook-quantized module (call CodebookQuantizer.prepare)")
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    hidden = []
    for name, (module, codebook) in quantized.items():
        if not int(codebook.clustered):
            raise ValueError(f"module {name!r}: no codebook yet (call CodebookQuantizer.cluster)")
        prefix = f"{name}." if name else ""
        key = prefix + "weight"
        tensors[key + INDICES_SUFFIX] = pack_indices(codebook.indices, codebook.bits)
        tensors[key + CODEBOOK_SUFFIX] = codebook.centroids.detach().float().cpu().contiguous()
        latent = module.parametrizations["weight"].original
        entries[key] = {
            "module": name,
            "bits": codebook.bits,
            "shape": list(codebook.indices.shape),
            "numel": codebook.indices.numel(),
            "groups": codebook.groups,
            "dtype": str(latent.dtype).removeprefix("torch."),
        }
        if codebook.outliers:
            index = codebook.outlier_index.detach().cpu()
            tensors[key + OUTLIER_INDEX_SUFFIX] = index.to(torch.int32).contiguous()
            tensors[key + OUTLIER_VALUE_SUFFIX] = (
                latent.detach().reshape(-1)[index.to(latent.device)].float().cpu().contiguous())
            entries[key]["outliers"] = codebook.outliers
        hidden.append(prefix + "parametrizations.weight.")
    generated = {}
    for key, value in model.state_dict().items():
        if key.startswith(tuple(hidden)):
            continue
        recipe = sinusoid_recipe(value) if key.endswith(GENERATED_SUFFIX) else None
        if recipe is None:
            tensors[key] = value.detach().cpu().contiguous().clone()
        else:
            generated[key] = {"kind": "whisper_sinusoids", "shape": list(value.shape),
                              "recipe": recipe, "sha256": table_digest(value)}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "quantized": json.dumps(entries, sort_keys=True),
        "generated": json.dumps(generated, sort_keys=True),
        "payload_sha256": payload_digest(tensors),
    }
    return tensors, metadata


def _report(tensors: dict[str, torch.Tensor], metadata: dict[str, str], packed: int) -> SizeReport:
    """Build a :class:`SizeReport` from the export payload and the packed size in bytes."""
    entries = json.loads(metadata["quantized"])
    generated = sum(math.prod(e["shape"]) for e in json.loads(metadata["generated"]).values())
    quantized_keys = {key + suffix for key in entries for suffix in QUANTIZED_SUFFIXES}
    full = [value for key, value in tensors.items() if key not in quantized_keys]
    bits = max(entry["bits"] for entry in entries.values())
    quantized_params = sum(entry["numel"] for entry in entries.values())
    total_params = quantized_params + generated + sum(
        v.numel() for v in full if v.is_floating_point()
    )
    bit_arithmetic = sum(
        packed_length(entry["numel"], entry["bits"]) + entry["groups"] * 2 ** entry["bits"] * 4
        + entry.get("outliers", 0) * 8 for entry in entries.values()
    ) + sum(v.numel() * v.element_size() for v in full)
    return SizeReport(
        packed_bytes=packed,
        bit_arithmetic_bytes=bit_arithmetic,
        paper_bytes=total_params * bits / 8,
        fp32_bytes=total_params * 4,
        total_params=total_params,
        quantized_params=quantized_params,
        bits=bits,
    )


def size_report(model: nn.Module, path: str | os.PathLike | None = None) -> SizeReport:
    """Sizes of a quantized ``model``; ``packed_bytes`` is ``path``'s size if given."""
    tensors, metadata = packed_tensors(model)
    packed = os.path.getsize(path) if path is not None else len(save(tensors, metadata))
    return _report(tensors, metadata, packed)


def export_packed(model: nn.Module, path: str | os.PathLike) -> SizeReport:
    """Write ``model``'s packed safetensors file atomically (temp file + ``os.replace``).

    Args:
        model: a model prepared and clustered by ``CodebookQuantizer``.
        path: destination file; its directory must exist.

    Returns:
        the :class:`SizeReport`, with ``packed_bytes`` the size of the written file.
    """
    path = Path(path)
    tensors, metadata = packed_tensors(model)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _report(tensors, metadata, path.stat().st_size)


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
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


def _header_json(path: Path, metadata: dict[str, str], name: str, default: str | None) -> dict:
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
class _Quantized:
    """A checked ``quantized`` header entry: index width, weight shape (numel), codebooks, dtype."""

    bits: int
    shape: tuple[int, ...]
    numel: int
    groups: int
    dtype: torch.dtype
    outliers: int = 0


def _is_int(value: object, low: int = 0) -> bool:
    """True for a plain int (not bool) >= ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _quantized_entry(path: Path, key: str, entry: object) -> _Quantized:
    """Check one ``quantized`` header entry (types, ranges, dtype whitelist, shape vs numel)."""
    where = f"{path}: tensor {key!r}"
    if not isinstance(entry, dict):
        raise PackedFormatError(f"{where}: metadata entry is not a JSON object")
    missing = {"bits", "shape", "numel", "groups", "dtype"} - set(entry)
    if missing:
        raise PackedFormatError(f"{where}: incomplete metadata entry (missing {sorted(missing)})")
    bits, shape, numel, groups, dtype = (entry[f] for f in ("bits", "shape", "numel", "groups", "dtype"))
    if not _is_int(bits, 1) or bits > MAX_BITS:
        raise PackedFormatError(f"{where}: bits {bits!r} out of range [1, {MAX_BITS}]")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise PackedFormatError(f"{where}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not (isinstance(shape, list) and shape and all(_is_int(d) for d in shape)
            and _is_int(numel) and math.prod(shape) == numel):
        raise PackedFormatError(f"{where}: shape {shape!r} does not hold numel {numel!r}")
    if not _is_int(groups, 1) or shape[0] % groups:
        raise PackedFormatError(f"{where}: groups {groups!r} does not divide shape {shape}")
    outliers = entry.get("outliers", 0)
    if not _is_int(outliers) or outliers > numel:
        raise PackedFormatError(f"{where}: outliers {outliers!r} out of range [0, {numel}]")
    return _Quantized(bits, tuple(shape), numel, groups, DTYPES[dtype], outliers)


def _generated_entry(
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
    if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(d) for d in shape)):
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


def _check_layout(
    path: Path, entries: dict[str, _Quantized], generated: set[str], tensors: dict[str, torch.Tensor]
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


def _check_digest(path: Path, metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
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


def _dequantize(
    path: Path, key: str, entry: _Quantized, tensors: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Rebuild the weight ``key`` (entry's shape and dtype) from its indices and codebooks."""
    try:
        indices = unpack_indices(tensors[key + INDICES_SUFFIX], entry.bits, entry.numel)
    except ValueError as error:
        raise PackedFormatError(
            f"{path}: tensor {key!r}: indices inconsistent with the metadata ({error})"
        ) from None
    codebook = tensors[key + CODEBOOK_SUFFIX]
    values = codebook.gather(1, indices.long().reshape(entry.groups, -1)).reshape(-1)
    if entry.outliers:
        values[tensors[key + OUTLIER_INDEX_SUFFIX].long()] = tensors[key + OUTLIER_VALUE_SUFFIX]
    return values.reshape(entry.shape).to(entry.dtype)


def load_packed(
    path: str | os.PathLike, expected_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, torch.Tensor]:
    """Read a packed file into a plain state_dict of float tensors (safetensors only).

    Args:
        path: a file written by :func:`export_packed`.
        expected_shapes: optional ``{key: shape}`` of the target model; a generated table whose
            declared shape differs is refused before it is built.

    Returns:
        ``{key: tensor}`` with quantized weights rebuilt as ``codebook[indices]`` under their
        plain ``<module>.weight`` names, and every other tensor as stored.

    Raises:
        FileNotFoundError: no such file.
        PackedFormatError: (a ValueError) naming the file, the key and the problem, if it is
            truncated, foreign, inconsistent, corrupted or tampered (see the module docstring).
    """
    path = Path(path)
    metadata, tensors = _read(path)
    if metadata.get("format") != FORMAT_NAME:
        raise PackedFormatError(
            f"{path}: not a {FORMAT_NAME} file (header metadata has no "
            f"format={FORMAT_NAME!r}; a foreign safetensors file?)"
        )
    if metadata.get("format_version") not in READABLE_VERSIONS:
        raise PackedFormatError(
            f"{path}: unsupported format_version {metadata.get('format_version')!r}"
            f" (this reader knows {', '.join(READABLE_VERSIONS)})"
        )
    entries = {
        key: _quantized_entry(path, key, entry)
        for key, entry in _header_json(path, metadata, "quantized", None).items()
    }
    shapes = expected_shapes or {}
    generated = {
        key: _generated_entry(path, key, entry, shapes.get(key))
        for key, entry in _header_json(path, metadata, "generated", "{}").items()
    }
    _check_layout(path, entries, set(generated), tensors)
    _check_digest(path, metadata, tensors)
    state = {key: _dequantize(path, key, entry, tensors) for key, entry in entries.items()}
    state.update((key, value) for key, value in tensors.items() if "::" not in key)
    for key, (length, channels, recipe, digest) in generated.items():
        try:
            state[key] = whisper_sinusoids(length, channels, recipe)
        except ValueError as error:
            raise PackedFormatError(f"{path}: generated tensor {key!r}: {error}") from None
        if table_digest(state[key]) != digest:
            warnings.warn(
                f"{path}: generated tensor {key!r}: this machine's sin/cos rebuild the table with "
                "a different SHA-256 than the exporting machine's (last-bit differences); "
                "outputs may differ slightly",
                stacklevel=2,
            )
    return state


def load_packed_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a packed file into a plain (not prepared) ``model`` of the same architecture.

    Returns:
        ``model``, whose quantized weights now hold ``codebook[indices]`` values exactly.

    Raises:
        PackedFormatError: the file is unreadable or inconsistent (see :func:`load_packed`).
        ValueError: ``model`` is prepared, or the file does not fit it.
    """
    if quantized_modules(model):
        raise ValueError(
            f"{path}: load_packed_into() needs a plain model; this one has codebook "
            "parametrizations (load a quantizer checkpoint with load_state_dict)"
        )
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    state = load_packed(path, shapes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: does not fit the model ({error})") from None
    return model
