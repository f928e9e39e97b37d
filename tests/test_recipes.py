"""Recipes: prepare scripts on the real formats, bad data, and end-to-end runs on mini corpora."""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
from speech import synthesize_clips

from speechbrain_quads.data.manifests import MARKER, DataPreparationError

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "slurp_devel_sample.jsonl"
sys.path.insert(0, str(REPO / "recipes" / "mini_corpus"))


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


slurp_prepare = _load("slurp_prepare", REPO / "recipes" / "SLURP" / "prepare.py")
fsc_prepare = _load("fsc_prepare", REPO / "recipes" / "fluent-speech-commands" / "prepare.py")


@pytest.fixture(scope="module")
def slurp_lines() -> list[dict]:
    if not FIXTURE.is_file():
        pytest.fail(f"the real SLURP sample is missing: {FIXTURE}")
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def write_slurp(root: Path, lines: list[dict]) -> Path:
    """A SLURP folder in the real layout from real annotation lines, audio synthesized."""
    layout = {"train.jsonl": lines, "devel.jsonl": lines[:10], "test.jsonl": lines[10:20],
              "train_synthetic.jsonl": lines[25:]}
    sentences = [line["sentence"] for line in lines]
    waves = dict(zip(sentences, synthesize_clips(sentences), strict=True))
    for name, subset in layout.items():
        audio = root / ("slurp_synth" if name == "train_synthetic.jsonl" else "slurp_real")
        audio.mkdir(parents=True, exist_ok=True)
        for line in subset:
            for recording in line["recordings"]:
                soundfile.write(audio / recording["file"], waves[line["sentence"]].numpy(), 16000)
        (root / name).write_text("".join(json.dumps(line) + "\n" for line in subset))
    return root


@pytest.fixture
def slurp_folder(tmp_path, slurp_lines):
    return write_slurp(tmp_path / "slurp", slurp_lines)


def read_manifest(folder: Path, split: str) -> dict:
    return json.loads((folder / f"{split}.json").read_text())


def test_slurp_prepare_reads_the_real_format(slurp_folder, slurp_lines, tmp_path):
    out = tmp_path / "manifests"
    slurp_prepare.prepare_slurp(str(slurp_folder), str(out))
    train, valid = read_manifest(out, "train"), read_manifest(out, "valid")
    assert len(train) == sum(len(line["recordings"]) for line in slurp_lines + slurp_lines[25:])
    assert len(valid) == sum(len(line["recordings"]) for line in slurp_lines[:10])
    first = slurp_lines[0]
    entry = train[f"train-{Path(first['recordings'][0]['file']).stem}"]
    assert entry["intent"] == f"{first['scenario']}_{first['action']}"
    assert entry["duration"] > 0.3 and Path(entry["wav"]).is_file()
    synthetic = [e for k, e in train.items() if k.startswith("train_synthetic-")]
    assert synthetic and all("slurp_synth" in e["wav"] for e in synthetic)


def test_slurp_prepare_reuses_and_refreshes_manifests(slurp_folder, tmp_path):
    out = tmp_path / "manifests"
    slurp_prepare.prepare_slurp(str(slurp_folder), str(out))
    stamp = (out / "train.json").stat().st_mtime_ns
    slurp_prepare.prepare_slurp(str(slurp_folder), str(out))
    assert (out / "train.json").stat().st_mtime_ns == stamp  # same options: re-used
    slurp_prepare.prepare_slurp(str(slurp_folder), str(out), train_splits=("train",))
    assert not any(k.startswith("train_synthetic") for k in read_manifest(out, "train"))
    slurp_prepare.prepare_slurp(str(slurp_folder), str(tmp_path / "none"), skip_prep=True)
    assert not (tmp_path / "none").exists()


def _first_recording(folder: Path, split_file: str) -> Path:
    line = json.loads((folder / split_file).read_text().splitlines()[0])
    return folder / "slurp_real" / line["recordings"][0]["file"]


@pytest.mark.parametrize(("damage", "message"), [
    ("missing", "missing audio file: .*{name}"),
    ("corrupt", "unreadable or corrupt audio file: .*{name}"),
    ("empty", "^1 bad audio file.*\n.*empty audio file .*{name}"),
])
def test_slurp_bad_audio_is_named_and_nothing_is_written(slurp_folder, tmp_path, damage, message):
    out = tmp_path / "manifests"
    slurp_prepare.prepare_slurp(str(slurp_folder), str(out))  # a good earlier preparation
    before = (out / "train.json").read_text()
    target = _first_recording(slurp_folder, "test.jsonl")
    if damage == "missing":
        target.unlink()
    elif damage == "corrupt":
        target.write_bytes(os.urandom(2048))
    else:
        target.write_bytes(b"")
    with pytest.raises(DataPreparationError, match=message.format(name=target.name)):
        slurp_prepare.prepare_slurp(str(slurp_folder), str(out), train_splits=("train",))
    assert (out / "train.json").read_text() == before  # the old manifests are untouched
    assert json.loads((out / MARKER).read_text())["train_splits"] == ["train", "train_synthetic"]


def test_slurp_unseen_label_and_missing_split(slurp_folder, tmp_path):
    test_lines = (slurp_folder / "test.jsonl").read_text().splitlines()
    line = json.loads(test_lines[0])
    line["scenario"], line["action"] = "zoo", "feed_penguins"
    (slurp_folder / "test.jsonl").write_text("\n".join([json.dumps(line)] + test_lines[1:]))
    with pytest.raises(DataPreparationError, match="test split .*'zoo_feed_penguins' .*test.jsonl"):
        slurp_prepare.prepare_slurp(str(slurp_folder), str(tmp_path / "m"))
    (slurp_folder / "devel.jsonl").unlink()
    with pytest.raises(DataPreparationError, match="missing devel split: .*devel.jsonl"):
        slurp_prepare.prepare_slurp(str(slurp_folder), str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def write_fsc(root: Path) -> Path:
    """An FSC-format folder with our own commands (never FSC's phrases), audio synthesized."""
    commands = [("activate", "lamp", "garden", "switch on the garden lamp"),
                ("deactivate", "lamp", "garden", "switch off the garden lamp"),
                ("increase", "fan", "none", "speed up the fan")]
    rows, speakers = [], {"train": ["spkA", "spkB"], "valid": ["spkC"], "test": ["spkD"]}
    (root / "data").mkdir(parents=True)
    for split, names in speakers.items():
        with open(root / "data" / f"{split}_data.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["", "path", "speakerId", "transcription", "action", "object",
                             "location"])
            for seed, speaker in enumerate(names):
                waves = synthesize_clips([c[3] for c in commands], seed=seed + 10 * len(rows))
                for index, (command, wave) in enumerate(zip(commands, waves, strict=True)):
                    path = f"wavs/speakers/{speaker}/{speaker}-{index}.wav"
                    (root / path).parent.mkdir(parents=True, exist_ok=True)
                    soundfile.write(root / path, wave.numpy(), 16000)
                    writer.writerow([len(rows), path, speaker, command[3], *command[:3]])
                    rows.append(path)
    return root


def test_fsc_prepare_reads_the_real_format_and_checks_labels(tmp_path):
    root = write_fsc(tmp_path / "fsc")
    out = tmp_path / "manifests"
    fsc_prepare.prepare_fsc(str(root), str(out))
    train = read_manifest(out, "train")
    assert len(train) == 6 and len(read_manifest(out, "test")) == 3
    assert {e["intent"] for e in train.values()} == {
        "activate_lamp_garden", "deactivate_lamp_garden", "increase_fan_none"}
    with open(root / "data" / "valid_data.csv", "a", newline="") as handle:
        csv.writer(handle).writerow([99, "wavs/speakers/spkC/spkC-0.wav", "spkC", "x", "bring",
                                     "shoes", "none"])
    with pytest.raises(DataPreparationError, match="valid split .*'bring_shoes_none'"):
        fsc_prepare.prepare_fsc(str(root), str(tmp_path / "other"))
    (root / "data" / "test_data.csv").write_text("path,speaker\n")
    with pytest.raises(DataPreparationError, match="test_data.csv: missing column"):
        fsc_prepare.prepare_fsc(str(root), str(tmp_path / "other"))


def run_recipe(recipe: str, hparams: str, data: Path, output: Path, *extra: str):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "train.py", hparams, f"--data_folder={data}",
         f"--output_folder={output}", "--batch_size=8", *extra],
        cwd=REPO / "recipes" / recipe, capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((output / "summary.json").read_text())


def check_outputs(output: Path, summary: dict) -> None:
    metrics = json.loads((output / "test_metrics.json").read_text())
    for key, value in metrics.items():
        if key != "utterances":
            assert 0.0 <= value <= 1.0, key
    assert summary["metrics"] == metrics
    model = output / "model"
    assert json.loads((model / "config.json").read_text())["format"] == "speechbrain-quads-model"
    assert summary["size"]["packed_bytes"] == (model / "model.safetensors").stat().st_size
    compute = summary["compute"]
    assert compute["student_gmacs_30s"] > 10 * compute["student_gmacs_real_length"]


def test_slurp_recipe_end_to_end(tmp_path):
    generate = importlib.import_module("generate")
    data = generate.generate_slurp(tmp_path / "slurp", n_train=24, n_valid=8, n_test=8,
                                   n_synthetic=4, n_speakers=4, n_intents=4, seed=3)
    output = tmp_path / "exp"
    summary = run_recipe("SLURP", "hparams/slurp_4bit.yaml", data, output, "--mct_iterations=1")
    check_outputs(output, summary)
    test_files = {e["file"] for e in json.loads((output / "manifests" / "test.json").read_text())
                  .values()}
    predictions = [json.loads(line) for line in (output / "predictions.jsonl").read_text()
                   .splitlines()]
    assert {p["file"] for p in predictions} == test_files and len(predictions) == len(test_files)
    assert all(set(p) == {"file", "scenario", "action", "entities"} for p in predictions)
    size = summary["size"]
    assert size["bits"] == 4
    assert 0 < size["packed_bytes"] - size["bit_arithmetic_bytes"] < 0.01 * size[
        "bit_arithmetic_bytes"] + 64 * 1024  # only the safetensors header on top
    log = (output / "train_log.txt").read_text().splitlines()
    phases = [line.split("phase: ")[1].split("-")[0] for line in log if "phase: " in line]
    assert phases == ["distill", "quant", "quant"]
    assert "test ACC" in log[-1]


def test_fsc_full_precision_recipe_end_to_end(tmp_path):
    data = write_fsc(tmp_path / "fsc")
    output = tmp_path / "exp"
    summary = run_recipe("fluent-speech-commands", "hparams/fsc_32bit.yaml", data, output,
                         "--mct_iterations=1", "--final_quant_epochs=0")
    check_outputs(output, summary)
    assert summary["size"]["bits"] == 32
    predictions = (output / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 3
    shutil.rmtree(output / "save")
