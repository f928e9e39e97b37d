"""On-disk cache of the frozen teacher's hidden states, one safetensors file per utterance.

The teacher is frozen and, per utterance, independent of its batch mates (features are computed
per utterance and padding is masked), so its features are computed once and reused every epoch.

Layout: ``<directory>/<fingerprint>/<hh>/<sha1(utterance id)>.safetensors`` holding ``hidden``
(N, T_i, C) for the utterance's valid frames, with the utterance id and its number of input
samples in the metadata. The fingerprint hashes the teacher (source, weights file sizes and
times, output layers, input mode, sample rate, dtype), so a changed setting uses a fresh
directory. An entry whose stored sample count differs from the batch's waveform is stale and
recomputed. Writes go to a temporary file renamed into place: a killed run leaves no half entry.

Augmentation: the teacher always sees the clean waveform (the student may see an augmented one),
so cached entries never depend on augmentation. A recipe that wants the teacher to see the
augmented input must disable the cache (``teacher_cache: null``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT_VERSION = 1


def teacher_fingerprint(teacher: torch.nn.Module, dtype: torch.dtype) -> str:
    """Short hash of everything that changes a teacher's features.

    Arguments
    ---------
    teacher : WhisperTeacher
    dtype : torch.dtype
        The dtype features are stored in.
    """
    source = teacher.source
    files = []
    if Path(source).is_dir():
        for path in sorted(Path(source).iterdir()):
            if path.is_file():
                stat = path.stat()
                files.append([path.name, stat.st_size, stat.st_mtime_ns])
    settings = {
        "version": FORMAT_VERSION,
        "source": str(source),
        "files": files,
        "output_layers": list(teacher.output_layers),
        "pad_to_30s": bool(teacher.pad_to_30s),
        "sampling_rate": teacher.frontend.sampling_rate,
        "n_mels": int(teacher.frontend.mel_filters.shape[0]),
        "layers": len(teacher.encoder.layers),
        "d_model": teacher.output_size,
        "dtype": str(dtype),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class TeacherCache:
    """Per-utterance store of teacher hidden states under an experiment folder.

    Arguments
    ---------
    directory : str
        Root folder (e.g. ``<save_folder>/teacher_cache``).
    dtype : str
        ``"float32"`` (exact) or ``"float16"`` (half the disk).
    """

    def __init__(self, directory: str, dtype: str = "float32"):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"teacher cache dtype must be float32 or float16, got {dtype!r}")
        self.root = Path(directory)
        self.dtype = getattr(torch, dtype)
        self.folder: Path | None = None

    def bind(self, teacher: torch.nn.Module) -> Path:
        """Select the sub-folder for this teacher and its settings; returns it."""
        self.folder = self.root / teacher_fingerprint(teacher, self.dtype)
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder

    def _path(self, utt_id: str) -> Path:
        if self.folder is None:
            raise RuntimeError("TeacherCache.bind(teacher) must be called before use")
        digest = hashlib.sha1(utt_id.encode("utf-8")).hexdigest()
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def load(self, utt_id: str, n_samples: int,
             device: torch.device | str = "cpu") -> torch.Tensor | None:
        """Cached (N, T_i, C) float32 features of ``utt_id`` on ``device``, or None if absent or
        stale (the brain asks for its own device, so cached and fresh features never mix)."""
        path = self._path(utt_id)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("utt_id") != utt_id or int(meta.get("n_samples", -1)) != n_samples:
                    return None
                hidden = handle.get_tensor("hidden")
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError):  # unreadable
            return None
        return hidden.to(device=device, dtype=torch.float32)

    def store(self, utt_id: str, n_samples: int, hidden: torch.Tensor) -> None:
        """Atomically write (N, T_i, C) features of ``utt_id``."""
        path = self._path(utt_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            save_file({"hidden": hidden.detach().to(self.dtype).contiguous().cpu()}, tmp,
                      metadata={"utt_id": utt_id, "n_samples": str(n_samples)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
