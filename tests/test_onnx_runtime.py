"""The torch-free ONNX runtime and example app: classification without torch importable, and a
clear error naming the file for a foreign, truncated or non-ONNX model and for bad audio."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile
from conftest import SENTENCES
from onnx import TensorProto, helper
from readme_commands import documented_commands
from speech import synthesize_clips
from test_onnx_export import LABELS, prototype_model, write_export

from speechbrain_quads.deploy.errors import AudioFileError
from speechbrain_quads.deploy.inference import QuadsIntentClassifier
from speechbrain_quads.deploy.onnx_export import export_onnx
from speechbrain_quads.deploy.onnx_runtime import OnnxIntentClassifier, OnnxModelError

REPO = Path(__file__).resolve().parents[1]
BLOCK_TORCH = """
import importlib.abc, runpy, sys
class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this process")
sys.meta_path.insert(0, BlockTorch())
script, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
"""
"""``python -c BLOCK_TORCH SCRIPT ARGS...``: runs SCRIPT with every torch import failing."""


@pytest.fixture(scope="module")
def model_4bit(tiny_dir, clips, tmp_path_factory) -> tuple[Path, Path]:
    """(export folder, ONNX file) of the 4-bit prototype model."""
    folder = write_export(prototype_model(tiny_dir, clips), 4, tmp_path_factory.mktemp("rt") / "m")
    export_onnx(folder, folder.parent / "model.onnx")
    return folder, folder.parent / "model.onnx"


@pytest.fixture(scope="module")
def wav_files(tmp_path_factory) -> list[str]:
    """The test sentences as 16-kHz wav files."""
    folder = tmp_path_factory.mktemp("audio")
    synthesize_clips(SENTENCES, out_dir=folder)
    return [str(folder / f"clip_{i:03d}.wav") for i in range(len(SENTENCES))]


def run_blocked(*args: str) -> subprocess.CompletedProcess:
    """Run ``args`` (a script and its arguments) with torch imports blocked."""
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_the_torch_block_is_real(tmp_path):
    script = tmp_path / "uses_torch.py"
    script.write_text("import torch\n")
    result = run_blocked(str(script))
    assert result.returncode != 0 and "torch is blocked in this process" in result.stderr


def test_example_classifies_without_torch_as_pytorch_does(model_4bit, wav_files):
    folder, onnx_path = model_4bit
    result = run_blocked("examples/classify_onnx.py", str(onnx_path), *wav_files, "--threads", "1")
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    reference = QuadsIntentClassifier.from_hparams(str(folder), run_opts={"device": "cpu"})
    assert [line[0] for line in lines] == wav_files
    for (_, label, probability), path in zip(lines, wav_files, strict=True):
        _, score, _, text_lab = reference.classify_file(path)
        assert label == text_lab[0]
        assert abs(float(probability) - score.exp().item()) <= 1e-4
    assert [line[1] for line in lines] == LABELS  # prototype clip i is class i


def test_readme_export_and_app_commands_run_as_written(model_4bit, wav_files, tmp_path):
    """README's two deployment commands, from a folder holding what they name (this test's
    4-bit export as ``results/slurp_4bit/1986/model``, speech as ``a.wav`` and ``b.wav``, the
    example app under ``examples/``): the exporter's summary line, then one line per file with
    the label the PyTorch model gives it."""
    export, app = (documented_commands(REPO / "README.md", program)
                   for program in ("python -m speechbrain_quads.deploy.onnx_export",
                                   "python examples/classify_onnx.py"))
    ((*_, model_dir, onnx_name),), ((_, script, onnx_again, *audio, _, threads),) = export, app
    assert onnx_again == onnx_name and threads == "2"
    shutil.copytree(model_4bit[0], tmp_path / model_dir)
    (tmp_path / "examples").mkdir()
    shutil.copy2(REPO / script, tmp_path / script)
    for name, source in zip(audio, wav_files, strict=False):
        shutil.copy2(source, tmp_path / name)
    for words in (*export, *app):
        result = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, (words, result.stderr[-3000:])
        if words in export:
            assert result.stdout.startswith(f"{onnx_name}\t4 bits\t")
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    reference = QuadsIntentClassifier.from_hparams(str(model_4bit[0]), run_opts={"device": "cpu"})
    assert [(name, label) for name, label, _ in lines] == [
        (name, reference.classify_file(str(tmp_path / name))[3][0]) for name in audio]


def test_example_int8_runs_without_torch(model_4bit, wav_files):
    result = run_blocked("examples/classify_onnx.py", str(model_4bit[1]), wav_files[1], "--int8",
                         "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\t")[1] == LABELS[1]


def test_example_reports_bad_files_and_goes_on(model_4bit, wav_files, tmp_path):
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    result = run_blocked("examples/classify_onnx.py", str(model_4bit[1]), str(empty), wav_files[2])
    assert result.returncode == 1
    assert result.stderr.strip() == f"{empty}\tERROR\tno audio samples (empty recording)"
    assert len(result.stdout.splitlines()) == 1
    assert result.stdout.split("\t")[:2] == [wav_files[2], LABELS[2]]
    bad_model = run_blocked("examples/classify_onnx.py", str(tmp_path / "nope.onnx"), wav_files[0])
    assert bad_model.returncode == 2 and "nope.onnx: no such ONNX model file" in bad_model.stderr


def test_foreign_truncated_and_non_onnx_models_are_refused(model_4bit, tmp_path):
    folder, onnx_path = model_4bit
    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9  # what the export writes; onnx's own default can outrun onnxruntime's
    onnx.save_model(model, foreign)
    with pytest.raises(OnnxModelError, match=rf"{foreign}: an ONNX model without "
                                             r"'speechbrain-quads-onnx' metadata"):
        OnnxIntentClassifier(foreign)
    future = tmp_path / "future.onnx"
    model.ir_version = 99
    onnx.save_model(model, future)
    with pytest.raises(OnnxModelError, match=rf"{future}: not a loadable ONNX model: .* too new "
                                             r"for this onnxruntime \(onnxruntime: .*IR version"):
        OnnxIntentClassifier(future)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[: onnx_path.stat().st_size // 2])
    with pytest.raises(OnnxModelError, match=rf"{truncated}: not a loadable ONNX model: truncated"):
        OnnxIntentClassifier(truncated)
    with pytest.raises(OnnxModelError, match=r"model.safetensors: not a loadable ONNX model"):
        OnnxIntentClassifier(folder / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"missing.onnx: no such ONNX model file"):
        OnnxIntentClassifier(tmp_path / "missing.onnx")


def test_bad_audio_is_refused_by_name(model_4bit, clips, tmp_path):
    classifier = OnnxIntentClassifier(model_4bit[1], threads=1)
    wave = clips[0].numpy()
    cases = {
        "8k.wav": (wave[::2], 8000, r"sample rate 8000 Hz; this model takes 16000 Hz audio"),
        "empty.wav": (wave[:0], 16000, r"no audio samples \(empty recording\)"),
        "short.wav": (wave[:160], 16000, r"10.0 ms of audio; at least 25 ms is needed"),
        "long.wav": (np.zeros(31 * 16000, np.float32), 16000,
                     r"31.00 s of audio; this model takes at most 30.01 s: split longer audio"),
        "nan.wav": (np.full(16000, np.nan, np.float32), 16000, r"contains NaN or infinite"),
    }
    for name, (samples, rate, message) in cases.items():
        path = tmp_path / name
        soundfile.write(path, samples, rate, subtype="FLOAT")
        with pytest.raises(AudioFileError, match=rf"{path}: {message}"):
            classifier.classify_file(path)
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    with pytest.raises(AudioFileError, match=rf"{text}: cannot read audio"):
        classifier.classify_file(text)
    with pytest.raises(AudioFileError, match=r"missing.wav: no such file"):
        classifier.classify_file(tmp_path / "missing.wav")
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.stack([wave, wave], axis=1), 16000, subtype="FLOAT")
    assert classifier.classify_file(stereo)[0] == classifier.classify(wave)[0] == LABELS[0]


def test_exporter_refuses_bad_model_folders(model_4bit, tmp_path):
    folder, _ = model_4bit
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((folder / "config.json").read_bytes())
    data = (folder / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    result = subprocess.run([sys.executable, "-m", "speechbrain_quads.deploy.onnx_export",
                             str(broken), str(tmp_path / "out.onnx")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert f"{broken / 'model.safetensors'}: SHA-256 is" in result.stderr
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nothing'}: not an export folder"):
        export_onnx(tmp_path / "nothing", tmp_path / "out.onnx")


def test_onnx_accuracy_benchmark_scores_every_path_on_a_recipe_test_csv(model_4bit, wav_files,
                                                                        tmp_path):
    """``benchmarks/onnx_accuracy.py`` on a test CSV in the SLURP recipe's format."""
    folder, _ = model_4bit
    table = tmp_path / "test-type=direct.csv"
    rows = [(0, "lights", "on"), (1, "weather", "query"), (3, "alarm", "set")]  # LABELS 0, 1, 3
    lines = ["ID,duration,wav,semantics,transcript"]
    for index, scenario, action in rows:
        semantics = str({"scenario": scenario, "action": action, "entities": []}).replace(",", "|")
        lines.append(f'u{index},1.0,{wav_files[index]},"{semantics}",{SENTENCES[index]}')
    table.write_text("\n".join(lines) + "\n")
    out = tmp_path / "onnx_accuracy.json"
    result = subprocess.run([sys.executable, "benchmarks/onnx_accuracy.py", str(folder),
                             str(table), "--json", str(out)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["recordings"] == 3 and data["bits"] == 4
    accuracy = {name: values["accuracy"] for name, values in data["paths"].items()}
    assert accuracy["torch"] == accuracy["onnx_float"] == 1.0  # clip i is prototype i
    assert data["label_agreement_with_torch"]["onnx_float"] == 1.0
    assert {c["a"] for c in data["comparisons"]} == {"onnx_float", "onnx_int8"}
    assert all(0.0 <= c["p_value"] <= 1.0 for c in data["comparisons"])
    assert "onnx_int8" in result.stdout


@pytest.mark.parametrize("compute", ["float", "int8"])
def test_spinning_off_is_set_and_changes_no_output(model_4bit, wav_files, compute):
    """``spinning=False`` reaches onnxruntime's options; the logits are the same bits."""
    default = OnnxIntentClassifier(model_4bit[1], threads=2, compute=compute)
    quiet = OnnxIntentClassifier(model_4bit[1], threads=2, compute=compute, spinning=False)
    key = "session.intra_op.allow_spinning"
    assert quiet.session.get_session_options().get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        default.session.get_session_options().get_session_config_entry(key)
    wave = quiet.read_audio(wav_files[0])
    np.testing.assert_array_equal(quiet.logits(wave), default.logits(wave))
