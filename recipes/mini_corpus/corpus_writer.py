"""Writing a corpus: its audio files synthesized in worker processes (one thread each), its
label tables and manifest, all in a hidden staging folder renamed to the output folder only when
complete, so an interrupted run never leaves something that looks finished. ``generate.py`` and
``slurp_text.py`` plan what to write (:class:`CorpusPlan`); :func:`build` writes it."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile
import torch
import voices
from tqdm import tqdm

MANIFEST = "mini_corpus.json"
"""Name of the manifest written last into a finished corpus."""

# ---------------------------------------------------------------------------------------------
# Synthesis


@dataclass(frozen=True)
class Job:
    """One audio file to synthesize: ``voice`` says ``text`` with ``variation`` into
    ``path`` (relative to the corpus root; .flac or .wav, 16 kHz, PCM 16 bit)."""

    path: str
    voice: voices.Voice
    text: str
    variation: voices.Variation


def make_job(path: str, voice: voices.Voice, text: str, seed: int) -> Job:
    """A ``Job`` whose speed/pitch/noise variation is drawn from ``seed`` and ``path``."""
    return Job(path, voice, text, voices.random_variation(random.Random(f"{seed}|{path}")))


def _init_worker() -> None:
    """Use one torch thread in a synthesis process (Piper's onnxruntime uses one by default).

    The torch work here (resampling, noise) is small; more threads only spin: with two, the
    eSpeak path costs about 15x more CPU time. Two single-threaded processes on 2 cores
    synthesize about twice as fast as one.
    """
    torch.set_num_threads(1)


def _run_job(job: Job, root: str) -> tuple[str, float]:
    """Synthesize and write one file (under a temporary name, then renamed, so a file that
    exists is whole); returns ``(path, duration in seconds)``."""
    wave = voices.render(job.voice, job.text, job.variation)
    target = Path(root) / job.path
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    soundfile.write(partial, wave.numpy(), voices.SAMPLE_RATE, subtype="PCM_16",
                    format=target.suffix[1:].upper())
    os.replace(partial, target)
    return job.path, wave.numel() / voices.SAMPLE_RATE


def _run_speaker(arguments: tuple[list[Job], str]) -> list[tuple[str, float]]:
    """Write one speaker's files in plan order, starting from a clean eSpeak NG engine."""
    jobs, root = arguments
    voices.fresh_espeak()
    return [_run_job(job, root) for job in jobs]


def speaker_batches(jobs: list[Job]) -> list[list[Job]]:
    """``jobs`` grouped by speaker, each group in plan order (groups by first appearance).

    A speaker's files are always synthesized together, from a clean engine (eSpeak NG carries
    state from call to call): the audio then depends on the plan only, not on the number of
    worker processes, on which worker took which speaker, or on files kept from an interrupted
    run (a speaker with any file missing is spoken again whole).
    """
    batches: dict[str, list[Job]] = {}
    for job in jobs:
        batches.setdefault(job.voice.name, []).append(job)
    return list(batches.values())


def synthesize_jobs(jobs: list[Job], root: Path, num_workers: int, desc: str) -> dict[str, float]:
    """Synthesize ``jobs`` under ``root`` with a tqdm progress bar. Speakers whose files are
    all there (left by an interrupted resumable run) are kept; the others are spoken again.

    Args:
        jobs: files to write.
        root: corpus root folder.
        num_workers: processes, one thread each (1 = in this process, with its torch thread
            count set to 1 meanwhile).
        desc: progress-bar label.

    Returns:
        duration in seconds of each file, by relative path.
    """
    durations: dict[str, float] = {}
    tasks = []
    for batch in speaker_batches(jobs):
        if all((root / job.path).is_file() for job in batch):
            durations.update((job.path, soundfile.info(root / job.path).duration)
                             for job in batch)
        else:
            tasks.append((batch, str(root)))
    tasks.sort(key=lambda task: -len(task[0]))  # longest speakers first: balanced workers
    with tqdm(total=len(jobs), initial=len(durations), desc=desc, unit="utt",
              file=sys.stderr) as progress:
        if num_workers <= 1:
            caller_threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for written in map(_run_speaker, tasks):
                    durations.update(written)
                    progress.update(len(written))
            finally:
                torch.set_num_threads(caller_threads)
        elif tasks:
            context = multiprocessing.get_context("spawn")
            with context.Pool(num_workers, _init_worker) as pool:
                for written in pool.imap_unordered(_run_speaker, tasks, chunksize=1):
                    durations.update(written)
                    progress.update(len(written))
    return durations


# ---------------------------------------------------------------------------------------------
# Atomic output


def _pid_alive(pid: int) -> bool:
    """True if a process with id ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(out_dir: Path) -> None:
    """Delete staging folders of ``out_dir`` left by generations whose process is gone."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def is_complete(out_dir: str | Path) -> bool:
    """True if ``out_dir`` holds a finished mini corpus (its manifest exists)."""
    return (Path(out_dir) / MANIFEST).is_file()


RESUME_KEY = "resume.json"
"""File in a resumable staging folder holding the arguments of the run that started it."""


@contextmanager
def _staging(out_dir: Path, overwrite: bool, resume_key: dict | None = None) -> Iterator[Path]:
    """Yield a hidden staging folder; on success rename it to ``out_dir``.

    Without ``resume_key`` the folder is ``.OUT_DIR.partial-<pid>`` and is deleted on failure.
    With it, the folder is ``.OUT_DIR.partial``, kept on failure and re-used by the next run
    whose ``resume_key`` (the generation arguments) is the same; otherwise it is emptied.
    """
    if out_dir.exists() and not overwrite:
        state = "a complete corpus" if is_complete(out_dir) else "not a complete corpus"
        raise FileExistsError(f"{out_dir} already exists ({state}); pass overwrite=True "
                              f"(--overwrite) to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out_dir)
    if resume_key is None:
        staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging = out_dir.parent / f".{out_dir.name}.partial"
        key_file = staging / RESUME_KEY
        if not key_file.is_file() or json.loads(key_file.read_text()) != resume_key:
            shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(exist_ok=True)
    if resume_key is not None:
        (staging / RESUME_KEY).write_text(json.dumps(resume_key))
    succeeded = False
    try:
        yield staging
        if not is_complete(staging):
            raise RuntimeError(f"{staging} has no {MANIFEST}: generation did not finish")
        if resume_key is not None:
            (staging / RESUME_KEY).unlink()
        if out_dir.exists():
            trash = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(trash)
            shutil.rmtree(trash)
        staging.rename(out_dir)
        succeeded = True
    finally:
        if resume_key is None or succeeded:
            shutil.rmtree(staging, ignore_errors=True)


def _write_manifest(root: Path, manifest: dict) -> None:
    with open(root / MANIFEST, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)


def _manifest(kind: str, arguments: dict, speakers: dict[str, list[voices.Voice]],
              jobs: dict[str, list[Job]], durations: dict[str, float], seconds: float) -> dict:
    """The manifest: arguments, per-split speakers/counts/durations, file -> speaker."""
    splits = {}
    for split, split_jobs in jobs.items():
        splits[split] = {
            "speakers": sorted({job.voice.name for job in split_jobs}),
            "files": len(split_jobs),
            "audio_seconds": round(sum(durations[job.path] for job in split_jobs), 2),
        }
    all_voices = {voice.name: voice for group in speakers.values() for voice in group}
    return {
        "format": kind,
        "arguments": arguments,
        "splits": splits,
        "voices": {name: {"type": type(voice).__name__, **asdict(voice)}
                   for name, voice in sorted(all_voices.items())},
        "speaker_of_file": {job.path: job.voice.name
                            for split_jobs in jobs.values() for job in split_jobs},
        "duration_of_file": {path: round(value, 3) for path, value in sorted(durations.items())},
        "generation_seconds": round(seconds, 1),
    }


# ---------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class CorpusPlan:
    """Everything in a corpus but its audio: deterministic for the planning arguments.

    Attributes:
        kind: ``"slurp"`` or ``"fsc"``.
        speakers: speakers of each part (``train``, ``valid``, ``test``, SLURP's
            ``train_synthetic``).
        jobs: audio files of each part.
        tables: label files by relative path: ``.jsonl`` -> list of objects, ``.csv`` -> list
            of rows (header first).
    """

    kind: str
    speakers: dict[str, list[voices.Voice]]
    jobs: dict[str, list[Job]]
    tables: dict[str, list]


def _write_table(path: Path, rows: list) -> None:
    """Write a ``.jsonl`` (one JSON object a line) or ``.csv`` table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        if path.suffix == ".jsonl":
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        elif path.suffix == ".csv":
            csv.writer(handle, lineterminator="\n").writerows(rows)
        else:
            raise ValueError(f"{path}: unknown table type {path.suffix!r}")


def build(out_dir: str | Path, plan: CorpusPlan, arguments: dict, num_workers: int = 2,
          overwrite: bool = False, resumable: bool = False, extra: dict | None = None) -> Path:
    """Synthesize ``plan``'s audio and write its tables and manifest, atomically, to
    ``out_dir``; ``arguments`` and ``extra`` are recorded in the manifest. ``resumable``: an
    interrupted run leaves its staging folder, and a new run with the same arguments keeps its
    audio."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    resume_key = {"kind": plan.kind, **arguments} if resumable else None
    with _staging(out_dir, overwrite, resume_key) as root:
        all_jobs = [job for part_jobs in plan.jobs.values() for job in part_jobs]
        durations = synthesize_jobs(all_jobs, root, num_workers, plan.kind)
        for relative, rows in plan.tables.items():
            _write_table(root / relative, rows)
        manifest = _manifest(plan.kind, arguments, plan.speakers, plan.jobs, durations,
                             time.perf_counter() - start)
        _write_manifest(root, {**manifest, **(extra or {})})
    return out_dir
