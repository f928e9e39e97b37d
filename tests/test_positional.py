"""Tests of the regenerated Whisper positional table against real checkpoints and transformers."""

import pytest
import torch
from safetensors import safe_open
from transformers.models.whisper.modeling_whisper import sinusoids

from speechbrain_quads.models.positional import sinusoid_recipe, table_digest, whisper_sinusoids

TABLE = "model.encoder.embed_positions.weight"


@pytest.mark.parametrize("name", ["tiny_dir", "base_dir"])
def test_offline_checkpoints_hold_float16_rounded_sinusoids(request, name):
    folder = request.getfixturevalue(name)
    with safe_open(f"{folder}/model.safetensors", framework="pt") as handle:
        table = handle.get_tensor(TABLE).float()
    assert sinusoid_recipe(table) == "float64>float16"
    assert torch.equal(whisper_sinusoids(*table.shape, "float64>float16"), table)
    assert table_digest(whisper_sinusoids(*table.shape, "float64>float16")) == table_digest(table)


def test_float32_recipe_is_transformers_own_sinusoids():
    assert torch.equal(whisper_sinusoids(1500, 384, "float32>float32"), sinusoids(1500, 384))
    assert sinusoid_recipe(sinusoids(448, 64)) == "float32>float32"


def test_float64_recipe_is_close_to_but_not_the_float32_one():
    exact = whisper_sinusoids(1500, 384, "float64>float32")
    fast = whisper_sinusoids(1500, 384, "float32>float32")
    assert 0 < (exact - fast).abs().max().item() < 1e-3  # float32 angles drift at large positions


def test_anything_else_is_not_recognised():
    table = whisper_sinusoids(100, 64)
    nudged = table.clone()
    nudged[50, 10] = torch.nextafter(nudged[50, 10], torch.tensor(2.0))
    assert sinusoid_recipe(table) == "float64>float32"
    assert sinusoid_recipe(nudged) is None
    assert sinusoid_recipe(table.double()) is None
    assert sinusoid_recipe(table[:, :63]) is None
    assert sinusoid_recipe(table[0]) is None
    with pytest.raises(ValueError, match="recipe"):
        whisper_sinusoids(10, 64, "float16")
    with pytest.raises(ValueError, match="even width"):
        whisper_sinusoids(10, 63)
