"""The comparison benchmark (--quick) and the latency benchmark, run as a user runs them."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROW_KEYS = {"method", "bits", "accuracy", "macro_f1", "packed_mb", "gmacs", "train_seconds"}
METHODS = {"teacher", "fp_student", "kmeans_ptq", "sequential", "quads_mct",
           "quads_mct_random_init", "torch_dynamic_int8", "coremltools_dkm"}


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    """Run a benchmark script from the repository root; fail with its output if it fails."""
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """Output folder, work folder and rows of one ``run.py --quick``."""
    root = tmp_path_factory.mktemp("bench")
    output, work = root / "out", root / "work"
    _run("benchmarks/run.py", "--quick", "--output", str(output), "--work", str(work),
         timeout=600)
    return output, work, json.loads((output / "results.json").read_text())


def test_quick_rows_cover_every_method_with_sane_values(quick):
    output, _, rows = quick
    assert {row["method"] for row in rows} == METHODS
    for row in rows:
        assert ROW_KEYS <= set(row), row
        assert row["bits"] in (2, 4, 8, 32)
        if row.get("skipped"):  # only a third-party method may be missing, with its reason
            assert row["method"] == "coremltools_dkm" and len(row["skipped"]) > 10
            assert row["skipped"] in (output / "results.md").read_text()
            continue
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["macro_f1"] <= 1.0
        assert row["packed_mb"] > 0 and row["gmacs"] > 0 and row["train_seconds"] >= 0
    by_key = {(row["method"], row["bits"]): row for row in rows if not row.get("skipped")}
    fp = by_key[("fp_student", 32)]
    assert fp["reevaluated_accuracy"] == pytest.approx(fp["accuracy"])
    assert by_key[("quads_mct", 2)]["packed_mb"] < fp["packed_mb"] / 6
    for method in ("kmeans_ptq", "sequential", "quads_mct_random_init", "coremltools_dkm"):
        assert by_key[(method, 2)]["packed_mb"] == pytest.approx(
            by_key[("quads_mct", 2)]["packed_mb"], rel=0.01)
    assert by_key[("torch_dynamic_int8", 8)]["packed_mb"] < fp["packed_mb"] / 2
    assert by_key[("teacher", 32)]["gmacs"] > fp["gmacs"]


def test_quick_dkm_runs_and_is_palettized(quick):
    rows = [row for row in quick[2] if row["method"] == "coremltools_dkm"]
    assert [row["bits"] for row in rows] == [2]
    for row in rows:
        assert not row.get("skipped"), row["skipped"]
        assert 1 < row["unique_values_max"] <= 2 ** row["bits"]


def test_quick_report_and_plot(quick):
    output, _, _ = quick
    text = (output / "results.md").read_text()
    assert "python benchmarks/run.py --quick" in text and "| QUADS (MCT) | 2 |" in text
    assert "## Targets" in text and "cores" in text
    assert (output / "accuracy_vs_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_reuses_every_result(quick):
    output, work, rows = quick
    again = output.parent / "again"
    start = time.perf_counter()
    _run("benchmarks/run.py", "--quick", "--output", str(again), "--work", str(work), timeout=300)
    assert time.perf_counter() - start < 120
    assert json.loads((again / "results.json").read_text()) == rows


def test_work_folder_of_another_configuration_is_refused(quick):
    _, work, _ = quick
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--seed", "7",
                             "--work", str(work), "--output", str(work.parent / "refused")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "use another --work" in result.stderr


def test_latency_tiny(tmp_path):
    out = tmp_path / "latency.json"
    _run("benchmarks/latency.py", "--seconds", "1", "--repeats", "1", "--json", str(out),
         timeout=300)
    data = json.loads(out.read_text())
    assert data["threads"] == 2 and data["batch"] == 1 and data["quads_bits"] == 4
    cells = {(r["model"], r["mode"]) for r in data["results"]}
    assert cells == {(m, mode) for m in ("quads", "fp_student", "teacher", "dynamic_int8")
                     for mode in ("variable", "pad_30s")}
    assert all(r["latency_ms"] > 0 and r["seconds"] == 1.0 for r in data["results"])
    for ratio in data["ratios"]:
        assert all(value > 0 for key, value in ratio.items() if key.endswith(("quads", "int8")))
    assert data["quads_file_mb"] < data["student_params"] * 4 / 2**20 / 5
