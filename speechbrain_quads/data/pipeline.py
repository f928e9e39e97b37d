"""Pieces of a recipe's data pipeline that every QUADS recipe shares: duration sorting and the
intent label encoder (checked against the training data it was made from)."""

from __future__ import annotations

from pathlib import Path

from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder

from speechbrain_quads.data.manifests import DataPreparationError

SORTINGS = ("random", "ascending", "descending")


def sort_train_set(train: DynamicItemDataset, sorting: str,
                   loader_options: dict) -> DynamicItemDataset:
    """``train`` sorted by ``duration`` (``ascending``/``descending``: the loader's ``shuffle``
    is turned off, or the order would be lost) or left to the shuffling loader (``random``)."""
    if sorting not in SORTINGS:
        raise ValueError(f"sorting: {sorting!r} is not one of {SORTINGS}")
    if sorting == "random":
        return train
    loader_options["shuffle"] = False
    return train.filtered_sorted(sort_key="duration", reverse=sorting == "descending")


def load_or_fit_encoder(encoder: CategoricalEncoder, path: str | Path,
                        train: DynamicItemDataset, output_key: str = "intent") -> None:
    """Load ``encoder`` from ``path``, or fit it on ``train``'s ``output_key`` and save it there.

    A saved encoder must hold exactly the training intents: one left by a run with other data or
    other ``train_splits`` in the same output folder would map labels wrongly, so it is refused
    with the file named.
    """
    encoder.load_or_create(path=str(path), from_didatasets=[train], output_key=output_key)
    with train.output_keys_as([output_key]):
        intents = {item[output_key] for item in train}
    known = set(encoder.lab2ind)
    if known != intents:
        missing, extra = sorted(intents - known), sorted(known - intents)
        raise DataPreparationError(
            f"{path}: the saved label encoder does not match the training data (intents missing "
            f"from it: {missing[:10]}; intents training no longer has: {extra[:10]}); it was made "
            "for other data or train_splits - delete it or use another output_folder")
    encoder.expect_len(len(intents))
