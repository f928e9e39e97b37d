"""The compression methods that ``benchmarks/run.py`` scores without ``train.py``.

Each starts from the same exported full-precision distilled student (an ``export_model`` folder)
and is scored on the same test manifest as the trained runs:

- :func:`kmeans_ptq`: the QUADS codebook quantizer applied once (per-tensor k-means, the same
  ``QuantizationConfig`` defaults as training), no retraining.
- :func:`dynamic_int8`: ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` (int8
  weights, activations quantized on the fly), the method of SpeechBrain's quantization tutorial.
- :func:`dkm_palettize`: Apple coremltools' ``DKMPalettizer`` (differentiable k-means) on the same
  layers as QUADS (every Linear and Conv1d), fine-tuned with cross-entropy for a fixed number of
  steps, then finalized; its palettized weights are written in the QUADS packed format, so its
  size is measured exactly like QUADS'.
"""

from __future__ import annotations

import io
import itertools
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset
from torch import nn
from torch.utils.data import DataLoader

from speechbrain_quads.codebook.quantization import QuantizationConfig, quantize_, quantized_modules
from speechbrain_quads.deploy.export import export_model
from speechbrain_quads.deploy.inference import load_export
from speechbrain_quads.evaluation.metrics import accuracy, macro_f1

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "SLURP" / "quads"))
import train as recipe  # noqa: E402  (the SLURP recipe's train.py: its data pipeline)

MB = 2**20


def run_datasets(run_dir: Path) -> tuple[dict[str, DynamicItemDataset], list[str]]:
    """Train/valid/test datasets of a finished ``train.py`` run and its labels in class order.

    The run's manifests and saved label encoder are re-used, so class indices match its export.
    """
    hparams = {"csv_train": str(run_dir / "train-type=direct.csv"),
               "csv_valid": str(run_dir / "devel-type=direct.csv"),
               "csv_test": str(run_dir / "test-type=direct.csv"), "sorting": "random",
               "train_dataloader_opts": {},
               "label_encoder_file": str(run_dir / "save" / "label_encoder.txt")}
    datasets, encoder = recipe.dataio_prepare(hparams)
    return datasets, [encoder.ind2lab[i] for i in range(len(encoder))]


def load_student(run_dir: Path) -> tuple[nn.ModuleDict, list[str]]:
    """The exported model of a run (``{"student", "classifier"}``, eval mode) and its labels."""
    model, config = load_export(run_dir / "model")
    return model.eval(), config["labels"]


@torch.no_grad()
def evaluate(model: nn.Module, dataset: DynamicItemDataset, batch_size: int = 16) -> dict:
    """Intent accuracy and macro-F1 (both in [0, 1]) of ``model`` on ``dataset``.

    ``model["student"](wavs (B, T), lens (B,))`` gives hidden states (L+1, B, T', C) and frame
    lengths; ``model["classifier"](last hidden, lens)`` gives logits (B, n_intents).
    """
    was_training = model.training
    model.eval()
    predicted, truth = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=PaddedBatch):
        wavs, lens = batch.sig
        hidden, frame_lens = model["student"](wavs, lens)
        predicted.extend(model["classifier"](hidden[-1], frame_lens).argmax(dim=-1).tolist())
        truth.extend(batch.intent_encoded.data.reshape(-1).tolist())
    model.train(was_training)
    return {"accuracy": accuracy(predicted, truth), "macro_f1": macro_f1(predicted, truth)}


def kmeans_ptq(fp_run: Path, bits: int, out_dir: Path, seed: int) -> dict:
    """Cluster the fp student's weights at ``bits`` bits (no training), export, score.

    Returns:
        ``accuracy``, ``macro_f1``, ``packed_mb`` (the packed export), ``train_seconds`` (the
        clustering time) and ``export`` (the folder).
    """
    datasets, _ = run_datasets(fp_run)
    model, labels = load_student(fp_run)
    start = time.perf_counter()
    quantizer = quantize_(model, QuantizationConfig(bits=bits, seed=seed))
    seconds = time.perf_counter() - start
    sizes = export_model(SimpleNamespace(deployable=model, quantizer=quantizer), {"bits": bits},
                         labels, out_dir)
    return {**evaluate(model, datasets["test"]), "packed_mb": sizes["packed_mb"],
            "train_seconds": seconds, "export": str(out_dir)}


def dynamic_int8(fp_run: Path) -> dict:
    """torch dynamic int8 quantization of the fp student's Linear layers, scored.

    ``packed_mb`` is the ``torch.save`` size of the quantized model's ``state_dict`` (int8 Linear
    weights with their scales; convolutions, norms and the positional table stay float32).
    """
    datasets, _ = run_datasets(fp_run)
    model, _ = load_student(fp_run)
    start = time.perf_counter()
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    seconds = time.perf_counter() - start
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)
    return {**evaluate(quantized, datasets["test"]), "packed_mb": buffer.getbuffer().nbytes / MB,
            "train_seconds": seconds}


def dkm_attention_gb(model: nn.Module, bits: int, kmeans_iters: int) -> float:
    """Memory (GB) DKM keeps for one training step: an (n x 2**bits) float32 distance and
    attention map per k-means iteration for every palettized weight (Linear and Conv1d)."""
    numel = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d)))
    return 2 * kmeans_iters * numel * 2**bits * 4 / 1e9


def dkm_palettize(fp_run: Path, bits: int, out_dir: Path, steps: int, batch_size: int,
                  lr_encoder: float, lr_head: float, kmeans_iters: int, seed: int) -> dict:
    """Fine-tune the fp student under coremltools' DKMPalettizer for ``steps`` steps, finalize,
    export in the QUADS packed format and score.

    Config: ``n_bits=bits``, ``weight_threshold=0`` for ``Linear`` and ``Conv1d`` (the layers
    QUADS quantizes), ``kmeans_max_iter=kmeans_iters``, ``kmeans_init="opt1d"`` (coremltools'
    exact 1-D k-means; its default k-means++ init, 10 restarts of 100 iterations per tensor, does
    not finish the first step in 10 minutes on 2 cores), everything else coremltools' default.
    Training: Adam (encoder ``lr_encoder``, head ``lr_head``), cross-entropy, shuffled batches of
    ``batch_size`` from the run's training set.

    Returns:
        ``accuracy``, ``macro_f1``, ``packed_mb``, ``train_seconds`` (prepare + steps +
        finalize), ``steps``, ``unique_values_max`` (most distinct values in one weight after
        ``finalize``) and ``export``.
    """
    from coremltools.optimize.torch.palettization import DKMPalettizer, DKMPalettizerConfig

    torch.manual_seed(seed)
    datasets, _ = run_datasets(fp_run)
    model, labels = load_student(fp_run)
    layer = {"n_bits": bits, "weight_threshold": 0, "kmeans_max_iter": kmeans_iters,
             "kmeans_init": "opt1d"}
    config = DKMPalettizerConfig.from_dict(
        {"module_type_configs": {"Linear": layer, "Conv1d": layer}})
    start = time.perf_counter()
    palettizer = DKMPalettizer(model, config)
    prepared = palettizer.prepare(inplace=False)
    head = set(map(id, prepared["classifier"].parameters()))
    encoder = [p for p in prepared.parameters() if p.requires_grad and id(p) not in head]
    optimizer = torch.optim.Adam([{"params": encoder, "lr": lr_encoder},
                                  {"params": list(prepared["classifier"].parameters()),
                                   "lr": lr_head}])
    loader = DataLoader(datasets["train"], batch_size=batch_size, shuffle=True,
                        collate_fn=PaddedBatch)
    prepared.train()
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for batch in itertools.islice(batches, steps):
        wavs, lens = batch.sig
        hidden, frame_lens = prepared["student"](wavs, lens)
        logits = prepared["classifier"](hidden[-1], frame_lens)
        loss = nn.functional.cross_entropy(logits, batch.intent_encoded.data.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        palettizer.step()
    finalized = palettizer.finalize(inplace=True)
    seconds = time.perf_counter() - start
    plain, _ = load_student(fp_run)
    _copy_weights(finalized, plain)
    quantizer, unique_max = exact_codebooks(plain, bits)
    sizes = export_model(SimpleNamespace(deployable=plain, quantizer=quantizer), {"bits": bits},
                         labels, out_dir)
    return {**evaluate(plain, datasets["test"]), "packed_mb": sizes["packed_mb"],
            "train_seconds": seconds, "steps": steps, "unique_values_max": unique_max,
            "export": str(out_dir)}


def _copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy every tensor of ``target``'s state_dict from ``source``'s (same names)."""
    state = source.state_dict()
    missing = [key for key in target.state_dict() if key not in state]
    if missing:
        raise KeyError(f"finalized DKM model lacks {missing[:5]} ({len(missing)} tensors)")
    target.load_state_dict({key: state[key] for key in target.state_dict()}, strict=True)


@torch.no_grad()
def exact_codebooks(model: nn.Module, bits: int):
    """Attach QUADS codebooks to ``model``'s Linear/Conv1d weights that reproduce them exactly.

    Each weight must already hold at most ``2**bits`` distinct values (a palettized model): its
    codebook is those values (zero-padded) and its indices point at them, so the quantizer's
    forward and packed export give the same weights bit for bit.

    Returns:
        ``(quantizer in mode "frozen", most distinct values found in one weight)``.
    """
    quantizer = quantize_(model, QuantizationConfig(bits=bits, kmeans_iters=0))
    unique_max = 0
    for name, (module, codebook) in quantized_modules(model).items():
        latent = module.parametrizations["weight"].original
        values, inverse = torch.unique(latent, return_inverse=True)
        if values.numel() > 2**bits:
            raise ValueError(f"{name}: {values.numel()} distinct values after palettization, "
                             f"more than 2**{bits}")
        unique_max = max(unique_max, values.numel())
        codebook.centroids.zero_()
        codebook.centroids[0, : values.numel()] = values
        codebook.indices.copy_(inverse.to(torch.uint8))
        codebook.invalidate()
    quantizer.set_mode("frozen")
    return quantizer, unique_max
