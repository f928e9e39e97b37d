"""Intent classification metrics: accuracy and macro-F1 (the paper's "F1")."""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(predictions: Sequence, targets: Sequence) -> float:
    """Fraction of predictions equal to their targets, in [0, 1] (0 for no items)."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        return 0.0
    return sum(p == t for p, t in zip(predictions, targets, strict=True)) / len(targets)


def macro_f1(predictions: Sequence, targets: Sequence) -> float:
    """Unweighted mean of per-class F1 over every class seen in targets or predictions, in [0, 1].

    Example
    -------
    >>> round(macro_f1(["a", "a", "b"], ["a", "b", "b"]), 4)
    0.6667
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    classes = set(targets) | set(predictions)
    if not classes:
        return 0.0
    scores = []
    for label in classes:
        tp = sum(p == label and t == label for p, t in zip(predictions, targets, strict=True))
        fp = sum(p == label and t != label for p, t in zip(predictions, targets, strict=True))
        fn = sum(p != label and t == label for p, t in zip(predictions, targets, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)
