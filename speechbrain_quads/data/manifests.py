"""Shared data-preparation checks and all-or-nothing manifest writing for the recipes.

A prepare script collects, per split, a dict ``{utterance_id: {"wav": path, "duration": s,
"intent": label, ...}}`` and hands it to :func:`write_manifests`, which checks every audio file
and label, then writes ``<split>.json`` manifests (SpeechBrain's ``DynamicItemDataset.from_json``
format) into a temporary folder that replaces the previous one in one rename, followed by a
``prepare_options.json`` marker. A later run re-uses the manifests only when the marker exists and
records the same options, so a killed preparation is never trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import soundfile

MARKER = "prepare_options.json"
MAX_LISTED = 10


class DataPreparationError(ValueError):
    """The dataset on disk is missing something or holds a bad file; the message names it."""


def audio_duration(path: Path) -> float:
    """Duration in seconds of a readable, non-empty audio file; raises naming the file."""
    if not path.is_file():
        raise DataPreparationError(f"missing audio file: {path}")
    if path.stat().st_size == 0:
        raise DataPreparationError(f"empty audio file (0 bytes): {path}")
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise DataPreparationError(f"unreadable or corrupt audio file: {path} ({error})") from None
    if info.frames == 0:
        raise DataPreparationError(f"empty audio file (0 samples): {path}")
    return info.frames / info.samplerate


def read_split_file(path: Path, split: str) -> str:
    """Text of a split's annotation file, or an error naming the missing file."""
    if not path.is_file():
        raise DataPreparationError(f"missing {split} split: expected {path}")
    return path.read_text(encoding="utf-8")


def _check_audio(splits: dict[str, dict[str, dict]]) -> None:
    """Add ``duration`` to every entry; raise listing every bad audio file."""
    problems: dict[str, None] = {}  # ordered set: a file listed in two splits is named once
    for entries in splits.values():
        for entry in entries.values():
            try:
                entry["duration"] = audio_duration(Path(entry["wav"]))
            except DataPreparationError as error:
                problems[str(error)] = None
    problems = list(problems)
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataPreparationError(f"{len(problems)} bad audio file(s):\n  {listed}{more}")


def _check_labels(splits: dict[str, dict[str, dict]], train_split: str) -> None:
    """Raise if a non-training split holds an intent the training split never has."""
    known = {entry["intent"] for entry in splits[train_split].values()}
    for split, entries in splits.items():
        unseen = {}
        for utt_id, entry in entries.items():
            if entry["intent"] not in known:
                unseen.setdefault(entry["intent"], entry.get("source", utt_id))
        if unseen:
            listed = ", ".join(f"{label!r} (first in {where})" for label, where in
                               sorted(unseen.items())[:MAX_LISTED])
            raise DataPreparationError(
                f"{split} split has {len(unseen)} intent label(s) that training never saw: "
                f"{listed}")


def manifests_ready(save_folder: Path, options: dict) -> bool:
    """True when a completed preparation with the same ``options`` is in ``save_folder``."""
    marker = Path(save_folder) / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == options
    except json.JSONDecodeError:
        return False


def write_manifests(save_folder: Path, splits: dict[str, dict[str, dict]], options: dict,
                    train_split: str = "train") -> None:
    """Check audio and labels, then write ``<split>.json`` + the marker, all or nothing.

    Arguments
    ---------
    save_folder : Path
        Where the manifests go (the whole folder is replaced).
    splits : dict
        ``{split: {utt_id: entry}}``; each entry has at least ``wav`` and ``intent``.
    options : dict
        JSON-serialisable preparation options, recorded in the marker for re-use checks.
    train_split : str
        The split whose labels define the known intents.
    """
    for split, entries in splits.items():
        if not entries:
            raise DataPreparationError(f"{split} split has no utterance")
    _check_audio(splits)
    _check_labels(splits, train_split)
    save_folder = Path(save_folder)
    save_folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{save_folder.name}.", dir=save_folder.parent))
    try:
        for split, entries in splits.items():
            (tmp / f"{split}.json").write_text(json.dumps(entries, indent=1), encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps(options, indent=1), encoding="utf-8")
        old = None
        if save_folder.exists():
            old = save_folder.with_name(f".{save_folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(save_folder, old)
        os.rename(tmp, save_folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
