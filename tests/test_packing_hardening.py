"""Tests that a packed export refuses bad files: each corrupts a real export in one way."""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_packing import (  # noqa: F401 (fixtures)
    FC1,
    POSITIONS,
    _edit_entry,
    _edit_generated,
    _rewrite,
    packed_file,
    quantized_encoder,
    whisper_encoder,
)
from torch import nn

from speechbrain_quads.codebook import packing
from speechbrain_quads.codebook.packed_format import MAX_GENERATED_ELEMENTS
from speechbrain_quads.codebook.packing import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PackedFormatError,
    export_packed,
    load_packed,
    load_packed_into,
    payload_digest,
)
from speechbrain_quads.codebook.quantization import QuantizationConfig, quantize_


def _refused(path, message):
    """Assert ``load_packed(path)`` raises PackedFormatError matching ``message``, naming it."""
    with pytest.raises(PackedFormatError, match=message) as error:
        load_packed(path)
    assert path.name in str(error.value)
    return str(error.value)


def _payload_span(path, key):
    """(start, stop) byte offsets of tensor ``key``'s data in the safetensors file ``path``."""
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    start, stop = json.loads(data[8 : 8 + length])[key]["data_offsets"]
    return 8 + length + start, 8 + length + stop


def test_a_huge_generated_table_is_refused_before_it_is_built(tmp_path, monkeypatch):
    """A 0.5 kB file claiming a [3000, 20000] table (1.65 GB of work today) is refused."""
    generated = {POSITIONS: {"kind": "whisper_sinusoids", "shape": [3000, 20000],
                             "recipe": "float32>float32", "sha256": "0" * 64}}
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "quantized": "{}",
                "generated": json.dumps(generated), "payload_sha256": payload_digest({})}
    path = tmp_path / "huge.safetensors"
    save_file({}, path, metadata=metadata)
    assert path.stat().st_size < 640

    def never(*args):
        raise AssertionError("whisper_sinusoids was called")

    monkeypatch.setattr(packing, "whisper_sinusoids", never)
    message = _refused(path, r"declared shape \[3000, 20000\] \(60000000 values\) exceeds")
    assert f"generated tensor '{POSITIONS}'" in message and str(MAX_GENERATED_ELEMENTS) in message


def test_a_generated_table_must_have_the_model_shape(tmp_path, packed_file):  # noqa: F811
    bad = _rewrite(packed_file, tmp_path / "narrow.safetensors",
                   metadata_update=_edit_generated("shape", [1500, 32]))
    with pytest.raises(PackedFormatError, match=r"declared shape \[1500, 32\] does not match "
                       r"the model's \[1500, 64\]") as error:
        load_packed_into(whisper_encoder(seed=1), bad)
    assert "narrow.safetensors: generated tensor 'embed_positions.weight'" in str(error.value)


def test_dtype_names_come_from_a_whitelist(tmp_path, packed_file):  # noqa: F811
    bad = _rewrite(packed_file, tmp_path / "dynamo.safetensors",
                   metadata_update=_edit_entry(FC1, "dtype", "_dynamo"))
    message = _refused(bad, "dtype '_dynamo' is not one of")
    assert f"tensor '{FC1}'" in message


def test_non_zero_padding_bits_are_refused(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))  # 15 weights x 3 bits = 45 bits: 3 padding bits
    quantize_(model, QuantizationConfig(bits=3))
    source = tmp_path / "small.safetensors"
    export_packed(model, source)
    with safe_open(source, framework="pt") as handle:
        indices = handle.get_tensor("0.weight::indices").clone()
    assert indices.numel() == 6 and int(indices[-1]) >> 5 == 0
    indices[-1] |= 0b1000_0000
    bad = _rewrite(source, tmp_path / "padding.safetensors",
                   replace={"0.weight::indices": indices})
    message = _refused(bad, "non-zero padding bits in the last byte")
    assert "tensor '0.weight'" in message


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"replace": {FC1: torch.zeros(128, 64)}}, f"tensor '{FC1}' is both stored and quantized"),
        (
            {"metadata_update": lambda m: {**m, "generated": json.dumps({
                **json.loads(m["generated"]),
                FC1: {**json.loads(m["generated"])[POSITIONS], "shape": [128, 64]}})}},
            f"tensor '{FC1}' is both quantized and generated",
        ),
        ({"replace": {FC1 + "::extra": torch.zeros(1)}}, f"'{FC1}::extra' has no entry"),
    ],
)
def test_colliding_and_stray_keys_are_refused(tmp_path, packed_file, edit, message):  # noqa: F811
    _refused(_rewrite(packed_file, tmp_path / "collide.safetensors", **edit), message)


def test_a_codebook_too_small_for_the_indices_is_refused(tmp_path, packed_file):  # noqa: F811
    """3-bit indices reach entry 7: a codebook of 7 entries per group would be read past."""
    bad = _rewrite(packed_file, tmp_path / "short.safetensors",
                   replace={FC1 + "::codebook": torch.zeros(4, 7)})
    _refused(bad, r"codebook must be float32 \(4, 8\) \(one entry per 3-bit index\), got "
                  r"torch.float32 \(4, 7\)")


def test_shape_and_numel_must_agree_with_the_header(tmp_path, packed_file):  # noqa: F811
    bad = _rewrite(packed_file, tmp_path / "shape.safetensors",
                   metadata_update=_edit_entry(FC1, "shape", [128, 63]))
    _refused(bad, r"shape \[128, 63\] does not hold numel 8192")
    longer = _rewrite(packed_file, tmp_path / "longer.safetensors",
                      replace={FC1 + "::indices": torch.zeros(3073, dtype=torch.uint8)})
    _refused(longer, r"expected uint8 \(3072,\) for 8192 indices of 3 bits, got torch.uint8 \(3073,\)")


@pytest.mark.parametrize("corruption", ["zeroed", "bit_flip"])
def test_a_corrupted_payload_fails_its_checksum(tmp_path, packed_file, corruption):  # noqa: F811
    data = bytearray(packed_file.read_bytes())
    if corruption == "zeroed":
        start, stop = _payload_span(packed_file, "layer_norm.weight")
        assert any(data[start:stop])
        data[start:stop] = bytes(stop - start)
    else:
        start, _ = _payload_span(packed_file, FC1 + "::indices")
        data[start + 100] ^= 0b100
    bad = tmp_path / f"{corruption}.safetensors"
    bad.write_bytes(bytes(data))
    _refused(bad, "payload checksum mismatch .*: the file is corrupted or was edited")


def test_version_2_loads_unchecked_and_version_3_needs_its_checksum(tmp_path, packed_file):  # noqa: F811
    def as_version(version):
        def update(metadata):
            return {k: v for k, v in {**metadata, "format_version": version}.items()
                    if k != "payload_sha256"}
        return update

    zeros = {"layer_norm.weight": torch.zeros(64)}
    old = _rewrite(packed_file, tmp_path / "v2.safetensors", replace=zeros,
                   metadata_update=as_version("2"))
    assert torch.equal(load_packed(old)["layer_norm.weight"], torch.zeros(64))  # unchecked
    new = _rewrite(packed_file, tmp_path / "v3.safetensors", metadata_update=as_version("3"))
    _refused(new, "header metadata 'payload_sha256' is missing or malformed")
