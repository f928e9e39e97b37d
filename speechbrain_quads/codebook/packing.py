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
from safetensors.torch import save, save_file
from torch import nn

from speechbrain_quads.codebook.packed_format import (
    CODEBOOK_SUFFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    GENERATED_SUFFIX,
    INDICES_SUFFIX,
    OUTLIER_INDEX_SUFFIX,
    OUTLIER_VALUE_SUFFIX,
    QUANTIZED_SUFFIXES,
    READABLE_VERSIONS,
    PackedFormatError,
    QuantizedEntry,
    check_bits,
    check_digest,
    check_layout,
    generated_entry,
    header_json,
    packed_length,
    payload_digest,
    quantized_entry,
    read_file,
)
from speechbrain_quads.codebook.quantization import quantized_modules
from speechbrain_quads.models.positional import sinusoid_recipe, table_digest, whisper_sinusoids

MB = 2**20
"""Bytes per MB in the MB helpers (MiB, the paper's convention: 7.25M fp32 params = 27.66 MB)."""


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer indices densely, ``bits`` bits each, least significant bit first.

    Args:
        indices: integer tensor of any shape with values in ``[0, 2**bits)``.
        bits: width b, 1 <= b <= 16.

    Returns:
        (ceil(numel * bits / 8),) uint8 tensor; the unused high bits of the last byte are 0.
    """
    check_bits(bits)
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
    check_bits(bits)
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
        latent = module.parametrizations["weight"].original
        if latent.dtype == torch.float64:
            raise ValueError(
                f"module {name!r}: float64 weights; the packed file stores float32 codebooks and "
                "outliers, so the model would not reload as trained (call model.float() first)")
        prefix = f"{name}." if name else ""
        key = prefix + "weight"
        tensors[key + INDICES_SUFFIX] = pack_indices(codebook.indices, codebook.bits)
        tensors[key + CODEBOOK_SUFFIX] = codebook.centroids.detach().float().cpu().contiguous()
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
        _sort_header_metadata(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _report(tensors, metadata, path.stat().st_size)


def _sort_header_metadata(path: Path) -> None:
    """Rewrite the safetensors file ``path``'s header in place with its metadata keys sorted.

    safetensors writes ``__metadata__`` in hash-map order, which differs from one save to the
    next; sorted, the same model always gives the same bytes. Only the order changes, so the
    header keeps its length (the space padding to 8-byte alignment is kept)."""
    with open(path, "r+b") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > length:
            raise RuntimeError(f"{path}: the sorted header ({len(text)} bytes) is longer than "
                               f"the one safetensors wrote ({length} bytes)")
        handle.seek(8)
        handle.write(text.ljust(length))


def _dequantize(
    path: Path, key: str, entry: QuantizedEntry, tensors: dict[str, torch.Tensor]
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
    metadata, tensors = read_file(path)
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
        key: quantized_entry(path, key, entry)
        for key, entry in header_json(path, metadata, "quantized", None).items()
    }
    shapes = expected_shapes or {}
    generated = {
        key: generated_entry(path, key, entry, shapes.get(key))
        for key, entry in header_json(path, metadata, "generated", "{}").items()
    }
    check_layout(path, entries, set(generated), tensors)
    check_digest(path, metadata, tensors)
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
