"""Reader for CTranslate2 ``model.bin`` files (possibly split over several parts).

The layout (ctranslate2 ``specs/model_spec.py``), little-endian::

    uint32 binary_version (6) | string spec_name | uint32 revision | uint32 n_variables
    n_variables x [string name | uint8 rank | uint32 dims[rank] | uint8 dtype | uint32 nbytes | bytes]
    uint32 n_aliases | n_aliases x [string alias | string target]

A string is a uint16 length (counting a trailing NUL), then the bytes and the NUL. A file split
into parts is one byte stream over its parts, read in order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ctranslate2 DataType enum -> numpy dtype.
_DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
    5: None,  # bfloat16: decoded separately
}
SUPPORTED_BINARY_VERSIONS = (5, 6)


class ModelFileError(ValueError):
    """A CTranslate2 model file (or one of its parts) is missing, truncated or not a model."""


@dataclass(frozen=True)
class Part:
    """One file of a (possibly split) model: where it lives and which package ships it."""

    path: Path
    package: str


class _Stream:
    """Sequential reader over the concatenated bytes of several parts that names the part on error."""

    def __init__(self, parts: list[Part]):
        self.parts = parts
        self.buffers = []
        self.starts = []
        offset = 0
        for part in parts:
            if not part.path.is_file():
                raise ModelFileError(
                    f"missing model part {part.path.name} of package '{part.package}' "
                    f"(expected at {part.path}); reinstall it: pip install --force-reinstall "
                    f"{part.package}"
                )
            data = part.path.read_bytes()
            self.buffers.append(data)
            self.starts.append(offset)
            offset += len(data)
        self.data = b"".join(self.buffers)
        self.offset = 0

    def _part_at(self, offset: int) -> Part:
        index = max(i for i, start in enumerate(self.starts) if start <= offset)
        return self.parts[min(index, len(self.parts) - 1)]

    def take(self, n: int) -> bytes:
        """Return the next ``n`` bytes, or raise ModelFileError naming the truncated part."""
        end = self.offset + n
        if end > len(self.data):
            last = self.parts[-1]
            raise ModelFileError(
                f"model part {last.path.name} of package '{last.package}' is truncated: the "
                f"model needs at least {end} bytes over {len(self.parts)} part(s), found "
                f"{len(self.data)}; reinstall it: pip install --force-reinstall {last.package}"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        length = self.unpack("H")
        return self.take(length)[:-1].decode("utf-8")

    def error(self, message: str) -> ModelFileError:
        part = self._part_at(self.offset)
        return ModelFileError(f"{part.path} (package '{part.package}'): {message}")


def _decode(raw: bytes, dtype_id: int, dims: list[int]) -> np.ndarray:
    if dtype_id == 5:  # bfloat16 -> float32 by shifting into the high half of each word.
        halves = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        return halves.view(np.float32).reshape(dims)
    return np.frombuffer(raw, dtype=_DTYPES[dtype_id]).reshape(dims)


def read_model(parts: list[Part]) -> tuple[str, dict[str, np.ndarray]]:
    """Read a CTranslate2 model from its parts.

    Arguments
    ---------
    parts : list of Part
        The files of one model, in order (one for an unsplit ``model.bin``).

    Returns
    -------
    spec_name : str
        e.g. ``"WhisperSpec"``.
    variables : dict of str -> numpy.ndarray
        Every variable by name, in its stored dtype; aliases resolve to their target's array.
    """
    stream = _Stream(parts)
    version = stream.unpack("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise stream.error(f"not a CTranslate2 model (binary version {version})")
    spec_name = stream.string()
    stream.unpack("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(stream.unpack("I")):
        name = stream.string()
        dims = [stream.unpack("I") for _ in range(stream.unpack("B"))]
        dtype_id = stream.unpack("B")
        if dtype_id not in _DTYPES:
            raise stream.error(f"variable {name!r} has unknown dtype id {dtype_id}")
        nbytes = stream.unpack("I")
        variables[name] = _decode(stream.take(nbytes), dtype_id, dims)
    for _ in range(stream.unpack("I")):
        alias, target = stream.string(), stream.string()
        variables[alias] = variables[target]
    if stream.offset != len(stream.data):
        raise stream.error(
            f"{len(stream.data) - stream.offset} unexpected bytes after the model: "
            "parts are from different models or in the wrong order"
        )
    return spec_name, variables
