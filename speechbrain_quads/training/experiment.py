"""One output folder, one experiment: a recipe run resumes only the experiment it started.

SpeechBrain's Checkpointer resumes whatever checkpoint it finds in the save folder. A recipe's
output folder is named by width and seed (``results/slurp_4bit/1986``), so an ablation of the
same file (``--init=random``, ``--strategy=sequential``) would find the finished 4-bit run there,
skip its training and report that run's test accuracy under the ablation's settings. A run
therefore stores its settings beside its checkpoints and refuses a folder whose stored settings
differ, naming every key that does. Plain Python: the settings are the hparams' plain values.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

SETTINGS_FILE = "experiment_settings.json"
"""The settings a run started with, in its save folder."""

MAY_CHANGE_ON_RESUME = frozenset({"data_folder", "skip_prep", "num_workers"})
"""Keys a resumed run may change: where the data lives and how it is read, not what is trained."""


class ExperimentMismatchError(ValueError):
    """The output folder holds a run of other settings."""


_NOT_PLAIN = object()


def _plain(value) -> object:
    """``value`` as JSON data: numbers, strings, booleans, None and lists of them as they are,
    a class or function (``!name:``) by its dotted name; ``_NOT_PLAIN`` for anything else."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        items = [_plain(item) for item in value]
        return _NOT_PLAIN if any(item is _NOT_PLAIN for item in items) else items
    if callable(value) and hasattr(value, "__qualname__"):  # classes and functions, not objects
        return f"{value.__module__}.{value.__qualname__}"
    return _NOT_PLAIN


def experiment_settings(hparams: Mapping) -> dict:
    """The top-level hparams that define the experiment, by key: every plain value and every
    ``!name:`` reference, but :data:`MAY_CHANGE_ON_RESUME` and the output folder's own paths
    (``output_folder`` and the paths inside it: the folder may move)."""
    folder = str(hparams.get("output_folder", "")).rstrip("/")
    return {key: plain for key, value in hparams.items()
            if key not in MAY_CHANGE_ON_RESUME and key != "output_folder"
            and not (folder and isinstance(value, str) and value.startswith(folder + "/"))
            and (plain := _plain(value)) is not _NOT_PLAIN}


def check_same_experiment(hparams: Mapping, save_folder: str | Path) -> None:
    """Raise :class:`ExperimentMismatchError` when ``save_folder`` holds the settings of
    another experiment (keys present in both that differ, each with both values). A folder
    without stored settings (a new run, or one from before they were stored) passes."""
    path = Path(save_folder) / SETTINGS_FILE
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ExperimentMismatchError(f"{path}: unreadable ({error}); delete it to resume the "
                                      "run in this folder as it is") from error
    current = experiment_settings(hparams)
    differ = [f"{key}: {stored[key]!r} there, {current[key]!r} now"
              for key in sorted(set(stored) & set(current)) if stored[key] != current[key]]
    if differ:
        raise ExperimentMismatchError(
            f"{path}: this output folder holds a run with other settings ({'; '.join(differ)}); "
            "resuming would report that run as this one. Give this run its own folder "
            "(--output_folder=...) or delete that one to start again")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (parent folders made) through a temporary file renamed into
    place, so a reader never sees half a file and a killed run leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def record_experiment(hparams: Mapping, save_folder: str | Path) -> Path:
    """Store ``hparams``' :func:`experiment_settings` in ``save_folder`` (atomically; kept if
    already there) and return the file's path."""
    path = Path(save_folder) / SETTINGS_FILE
    if not path.is_file():
        write_text_atomic(path, json.dumps(experiment_settings(hparams), indent=1,
                                           sort_keys=True) + "\n")
    return path
