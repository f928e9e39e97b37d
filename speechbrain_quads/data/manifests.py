"""Checks and all-or-nothing CSV manifests for the recipes' prepare scripts.

A prepare script collects, per manifest (``train-type=direct``, ``devel-type=direct``, ...), a dict
``{ID: row}``; every row has ``wav`` (an audio path) and ``intent`` (its label, used for the label
check only) plus the CSV columns. :func:`write_manifests` checks every audio file and label before
writing anything, then writes the CSVs (SpeechBrain's ``DynamicItemDataset.from_csv`` format) and,
last, a ``prepare_options.json`` marker. A later run re-uses the manifests only when the marker
exists and records the same options, so a preparation that was killed or failed is never trusted,
and a failed one leaves the previous manifests untouched.

Audio must be 16 kHz (what Whisper's front end expects): another sample rate is refused with the
file named rather than resampled behind the user's back, and so is a clip shorter than 25 ms (less
than one Whisper frame).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import soundfile

MARKER = "prepare_options.json"
MAX_LISTED = 10
SAMPLE_RATE = 16000
MIN_SECONDS = 0.025
MAX_SECONDS = 30.0
"""Whisper's window: its encoder has positions for 30 s of audio at most."""


class DataPreparationError(ValueError):
    """The dataset on disk is missing something or holds a bad file; the message names it."""


def audio_duration(path: Path) -> float:
    """Duration in seconds of a readable 16-kHz audio file of 25 ms to 30 s; raises naming it."""
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
    if info.samplerate != SAMPLE_RATE:
        raise DataPreparationError(
            f"audio at {info.samplerate} Hz, expected {SAMPLE_RATE} Hz: {path} (resample the "
            "corpus first, e.g. sox IN -r 16000 OUT)")
    seconds = info.frames / info.samplerate
    if seconds < MIN_SECONDS:
        raise DataPreparationError(
            f"audio too short ({1000 * seconds:.1f} ms < {1000 * MIN_SECONDS:.0f} ms): {path}")
    if seconds > MAX_SECONDS:
        raise DataPreparationError(
            f"audio too long ({seconds:.2f} s > {MAX_SECONDS:.0f} s, Whisper's window): {path} "
            "(split or trim it)")
    return seconds


def read_split_file(path: Path, split: str) -> str:
    """Text of a split's annotation file, or an error naming the missing file."""
    if not path.is_file():
        raise DataPreparationError(f"missing {split} split: expected {path}")
    return path.read_text(encoding="utf-8")


def add_row(rows: dict[str, dict], utt_id: str, row: dict, where: str) -> None:
    """Add ``row`` under ``utt_id``; a second row with the same ID is an error naming both."""
    if utt_id in rows:
        raise DataPreparationError(f"duplicate utterance ID {utt_id!r}: {rows[utt_id]['source']} "
                                   f"and {where}")
    rows[utt_id] = {**row, "source": where}


def _list(problems: list[str]) -> str:
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return "\n  ".join(problems[:MAX_LISTED]) + more


def _check_audio(manifests: dict[str, dict[str, dict]]) -> None:
    """Fill in every row's ``duration``; raise listing every bad audio file."""
    problems: dict[str, None] = {}  # ordered set: a file listed in two manifests is named once
    for rows in manifests.values():
        for row in rows.values():
            try:
                row["duration"] = round(audio_duration(Path(row["wav"])), 4)
            except DataPreparationError as error:
                problems[f"{error} (from {row['source']})"] = None
    if problems:
        raise DataPreparationError(f"{len(problems)} bad audio file(s):\n  {_list(list(problems))}")


def _check_labels(manifests: dict[str, dict[str, dict]], train: str) -> None:
    """Raise if a manifest holds an intent that the training manifest never has."""
    known = {row["intent"] for row in manifests[train].values()}
    for name, rows in manifests.items():
        unseen: dict[str, str] = {}
        for row in rows.values():
            if row["intent"] not in known:
                unseen.setdefault(row["intent"], row["source"])
        if unseen:
            listed = ", ".join(f"{label!r} (first in {where})" for label, where in
                               sorted(unseen.items())[:MAX_LISTED])
            raise DataPreparationError(
                f"{name} has {len(unseen)} intent label(s) that training never saw: {listed}")


def manifests_ready(save_folder: Path, options: dict) -> bool:
    """True when a completed preparation with the same ``options`` is in ``save_folder``."""
    marker = Path(save_folder) / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == options
    except json.JSONDecodeError:
        return False


def _write_csv(path: Path, rows: dict[str, dict], columns: tuple[str, ...]) -> None:
    """Write one CSV (``ID`` + ``columns``) through a temporary file renamed into place."""
    handle = tempfile.NamedTemporaryFile("w", newline="", encoding="utf-8", dir=path.parent,
                                         prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            writer = csv.writer(handle)
            writer.writerow(("ID", *columns))
            for utt_id, row in rows.items():
                writer.writerow((utt_id, *(row[c] for c in columns)))
        os.replace(handle.name, path)
    finally:
        if os.path.exists(handle.name):
            os.unlink(handle.name)


def write_manifests(save_folder: str | Path, manifests: dict[str, dict[str, dict]],
                    columns: tuple[str, ...], options: dict, train: str) -> None:
    """Check audio and labels, then write ``<name>.csv`` per manifest and the marker.

    Arguments
    ---------
    save_folder : str or Path
        Where the CSVs go (created if needed; other files in it are left alone).
    manifests : dict
        ``{name: {ID: row}}``; each row has ``wav``, ``intent``, ``source`` (where it was read,
        for error messages) and every column but ``duration``, which is measured here.
    columns : tuple of str
        CSV columns after ``ID`` (SpeechBrain's order, e.g. duration, wav, semantics, transcript).
    options : dict
        JSON-serialisable preparation options, recorded in the marker for re-use checks.
    train : str
        The manifest whose labels define the known intents.
    """
    for name, rows in manifests.items():
        if not rows:
            raise DataPreparationError(f"{name} has no utterance")
    _check_audio(manifests)
    _check_labels(manifests, train)
    folder = Path(save_folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)  # from here on, a stop leaves nothing trusted
    for name, rows in manifests.items():
        _write_csv(folder / f"{name}.csv", rows, columns)
    marker = folder / f".{MARKER}.tmp"
    marker.write_text(json.dumps(options, indent=1), encoding="utf-8")
    os.replace(marker, folder / MARKER)
