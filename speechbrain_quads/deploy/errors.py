"""Errors of the inference interfaces, importable without torch (the ONNX runtime uses them too)."""

from __future__ import annotations

from pathlib import Path


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
