"""Recipe acceptance: every shipped hparams file runs to the end with exactly the documented command.

The rows of ``tests/recipes/<Dataset>.csv`` use SpeechBrain's recipe-test format
(``Script_file``, ``Hparam_file``, ``test_debug_flags``, ``test_debug_checks``). Their flags are
only ``--data_folder=tests/samples/<Dataset>``: the documented command, nothing added (no
``--output_folder``, no epoch cut). The sample corpora are spoken by ``recipes/mini_corpus`` at
test time into ``tests/samples/`` (git-ignored; re-used while complete), in the real layouts and
as small as a run through every MCT phase allows. Each run happens in a copy of the recipe folder
(``recipes/<Dataset>/{prepare.py, quads/}``), from ``quads/`` as a user would, so its
``results/`` land in the copy.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml
from readme_commands import documented_commands
from recipe_files import load_recipe_file
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes" / "mini_corpus"))
import corpus_writer  # noqa: E402
import generate  # noqa: E402

ROWS = [row for path in sorted((REPO / "tests" / "recipes").glob("*.csv"))
        for row in csv.DictReader(path.open(encoding="utf-8"))]
SAMPLES = {  # the tiniest corpora whose every split holds every intent
    "SLURP": lambda out: generate.generate_slurp(out, n_train=12, n_valid=3, n_test=3,
                                                 n_synthetic=3, n_speakers=4, n_intents=3, seed=5),
    "fluent-speech-commands": lambda out: generate.generate_fsc(
        out, n_train=12, n_valid=3, n_test=3, n_speakers=4, n_intents=3, seed=5),
}
TIMEOUT = 900
RERUN = ("mkdir -p rerun && cp {output}/train.py {output}/prepare.py rerun/\n"
         "python rerun/train.py {output}/hyperparams.yaml")


def sample_corpus(dataset: str) -> Path:
    """``tests/samples/<dataset>``, spoken now unless a complete one is there."""
    folder = REPO / "tests" / "samples" / dataset
    if not corpus_writer.is_complete(folder):
        SAMPLES[dataset](folder)
    return folder


def attempt(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``command`` in ``cwd`` with this interpreter first on PATH (as ``python``)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
                          env=env)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """:func:`attempt`, which must succeed without a traceback."""
    result = attempt(command, cwd)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-6000:]}"
    assert "Traceback" not in result.stderr
    return result


def copy_recipe(script: Path, tmp_path: Path) -> Path:
    """Copy ``recipes/<Dataset>/`` (prepare.py followed through its link) and return the copy of
    the script's folder."""
    dataset_dir = script.parent.parent
    target = tmp_path / dataset_dir.relative_to(REPO)
    shutil.copytree(dataset_dir, target, ignore=shutil.ignore_patterns("results", "__pycache__"))
    return target / script.parent.name


def check_outputs(output: Path, row: dict, bits: int, strategy: str = "mct") -> dict:
    """The documented outputs of a run, with real numbers in them."""
    listed = re.fullmatch(r"file_exists=\[(.*)\]", row["test_debug_checks"]).group(1).split(",")
    missing = [name for name in listed if not (output / name).is_file()]
    assert not missing, f"{output}: missing {missing}"
    metrics = json.loads((output / "test_metrics.json").read_text())
    summary = json.loads((output / "summary.json").read_text())
    assert summary["metrics"] == metrics and metrics["utterances"] >= 3
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k != "utterances")
    predictions = (output / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == metrics["utterances"]
    size = summary["size"]
    assert size["bits"] == bits
    assert size["packed_bytes"] == (output / "model" / "model.safetensors").stat().st_size
    config = json.loads((output / "model" / "config.json").read_text())
    assert config["bits"] == bits
    if bits < 32:  # the packed file is the bit arithmetic plus the safetensors header
        assert 0 < size["packed_bytes"] - size["bit_arithmetic_bytes"] < 64 * 1024
        with safe_open(output / "model" / "model.safetensors", "pt") as handle:
            entries = json.loads(handle.metadata()["quantized"]).values()
        assert config["bit_widths"] == sorted({entry["bits"] for entry in entries})
    compute = summary["compute"]
    assert compute["student_gmacs_30s"] > 5 * compute["student_gmacs_real_length"]
    log = (output / "train_log.txt").read_text().splitlines()
    phases = [line.split("phase: ")[1].split("-")[0] for line in log if "phase: " in line]
    assert phases == (["distill"] * 11 if bits == 32 else ["distill"] * 5 + ["quant"] * 6
                      if strategy == "sequential" else ["distill", "quant"] * 5 + ["quant"])
    assert "test ACC" in log[-1]
    return metrics


def check_size_target(output: Path, target_mb: float, widths_allowed: list[int],
                      fraction: float) -> int:
    """A run with ``target_mb``: widths from ``target_widths``, a file within the budget with
    the weights kept exactly (``outlier_fraction``) in it. Returns the widest width."""
    widths = json.loads((output / "save" / "bit_widths.json").read_text())["widths"]
    assert set(widths.values()) <= set(widths_allowed)
    size = json.loads((output / "summary.json").read_text())["size"]
    assert size["packed_bytes"] <= target_mb * 2**20
    with safe_open(output / "model" / "model.safetensors", "pt") as handle:
        entries = json.loads(handle.metadata()["quantized"])
    assert {k: e.get("outliers", 0) for k, e in entries.items()} == {
        k: round(fraction * e["numel"]) for k, e in entries.items()}
    assert (sum(e.get("outliers", 0) for e in entries.values()) > 0) == (fraction > 0)
    return max(widths.values())


def saved_setting(saved: str, key: str, required: bool = True):
    """The value of top-level ``key`` in a run's saved ``hyperparams.yaml`` text (None where
    an optional key is absent: the 32-bit files have no quantization section)."""
    line = re.search(rf"^{key}: (.*?)\s*(#.*)?$", saved, re.M)
    assert line or not required, f"hyperparams.yaml has no {key}"
    return yaml.safe_load(line.group(1)) if line else None


def _flags(row: dict) -> tuple[str, list[str]]:
    """A row's sample corpus and the documented flags it adds to ``--data_folder``."""
    data, *extra = row["test_debug_flags"].split()
    flag = re.fullmatch(r"--data_folder=(tests/samples/[\w-]+)", data)
    assert flag, "a recipe test passes --data_folder first, then only documented flags"
    return flag.group(1), extra


def _row_id(row: dict) -> str:
    return " ".join([Path(row["Hparam_file"]).stem, *_flags(row)[1]])


@pytest.mark.parametrize("row", ROWS, ids=[_row_id(r) for r in ROWS])
def test_recipe_runs_as_documented(row, tmp_path):
    script, hparams = REPO / row["Script_file"], REPO / row["Hparam_file"]
    for key in ("Script_file", "Hparam_file", "Data_prep_file", "Readme_file"):
        assert (REPO / row[key]).is_file(), f"{key}: {row[key]}"
    sample, extra = _flags(row)
    if any("cuda" in flag for flag in extra) and not torch.cuda.is_available():
        pytest.skip("the documented GPU command needs a GPU")
    data = sample_corpus(Path(sample).name)
    relative = str(hparams.relative_to(script.parent))
    documented = [words[4:] for words in documented_commands(REPO / row["Readme_file"],
                                                              "python train.py")
                  if words[2] == relative and words[3].startswith("--data_folder=")]
    assert extra in documented, "the command is documented, with exactly these flags"
    recipe = copy_recipe(script, tmp_path)
    run(["python", "train.py", relative, f"--data_folder={data}", *extra], cwd=recipe)

    options = dict(flag.lstrip("-").split("=", 1) for flag in extra)
    bits = int(options.get("bits", re.search(r"_(\d+)bit", hparams.name).group(1)))
    output = recipe / options.get("output_folder", "results/" + re.sub(
        r"_\d+bit", f"_{bits}bit", hparams.stem) + "/1986")
    saved = (output / "hyperparams.yaml").read_text()
    target_mb = saved_setting(saved, "target_mb", required=False)  # from the flags or the file
    if target_mb is not None:
        bits = check_size_target(output, float(target_mb), saved_setting(saved, "target_widths"),
                                 float(saved_setting(saved, "outlier_fraction")))
    metrics = check_outputs(output, row, bits, options.get("strategy", "mct"))
    if "SLURP" in row["Script_file"]:  # the demo and the benchmarks read a run back this way
        train_py = load_recipe_file(f"{script.parent.parent.name}_train", script)
        truth, predicted = train_py.read_test_intents(output)
        right = sum(predicted[name] == intent for name, intent in truth.items())
        assert right / len(truth) == pytest.approx(metrics["intent_accuracy"])
    for key, value in options.items():
        if key not in ("device", "precision"):  # run options, not hparams
            assert saved_setting(saved, key) == yaml.safe_load(value), key
    if bits != 4 or extra:
        return
    # The output folder alone re-runs the experiment: its hyperparams.yaml loads with plain
    # HyperPyYAML and, with its train.py and prepare.py, resumes the finished run and re-tests it.
    with open(output / "hyperparams.yaml", encoding="utf-8") as handle:
        saved = load_hyperpyyaml(handle)
    assert saved["data_folder"] == str(data) and saved["bits"] == 4
    (output / "test_metrics.json").unlink()
    rerun = RERUN.format(output=output.relative_to(recipe))
    assert rerun in (REPO / row["Readme_file"]).read_text(), "the re-run is documented"
    run(["bash", "-ec", rerun], cwd=recipe)
    assert json.loads((output / "test_metrics.json").read_text()) == metrics
    # An ablation of the same file without a folder of its own would find this finished run
    # there and report it as the ablation: it is refused, and the folder is left as it was.
    kept = {name: (output / name).read_bytes() for name in ("hyperparams.yaml",
                                                            "test_metrics.json", "train_log.txt")}
    ablation = attempt(["python", "train.py", relative, f"--data_folder={data}", "--init=random"],
                       cwd=recipe)
    assert ablation.returncode != 0
    assert (f"{output.relative_to(recipe)}/save/experiment_settings.json: this output folder "
            "holds a run with other settings (init: 'pretrained' there, 'random' now)"
            in ablation.stderr), ablation.stderr[-3000:]
    assert {name: (output / name).read_bytes() for name in kept} == kept


def test_every_documented_recipe_command_has_a_recipe_test():
    """Each ``python train.py hparams/X.yaml --data_folder=... [flags]`` command of a recipe
    README is a row of tests/recipes with the same flags, and every shipped file has a row."""
    tested = {(REPO / r["Readme_file"], Path(r["Hparam_file"]).name, tuple(_flags(r)[1]))
              for r in ROWS}
    documented = set()
    for readme in REPO.glob("recipes/*/quads/README.md"):
        for words in documented_commands(readme, "python train.py"):
            assert words[3].startswith("--data_folder="), (readme, words)
            documented.add((readme, Path(words[2]).name, tuple(words[4:])))
    assert documented and documented == tested
    shipped = {(p.parent.parent / "README.md", p.name)
               for p in REPO.glob("recipes/*/quads/hparams/*.yaml")}
    assert shipped == {(readme, name) for readme, name, _ in tested}
