"""``benchmarks/agreement.py``: a valid set's and the test split's paired differences broken
down by seed, voice, length and intent, checked against arithmetic done by hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from readme_commands import documented_commands

REPO = Path(__file__).resolve().parents[1]


def _line(slurp_id: int, sentence: str, intent: str, voices: list[str]) -> str:
    return json.dumps({"slurp_id": slurp_id, "sentence": sentence, "intent": intent,
                       "recordings": [{"file": f"audio-{slurp_id}-{v}.flac"} for v in voices]})


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _row(name: str, valid: str, test: str, valid_sha256: str = "v") -> dict:
    return {"name": name, "corpus_sha256": "c", "valid_sha256": valid_sha256,
            "valid_correct": valid, "test_correct": test}


def _build(screening: Path, corpus: Path, valid: Path, baseline: str, variant: str) -> None:
    """A corpus (train, test), a valid folder and screening rows ``<name>_s<seed>``."""
    _write(corpus / "train.jsonl", [_line(1, "turn the lights on", "iot_on", ["a"])])
    # test recordings in sorted file order: 20-x, 21-y, 22-x (lengths 4, 8, 1 words)
    _write(corpus / "test.jsonl", [
        _line(21, "what is the weather like in paris today", "weather", ["y"]),
        _line(20, "turn the lights off", "iot_off", ["x"]),
        _line(22, "weather", "weather", ["x"])])
    # valid recordings in sorted order: 10-p, 10-q, 11-p, 11-q (lengths 3, 3, 2, 2 words)
    _write(valid / "devel.jsonl", [_line(10, "lights on please", "iot_on", ["p", "q"]),
                                   _line(11, "weather tomorrow", "weather", ["p", "q"])])
    rows = [_row(f"{baseline}_s1", "0000", "000"), _row(f"{variant}_s1", "1100", "100"),
            _row(f"{baseline}_s2", "1111", "111"), _row(f"{variant}_s2", "1110", "011"),
            _row(f"{baseline}_s3", "0000", "000"), _row("other_s3", "1111", "111")]
    _write(screening, [json.dumps(rows)])


@pytest.fixture
def inputs(tmp_path):
    paths = tmp_path / "screening.json", tmp_path / "corpus", tmp_path / "valid"
    _build(*paths, "base", "var")
    return (*paths, tmp_path / "out.json")


def _agreement(screening, corpus, valid, output, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "benchmarks/agreement.py", "--screening", str(screening),
         "--corpus-dir", str(corpus), "--valid-dir", str(valid), "--output", str(output), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=120)


def test_breakdown_matches_hand_arithmetic(inputs):
    result = _agreement(*inputs, "--baseline", "base", "--variant", "var")
    assert result.returncode == 0, result.stderr
    out = json.loads(inputs[3].read_text())
    assert out["seeds"] == [1, 2]  # seed 3 has no "var" row
    assert out["recordings"] == {"valid": 4, "test": 3}
    # seed 1: valid +2/4, test +1/3; seed 2: valid -1/4, test -1/3 (recording 20-x)
    assert out["per_seed"] == {"1": {"valid": 50.0, "test": 33.33},
                               "2": {"valid": -25.0, "test": -33.33}}
    assert out["mean"] == {"valid": 12.5, "test": 0.0}
    assert out["over_seeds"]["valid"] == pytest.approx(
        [12.5, 12.5 - 12.706 * 75 / 2, 12.5 + 12.706 * 75 / 2], abs=0.05)  # seeds 50, -25
    # test - valid per seed, exact (not from the rounded per-seed figures: -16.67 and -8.33
    # would give a half-width of 52.98, the exact one is 52.94)
    gaps = [100 / 3 - 50.0, -100 / 3 + 25.0]
    mean = sum(gaps) / 2
    half = 12.7062047 * abs(gaps[0] - gaps[1]) / 2  # t(0.975, 1) * sd / sqrt(2), sd = |a - b| / sqrt(2)
    assert out["test_minus_valid"] == [round(mean, 2), round(mean - half, 2), round(mean + half, 2)]
    # sentences: valid 10 -> (1+1+0+0)/4 = 0.5, 11 -> (0+0+0-1)/4 = -0.25; test 20 -> 0,
    # 21 -> 0, 22 -> 0; Welch's t with a zero-variance test set is valid's one-sample t
    welch = out["sentences_welch"]
    assert welch["valid"] == [12.5, 37.5] and welch["test"] == [0.0, 0.0]
    assert welch["t"] == pytest.approx(-12.5 / 37.5, abs=1e-3)
    # voices: valid p = (1+0)/2 seeds -> recordings 10-p, 11-p: diffs (1, 0) and (0, 0)
    assert out["by_voice"]["valid"] == {"p": [2, 25.0], "q": [2, 0.0]}
    assert out["by_voice"]["test"] == {"x": [2, 0.0], "y": [1, 0.0]}
    assert out["by_length"]["test"] == {"1-4": [2, 0.0], "8-10": [1, 0.0]}
    assert list(out["by_length"]["valid"]) == ["1-4"]
    # intents: valid iot_on +50/-... , weather; test iot_off, weather -> only weather is shared
    assert out["intent_correlation"] == {"intents": 1, "r": None}
    assert out["test_at_valid_intent_shares"] == 0.0  # test's weather recordings: 0 and 0
    # valid "lights on please" vs train "turn the lights on": 2 shared of 5 words
    assert out["train_similarity"]["valid"] == pytest.approx((2 / 5 + 0) / 2, abs=1e-4)
    assert "test minus valid -12.50 [" in result.stdout


def test_refuses_unpaired_or_mismatched_rows(inputs):
    screening, corpus, valid, output = inputs
    result = _agreement(*inputs, "--baseline", "base", "--variant", "missing")
    assert result.returncode != 0
    assert "no seed has both base_s<seed> and missing_s<seed> rows" in result.stderr
    rows = json.loads(screening.read_text())
    rows[1]["valid_sha256"] = "another"
    screening.write_text(json.dumps(rows))
    result = _agreement(*inputs, "--baseline", "base", "--variant", "var")
    assert result.returncode != 0 and "seed 1: base and var differ in valid_sha256" in result.stderr
    rows[1]["valid_sha256"], rows[1]["test_correct"] = "v", "10"
    screening.write_text(json.dumps(rows))
    result = _agreement(*inputs, "--baseline", "base", "--variant", "var")
    assert result.returncode != 0
    assert "seed 1: test_correct has 3/2 recordings, the corpus 3" in result.stderr
    assert not output.exists()


def test_the_readme_command_runs_as_written(tmp_path):
    """``benchmarks/README.md``'s command, from a repository root that holds its inputs at the
    paths it names."""
    (words,) = documented_commands(REPO / "benchmarks" / "README.md",
                                   "python benchmarks/agreement.py")
    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    (root / "benchmarks" / "agreement.py").symlink_to(REPO / "benchmarks" / "agreement.py")
    _build(root / "benchmarks" / "screening_klatt.json", root / "results" / "slurp_text_corpus",
           root / "results" / "slurp_text_klatt_valid", "quads4", "mixed4")
    result = subprocess.run([sys.executable, *words[1:]], cwd=root, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads((root / "benchmarks" / "agreement_mixed4.json").read_text())
    assert out["baseline"] == "quads4" and out["seeds"] == [1, 2]
    assert out["mean"] == {"valid": 12.5, "test": 0.0}


def test_fresh_valid_keeps_only_lines_the_earlier_corpus_never_scored(inputs, tmp_path):
    earlier = tmp_path / "earlier"
    _write(earlier / "devel.jsonl", [_line(10, "lights on please", "iot_on", ["z"])])
    _write(earlier / "test.jsonl", [_line(20, "turn the lights off", "iot_off", ["z"])])
    result = _agreement(*inputs, "--baseline", "base", "--variant", "var",
                        "--fresh-against", str(earlier))
    assert result.returncode == 0, result.stderr
    fresh = json.loads(inputs[3].read_text())["fresh_valid"]
    # only line 11 is fresh: recordings 11-p, 11-q; seed 1: (0-0, 0-0) -> 0; seed 2: (1-1, 0-1)
    assert fresh["recordings"] == 2 and fresh["sentences"] == 1
    mean, low, high = fresh["over_seeds"]
    assert mean == -25.0
    assert (low, high) == pytest.approx((-25 - 12.706 * 25, -25 + 12.706 * 25), abs=0.05)
    assert "(2 recordings of 1 sentences): -25.00 [" in result.stdout
    _write(earlier / "test.jsonl", [_line(11, "weather tomorrow", "weather", ["z"])])
    result = _agreement(*inputs, "--baseline", "base", "--variant", "var",
                        "--fresh-against", str(earlier))
    assert result.returncode != 0
    assert "every valid line is in" in result.stderr and "devel.jsonl or test.jsonl" in result.stderr
