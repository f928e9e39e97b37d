"""Tests of b-bit packing, the packed safetensors export/import and the size accounting."""

import json
import math
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from speechbrain_quads.codebook.packing import (
    export_packed,
    load_packed,
    load_packed_into,
    pack_indices,
    packed_length,
    payload_digest,
    size_report,
    unpack_indices,
)
from speechbrain_quads.codebook.quantization import CodebookQuantizer, QuantizationConfig, quantize_

WHISPER = WhisperConfig(
    d_model=64,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=128,
    num_mel_bins=80,
    max_source_positions=1500,
)


def whisper_encoder(seed: int) -> WhisperEncoder:
    torch.manual_seed(seed)
    return WhisperEncoder(WHISPER).eval()


@pytest.fixture(scope="module")
def quantized_encoder() -> WhisperEncoder:
    """A small random Whisper encoder, 3-bit per-group codebooks, trained one step."""
    encoder = whisper_encoder(seed=0)
    config = QuantizationConfig(bits=3, granularity="per_group", group_size=32)
    quantizer = quantize_(encoder, config)
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    encoder(features).last_hidden_state.square().mean().backward()
    optimizer.step()
    quantizer.set_mode("frozen")
    return encoder


@pytest.fixture()
def packed_file(tmp_path, quantized_encoder):
    path = tmp_path / "encoder.safetensors"
    export_packed(quantized_encoder, path)
    return path


@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_unpack_every_width(bits):
    generator = torch.Generator().manual_seed(bits)
    dtype = torch.uint8 if bits <= 8 else torch.int32
    for numel in (1, 7, 13, 1001, 4099):
        indices = torch.randint(0, 2**bits, (numel,), generator=generator, dtype=dtype)
        indices[0] = 2**bits - 1  # the widest index survives too
        packed = pack_indices(indices, bits)
        assert packed.dtype == torch.uint8
        assert packed.numel() == math.ceil(numel * bits / 8) == packed_length(numel, bits)
        unpacked = unpack_indices(packed, bits, numel)
        assert unpacked.dtype == dtype
        assert torch.equal(unpacked, indices)


def test_pack_layout_is_dense_lsb_first():
    # 1 = 100, 2 = 010, 7 = 111 (LSB first) -> stream 100 010 111 -> bytes 0b11010001, 0b1
    assert pack_indices(torch.tensor([1, 2, 7]), 3).tolist() == [0b11010001, 0b1]


def test_pack_layout_above_8_bits_is_dense_lsb_first():
    # 9 bits: 0x1FF, 2 -> 111111111 010000000 (LSB first) -> 0xFF, 0b00000101, 0b00 (2 pad bits)
    assert pack_indices(torch.tensor([0x1FF, 2]), 9).tolist() == [0xFF, 0b101, 0]
    # 16 bits: little-endian uint16
    assert pack_indices(torch.tensor([0x1234, 0xFFFF]), 16).tolist() == [0x34, 0x12, 0xFF, 0xFF]


def test_unpack_refuses_non_zero_padding_bits():
    packed = pack_indices(torch.tensor([1, 2, 7]), 3)  # 9 bits: 7 padding bits in byte 2
    packed[1] |= 0b10
    with pytest.raises(ValueError, match="non-zero padding bits in the last byte"):
        unpack_indices(packed, 3, 3)


def test_pack_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        pack_indices(torch.tensor([0]), 17)
    with pytest.raises(ValueError, match="bits"):
        unpack_indices(torch.zeros(1, dtype=torch.uint8), 0, 1)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        pack_indices(torch.tensor([8]), 3)
    with pytest.raises(ValueError, match="2 bytes"):
        unpack_indices(torch.zeros(3, dtype=torch.uint8), 3, 5)


def test_export_then_load_gives_identical_whisper_outputs(quantized_encoder, packed_file):
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = quantized_encoder(features).last_hidden_state
        fresh = load_packed_into(whisper_encoder(seed=5), packed_file)
        actual = fresh(features).last_hidden_state
        unquantized = whisper_encoder(seed=0)(features).last_hidden_state
    assert (actual - expected).abs().max().item() == 0.0
    assert (unquantized - expected).abs().max().item() > 1e-3
    distinct = fresh.layers[0].fc1.weight.unique().numel()
    assert 8 < distinct <= 4 * 8  # 128 rows / group_size 32 = 4 codebooks of 8 centroids
    assert not list(packed_file.parent.glob(".*.tmp"))


def test_size_report_is_the_exact_bit_arithmetic(quantized_encoder, packed_file):
    report = export_packed(quantized_encoder, packed_file)
    with open(packed_file, "rb") as handle:
        header = struct.unpack("<Q", handle.read(8))[0]
    assert report.packed_bytes == packed_file.stat().st_size
    assert report.packed_bytes == report.bit_arithmetic_bytes + 8 + header

    plain_model = whisper_encoder(seed=0)
    plain = plain_model.state_dict()
    quantized = {
        f"{name}.weight"
        for name, module in plain_model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv1d))
    }
    expected = 0
    for key, value in plain.items():
        if key in quantized:
            groups = max(1, value.shape[0] // 32)
            expected += math.ceil(value.numel() * 3 / 8) + groups * 2**3 * 4
        elif key != POSITIONS:  # rebuilt from its recipe, not stored
            expected += value.numel() * 4
    total = sum(value.numel() for value in plain.values())
    assert report.bit_arithmetic_bytes == expected
    assert report.paper_bytes == total * 3 / 8
    assert report.fp32_bytes == total * 4
    assert report.quantized_params == sum(plain[key].numel() for key in quantized)
    assert report.as_dict()["packed_mb"] == report.packed_bytes / 2**20
    assert size_report(quantized_encoder) == report  # in memory: the same serialised layout


POSITIONS = "embed_positions.weight"


@pytest.mark.parametrize("bits", [9, 12, 16])
def test_wide_exports_are_the_bit_arithmetic_and_reload_bit_exact(tmp_path, bits):
    """9-16 bits: 120000 weights (more distinct values than 2**16: clustered) and 300 (fewer:
    kept exact); each index takes exactly b bits in the file, each codebook 2**b float32."""
    torch.manual_seed(bits)
    model = nn.Sequential(nn.Linear(400, 300), nn.Tanh(), nn.Linear(300, 1))
    quantize_(model, QuantizationConfig(bits=bits))
    path = tmp_path / f"wide{bits}.safetensors"
    report = export_packed(model, path)
    with open(path, "rb") as handle:
        header = struct.unpack("<Q", handle.read(8))[0]
    codebooks = 2 * 2**bits * 4
    biases = (300 + 1) * 4
    expected = math.ceil(120000 * bits / 8) + math.ceil(300 * bits / 8) + codebooks + biases
    assert report.bit_arithmetic_bytes == expected
    assert report.packed_bytes == path.stat().st_size == expected + 8 + header
    assert report.packed_bytes <= 1.01 * report.bit_arithmetic_bytes
    plain = nn.Sequential(nn.Linear(400, 300), nn.Tanh(), nn.Linear(300, 1))
    load_packed_into(plain, path)
    inputs = torch.randn(16, 400)
    with torch.no_grad():
        assert torch.equal(plain(inputs), model(inputs))
    assert torch.equal(plain[2].weight, model[2].parametrizations["weight"].original)  # exact
    assert 2**bits // 2 < plain[0].weight.unique().numel() <= 2**bits


def test_sinusoidal_positions_are_regenerated_not_stored(tmp_path, quantized_encoder, packed_file):
    with safe_open(packed_file, framework="pt") as handle:
        assert POSITIONS not in handle.keys()
        generated = json.loads(handle.metadata()["generated"])
    assert generated[POSITIONS]["recipe"] == "float32>float32"  # transformers' own sinusoids()
    table = quantized_encoder.embed_positions.weight
    assert torch.equal(load_packed(packed_file)[POSITIONS], table)

    # A table that differs in one element is stored as it is, and comes back exactly.
    edited = whisper_encoder(seed=0)
    quantize_(edited, QuantizationConfig(bits=3))
    regenerated = size_report(edited)
    with torch.no_grad():
        edited.embed_positions.weight[7, 3] += 1e-3
    stored = tmp_path / "stored.safetensors"
    report = export_packed(edited, stored)
    with safe_open(stored, framework="pt") as handle:
        assert POSITIONS in handle.keys()
        assert json.loads(handle.metadata()["generated"]) == {}
    assert torch.equal(load_packed(stored)[POSITIONS], edited.embed_positions.weight)
    assert report.bit_arithmetic_bytes - regenerated.bit_arithmetic_bytes == table.numel() * 4
    assert report.total_params == regenerated.total_params


def test_version_1_files_without_generated_tables_still_load(tmp_path, packed_file):
    table = load_packed(packed_file)[POSITIONS]
    old = _rewrite(
        packed_file,
        tmp_path / "v1.safetensors",
        replace={POSITIONS: table},
        metadata_update=lambda m: {
            k: v for k, v in {**m, "format_version": "1"}.items() if k != "generated"
        },
    )
    assert torch.equal(load_packed(old)[POSITIONS], table)


def test_a_table_rebuilt_differently_warns_naming_the_file(tmp_path, packed_file):
    def update(metadata):
        generated = json.loads(metadata["generated"])
        generated[POSITIONS]["sha256"] = "0" * 64
        return {**metadata, "generated": json.dumps(generated)}

    other = _rewrite(packed_file, tmp_path / "other.safetensors", metadata_update=update)
    with pytest.warns(UserWarning, match="other.safetensors: generated tensor"):
        load_packed(other)


def _edit_generated(field, value):
    def update(metadata):
        generated = json.loads(metadata["generated"])
        generated[POSITIONS][field] = value
        return {**metadata, "generated": json.dumps(generated)}

    return update


def _rewrite(source, target, drop=(), replace=None, metadata_update=None):
    """Copy a safetensors file, dropping/replacing tensors and updating the metadata.

    The payload digest is recomputed (as a writer with that bug would), so that the check each
    test is about, not the checksum, is what refuses the file.
    """
    with safe_open(source, framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if k not in drop}
    tensors.update(replace or {})
    metadata["payload_sha256"] = payload_digest(tensors)
    if metadata_update:
        metadata = metadata_update(metadata)
    save_file(tensors, target, metadata=metadata)
    return target


def _edit_entry(key, field, value):
    def update(metadata):
        entries = json.loads(metadata["quantized"])
        entries[key][field] = value
        return {**metadata, "quantized": json.dumps(entries)}

    return update


FC1 = "layers.0.fc1.weight"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"metadata_update": _edit_entry(FC1, "bits", 17)}, "bits 17 out of range"),
        ({"metadata_update": _edit_entry(FC1, "bits", 4)}, "codebook must be float32"),
        ({"metadata_update": _edit_entry(FC1, "numel", 10)}, "does not hold numel"),
        ({"metadata_update": _edit_entry(FC1, "groups", 3)}, "groups 3 does not divide"),
        ({"drop": [FC1 + "::codebook"]}, "missing 'layers.0.fc1.weight::codebook'"),
        (
            {"replace": {FC1 + "::indices": torch.zeros(100, dtype=torch.uint8)}},
            "indices inconsistent with the metadata",
        ),
        ({"metadata_update": lambda m: {**m, "format_version": "7"}}, "format_version"),
        ({"metadata_update": lambda m: {**m, "quantized": "{"}}, "not JSON"),
        ({"metadata_update": lambda m: {**m, "generated": "["}}, "'generated' is not JSON"),
        ({"metadata_update": _edit_generated("recipe", "float8")}, "recipe 'float8' is not"),
        ({"metadata_update": _edit_generated("shape", [1500, 63])}, "even width"),
        ({"metadata_update": _edit_generated("kind", "rope")}, "unknown kind"),
        (
            {"replace": {POSITIONS: torch.zeros(1500, 64)}},
            "'embed_positions.weight' is both stored and generated",
        ),
        ({"replace": {"stray::indices": torch.zeros(1, dtype=torch.uint8)}}, "no entry"),
    ],
)
def test_tampered_files_fail_naming_the_file(tmp_path, packed_file, edit, message):
    bad = _rewrite(packed_file, tmp_path / "bad.safetensors", **edit)
    with pytest.raises(ValueError, match=message) as error:
        load_packed(bad)
    assert "bad.safetensors" in str(error.value)


def test_truncated_foreign_and_missing_files(tmp_path, packed_file):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(packed_file.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated.safetensors: not a readable safetensors"):
        load_packed(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match="garbage.safetensors"):
        load_packed(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="foreign.safetensors: not a speechbrain-quads-packed"):
        load_packed(foreign)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_packed(tmp_path / "missing.safetensors")


def test_load_into_wrong_or_prepared_model_fails(packed_file):
    other = WhisperEncoder(WhisperConfig(**{**WHISPER.to_dict(), "encoder_layers": 1}))
    with pytest.raises(ValueError, match="encoder.safetensors: does not fit the model"):
        load_packed_into(other, packed_file)
    prepared = whisper_encoder(seed=0)
    CodebookQuantizer(QuantizationConfig(bits=2)).prepare(prepared)
    with pytest.raises(ValueError, match="needs a plain model"):
        load_packed_into(prepared, packed_file)


def test_export_is_atomic_and_refuses_unclustered_models(tmp_path, quantized_encoder):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"previous")
    prepared = whisper_encoder(seed=0)
    CodebookQuantizer(QuantizationConfig(bits=2)).prepare(prepared)
    with pytest.raises(ValueError, match="call CodebookQuantizer.cluster"):
        export_packed(prepared, path)
    assert path.read_bytes() == b"previous"
    export_packed(quantized_encoder, path)
    assert set(load_packed(path)) == set(whisper_encoder(seed=0).state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_the_same_model_exports_to_the_same_bytes(tmp_path, quantized_encoder):
    """safetensors writes header metadata in hash-map order, a new one per save; the export
    sorts it, so exporting one model twice gives one file (and one SHA-256)."""
    exports = [tmp_path / f"model{i}.safetensors" for i in range(4)]
    for path in exports:
        export_packed(quantized_encoder, path)
    assert len({path.read_bytes() for path in exports}) == 1
    length = struct.unpack("<Q", exports[0].read_bytes()[:8])[0]
    header = json.loads(exports[0].read_bytes()[8:8 + length])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    assert len(header["__metadata__"]) >= 4
    with safe_open(str(exports[0]), "pt") as handle:
        assert handle.metadata() == header["__metadata__"]
    assert set(load_packed(exports[0])) == set(whisper_encoder(seed=0).state_dict())


def test_outliers_are_kept_exactly_exported_and_checked(tmp_path):
    """``outlier_fraction``: the largest-magnitude weights bypass the codebook (the forward uses
    their latent values, which get the gradient there), the file stores them as int32 positions
    and float32 values (8 bytes each in the size), reloads bit-exactly and refuses tampering."""
    from safetensors.torch import load_file

    from speechbrain_quads.codebook.packing import PackedFormatError, load_packed

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))
    quantizer = quantize_(model, QuantizationConfig(bits=2, outlier_fraction=0.01))
    codebook = quantizer.modules["0"][1]
    latent = model[0].parametrizations["weight"].original
    assert codebook.outliers == round(0.01 * 64 * 64) == 41
    largest = latent.detach().abs().flatten().topk(41).indices.sort().values
    assert torch.equal(codebook.outlier_index, largest)
    used = model[0].weight.detach().flatten()
    assert torch.equal(used[largest], latent.detach().flatten()[largest])
    assert used.unique().numel() <= 4 + 41
    model(torch.randn(3, 64)).square().sum().backward()
    grad = latent.grad.flatten()
    assert bool((grad[largest] != 0).all())
    assert int((grad != 0).sum()) == 41  # elsewhere the gradient goes to the centroids
    path = tmp_path / "outliers.safetensors"
    report = export_packed(model, path)
    inputs = torch.randn(5, 64)
    plain = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))
    assert torch.equal(load_packed_into(plain, path)(inputs), model(inputs))
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))
    quantize_(reference, QuantizationConfig(bits=2))
    without = export_packed(reference, tmp_path / "plain.safetensors")
    assert report.bit_arithmetic_bytes - without.bit_arithmetic_bytes == 8 * (41 + 3)
    tensors = load_file(path)
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    index = tensors["0.weight::outlier_index"].clone()
    index[1] = index[0]
    for broken, message in (({**tensors, "0.weight::outlier_index": index}, "strictly"),
                            ({k: v for k, v in tensors.items()
                              if k != "0.weight::outlier_value"}, "missing")):
        bad = tmp_path / "bad.safetensors"
        meta = dict(metadata)
        meta.pop("payload_sha256")
        meta["format_version"] = "2"  # no digest: the layout checks must catch it
        save_file(broken, bad, metadata=meta)
        with pytest.raises(PackedFormatError, match=message):
            load_packed(bad)


def test_a_float64_model_is_refused_naming_the_module_and_nothing_is_written(tmp_path):
    """The file stores float32 codebooks and outliers, so a float64 model could not reload as
    trained: the export refuses it and names the module; the same model in float32 exports."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    quantize_(model, QuantizationConfig(bits=2))
    path = tmp_path / "model.safetensors"
    with pytest.raises(ValueError, match=r"module '0': float64 weights.*model\.float\(\)"):
        export_packed(model, path)
    assert list(tmp_path.iterdir()) == []
    model = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 4))
    quantize_(model, QuantizationConfig(bits=2))
    assert export_packed(model, path).packed_bytes == path.stat().st_size
