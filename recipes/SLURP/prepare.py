"""Prepare SLURP (Bastianelli et al., 2020) for intent classification.

Reads the real SLURP layout unchanged: ``train.jsonl``, ``train_synthetic.jsonl``, ``devel.jsonl``
and ``test.jsonl`` (one JSON object per line with ``slurp_id``, ``sentence``, ``scenario``,
``action``, ``recordings: [{file, ...}]``, ...) in ``data_folder``, audio in
``<audio_folder>/slurp_real/`` (and ``slurp_synth/`` for ``train_synthetic``). Every recording
becomes one utterance whose intent is ``scenario + "_" + action`` (as the official evaluator
builds it; the ``intent`` field disagrees on about 1.5% of lines).

Writes ``train.json``, ``valid.json`` and ``test.json`` manifests to ``manifest_folder``, all or
nothing, and re-uses them when a previous preparation with the same options completed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from speechbrain_quads.data.manifests import (
    DataPreparationError,
    manifests_ready,
    read_split_file,
    write_manifests,
)

logger = logging.getLogger(__name__)
SPLIT_FILES = {"train": "train.jsonl", "train_synthetic": "train_synthetic.jsonl",
               "devel": "devel.jsonl", "test": "test.jsonl"}


def read_jsonl(path: Path, split: str, audio_folder: Path) -> dict[str, dict]:
    """One manifest entry per recording of a SLURP jsonl file."""
    audio_dir = audio_folder / ("slurp_synth" if split == "train_synthetic" else "slurp_real")
    entries = {}
    for number, line in enumerate(read_split_file(path, split).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            scenario, action = record["scenario"], record["action"]
            recordings = record["recordings"]
            slurp_id = record["slurp_id"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataPreparationError(f"{path}, line {number}: not a SLURP record ({error})") from None
        for recording in recordings:
            name = recording["file"]
            entries[f"{split}-{Path(name).stem}"] = {
                "wav": str(audio_dir / name), "intent": f"{scenario}_{action}",
                "scenario": scenario, "action": action, "file": name,
                "slurp_id": slurp_id, "sentence": record.get("sentence", ""),
                "source": f"{path.name}, line {number}",
            }
    return entries


def prepare_slurp(data_folder: str, manifest_folder: str, audio_folder: str | None = None,
                  train_splits: tuple[str, ...] = ("train", "train_synthetic"),
                  skip_prep: bool = False) -> None:
    """Write SLURP manifests.

    Arguments
    ---------
    data_folder : str
        Folder holding the SLURP ``*.jsonl`` files.
    manifest_folder : str
        Output folder for ``train.json``, ``valid.json``, ``test.json`` (replaced whole).
    audio_folder : str, optional
        Folder holding ``slurp_real/`` and ``slurp_synth/`` (default: ``data_folder``).
    train_splits : tuple of str
        Which files make the training set: ``train`` and/or ``train_synthetic``.
    skip_prep : bool
        Do nothing (manifests prepared elsewhere).
    """
    if skip_prep:
        return
    bad = [s for s in train_splits if s not in ("train", "train_synthetic")]
    if bad or not train_splits:
        raise ValueError(f"train_splits must be drawn from train, train_synthetic; got {train_splits}")
    data = Path(data_folder)
    audio = Path(audio_folder) if audio_folder else data
    options = {"dataset": "slurp", "data_folder": str(data.resolve()),
               "audio_folder": str(audio.resolve()), "train_splits": list(train_splits)}
    if manifests_ready(Path(manifest_folder), options):
        logger.info("SLURP manifests in %s are up to date: re-using them", manifest_folder)
        return
    train = {}
    for split in train_splits:
        train.update(read_jsonl(data / SPLIT_FILES[split], split, audio))
    splits = {"train": train,
              "valid": read_jsonl(data / SPLIT_FILES["devel"], "devel", audio),
              "test": read_jsonl(data / SPLIT_FILES["test"], "test", audio)}
    write_manifests(Path(manifest_folder), splits, options)
    logger.info("SLURP manifests written to %s: %s", manifest_folder,
                {k: len(v) for k, v in splits.items()})
