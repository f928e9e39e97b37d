"""Dense b-bit index packing, packed safetensors export/import and honest size accounting.

File layout (one safetensors file, no pickle):
    ``<name>.weight::indices``  uint8 (ceil(numel * bits / 8),): the b-bit indices of a quantized
                                weight packed densely, least significant bit first, element after
                                element (3, 5, 6, 7 bits are not rounded up to a byte).
    ``<name>.weight::codebook`` float32 (groups, 2**bits): its codebooks.
    ``<key>``                   every other tensor of the model's state_dict, unchanged, except
                                Whisper's sinusoidal positional tables (``*embed_positions.weight``)
                                when :mod:`~speechbrain_quads.models.positional` rebuilds them
                                bit for bit.
Header metadata: ``format`` (:data:`FORMAT_NAME`), ``format_version``, ``quantized``: JSON
``{weight name: {"module", "bits", "shape", "numel", "groups", "dtype"}}`` and ``generated``: JSON
``{key: {"kind": "whisper_sinusoids", "shape": [length, channels], "recipe", "sha256"}}``
(version 2).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save, save_file
from torch import nn

from speechbrain_quads.codebook.quantization import quantized_modules
from speechbrain_quads.models.positional import RECIPES, sinusoid_recipe, table_digest, whisper_sinusoids

FORMAT_NAME = "speechbrain-quads-packed"
FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", "2")
"""Version 1 files (no ``generated`` header) load unchanged."""
GENERATED_SUFFIX = "embed_positions.weight"
INDICES_SUFFIX = "::indices"
CODEBOOK_SUFFIX = "::codebook"
MB = 2**20
"""Bytes per MB in the MB helpers (MiB, the paper's convention: 7.25M fp32 params = 27.66 MB)."""


def _check_bits(bits: int) -> None:
    """ValueError unless ``bits`` is an int in [1, 8]."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits: expected an integer in [1, 8], got {bits!r}")


def packed_length(numel: int, bits: int) -> int:
    """Bytes that ``numel`` indices of ``bits`` bits occupy when packed: ceil(numel*bits/8)."""
    return (numel * bits + 7) // 8


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer indices densely, ``bits`` bits each, least significant bit first.

    Args:
        indices: integer tensor of any shape with values in ``[0, 2**bits)``.
        bits: width b, 1 <= b <= 8.

    Returns:
        (ceil(numel * bits / 8),) uint8 tensor; the unused high bits of the last byte are 0.
    """
    _check_bits(bits)
    flat = indices.detach().reshape(-1).cpu()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"indices: values must lie in [0, {2**bits}) for bits={bits}")
    flat = flat.to(torch.uint8).numpy()
    if bits == 8:
        return torch.from_numpy(flat.copy())
    planes = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_indices(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_indices`.

    Args:
        packed: (ceil(numel * bits / 8),) uint8 tensor.
        bits: width b, 1 <= b <= 8.
        numel: number of indices packed.

    Returns:
        (numel,) uint8 tensor of indices.
    """
    _check_bits(bits)
    expected = packed_length(numel, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != expected:
        raise ValueError(
            f"packed: expected a uint8 vector of {expected} bytes for {numel} indices of {bits} "
            f"bits, got {packed.dtype} with shape {tuple(packed.shape)}"
        )
    raw = packed.cpu().numpy()
    if bits == 8:
        return torch.from_numpy(raw.copy())
    planes = np.unpackbits(raw, count=numel * bits, bitorder="little").reshape(numel, bits)
    padded = np.zeros((numel, 8), dtype=np.uint8)
    padded[:, :bits] = planes
    return torch.from_numpy(np.packbits(padded, axis=1, bitorder="little").reshape(numel))


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
        entries[key] = {
            "module": name,
            "bits": codebook.bits,
            "shape": list(codebook.indices.shape),
            "numel": codebook.indices.numel(),
            "groups": codebook.groups,
            "dtype": str(module.parametrizations["weight"].original.dtype).removeprefix("torch."),
        }
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
    }
    return tensors, metadata


def _report(tensors: dict[str, torch.Tensor], metadata: dict[str, str], packed: int) -> SizeReport:
    """Build a :class:`SizeReport` from the export payload and the packed size in bytes."""
    entries = json.loads(metadata["quantized"])
    generated = sum(math.prod(e["shape"]) for e in json.loads(metadata["generated"]).values())
    quantized_keys = {
        key + suffix for key in entries for suffix in (INDICES_SUFFIX, CODEBOOK_SUFFIX)
    }
    full = [value for key, value in tensors.items() if key not in quantized_keys]
    bits = max(entry["bits"] for entry in entries.values())
    quantized_params = sum(entry["numel"] for entry in entries.values())
    total_params = quantized_params + generated + sum(
        v.numel() for v in full if v.is_floating_point()
    )
    bit_arithmetic = sum(
        packed_length(entry["numel"], entry["bits"]) + entry["groups"] * 2 ** entry["bits"] * 4
        for entry in entries.values()
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
    """Header metadata and tensors of a safetensors file; ValueError naming it if unreadable."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such packed model file")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    return metadata, tensors


def _entries(path: Path, metadata: dict[str, str]) -> dict[str, dict]:
    """The ``quantized`` header entries, checked for format and version."""
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{path}: not a {FORMAT_NAME} file (header metadata has no "
            f"format={FORMAT_NAME!r}; a foreign safetensors file?)"
        )
    if metadata.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{path}: unsupported format_version {metadata.get('format_version')!r}"
            f" (this reader knows {', '.join(READABLE_VERSIONS)})"
        )
    try:
        entries = json.loads(metadata["quantized"])
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path}: header metadata 'quantized' is missing or not JSON ({error})"
        ) from None
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: header metadata 'quantized' is not a JSON object")
    return entries


def _generated(path: Path, metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """Rebuild the tensors listed in the ``generated`` header (absent in version 1 files)."""
    try:
        entries = json.loads(metadata.get("generated", "{}"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: header metadata 'generated' is not JSON ({error})") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: header metadata 'generated' is not a JSON object")
    tensors = {}
    for key, entry in entries.items():
        where = f"{path}: generated tensor {key!r}"
        if not isinstance(entry, dict) or entry.get("kind") != "whisper_sinusoids":
            raise ValueError(f"{where}: unknown kind (expected 'whisper_sinusoids'): {entry!r}")
        shape, recipe = entry.get("shape"), entry.get("recipe")
        if recipe not in RECIPES:
            raise ValueError(f"{where}: recipe {recipe!r} is not one of {RECIPES}")
        if not (isinstance(shape, list) and len(shape) == 2
                and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            raise ValueError(f"{where}: shape {shape!r} is not [length, channels]")
        try:
            tensors[key] = whisper_sinusoids(shape[0], shape[1], recipe)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if table_digest(tensors[key]) != entry.get("sha256"):
            warnings.warn(
                f"{where}: this machine's sin/cos rebuild the table with a different SHA-256 "
                "than the exporting machine's (last-bit differences); outputs may differ slightly",
                stacklevel=3,
            )
    return tensors


def _dequantize(
    path: Path, key: str, entry: dict, tensors: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Rebuild the weight ``key`` (entry's shape and dtype) from its indices and codebooks."""
    where = f"{path}: tensor {key!r}"
    try:
        bits, shape, numel, groups = (entry[f] for f in ("bits", "shape", "numel", "groups"))
        dtype = getattr(torch, entry["dtype"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{where}: incomplete metadata entry ({error!r})") from None
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"{where}: bits {bits!r} out of range [1, 8]")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{where}: dtype {entry['dtype']!r} is not a floating dtype")
    shape_ok = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
    if not shape_ok or not isinstance(numel, int) or math.prod(shape) != numel:
        raise ValueError(f"{where}: shape {shape!r} does not hold numel {numel!r}")
    if not isinstance(groups, int) or groups < 1 or not shape or shape[0] % groups:
        raise ValueError(f"{where}: groups {groups!r} does not divide shape {shape}")
    for suffix in (INDICES_SUFFIX, CODEBOOK_SUFFIX):
        if key + suffix not in tensors:
            raise ValueError(f"{where}: missing {key + suffix!r}")
    codebook = tensors[key + CODEBOOK_SUFFIX]
    if codebook.dtype != torch.float32 or tuple(codebook.shape) != (groups, 2**bits):
        raise ValueError(
            f"{where}: codebook must be float32 {(groups, 2**bits)}, got "
            f"{codebook.dtype} {tuple(codebook.shape)}"
        )
    try:
        indices = unpack_indices(tensors[key + INDICES_SUFFIX], bits, numel)
    except ValueError as error:
        raise ValueError(f"{where}: indices inconsistent with the metadata ({error})") from None
    values = codebook.gather(1, indices.long().reshape(groups, -1))
    return values.reshape(shape).to(dtype)


def load_packed(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a packed file into a plain state_dict of float tensors (safetensors only).

    Args:
        path: a file written by :func:`export_packed`.

    Returns:
        ``{key: tensor}`` with quantized weights rebuilt as ``codebook[indices]`` under their
        plain ``<module>.weight`` names, and every other tensor as stored.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file and the problem, if it is truncated, foreign or tampered.
    """
    path = Path(path)
    metadata, tensors = _read(path)
    entries = _entries(path, metadata)
    state = {}
    for key, entry in entries.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: tensor {key!r}: metadata entry is not a JSON object")
        state[key] = _dequantize(path, key, entry, tensors)
    for key, value in tensors.items():
        base, separator, _ = key.partition("::")
        if separator and base not in entries:
            raise ValueError(f"{path}: tensor {key!r} has no entry in the header metadata")
        if not separator:
            state[key] = value
    for key, value in _generated(path, metadata).items():
        if key in state:
            raise ValueError(f"{path}: tensor {key!r} is both stored and generated")
        state[key] = value
    return state


def load_packed_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a packed file into a plain (not prepared) ``model`` of the same architecture.

    Returns:
        ``model``, whose quantized weights now hold ``codebook[indices]`` values exactly.
    """
    if quantized_modules(model):
        raise ValueError(
            f"{path}: load_packed_into() needs a plain model; this one has codebook "
            "parametrizations (load a quantizer checkpoint with load_state_dict)"
        )
    state = load_packed(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: does not fit the model ({error})") from None
    return model
