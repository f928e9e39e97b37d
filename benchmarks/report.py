#!/usr/bin/env python3
"""The benchmark's results store and its rendering: results.json, per-recording predictions,
paired comparisons, results.md and the size plot.

    python benchmarks/report.py [--results benchmarks/results.json]   # comparisons, results.md, plot

``results.json`` = ``{"rows": [...], "comparisons": [...], "corpora": {...}, "invocations":
[...]}``. A row is one (``method``, ``bits``, ``seed``, ``corpus``); it holds at least
:data:`ROW_KEYS` (a method that could not run has a ``skipped`` reason and nulls) and names its
per-recording correctness file, ``predictions/<corpus>/<row key>.json`` beside results.json.
Comparisons are recomputed from those files, never from the table.

    python benchmarks/report.py --screening benchmarks/screening_s2.json   # also summarise it

``screenings`` (optional) lists ``screen.py`` outputs beside results.json, each summarised in
results.md over training seeds: every variant screened with two or more seeds, its valid and
test means, and its difference from :data:`SCREENING_REFERENCES` on the seeds both have, with a
95% t-interval over them (``--screening`` adds a file to the list).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import secrets
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path

import scipy.stats

from speechbrain_quads.evaluation.stats import clopper_pearson, compare
from speechbrain_quads.training.experiment import write_text_atomic as write_atomic

ROW_KEYS = ("method", "bits", "seed", "corpus", "n_test", "n_intents", "accuracy", "ci95",
            "macro_f1", "packed_mb", "gmacs", "train_seconds")
"""Keys every row of results.json holds."""

LABELS = {
    "teacher": "Teacher: Whisper base, frozen + linear probe",
    "student_probe": "Student: pretrained Whisper tiny.en, frozen + linear probe (no training)",
    "fp_student": "Student, full precision (distilled)",
    "quads_mct": "QUADS (MCT)",
    "sequential": "Sequential: distil, then quantize",
    "quads_mct_random_init": "QUADS (MCT), random student init",
    "quads_mct_mixed": "QUADS (MCT), a width per tensor (3-8 bits) in `target_mb` (bits 3: 3.0 MiB, "
                       "4: the uniform 4-bit size)",
    "quads_mct_mixed_outliers": "QUADS (MCT), a width per tensor (3-8 bits) in 3.0 MiB with "
                                "0.05 % of each weight kept exactly (`outlier_fraction`)",
    "quads_mct_sensitive": "QUADS (MCT), first k-means weighted by squared gradients (32 recordings)",
    "kmeans_ptq": "k-means PTQ of the fp student (no retraining)",
    "kmeans_ptq_optimal": "k-means PTQ, near-exact optimal k-means",
    "kmeans_ptq_sensitive": "k-means PTQ weighted by squared gradients (128 recordings)",
    "kmeans_ptq_mixed": "the same, mixed widths (2-8 bits) in the uniform b-bit file's size",
    "kmeans_ptq_outliers": "the same, uniform width, 0.5 % of each weight kept exactly",
    "torch_dynamic_int8": "torch dynamic int8 PTQ of the fp student",
    "coremltools_skm": "coremltools SKMPalettizer (sensitive k-means PTQ)",
    "coremltools_dkm": "coremltools DKMPalettizer fine-tuning",
}
"""Human-readable name of each method, in table order."""

COMPARISONS = [
    ("student_probe:32", "fp_student:32"),
    ("fp_student:32", "quads_mct:4"), ("fp_student:32", "quads_mct:8"),
    ("quads_mct_mixed:3", "quads_mct:4"), ("quads_mct_mixed:3", "kmeans_ptq_mixed:3"),
    ("quads_mct_mixed:3", "fp_student:32"), ("quads_mct_mixed:3", "coremltools_skm:4"),
    ("quads_mct_mixed:3", "coremltools_dkm:4"),
    *[("quads_mct_mixed_outliers:3", peer) for peer in ("quads_mct:4", "quads_mct_mixed:3",
                                                        "fp_student:32", "coremltools_skm:4",
                                                        "coremltools_dkm:4")],
    *[("quads_mct_mixed:4", peer) for peer in ("quads_mct:4", "fp_student:32", "coremltools_skm:4",
                                                "coremltools_dkm:4", "kmeans_ptq_mixed:4")],
    *[("quads_mct_sensitive:4", peer) for peer in ("quads_mct:4", "fp_student:32",
                                                    "quads_mct_mixed:4", "kmeans_ptq_sensitive:4")],
    ("teacher:32", "fp_student:32"),
    *[(f"quads_mct:{b}", f"{peer}:{b}") for b in (2, 4, 8)
      for peer in ("sequential", "kmeans_ptq", "coremltools_dkm", "coremltools_skm",
                   "quads_mct_random_init", "kmeans_ptq_sensitive")],
    *[(f"kmeans_ptq:{b}", f"{peer}:{b}") for b in (2, 4, 8)
      for peer in ("kmeans_ptq_optimal", "kmeans_ptq_sensitive")],
    *[(f"kmeans_ptq_sensitive:{b}", f"{peer}:{b}") for b in (2, 4, 8)
      for peer in ("coremltools_skm", "kmeans_ptq_optimal")],
    *[(f"kmeans_ptq_mixed:{b}", f"kmeans_ptq_sensitive:{b}") for b in (2, 3, 4)],
    ("kmeans_ptq_mixed:3", "kmeans_ptq:4"), ("kmeans_ptq_mixed:3", "kmeans_ptq_sensitive:4"),
    *[(f"kmeans_ptq_outliers:{b}", f"kmeans_ptq_sensitive:{b}") for b in (2, 4)],
]
"""(A, B) pairs compared on the same recordings wherever both rows exist, as ``method:bits``."""

SCREENING_REFERENCES = ("fp", "quads4")
"""Screening variants every other variant is compared with in results.md (``screen.py`` row
names ``<variant>_s<seed>``): the fp student and the 4-bit default, by their names in the
multi-seed screens."""

ALPHA = 0.05
"""A comparison is worded as a win only when its exact McNemar p-value is below this."""


# ---------------------------------------------------------------------- the store
def row_key(row: dict) -> str:
    """File-name key of a row within its corpus: ``<method>_<bits>bit_seed<seed>``."""
    return f"{row['method']}_{row['bits']}bit_seed{row['seed']}"


def _identity(row: dict) -> tuple:
    return row["corpus"], row["method"], row["bits"], row["seed"]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (through ``.<name>.lock`` beside it) while reading,
    changing and writing it, so two benchmark processes run side by side never lose a row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


GENERATOR_MANIFEST = "mini_corpus.json"
"""The corpus generator's manifest: it records the generation's run time, so it is left out of
:func:`corpus_sha256` (its other content follows from the label tables and audio)."""


def corpus_sha256(folder: Path) -> str:
    """SHA-256 (16 hex digits) of every file under a corpus folder but the generator's manifest
    (relative paths and bytes): two generations of one corpus that differ in any sample differ
    here, and rows of different generations are never paired."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*")
                       if p.is_file() and p.relative_to(folder).as_posix() != GENERATOR_MANIFEST):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def split_sha256(folder: Path) -> dict[str, str]:
    """SHA-256 (16 hex digits) of the audio each split's SLURP table lists (``train``, ``devel``,
    ``test``): where two corpora's :func:`corpus_sha256` differ, these say which split did."""
    out = {}
    for table in sorted(folder.glob("*.jsonl")):
        digest = hashlib.sha256()
        with open(table, encoding="utf-8") as handle:
            names = sorted(rec["file"] for line in handle if line.strip()
                           for rec in json.loads(line)["recordings"])
        for name in names:
            audio = next((folder / sub / name for sub in ("slurp_real", "slurp_synth")
                          if (folder / sub / name).is_file()), None)
            digest.update(name.encode() + b"\0" + (audio.read_bytes() if audio else b""))
        out[table.stem] = digest.hexdigest()[:16]
    return out


def generation(results: dict, files_sha256: str) -> str:
    """The corpus generation a corpus' files belong to: ``files_sha256`` itself, or the
    generation it was verified equivalent to (``corpora[*]["equivalent_sha256"]``: the same
    corpus spoken on another CPU, whose float rounding differs in the last bits; see run.py)."""
    for info in results["corpora"].values():
        if files_sha256 in info.get("equivalent_sha256", {}):
            return info["corpus_sha256"]
    return files_sha256


def load(path: Path) -> dict:
    """results.json's content (an empty store when the file does not exist)."""
    if not path.is_file():
        return {"rows": [], "comparisons": [], "corpora": {}, "invocations": []}
    return json.loads(path.read_text(encoding="utf-8"))


def load_screening(folder: Path, name: str) -> list[dict]:
    """The rows of ``screen.py``'s output ``folder/name``.

    Raises:
        ValueError: the file is missing or a row lacks a key the summary reads (the message
            names the file and the row).
    """
    path = folder / name
    if not path.is_file():
        raise ValueError(f"results.json lists the screening file {name!r}, but {path} does "
                         "not exist (remove it from \"screenings\" or restore the file)")
    rows = json.loads(path.read_text(encoding="utf-8"))
    for row in rows:
        missing = [k for k in ("name", "seed", "corpus_sha256", "valid_accuracy")
                   if k not in row]
        if missing:
            raise ValueError(f"{path}: row {row.get('name', '?')!r} lacks {missing}")
    return rows


def find(results: dict, corpus: str, method: str, bits: int, seed: int) -> dict | None:
    """The stored row of (corpus, method, bits, seed), or None."""
    return next((r for r in results["rows"] if _identity(r) == (corpus, method, bits, seed)), None)


def store_row(path: Path, row: dict, correct: dict[str, int] | None) -> dict:
    """Merge ``row`` into results.json (replacing the row of the same corpus, method, bits and
    seed, keeping every other) with its CI and predictions file; returns the stored row."""
    row = dict(row)
    if correct is not None:
        right, n = sum(correct.values()), len(correct)
        if abs(right / n - row["accuracy"]) > 1e-9:
            raise ValueError(f"{row_key(row)}: accuracy {row['accuracy']} but {right}/{n} correct")
        row.update(n_test=n, ci95=list(clopper_pearson(right, n)),
                   predictions=write_predictions(path.parent, row, correct))
    with locked(path):
        results = load(path)
        results["rows"] = [r for r in results["rows"] if _identity(r) != _identity(row)] + [row]
        results["comparisons"] = comparisons(results, path.parent)
        write_atomic(path, json.dumps(results, indent=1) + "\n")
    return row


def write_predictions(folder: Path, row: dict, correct: dict[str, int]) -> str:
    """Store ``{recording id: 0/1}`` compactly; returns its path relative to ``folder``.

    ``predictions/<corpus>/recordings.json`` lists the corpus' test recordings once (sorted);
    ``<row key>.json`` holds ``{"correct": "0110..."}`` in that order. A row scored on other
    recordings than those already listed for its corpus is refused.
    """
    corpus = folder / "predictions" / row["corpus"]
    ids = sorted(correct)
    listing = corpus / "recordings.json"
    if listing.is_file():
        known = json.loads(listing.read_text(encoding="utf-8"))
        if known != ids:
            raise ValueError(f"{row_key(row)} was scored on {len(ids)} recordings that differ from "
                             f"the {len(known)} of {listing}: another test set under the same "
                             "corpus name")
    else:
        write_atomic(listing, json.dumps(ids, indent=0) + "\n")
    relative = Path("predictions") / row["corpus"] / f"{row_key(row)}.json"
    write_atomic(folder / relative, json.dumps({"correct": "".join(
        str(correct[i]) for i in ids)}) + "\n")
    return relative.as_posix()


def read_predictions(folder: Path, row: dict) -> dict[str, int] | None:
    """A row's ``{recording id: 0/1}``, or None when it has no predictions file.

    Raises:
        ValueError: the file is not under its corpus' folder, or does not hold the row's
            accuracy (a row pointing at another corpus' or run's predictions).
    """
    if not row.get("predictions") or not (folder / row["predictions"]).is_file():
        return None
    path = Path(row["predictions"])
    if path.parent != Path("predictions") / row["corpus"]:
        raise ValueError(f"{row_key(row)} of corpus {row['corpus']!r}: its predictions file "
                         f"{path} is not under predictions/{row['corpus']}/")
    ids = json.loads((folder / "predictions" / row["corpus"] / "recordings.json").read_text())
    bits = json.loads((folder / path).read_text())["correct"]
    if len(bits) != row["n_test"] or bits.count("1") != round(row["accuracy"] * row["n_test"]):
        raise ValueError(f"{row_key(row)} of corpus {row['corpus']!r}: {path} holds "
                         f"{bits.count('1')} of {len(bits)} right, the row "
                         f"{row['accuracy']:.4%} of {row['n_test']}")
    return {i: int(b) for i, b in zip(ids, bits, strict=True)}


def comparisons(results: dict, folder: Path) -> list[dict]:
    """Every :data:`COMPARISONS` pair whose two rows (same corpus, seed and corpus generation:
    ``corpus_sha256`` equal where both rows have it) have predictions; ``fp_students_differ``
    marks two post-training rows derived from two trainings of the fp student (``fp_model_sha256``),
    which compares two whole pipelines, not two methods on one student."""
    out = []
    pairs = {(r["corpus"], r["seed"]) for r in results["rows"]}
    for corpus, seed in sorted(pairs):
        for a, b in COMPARISONS:
            rows = [find(results, corpus, m, int(bits), seed)
                    for m, bits in (a.split(":"), b.split(":"))]
            correct = [read_predictions(folder, r) if r else None for r in rows]
            if None in correct or not same_generation(*rows):
                continue
            result = compare(*correct).as_dict()
            fp_students = {r["fp_model_sha256"] for r in rows if r.get("fp_model_sha256")}
            out.append({"corpus": corpus, "seed": seed, "a": a, "b": b, **result,
                        **({"fp_students_differ": True} if len(fp_students) > 1 else {})})
    return out


def same_generation(a: dict, b: dict) -> bool:
    """Both rows were measured on the same corpus files (or one predates ``corpus_sha256``)."""
    return None in (a.get("corpus_sha256"), b.get("corpus_sha256")) or (
        a["corpus_sha256"] == b["corpus_sha256"])


# ---------------------------------------------------------------------- rendering
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(row: dict) -> str:
    ci = row.get("ci95")
    return "-" if not ci else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}"


def _order(row: dict) -> tuple:
    return list(LABELS).index(row["method"]) if row["method"] in LABELS else 99, row["bits"]


def table(rows: list[dict]) -> str:
    """Markdown table of one corpus' rows (method order of :data:`LABELS`, then bits, seed)."""
    lines = ["| method | bits | seed | accuracy (%) | 95% CI (%) | macro-F1 (%) | packed size (MiB) "
             "| GMACs | train time (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (*_order(r), r["seed"])):
        name = LABELS.get(row["method"], row["method"])
        if row.get("skipped"):
            lines.append(f"| {name} | {row['bits']} | {row['seed']} | not run: {row['skipped']} "
                         "| | | | | |")
            continue
        lines.append(f"| {name} | {row['bits']} | {row['seed']} | {_pct(row['accuracy'])} | "
                     f"{_ci(row)} | {_pct(row['macro_f1'])} | {_num(row['packed_mb'], 2)} | "
                     f"{_num(row['gmacs'], 3)} | {_num(row['train_seconds'], 0)} |")
    return "\n".join(lines)


def _name(spec: str) -> str:
    method, bits = spec.split(":")
    return f"{LABELS.get(method, method)} ({bits} bits)"


def verdict(comparison: dict) -> str:
    """"A better", "B better" (only when p < :data:`ALPHA`) or "no measurable difference"."""
    if comparison["p_value"] >= ALPHA or comparison["a_only"] == comparison["b_only"]:
        return "no measurable difference"
    better = "a" if comparison["a_only"] > comparison["b_only"] else "b"
    return f"**{comparison[better]}** better"


def comparison_table(items: list[dict]) -> str:
    """Markdown table of paired comparisons with their exact McNemar p-values and verdicts."""
    lines = ["| A | B | seed | n | A acc. (%) | B acc. (%) | only A right | only B right | "
             "p (exact McNemar) | reading |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in items:
        lines.append(f"| {_name(c['a'])} | {_name(c['b'])} | {c['seed']} | {c['n']} | "
                     f"{_pct(c['accuracy_a'])} | {_pct(c['accuracy_b'])} | {c['a_only']} | "
                     f"{c['b_only']} | {c['p_value']:.3g} | {verdict(c)}"
                     f"{' (from two fp trainings)' if c.get('fp_students_differ') else ''} |")
    return "\n".join(lines)


METHOD_NOTES = [
    "Accuracy and macro-F1: test split, in %; 95% CI: exact Clopper-Pearson interval of the "
    "accuracy over the test recordings. Packed size: the exported `model.safetensors` in MiB "
    "(quantized rows: the QUADS packed format of `export_packed`, written the same way for QUADS, "
    "k-means PTQ, DKM and SKM, each rebuilding Whisper's positional table; fp student: the float "
    "export; torch dynamic int8: its `torch.save` state_dict; probes: fp32 encoder + probe "
    "parameters x 4 bytes). GMACs: one utterance of the test set's mean length, variable-length "
    "input. Train time: wall seconds (train.py process: start-up, training, test, export; the "
    "first run also fills the shared teacher cache; probes: feature extraction + fit; "
    "post-training rows: clustering/calibration, DKM: trials + final run).",
    "Comparisons: both methods scored on the same test recordings (paired by file name); the "
    "exact McNemar test is a two-sided binomial test with p = 1/2 on the recordings exactly one "
    "of the two gets right. A difference is called a win only when p < 0.05; otherwise the "
    "reading is \"no measurable difference\", whatever the accuracies. \"From two fp "
    "trainings\": both rows are post-training methods, applied to two trainings of the fp student "
    "(the same recipe and seed, trained on two machines), so the pair compares whole pipelines.",
    "k-means PTQ: `quantize_` on the fp student (QUADS' default per-tensor k-means), no "
    "training. torch dynamic int8: `quantize_dynamic(model, {nn.Linear}, torch.qint8)`.",
    "Probes: the frozen encoder's last hidden state, mean-pooled over valid frames, standardised, "
    "and a linear layer trained by full-batch Adam (500 steps, lr 0.01, weight decay 1e-3) on "
    "the training split. The pretrained-student probe is the floor a trained student must clear.",
    "coremltools SKMPalettizer: `SKMPalettizer(model, config).compress(dataloader, loss_fn)` with "
    "`n_bits` = b, per-tensor LUTs on every Linear, the squared cross-entropy gradients of "
    "`calibration_samples` single training recordings as k-means weights. coremltools 9.0's "
    "k-means has no Conv1d support, so Whisper's two input convolutions (7 % of the weights, "
    "`kmeans_fallback`) get QUADS' plain k-means at the same bits.",
    "coremltools DKMPalettizer: `n_bits` = b, `weight_threshold` 0, `kmeans_init` `opt1d` on every "
    "Linear and Conv1d, started from the fp student, Adam on cross-entropy (batches of 16) for "
    "`epochs` passes over the training set - 11, the QUADS runs' epoch budget - then `finalize()`; "
    "the encoder learning rate is chosen on the valid split from `lr_trials` (each candidate "
    "trained `trial_epochs` epochs; when that is the whole budget, the best trial is the final "
    "run), head lr 1e-3. `palett_max_mem` acts only on CUDA in coremltools 9.0 (its memory hook "
    "queries the GPU), so on a CPU the memory lever is "
    "`kmeans_max_iter` (the distance/attention maps it keeps scale with it): 3 (coremltools' "
    "default) below 8 bits, 1 from 8 bits up (`--dkm-8bit-kmeans-iters`). DKM and SKM rows run "
    "in a child process, so a run killed for memory is recorded with its reason.",
    "Sequential and random-init runs have the same epoch budget as the QUADS runs.",
]


def _dkm_settings(rows: list[dict]) -> list[str]:
    """One line per measured DKM row: epochs, steps, chosen lr and the valid-split trials."""
    lines = []
    for row in sorted((r for r in rows if r["method"] == "coremltools_dkm" and "lr_trials" in r),
                      key=lambda r: (r["bits"], r["seed"])):
        trials = ", ".join(f"{t['lr_encoder']:g}: {_pct(t['valid_accuracy'])} %"
                           for t in row["lr_trials"])
        choice = (f"chosen on valid from [{trials}] ({row['trial_epochs']} epoch(s) each)"
                  if trials else "(one candidate, no trial)")
        lines.append(f"- DKM {row['bits']} bits, seed {row['seed']}: {row['epochs']} epoch(s) "
                     f"({row['steps']} steps), `kmeans_max_iter` {row['kmeans_iters']}, encoder "
                     f"lr {row['lr_encoder']:g} {choice}")
    return lines


def _gap_over_seeds(gaps: list[float]) -> str:
    """The mean of per-seed accuracy differences in points, with its 95% Student-t interval
    over the seeds when there are two or more (the training seed as the unit of replication)."""
    mean = statistics.fmean(gaps)
    if len(gaps) < 2:
        return f"{100 * mean:+.2f}"
    half = (scipy.stats.t.ppf(0.975, len(gaps) - 1) * statistics.stdev(gaps)
            / math.sqrt(len(gaps)))
    return f"{100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}]"


def _gap_cell(by_seed: dict[int, float], reference: dict[int, float]) -> str:
    """``by_seed``'s mean difference from ``reference`` on the seeds both have, with its
    interval and those seeds; "-" when they share none."""
    shared = sorted(set(by_seed) & set(reference))
    if not shared:
        return "-"
    return (f"{_gap_over_seeds([by_seed[s] - reference[s] for s in shared])} "
            f"({', '.join(map(str, shared))})")


def _vs_uniform_quads(by_seed: dict[int, float], bits: int,
                      groups: dict[tuple[str, int], dict[int, float]]) -> str:
    """``_gap_cell`` against QUADS (MCT) at ``bits``; where that width has no rows (a
    mixed-width student in the 3-bit budget), against the nearest wider one, named in the cell
    (issue 13 asks that 3.0 MiB be at least as accurate as uniform 4 bits)."""
    if ("quads_mct", bits) in groups:
        return _gap_cell(by_seed, groups[("quads_mct", bits)])
    wider = sorted(b for (method, b) in groups if method == "quads_mct" and b > bits)
    if not wider:
        return "-"
    cell = _gap_cell(by_seed, groups[("quads_mct", wider[0])])
    return cell if cell == "-" else f"{cell}, against {wider[0]} bits"


def seed_table(rows: list[dict]) -> str | None:
    """Markdown table of every method and width measured with two or more seeds: the mean and
    standard deviation of the test accuracy over seeds, and the mean difference from the fp
    student, and from QUADS (MCT) at the same width, on the seeds both have, with its 95%
    t-interval over those seeds (a paired test on one seed sees the test recordings' noise,
    not the training seed's: this table shows the latter). None when no method has two seeds."""
    measured = [r for r in rows if r.get("accuracy") is not None and not r.get("skipped")]
    groups: dict[tuple[str, int], dict[int, float]] = {}
    for row in sorted(measured, key=_order):
        groups.setdefault((row["method"], row["bits"]), {})[row["seed"]] = row["accuracy"]
    fp = next((by_seed for (method, _), by_seed in groups.items() if method == "fp_student"), {})
    lines = []
    for (method, bits), by_seed in groups.items():
        if len(by_seed) < 2:
            continue
        accs = list(by_seed.values())
        vs_fp = _gap_cell(by_seed, fp) if method != "fp_student" else "-"
        vs_quads = (_vs_uniform_quads(by_seed, bits, groups)
                    if method not in ("fp_student", "quads_mct") else "-")
        lines.append(f"| {LABELS.get(method, method)} | {bits} | "
                     f"{', '.join(map(str, sorted(by_seed)))} | "
                     f"{', '.join(_pct(by_seed[s]) for s in sorted(by_seed))} | "
                     f"{100 * statistics.fmean(accs):.2f} | {100 * statistics.stdev(accs):.2f} | "
                     f"{vs_fp} | {vs_quads} |")
    if not lines:
        return None
    return "\n".join(["| method | bits | seeds | accuracy per seed (%) | mean (%) | "
                      "std over seeds (points) | mean difference from fp on the same seeds "
                      "[95% t-interval over them] (points; seeds) | the same from QUADS (MCT) "
                      "at these bits (or the next wider) |",
                      "|---|---|---|---|---|---|---|---|", *lines])


def _screened_variants(rows: list[dict]) -> dict[tuple, dict[int, dict]]:
    """{(variant, corpus generation, valid set): {seed: row}} for the rows named
    ``<variant>_s<seed>`` (rows of one generation and valid set pair up; others never do)."""
    groups: dict[tuple, dict[int, dict]] = {}
    for row in rows:
        variant, _, seed = row["name"].rpartition("_s")
        if variant and seed.isdigit() and int(seed) == row["seed"]:
            key = (variant, row["corpus_sha256"], row.get("valid_sha256"))
            groups.setdefault(key, {})[row["seed"]] = row
    return groups


def _test_accuracy(row: dict) -> float | None:
    """A screening row's test accuracy from its correctness string (None without one)."""
    correct = row.get("test_correct")
    return correct.count("1") / len(correct) if correct else None


def _screening_gap(rows: dict[int, dict], reference: dict[int, dict], split: str) -> str:
    """``rows``' mean difference from ``reference`` on ``split`` ("valid" or "test") over the
    seeds both have, in points with its 95% t-interval; the seeds are named when they are not
    all of ``rows``'; "-" when no seed is shared."""
    accuracy = (lambda r: r["valid_accuracy"]) if split == "valid" else _test_accuracy
    shared = [s for s in sorted(set(rows) & set(reference))
              if None not in (accuracy(rows[s]), accuracy(reference[s]))]
    if not shared:
        return "-"
    cell = _gap_over_seeds([accuracy(rows[s]) - accuracy(reference[s]) for s in shared])
    return cell if shared == sorted(rows) else f"{cell} (seeds {', '.join(map(str, shared))})"


def screening_table(rows: list[dict]) -> str | None:
    """Markdown table of every variant of one ``screen.py`` output screened with two or more
    seeds: its seeds, valid and test means, and its mean difference from each of
    :data:`SCREENING_REFERENCES` (same corpus generation and valid set) on valid and on test,
    with 95% t-intervals over the shared seeds. None when no variant has two seeds."""
    groups = {key: by_seed for key, by_seed in _screened_variants(rows).items()
              if len(by_seed) >= 2}
    if not groups:
        return None
    header = ["variant", "recipe and train.py flags", "corpus generation / valid set",
              "seeds", "valid mean (%)", "test mean (%)"]
    for reference in SCREENING_REFERENCES:
        header += [f"valid: minus {reference}", f"test: minus {reference}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (variant, generation, valid_set), by_seed in groups.items():
        first = by_seed[min(by_seed)]
        flags = " ".join(first.get("overrides") or [])
        recipe = (f"{first['hparams']} `{flags or '(none)'}`" if first.get("hparams")
                  else "finished runs, scored again (`--from-run`)")
        valid = Path(first["valid_set"]).name if first.get("valid_set") else "its own valid split"
        tests = [_test_accuracy(r) for r in by_seed.values()]
        cells = [variant, recipe, f"`{generation}` / {valid}",
                 ", ".join(map(str, sorted(by_seed))),
                 f"{100 * statistics.fmean(r['valid_accuracy'] for r in by_seed.values()):.2f}",
                 "-" if None in tests else f"{100 * statistics.fmean(tests):.2f}"]
        for reference in SCREENING_REFERENCES:
            other = groups.get((reference, generation, valid_set), {})
            cells += (["-", "-"] if reference == variant else
                      [_screening_gap(by_seed, other, split) for split in ("valid", "test")])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _screening_sections(results: dict, folder: Path) -> list[str]:
    """results.md's summary of each screening file that results.json lists."""
    text = []
    for name in results.get("screenings", []):
        summary = screening_table(load_screening(folder, name))
        if summary:
            text += [f"## Screening runs over training seeds: `{name}`", "",
                     "Written from `screen.py`'s rows: valid and test accuracy of each variant "
                     "trained with two or more seeds; differences in accuracy points, the mean "
                     "over the seeds both variants have, with its 95% Student-t interval over "
                     "those seeds (paired by seed).", "", summary, ""]
    return text


def markdown(results: dict, folder: Path | None = None) -> str:
    """results.md: one section per corpus (table, comparisons, settings, invocations), then a
    summary of each screening file listed (read from ``folder``, results.json's own)."""
    text = ["# Benchmark: QUADS against other ways to compress the student", "",
            "Written by `python benchmarks/report.py` from `results.json` (rows are added by "
            "`python benchmarks/run.py`, one at a time as they finish).", ""]
    for corpus in sorted({r["corpus"] for r in results["rows"]}):
        rows = [r for r in results["rows"] if r["corpus"] == corpus]
        info = results["corpora"].get(corpus, {})
        text += [f"## Corpus `{corpus}`", "", info.get("description", ""), ""]
        text += ["| invocation | machine | minutes |", "|---|---|---|"]
        text += [f"| `{i['command']}` | {i['machine']} | {i['minutes']:.1f} |"
                 for i in results["invocations"] if i["corpus"] == corpus]
        text += ["", table(rows), ""]
        seeds = seed_table(rows)
        if seeds:
            text += ["### Across training seeds", "", seeds, ""]
        items = [c for c in results["comparisons"] if c["corpus"] == corpus]
        text += ["### Paired comparisons", ""]
        text += [comparison_table(items) if items else
                 "(no pair with per-recording predictions on both sides)", ""]
        dkm = _dkm_settings(rows)
        if dkm:
            text += ["### DKM settings", "", *dkm, ""]
        notes = [f"- {LABELS.get(r['method'], r['method'])}, {r['bits']} bits, seed {r['seed']}: "
                 f"{'; '.join(r[k] for k in ('note', 'legacy') if r.get(k))}"
                 for r in sorted(rows, key=lambda r: (*_order(r), r["seed"]))
                 if r.get("note") or r.get("legacy")]
        if notes:
            text += ["### Row notes", "", *notes, ""]
    text += _screening_sections(results, folder) if folder else []
    text += ["## What each row is", "", *[f"- {note}" for note in METHOD_NOTES], "",
             "![accuracy vs size](accuracy_vs_size.png)", ""]
    return "\n".join(text)


def plot(results: dict, path: Path) -> None:
    """Accuracy (%) against packed size (MiB, log scale) with 95% CIs, one panel per corpus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    corpora = sorted({r["corpus"] for r in results["rows"]}) or ["(none)"]
    figure, panels = plt.subplots(1, len(corpora), figsize=(8 * len(corpora), 5.5), squeeze=False)
    markers = "o^sDvP*Xh<>"
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for axes, corpus in zip(panels[0], corpora, strict=True):
        measured = [r for r in results["rows"] if r["corpus"] == corpus and not r.get("skipped")
                    and r.get("packed_mb")]
        for index, method in enumerate(m for m in LABELS if any(r["method"] == m for r in measured)):
            points = sorted((r for r in measured if r["method"] == method),
                            key=lambda r: (r["packed_mb"], r["seed"]))
            sizes = [r["packed_mb"] for r in points]
            accs = [100 * r["accuracy"] for r in points]
            errors = [[100 * (r["accuracy"] - r["ci95"][0]) for r in points],
                      [100 * (r["ci95"][1] - r["accuracy"]) for r in points]]
            axes.errorbar(sizes, accs, yerr=errors, marker=markers[index % len(markers)],
                          linestyle="-" if len(points) > 1 else "none", capsize=3,
                          label=LABELS[method])
            for row in points:
                axes.annotate(f"{row['bits']}b", (row["packed_mb"], 100 * row["accuracy"]),
                              textcoords="offset points", xytext=(4, 4), fontsize=8)
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(plain)
        axes.xaxis.set_minor_formatter(plain)
        axes.set_xlabel("packed model size (MiB, log scale)")
        axes.set_ylabel("test intent accuracy (%), 95% CI")
        axes.set_title(f"corpus {corpus}")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.png")
    try:
        figure.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(figure)


def render(results_path: Path) -> None:
    """Rewrite results.md and accuracy_vs_size.png beside ``results_path`` from its content."""
    results = load(results_path)
    write_atomic(results_path.with_name("results.md"), markdown(results, results_path.parent))
    plot(results, results_path.with_name("accuracy_vs_size.png"))


def recompute(results_path: Path, screenings: Sequence[Path] = ()) -> None:
    """Recompute results.json's ``comparisons`` from the stored predictions and add
    ``screenings`` (paths of screening files beside it) to its list (under the lock)."""
    with locked(results_path):
        results = load(results_path)
        results["comparisons"] = comparisons(results, results_path.parent)
        for path in screenings:
            if path.resolve().parent != results_path.resolve().parent:
                raise ValueError(f"--screening {path}: the file must lie beside "
                                 f"{results_path} (results.json lists it by name)")
            load_screening(results_path.parent, path.name)
            if path.name not in results.setdefault("screenings", []):
                results["screenings"].append(path.name)
        write_atomic(results_path, json.dumps(results, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Recompute the paired comparisons, re-render "
                                                 "results.md and the plot.")
    parser.add_argument("--results", type=Path,
                        default=Path(__file__).resolve().parent / "results.json")
    parser.add_argument("--screening", type=Path, action="append", default=[],
                        help="a screen.py output beside results.json to summarise in "
                             "results.md (kept in results.json's list; repeatable)")
    args = parser.parse_args(argv)
    try:
        recompute(args.results, args.screening)
        render(args.results)
    except ValueError as error:
        parser.exit(2, f"report.py: {error}\n")


if __name__ == "__main__":
    main()
