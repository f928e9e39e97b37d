#!/usr/bin/env python3
"""Compare QUADS with the other ways to shrink the student, on the offline mini SLURP corpus.

    python benchmarks/run.py [--quick] [--output benchmarks] [--work results/benchmark]

Same data, same student (Whisper tiny.en), same teacher (Whisper base), fixed seeds. Methods:

- ``teacher``: the frozen teacher + a linear probe (``recipes/SLURP/quads/demo.py``'s probe).
- ``fp_student``: the full-precision distilled student (``slurp_32bit.yaml`` of the recipe).
- ``quads_mct``: QUADS at each bit width (``hparams/slurp_<b>bit.yaml``).
- ``sequential``: all distillation, then all quantization (``--strategy=sequential``).
- ``quads_mct_random_init``: QUADS from a randomly initialised student (``--init=random``).
- ``kmeans_ptq``, ``torch_dynamic_int8``, ``coremltools_dkm``: applied to the fp student
  (``benchmarks/methods.py``).

Training runs are ``recipes/SLURP/quads/train.py`` subprocesses started through ``demo.train`` (one
shared teacher cache); every finished run or row is re-used, so an interrupted benchmark
continues where it stopped (train.py itself resumes from its last checkpoint). Writes
``results.md``, ``results.json`` and ``accuracy_vs_size.png`` into ``--output``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes" / "SLURP" / "quads"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo  # noqa: E402
import methods  # noqa: E402
import report  # noqa: E402
import torch  # noqa: E402

CORPUS = {"full": {"n_intents": 12, "n_train": 480, "n_valid": 96, "n_test": 120,
                   "n_synthetic": 48, "n_speakers": 14},
          "quick": {"n_intents": 4, "n_train": 24, "n_valid": 8, "n_test": 12,
                    "n_synthetic": 4, "n_speakers": 6}}
"""Corpus sizes: ``full`` is ``recipes/SLURP/quads/demo.py``'s default; ``quick`` is for CI."""

TRAIN_ARGS = {"full": [], "quick": ["--mct_iterations=1"]}
"""train.py overrides: the full run keeps the recipe files' schedule (5 MCT rounds)."""

DEFAULT_BITS = {"full": [2, 4, 8], "quick": [2]}
DEFAULT_SEQUENTIAL_BITS = {"full": [2, 4], "quick": [2]}
DEFAULT_RANDOM_INIT_BITS = {"full": 4, "quick": 2}
DEFAULT_DKM_STEPS = {"full": 33, "quick": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` changes the defaults of the others."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="CI size: 4 intents, 24 training files, 1 MCT round, 2 bits only, "
                             "DKM 1 step")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks",
                        help="where results.md, results.json and the plot go")
    parser.add_argument("--work", type=Path, default=None,
                        help="runs, corpus and cached rows (default results/benchmark[_quick])")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="an existing SLURP-format corpus to use instead of generating one")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bits", type=int, nargs="+", default=None,
                        help="QUADS, k-means PTQ and DKM bit widths (default 2 4 8; quick 2)")
    parser.add_argument("--sequential-bits", type=int, nargs="+", default=None,
                        help="bit widths of the distil-then-quantize runs (default 2 4; quick 2)")
    parser.add_argument("--random-init-bits", type=int, default=None,
                        help="bit width of the random-init QUADS run (default 4; quick 2)")
    parser.add_argument("--dkm-steps", type=int, default=None,
                        help="DKMPalettizer training steps (default 33 = 1 epoch; quick 1)")
    parser.add_argument("--dkm-kmeans-iters", type=int, default=3,
                        help="DKM's kmeans_max_iter (coremltools' default 3)")
    parser.add_argument("--dkm-max-gb", type=float, default=8.0,
                        help="skip a DKM bit width whose attention maps would exceed this")
    args = parser.parse_args(argv)
    size = "quick" if args.quick else "full"
    args.size = size
    args.bits = args.bits or DEFAULT_BITS[size]
    args.sequential_bits = args.sequential_bits or DEFAULT_SEQUENTIAL_BITS[size]
    if args.random_init_bits is None:
        args.random_init_bits = DEFAULT_RANDOM_INIT_BITS[size]
    args.dkm_steps = args.dkm_steps if args.dkm_steps is not None else DEFAULT_DKM_STEPS[size]
    args.work = (args.work or REPO / "results" / f"benchmark{'_quick' if args.quick else ''}")
    args.work, args.output = args.work.resolve(), args.output.resolve()
    return args


class Benchmark:
    """The work folder of one benchmark configuration and the rows measured in it."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = args.work
        self.corpus_settings = CORPUS[args.size]
        self.train_args = [*TRAIN_ARGS[args.size], f"--teacher_cache_dir={self.work / 'teacher_cache'}"]
        self.work.mkdir(parents=True, exist_ok=True)
        self._check_config()
        self.corpus = args.corpus.resolve() if args.corpus else self._make_corpus()

    def _check_config(self) -> None:
        """Refuse a work folder that holds runs of a different corpus, seed or schedule."""
        config = {"corpus": self.corpus_settings, "corpus_folder": str(self.args.corpus),
                  "seed": self.args.seed, "train_args": self.train_args}
        path = self.work / "benchmark_config.json"
        if path.is_file():
            found = json.loads(path.read_text())
            if found != config:
                raise SystemExit(f"{path}: this work folder was made with {found}, not {config}; "
                                 "use another --work")
        path.write_text(json.dumps(config, indent=1) + "\n")

    def _make_corpus(self) -> Path:
        """Speak the corpus (demo.make_corpus; re-used when complete)."""
        return demo.make_corpus(self.work / "corpus",
                                SimpleNamespace(seed=self.args.seed, **self.corpus_settings))

    # ------------------------------------------------------------------ trained runs
    def train(self, name: str, hparams: str, extra: list[str]) -> dict:
        """Run (or re-use) ``train.py hparams extra``; returns its summary.json plus
        ``train_seconds`` (wall time of the train.py process, None if run outside this script)
        and ``resumed`` (the run continued an interrupted one)."""
        output = self.work / "runs" / name
        timing = output / "benchmark_timing.json"
        if not (output / "summary.json").is_file():
            resumed = output.exists()
            start = time.perf_counter()
            demo.train(hparams, self.corpus, output,
                       SimpleNamespace(seed=self.args.seed, train_args=[*self.train_args, *extra]))
            timing.write_text(json.dumps({"train_seconds": time.perf_counter() - start,
                                          "resumed": resumed}) + "\n")
        summary = json.loads((output / "summary.json").read_text())
        extra_info = json.loads(timing.read_text()) if timing.is_file() else {
            "train_seconds": None, "resumed": None}
        return {**summary, **extra_info, "folder": str(output)}

    @staticmethod
    def trained_row(method: str, bits: int, run: dict, command: str) -> dict:
        """A results row from a train.py run."""
        metrics, compute = run["metrics"], run["compute"]
        return {"method": method, "bits": bits, "accuracy": metrics["intent_accuracy"],
                "macro_f1": metrics["macro_f1"], "packed_mb": run["size"]["packed_mb"],
                "gmacs": compute["student_gmacs_real_length"], "train_seconds": run["train_seconds"],
                "gmacs_30s": compute["student_gmacs_30s"], "resumed": run["resumed"],
                "command": command, "run": run["folder"]}

    def command(self, hparams: str, extra: list[str]) -> str:
        """The train.py command line of a run (for the record)."""
        return " ".join(["python train.py", hparams, f"--seed={self.args.seed}", *extra,
                         *TRAIN_ARGS[self.args.size]])

    # ------------------------------------------------------------------ cached rows
    def cached(self, key: str, settings: dict, compute) -> dict:
        """``compute()``'s dict, stored in rows/<key>.json and re-used while ``settings`` match."""
        path = self.work / "rows" / f"{key}.json"
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("settings") == settings:
                return stored
        row = {**compute(), "settings": settings}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row, indent=1) + "\n")
        return row

    # ------------------------------------------------------------------ all methods
    def run(self) -> list[dict]:
        """Every method's rows, most important runs first (so a cut-short run still informs)."""
        args = self.args
        rows = []
        fp_extra: list[str] = []
        fp = self.train("fp_student", "hparams/slurp_32bit.yaml", fp_extra)
        rows.append(self.trained_row("fp_student", 32, fp, self.command(
            "hparams/slurp_32bit.yaml", fp_extra)))
        fp_run = Path(fp["folder"])
        plan = [("quads_mct", b, f"hparams/slurp_{b}bit.yaml", []) for b in args.bits]
        plan += [("sequential", b, f"hparams/slurp_{b}bit.yaml", ["--strategy=sequential"])
                 for b in args.sequential_bits]
        plan.append(("quads_mct_random_init", args.random_init_bits,
                     f"hparams/slurp_{args.random_init_bits}bit.yaml", ["--init=random"]))
        for method, bits, hparams, extra in plan:
            run = self.train(f"{method}_{bits}bit", hparams, extra)
            rows.append(self.trained_row(method, bits, run, self.command(hparams, extra)))
        rows[0].update(self.cached("fp_student_reevaluated", {"run": str(fp_run)}, lambda: {
            "reevaluated_accuracy": methods.evaluate(methods.load_student(fp_run)[0],
                                                     methods.run_datasets(fp_run)[0]["test"])
            ["accuracy"]}))
        rows.insert(0, self.teacher_row(fp))
        rows.extend(self.post_training_rows(fp))
        rows.extend(self.dkm_rows(fp))
        return rows

    def teacher_row(self, fp: dict) -> dict:
        """The teacher's linear-probe row (cached)."""
        fp_run = Path(fp["folder"])

        def probe() -> dict:
            start = time.perf_counter()
            scores = demo.probe_teacher("hparams/slurp_32bit.yaml", self.corpus, fp_run)
            return {**scores, "train_seconds": time.perf_counter() - start}

        scores = self.cached("teacher", {"run": str(fp_run)}, probe)
        compute = fp["compute"]
        return {"method": "teacher", "bits": 32, "accuracy": scores["accuracy"],
                "macro_f1": scores["macro_f1"], "packed_mb": scores["size_mb"],
                "gmacs": compute["teacher_gmacs_real_length"],
                "train_seconds": scores["train_seconds"],
                "gmacs_30s": compute["teacher_gmacs_30s"],
                "note": "fp32 encoder + probe parameters x 4 bytes; train time = feature "
                        "extraction + probe fit"}

    def post_training_rows(self, fp: dict) -> list[dict]:
        """k-means PTQ at every bit width and torch dynamic int8, all from the fp student."""
        fp_run = Path(fp["folder"])
        compute = fp["compute"]
        common = {"gmacs": compute["student_gmacs_real_length"],
                  "gmacs_30s": compute["student_gmacs_30s"]}
        rows = []
        for bits in self.args.bits:
            out = self.work / "exports" / f"kmeans_ptq_{bits}bit"
            row = self.cached(f"kmeans_ptq_{bits}bit", {"run": str(fp_run), "seed": self.args.seed},
                              lambda b=bits, o=out: methods.kmeans_ptq(fp_run, b, o, self.args.seed))
            rows.append({"method": "kmeans_ptq", "bits": bits, **common, **row})
        row = self.cached("torch_dynamic_int8", {"run": str(fp_run)},
                          lambda: methods.dynamic_int8(fp_run))
        rows.append({"method": "torch_dynamic_int8", "bits": 8, **common, **row,
                     "note": "GMACs: same multiply-accumulates as the fp student, in int8"})
        return rows

    def dkm_rows(self, fp: dict) -> list[dict]:
        """coremltools DKMPalettizer at every bit width, or a row saying why it did not run."""
        args, fp_run = self.args, Path(fp["folder"])
        gmacs = fp["compute"]
        rows = []
        for bits in args.bits:
            base = {"method": "coremltools_dkm", "bits": bits, "accuracy": None, "macro_f1": None,
                    "packed_mb": None, "gmacs": gmacs["student_gmacs_real_length"],
                    "train_seconds": None, "gmacs_30s": gmacs["student_gmacs_30s"]}
            reason = self._dkm_unavailable(fp_run, bits)
            if reason:
                rows.append({**base, "skipped": reason})
                continue
            settings = {"run": str(fp_run), "steps": args.dkm_steps, "batch_size": 16,
                        "kmeans_iters": args.dkm_kmeans_iters, "seed": args.seed,
                        "lr_encoder": 5e-5, "lr_head": 1e-3}
            out = self.work / "exports" / f"coremltools_dkm_{bits}bit"
            print(f"[benchmark] coremltools DKMPalettizer, {bits} bits, {args.dkm_steps} steps",
                  flush=True)
            compute = functools.partial(
                methods.dkm_palettize, fp_run, bits, out, steps=settings["steps"],
                batch_size=settings["batch_size"], lr_encoder=settings["lr_encoder"],
                lr_head=settings["lr_head"], kmeans_iters=settings["kmeans_iters"],
                seed=settings["seed"])
            try:
                row = self.cached(f"coremltools_dkm_{bits}bit", settings, compute)
            except Exception as error:  # a third-party failure is a result to report, not a crash
                traceback.print_exc()
                rows.append({**base, "skipped": f"DKMPalettizer failed: "
                                                f"{type(error).__name__}: {error}"})
                continue
            rows.append({**base, **row})
        return rows

    def _dkm_unavailable(self, fp_run: Path, bits: int) -> str | None:
        """Why DKM cannot run at ``bits`` here (not installed, or too much memory), or None."""
        try:
            import coremltools.optimize.torch.palettization  # noqa: F401
        except ImportError as error:
            return f"coremltools is not importable ({error}); pip install -e '.[bench]'"
        model, _ = methods.load_student(fp_run)
        need = methods.dkm_attention_gb(model, bits, self.args.dkm_kmeans_iters)
        if need > self.args.dkm_max_gb:
            return (f"DKM would keep ~{need:.0f} GB of distance/attention maps per step at "
                    f"{bits} bits ({self.args.dkm_kmeans_iters} k-means iterations x "
                    f"{2**bits} centroids x every weight), over the --dkm-max-gb "
                    f"{self.args.dkm_max_gb:g} limit of this {_memory_gb():.0f} GB machine")
        return None


def _memory_gb() -> float:
    """Physical memory in GB (Linux)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def machine() -> str:
    """One line describing the CPU, memory, Python and torch."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{cpu}, {os.cpu_count()} cores, {_memory_gb():.0f} GB RAM, no GPU; "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def write_outputs(rows: list[dict], bench: Benchmark, minutes: float, argv: list[str]) -> None:
    """results.json, results.md and accuracy_vs_size.png into the output folder."""
    args = bench.args
    output = args.output
    output.mkdir(parents=True, exist_ok=True)
    for row in rows:
        row.pop("settings", None)
    (output / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    title = f"Mini SLURP ({bench.corpus_settings['n_intents']} intents), seed {args.seed}"
    report.plot(rows, output / "accuracy_vs_size.png", title)
    corpus = ", ".join(f"{k.removeprefix('n_')} {v}" for k, v in bench.corpus_settings.items())
    dkm = (f"coremltools {_version('coremltools')} `DKMPalettizer`: `n_bits` = b, "
           f"`weight_threshold` 0, `kmeans_max_iter` {args.dkm_kmeans_iters}, `kmeans_init` "
           "`opt1d` (the default k-means++ init, 10 restarts x 100 iterations per tensor, did not "
           "finish one step in 10 min here) on every Linear and Conv1d (the layers QUADS "
           f"quantizes), started from the fp student, {args.dkm_steps} Adam step(s) (encoder 5e-5, "
           "head 1e-3, as QUADS' distillation) on cross-entropy with batches of 16, then "
           "`finalize()`; the palettized weights are written in the QUADS packed format. Its "
           "train time includes the initial clustering.")
    text = "\n".join([
        "# Benchmark: QUADS against other ways to compress the student", "",
        "```bash", "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in argv), "```", "",
        f"Machine: {machine()}. Wall time of this invocation {minutes:.1f} min (runs and rows "
        "already in the work folder are re-used, not re-timed).", "",
        f"Corpus: the offline mini SLURP corpus ({corpus}; seed {args.seed}; "
        f"`recipes/mini_corpus`). Teacher Whisper base, student Whisper tiny.en (all 4 layers). "
        f"train.py overrides: `{' '.join(TRAIN_ARGS[args.size]) or 'none (the recipe defaults)'}`.",
        "", report.table(rows), "",
        "## Targets", "", *(report.targets(rows) or ["- (not enough rows to check)"]), "",
        "## What each row is", "",
        "- Accuracy and macro-F1: test split, in %. Packed size: the exported file in MiB "
        "(`model.safetensors`; torch dynamic int8: its `torch.save` state_dict; teacher: fp32 "
        "parameters). GMACs: one utterance of the test set's mean length, variable-length input "
        "(`gmacs_30s` in results.json: Whisper's 30-s padding). Train time: wall seconds of the "
        "train.py process (start-up, training, test, export); the first run (fp student) also "
        "fills the shared teacher cache; post-training rows: clustering/conversion time.",
        "- k-means PTQ: `quantize_` on the fp student (QUADS' default per-tensor k-means), no "
        "training. torch dynamic int8: `quantize_dynamic(model, {nn.Linear}, torch.qint8)`.",
        f"- {dkm}",
        "- Sequential and random-init runs have the same epoch budget as the QUADS runs.",
        "", "![accuracy vs size](accuracy_vs_size.png)", ""])
    (output / "results.md").write_text(text)
    print("\n" + text, flush=True)


def _version(package: str) -> str:
    """Installed version of ``package`` or ``not installed``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; returns its rows."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    start = time.time()
    bench = Benchmark(args)
    rows = bench.run()
    write_outputs(rows, bench, (time.time() - start) / 60, argv)
    return rows


if __name__ == "__main__":
    main()
