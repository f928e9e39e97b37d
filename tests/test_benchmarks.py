"""The comparison benchmark (--quick) and the latency benchmark, run as a user runs them."""

import functools
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from readme_commands import documented_commands

from speechbrain_quads.evaluation.stats import clopper_pearson, mcnemar_exact

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import report  # noqa: E402  (benchmarks/report.py: the results store)

ROW_KEYS = {"method", "bits", "seed", "corpus", "n_test", "n_intents", "accuracy", "ci95",
            "macro_f1", "packed_mb", "gmacs", "train_seconds"}
METHODS = {"teacher", "student_probe", "fp_student", "kmeans_ptq", "kmeans_ptq_optimal",
           "kmeans_ptq_sensitive", "kmeans_ptq_mixed", "kmeans_ptq_outliers", "sequential",
           "quads_mct", "quads_mct_random_init", "torch_dynamic_int8", "coremltools_dkm",
           "coremltools_skm"}
QUICK_PAIRS = {("student_probe:32", "fp_student:32"), ("teacher:32", "fp_student:32"),
               *{("quads_mct:2", f"{peer}:2") for peer in (
                   "sequential", "kmeans_ptq", "coremltools_dkm", "coremltools_skm",
                   "quads_mct_random_init", "kmeans_ptq_sensitive")},
               ("kmeans_ptq:2", "kmeans_ptq_optimal:2"), ("kmeans_ptq:2", "kmeans_ptq_sensitive:2"),
               ("kmeans_ptq_sensitive:2", "coremltools_skm:2"),
               ("kmeans_ptq_sensitive:2", "kmeans_ptq_optimal:2"),
               ("kmeans_ptq_mixed:2", "kmeans_ptq_sensitive:2"),
               ("kmeans_ptq_outliers:2", "kmeans_ptq_sensitive:2")}


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    """Run a benchmark script from the repository root; fail with its output if it fails."""
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, Path, dict]:
    """Output folder, work folder and results.json of one ``run.py --quick``."""
    root = tmp_path_factory.mktemp("bench")
    output, work = root / "out", root / "work"
    _run("benchmarks/run.py", "--quick", "--output", str(output), "--work", str(work),
         timeout=900)
    return output, work, json.loads((output / "results.json").read_text())


def _rows(results: dict) -> dict:
    return {(row["method"], row["bits"]): row for row in results["rows"]}


def test_quick_rows_cover_every_method_with_sane_values(quick):
    output, _, results = quick
    assert {row["method"] for row in results["rows"]} == METHODS
    for row in results["rows"]:
        assert ROW_KEYS <= set(row), row
        assert (row["corpus"], row["seed"], row["n_intents"]) == ("mini_quick", 1, 4)
        assert row["bits"] in (2, 8, 32)
        assert not row.get("skipped"), row["skipped"]
        assert row["n_test"] == 12 and 0.0 <= row["macro_f1"] <= 1.0
        correct = report.read_predictions(output, row)  # file name -> 0/1, the same 12 for all
        assert len(correct) == 12 and all(name.endswith((".wav", ".flac")) for name in correct)
        right = sum(correct.values())
        assert row["accuracy"] == pytest.approx(right / 12)
        assert row["ci95"] == pytest.approx(list(clopper_pearson(right, 12)))
        assert row["ci95"][0] <= row["accuracy"] <= row["ci95"][1]
        assert row["packed_mb"] > 0 and row["gmacs"] > 0 and row["train_seconds"] >= 0
    by_key = _rows(results)
    fp = by_key[("fp_student", 32)]
    assert fp["reevaluated_accuracy"] == pytest.approx(fp["accuracy"])  # in-process == train.py
    for method in ("teacher", "student_probe", "kmeans_ptq", "kmeans_ptq_optimal",
                   "kmeans_ptq_sensitive", "kmeans_ptq_mixed", "kmeans_ptq_outliers",
                   "torch_dynamic_int8", "coremltools_dkm",
                   "coremltools_skm"):  # derived from this very fp student
        row = next(r for r in results["rows"] if r["method"] == method)
        assert row["fp_model_sha256"] == fp["model_sha256"]
    assert by_key[("quads_mct", 2)]["packed_mb"] < fp["packed_mb"] / 6
    per_tensor = by_key[("kmeans_ptq", 2)]["packed_mb"]  # one 4-value codebook per tensor
    for method in ("kmeans_ptq_optimal", "kmeans_ptq_sensitive", "kmeans_ptq_mixed",
                   "coremltools_dkm", "coremltools_skm"):
        assert by_key[(method, 2)]["packed_mb"] == pytest.approx(per_tensor, rel=0.01)
    per_row = by_key[("quads_mct", 2)]["packed_mb"]  # the 2-bit recipe: row codebooks, outliers
    for method in ("sequential", "quads_mct_random_init"):
        assert by_key[(method, 2)]["packed_mb"] == pytest.approx(per_row, rel=0.01)
    outliers = by_key[("kmeans_ptq_outliers", 2)]["packed_mb"] - per_tensor  # 0.5 % of weights
    assert per_tensor + outliers < per_row < 1.2 * per_tensor + outliers
    assert outliers > 0
    assert by_key[("torch_dynamic_int8", 8)]["packed_mb"] < fp["packed_mb"] / 2
    assert by_key[("teacher", 32)]["gmacs"] > fp["gmacs"]
    assert by_key[("teacher", 32)]["packed_mb"] > by_key[("student_probe", 32)]["packed_mb"]


def test_quick_comparisons_are_exact_mcnemar_on_the_stored_predictions(quick):
    output, _, results = quick
    assert {(c["a"], c["b"]) for c in results["comparisons"]} == QUICK_PAIRS
    by_key = _rows(results)
    for item in results["comparisons"]:
        rows = [by_key[tuple(int(x) if x.isdigit() else x for x in spec.split(":"))]
                for spec in (item["a"], item["b"])]
        a, b = (report.read_predictions(output, row) for row in rows)
        assert item["a_only"] == sum(a[f] and not b[f] for f in a)
        assert item["b_only"] == sum(b[f] and not a[f] for f in a)
        assert item["p_value"] == mcnemar_exact(item["a_only"], item["b_only"])
        assert (item["accuracy_a"], item["accuracy_b"]) == pytest.approx(
            (rows[0]["accuracy"], rows[1]["accuracy"]))
        assert item["n"] == 12 and (item["corpus"], item["seed"]) == ("mini_quick", 1)


def test_quick_coremltools_peers_are_palettized(quick):
    by_key = _rows(quick[2])
    dkm, skm = by_key[("coremltools_dkm", 2)], by_key[("coremltools_skm", 2)]
    assert 1 < dkm["unique_values_max"] <= 4 and dkm["kmeans_fallback"] == []
    assert (dkm["epochs"], dkm["steps"], dkm["trial_epochs"]) == (1, 2, 0)  # 28 files, batch 16
    assert (dkm["lr_encoder"], dkm["lr_trials"]) == (5e-5, [])  # quick: one candidate
    assert 1 < skm["unique_values_max"] <= 4 and skm["calibration_samples"] == 8
    assert skm["kmeans_fallback"] == ["student.encoder.conv1", "student.encoder.conv2"]


def test_quick_report_and_plot(quick):
    output, _, results = quick
    text = (output / "results.md").read_text()
    assert "python benchmarks/run.py --quick" in text and "| QUADS (MCT) | 2 | 1 |" in text
    assert "95% CI" in text and "### Paired comparisons" in text and "cores" in text
    for item in results["comparisons"]:
        line = next(x for x in text.splitlines() if x.startswith(
            f"| {report._name(item['a'])} | {report._name(item['b'])} |"))
        win = item["p_value"] < 0.05 and item["a_only"] != item["b_only"]
        assert ("better" in line) == win and ("no measurable difference" in line) != win
    assert (output / "accuracy_vs_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_skips_finished_rows_and_redo_merges_one(quick):
    output, work, results = quick
    start = time.perf_counter()
    again = _run("benchmarks/run.py", "--quick", "--output", str(output), "--work", str(work),
                 "--seeds", "1", timeout=300)  # the default seed, named as README's selection does
    assert time.perf_counter() - start < 120
    assert again.stdout.count("in results.json") == len(results["rows"])
    after = json.loads((output / "results.json").read_text())
    assert after["rows"] == results["rows"]
    assert len(after["invocations"]) == len(results["invocations"]) + 1
    _run("benchmarks/run.py", "--quick", "--output", str(output), "--work", str(work),
         "--methods", "kmeans_ptq:2", "--redo", timeout=300)
    redone = json.loads((output / "results.json").read_text())
    assert redone["invocations"][-1]["rows"] == ["kmeans_ptq_2bit_seed1"]
    assert sorted(map(report.row_key, redone["rows"])) == sorted(
        map(report.row_key, results["rows"]))
    assert _rows(redone)[("kmeans_ptq", 2)]["accuracy"] == _rows(results)[("kmeans_ptq", 2)][
        "accuracy"]  # re-used from the work folder's cache


def test_store_keeps_other_corpora_and_refuses_another_test_set(tmp_path):
    path = tmp_path / "results.json"
    row = {"method": "kmeans_ptq", "bits": 4, "seed": 1, "corpus": "mini", "n_test": None,
           "n_intents": 3, "accuracy": 0.75, "ci95": None, "macro_f1": 0.7, "packed_mb": 3.7,
           "gmacs": 0.8, "train_seconds": 1.0}
    report.store_row(path, row, {"a.wav": 1, "b.wav": 1, "c.wav": 1, "d.wav": 0})
    report.store_row(path, {**row, "corpus": "slurp_text", "accuracy": 0.5},
                     {"x.flac": 1, "y.flac": 0})
    report.store_row(path, {**row, "accuracy": 0.5}, {"a.wav": 1, "b.wav": 0, "c.wav": 1,
                                                      "d.wav": 0})
    stored = report.load(path)["rows"]
    assert [(r["corpus"], r["accuracy"], r["n_test"]) for r in stored] == [
        ("slurp_text", 0.5, 2), ("mini", 0.5, 4)]
    assert stored[1]["ci95"] == pytest.approx([0.0675860, 0.9324140], abs=1e-7)
    assert (tmp_path / "predictions/mini/kmeans_ptq_4bit_seed1.json").read_text() == (
        '{"correct": "1010"}\n')
    with pytest.raises(ValueError, match="differ from the 4 of"):
        report.store_row(path, row, {"a.wav": 1, "b.wav": 1, "c.wav": 1, "e.wav": 0})
    with pytest.raises(ValueError, match="accuracy 0.75 but 1/4 correct"):
        report.store_row(path, row, {"a.wav": 1, "b.wav": 0, "c.wav": 0, "d.wav": 0})


def _store_rows(path: str, seed: int, count: int, start) -> None:
    """Store ``count`` rows of one seed (run in another process, once ``start`` lets it)."""
    start.wait()
    for bits in range(1, count + 1):
        row = {"method": "kmeans_ptq", "bits": bits, "seed": seed, "corpus": "mini",
               "n_test": None, "n_intents": 2, "accuracy": 0.5, "ci95": None}
        report.store_row(Path(path), row, {"a.wav": 1, "b.wav": 0})


def test_two_processes_storing_at_once_lose_no_row(tmp_path):
    import multiprocessing

    path = tmp_path / "results.json"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=_store_rows, args=(str(path), seed, 40, start))
               for seed in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    rows = report.load(path)["rows"]
    assert sorted((r["seed"], r["bits"]) for r in rows) == [
        (seed, bits) for seed in (1, 2) for bits in range(1, 41)]


def test_rows_of_two_corpus_generations_are_not_paired(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "audio").mkdir(parents=True)
    (corpus / "audio" / "a.flac").write_bytes(b"first take")
    first = report.corpus_sha256(corpus)
    (corpus / "audio" / "a.flac").write_bytes(b"second take")
    assert report.corpus_sha256(corpus) != first
    path = tmp_path / "results.json"
    row = {"method": "fp_student", "bits": 32, "seed": 1, "corpus": "c", "n_test": None,
           "n_intents": 2, "accuracy": 0.5, "ci95": None, "corpus_sha256": first}
    report.store_row(path, row, {"a": 1, "b": 0})
    report.store_row(path, {**row, "method": "quads_mct", "bits": 4}, {"a": 0, "b": 1})
    assert [(c["a"], c["b"]) for c in report.load(path)["comparisons"]] == [
        ("fp_student:32", "quads_mct:4")]
    report.store_row(path, {**row, "method": "quads_mct", "bits": 4,
                            "corpus_sha256": report.corpus_sha256(corpus)}, {"a": 0, "b": 1})
    assert report.load(path)["comparisons"] == []


def test_seed_table_gives_mean_spread_and_the_gap_to_fp_on_shared_seeds():
    def row(method, bits, seed, accuracy):
        return {"method": method, "bits": bits, "seed": seed, "accuracy": accuracy}

    rows = [row("fp_student", 32, 1, 0.30), row("fp_student", 32, 2, 0.34),
            row("quads_mct", 4, 1, 0.27), row("quads_mct", 4, 2, 0.29),
            row("quads_mct", 4, 3, 0.31), row("quads_mct", 8, 1, 0.33),
            row("quads_mct_sensitive", 4, 2, 0.30), row("quads_mct_sensitive", 4, 3, 0.30)]
    lines = report.seed_table(rows).splitlines()
    assert len(lines) == 5  # header, rule, fp, 4-bit QUADS, weighted (8 bits has one seed)
    assert lines[2].startswith("| Student, full precision (distilled) | 32 | 1, 2 | 30.00, 34.00 |")
    assert lines[2].endswith("| 32.00 | 2.83 | - | - |")
    # mean 29.00, std 2.00; gap on seeds 1 and 2: (-3 + -5) / 2 = -4, standard error
    # std(-3, -5) / sqrt(2) = 1 point, t(0.975, 1 degree of freedom) = 12.706
    assert lines[3] == ("| QUADS (MCT) | 4 | 1, 2, 3 | 27.00, 29.00, 31.00 | 29.00 | 2.00 | "
                        "-4.00 [-16.71, +8.71] (1, 2) | - |")
    # against fp on seed 2 only: -4; against 4-bit QUADS on seeds 2, 3: (+1 - 1) / 2 = 0,
    # standard error std(1, -1) / sqrt(2) = 1 point
    assert lines[4].endswith("| 30.00 | 0.00 | -4.00 (2) | +0.00 [-12.71, +12.71] (2, 3) |")
    one_shared = report.seed_table(rows[:1] + rows[2:4])
    assert one_shared.splitlines()[2].endswith("| -3.00 (1) | - |")
    assert report.seed_table(rows[:1] + rows[-1:]) is None
    # a mixed-width student in the 3-bit budget has no uniform 3-bit QUADS beside it: it is
    # set against the next wider width, 4 bits, on seeds 1 and 2: (-1 + -1) / 2 = -1, std 0
    mixed = rows + [row("quads_mct_mixed", 3, 1, 0.26), row("quads_mct_mixed", 3, 2, 0.28)]
    (mixed_line,) = [line for line in report.seed_table(mixed).splitlines()
                     if line.startswith(f"| {report.LABELS['quads_mct_mixed']} | 3 |")]
    assert mixed_line.endswith("| -1.00 [-1.00, -1.00] (1, 2), against 4 bits |")


def _screened(name: str, seed: int, valid: float, test: str, generation: str = "g1") -> dict:
    """A ``screen.py`` row: valid accuracy and per-recording test correctness."""
    return {"name": f"{name}_s{seed}", "seed": seed, "corpus_sha256": generation,
            "valid_sha256": None, "valid_set": None, "hparams": "slurp_4bit.yaml",
            "overrides": ["--mct_iterations=7"] if name == "mct7" else [], "from_run": None,
            "valid_accuracy": valid, "test_correct": test}


def test_screening_table_pairs_variants_by_seed_on_valid_and_test():
    rows = [_screened("fp", 1, 0.40, "1100"), _screened("fp", 2, 0.50, "1110"),
            _screened("quads4", 1, 0.30, "1000"), _screened("quads4", 2, 0.40, "1100"),
            _screened("quads4", 3, 0.35, "1111"),
            _screened("mct7", 1, 0.35, "1100"), _screened("mct7", 2, 0.30, "1111"),
            _screened("mct7", 3, 0.45, "1111"),
            _screened("single", 1, 0.90, "1111"),  # one seed: not summarised
            _screened("fp", 3, 0.90, "0000", generation="g2")]  # another corpus: never paired
    lines = report.screening_table(rows).splitlines()
    assert len(lines) == 5  # header, rule, fp, quads4, mct7
    fp, quads4, mct7 = (cells.split(" | ") for cells in lines[2:])
    assert fp[:6] == ["| fp", "slurp_4bit.yaml `(none)`", "`g1` / its own valid split", "1, 2",
                      "45.00", "62.50"]
    # fp minus quads4, seeds 1 and 2: valid +10 and +10 points (standard deviation 0); test
    # +25 and +25
    assert fp[6:] == ["-", "-", "+10.00 [+10.00, +10.00]", "+25.00 [+25.00, +25.00] |"]
    # quads4 minus fp on the two seeds fp has, which are not all of quads4's: named
    assert quads4[6:8] == ["-10.00 [-10.00, -10.00] (seeds 1, 2)",
                           "-25.00 [-25.00, -25.00] (seeds 1, 2)"]
    # mct7 minus quads4, seeds 1-3: valid +5, -10, +10 points: mean +1.67, standard deviation
    # 10.41, t(0.975, 2) = 4.3027: half-width 4.3027 * 10.41 / sqrt(3) = 25.86; test +25, +50, 0
    # -> mean +25, standard deviation 25, half-width 62.10
    assert mct7[1] == "slurp_4bit.yaml `--mct_iterations=7`"
    assert mct7[8:] == ["+1.67 [-24.19, +27.52]", "+25.00 [-37.10, +87.10] |"]
    assert report.screening_table(rows[-2:]) is None


def test_report_summarises_the_screening_files_results_json_lists(tmp_path):
    folder = tmp_path / "bench"
    folder.mkdir()
    rows = [_screened("fp", 1, 0.40, "1100"), _screened("fp", 2, 0.50, "1110"),
            _screened("quads4", 1, 0.30, "1000"), _screened("quads4", 2, 0.40, "1100")]
    (folder / "screening_x.json").write_text(json.dumps(rows))
    results = folder / "results.json"

    def run(*flags):
        return subprocess.run([sys.executable, "benchmarks/report.py", "--results", str(results),
                               *flags], cwd=REPO, capture_output=True, text=True, timeout=300)

    outside = tmp_path / "screening_y.json"
    outside.write_text("[]")
    result = run("--screening", str(outside))
    assert result.returncode == 2 and "must lie beside" in result.stderr
    assert run("--screening", str(folder / "screening_x.json")).returncode == 0
    assert report.load(results)["screenings"] == ["screening_x.json"]
    assert run().returncode == 0  # kept in the list: summarised again without the flag
    text = (folder / "results.md").read_text()
    assert "## Screening runs over training seeds: `screening_x.json`" in text
    assert "| quads4 | slurp_4bit.yaml `(none)` | `g1` / its own valid split | 1, 2 | 35.00 |" in text
    (folder / "screening_x.json").unlink()
    result = run()
    assert result.returncode == 2
    assert "lists the screening file 'screening_x.json'" in result.stderr
    (folder / "screening_x.json").write_text(json.dumps([{"name": "fp_s1", "seed": 1}]))
    result = run()
    assert result.returncode == 2 and "row 'fp_s1' lacks ['corpus_sha256', 'valid_accuracy']" in (
        result.stderr)


def test_post_training_rows_of_two_fp_trainings_are_marked_as_pipelines(tmp_path):
    path = tmp_path / "results.json"
    row = {"method": "kmeans_ptq", "bits": 4, "seed": 1, "corpus": "c", "n_test": None,
           "n_intents": 2, "accuracy": 0.5, "ci95": None, "fp_model_sha256": "aaaa"}
    report.store_row(path, row, {"a": 1, "b": 0})
    report.store_row(path, {**row, "method": "kmeans_ptq_optimal"}, {"a": 0, "b": 1})
    (same,) = report.load(path)["comparisons"]
    assert "fp_students_differ" not in same
    report.store_row(path, {**row, "method": "kmeans_ptq_optimal", "fp_model_sha256": "bbbb"},
                     {"a": 0, "b": 1})
    (differ,) = report.load(path)["comparisons"]
    assert differ["fp_students_differ"] is True
    assert "no measurable difference (from two fp trainings) |" in report.comparison_table(
        [differ])


@pytest.mark.parametrize(("epochs", "trained"), [
    (3, [(1, 1e-5), (1, 2e-4), (1, 5e-5), (3, 5e-5)]),  # trials of 1 epoch, then the best for 3
    (1, [(1, 1e-5), (1, 2e-4), (1, 5e-5)]),            # the best trial is the final run
])
def test_dkm_learning_rate_is_chosen_on_valid(monkeypatch, tmp_path, epochs, trained):
    import methods

    calls = []

    def fake(fp_run, bits, out_dir, epochs, batch_size, lr_encoder, lr_head, kmeans_iters, seed,
             splits=("test",), checkpoint=None):
        calls.append((epochs, lr_encoder))
        valid = {1e-5: 0.5, 5e-5: 0.75, 2e-4: 0.75}[lr_encoder]  # a tie: the smaller lr wins
        result = {"train_seconds": 10.0 * epochs, "steps": 2 * epochs, "export": str(out_dir)}
        if "valid" in splits:
            result["valid_accuracy"] = valid
        if "test" in splits:
            result["accuracy"] = 0.1 * epochs + lr_encoder
        return result

    monkeypatch.setattr(methods, "dkm_palettize", fake)
    out = tmp_path / "coremltools_dkm_4bit"
    result = methods.dkm_with_lr_search(Path("fp"), 4, out, epochs=epochs, trial_epochs=1,
                                        lrs=[1e-5, 2e-4, 5e-5], lr_head=1e-3, batch_size=16,
                                        kmeans_iters=3, seed=1)
    assert sorted(calls) == sorted(trained)
    assert result["lr_encoder"] == 5e-5 and result["accuracy"] == pytest.approx(0.1 * epochs + 5e-5)
    assert [(t["lr_encoder"], t["valid_accuracy"]) for t in result["lr_trials"]] == [
        (1e-5, 0.5), (5e-5, 0.75), (2e-4, 0.75)]
    assert result["train_seconds"] == 30.0 + (10.0 * epochs if epochs > 1 else 0.0)
    assert result["export"] == str(out if epochs > 1 else tmp_path / "coremltools_dkm_4bit_lr5e-05")
    assert "valid_accuracy" not in result

    # with a checkpoint folder, finished trials are kept: a second search trains only what is left
    monkeypatch.setattr(methods, "_fp_model_sha256", lambda fp_run: "fp-sha")
    search = functools.partial(methods.dkm_with_lr_search, Path("fp"), 4, out, epochs=epochs,
                               trial_epochs=1, lrs=[1e-5, 2e-4, 5e-5], lr_head=1e-3,
                               batch_size=16, kmeans_iters=3, seed=1,
                               checkpoints=tmp_path / "checkpoints")
    calls.clear()
    first = search()
    assert sorted(calls) == sorted(trained)
    calls.clear()
    again = search()
    assert calls == [c for c in trained if c[0] == epochs and epochs > 1]
    assert again["lr_trials"] == first["lr_trials"] and again["accuracy"] == first["accuracy"]
    # the checkpointed final run continues its trial: that trial's seconds are counted once
    assert first["train_seconds"] == 20.0 + (10.0 * epochs if epochs > 1 else 10.0)


def test_dkm_resumed_from_its_checkpoint_ends_as_an_uninterrupted_run(quick, tmp_path):
    """Two epochs of DKM in one go, and one epoch then a second run resuming from its
    checkpoint, end with the same palettized weights, optimizer state and scores."""
    import methods
    import torch

    _, work, _ = quick
    fp_run = next((work / "runs" / "seed1").glob("fp_student-*"))
    common = {"bits": 2, "out_dir": None, "batch_size": 16, "lr_encoder": 1e-4, "lr_head": 1e-3,
              "kmeans_iters": 1, "seed": 1, "splits": ("valid", "test")}
    whole = methods.dkm_palettize(fp_run, epochs=2, checkpoint=tmp_path / "whole.pt", **common)
    methods.dkm_palettize(fp_run, epochs=1, checkpoint=tmp_path / "parts.pt", **common)
    first = torch.load(tmp_path / "parts.pt", weights_only=True)
    assert first["epoch"] == 1
    resumed = methods.dkm_palettize(fp_run, epochs=2, checkpoint=tmp_path / "parts.pt", **common)
    a, b = (torch.load(tmp_path / name, weights_only=True) for name in ("whole.pt", "parts.pt"))
    assert a["epoch"] == b["epoch"] == 2

    def same(x, y) -> bool:  # coremltools keeps centroids and partitions as lists of tensors
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and torch.equal(x, y)
        if isinstance(x, list | tuple):
            return len(x) == len(y) and all(map(same, x, y))
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        return x == y

    assert a["model"].keys() == b["model"].keys()
    assert all(same(a["model"][k], b["model"][k]) for k in a["model"])
    assert not all(same(a["model"][k], first["model"][k]) for k in a["model"])
    assert same(a["rng"], b["rng"]) and same(a["optimizer"], b["optimizer"])
    assert (resumed["correct"], resumed["valid_accuracy"]) == (whole["correct"],
                                                               whole["valid_accuracy"])
    assert resumed["train_seconds"] > b["seconds"] - first["seconds"]


def test_work_folder_of_another_configuration_is_refused(quick):
    _, work, _ = quick
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--corpus-dir",
                             str(work / "corpus"), "--work", str(work), "--output",
                             str(work.parent / "refused")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "use another --work" in result.stderr


def test_a_corpus_folder_that_is_not_there_is_named_before_anything_trains(capsys, tmp_path):
    import run

    with pytest.raises(SystemExit):
        run.parse_args(["--corpus", "slurp_text", "--corpus-dir", str(tmp_path / "missing"),
                        "--work", str(tmp_path / "work")])
    assert f"--corpus-dir {tmp_path / 'missing'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_rows_of_another_corpus_generation_are_refused(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "slurp_real").mkdir(parents=True)
    (corpus / "slurp_real" / "a.flac").write_bytes(b"this take")
    output = tmp_path / "out"
    row = {"method": "teacher", "bits": 32, "seed": 1, "corpus": "slurp_text", "n_test": 1,
           "n_intents": 2, "accuracy": 1.0, "ci95": None, "corpus_sha256": "0123456789abcdef"}
    report.store_row(output / "results.json", row, {"a": 1})
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--corpus", "slurp_text",
                             "--corpus-dir", str(corpus), "--work", str(tmp_path / "work"),
                             "--output", str(output), "--methods", "teacher"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "0123456789abcdef" in result.stderr and report.corpus_sha256(corpus) in result.stderr


def test_the_same_corpus_spoken_on_another_cpu_is_accepted_only_if_its_probes_agree(
        monkeypatch, tmp_path):
    """Corpus files whose SHA-256 differs from the table's are taken as its generation only when
    the frozen-encoder probes, re-measured on them, get each test recording right or wrong as
    stored; the acceptance is recorded, and a later invocation needs no check."""
    import run

    corpus = tmp_path / "corpus"
    (corpus / "slurp_real").mkdir(parents=True)
    (corpus / "slurp_real" / "a.flac").write_bytes(b"this take, other rounding")
    (corpus / "test.jsonl").write_text(json.dumps({"recordings": [{"file": "a.flac"}]}) + "\n")
    output, generation = tmp_path / "out", "0123456789abcdef"
    stored = {"a": 1, "b": 0}
    for method in run.PROBES:
        report.store_row(output / "results.json", {
            "method": method, "bits": 32, "seed": 1, "corpus": "slurp_text", "n_test": None,
            "n_intents": 2, "accuracy": 0.5, "ci95": None, "corpus_sha256": generation}, stored)
    args = run.parse_args(["--corpus", "slurp_text", "--corpus-dir", str(corpus), "--work",
                           str(tmp_path / "work"), "--output", str(output), "--methods", "teacher"])
    remeasured = {"teacher": {"a": 1, "b": 0}, "student_probe": {"a": 1, "b": 1}}
    monkeypatch.setattr(run.Benchmark, "derived_row",
                        lambda self, method, bits, seed: ({}, remeasured[method]))

    bench = run.Benchmark(args)
    assert bench.unverified == generation and bench.files_sha256 == report.corpus_sha256(corpus)
    with pytest.raises(SystemExit, match=r"differ from their stored rows on .*'student_probe': 1"):
        bench.run()
    assert "slurp_text" not in json.loads((output / "results.json").read_text())["corpora"]

    remeasured["student_probe"] = dict(stored)
    bench = run.Benchmark(args)
    bench._verify_equivalence()
    assert (bench.corpus_sha256, bench.unverified) == (generation, None)
    accepted = json.loads((output / "results.json").read_text())["corpora"]["slurp_text"]
    entry = accepted["equivalent_sha256"][bench.files_sha256]
    assert entry["generation"] == generation and "2 test recordings" in entry["evidence"]
    assert set(entry["split_sha256"]) == {"test"}
    again = run.Benchmark(args)
    assert (again.corpus_sha256, again.unverified) == (generation, None)


def test_a_probe_is_measured_again_on_other_corpus_files(monkeypatch, tmp_path):
    """A frozen encoder's probe row is cached per fp run, seed and corpus files: the check of
    a corpus spoken again must measure the probes on the new files, not return the old ones."""
    from types import SimpleNamespace

    import run

    folder = tmp_path / "fp_run"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text(json.dumps(
        {"labels": ["a", "b"], "model_sha256": "f" * 64}))
    bench = run.Benchmark.__new__(run.Benchmark)
    bench.work, bench.args = tmp_path / "work", SimpleNamespace(label="slurp_text")
    bench.files_sha256 = bench.corpus_sha256 = "files of one take"
    monkeypatch.setattr(bench, "fp", lambda seed: {"folder": str(folder), "compute": {
        "student_gmacs_real_length": 1.0, "student_gmacs_30s": 2.0,
        "teacher_gmacs_real_length": 3.0, "teacher_gmacs_30s": 4.0}})
    measured = []

    def probe(method, run_folder, seed):
        measured.append(bench.files_sha256)
        return {"accuracy": 0.5, "size_mb": 1.0, "correct": {"x": 1, "y": 0}}

    monkeypatch.setattr(bench, "_probe", probe)
    for files in ("files of one take", "files of one take", "files spoken again"):
        bench.files_sha256 = files
        row, correct = bench.derived_row("teacher", 32, 1)
        assert correct == {"x": 1, "y": 0} and row["accuracy"] == 0.5
    assert measured == ["files of one take", "files spoken again"]


def test_two_invocations_needing_one_run_train_it_once(monkeypatch, tmp_path):
    """The fp student behind two side-by-side invocations' rows is trained by one of them; the
    other waits for it instead of training into the same folder."""
    import threading

    import run

    trainings = []

    def fake_train(hparams, corpus, output, args):
        trainings.append(output)
        time.sleep(0.5)  # the second caller arrives while this one trains
        output.mkdir(parents=True, exist_ok=True)
        (output / "summary.json").write_text(json.dumps({"test_accuracy": 0.5}))

    monkeypatch.setattr(run.demo, "train", fake_train)
    bench = run.Benchmark.__new__(run.Benchmark)
    bench.work, bench.corpus, bench.train_args, bench.fresh = tmp_path, tmp_path, [], set()
    results = []
    callers = [threading.Thread(target=lambda: results.append(
        bench.train(1, "fp_student", run.FP_HPARAMS, []))) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)
    assert len(trainings) == 1 and len(results) == 2
    assert results[0]["folder"] == results[1]["folder"] == str(trainings[0])
    assert {r["test_accuracy"] for r in results} == {0.5}


def test_methods_option_is_checked():
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--methods", "quads_mct:4,bogus"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "unknown method 'bogus'" in result.stderr
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--methods", "fp_student:4"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "fp_student cannot run at [4] bits" in result.stderr


def test_latency_tiny(tmp_path):
    out, md = tmp_path / "latency.json", tmp_path / "latency.md"
    _run("benchmarks/latency.py", "--seconds", "1", "--repeats", "1", "--threads", "2",
         "--json", str(out), "--markdown", str(md), timeout=300)
    data = json.loads(out.read_text())
    assert data["threads"] == [2] and data["batch"] == 1 and data["quads_bits"] == 4
    models = ("quads", "fp_student", "teacher", "dynamic_int8", "ort_fp32", "ort_quads",
              "ort_quads_int8")
    cells = {(r["model"], r["mode"]) for r in data["results"]}
    assert cells == {(m, mode) for m in models for mode in ("variable", "pad_30s")}
    assert all(r["latency_ms"] > 0 and r["seconds"] == 1.0 and r["threads"] == 2
               for r in data["results"])
    for ratio in data["ratios"]:
        assert all(value > 0 for key, value in ratio.items() if key.endswith(("quads", "int8")))
    assert data["quads_file_mb"] < data["student_params"] * 4 / 2**20 / 5
    assert data["ort_quads_file_mb"] <= 1.15 * data["quads_file_mb"]
    assert data["int8_vs_float"]["clips"] == 24 and data["int8_vs_float"]["float_accuracy"] >= 0.9
    assert "| 1 | variable | 2 |" in md.read_text()


def test_screen_scores_runs_on_valid_and_pairs_them(quick, tmp_path):
    """``screen.py --from-run``: a finished run's valid accuracy per recording, with its CI and
    the exact McNemar p against every other screened variant of the same corpus."""
    from speechbrain_quads.evaluation.stats import compare

    _, work, _ = quick
    output = tmp_path / "screening.json"
    for name, run in (("fp", "fp_student"), ("quads", "quads_mct_2bit")):
        _run("benchmarks/screen.py", "--corpus-dir", str(work / "corpus"), "--name", name,
             "--from-run", str(next((work / "runs" / "seed1").glob(f"{run}-*"))),
             "--output", str(output),
             timeout=300)
    fp, quads = json.loads(output.read_text())
    for row in (fp, quads):
        right = row["valid_correct"].count("1")
        assert row["n_valid"] == len(row["valid_correct"]) == 8
        assert row["valid_accuracy"] == pytest.approx(right / 8)
        assert row["valid_ci95"] == pytest.approx(list(clopper_pearson(right, 8)))
        assert len(row["test_correct"]) == 12
    p_value = compare(*({i: int(c) for i, c in enumerate(r["valid_correct"])}
                        for r in (fp, quads))).p_value
    assert fp["vs"] == {"quads": p_value} and quads["vs"] == {"fp": p_value}
    table = _run("benchmarks/screen.py", "--table", "--output", str(output),
                 timeout=120).stdout.splitlines()
    fp_run = next((work / "runs" / "seed1").glob("fp_student-*"))
    assert fp["hparams"] is None and fp["from_run"] == str(fp_run)
    assert len(table) == 4 and table[2].startswith(
        f"| fp | run seed1/{fp_run.name} | `(finished run)` |")
    assert f"| {100 * fp['valid_accuracy']:.2f} |" in table[2]


def test_screen_trains_slurp_4bit_by_default_and_a_finished_run_takes_no_recipe(capsys,
                                                                                   tmp_path):
    """``--hparams`` names what ``screen.py`` trains; a ``--from-run`` row was trained already,
    so giving it a recipe file or train.py overrides is refused rather than recorded; a folder
    argument that is not a folder is named before anything trains."""
    import screen  # benchmarks/screen.py

    c, r = str(tmp_path), str(tmp_path)
    assert screen.parse_args(["--corpus-dir", c, "--name", "n"]).hparams == "slurp_4bit.yaml"
    assert screen.parse_args(["--corpus-dir", c, "--name", "n", "--from-run", r]).hparams is None
    for extra in (["--hparams", "slurp_32bit.yaml"], ["--", "--alpha=0.9"]):
        with pytest.raises(SystemExit):
            screen.parse_args(["--corpus-dir", c, "--name", "n", "--from-run", r, *extra])
        assert "--from-run scores a run trained already" in capsys.readouterr().err
    for flag in ("--corpus-dir", "--valid-dir", "--from-run"):
        arguments = {"--corpus-dir": c, flag: str(tmp_path / "missing")}
        with pytest.raises(SystemExit):
            screen.parse_args([*(w for pair in arguments.items() for w in pair), "--study",
                               "codebook"])
        assert f"{flag} {tmp_path / 'missing'}: no such folder" in capsys.readouterr().err


def test_screen_scores_on_a_second_valid_set(quick, tmp_path):
    """``screen.py --valid-dir``: the valid lines spoken again (``generate.py slurp-text-valid``)
    are scored instead of the corpus' own; rows pair only with rows of the same valid set, by
    recording (McNemar) and by sentence (sign-flip test)."""
    from speechbrain_quads.evaluation.stats import compare_by_cluster
    _, work, _ = quick
    corpus, again = work / "corpus", tmp_path / "klatt"
    _run("recipes/mini_corpus/generate.py", "slurp-text-valid", "--corpus", str(corpus),
         str(again), "--recordings", "2", timeout=300)
    output = tmp_path / "screening.json"
    fp_run = str(next((work / "runs" / "seed1").glob("fp_student-*")))
    for name, valid_dir in (("fp", None), ("fp_klatt", again), ("quads_klatt", again)):
        run = fp_run if name != "quads_klatt" else str(
            next((work / "runs" / "seed1").glob("quads_mct_2bit-*")))
        _run("benchmarks/screen.py", "--corpus-dir", str(corpus), "--name", name,
             "--from-run", run, "--output", str(output), "--work", str(tmp_path / "work"),
             *(["--valid-dir", str(valid_dir)] if valid_dir else []), timeout=300)
    rows = {row["name"]: row for row in json.loads(output.read_text())}
    lines = (again / "devel.jsonl").read_text().splitlines()
    assert rows["fp"]["n_valid"] == 8 and rows["fp"]["valid_set"] is None
    for name in ("fp_klatt", "quads_klatt"):
        assert rows[name]["n_valid"] == 2 * len(lines) == len(rows[name]["valid_correct"])
        assert rows[name]["valid_set"] == str(again.resolve())
        assert rows[name]["valid_sha256"] == hashlib.sha256(
            (again / "devel.jsonl").read_bytes()).hexdigest()
    assert set(rows["fp"]["vs"]) == set() and set(rows["fp_klatt"]["vs"]) == {"quads_klatt"}
    sentences = rows["fp_klatt"]["valid_sentence"].split()
    assert len(sentences) == rows["fp_klatt"]["n_valid"] and len(set(sentences)) == len(lines)
    assert all(sentences.count(one) == 2 for one in sentences)
    fp_bits, quads_bits = ({i: int(c) for i, c in enumerate(rows[name]["valid_correct"])}
                           for name in ("fp_klatt", "quads_klatt"))
    assert rows["fp_klatt"]["vs_by_sentence"] == {"quads_klatt": pytest.approx(
        compare_by_cluster(fp_bits, quads_bits, dict(enumerate(sentences))))}
    assert rows["fp"]["vs_by_sentence"] == {}
    assert rows["fp_klatt"]["test_correct"] == rows["fp"]["test_correct"]

    _run("benchmarks/screen.py", "--corpus-dir", str(corpus), "--name", "fp", "--from-run", fp_run,
         "--output", str(output), "--work", str(tmp_path / "work"), "--valid-dir", str(again),
         timeout=300)
    named_fp = [row for row in json.loads(output.read_text()) if row["name"] == "fp"]
    assert [row["valid_set"] for row in named_fp] == [None, str(again.resolve())]
    assert named_fp[0]["valid_correct"] == rows["fp"]["valid_correct"]
    assert named_fp[1]["valid_correct"] == rows["fp_klatt"]["valid_correct"]
    assert named_fp[0]["vs"] == {} and set(named_fp[1]["vs"]) == {"fp_klatt", "quads_klatt"}

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "devel.jsonl").write_text("\n".join(
        line.replace('"scenario": "', '"scenario": "unheard') for line in lines) + "\n")
    (bad / "slurp_real").symlink_to(again / "slurp_real")
    result = subprocess.run([sys.executable, "benchmarks/screen.py", "--corpus-dir", str(corpus),
                             "--name", "bad", "--from-run", fp_run, "--valid-dir", str(bad),
                             "--output", str(output), "--work", str(tmp_path / "work")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"{bad / 'devel.jsonl'}: " in result.stderr and "never trained on" in result.stderr


def test_a_study_skips_only_variants_screened_on_this_corpus_and_valid_set(quick, tmp_path,
                                                                           monkeypatch):
    """``--study`` trains what the output lacks for this corpus generation and valid set: a
    row of the same name measured on another corpus, or on another valid set, does not count."""
    import screen  # benchmarks/screen.py

    _, work, _ = quick
    output = tmp_path / "screening.json"
    args = screen.parse_args(["--corpus-dir", str(work / "corpus"), "--study", "schedule",
                              "--output", str(output)])
    _, generation, _ = screen.screened_set(args)
    output.write_text(json.dumps([
        {"name": "schedule_mct3", "corpus_sha256": generation, "valid_sha256": None},
        {"name": "schedule_mct7", "corpus_sha256": "another corpus", "valid_sha256": None},
        {"name": "schedule_mct3_2epoch", "corpus_sha256": generation, "valid_sha256": "other"},
    ]))
    trained = []
    monkeypatch.setattr(screen, "screen", lambda variant: trained.append(
        (variant.name, variant.hparams, variant.overrides)))
    screen.study(args)
    assert trained == [(name, hparams, overrides) for name, hparams, overrides
                       in screen.STUDIES["schedule"] if name != "schedule_mct3"]


def test_rows_and_runs_follow_their_recipe_file(quick, tmp_path):
    """A run's folder is named by its recipe file's digest, and a row measured under another
    version of its recipe file is measured again (runs of other defaults are never re-used)."""

    import plan  # benchmarks/plan.py

    output, work, results = quick
    digests = {bits: plan.recipe_sha256(f"hparams/slurp_{bits}bit.yaml") for bits in (2, 32)}
    by_key = _rows(results)
    for key, bits in ((("fp_student", 32), 32), (("quads_mct", 2), 2), (("kmeans_ptq", 2), 32)):
        assert by_key[key]["recipe_sha256"] == digests[bits]
    assert (work / "runs" / "seed1" / f"fp_student-{digests[32][:8]}" / "summary.json").is_file()
    sequential = plan.run_sha256("hparams/slurp_2bit.yaml", ["--strategy=sequential"])
    assert sequential != digests[2] and by_key["sequential", 2]["run_sha256"] == sequential
    assert by_key["sequential", 2]["overrides"] == ["--strategy=sequential"]
    assert (work / "runs" / "seed1" / f"sequential_2bit-{sequential[:8]}" / "summary.json").is_file()
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    stale = json.loads((copy / "results.json").read_text())
    for row in stale["rows"]:
        if (row["method"], row["bits"]) == ("kmeans_ptq", 2):
            row["recipe_sha256"] = "0" * 16  # as if measured under an older slurp_32bit.yaml
    (copy / "results.json").write_text(json.dumps(stale))
    again = _run("benchmarks/run.py", "--quick", "--work", str(work), "--output", str(copy),
                 "--methods", "kmeans_ptq,torch_dynamic_int8", timeout=300)
    assert "kmeans_ptq 2 bits seed 1: in results.json" not in again.stdout
    assert "stored mini_quick/kmeans_ptq_2bit_seed1" in again.stdout
    assert "torch_dynamic_int8 8 bits seed 1: in results.json" in again.stdout
    row = next(r for r in json.loads((copy / "results.json").read_text())["rows"]
               if (r["method"], r["bits"]) == ("kmeans_ptq", 2))
    assert row["recipe_sha256"] == digests[32]


def test_work_folder_of_another_corpus_is_refused(quick, tmp_path):
    """Runs of another corpus or schedule are not re-used."""

    _, work, _ = quick
    copy = tmp_path / "work"
    shutil.copytree(work / "corpus", copy / "corpus")
    config = json.loads((work / "benchmark_config.json").read_text())
    (copy / "benchmark_config.json").write_text(json.dumps({**config,
                                                             "train_args": ["--mct_iterations=9"]}))
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--work", str(copy),
                             "--output", str(tmp_path / "refused")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "use another --work" in result.stderr


def test_readme_report_command_rewrites_the_committed_tables_unchanged(tmp_path):
    """README's two ``python benchmarks/report.py`` commands, run as written from the root of a
    copy of the benchmark folder: each recomputes every paired test from the committed
    per-recording files and writes the committed ``results.md`` and ``results.json`` again,
    byte for byte (so they are what the rows say), and draws the plot."""
    copy = tmp_path / "benchmarks"
    copy.mkdir()
    listed = json.loads((REPO / "benchmarks" / "results.json").read_text())["screenings"]
    for name in ("report.py", "results.json", "results.md", *listed):
        shutil.copy2(REPO / "benchmarks" / name, copy / name)
    shutil.copytree(REPO / "benchmarks" / "predictions", copy / "predictions")
    commands = documented_commands(REPO / "README.md", "python benchmarks/report.py")
    assert len(commands) == 2  # redraw; and summarise a screening file (listed already)
    for words in commands:
        (copy / "results.md").write_text("stale\n")
        result = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        for name in ("results.md", "results.json"):
            assert (copy / name).read_text() == (REPO / "benchmarks" / name).read_text(), name
    assert (copy / "accuracy_vs_size.png").stat().st_size > 10_000


def test_readme_screening_table_command_runs_as_written():
    """``benchmarks/README.md``'s two ``screen.py --table ...`` commands, as written, on the
    committed screening files."""
    first, klatt = [words for words in documented_commands(
        REPO / "benchmarks" / "README.md", "python benchmarks/screen.py") if "--table" in words]
    lines = _run(*first[1:], timeout=120).stdout.splitlines()
    assert lines[0].endswith("| p vs fp_probe_init | p vs quads4_probe_init |")
    assert any(line.startswith("| quads4_probe_ste_optimal_reassign |") for line in lines)
    lines = _run(*klatt[1:], timeout=120).stdout.splitlines()
    assert lines[0].endswith("| p vs fp_s1 | p vs quads4_s1 | p by sentence vs fp_s1 | "
                             "p by sentence vs quads4_s1 |") and len(lines) >= 4


def test_layer_sensitivity_scores_each_group_on_valid_and_merges_rows(quick, tmp_path):
    """``layer_sensitivity.py``: one row per (granularity, group), valid accuracy inside its
    exact interval, the group's tensors only, per-row codebooks costing more bytes; a second
    invocation replaces its own rows and keeps the others."""
    _, work, _ = quick
    fp_run = next((work / "runs" / "seed1").glob("fp_student-*"))
    out = tmp_path / "sensitivity.json"
    _run("benchmarks/layer_sensitivity.py", str(fp_run), "--bits", "2", "--granularity",
         "per_tensor,per_row", "--groups", "head,all", "--json", str(out), timeout=600)
    rows = {(r["granularity"], r["group"]): r for r in json.loads(out.read_text())}
    assert set(rows) == {(g, group) for g in ("per_tensor", "per_row") for group in ("head", "all")}
    for row in rows.values():
        low, high = row["valid_ci95"]
        assert low <= row["valid_accuracy"] <= high and row["n_valid"] == 8
        assert 0 <= row["p_vs_fp"] <= 1 and row["bits"] == 2
    assert rows["per_tensor", "head"]["tensors"] == ["classifier.linear"]
    assert len(rows["per_tensor", "all"]["tensors"]) > 10
    assert rows["per_row", "all"]["packed_mb"] > rows["per_tensor", "all"]["packed_mb"]
    _run("benchmarks/layer_sensitivity.py", str(fp_run), "--groups", "head", "--json", str(out),
         timeout=600)
    assert len(json.loads(out.read_text())) == 4
    bad = subprocess.run([sys.executable, "benchmarks/layer_sensitivity.py", str(fp_run),
                          "--groups", "encoder"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--groups: unknown ['encoder']" in bad.stderr


def _allocate_then_die(n_bytes: int) -> dict:
    """Touch ``n_bytes`` of memory, then die as the out-of-memory killer kills (SIGKILL)."""
    import os
    import signal

    block = bytearray(n_bytes)
    block[::4096] = b"x" * len(block[::4096])
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def test_in_child_names_a_killed_child_and_its_peak_memory():
    """A DKM/SKM child killed from outside becomes an error that says so, with its peak memory
    at least the 300 MB it touched (the reason a skipped row carries into results.json)."""
    import run

    with pytest.raises(ChildProcessError, match="killed before it finished") as caught:
        run.in_child(_allocate_then_die, n_bytes=300_000_000)
    peak_gb = float(str(caught.value).split("peak memory ")[1].split(" GB")[0])
    assert peak_gb >= 0.3


def test_a_row_is_paired_only_on_its_own_corpus_predictions(tmp_path):
    """A row whose ``predictions`` field names another corpus' file (generation 2's rows once
    pointed at generation 3's), or a file that does not hold the row's accuracy, is refused
    by name instead of being paired."""
    folder = tmp_path / "benchmarks"
    for corpus in ("old", "new"):
        (folder / "predictions" / corpus).mkdir(parents=True)
        (folder / "predictions" / corpus / "recordings.json").write_text(
            json.dumps(["a", "b", "c", "d"]))
    (folder / "predictions" / "old" / "fp_32bit_seed1.json").write_text('{"correct": "1100"}')
    (folder / "predictions" / "new" / "fp_32bit_seed1.json").write_text('{"correct": "1110"}')
    row = {"method": "fp", "bits": 32, "seed": 1, "corpus": "old", "n_test": 4, "accuracy": 0.5,
           "predictions": "predictions/old/fp_32bit_seed1.json"}
    assert report.read_predictions(folder, row) == {"a": 1, "b": 1, "c": 0, "d": 0}
    with pytest.raises(ValueError, match=r"fp_32bit_seed1 of corpus 'old': its predictions file "
                                         r"predictions/new/fp_32bit_seed1.json is not under"):
        report.read_predictions(folder, {**row, "predictions": "predictions/new/fp_32bit_seed1.json"})
    with pytest.raises(ValueError, match=r"holds 2 of 4 right, the row 75.0000% of 4"):
        report.read_predictions(folder, {**row, "accuracy": 0.75})
