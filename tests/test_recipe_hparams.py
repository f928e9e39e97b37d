"""Recipe hparams files: each is whole plain HyperPyYAML, and their shared sections cannot drift."""

import re
from pathlib import Path

import pytest
from hyperpyyaml import load_hyperpyyaml

REPO = Path(__file__).resolve().parents[1]
FILES = sorted(REPO.glob("recipes/*/quads/hparams/*.yaml"))
SECTION = re.compile(r"^# -{20,} (.+)$", re.MULTILINE)
PER_FILE = {"variant", "experiment and data"}  # what a file may set on its own
PER_WIDTH = re.compile(r"^(granularity|group_size|outlier_fraction|target_mb|target_widths):.*$",
                       re.MULTILINE)
"""Codebook layout keys a file may choose (2 bits: one codebook per row, 0.5 % outliers; the
mixed-width file: its size and widths), in the quantization section of every quantized file."""
PER_WIDTH_LOSS = re.compile(r"^quant_distill_weight:.*$", re.MULTILINE)
"""The teacher term's weight in quantization phases, which a width may choose (4 bits: 1.0), in
the losses section of every file."""


def sections(path: Path) -> dict[str, str]:
    """``{section title: its text}`` of a recipe hparams file (``# ---- title`` headers)."""
    text = path.read_text(encoding="utf-8")
    heads = list(SECTION.finditer(text))
    return {m.group(1): text[m.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
            for i, m in enumerate(heads)}


def test_every_recipe_ships_five_widths():
    names = {p.name for p in FILES}
    for prefix in ("slurp", "fsc"):
        assert {f"{prefix}_{b}bit.yaml" for b in (2, 4, 8, 16, 32)} <= names


def test_shared_sections_are_identical_across_recipe_files():
    reference: dict[str, tuple[str, Path]] = {}
    for path in FILES:
        found = sections(path)
        assert PER_FILE <= set(found), f"{path.name}: sections {sorted(found)}"
        for title, body in found.items():
            if title in PER_FILE:
                continue
            if title == "quantization":
                assert len(PER_WIDTH.findall(body)) == 5, f"{path.name}: {PER_WIDTH.pattern}"
                body = PER_WIDTH.sub("", body)
            if title == "losses and optimisation":
                assert len(PER_WIDTH_LOSS.findall(body)) == 1, f"{path.name}: quant_distill_weight"
                body = PER_WIDTH_LOSS.sub("", body)
            first = reference.setdefault(title, (body, path))
            assert body == first[0], f"section '{title}' of {path.name} differs from {first[1].name}"
    assert {"models", "quantization", "MCT schedule", "losses and optimisation"} <= set(reference)
    quantized = [p for p in FILES if not p.name.endswith("_32bit.yaml")]
    assert all("quantization" in sections(p) for p in quantized)


def test_no_yaml_in_the_repository_uses_extends():
    offenders = [p for p in REPO.rglob("*.yaml") if ".venv" not in p.parts
                 and re.search(r"^extends:", p.read_text(encoding="utf-8"), re.MULTILINE)]
    assert not offenders


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_recipe_file_loads_with_plain_hyperpyyaml(path, tiny_dir, monkeypatch):
    """Only ``data_folder`` is needed; the output folder names the width and the seed."""
    monkeypatch.chdir(path.parent.parent)
    overrides = {"data_folder": "/data", "teacher_source": tiny_dir, "student_source": tiny_dir}
    with open(path, encoding="utf-8") as handle:
        hparams = load_hyperpyyaml(handle, overrides)
    bits = int(re.search(r"_(\d+)bit", path.name).group(1))
    assert hparams["bits"] == bits
    assert hparams["output_folder"] == f"results/{path.stem}/1986"
    assert hparams["number_of_epochs"] == 11 == hparams["epoch_counter"].limit
    if bits == 32:
        assert hparams["quantizer"] is None and hparams["strategy"] == "distill_only"
    else:
        assert hparams["quantizer"].config.bits == bits and hparams["strategy"] == "mct"
