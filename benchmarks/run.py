#!/usr/bin/env python3
"""Compare QUADS with the other ways to shrink the student, row by row, across sittings.

    python benchmarks/run.py --corpus slurp_text --corpus-dir /data/slurp_text   # resumable
    python benchmarks/run.py --corpus mini --methods fp_student,quads_mct:4,kmeans_ptq:2,4,8
    python benchmarks/run.py --quick --output /tmp/bench                          # CI size

Same data, same student (Whisper tiny.en), same teacher (Whisper base) for every row; methods
(``--methods``, ``method`` or ``method:bits,bits``; default all, at their default bit widths):

- ``fp_student``: the full-precision distilled student (``hparams/slurp_32bit.yaml``).
- ``teacher`` / ``student_probe``: the frozen teacher / the pretrained tiny.en student with no
  training, each with a linear probe on pooled features.
- ``quads_mct``: QUADS (``hparams/slurp_<b>bit.yaml``); ``sequential``: all distillation, then all
  quantization; ``quads_mct_random_init``: QUADS from a randomly initialised student;
  ``quads_mct_mixed:3`` / ``:4``: QUADS with a width per tensor (3-8 bits) in 3.0 MiB / in the
  uniform 4-bit file's size (``target_mb``); ``quads_mct_sensitive:4``: QUADS whose first
  k-means is weighted by squared gradients over 32 training recordings
  (``sensitivity_samples``, as ``quads_mct_mixed`` does, at one width);
  ``quads_mct_mixed_outliers:3``: ``quads_mct_mixed:3`` with 0.05 % of each weight kept exactly
  inside the same 3.0 MiB (``outlier_fraction``).
- ``kmeans_ptq`` (the engine's default ``linear`` k-means), ``kmeans_ptq_optimal`` (the
  near-exact ``optimal`` k-means), ``kmeans_ptq_sensitive`` (``optimal`` k-means weighted by
  squared gradients over the SKM calibration recordings), ``kmeans_ptq_mixed`` (the same, a
  width per tensor, at most the size of the uniform ``bits``-bit file), ``kmeans_ptq_outliers``
  (sensitive k-means with 0.5 % of each weight kept exactly), ``torch_dynamic_int8``,
  ``coremltools_skm``, ``coremltools_dkm``: applied to the fp student (``benchmarks/methods.py``).

Every finished row is merged into ``--output``/results.json at once (atomic write under a lock:
two invocations with other ``--methods`` or ``--seeds`` may run side by side, one thread each
with ``OMP_NUM_THREADS=1``; rows of other methods, seeds and corpora are kept). A row records the
SHA-256 of the corpus files (``corpus_sha256``; rows of two generations of a corpus are never
paired; the same corpus spoken on another CPU differs in the last bits of some samples, and is
accepted as the table's generation once its frozen-encoder probes re-measure identically, see
``Benchmark._verify_equivalence``) and names its per-recording correctness in
``predictions/<corpus>/``; results.md and
the plot are re-rendered (``report.py``). A row records ``recipe_sha256``, the SHA-256 of what
its recipe hparams file says, comments and layout aside (for the rows derived from the fp
student, the fp student's file); a row already in results.json under today's file is skipped
(``--redo`` measures it again), one measured under another version of its file is measured
again and replaced; a trained row also records its ``overrides`` and ``run_sha256`` (file and
overrides), so a method whose overrides change is measured again too. Runs live in
``--work``/runs/seed<seed>/<name>-<run_sha256[:8]> (train.py resumes from its last checkpoint;
a changed recipe file or override starts a new folder, never re-using a run of other defaults)
and cached
in-process rows are re-used, so the table can be built over several sittings.
``--quick`` is CI-sized (mini corpus of 4 intents, one
MCT round, 2 bits) and writes into ``--work``/report unless ``--output`` is given.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import json
import multiprocessing
import os
import platform
import resource
import shlex
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "SLURP" / "quads"
sys.path.insert(0, str(RECIPE))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo  # noqa: E402
import methods  # noqa: E402
import report  # noqa: E402
import torch  # noqa: E402
from hyperpyyaml import load_hyperpyyaml  # noqa: E402
from plan import (  # noqa: E402
    CORPUS_SEED,
    DKM,
    FP_HPARAMS,
    MINI,
    OUTLIER_FRACTION,
    SKM_SAMPLES,
    TRAIN_ARGS,
    TRAINED,
    parse_methods,
    recipe_of,
    recipe_sha256,
    run_sha256,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` changes the defaults of the others."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=("mini", "slurp_text"), default="mini",
                        help="corpus name in results.json: mini (spoken here unless --corpus-dir) "
                             "or slurp_text (needs --corpus-dir)")
    parser.add_argument("--corpus-dir", type=Path, default=None,
                        help="an existing SLURP-layout corpus folder")
    parser.add_argument("--quick", action="store_true",
                        help="CI size: mini corpus of 4 intents and 24 training files, 1 MCT "
                             "round, 2 bits, DKM 1 epoch, SKM 8 calibration recordings")
    parser.add_argument("--methods", default=None,
                        help="rows to measure, e.g. fp_student,quads_mct:4,kmeans_ptq:2,4,8 "
                             "(default: every method at its default bit widths)")
    parser.add_argument("--seeds", default="1", help="training seeds, e.g. 1,2")
    parser.add_argument("--output", type=Path, default=None,
                        help="results.json/.md, plot and predictions/ (default benchmarks/; "
                             "--quick: WORK/report)")
    parser.add_argument("--work", type=Path, default=None,
                        help="runs, corpus and cached rows (default results/benchmark/<corpus>, "
                             "--quick: results/benchmark_quick)")
    parser.add_argument("--redo", action="store_true",
                        help="measure the selected rows again even if results.json has them")
    parser.add_argument("--dkm-epochs", type=int, default=None,
                        help="DKM training epochs (default 11, QUADS' budget; quick 1)")
    parser.add_argument("--dkm-lrs", default=None,
                        help="DKM encoder learning rates tried on valid (default 1e-5,5e-5,2e-4)")
    parser.add_argument("--dkm-trial-epochs", type=int, default=None,
                        help="epochs of each DKM learning-rate trial (default 1)")
    parser.add_argument("--dkm-kmeans-iters", type=int, default=3,
                        help="DKM's kmeans_max_iter below 8 bits (coremltools' default 3)")
    parser.add_argument("--dkm-8bit-kmeans-iters", type=int, default=1,
                        help="kmeans_max_iter from 8 bits up: its maps scale with it (memory)")
    parser.add_argument("--skm-samples", type=int, default=None,
                        help="calibration recordings of SKMPalettizer and kmeans_ptq_sensitive "
                             "(default 128; quick 8)")
    args = parser.parse_args(argv)
    if args.corpus == "slurp_text" and args.corpus_dir is None:
        parser.error("--corpus slurp_text needs --corpus-dir")
    if args.corpus_dir is not None and not args.corpus_dir.is_dir():
        parser.error(f"--corpus-dir {args.corpus_dir}: no such folder")
    args.size = "quick" if args.quick else "full"
    args.label = args.corpus + ("_quick" if args.quick else "")
    args.selected = parse_methods(args.methods, args.size)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    dkm = DKM[args.size]
    args.dkm_epochs = dkm["epochs"] if args.dkm_epochs is None else args.dkm_epochs
    args.dkm_trial_epochs = (dkm["trial_epochs"] if args.dkm_trial_epochs is None
                             else args.dkm_trial_epochs)
    args.dkm_lrs = [float(x) for x in args.dkm_lrs.split(",")] if args.dkm_lrs else dkm["lrs"]
    args.skm_samples = args.skm_samples or SKM_SAMPLES[args.size]
    work = REPO / "results" / ("benchmark_quick" if args.quick else f"benchmark/{args.corpus}")
    args.work = (args.work or work).resolve()
    default_output = args.work / "report" if args.quick else REPO / "benchmarks"
    args.output = (args.output or default_output).resolve()
    return args


PROBES = ("teacher", "student_probe")
"""The rows whose re-measurement tells whether two corpus files are one corpus (no training)."""


def _run_id(run: Path) -> str:
    """A run folder and the SHA-256 of its exported model (16 hex digits): cached rows of a
    retrained fp student (same folder, other weights) are not re-used, and rows record the fp
    student they were derived from (``fp_model_sha256`` = its row's ``model_sha256``)."""
    config = json.loads((run / "model" / "config.json").read_text())
    return f"{run}@{config['model_sha256'][:16]}"


def in_child(function, **kwargs) -> dict:
    """``function(**kwargs)`` in a fresh process. A child killed from outside (the kernel's
    out-of-memory killer sends SIGKILL) raises ``ChildProcessError`` with the largest peak
    memory any child of this benchmark reached (GB), so the skipped row says why."""
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(function, **kwargs).result()
    except BrokenProcessPool as error:
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
        total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        raise ChildProcessError(
            f"child process killed before it finished (as the out-of-memory killer does); "
            f"largest child peak memory {peak_gb:.1f} GB of {total_gb:.1f} GB") from error


class Benchmark:
    """The work folder of one corpus and schedule, and the rows measured in it."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = args.work
        self.results = args.output / "results.json"
        self.train_args = [*TRAIN_ARGS[args.size],
                           f"--teacher_cache_dir={self.work / 'teacher_cache'}"]
        self.work.mkdir(parents=True, exist_ok=True)
        self._check_config()
        self.corpus = (args.corpus_dir.resolve() if args.corpus_dir else demo.make_corpus(
            self.work / "corpus", SimpleNamespace(seed=CORPUS_SEED, **MINI[args.size])))
        self.files_sha256 = report.corpus_sha256(self.corpus)
        self.corpus_sha256 = self.files_sha256  # the generation rows are paired by
        self.unverified: str | None = None  # a generation these files may be equivalent to
        self._check_corpus()
        self.fresh: set[int] = set()  # seeds whose fp student was trained in this invocation
        self.measured: list[str] = []

    def _check_config(self) -> None:
        """Refuse a work folder that holds runs of another corpus or schedule (its finished runs
        would be re-used as if they were trained on this one)."""
        corpus_dir = str(self.args.corpus_dir.resolve()) if self.args.corpus_dir else None
        config = {"corpus": self.args.label, "corpus_dir": corpus_dir,
                  "mini": MINI[self.args.size] if corpus_dir is None else None,
                  "train_args": self.train_args}
        path = self.work / "benchmark_config.json"
        if path.is_file():
            found = json.loads(path.read_text())
            if found != config:
                raise SystemExit(f"{path}: this work folder was made with {found}, not {config}; "
                                 "use another --work")
        report.write_atomic(path, json.dumps(config, indent=1) + "\n")

    def _check_corpus(self) -> None:
        """Refuse to add rows to a table whose rows of this corpus name were measured on other
        corpus files (a corpus spoken again differently): they could never be paired. Files
        already verified equivalent to the table's generation count as it; files that may be
        the same corpus spoken on another CPU are checked by :meth:`_verify_equivalence`
        before any row is stored."""
        results = report.load(self.results)
        self.corpus_sha256 = report.generation(results, self.files_sha256)
        others = sorted({row["corpus_sha256"] for row in results["rows"]
                         if row["corpus"] == self.args.label
                         and row.get("corpus_sha256") not in (None, self.corpus_sha256)})
        if len(others) == 1 and self._probe_seed(results, others[0]) is not None:
            self.unverified = others[0]
            print(f"[benchmark] {self.corpus} has SHA-256 {self.files_sha256}, the table's "
                  f"{self.args.label!r} rows {others[0]}: checking that the two are one corpus "
                  "(frozen-encoder probes) before storing any row", flush=True)
        elif others:
            raise SystemExit(
                f"{self.results}: its {self.args.label!r} rows were measured on corpus files "
                f"with SHA-256 {', '.join(others)}, but {self.corpus} has "
                f"{self.files_sha256}, and the table holds no teacher and student_probe rows "
                "of one seed to check the two are one corpus with. Speak the corpus again with "
                "the documented command or move those rows to another corpus name.")

    def _probe_seed(self, results: dict, generation: str) -> int | None:
        """The lowest seed whose frozen-encoder probe rows of ``generation`` have predictions."""
        seeds = sorted({row["seed"] for row in results["rows"]})
        return next((seed for seed in seeds if all(
            (row := report.find(results, self.args.label, method, 32, seed)) is not None
            and row.get("corpus_sha256") == generation
            and report.read_predictions(self.args.output, row) is not None
            for method in PROBES)), None)

    def _verify_equivalence(self) -> None:
        """Accept corpus files whose SHA-256 differs from the table's generation as that
        generation, or refuse them. Synthesis is bit-exact on one machine, but float rounding
        (ONNX Runtime's and libm's kernels) differs between CPUs in the last bits of a sample.
        The check: the linear probes of the frozen teacher and of the pretrained student
        (:data:`PROBES`: no trained encoder, so no training noise) re-measured on these files
        must get every test recording right or wrong exactly as their stored rows do. Accepted
        files are recorded in results.json (``corpora[label]["equivalent_sha256"]``, with the
        evidence, the machine and per-split hashes), and rows measured on them keep the
        generation's ``corpus_sha256`` (so they pair with the others) and name the files in
        ``corpus_files_sha256``."""
        results = report.load(self.results)
        seed = self._probe_seed(results, self.unverified)
        differing = {}
        for method in PROBES:
            stored = report.read_predictions(self.args.output, report.find(
                results, self.args.label, method, 32, seed))
            _, correct = self.derived_row(method, 32, seed)
            differing[method] = sum(correct.get(i) != c for i, c in stored.items()) + len(
                set(correct) - set(stored))
        if any(differing.values()):
            raise SystemExit(
                f"{self.corpus} (SHA-256 {self.files_sha256}) is not the corpus of the table's "
                f"{self.args.label!r} rows ({self.unverified}): re-measured on it, the probes of "
                f"seed {seed} differ from their stored rows on {differing} test recordings. "
                "Speak the corpus again with the documented command or move those rows to "
                "another corpus name.")
        evidence = {
            "generation": self.unverified, "split_sha256": report.split_sha256(self.corpus),
            "evidence": f"the {' and '.join(PROBES)} rows of seed {seed}, re-measured on "
                        f"these files, get each of the {len(stored)} test recordings right or "
                        "wrong as stored",
            "machine": machine(), "date": datetime.date.today().isoformat()}
        with report.locked(self.results):
            results = report.load(self.results)
            info = results["corpora"].setdefault(self.args.label,
                                                 {"corpus_sha256": self.unverified})
            info.setdefault("equivalent_sha256", {})[self.files_sha256] = evidence
            report.write_atomic(self.results, json.dumps(results, indent=1) + "\n")
        print(f"[benchmark] {self.files_sha256} verified as generation {self.unverified}: "
              f"{evidence['evidence']}", flush=True)
        self.corpus_sha256, self.unverified = self.unverified, None

    # ------------------------------------------------------------------ trained runs
    def train(self, seed: int, name: str, hparams: str, extra: list[str]) -> dict:
        """Run (or re-use) ``train.py hparams extra``; returns its summary.json plus
        ``train_seconds`` (wall time of the train.py process, None if run outside this script),
        ``resumed`` and ``folder``. One invocation trains a run folder at a time: another that
        needs the same run (e.g. the fp student behind two invocations' rows) waits for it."""
        output = self.work / "runs" / f"seed{seed}" / f"{name}-{run_sha256(hparams, extra)[:8]}"
        timing = output / "benchmark_timing.json"
        with report.locked(output):
            if not (output / "summary.json").is_file():
                resumed = output.exists()
                start = time.perf_counter()
                demo.train(hparams, self.corpus, output,
                           SimpleNamespace(seed=seed, train_args=[*self.train_args, *extra]))
                report.write_atomic(timing, json.dumps(
                    {"train_seconds": time.perf_counter() - start, "resumed": resumed}) + "\n")
                if name == "fp_student":
                    self.fresh.add(seed)
        summary = json.loads((output / "summary.json").read_text())
        extra_info = json.loads(timing.read_text()) if timing.is_file() else {
            "train_seconds": None, "resumed": None}
        return {**summary, **extra_info, "folder": str(output)}

    def fp(self, seed: int) -> dict:
        """The fp student run of ``seed``; a newly trained one replaces its stored row at once,
        so the rows derived from it and its own row always describe the same run."""
        run = self.train(seed, "fp_student", FP_HPARAMS, [])
        if seed in self.fresh and self.unverified is None:
            self.fresh.discard(seed)
            self.store(self.trained_row("fp_student", 32, seed))
        return run

    def trained_row(self, method: str, bits: int, seed: int) -> tuple[dict, dict]:
        """A train.py run's row and its per-recording correctness."""
        hparams, overrides = recipe_of(method, bits)
        name = method if method == "fp_student" else f"{method}_{bits}bit"
        run = self.train(seed, name, hparams, overrides)
        folder = Path(run["folder"])
        scores = methods.recipe_correctness(folder)
        metrics, compute = run["metrics"], run["compute"]
        row = {**self._base(method, bits, seed, folder), "accuracy": metrics["intent_accuracy"],
               "macro_f1": metrics["macro_f1"], "packed_mb": run["size"]["packed_mb"],
               "gmacs": compute["student_gmacs_real_length"],
               "train_seconds": run["train_seconds"], "gmacs_30s": compute["student_gmacs_30s"],
               "resumed": run["resumed"], "model_sha256": _run_id(folder).split("@")[1],
               "recipe_sha256": recipe_sha256(hparams), "overrides": overrides,
               "run_sha256": run_sha256(hparams, overrides),
               "command": " ".join(
                   ["python train.py", hparams, f"--seed={seed}", *overrides,
                    *TRAIN_ARGS[self.args.size]])}
        if method == "fp_student":
            row["reevaluated_accuracy"] = self.cached(seed, "fp_student_reevaluated", {
                "run": _run_id(folder)}, lambda: {"accuracy": methods.evaluate(
                    methods.load_student(folder)[0], methods.run_datasets(folder)[0]["test"])
                    ["accuracy"]})["accuracy"]
        return row, scores["correct"]

    def _base(self, method: str, bits: int, seed: int, run: Path) -> dict:
        """Row keys every row starts with (``ci95`` and ``n_test`` are set when stored)."""
        labels = json.loads((run / "model" / "config.json").read_text())["labels"]
        files = ({} if self.files_sha256 == self.corpus_sha256
                 else {"corpus_files_sha256": self.files_sha256})
        return {"method": method, "bits": bits, "seed": seed, "corpus": self.args.label,
                "n_test": None, "n_intents": len(labels), "ci95": None,
                "corpus_sha256": self.corpus_sha256, **files}

    # ------------------------------------------------------------------ cached in-process rows
    def cached(self, seed: int, key: str, settings: dict, compute) -> dict:
        """``compute()``'s dict, kept in rows/seed<seed>/<key>.json while ``settings`` match."""
        path = self.work / "rows" / f"seed{seed}" / f"{key}.json"
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("settings") == settings:
                return stored
        row = {**compute(), "settings": settings}
        report.write_atomic(path, json.dumps(row, indent=1) + "\n")
        return row

    def derived_row(self, method: str, bits: int, seed: int) -> tuple[dict, dict | None]:
        """A row computed in-process from the fp student (or a skipped row with its reason)."""
        fp = self.fp(seed)
        folder, compute = Path(fp["folder"]), fp["compute"]
        base = {**self._base(method, bits, seed, folder), "accuracy": None, "macro_f1": None,
                "packed_mb": None, "gmacs": compute["student_gmacs_real_length"],
                "train_seconds": None, "gmacs_30s": compute["student_gmacs_30s"],
                "fp_model_sha256": _run_id(folder).split("@")[1],
                "recipe_sha256": recipe_sha256(FP_HPARAMS)}
        key, run = f"{method}_{bits}bit", _run_id(folder)
        exports = self.work / "exports" / f"seed{seed}" / key
        if method in ("teacher", "student_probe"):
            # the corpus files too: a frozen encoder's probe depends on nothing else, and the
            # check of a corpus spoken again (_verify_equivalence) must measure it on these
            settings = {"run": run, "seed": seed, "corpus_files_sha256": self.files_sha256}
            result = self.cached(seed, key, settings, functools.partial(
                self._probe, method, folder, seed))
            base["note"] = "size: fp32 encoder + probe parameters x 4 bytes"
            if method == "teacher":
                base.update(gmacs=compute["teacher_gmacs_real_length"],
                            gmacs_30s=compute["teacher_gmacs_30s"])
            result = {**result, "packed_mb": result.pop("size_mb")}
        elif method in ("kmeans_ptq", "kmeans_ptq_optimal"):
            init = "optimal" if method == "kmeans_ptq_optimal" else "linear"
            result = self.cached(seed, key, {"run": run, "seed": seed, "init": init},
                                 functools.partial(methods.kmeans_ptq, folder, bits, exports, seed,
                                                   init))
            base["kmeans_init"] = init
        elif method in ("kmeans_ptq_sensitive", "kmeans_ptq_mixed"):
            settings = {"run": run, "seed": seed, "samples": self.args.skm_samples}
            result = self.cached(seed, key, settings, functools.partial(
                methods.kmeans_ptq_sensitive, folder, bits, exports, self.args.skm_samples, seed,
                mixed=method == "kmeans_ptq_mixed"))
        elif method == "kmeans_ptq_outliers":
            settings = {"run": run, "seed": seed, "samples": self.args.skm_samples,
                        "outlier_fraction": OUTLIER_FRACTION}
            result = self.cached(seed, key, settings, functools.partial(
                methods.kmeans_ptq_sensitive, folder, bits, exports, self.args.skm_samples, seed,
                OUTLIER_FRACTION))
            base["outlier_fraction"] = OUTLIER_FRACTION
        elif method == "torch_dynamic_int8":
            result = self.cached(seed, key, {"run": run}, functools.partial(
                methods.dynamic_int8, folder))
            base["note"] = "GMACs: same multiply-accumulates as the fp student, in int8"
        else:
            try:
                result = self._palettize(method, bits, seed, folder, exports)
            except Exception as error:  # a third-party failure is a result to report
                traceback.print_exc()
                name = "DKMPalettizer" if method == "coremltools_dkm" else "SKMPalettizer"
                return {**base, "skipped": f"{name} failed: {type(error).__name__}: {error}"}, None
        result = {k: v for k, v in result.items() if k != "settings"}
        correct = result.pop("correct")
        return {**base, **result}, correct

    def _palettize(self, method: str, bits: int, seed: int, folder: Path, exports: Path) -> dict:
        """coremltools SKM or DKM, cached, in a child process."""
        args = self.args
        if method == "coremltools_skm":
            settings = {"run": _run_id(folder), "seed": seed, "samples": args.skm_samples}
            return self.cached(seed, f"{method}_{bits}bit", settings, functools.partial(
                in_child, methods.skm_palettize, fp_run=folder, bits=bits, out_dir=exports,
                samples=args.skm_samples, seed=seed))
        iters = args.dkm_8bit_kmeans_iters if bits >= 8 else args.dkm_kmeans_iters
        settings = {"run": _run_id(folder), "seed": seed, "epochs": args.dkm_epochs,
                    "trial_epochs": args.dkm_trial_epochs, "lrs": args.dkm_lrs, "lr_head": 1e-3,
                    "batch_size": 16, "kmeans_iters": iters}
        print(f"[benchmark] coremltools DKMPalettizer, {bits} bits, seed {seed}: {settings}",
              flush=True)
        model, _ = methods.load_student(folder)
        estimate = methods.dkm_attention_gb(model, bits, iters)
        result = self.cached(seed, f"{method}_{bits}bit", settings, functools.partial(
            in_child, methods.dkm_with_lr_search, fp_run=folder, bits=bits, out_dir=exports,
            epochs=args.dkm_epochs, trial_epochs=args.dkm_trial_epochs, lrs=args.dkm_lrs,
            lr_head=1e-3, batch_size=16, kmeans_iters=iters, seed=seed,
            checkpoints=self.work / "dkm_checkpoints" / f"seed{seed}" / f"{method}_{bits}bit"))
        return {**result, "kmeans_iters": iters, "attention_gb_estimate": round(estimate, 2)}

    def _probe(self, method: str, folder: Path, seed: int) -> dict:
        """Linear probe of the frozen teacher or pretrained student (timed)."""
        with open(RECIPE / FP_HPARAMS, encoding="utf-8") as handle:
            hparams = load_hyperpyyaml(handle, {"data_folder": str(self.corpus),
                                                "output_folder": str(folder)})
        datasets, labels = methods.run_datasets(folder)
        encoder = hparams["teacher" if method == "teacher" else "student"].eval()
        print(f"[benchmark] {method}: linear probe of the frozen encoder", flush=True)
        start = time.perf_counter()
        result = methods.probe(encoder, datasets, len(labels), seed=seed)
        return {**result, "train_seconds": time.perf_counter() - start}

    # ------------------------------------------------------------------ all rows
    def finished(self, method: str, bits: int, seed: int) -> bool:
        """The row is in results.json under today's recipe file, measured with its predictions
        or skipped with a reason."""
        row = report.find(report.load(self.results), self.args.label, method, bits, seed)
        hparams, overrides = recipe_of(method, bits)
        if row is None or self.args.redo or row.get("recipe_sha256") != recipe_sha256(hparams):
            return False
        if method in TRAINED and row.get("run_sha256", recipe_sha256(hparams)) != run_sha256(
                hparams, overrides):
            return False
        return bool(row.get("skipped")) or report.read_predictions(self.args.output, row) is not None

    def store(self, measured: tuple[dict, dict | None]) -> None:
        """Merge one row into results.json and re-render results.md and the plot."""
        row, correct = measured
        stored = report.store_row(self.results, row, correct)
        report.render(self.results)
        self.measured.append(report.row_key(stored))
        accuracy = "skipped" if stored.get("skipped") else f"{100 * stored['accuracy']:.2f} %"
        print(f"[benchmark] stored {self.args.label}/{report.row_key(stored)}: {accuracy}",
              flush=True)

    def run(self) -> None:
        """Every selected row of every seed not yet in results.json, in :data:`plan.METHOD_BITS`
        order (so a sitting cut short still adds the most important rows)."""
        if self.unverified:
            self._verify_equivalence()
        for seed in self.args.seeds:
            for method, widths in self.args.selected.items():
                for bits in widths:
                    if self.finished(method, bits, seed):
                        print(f"[benchmark] {method} {bits} bits seed {seed}: in results.json",
                              flush=True)
                        continue
                    if method == "fp_student":
                        stored = len(self.measured)
                        self.fp(seed)
                        if len(self.measured) > stored:  # newly trained: fp() stored its row
                            continue
                    if method in TRAINED:
                        self.store(self.trained_row(method, bits, seed))
                    else:
                        self.store(self.derived_row(method, bits, seed))

    def corpus_info(self) -> dict:
        """The corpus' description for results.md, with split sizes from the first fp run."""
        fp = (self.work / "runs" / f"seed{self.args.seeds[0]}"
              / f"fp_student-{recipe_sha256(FP_HPARAMS)[:8]}")
        sizes = {}
        for split, name in (("train", "train-type=direct.csv"), ("valid", "devel-type=direct.csv"),
                            ("test", "test-type=direct.csv")):
            if (fp / name).is_file():
                with open(fp / name, newline="", encoding="utf-8") as handle:
                    sizes[f"n_{split}"] = sum(1 for _ in csv.DictReader(handle))
        what = (f"the offline mini SLURP corpus (`recipes/mini_corpus`, {MINI[self.args.size]}, "
                f"corpus seed {CORPUS_SEED}; test speakers unseen in training)"
                if self.args.corpus_dir is None else f"the SLURP-layout corpus `{self.corpus}`")
        counts = ", ".join(f"{k.removeprefix('n_')} {v}" for k, v in sizes.items())
        overrides = " ".join(TRAIN_ARGS[self.args.size]) or "none (5 MCT rounds, 11 epochs)"
        return {"folder": str(self.corpus), **sizes, "description": (
            f"Corpus: {what}; recordings: {counts or 'unknown (no fp run yet)'}. Teacher Whisper "
            f"base, student Whisper tiny.en (all 4 layers); train.py overrides: `{overrides}`.")}


def _memory_gb() -> float:
    """Physical memory in GB (Linux)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def machine() -> str:
    """One line describing the CPU, memory, GPU, Python and torch."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    isa = torch.backends.cpu.get_cpu_capability()
    return (f"{cpu} ({isa}), {os.cpu_count()} cores, {_memory_gb():.0f} GB RAM, {gpu}; "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns results.json's content."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    start = time.time()
    bench = Benchmark(args)
    bench.run()
    with report.locked(bench.results):
        results = report.load(bench.results)
        kept = results["corpora"].get(args.label, {})
        results["corpora"][args.label] = {
            **bench.corpus_info(), "corpus_sha256": bench.corpus_sha256,
            **{k: kept[k] for k in ("split_sha256", "equivalent_sha256") if k in kept}}
        if bench.files_sha256 == bench.corpus_sha256:
            results["corpora"][args.label]["split_sha256"] = report.split_sha256(bench.corpus)
        results["invocations"].append({
            "corpus": args.label, "command": "python benchmarks/run.py " + shlex.join(argv),
            "machine": machine(), "minutes": (time.time() - start) / 60,
            "date": datetime.date.today().isoformat(), "rows": bench.measured})
        report.write_atomic(bench.results, json.dumps(results, indent=1) + "\n")
    report.render(bench.results)
    print((args.output / "results.md").read_text(), flush=True)
    return results


if __name__ == "__main__":
    main()
