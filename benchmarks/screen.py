#!/usr/bin/env python3
"""Screen training variants on the validation split, one ``train.py`` run per variant.

    python benchmarks/screen.py --corpus-dir results/slurp_text_corpus \
        --name fp_alpha0.9 --hparams slurp_32bit.yaml -- --alpha=0.9
    python benchmarks/screen.py --corpus-dir results/slurp_text_corpus \
        --name fp_default --from-run results/benchmark/slurp_text/runs/seed1/fp_student-*

    python benchmarks/screen.py --corpus-dir results/slurp_text_corpus --study schedule

    python benchmarks/screen.py --corpus-dir results/slurp_text_corpus \
        --valid-dir results/slurp_text_klatt_valid --output benchmarks/screening_klatt.json \
        --name fp_seed1 --from-run results/benchmark/slurp_text/runs/seed1/fp_student-*

A variant is a recipe hparams file plus ``train.py`` overrides (after ``--``); ``--from-run``
scores a finished run instead (e.g. a benchmark row's, as the baseline). Each variant's exported
model is scored on the valid split (per recording, so two variants pair up for an exact McNemar
test) and its test predictions are kept but not shown: variants are chosen on valid, and only
the chosen configuration is confirmed on test (``benchmarks/run.py``), so the test split never
picks a knob. ``--valid-dir`` scores on another SLURP-layout folder's ``devel.jsonl`` instead of
the corpus' valid split: the same valid lines spoken by other voices
(``generate.py slurp-text-valid``), a larger screening set than the corpus' own.

``--study NAME`` screens every variant of a preset (:data:`STUDIES`) that the output does not
hold for this corpus generation and valid set, one after the other: ``schedule`` is the
paper's third open question at 4 bits (MCT rounds 3 and 7 with 1-epoch phases, 3 rounds of
2-epoch phases, under today's 4-bit defaults; 5 rounds of 1 epoch is ``quads4_qdw1_g3``);
``codebook`` the fp student's knobs (probe-initialised head, logit distillation), then, on
the probe-initialised head, the codebook knobs of issue 13 against the defaults before and
after quantization-aware distillation, and 2- and 8-bit runs.
``--table`` prints every row with exact McNemar p-values against ``--baselines``.

Rows go to ``--output`` (default ``benchmarks/screening.json``, merged under a lock, written as
each run finishes, so screens can run side by side and across sittings; a row replaces only the
row of its name, corpus generation and valid set): ``name``, ``hparams``
(None for a ``--from-run`` row: the table names its run folder), ``overrides``, ``seed``,
``corpus_sha256`` (the generation: another CPU's equivalent files, verified by ``run.py``, count
as the table's, see ``--results``), ``valid_accuracy``,
``valid_ci95``, ``n_valid``, ``valid_set`` / ``valid_sha256`` (the ``--valid-dir`` folder and
the SHA-256 of its ``devel.jsonl``; None for the corpus' own valid split),
``train_seconds``, ``valid_correct`` / ``test_correct`` (0/1 strings in sorted recording order),
``valid_sentence`` (the ``slurp_id`` of each valid recording, in the same order, separated by
spaces), ``vs``
({other name: exact McNemar p on valid}) for every other row of the same corpus generation and
valid set, and ``vs_by_sentence`` (the exact sign-flip test over sentences,
``stats.compare_by_cluster``: the recordings of one sentence count as one piece of evidence;
McNemar's p treats them as independent, which is optimistic when each line has several
voices). Runs live in ``--work``/<name> and resume from their last checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes" / "SLURP" / "quads"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo  # noqa: E402
import methods  # noqa: E402
import report  # noqa: E402

from speechbrain_quads.evaluation.stats import (  # noqa: E402
    clopper_pearson,
    compare,
    compare_by_cluster,
)

PROBE = ["--classifier_init=probe"]
"""The head initialisation screened best for the fp student (valid 33.9 vs 18.5 %): every
later variant builds on it."""

BEFORE_QAD = ["--kmeans_init=linear", "--recluster=True", "--distill_through_quantizer=False"]
"""The quantization defaults before quantization-aware distillation became the recipes' default;
variants spell out every knob they compare, so their meaning does not drift with the defaults."""

QAD = ["--kmeans_init=optimal", "--recluster=reassign", "--distill_through_quantizer=True"]
"""Today's default: quantization-aware distillation, near-exact k-means, trained centroids kept."""

TEACHER_IN_QUANT = ["--quant_distill_weight=1.0"]
"""The 4-bit recipes' teacher term in quantization phases (default since generation 3)."""

STUDIES = {
    "schedule": [
        ("schedule_mct3", "slurp_4bit.yaml",
         [*PROBE, *QAD, *TEACHER_IN_QUANT, "--mct_iterations=3"]),
        ("schedule_mct7", "slurp_4bit.yaml",
         [*PROBE, *QAD, *TEACHER_IN_QUANT, "--mct_iterations=7"]),
        ("schedule_mct3_2epoch", "slurp_4bit.yaml",
         [*PROBE, *QAD, *TEACHER_IN_QUANT, "--mct_iterations=3", "--distill_epochs=2",
          "--quant_epochs=2"]),
    ],
    "codebook": [
        ("fp_probe_init", "slurp_32bit.yaml", PROBE),
        ("fp_logit0.5", "slurp_32bit.yaml", ["--classifier_init=random",
                                             "--logit_distill_weight=0.5"]),
        ("quads4_probe_init", "slurp_4bit.yaml", [*PROBE, *BEFORE_QAD]),
        ("quads4_probe_ste_optimal_reassign", "slurp_4bit.yaml", [*PROBE, *QAD]),
        ("quads4_probe_ste_linear_reassign", "slurp_4bit.yaml",
         [*PROBE, "--kmeans_init=linear", "--recluster=reassign", "--distill_through_quantizer=True"]),
        ("quads4_probe_optimal_reassign", "slurp_4bit.yaml",
         [*PROBE, "--kmeans_init=optimal", "--recluster=reassign",
          "--distill_through_quantizer=False"]),
        ("quads4_probe_self1", "slurp_4bit.yaml",
         [*PROBE, *BEFORE_QAD, "--quant_self_distill_weight=1.0"]),
        ("quads4_probe_self1_qlr1e-3", "slurp_4bit.yaml",
         [*PROBE, *BEFORE_QAD, "--quant_self_distill_weight=1.0", "--quant_lr=0.001"]),
        ("quads4_probe_qdw1_optimal_reassign", "slurp_4bit.yaml",
         [*PROBE, "--kmeans_init=optimal", "--recluster=reassign",
          "--distill_through_quantizer=False", "--quant_distill_weight=1.0"]),
        ("quads4_qad_sensitive", "slurp_4bit.yaml", [*PROBE, *QAD, "--sensitivity_samples=128"]),
        ("quads_qad_mixed3.0mb", "slurp_4bit.yaml", [*PROBE, *QAD, "--target_mb=3.0"]),
        ("quads2_probe_init", "slurp_2bit.yaml", [*PROBE, *BEFORE_QAD]),
        ("quads2_qad", "slurp_2bit.yaml", [*PROBE, *QAD]),
        ("quads8_qad", "slurp_8bit.yaml", [*PROBE, *QAD]),
        ("fp_probe_logit0.5", "slurp_32bit.yaml", [*PROBE, "--logit_distill_weight=0.5"]),
    ],
}
"""Preset variant lists for ``--study``: (name, hparams file, train.py overrides)."""


BASELINES = ("fp_probe_init", "quads4_probe_init")
"""The variants ``--table`` states p-values against by default."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; everything after ``--`` is passed to train.py."""
    argv = sys.argv[1:] if argv is None else argv
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", type=Path, default=None,
                        help="a SLURP-layout corpus folder (needed unless --table)")
    parser.add_argument("--table", action="store_true",
                        help="print the screened variants as a markdown table and stop")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help="--table: the variants every row is tested against (comma-separated)")
    parser.add_argument("--name", default=None, help="the variant's name (its row key)")
    parser.add_argument("--study", choices=sorted(STUDIES), default=None,
                        help="screen every variant of this preset not yet screened")
    parser.add_argument("--hparams", default=None,
                        help="recipe hparams file in recipes/SLURP/quads/hparams/ to train "
                             "(default slurp_4bit.yaml); not with --from-run")
    parser.add_argument("--from-run", type=Path, default=None,
                        help="score this finished train.py run folder instead of training")
    parser.add_argument("--valid-dir", type=Path, default=None,
                        help="score on this SLURP-layout folder's devel.jsonl (e.g. "
                             "generate.py slurp-text-valid's) instead of the corpus' valid split")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "screening.json")
    parser.add_argument("--work", type=Path, default=REPO / "results" / "screen")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results.json",
                        help="the benchmark table whose verified corpus equivalences (the same "
                             "corpus spoken on another CPU) name a corpus' generation")
    parser.add_argument("--teacher-cache", type=Path, default=None,
                        help="teacher feature cache (default WORK/teacher_cache); the benchmark's "
                             "cache of the same corpus can be shared")
    args = parser.parse_args(own)
    if args.table:
        return args
    if args.corpus_dir is None:
        parser.error("--corpus-dir is required")
    for flag, folder in (("--corpus-dir", args.corpus_dir), ("--valid-dir", args.valid_dir),
                         ("--from-run", args.from_run)):
        if folder is not None and not folder.is_dir():
            parser.error(f"{flag} {folder}: no such folder")
    if (args.name is None) == (args.study is None):
        parser.error("give --name (one variant) or --study (a preset), not both")
    if args.from_run is not None and (args.hparams is not None or overrides):
        parser.error("--from-run scores a run trained already: it takes no --hparams or "
                     "train.py overrides")
    if args.from_run is None and args.study is None:
        args.hparams = args.hparams or "slurp_4bit.yaml"
    args.overrides = overrides
    return args


def _bits(correct: dict[str, int]) -> str:
    return "".join(str(correct[i]) for i in sorted(correct))


def screen(args: argparse.Namespace) -> dict:
    """Train (or take) the variant's run, score it on valid and test, store its row."""
    corpus = args.corpus_dir.resolve()
    run = args.from_run.resolve() if args.from_run else args.work.resolve() / args.name
    seconds = None
    cache = args.teacher_cache or args.work / "teacher_cache"
    if args.from_run is None and not (run / "summary.json").is_file():
        start = time.perf_counter()
        demo.train(f"hparams/{args.hparams}", corpus, run,
                   SimpleNamespace(seed=args.seed, train_args=[
                       f"--teacher_cache_dir={cache.resolve()}",
                       *args.overrides]))
        seconds = time.perf_counter() - start
    model, labels = methods.load_student(run)
    files_sha256, generation, valid_sha256 = screened_set(args)
    csv_valid = None
    if args.valid_dir is not None:
        csv_valid = methods.prepare_valid(args.valid_dir, args.work / f"valid-{valid_sha256[:8]}",
                                          labels)
    datasets, _ = methods.run_datasets(run, csv_valid)
    valid = methods.evaluate(model, datasets["valid"])
    sentence = sentence_of_recording(args.valid_dir or corpus)
    test = methods.recipe_correctness(run)
    right, n = sum(valid["correct"].values()), len(valid["correct"])
    row = {"name": args.name, "hparams": args.hparams, "overrides": args.overrides,
           "from_run": str(args.from_run) if args.from_run else None, "seed": args.seed,
           "corpus": str(corpus), "corpus_sha256": generation,
           **({"corpus_files_sha256": files_sha256} if files_sha256 != generation else {}),
           "valid_accuracy": valid["accuracy"], "valid_ci95": list(clopper_pearson(right, n)),
           "valid_macro_f1": valid["macro_f1"], "n_valid": n,
           "valid_sentence": " ".join(str(sentence[name]) for name in sorted(valid["correct"])),
           "valid_set": str(args.valid_dir.resolve()) if args.valid_dir else None,
           "valid_sha256": valid_sha256, "train_seconds": seconds,
           "valid_correct": _bits(valid["correct"]), "test_correct": _bits(test["correct"])}
    with report.locked(args.output):
        rows = [r for r in load(args.output)
                if (r["name"], *_set_of(r)) != (args.name, generation, valid_sha256)] + [row]
        for one in rows:
            clusters = dict(enumerate(one["valid_sentence"].split())) if "valid_sentence" in one \
                else None
            paired = [other for other in rows
                      if other is not one and _set_of(other) == _set_of(one)]
            one["vs"] = {other["name"]: compare(_map(one), _map(other)).p_value
                         for other in paired}
            one["vs_by_sentence"] = {
                other["name"]: compare_by_cluster(_map(one), _map(other), clusters)
                for other in paired if clusters is not None
                and other.get("valid_sentence") == one["valid_sentence"]}
        report.write_atomic(args.output, json.dumps(rows, indent=1) + "\n")
    print(f"[screen] {args.name}: valid {100 * row['valid_accuracy']:.2f} % "
          f"[{100 * row['valid_ci95'][0]:.1f}, {100 * row['valid_ci95'][1]:.1f}] on {n}",
          flush=True)
    return row


def sentence_of_recording(folder: Path) -> dict[str, int]:
    """{recording file name: ``slurp_id`` of its line} from ``folder/devel.jsonl``."""
    path = folder / "devel.jsonl"
    found = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            record = json.loads(line)
            try:
                found.update({r["file"]: record["slurp_id"] for r in record["recordings"]})
            except (KeyError, TypeError) as error:
                raise ValueError(f"{path}, line {number}: no slurp_id or recording file "
                                 f"({error!r})") from None
    return found


def screened_set(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """(SHA-256 of ``--corpus-dir``'s files, the corpus generation they count as, SHA-256 of
    ``--valid-dir``'s ``devel.jsonl`` or None): a row pairs only with rows of the same
    generation and valid set, and a name is one variant within them."""
    files_sha256 = report.corpus_sha256(args.corpus_dir.resolve())
    generation = report.generation(report.load(args.results), files_sha256)
    valid_sha256 = (hashlib.sha256((args.valid_dir / "devel.jsonl").read_bytes()).hexdigest()
                    if args.valid_dir is not None else None)
    return files_sha256, generation, valid_sha256


def _set_of(row: dict) -> tuple[str, str | None]:
    """A row's (corpus generation, valid set SHA-256 or None)."""
    return row["corpus_sha256"], row.get("valid_sha256")


def _map(row: dict) -> dict[int, int]:
    """A row's valid correctness as {position in sorted recording order: 0/1}."""
    return {i: int(c) for i, c in enumerate(row["valid_correct"])}


def load(path: Path) -> list[dict]:
    """The screening rows (an empty list when the file does not exist)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def markdown(rows: list[dict], baselines: tuple[str, ...] = BASELINES) -> str:
    """The screened variants as a markdown table: valid accuracy, CI and the McNemar p against
    the baselines that exist, then the by-sentence p where rows have one."""
    shown = [b for b in baselines if any(r["name"] == b for r in rows)]
    clustered = [b for b in shown if any(b in r.get("vs_by_sentence", {}) for r in rows)]
    lines = ["| variant | hparams | train.py flags | valid (%) | 95% CI (%) | "
             + " | ".join([*(f"p vs {b}" for b in shown),
                           *(f"p by sentence vs {b}" for b in clustered)]) + " |",
             "|---|---|---|---|---|" + "---|" * (len(shown) + len(clustered))]
    for row in rows:
        flags = " ".join(row["overrides"]) or ("(finished run)" if row["from_run"] else "(none)")
        recipe = row["hparams"] if row["from_run"] is None else (
            "run " + "/".join(Path(row["from_run"]).parts[-2:]))
        low, high = row["valid_ci95"]
        cells = [f"{row['vs'][b]:.2g}" if b in row["vs"] else "-" for b in shown]
        by_sentence = row.get("vs_by_sentence", {})
        cells += [f"{by_sentence[b]:.2g}" if b in by_sentence else "-" for b in clustered]
        lines.append(f"| {row['name']} | {recipe} | `{flags}` | "
                     f"{100 * row['valid_accuracy']:.2f} | {100 * low:.1f}-{100 * high:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def study(args: argparse.Namespace) -> None:
    """Screen the preset's variants that the output does not hold yet for this corpus
    generation and valid set, in order (a row of another corpus does not count)."""
    _, generation, valid_sha256 = screened_set(args)
    done = {row["name"] for row in load(args.output) if _set_of(row) == (generation, valid_sha256)}
    for name, hparams, overrides in STUDIES[args.study]:
        if name in done:
            print(f"[screen] {name}: in {args.output} for this corpus and valid set", flush=True)
            continue
        screen(argparse.Namespace(**{**vars(args), "name": name, "hparams": hparams,
                                     "overrides": overrides, "from_run": None}))


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.table:
        print(markdown(load(arguments.output), tuple(arguments.baselines.split(","))))
    elif arguments.study:
        study(arguments)
    else:
        screen(arguments)
