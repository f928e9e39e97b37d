#!/usr/bin/env python3
"""QUADS end to end, offline, on a synthesized SLURP-format mini corpus.

    python recipes/SLURP/quads/demo.py [--output results/demo] [--seed 1]

1. Speaks a SLURP-format corpus of our own home-assistant commands (recipes/mini_corpus).
2. Trains the full-precision distilled student (hparams/slurp_32bit.yaml) and 4-bit QUADS
   (hparams/slurp_4bit.yaml): Whisper base teacher, Whisper tiny.en student, 5 MCT rounds.
   Each is the same ``python train.py ...`` command a user runs on the real SLURP.
3. Probes the frozen teacher with a linear classifier (the teacher has no intent head).
4. Prints and writes (demo_results.md / .json) accuracy with its 95% confidence interval,
   macro-F1, size and GMACs, and the exact McNemar test of the full-precision student against
   4-bit QUADS on the same test recordings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RECIPE = Path(__file__).resolve().parent
sys.path.insert(0, str(RECIPE.parents[1] / "mini_corpus"))
sys.path.insert(0, str(RECIPE))

import corpus_writer  # noqa: E402
import generate  # noqa: E402
import train as recipe  # noqa: E402  (the recipe's train.py: its data pipeline)
from hyperpyyaml import load_hyperpyyaml  # noqa: E402

from speechbrain_quads.evaluation.stats import clopper_pearson, compare  # noqa: E402
from speechbrain_quads.training.probe import linear_probe, pooled_features  # noqa: E402

RUNS = (("Student, full precision (distilled)", "student_fp32", "hparams/slurp_32bit.yaml"),
        ("QUADS 4-bit (MCT)", "quads_4bit", "hparams/slurp_4bit.yaml"))


def make_corpus(folder: Path, args) -> Path:
    """Generate the corpus once (re-used when a complete one is there)."""
    if corpus_writer.is_complete(folder):
        print(f"[demo] re-using the corpus in {folder}", flush=True)
        return folder
    print(f"[demo] speaking the mini SLURP corpus into {folder}", flush=True)
    return generate.generate_slurp(
        folder, n_train=args.n_train, n_valid=args.n_valid, n_test=args.n_test,
        n_synthetic=args.n_synthetic, n_speakers=args.n_speakers, n_heldout_speakers=2,
        n_intents=args.n_intents, seed=args.seed, overwrite=True)


def train(hparams: str, corpus: Path, output: Path, args) -> dict:
    """Run the recipe's train.py as a user would; returns its summary.json."""
    if not (output / "summary.json").is_file():
        command = [sys.executable, "train.py", hparams, f"--data_folder={corpus}",
                   f"--output_folder={output}", f"--seed={args.seed}", *args.train_args]
        print(f"[demo] {' '.join(command[1:])}", flush=True)
        subprocess.run(command, cwd=RECIPE, check=True)
    return json.loads((output / "summary.json").read_text())


def probe_teacher(hparams_file: str, corpus: Path, output: Path) -> dict:
    """Accuracy of a linear probe on the frozen teacher's pooled features."""
    with open(RECIPE / hparams_file, encoding="utf-8") as handle:
        hparams = load_hyperpyyaml(handle, {"data_folder": str(corpus),
                                            "output_folder": str(output)})
    datasets, encoder = recipe.dataio_prepare(hparams)  # the run's CSVs and label encoder
    teacher = hparams["teacher"]
    print("[demo] probing the frozen teacher (linear classifier on pooled features)", flush=True)
    train = pooled_features(teacher, datasets["train"])
    test = pooled_features(teacher, datasets["test"])
    scores = linear_probe(train, test, len(encoder))
    params = sum(p.numel() for p in teacher.parameters()) + (train[0].shape[1] + 1) * len(encoder)
    return {**scores, "size_mb": params * 4 / 2**20}


def correct_by_recording(output: Path) -> dict[str, int]:
    """{test file name: 1 if the finished run at ``output`` got its intent right, else 0}."""
    truth, predicted = recipe.read_test_intents(output)
    return {name: int(predicted[name] == intent) for name, intent in truth.items()}


def table(rows: list[dict], n_test: int) -> str:
    """Markdown table of the demo's rows (95% CI: exact Clopper-Pearson over ``n_test``)."""
    lines = ["| model | bits | accuracy | 95% CI | macro-F1 | size (MB) | GMACs (real length) "
             "| GMACs (30 s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = clopper_pearson(round(r["accuracy"] * n_test), n_test)
        lines.append(f"| {r['model']} | {r['bits']} | {100 * r['accuracy']:.2f} % | "
                     f"{100 * low:.1f}-{100 * high:.1f} % | {100 * r['macro_f1']:.2f} % | "
                     f"{r['size_mb']:.2f} | {r['gmacs_real']:.2f} | {r['gmacs_30s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("results/demo"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-intents", type=int, default=12)
    parser.add_argument("--n-train", type=int, default=480)
    parser.add_argument("--n-valid", type=int, default=96)
    parser.add_argument("--n-test", type=int, default=120)
    parser.add_argument("--n-synthetic", type=int, default=48)
    parser.add_argument("--n-speakers", type=int, default=14)
    parser.add_argument("train_args", nargs="*", help="extra train.py overrides, e.g. --bits=2")
    args = parser.parse_args()
    start = time.time()
    output = args.output.resolve()
    corpus = make_corpus(output / "corpus", args)
    summaries = {name: train(hp, corpus, output / name, args) for _, name, hp in RUNS}
    teacher = probe_teacher(RUNS[1][2], corpus, output / RUNS[1][1])
    compute = summaries["quads_4bit"]["compute"]
    rows = [{"model": "Teacher: Whisper base, frozen + linear probe", "bits": 32,
             "accuracy": teacher["accuracy"], "macro_f1": teacher["macro_f1"],
             "size_mb": teacher["size_mb"], "gmacs_real": compute["teacher_gmacs_real_length"],
             "gmacs_30s": compute["teacher_gmacs_30s"]}]
    for label, name, _ in RUNS:
        summary = summaries[name]
        rows.append({"model": label, "bits": summary["size"]["bits"],
                     "accuracy": summary["metrics"]["intent_accuracy"],
                     "macro_f1": summary["metrics"]["macro_f1"],
                     "size_mb": summary["size"]["packed_bytes"] / 2**20,
                     "gmacs_real": summary["compute"]["student_gmacs_real_length"],
                     "gmacs_30s": summary["compute"]["student_gmacs_30s"]})
    paired = compare(*(correct_by_recording(output / name) for _, name, _ in RUNS))
    minutes = (time.time() - start) / 60
    text = (f"{table(rows, paired.n)}\n\nFull precision vs 4-bit QUADS on the same {paired.n} test "
            f"recordings: {paired.a_only} right only in full precision, {paired.b_only} only in "
            f"4 bits; exact McNemar p = {paired.p_value:.2g}.\n\n"
            f"Mini SLURP-format corpus: {args.n_intents} intents, {args.n_train} "
            f"train / {args.n_valid} valid / {args.n_test} test recordings, seed {args.seed}; "
            f"size = the exported model.safetensors (MiB); wall time {minutes:.1f} min.\n")
    (output / "demo_results.md").write_text(text)
    corpus_sizes = {"n_intents": args.n_intents, "n_train": args.n_train,
                    "n_valid": args.n_valid, "n_test": args.n_test}
    (output / "demo_results.json").write_text(json.dumps(
        {"rows": rows, "fp_vs_4bit": paired.as_dict(), "corpus": corpus_sizes,
         "minutes": minutes}, indent=1) + "\n")
    print("\n" + text, flush=True)


if __name__ == "__main__":
    main()
