"""Rendering of ``benchmarks/run.py``'s rows: markdown table, target checks and the size plot.

A row is a dict with at least ``method``, ``bits``, ``accuracy``, ``macro_f1``, ``packed_mb``,
``gmacs``, ``train_seconds``; a method that could not run has a ``skipped`` reason and nulls.
"""

from __future__ import annotations

from pathlib import Path

ROW_KEYS = ("method", "bits", "accuracy", "macro_f1", "packed_mb", "gmacs", "train_seconds")
"""Keys every row of results.json holds."""

LABELS = {
    "teacher": "Teacher: Whisper base, frozen + linear probe",
    "fp_student": "Student, full precision (distilled)",
    "kmeans_ptq": "k-means PTQ of the fp student (no retraining)",
    "sequential": "Sequential: distil, then quantize",
    "quads_mct": "QUADS (MCT)",
    "quads_mct_random_init": "QUADS (MCT), random student init",
    "torch_dynamic_int8": "torch dynamic int8 PTQ of the fp student",
    "coremltools_dkm": "coremltools DKMPalettizer fine-tuning",
}
"""Human-readable name of each method."""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    """Markdown table of the rows, in the given order."""
    lines = ["| method | bits | accuracy (%) | macro-F1 (%) | packed size (MiB) | GMACs | "
             "train time (s) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        name = LABELS.get(row["method"], row["method"])
        if row.get("skipped"):
            lines.append(f"| {name} | {row['bits']} | not run: {row['skipped']} | | | | |")
            continue
        lines.append(f"| {name} | {row['bits']} | {_pct(row['accuracy'])} | "
                     f"{_pct(row['macro_f1'])} | {_num(row['packed_mb'], 2)} | "
                     f"{_num(row['gmacs'], 3)} | {_num(row['train_seconds'], 0)} |")
    return "\n".join(lines)


def _find(rows: list[dict], method: str, bits: int) -> dict | None:
    """The measured row of ``method`` at ``bits`` bits, or None."""
    for row in rows:
        if row["method"] == method and row["bits"] == bits and not row.get("skipped"):
            return row
    return None


def _against_quads(rows: list[dict], method: str) -> list[tuple[dict, dict]]:
    """(measured row of ``method``, QUADS MCT row at the same bits) pairs, where both exist."""
    pairs = []
    for row in rows:
        if row["method"] == method and not row.get("skipped"):
            quads = _find(rows, "quads_mct", row["bits"])
            if quads:
                pairs.append((row, quads))
    return pairs


def targets(rows: list[dict]) -> list[str]:
    """One markdown bullet per target: the figures compared and whether the target is met."""
    lines = []

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    fp, q4 = _find(rows, "fp_student", 32), _find(rows, "quads_mct", 4)
    if fp and q4:
        gap = 100 * (fp["accuracy"] - q4["accuracy"])
        lines.append(f"- QUADS 4-bit within 2 points of the fp student: {_pct(q4['accuracy'])} vs "
                     f"{_pct(fp['accuracy'])} % ({gap:+.2f} points below): {verdict(gap <= 2.0)}")
    for row, mct in _against_quads(rows, "sequential"):
        lines.append(f"- MCT >= sequential at {row['bits']} bits: {_pct(mct['accuracy'])} vs "
                     f"{_pct(row['accuracy'])} %: {verdict(mct['accuracy'] >= row['accuracy'])}")
    for row, pre in _against_quads(rows, "quads_mct_random_init"):
        lines.append(f"- pretrained > random init (QUADS {row['bits']}-bit): "
                     f"{_pct(pre['accuracy'])} vs {_pct(row['accuracy'])} %: "
                     f"{verdict(pre['accuracy'] > row['accuracy'])}")
    for row, quads in _against_quads(rows, "coremltools_dkm"):
        ok = quads["accuracy"] >= row["accuracy"] and quads["packed_mb"] <= row["packed_mb"]
        lines.append(f"- QUADS >= coremltools DKM at {row['bits']} bits: accuracy "
                     f"{_pct(quads['accuracy'])} vs {_pct(row['accuracy'])} %, size "
                     f"{quads['packed_mb']:.2f} vs {row['packed_mb']:.2f} MiB: {verdict(ok)}")
    return lines


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy (%) against packed size (MiB, log scale), one marker style per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    figure, axes = plt.subplots(figsize=(8, 5.5))
    markers = "o^sDvP*Xh"
    methods = list(dict.fromkeys(r["method"] for r in rows if not r.get("skipped")))
    for index, method in enumerate(methods):
        points = sorted((r for r in rows if r["method"] == method and not r.get("skipped")),
                        key=lambda r: r["packed_mb"])
        sizes = [r["packed_mb"] for r in points]
        accs = [100 * r["accuracy"] for r in points]
        axes.plot(sizes, accs, marker=markers[index % len(markers)], linestyle="-" if
                  len(points) > 1 else "none", label=LABELS.get(method, method))
        for row in points:
            axes.annotate(f"{row['bits']}b", (row["packed_mb"], 100 * row["accuracy"]),
                          textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(plain)
    axes.set_xlabel("packed model size (MiB, log scale)")
    axes.set_ylabel("test intent accuracy (%)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
