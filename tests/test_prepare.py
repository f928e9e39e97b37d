"""SLURP and FSC data preparation: the real formats in, SpeechBrain's CSVs out, bad data named."""

import csv
import json
import os
from pathlib import Path

import pytest
import soundfile
import torch
from recipe_files import load_recipe_file
from speech import synthesize_clips
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder

from speechbrain_quads.data.manifests import MARKER, DataPreparationError
from speechbrain_quads.data.pipeline import load_or_fit_encoder, sort_train_set

REPO = Path(__file__).resolve().parents[1]


slurp_prepare = load_recipe_file("slurp_prepare", REPO / "recipes" / "SLURP" / "prepare.py")
fsc_prepare = load_recipe_file("fsc_prepare", REPO / "recipes" / "fluent-speech-commands" / "prepare.py")

# Our own SLURP-style lines (sentence, annotation, scenario, action); the real schema is built below.
LINES = [
    ("wake me up at seven am", "wake me up at [time : seven am]", "alarm", "set"),
    ("what is the weather like in paris", "what is the weather like in [place_name : paris]",
     "weather", "query"),
    ("turn the lights off", "turn the lights off", "iot", "hue_lightoff"),
    ("play some jazz", "play some [music_genre : jazz]", "play", "music"),
    ("set an alarm for six", "set an alarm for [time : six]", "alarm", "set"),
    ("is it going to rain tomorrow", "is it going to rain [date : tomorrow]", "weather", "query"),
    ("switch off the kitchen lights", "switch off the [house_place : kitchen] lights", "iot",
     "hue_lightoff"),
    ("put on some rock music", "put on some [music_genre : rock] music", "play", "music"),
]
LAYOUT = {"train.jsonl": [0, 1, 2, 3], "train_synthetic.jsonl": [4], "devel.jsonl": [5, 6],
          "test.jsonl": [7, 4]}


def slurp_record(slurp_id: int, index: int, files: list[str]) -> dict:
    """One line in the real SLURP schema (keys in the real order)."""
    sentence, annotation, scenario, action = LINES[index]
    words = sentence.split()
    return {"slurp_id": slurp_id, "sentence": sentence, "sentence_annotation": annotation,
            "intent": f"{scenario}_{action}", "action": action,
            "tokens": [{"surface": w, "id": i, "lemma": w, "pos": "NN"}
                       for i, w in enumerate(words)],
            "scenario": scenario,
            "recordings": [{"file": f, "wer": 0.0, "ent_wer": 0.0, "status": "correct"}
                           for f in files],
            "entities": []}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.fixture(scope="module")
def waves() -> list[torch.Tensor]:
    return synthesize_clips([line[0] for line in LINES])


@pytest.fixture
def slurp_folder(tmp_path, waves) -> Path:
    """A SLURP folder in the real layout (our sentences, synthesized 16-kHz FLAC)."""
    root = tmp_path / "slurp"
    slurp_id = 100
    for name, indices in LAYOUT.items():
        audio = root / ("slurp_synth" if name == "train_synthetic.jsonl" else "slurp_real")
        audio.mkdir(parents=True, exist_ok=True)
        records = []
        for index in indices:
            slurp_id += 1
            files = [f"audio-{slurp_id}.flac", f"audio-{slurp_id}-headset.flac"]
            for file in files:
                soundfile.write(audio / file, waves[index].numpy(), 16000)
            records.append(slurp_record(slurp_id, index, files))
        write_jsonl(root / name, records)
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def prepare(folder: Path, out: Path, splits=("train_synthetic", "train_real")) -> None:
    slurp_prepare.prepare_SLURP(str(folder), str(out), "direct", list(splits))


def test_slurp_csvs_have_speechbrains_columns_and_read_with_from_csv(slurp_folder, tmp_path):
    out = tmp_path / "exp"
    prepare(slurp_folder, out)
    train = read_csv(out / "train-type=direct.csv")
    assert list(train[0]) == ["ID", "duration", "wav", "semantics", "transcript"]
    assert len(train) == 2 * 5  # 4 real + 1 synthetic lines, 2 recordings each
    assert len(read_csv(out / "train_real-type=direct.csv")) == 8
    assert len(read_csv(out / "devel-type=direct.csv")) == 4
    dataset = DynamicItemDataset.from_csv(str(out / "test-type=direct.csv"))
    row = dataset.data["test-audio-108"]
    assert row["transcript"] == "put on some rock music"
    assert row["semantics"] == ("{'scenario': 'play'| 'action': 'music'| 'entities': "
                                "[{'type': 'music_genre'| 'filler': 'rock'}]}")
    assert abs(row["duration"] - waves_seconds(row["wav"])) < 1e-3
    assert all("slurp_synth" in r["wav"] for r in train if r["ID"].startswith("train_synthetic"))


def waves_seconds(path: str) -> float:
    info = soundfile.info(path)
    return info.frames / info.samplerate


def test_slurp_reads_train_real_jsonl_when_present_and_reuses_its_csvs(slurp_folder, tmp_path):
    out = tmp_path / "exp"
    prepare(slurp_folder, out)
    stamp = (out / "train-type=direct.csv").stat().st_mtime_ns
    prepare(slurp_folder, out)
    assert (out / "train-type=direct.csv").stat().st_mtime_ns == stamp  # same options: re-used
    lines = (slurp_folder / "train.jsonl").read_text().splitlines()
    (slurp_folder / "train_real.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    prepare(slurp_folder, out, splits=("train_real",))  # other options: prepared again
    train = read_csv(out / "train-type=direct.csv")
    assert len(train) == 8 and train[0]["ID"] == "train_real-audio-104"  # train_real.jsonl read
    slurp_prepare.prepare_SLURP(str(slurp_folder), str(tmp_path / "none"), "direct",
                                ["train_real"], skip_prep=True)
    assert not (tmp_path / "none").exists()


def first_test_recording(folder: Path) -> Path:
    line = json.loads((folder / "test.jsonl").read_text().splitlines()[0])
    return folder / "slurp_real" / line["recordings"][0]["file"]


@pytest.mark.parametrize(("damage", "message"), [
    ("missing", "missing audio file: .*{name}"),
    ("corrupt", "unreadable or corrupt audio file: .*{name}"),
    ("empty", "empty audio file .*{name}"),
    ("short", r"audio too short \(10.0 ms < 25 ms\): .*{name}"),
    ("long", r"audio too long \(30.01 s > 30 s, Whisper's window\): .*{name}"),
    ("8khz", "audio at 8000 Hz, expected 16000 Hz: .*{name}"),
])
def test_slurp_bad_audio_is_named_and_nothing_is_written(slurp_folder, tmp_path, damage, message):
    out = tmp_path / "exp"
    prepare(slurp_folder, out)  # a good earlier preparation
    before = (out / "train-type=direct.csv").read_text()
    target = first_test_recording(slurp_folder)
    if damage == "missing":
        target.unlink()
    elif damage == "corrupt":
        target.write_bytes(os.urandom(2048))
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage == "short":
        soundfile.write(target, torch.zeros(160).numpy(), 16000)
    elif damage == "long":
        soundfile.write(target, torch.zeros(16000 * 30 + 160).numpy(), 16000)
    else:
        soundfile.write(target, torch.zeros(8000).numpy(), 8000)
    with pytest.raises(DataPreparationError, match=message.format(name=target.name)):
        prepare(slurp_folder, out, splits=("train_real",))
    assert (out / "train-type=direct.csv").read_text() == before  # the old CSVs are untouched
    assert json.loads((out / MARKER).read_text())["train_splits"] == ["train_synthetic",
                                                                       "train_real"]


def test_slurp_recording_without_file_is_named_with_its_line(slurp_folder, tmp_path):
    lines = (slurp_folder / "devel.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    del record["recordings"][0]["file"]
    (slurp_folder / "devel.jsonl").write_text("\n".join([lines[0], json.dumps(record)]) + "\n")
    with pytest.raises(DataPreparationError,
                       match=r"devel.jsonl, line 2: a recording without 'file'"):
        prepare(slurp_folder, tmp_path / "exp")
    assert not (tmp_path / "exp").exists()


def test_slurp_duplicate_utterance_id_names_both_lines(slurp_folder, tmp_path):
    lines = (slurp_folder / "test.jsonl").read_text().splitlines()
    (slurp_folder / "test.jsonl").write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(DataPreparationError,
                       match=r"duplicate utterance ID 'test-audio-\d+': .*test.jsonl, line 1 and "
                             r".*test.jsonl, line 3"):
        prepare(slurp_folder, tmp_path / "exp")


def test_slurp_unseen_label_and_missing_split(slurp_folder, tmp_path):
    lines = (slurp_folder / "test.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["scenario"], record["action"] = "zoo", "feed_penguins"
    (slurp_folder / "test.jsonl").write_text("\n".join([json.dumps(record)] + lines[1:]) + "\n")
    with pytest.raises(DataPreparationError,
                       match="test-type=direct has 1 intent .*'zoo_feed_penguins' .*test.jsonl"):
        prepare(slurp_folder, tmp_path / "exp")
    (slurp_folder / "devel.jsonl").unlink()
    with pytest.raises(DataPreparationError, match="missing devel split: .*devel.jsonl"):
        prepare(slurp_folder, tmp_path / "exp")
    with pytest.raises(ValueError, match="train_splits: expected train_real and/or"):
        prepare(slurp_folder, tmp_path / "exp", splits=("train",))
    assert not (tmp_path / "exp").exists()


def write_fsc(root: Path) -> Path:
    """An FSC-format folder with our own commands (never FSC's phrases), audio synthesized."""
    commands = [("activate", "lamp", "garden", "switch on the garden lamp"),
                ("deactivate", "lamp", "garden", "switch off the garden lamp"),
                ("increase", "fan", "none", "speed up the fan")]
    speakers = {"train": ["spkA", "spkB"], "valid": ["spkC"], "test": ["spkD"]}
    (root / "data").mkdir(parents=True)
    rows = 0
    for split, names in speakers.items():
        with open(root / "data" / f"{split}_data.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["", "path", "speakerId", "transcription", "action", "object",
                             "location"])
            for seed, speaker in enumerate(names):
                clips = synthesize_clips([c[3] for c in commands], seed=seed + rows)
                for index, (command, wave) in enumerate(zip(commands, clips, strict=True)):
                    path = f"wavs/speakers/{speaker}/{speaker}-{index}.wav"
                    (root / path).parent.mkdir(parents=True, exist_ok=True)
                    soundfile.write(root / path, wave.numpy(), 16000)
                    writer.writerow([rows, path, speaker, command[3], *command[:3]])
                    rows += 1
    return root


def test_fsc_csvs_have_speechbrains_columns_and_labels_are_checked(tmp_path):
    root = write_fsc(tmp_path / "fsc")
    out = tmp_path / "exp"
    fsc_prepare.prepare_FSC(str(root), str(out))
    train = read_csv(out / "train.csv")
    assert list(train[0]) == ["ID", "duration", "wav", "spk_id", "semantics", "transcript"]
    assert len(train) == 6 and len(read_csv(out / "test.csv")) == 3
    semantics = {json.loads(r["semantics"].replace("|", ","))["action"] for r in train}
    assert semantics == {"activate", "deactivate", "increase"}
    valid = DynamicItemDataset.from_csv(str(out / "valid.csv"))
    assert valid.data["valid-spkC-2"]["spk_id"] == "spkC"
    valid = (root / "data" / "valid_data.csv").read_text()
    (root / "wavs/speakers/spkC/spkC-9.wav").write_bytes((root / "wavs/speakers/spkC/spkC-0.wav")
                                                         .read_bytes())
    (root / "data" / "valid_data.csv").write_text(
        valid + "99,wavs/speakers/spkC/spkC-9.wav,spkC,x,bring,shoes,none\n")
    with pytest.raises(DataPreparationError, match="valid has 1 intent .*'bring_shoes_none'"):
        fsc_prepare.prepare_FSC(str(root), str(tmp_path / "other"))
    (root / "data" / "valid_data.csv").write_text(
        valid + "99,wavs/speakers/spkC/spkC-0.wav,spkC,x,activate,lamp,garden\n")
    with pytest.raises(DataPreparationError,
                       match="'valid-spkC-0': .*valid_data.csv, line 2 and .*valid_data.csv, line 5"):
        fsc_prepare.prepare_FSC(str(root), str(tmp_path / "other"))
    (root / "data" / "valid_data.csv").write_text(valid)
    (root / "data" / "test_data.csv").write_text("path,speaker\n")
    with pytest.raises(DataPreparationError, match="test_data.csv: missing column"):
        fsc_prepare.prepare_FSC(str(root), str(tmp_path / "other"))


def intent_dataset(csv_path: Path) -> DynamicItemDataset:
    dataset = DynamicItemDataset.from_csv(str(csv_path))
    dataset.add_dynamic_item(lambda s: json.loads(s.replace("|", ","))["action"],
                             takes="semantics", provides="intent")
    return dataset


def test_a_stale_label_encoder_is_refused_with_its_file_named(tmp_path):
    root = write_fsc(tmp_path / "fsc")
    fsc_prepare.prepare_FSC(str(root), str(tmp_path / "exp"))
    train = intent_dataset(tmp_path / "exp" / "train.csv")
    path = tmp_path / "label_encoder.txt"
    encoder = CategoricalEncoder()
    load_or_fit_encoder(encoder, path, train)
    assert sorted(encoder.lab2ind) == ["activate", "deactivate", "increase"]
    load_or_fit_encoder(CategoricalEncoder(), path, train)  # the same data: re-used
    stale = CategoricalEncoder()
    stale.update_from_iterable(["activate", "open"])
    stale.save(str(path))
    with pytest.raises(DataPreparationError, match=r"label_encoder.txt: the saved label encoder "
                       r"does not match .*\['deactivate', 'increase'\].*\['open'\]"):
        load_or_fit_encoder(CategoricalEncoder(), path, train)


def test_sorting_turns_shuffling_off_and_refuses_unknown_values(tmp_path):
    root = write_fsc(tmp_path / "fsc")
    fsc_prepare.prepare_FSC(str(root), str(tmp_path / "exp"))
    train = DynamicItemDataset.from_csv(str(tmp_path / "exp" / "train.csv"))
    options = {"shuffle": True}
    ordered = sort_train_set(train, "descending", options)
    durations = [ordered.data[i]["duration"] for i in ordered.data_ids]
    assert durations == sorted(durations, reverse=True) and options["shuffle"] is False
    options = {"shuffle": True}
    assert sort_train_set(train, "random", options) is train and options["shuffle"] is True
    with pytest.raises(ValueError, match="sorting: 'acending' is not one of"):
        sort_train_set(train, "acending", options)
