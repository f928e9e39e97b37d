"""The exported model folder: ``model.safetensors`` (packed b-bit codebooks when quantized, plain
float32 otherwise) and ``config.json`` (labels, front-end and Whisper settings, the SHA-256 of
``model.safetensors``), written atomically; and reading both back with the checks every reader
applies (``deploy.inference`` fetches the folder and rebuilds the model from them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from speechbrain_quads.codebook.packing import FORMAT_NAME, export_packed, load_packed_into
from speechbrain_quads.codebook.quantization import CodebookQuantizer

MODEL_FORMAT = "speechbrain-quads-model"
FLOAT_FORMAT = "float32"  # header ``format`` of an unquantized export's model.safetensors
PARAMETRIZED = ".parametrizations.weight."
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
CONFIG_VERSION = 2
"""Version 2 adds ``model_sha256``; version 1 folders (no checksum) still load."""
SAMPLING_RATES = (4000, 384000)
"""Accepted ``sampling_rate`` range in Hz (inclusive)."""
WHISPER_KEYS = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                "num_mel_bins", "max_source_positions")
"""``whisper_config`` entries that fix the student's shapes (positive integers, all required)."""


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under plain names: a quantizer's latent weight becomes ``weight`` and its
    codebook tensors are dropped (for exporting a model whose quantizer is off)."""
    state = {}
    for key, value in model.state_dict().items():
        if PARAMETRIZED + "original" in key:
            key = key.replace(PARAMETRIZED + "original", ".weight")
        elif PARAMETRIZED in key:
            continue
        state[key] = value.detach().contiguous().cpu()
    return state


def file_sha256(path: str | Path) -> str:
    """Lower-case hex SHA-256 of the bytes of ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _integer(config: dict, key: str, where: str, low: int, high: int | None = None) -> int:
    """``config[key]`` if it is an int (not a bool) in [low, high]; else a ValueError naming it."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: key {key!r} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{where}: key {key!r} must be {bounds}, got {value}")
    return value


def _check_labels(labels: object, where: str) -> None:
    """ValueError unless ``labels`` lists at least 2 distinct non-empty strings."""
    if not isinstance(labels, list) or len(labels) < 2:
        raise ValueError(f"{where}: key 'labels' must list at least 2 intent strings, got {labels!r}")
    bad = [label for label in labels if not isinstance(label, str) or not label.strip()]
    if bad:
        raise ValueError(f"{where}: key 'labels' holds {bad[0]!r}; every label must be a non-empty "
                         "string")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"{where}: key 'labels' repeats {', '.join(map(repr, repeated))}")


def _check_whisper_config(config: dict, where: str) -> None:
    """ValueError unless ``config['whisper_config']`` holds the shape keys, consistent with
    ``config['student_size']``."""
    whisper = config.get("whisper_config")
    if not isinstance(whisper, dict):
        raise ValueError(f"{where}: key 'whisper_config' must be a JSON object, got {whisper!r}")
    missing = [key for key in WHISPER_KEYS if key not in whisper]
    if missing:
        raise ValueError(f"{where}: key 'whisper_config' misses {', '.join(missing)}")
    for key in WHISPER_KEYS:
        _integer(whisper, key, f"{where}: whisper_config", 1)
    if whisper["d_model"] % whisper["encoder_attention_heads"]:
        raise ValueError(f"{where}: whisper_config d_model {whisper['d_model']} is not a multiple "
                         f"of encoder_attention_heads {whisper['encoder_attention_heads']}")
    if config["student_size"] != whisper["d_model"]:
        raise ValueError(f"{where}: key 'student_size' is {config['student_size']} but "
                         f"whisper_config d_model is {whisper['d_model']}")


def _check_bit_widths(widths: object, bits: int, where: str) -> None:
    """ValueError unless ``widths`` lists increasing integer widths in [1, 16], the widest
    equal to ``bits``."""
    if (not isinstance(widths, list) or not widths
            or any(isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= 16
                   for w in widths)
            or widths != sorted(set(widths)) or widths[-1] != bits):
        raise ValueError(f"{where}: key 'bit_widths' must list increasing integers in [1, 16] "
                         f"ending at 'bits' ({bits}), got {widths!r}")


def stored_widths(quantizer: CodebookQuantizer) -> list[int]:
    """The distinct index widths of ``quantizer``'s codebooks, increasing (e.g. [3, 4, 5] for
    a model given a width per tensor by ``target_mb``)."""
    return sorted({codebook.bits for _, codebook in quantizer.modules.values()})


def describe_bits(config: dict) -> str:
    """``config``'s width for people: ``'4 bits'``, or ``'3-5 bits'`` for mixed widths."""
    widths = config.get("bit_widths", [config["bits"]])
    span = str(widths[0]) if len(widths) == 1 else f"{widths[0]}-{widths[-1]}"
    return f"{span} bits"


def check_config(config: object, where: str | Path) -> dict:
    """Check a parsed export ``config.json`` (``where`` names it in errors); returns ``config``.

    Raises:
        ValueError: naming ``where`` and the key, for a missing key, a wrong JSON type or a value
            out of range (sampling_rate in Hz within :data:`SAMPLING_RATES`, bits in 1..16 or 32,
            distinct labels, student_size = whisper_config d_model, model_sha256 of 64 hex digits).
    """
    where = str(where)
    if not isinstance(config, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(config).__name__}")
    if config.get("format") != MODEL_FORMAT:
        raise ValueError(f"{where}: format is {config.get('format')!r}, expected {MODEL_FORMAT!r}")
    version = config.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CONFIG_VERSION:
        raise ValueError(f"{where}: unsupported version {version!r} (this reader knows 1 to "
                         f"{CONFIG_VERSION})")
    _check_labels(config.get("labels"), where)
    bits = config.get("bits")
    if isinstance(bits, bool) or not isinstance(bits, int) or not (1 <= bits <= 16 or bits == 32):
        raise ValueError(f"{where}: key 'bits' must be an integer in [1, 16] or 32, got {bits!r}")
    if "bit_widths" in config:
        _check_bit_widths(config["bit_widths"], bits, where)
    if not isinstance(config.get("pad_to_30s"), bool):
        raise ValueError(f"{where}: key 'pad_to_30s' must be true or false, got "
                         f"{config.get('pad_to_30s')!r}")
    _integer(config, "sampling_rate", where, *SAMPLING_RATES)
    _integer(config, "student_size", where, 1)
    _check_whisper_config(config, where)
    if version >= 2:
        digest = config.get("model_sha256")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{where}: key 'model_sha256' must be 64 lower-case hex digits, got "
                             f"{digest!r}")
    return config


def read_config(path: str | Path) -> dict:
    """Read and check an export's ``config.json`` (see :func:`check_config`).

    Raises:
        ValueError: naming ``path`` (and the key), if it is not JSON or not a valid QUADS config.
    """
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    return check_config(config, path)


def verify_model_file(config: dict, model_path: str | Path, config_path: str | Path) -> None:
    """Check ``model_path`` against ``config["model_sha256"]`` (version 1 configs have none).

    Raises:
        ValueError: naming both files, if the SHA-256 differs (a truncated, zeroed or altered file,
            or one from another export).
    """
    expected = config.get("model_sha256")
    if expected is None:
        return
    found = file_sha256(model_path)
    if found != expected:
        raise ValueError(f"{model_path}: SHA-256 is {found}, but model_sha256 in {config_path} is "
                         f"{expected}: the file is corrupt (truncated, zeroed, altered) or not the "
                         f"one exported with this {CONFIG_FILE}")


def _file_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's header metadata (empty if it has none)."""
    try:
        with safe_open(path, framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None


def _check_stored_widths(path: Path, metadata: dict[str, str], bit_widths: list[int]) -> None:
    """ValueError naming both files unless the file stores exactly ``bit_widths`` (from
    ``config.json``; a float32 file stores none)."""
    stored = sorted({entry["bits"] for entry in json.loads(metadata.get("quantized", "{}")).values()})
    if stored != bit_widths:
        raise ValueError(f"{CONFIG_FILE} for {path}: key 'bit_widths' is {bit_widths}, but the "
                         f"file stores widths {stored}")


def load_weights(model: torch.nn.Module, path: str | Path,
                 bit_widths: list[int] | None = None) -> torch.nn.Module:
    """Load an export's ``model.safetensors`` (packed or float32) into a plain ``model``;
    with ``bit_widths`` (``config.json``'s), the file must store exactly those widths.

    Returns:
        ``model``; packed weights hold ``codebook[indices]`` exactly.

    Raises:
        ValueError: naming the file, if it is foreign, corrupt, does not fit ``model`` or does
            not store ``bit_widths``.
    """
    path = Path(path)
    metadata = _file_metadata(path)
    found = metadata.get("format")
    if found == FORMAT_NAME:
        load_packed_into(model, path)
    elif found != FLOAT_FORMAT:
        raise ValueError(f"{path}: header metadata format is {found!r}, expected {FORMAT_NAME!r} "
                         f"(packed) or {FLOAT_FORMAT!r}; not a QUADS model file")
    else:
        try:
            model.load_state_dict(load_file(path), strict=True)
        except (RuntimeError, SafetensorError) as error:
            raise ValueError(f"{path}: does not fit the model described by {CONFIG_FILE} "
                             f"({error})") from None
    if bit_widths is not None:
        _check_stored_widths(path, metadata, bit_widths)
    return model


def _atomic_folder(final: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp_dir)`` and rename the result to ``final``, replacing it.

    A folder already at ``final`` is renamed aside first and deleted only once the new one is
    in place; if that rename fails it is renamed back (and if even that fails, it stays beside
    ``final``). So a failure never deletes the old folder."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    aside = tmp.with_name(tmp.name + ".old")
    try:
        write(tmp)
        if final.exists():
            os.rename(final, aside)
        try:
            os.rename(tmp, final)
        except BaseException:
            if aside.exists():
                os.rename(aside, final)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_model(brain, labels: list[str], folder: Path) -> dict:
    """Write ``model.safetensors`` (packed when quantized) + ``config.json`` (with its SHA-256)
    into ``folder`` atomically; returns sizes in bytes and MB. ``config.json``'s ``bits`` is
    the widest index width stored (32 unquantized) and ``bit_widths`` lists every width stored.

    Raises:
        ValueError: if the config would not pass :func:`check_config` (e.g. repeated labels);
            nothing is written then.
    """
    quantizer = getattr(brain, "quantizer", None)
    quantized = quantizer is not None and quantizer.mode != "off"
    student = brain.deployable["student"]
    widths = stored_widths(quantizer) if quantized else [32]
    config = {
        "format": MODEL_FORMAT, "version": CONFIG_VERSION, "labels": list(labels),
        "bits": widths[-1], "pad_to_30s": student.pad_to_30s,
        "sampling_rate": student.frontend.sampling_rate, "student_size": student.output_size,
        "whisper_config": student.encoder.config.to_dict(),
    }
    if quantized:
        config["bit_widths"] = widths
    check_config({**config, "model_sha256": "0" * 64}, f"{CONFIG_FILE} for {folder}")
    sizes: dict = {}

    def write(tmp: Path) -> None:
        model_path = tmp / MODEL_FILE
        if quantized:
            sizes.update(export_packed(brain.deployable, model_path).as_dict())
        else:
            state = plain_state_dict(brain.deployable)
            save_file(state, str(model_path), metadata={"format": FLOAT_FORMAT})
            params = sum(v.numel() for v in state.values())
            size = model_path.stat().st_size
            sizes.update({"packed_bytes": size, "fp32_bytes": params * 4, "total_params": params,
                          "packed_mb": size / 2**20, "fp32_mb": params * 4 / 2**20, "bits": 32})
        config["model_sha256"] = file_sha256(model_path)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1), encoding="utf-8")

    _atomic_folder(folder, write)
    return sizes
