"""Data preparation for Fluent Speech Commands (Lugosch et al., 2019), with SpeechBrain's
signature and CSVs.

Reads the real layout unchanged: ``data/{train,valid,test}_data.csv`` with the header
``,path,speakerId,transcription,action,object,location`` and the audio at ``path``
(``wavs/speakers/<spk>/<id>.wav``, 16 kHz) relative to ``data_folder``.

Writes ``train.csv``, ``valid.csv`` and ``test.csv`` into ``save_folder`` with SpeechBrain's
columns ``ID, duration, wav, spk_id, semantics, transcript``; ``semantics`` is
``{"action": .., "object": .., "location": ..}`` as JSON with commas replaced by ``|`` (SpeechBrain
writes the same fields); the intent is ``action_object_location``. IDs are ``<split>-<file stem>``.

Unlike SpeechBrain's, this preparation checks every recording first (missing, corrupt, empty,
shorter than 25 ms, not 16 kHz: each named) and every row (missing columns, a duplicate ID, a
valid/test intent that training never has), writes nothing unless all is well, and re-uses its
CSVs only while the options recorded in ``prepare_options.json`` match.

Authors
 * speechbrain-quads developers
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from speechbrain.utils.logger import get_logger

from speechbrain_quads.data.manifests import (
    DataPreparationError,
    add_row,
    manifests_ready,
    read_split_file,
    write_manifests,
)

logger = get_logger(__name__)
SPLITS = ("train", "valid", "test")
SOURCE_COLUMNS = ("path", "speakerId", "transcription", "action", "object", "location")
COLUMNS = ("duration", "wav", "spk_id", "semantics", "transcript")


def semantics_string(action: str, obj: str, location: str) -> str:
    """The ``semantics`` column: JSON of the three slots with ``,`` replaced by ``|``."""
    return json.dumps({"action": action, "object": obj, "location": location}).replace(",", "|")


def read_split(data_folder: Path, split: str) -> dict[str, dict]:
    """One row per line of ``data/<split>_data.csv``; errors name the file and line."""
    path = data_folder / "data" / f"{split}_data.csv"
    reader = csv.DictReader(io.StringIO(read_split_file(path, split)))
    missing = [c for c in SOURCE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataPreparationError(f"{path}: missing column(s) {missing}; expected the header "
                                   f",{','.join(SOURCE_COLUMNS)}")
    rows: dict[str, dict] = {}
    for number, row in enumerate(reader, start=2):
        where = f"{path}, line {number}"
        empty = [c for c in SOURCE_COLUMNS if not (row.get(c) or "").strip()]
        if empty:
            raise DataPreparationError(f"{where}: empty {empty}")
        add_row(rows, f"{split}-{Path(row['path']).stem}", {
            "wav": str(data_folder / row["path"]),
            "intent": "_".join(row[c] for c in ("action", "object", "location")),
            "spk_id": row["speakerId"],
            "semantics": semantics_string(row["action"], row["object"], row["location"]),
            "transcript": row["transcription"],
        }, where)
    return rows


def prepare_FSC(data_folder, save_folder, skip_prep=False):
    """Write FSC's CSV manifests into ``save_folder`` (SpeechBrain's signature).

    Arguments
    ---------
    data_folder : str
        The FSC root (``data/`` and ``wavs/``).
    save_folder : str
        Where ``train.csv``, ``valid.csv`` and ``test.csv`` go.
    skip_prep : bool
        If True, do nothing.
    """
    if skip_prep:
        return
    data = Path(data_folder)
    options = {"dataset": "FSC", "data_folder": str(data.resolve())}
    if manifests_ready(Path(save_folder), options):
        logger.info("FSC CSVs in %s are up to date: re-using them", save_folder)
        return
    manifests = {split: read_split(data, split) for split in SPLITS}
    write_manifests(save_folder, manifests, COLUMNS, options, train="train")
    logger.info("FSC CSVs written to %s: %s", save_folder,
                {name: len(rows) for name, rows in manifests.items()})
