"""The benchmark commands of README.md and benchmarks/README.md, each run exactly as written
from a repository root built here, which holds a mini corpus at ``results/slurp_text_corpus``
(the path the commands name) in the place of the SLURP-sentence corpus: the run.py selection
(two seeds of the fp student and 4-bit QUADS, the recipes' full 11-epoch schedule), then the
commands that read its run folders."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from readme_commands import documented_commands

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RECORD = REPO / "benchmarks" / "README.md"
"""The benchmark's full record, with the commands that read finished runs."""
MINI_CORPUS = ["--n-train", "24", "--n-valid", "8", "--n-test", "12", "--n-synthetic", "4",
               "--n-speakers", "6", "--n-intents", "4", "--seed", "1"]
"""The quick benchmark's corpus sizes (``benchmarks/plan.py`` ``MINI["quick"]``)."""


def _as_written(root: Path, words: list[str], timeout: int = 900) -> str:
    """Run a README command (``python ...``) from ``root``; its stdout, or fail with its output."""
    result = subprocess.run([sys.executable, *words[1:]], cwd=root, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, " ".join(words) + result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def _value(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1]


def _run_selection_command() -> list[str]:
    """README's ``run.py`` command that names its ``--methods`` (the other runs every method)."""
    (words,) = [w for w in documented_commands(README, "python benchmarks/run.py")
                if "--methods" in w]
    return words


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A repository root (copies of the benchmark scripts, which find the repository from their
    own path, so every output lands here; the recipes and tests linked) after README's
    ``run.py --methods fp_student,quads_mct:4 --seeds 1,2`` command on a mini corpus."""
    root = tmp_path_factory.mktemp("readme") / "repo"
    (root / "benchmarks").mkdir(parents=True)
    for script in (REPO / "benchmarks").glob("*.py"):
        shutil.copy2(script, root / "benchmarks" / script.name)
    for folder in ("recipes", "tests"):
        (root / folder).symlink_to(REPO / folder)
    selection = _run_selection_command()
    subprocess.run([sys.executable, "recipes/mini_corpus/generate.py", "slurp",
                    str(root / _value(selection, "--corpus-dir")), *MINI_CORPUS],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    _as_written(root, selection, timeout=1800)
    return root


def test_the_run_selection_command_measures_its_methods_and_seeds(root):
    """``--methods fp_student,quads_mct:4 --seeds 1,2``: exactly those four rows, each with its
    exact interval over the 12 test recordings and the 4-bit file about 8x smaller."""
    words = _run_selection_command()
    rows = json.loads((root / "benchmarks" / "results.json").read_text())["rows"]
    assert sorted((r["method"], r["bits"], r["seed"]) for r in rows) == [
        ("fp_student", 32, 1), ("fp_student", 32, 2), ("quads_mct", 4, 1), ("quads_mct", 4, 2)]
    assert {r["corpus"] for r in rows} == {_value(words, "--corpus")}
    for row in rows:
        low, high = row["ci95"]
        assert row["n_test"] == 12 and low <= row["accuracy"] <= high
    size = {r["bits"]: r["packed_mb"] for r in rows}
    assert 7 < size[32] / size[4] < 9


def test_commands_on_finished_runs(root):
    """The commands that read the benchmark's folders: the Klatt valid set spoken, a finished
    4-bit run scored on it, the sensitivity of every tensor group of the fp student at 2 bits,
    and the ONNX paths' accuracy on an export (the 4-bit run of seed 1 stands in for the older
    probe corpus' run that README names)."""
    (klatt,) = [w for w in documented_commands(
        RECORD, "python recipes/mini_corpus/generate.py slurp-text-valid")
        if "--speakers-of" not in w]
    (scored,) = [w for w in documented_commands(RECORD, "python benchmarks/screen.py")
                 if "--from-run" in w]
    (sensitivity,) = documented_commands(RECORD, "python benchmarks/layer_sensitivity.py")
    (onnx,) = documented_commands(README, "python benchmarks/onnx_accuracy.py")
    for run in (_value(scored, "--from-run"), sensitivity[2]):
        assert (root / run).is_dir(), (
            f"README names the run folder {run}, README's run.py command made "
            f"{sorted(p.name for p in (root / run).parent.iterdir())}: a recipe changed, so "
            "update README's paths")
    probe_run = root / Path(onnx[2]).parent
    probe_run.parent.mkdir(parents=True)
    probe_run.symlink_to(root / _value(scored, "--from-run"))
    for words in (klatt, scored, sensitivity, onnx):
        _as_written(root, words)

    valid = root / klatt[-1]
    (row,) = json.loads((root / _value(scored, "--output")).read_text())
    assert (row["name"], row["seed"]) == (_value(scored, "--name"), 1)
    assert row["valid_set"] == str(valid.resolve())
    assert row["n_valid"] == len(row["valid_correct"]) == 4 * len(
        (valid / "devel.jsonl").read_text().splitlines())
    assert row["valid_accuracy"] == pytest.approx(row["valid_correct"].count("1") / row["n_valid"])
    rows = json.loads((root / _value(sensitivity, "--json")).read_text())
    assert {r["granularity"] for r in rows} == {"per_tensor", "per_row"}
    assert {r["bits"] for r in rows} == {2} and all(r["n_valid"] == 8 for r in rows)
    measured = json.loads((root / _value(onnx, "--json")).read_text())
    assert measured["recordings"] == 12 and measured["bits"] == 4
    assert measured["label_agreement_with_torch"]["onnx_float"] == 1.0
    assert measured["paths"]["onnx_float"] == measured["paths"]["torch"]


def test_the_one_variant_screen_command_trains_it(root):
    """``screen.py --name fp_alpha0.9 --hparams slurp_32bit.yaml -- --alpha=0.9``: the fp recipe
    trained with the override after ``--`` (all 11 epochs) and the variant's valid row stored."""
    (words,) = [w for w in documented_commands(RECORD, "python benchmarks/screen.py")
                if "--name" in w and "--from-run" not in w]
    _as_written(root, words)
    name, overrides = _value(words, "--name"), words[words.index("--") + 1:]
    (row,) = json.loads((root / "benchmarks" / "screening.json").read_text())
    assert (row["name"], row["hparams"], row["overrides"]) == (
        name, _value(words, "--hparams"), overrides)
    assert row["n_valid"] == 8 and row["train_seconds"] > 0 and len(row["test_correct"]) == 12
    run = root / "results" / "screen" / name
    log = (run / "train_log.txt").read_text().splitlines()
    assert len([line for line in log if line.startswith("epoch:")]) == 11
    assert f"alpha: {overrides[0].split('=')[1]}" in (run / "hyperparams.yaml").read_text()


def test_the_latency_command(root):
    """``latency.py --json ... --markdown ...``: the JSON and Markdown it names, a positive
    median per (model, length, threads), the command itself in the Markdown."""
    (words,) = documented_commands(README, "python benchmarks/latency.py")
    _as_written(root, words)
    measured = json.loads((root / _value(words, "--json")).read_text())
    assert measured["threads"] == [1, 2] and measured["repeats"] == 7
    assert {"quads", "fp_student"} <= {r["model"] for r in measured["results"]}
    assert all(r["latency_ms"] > 0 for r in measured["results"])
    assert " ".join(words) in (root / _value(words, "--markdown")).read_text()
