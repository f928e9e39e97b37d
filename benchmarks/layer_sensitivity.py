#!/usr/bin/env python3
"""Which tensors can go to b bits? Post-training k-means of a finished fp student with one group
of tensors at a time at ``--bits`` and every other tensor in full precision, scored on the valid
split (never test), with an exact 95% interval and an exact McNemar p-value against the fp
student on the same recordings.

    python benchmarks/layer_sensitivity.py results/benchmark/slurp_text/runs/seed1/fp_student-* \
        --bits 2 --granularity per_tensor,per_row --json benchmarks/layer_sensitivity.json

Groups (``--groups``, regexes on module names in :data:`GROUPS`): the two convolutions, the
attention query/key, value and output projections, the two feed-forward layers, the intent head,
the layers one at a time, and ``all``. ``per_row`` gives every output row its own codebook
(``granularity: per_group`` with ``group_size: 1``), ``per_tensor`` one codebook per tensor (the
recipes' default); k-means is ``optimal``. Rows are merged into ``--json`` by (fp run, bits,
granularity, group), written atomically as each finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import methods  # noqa: E402
import report  # noqa: E402

from speechbrain_quads.codebook.packing import size_report  # noqa: E402
from speechbrain_quads.codebook.quantization import QuantizationConfig, quantize_  # noqa: E402
from speechbrain_quads.evaluation.stats import clopper_pearson, compare  # noqa: E402

GROUPS = {
    "conv": [r"conv[12]$"],
    "attention_qk": [r"self_attn\.[qk]_proj$"],
    "attention_v": [r"self_attn\.v_proj$"],
    "attention_out": [r"self_attn\.out_proj$"],
    "fc1": [r"\.fc1$"],
    "fc2": [r"\.fc2$"],
    "head": [r"^classifier\."],
    **{f"layer{i}": [rf"layers\.{i}\."] for i in range(4)},
    "all": [],
}
"""Tensor groups by module-name regexes (``re.search``; ``all``: every quantized tensor)."""

GRANULARITY = {"per_tensor": {"granularity": "per_tensor"},
               "per_row": {"granularity": "per_group", "group_size": 1}}
"""``--granularity`` names -> QuantizationConfig settings."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp_run", type=Path, help="a finished train.py run of the fp student")
    parser.add_argument("--bits", type=int, default=2, help="width of the quantized group")
    parser.add_argument("--granularity", default="per_tensor",
                        help=f"comma-separated, of {', '.join(GRANULARITY)}")
    parser.add_argument("--groups", default=",".join(GROUPS),
                        help=f"comma-separated, of {', '.join(GROUPS)}")
    parser.add_argument("--json", type=Path, default=None, help="merge rows into this file")
    args = parser.parse_args(argv)
    args.granularity = args.granularity.split(",")
    args.groups = args.groups.split(",")
    for name, known in (("--granularity", GRANULARITY), ("--groups", GROUPS)):
        unknown = [g for g in getattr(args, name[2:]) if g not in known]
        if unknown:
            parser.error(f"{name}: unknown {unknown}; known: {', '.join(known)}")
    if not (args.fp_run / "model" / "config.json").is_file():
        parser.error(f"{args.fp_run}: no exported model (model/config.json); give a finished run")
    if not 1 <= args.bits <= 16:
        parser.error(f"--bits: {args.bits} is not in 1-16")
    return args


def measure(fp_run: Path, bits: int, granularity: str, group: str, datasets, fp: dict) -> dict:
    """One row: the fp student with ``group`` quantized at ``bits``, scored on valid (``fp``:
    the fp student's own valid scores)."""
    model, _ = methods.load_student(fp_run)
    config = QuantizationConfig(bits=bits, init="optimal", seed=1, include=GROUPS[group],
                                **GRANULARITY[granularity])
    start = time.perf_counter()
    quantizer = quantize_(model, config)
    if not quantizer.modules:
        raise SystemExit(f"group {group!r} matches no quantized tensor of {fp_run}")
    seconds = time.perf_counter() - start
    valid = methods.evaluate(model, datasets["valid"])
    right, n = sum(valid["correct"].values()), len(valid["correct"])
    return {"fp_run": str(fp_run), "bits": bits, "granularity": granularity, "group": group,
            "tensors": sorted(quantizer.modules), "valid_accuracy": valid["accuracy"],
            "valid_ci95": list(clopper_pearson(right, n)), "n_valid": n,
            "fp_valid_accuracy": fp["accuracy"], "p_vs_fp": compare(valid["correct"],
                                                                    fp["correct"]).p_value,
            "packed_mb": size_report(model).packed_bytes / 2**20,
            "cluster_seconds": seconds}


def _key(row: dict) -> tuple:
    return row["fp_run"], row["bits"], row["granularity"], row["group"]


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    fp_run = args.fp_run.resolve()
    datasets, _ = methods.run_datasets(fp_run)
    fp = methods.evaluate(methods.load_student(fp_run)[0], datasets["valid"])
    print(f"fp student: valid {100 * fp['accuracy']:.2f} %", flush=True)
    rows = []
    for granularity in args.granularity:
        for group in args.groups:
            row = measure(fp_run, args.bits, granularity, group, datasets, fp)
            rows.append(row)
            low, high = row["valid_ci95"]
            print(f"{args.bits} bits {granularity:10s} {group:14s} {len(row['tensors']):2d} "
                  f"tensors: valid {100 * row['valid_accuracy']:5.2f} % "
                  f"({100 * low:.1f}-{100 * high:.1f}), p vs fp {row['p_vs_fp']:.2g}",
                  flush=True)
            if args.json is not None:
                with report.locked(args.json):
                    stored = json.loads(args.json.read_text()) if args.json.is_file() else []
                    merged = [r for r in stored if _key(r) != _key(row)] + [row]
                    report.write_atomic(args.json, json.dumps(merged, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
