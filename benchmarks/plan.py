"""What the benchmark measures: the methods and their bit widths, the recipe file and overrides
of each trained row, the peers' budgets, the mini corpus sizes, and the recipe digest that ties a
row to the file it was measured under. ``run.py`` runs it."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import yaml

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "SLURP" / "quads"

MINI = {"full": {"n_intents": 12, "n_train": 480, "n_valid": 96, "n_test": 120,
                 "n_synthetic": 48, "n_speakers": 14},
        "quick": {"n_intents": 4, "n_train": 24, "n_valid": 8, "n_test": 12,
                  "n_synthetic": 4, "n_speakers": 6}}
"""Mini corpus sizes: ``full`` is ``recipes/SLURP/quads/demo.py``'s default; ``quick`` is CI's."""

CORPUS_SEED = 1
"""The mini corpus is always spoken with this seed, so every training seed sees the same data."""

TRAIN_ARGS = {"full": [], "quick": ["--mct_iterations=1"]}
"""train.py overrides: the full run keeps the recipe files' schedule (5 MCT rounds, 11 epochs)."""

METHOD_BITS = {
    "full": {"fp_student": [32], "student_probe": [32], "teacher": [32], "quads_mct": [2, 4, 8],
             "kmeans_ptq": [2, 4, 8], "kmeans_ptq_optimal": [2, 4, 8],
             "kmeans_ptq_sensitive": [2, 4, 8], "kmeans_ptq_mixed": [2, 3, 4],
             "kmeans_ptq_outliers": [2, 4],
             "torch_dynamic_int8": [8],
             "coremltools_skm": [2, 4, 8], "sequential": [2, 4], "coremltools_dkm": [2, 4, 8],
             "quads_mct_random_init": [4], "quads_mct_mixed": [3, 4],
             "quads_mct_mixed_outliers": [3], "quads_mct_sensitive": [4]},
    "quick": {"fp_student": [32], "student_probe": [32], "teacher": [32], "quads_mct": [2],
              "kmeans_ptq": [2], "kmeans_ptq_optimal": [2], "kmeans_ptq_sensitive": [2],
              "kmeans_ptq_mixed": [2], "kmeans_ptq_outliers": [2],
              "torch_dynamic_int8": [8], "coremltools_skm": [2], "sequential": [2],
              "coremltools_dkm": [2], "quads_mct_random_init": [2]},
}
"""Default bit widths per method, in the order rows are measured (cheap and central first)."""

FIXED_BITS = {"fp_student": 32, "student_probe": 32, "teacher": 32, "torch_dynamic_int8": 8}

TRAINED = {"fp_student": [], "quads_mct": [], "sequential": ["--strategy=sequential"],
           "quads_mct_random_init": ["--init=random"], "quads_mct_mixed": [],
           "quads_mct_mixed_outliers": [], "quads_mct_sensitive": ["--sensitivity_samples=32"]}
"""Methods that are train.py runs, with their overrides."""

MIXED_TARGET_MB = {3: 3.0, 4: 3.7337}
"""``quads_mct_mixed:<bits>``: the 4-bit recipe with ``target_mb`` (MiB) set to this budget, a
width per tensor from the measured sensitivities; 3 = issue 13's 3.0 MB budget, 4 = the size of
the uniform 4-bit file (3.7337 MiB, ``quads_mct:4``'s ``packed_mb`` rounded down), so the two
compare at equal size."""

MIXED_WIDTHS = [3, 4, 5, 6, 8]
"""``target_widths`` of ``quads_mct_mixed``: no tensor below 3 bits (chosen on valid:
``benchmarks/screening.json``, ``quads_qad_mixed3.0mb_min3``)."""


MIXED_OUTLIER_FRACTION = 0.0005
"""``outlier_fraction`` of ``quads_mct_mixed_outliers``: ``quads_mct_mixed`` with this share of
each weight kept exactly (8 bytes each, inside the same budget, so the 3-bit tensors pay for
them); chosen on valid (``benchmarks/screening_klatt.json``)."""

MIXED_METHODS = ("quads_mct_mixed", "quads_mct_mixed_outliers")
"""Trained rows whose ``bits`` names a budget (:data:`MIXED_TARGET_MB`), not a width."""


def recipe_of(method: str, bits: int) -> tuple[str, list[str]]:
    """The recipe hparams file and train.py overrides of a trained row (derived rows: the fp
    student's)."""
    if method in MIXED_METHODS:
        widths = ",".join(map(str, MIXED_WIDTHS))
        overrides = [f"--target_mb={MIXED_TARGET_MB[bits]}", f"--target_widths=[{widths}]"]
        if method == "quads_mct_mixed_outliers":
            overrides.append(f"--outlier_fraction={MIXED_OUTLIER_FRACTION}")
        return "hparams/slurp_4bit.yaml", overrides
    if method in TRAINED:
        return f"hparams/slurp_{bits}bit.yaml", TRAINED[method]
    return FP_HPARAMS, []

DKM = {"full": {"epochs": 11, "trial_epochs": 1, "lrs": [1e-5, 5e-5, 2e-4]},
       "quick": {"epochs": 1, "trial_epochs": 1, "lrs": [5e-5]}}
"""DKM budget: ``epochs`` = QUADS' 11; encoder lr chosen on valid from ``lrs`` (quick: no trial;
the selection is tested on its own)."""

OUTLIER_FRACTION = 0.005
"""``kmeans_ptq_outliers``: share of each weight kept exactly (0.5 %, 8 bytes each)."""

SKM_SAMPLES = {"full": 128, "quick": 8}
"""SKMPalettizer calibration recordings (coremltools' default 128)."""


def parse_methods(spec: str | None, size: str) -> dict[str, list[int]]:
    """``"fp_student,quads_mct:4,kmeans_ptq:2,4,8"`` -> {method: bit widths}; None -> all."""
    defaults = METHOD_BITS[size]
    if spec is None:
        return {method: list(bits) for method, bits in defaults.items()}
    selected: dict[str, list[int]] = {}
    current = None
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        if token.isdigit() and current:
            selected[current].append(int(token))
            continue
        method, _, bits = token.partition(":")
        if method not in defaults:
            raise SystemExit(f"--methods: unknown method {method!r}; known: {', '.join(defaults)}")
        selected[method] = [int(bits)] if bits else list(defaults[method])
        current = method if bits else None
    for method, bits in selected.items():
        wrong = [b for b in bits if (b != FIXED_BITS[method] if method in FIXED_BITS
                                     else b not in MIXED_TARGET_MB if method in MIXED_METHODS
                                     else not 1 <= b <= 16)]
        if wrong:
            raise SystemExit(f"--methods: {method} cannot run at {wrong} bits")
    return {method: sorted(set(selected[method])) for method in defaults if method in selected}


FP_HPARAMS = "hparams/slurp_32bit.yaml"
"""The fp student's recipe file (relative to the recipe folder)."""


@functools.cache
def recipe_sha256(hparams: str) -> str:
    """SHA-256 (16 hex digits) of what a recipe hparams file says (e.g.
    ``hparams/slurp_4bit.yaml``): its YAML node tree re-serialised, so comments and layout do not
    count, but every key, value and tag does."""
    text = (RECIPE / hparams).read_text(encoding="utf-8")
    canonical = yaml.serialize(yaml.compose(text, Loader=yaml.SafeLoader))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def run_sha256(hparams: str, overrides: list[str]) -> str:
    """What a trained row was trained under: its recipe file's :func:`recipe_sha256`, or, with
    ``train.py`` overrides, the SHA-256 (16 hex digits) of that and the overrides in order; a
    method whose overrides change is measured again like one whose file changed."""
    if not overrides:
        return recipe_sha256(hparams)
    return hashlib.sha256("\n".join([recipe_sha256(hparams), *overrides]).encode()).hexdigest()[:16]
