"""Data preparation for SLURP (Bastianelli et al., 2020), with SpeechBrain's signature and CSVs.

Reads a SLURP checkout unchanged: ``train.jsonl`` (or ``train_real.jsonl``, the name SpeechBrain's
own preparation downloads it to), ``train_synthetic.jsonl``, ``devel.jsonl`` and ``test.jsonl`` in
``data_folder`` (one JSON object per line: ``slurp_id``, ``sentence``, ``sentence_annotation``
with entities inline as ``[type : filler]``, ``scenario``, ``action``, ``recordings: [{file,
...}]``), audio in ``data_folder/slurp_real/`` (``slurp_synth/`` for ``train_synthetic``).

Writes, as SpeechBrain's ``recipes/SLURP/prepare.py`` does, ``<split>-type=<slu_type>.csv`` for
``train_real``, ``train_synthetic``, ``devel`` and ``test`` and their merge
``train-type=<slu_type>.csv`` over ``train_splits``, with the columns ``ID, duration, wav,
semantics, transcript``. ``semantics`` is ``{"scenario", "action", "entities"}`` as a Python
dict string with commas replaced by ``|`` (SpeechBrain's convention); the intent is
``scenario_action``, as SLURP's official evaluator builds it. IDs are ``<split>-<file stem>``.

Unlike SpeechBrain's, this preparation downloads nothing, checks every recording first (missing,
corrupt, empty, shorter than 25 ms, not 16 kHz: each named) and every record (a recording without
``file``, a duplicate ID, a devel/test intent that training never has), writes nothing unless all
is well, and re-uses its CSVs only while the options recorded in ``prepare_options.json`` match.

Authors
 * speechbrain-quads developers
"""

from __future__ import annotations

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
SPLITS = ("train_real", "train_synthetic", "devel", "test")
SLU_TYPES = ("direct", "multistage", "decoupled")
COLUMNS = ("duration", "wav", "semantics", "transcript")


def split_file(data_folder: Path, split: str) -> Path:
    """The jsonl file of ``split`` (``train_real``: ``train_real.jsonl``, else ``train.jsonl``)."""
    if split == "train_real" and not (data_folder / "train_real.jsonl").is_file():
        return data_folder / "train.jsonl"
    return data_folder / f"{split}.jsonl"


def parse_entities(annotation: str) -> list[dict[str, str]]:
    """``"wake me at [time : seven am]"`` -> ``[{"type": "time", "filler": "seven am"}]``."""
    entities = []
    for chunk in annotation.split("[")[1:]:
        slot = chunk.split("]")[0]
        kind, _, filler = slot.partition(":")
        entities.append({"type": kind.strip(), "filler": filler.strip()})
    return entities


def semantics_string(scenario: str, action: str, entities: list[dict[str, str]]) -> str:
    """SpeechBrain's ``semantics`` column: a dict string with ``,`` replaced by ``|``."""
    return str({"scenario": scenario, "action": action, "entities": entities}).replace(",", "|")


def read_split(data_folder: Path, split: str, slu_type: str) -> dict[str, dict]:
    """One row per recording of a SLURP split; errors name the file and line."""
    path = split_file(data_folder, split)
    audio = data_folder / ("slurp_synth" if split == "train_synthetic" else "slurp_real")
    rows: dict[str, dict] = {}
    for number, line in enumerate(read_split_file(path, split).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
            scenario, action = record["scenario"], record["action"]
            recordings = record["recordings"]
            sentence = record["sentence"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataPreparationError(f"{where}: not a SLURP record ({error!r})") from None
        semantics = semantics_string(scenario, action,
                                     parse_entities(record.get("sentence_annotation", "")))
        for recording in recordings:
            if not isinstance(recording, dict) or not recording.get("file"):
                raise DataPreparationError(f"{where}: a recording without 'file' ({recording!r})")
            name = recording["file"]
            add_row(rows, f"{split}-{Path(name).stem}", {
                "wav": str(audio / name), "intent": f"{scenario}_{action}",
                "semantics": semantics,
                "transcript": sentence.upper() if slu_type == "decoupled" else sentence,
            }, where)
    return rows


def prepare_SLURP(data_folder, save_folder, slu_type, train_splits, skip_prep=False):
    """Write SLURP's CSV manifests into ``save_folder`` (SpeechBrain's signature).

    Arguments
    ---------
    data_folder : str
        The SLURP folder: the ``*.jsonl`` files, ``slurp_real/`` and ``slurp_synth/``.
    save_folder : str
        Where the CSVs go.
    slu_type : str
        ``direct`` (audio -> semantics; what QUADS trains), ``multistage`` or ``decoupled``
        (ground-truth transcripts, upper-cased), as in SpeechBrain.
    train_splits : list of str
        Splits merged into ``train-type=<slu_type>.csv``: ``train_real`` and/or
        ``train_synthetic``.
    skip_prep : bool
        If True, do nothing.
    """
    if skip_prep:
        return
    if slu_type not in SLU_TYPES:
        raise ValueError(f"slu_type: {slu_type!r} is not one of {SLU_TYPES}")
    bad = [s for s in train_splits if s not in ("train_real", "train_synthetic")]
    if bad or not train_splits or len(set(train_splits)) != len(train_splits):
        raise ValueError(f"train_splits: expected train_real and/or train_synthetic, got "
                         f"{list(train_splits)}")
    data = Path(data_folder)
    options = {"dataset": "SLURP", "data_folder": str(data.resolve()), "slu_type": slu_type,
               "train_splits": list(train_splits)}
    if manifests_ready(Path(save_folder), options):
        logger.info("SLURP CSVs in %s are up to date: re-using them", save_folder)
        return
    needed = [s for s in SPLITS if s in train_splits or s in ("devel", "test")]
    splits = {split: read_split(data, split, slu_type) for split in needed}
    manifests = {f"{split}-type={slu_type}": rows for split, rows in splits.items()}
    train: dict[str, dict] = {}
    for split in train_splits:
        train.update(splits[split])
    manifests[f"train-type={slu_type}"] = train
    write_manifests(save_folder, manifests, COLUMNS, options, train=f"train-type={slu_type}")
    logger.info("SLURP CSVs written to %s: %s", save_folder,
                {name: len(rows) for name, rows in manifests.items()})
