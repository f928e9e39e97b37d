"""Prepare Fluent Speech Commands (Lugosch et al., 2019) for intent classification.

Reads the real layout unchanged: ``data/{train,valid,test}_data.csv`` with the header
``,path,speakerId,transcription,action,object,location`` and audio at the ``path`` given
(``wavs/speakers/<spk>/<id>.wav``, 16 kHz) relative to ``data_folder``. The intent is
``action_object_location``; the set of intents is read from the data.

Writes ``train.json``, ``valid.json`` and ``test.json`` manifests to ``manifest_folder``, all or
nothing, and re-uses them when a previous preparation with the same options completed.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from speechbrain_quads.data.manifests import (
    DataPreparationError,
    manifests_ready,
    read_split_file,
    write_manifests,
)

logger = logging.getLogger(__name__)
COLUMNS = ("path", "speakerId", "transcription", "action", "object", "location")


def read_csv(path: Path, split: str, data_folder: Path) -> dict[str, dict]:
    """One manifest entry per row of an FSC ``*_data.csv`` file."""
    reader = csv.DictReader(io.StringIO(read_split_file(path, split)))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataPreparationError(f"{path}: missing column(s) {missing}; expected the header "
                                   f",{','.join(COLUMNS)}")
    entries = {}
    for number, row in enumerate(reader, start=2):
        intent = "_".join(row[c] for c in ("action", "object", "location"))
        entries[f"{split}-{Path(row['path']).stem}"] = {
            "wav": str(data_folder / row["path"]), "intent": intent,
            "speaker": row["speakerId"], "transcription": row["transcription"],
            "source": f"{path.name}, line {number}",
        }
    return entries


def prepare_fsc(data_folder: str, manifest_folder: str, skip_prep: bool = False) -> None:
    """Write FSC manifests.

    Arguments
    ---------
    data_folder : str
        The FSC root (holding ``data/`` and ``wavs/``).
    manifest_folder : str
        Output folder for ``train.json``, ``valid.json``, ``test.json`` (replaced whole).
    skip_prep : bool
        Do nothing (manifests prepared elsewhere).
    """
    if skip_prep:
        return
    data = Path(data_folder)
    options = {"dataset": "fsc", "data_folder": str(data.resolve())}
    if manifests_ready(Path(manifest_folder), options):
        logger.info("FSC manifests in %s are up to date: re-using them", manifest_folder)
        return
    splits = {split: read_csv(data / "data" / f"{split}_data.csv", split, data)
              for split in ("train", "valid", "test")}
    write_manifests(Path(manifest_folder), splits, options)
    logger.info("FSC manifests written to %s: %s", manifest_folder,
                {k: len(v) for k, v in splits.items()})
