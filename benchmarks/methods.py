"""The compression methods that ``benchmarks/run.py`` scores without ``train.py``.

Each starts from the same exported full-precision distilled student (an ``export_model`` folder)
and is scored on the same test manifest as the trained runs; every score comes with ``correct``,
``{recording file name: 0 or 1}``, keyed like the trained runs' ``predictions.jsonl`` (see
:func:`recipe_correctness`), so any two rows pair up recording by recording:

- :func:`probe`: a frozen encoder (the teacher, or the pretrained student with no training) and a
  linear probe on its pooled features.
- :func:`kmeans_ptq`: the QUADS codebook quantizer applied once (per-tensor k-means, the same
  ``QuantizationConfig`` defaults as training), no retraining.
- :func:`kmeans_ptq_sensitive`: the same, with k-means weighted by each weight's squared gradient
  over calibration recordings (the QUADS engine's answer to SKM), optionally with outliers kept
  exactly or a width per tensor in the size of the uniform-width file.
- :func:`dynamic_int8`: ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` (int8
  weights, activations quantized on the fly), the method of SpeechBrain's quantization tutorial.
- :func:`dkm_with_lr_search` / :func:`dkm_palettize`: Apple coremltools' ``DKMPalettizer``
  (differentiable k-means) on the same layers as QUADS (every Linear and Conv1d), fine-tuned with
  cross-entropy for a number of epochs at a learning rate chosen on the valid split, then
  finalized; its palettized weights are written in the QUADS packed format, so its size is
  measured exactly like QUADS'.
- :func:`skm_palettize`: coremltools' ``SKMPalettizer`` (sensitive k-means: k-means weighted by
  the Fisher information of calibration samples, no training) on every Linear (plain k-means on
  the two convolutions, which it does not support), written the same way.
"""

from __future__ import annotations

import io
import itertools
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from speechbrain_quads.codebook.allocation import allocation_for_target, fixed_bytes, tensor_bytes
from speechbrain_quads.codebook.quantization import (
    CodebookQuantizer,
    QuantizationConfig,
    quantize_,
    quantized_modules,
)
from speechbrain_quads.codebook.sensitivity import squared_gradients
from speechbrain_quads.data.manifests import write_manifests
from speechbrain_quads.deploy.export import export_model
from speechbrain_quads.deploy.inference import load_export
from speechbrain_quads.evaluation.metrics import accuracy, macro_f1
from speechbrain_quads.training.probe import pooled_features

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "SLURP" / "quads"))
import prepare  # noqa: E402  (the SLURP recipe's prepare.py: reading a SLURP folder)
import report  # noqa: E402  (benchmarks/report.py, beside this module: atomic writes)
import train as recipe  # noqa: E402  (the SLURP recipe's train.py: its data pipeline)

MB = 2**20


def run_datasets(run_dir: Path, csv_valid: Path | None = None
                 ) -> tuple[dict[str, DynamicItemDataset], list[str]]:
    """Train/valid/test datasets of a finished ``train.py`` run and its labels in class order.

    The run's manifests and saved label encoder are re-used, so class indices match its export;
    ``csv_valid`` replaces the run's valid manifest (see :func:`prepare_valid`).
    """
    hparams = {"csv_train": str(run_dir / "train-type=direct.csv"),
               "csv_valid": str(csv_valid or run_dir / "devel-type=direct.csv"),
               "csv_test": str(run_dir / "test-type=direct.csv"), "sorting": "random",
               "train_dataloader_opts": {},
               "label_encoder_file": str(run_dir / "save" / "label_encoder.txt")}
    datasets, encoder = recipe.dataio_prepare(hparams)
    return datasets, [encoder.ind2lab[i] for i in range(len(encoder))]


def prepare_valid(data_folder: Path, save_folder: Path, labels: list[str]) -> Path:
    """Write the valid manifest of another SLURP-layout folder (its ``devel.jsonl`` and
    ``slurp_real/``, e.g. ``generate.py slurp-text-valid``'s) into ``save_folder`` with the
    recipe's preparation, and return its path.

    Raises:
        ValueError: the folder has an intent that ``labels`` (a run's classes) lacks.
    """
    rows = prepare.read_split(data_folder, "devel", "direct")
    unseen = sorted({row["intent"] for row in rows.values()} - set(labels))
    if unseen:
        raise ValueError(f"{prepare.split_file(data_folder, 'devel')}: {len(unseen)} intent(s) "
                         f"the run never trained on, e.g. {unseen[:3]}")
    name = "devel-type=direct"
    write_manifests(save_folder, {name: rows}, prepare.COLUMNS,
                    {"data_folder": str(data_folder.resolve())}, train=name)
    return save_folder / f"{name}.csv"


def load_student(run_dir: Path) -> tuple[nn.ModuleDict, list[str]]:
    """The exported model of a run (``{"student", "classifier"}``, eval mode) and its labels."""
    model, config = load_export(run_dir / "model")
    return model.eval(), config["labels"]


def recording_id(manifest_row: dict) -> str:
    """The id a test recording is paired by: its file name (``predictions.jsonl``'s ``file``)."""
    return Path(manifest_row["wav"]).name


def _scores(predicted: list, truth: list, ids: list[str]) -> dict:
    """``accuracy``, ``macro_f1`` (in [0, 1]) and ``correct`` ({recording id: 0/1})."""
    if len(set(ids)) != len(ids):
        raise ValueError("two test recordings share a file name; they cannot be paired")
    return {"accuracy": accuracy(predicted, truth), "macro_f1": macro_f1(predicted, truth),
            "correct": {i: int(p == t) for i, p, t in zip(ids, predicted, truth, strict=True)}}


def recipe_correctness(run_dir: Path) -> dict:
    """Scores of a finished ``train.py`` run from its ``predictions.jsonl`` and test CSV.

    Returns ``accuracy``, ``macro_f1`` and ``correct`` ({file name: 0/1}); the intent is
    ``scenario_action`` in both files.
    """
    truth, predicted = recipe.read_test_intents(run_dir)
    ids = sorted(truth)
    return _scores([predicted[i] for i in ids], [truth[i] for i in ids], ids)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: DynamicItemDataset, batch_size: int = 16) -> dict:
    """Intent accuracy, macro-F1 (in [0, 1]) and ``correct`` ({file name: 0/1}) on ``dataset``.

    ``model["student"](wavs (B, T), lens (B,))`` gives hidden states (L+1, B, T', C) and frame
    lengths; ``model["classifier"](last hidden, lens)`` gives logits (B, n_intents).
    """
    was_training = model.training
    model.eval()
    predicted, truth, ids = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=PaddedBatch):
        wavs, lens = batch.sig
        hidden, frame_lens = model["student"](wavs, lens)
        predicted.extend(model["classifier"](hidden[-1], frame_lens).argmax(dim=-1).tolist())
        truth.extend(batch.intent_encoded.data.reshape(-1).tolist())
        ids.extend(recording_id(dataset.data[utt]) for utt in batch.id)
    model.train(was_training)
    return _scores(predicted, truth, ids)


def probe(encoder: nn.Module, datasets: dict[str, DynamicItemDataset], n_classes: int,
          steps: int = 500, lr: float = 0.01, weight_decay: float = 1e-3, seed: int = 0) -> dict:
    """Linear probe of a frozen ``encoder`` (``training.probe``'s recipe), scored per recording.

    Pooled last-hidden-state features of the train split, standardised with their statistics; a
    linear layer trained by full-batch Adam; scored on the test split. Returns ``accuracy``,
    ``macro_f1``, ``correct`` and ``size_mb`` (encoder + probe parameters x 4 bytes, MiB).
    """
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = pooled_features(encoder, datasets["train"])
    test_x, test_y = pooled_features(encoder, datasets["test"])
    mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp(min=1e-6)
    layer = nn.Linear(train_x.shape[1], n_classes)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.01, generator=generator)
        layer.bias.zero_()
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(layer((train_x - mean) / std), train_y).backward()
        optimizer.step()
    with torch.no_grad():
        predicted = layer((test_x - mean) / std).argmax(dim=-1).tolist()
    test = datasets["test"]
    ids = [recording_id(test.data[utt]) for utt in test.data_ids]  # the loader's order
    params = sum(p.numel() for p in encoder.parameters()) + layer.weight.numel() + n_classes
    return {**_scores(predicted, test_y.tolist(), ids), "size_mb": params * 4 / MB}


def kmeans_ptq(fp_run: Path, bits: int, out_dir: Path, seed: int, init: str = "linear") -> dict:
    """Cluster the fp student's weights at ``bits`` bits (no training, k-means ``init``),
    export, score.

    Returns:
        ``accuracy``, ``macro_f1``, ``packed_mb`` (the packed export), ``train_seconds`` (the
        clustering time) and ``export`` (the folder).
    """
    datasets, _ = run_datasets(fp_run)
    model, labels = load_student(fp_run)
    start = time.perf_counter()
    quantizer = quantize_(model, QuantizationConfig(bits=bits, seed=seed, init=init))
    seconds = time.perf_counter() - start
    sizes = export_model(SimpleNamespace(deployable=model, quantizer=quantizer),
                         labels, out_dir)
    return {**evaluate(model, datasets["test"]), "packed_mb": sizes["packed_mb"],
            "train_seconds": seconds, "export": str(out_dir)}


def kmeans_ptq_sensitive(fp_run: Path, bits: int, out_dir: Path, samples: int, seed: int,
                         outlier_fraction: float = 0.0, mixed: bool = False) -> dict:
    """:func:`kmeans_ptq` (``optimal`` k-means, which solves the weighted problem) with each
    value's squared error weighted by its sensitivity: squared
    gradients of the cross-entropy over ``samples`` shuffled training recordings, one per
    batch (the calibration of :func:`skm_palettize`; the same layers as QUADS); with
    ``outlier_fraction``, that share of each weight (largest sensitivity x w**2) kept exactly;
    with ``mixed``, a width per tensor (``codebook.allocation``, 2-8 bits) chosen so the packed
    file is no larger than the uniform ``bits``-bit one.

    Returns :func:`kmeans_ptq`'s keys plus ``calibration_samples`` (and with ``mixed``,
    ``widths`` ({module: bits}) and ``target_mb``, the uniform file's size in MiB);
    ``train_seconds`` counts calibration and clustering.
    """
    torch.manual_seed(seed)
    datasets, _ = run_datasets(fp_run)
    model, labels = load_student(fp_run)
    loader = DataLoader(datasets["train"], batch_size=1, shuffle=True, collate_fn=PaddedBatch)
    start = time.perf_counter()
    quantizer = CodebookQuantizer(QuantizationConfig(bits=bits, seed=seed, init="optimal",
                                                     outlier_fraction=outlier_fraction))
    quantizer.prepare(model)
    sensitivity = squared_gradients(quantizer, lambda batch: _task_loss(model, batch),
                                    itertools.islice(loader, samples))
    extra = {}
    if mixed:
        target = (fixed_bytes(quantizer) + sum(
            tensor_bytes(c.indices.numel(), c.groups, bits)
            for _, c in quantizer.modules.values())) / MB
        extra = {"widths": allocation_for_target(quantizer, sensitivity, target),
                 "target_mb": target}
        quantizer.set_bits(extra["widths"])
    quantizer.cluster(sensitivity=sensitivity)
    seconds = time.perf_counter() - start
    model.eval()
    sizes = export_model(SimpleNamespace(deployable=model, quantizer=quantizer),
                         labels, out_dir)
    return {**evaluate(model, datasets["test"]), "packed_mb": sizes["packed_mb"],
            "train_seconds": seconds, "calibration_samples": samples, "export": str(out_dir),
            **extra}


def _task_loss(network: nn.Module, batch: PaddedBatch) -> torch.Tensor:
    """Cross-entropy of the intent head on one batch (the calibration loss)."""
    wavs, lens = batch.sig
    hidden, frame_lens = network["student"](wavs, lens)
    logits = network["classifier"](hidden[-1], frame_lens)
    return nn.functional.cross_entropy(logits, batch.intent_encoded.data.reshape(-1))


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


def _fp_model_sha256(fp_run: Path) -> str:
    """The exported fp student's SHA-256 (its ``config.json``'s ``model_sha256``)."""
    return json.loads((fp_run / "model" / "config.json").read_text())["model_sha256"]


def _dkm_checkpoint(path: Path | None, identity: dict, epochs: int) -> dict | None:
    """The DKM training state saved at ``path`` after a whole epoch, if it was trained with the
    same ``identity`` (fp student, bits, learning rates, batch size, k-means iterations, seed)
    and for no more than ``epochs`` epochs; otherwise None (training starts again)."""
    if path is None or not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["identity"] != identity or state["epoch"] > epochs:
        print(f"[dkm] {path}: saved by another run ({state['identity']}, epoch "
              f"{state['epoch']}), starting again", flush=True)
        return None
    return state


def dkm_palettize(fp_run: Path, bits: int, out_dir: Path | None, epochs: int, batch_size: int,
                  lr_encoder: float, lr_head: float, kmeans_iters: int, seed: int,
                  splits: tuple[str, ...] = ("test",), checkpoint: Path | None = None) -> dict:
    """Fine-tune the fp student under coremltools' DKMPalettizer for ``epochs`` epochs, finalize,
    export in the QUADS packed format (unless ``out_dir`` is None) and score on ``splits``
    (``"test"``: the scores below; ``"valid"``: ``valid_accuracy``).

    Config: ``n_bits=bits``, ``weight_threshold=0`` for ``Linear`` and ``Conv1d`` (the layers
    QUADS quantizes), ``kmeans_max_iter=kmeans_iters``, ``kmeans_init="opt1d"`` (coremltools'
    exact 1-D k-means; its default k-means++ init, 10 restarts of 100 iterations per tensor, does
    not finish the first step in 10 minutes on 2 cores), everything else coremltools' default.
    Training: Adam (encoder ``lr_encoder``, head ``lr_head``), cross-entropy, shuffled batches of
    ``batch_size`` from the run's training set, ``epochs`` passes over it.

    With ``checkpoint`` (a ``.pt`` path), the palettized model (coremltools keeps its centroids
    in the state_dict), the optimizer and the RNG are saved there atomically after every epoch,
    and a run of the same fp student and settings resumes from it - also a longer run from a
    shorter one (the learning-rate trial of the chosen rate is the final run's first epoch):
    the epochs trained then are the epochs of an uninterrupted run.

    Returns:
        ``accuracy``, ``macro_f1``, ``correct``, ``train_seconds`` (prepare + steps + finalize),
        ``steps``, ``unique_values_max`` (most distinct values in one weight after ``finalize``),
        ``kmeans_fallback`` (empty), with ``out_dir`` ``packed_mb`` and ``export``.
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
    identity = {"fp_model_sha256": _fp_model_sha256(fp_run), "bits": bits,
                "lr_encoder": lr_encoder, "lr_head": lr_head, "batch_size": batch_size,
                "kmeans_iters": kmeans_iters, "seed": seed}
    state, earlier = _dkm_checkpoint(checkpoint, identity, epochs), 0.0
    if state is not None:
        _create_dkm_partitions(prepared)
        prepared.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        earlier = state["seconds"]
        print(f"[dkm] resuming {checkpoint} after epoch {state['epoch']} of {epochs}", flush=True)
    first = 0 if state is None else state["epoch"]
    prepared.train()
    progress = tqdm(total=epochs * len(loader), initial=first * len(loader), mininterval=30,
                    desc=f"DKM {bits}-bit, lr {lr_encoder:g}")
    for epoch in range(first, epochs):
        for batch in loader:
            wavs, lens = batch.sig
            hidden, frame_lens = prepared["student"](wavs, lens)
            logits = prepared["classifier"](hidden[-1], frame_lens)
            loss = nn.functional.cross_entropy(logits, batch.intent_encoded.data.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            palettizer.step()
            progress.update()
        if checkpoint is not None:
            _save_atomic({"identity": identity, "epoch": epoch + 1, "model": prepared.state_dict(),
                          "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                          "seconds": earlier + time.perf_counter() - start}, checkpoint)
    progress.close()
    steps = epochs * len(loader)
    finalized = palettizer.finalize(inplace=True)
    seconds = earlier + time.perf_counter() - start
    scored = {split: datasets[split] for split in splits}
    return {**_palettized_result(finalized, fp_run, bits, labels, out_dir, scored),
            "train_seconds": seconds, "steps": steps}


def _create_dkm_partitions(prepared: nn.Module) -> None:
    """Give every coremltools ``FakePalettize`` its partitions before a state_dict is loaded:
    coremltools 9.0 restores partitions and centroids from a state_dict but not the per-partition
    flags (``enable_partition``) that its first forward would create, so a loaded model fails on
    its first training step without this."""
    from coremltools.optimize.torch.palettization import FakePalettize

    for module in prepared.modules():
        fake = getattr(module, "weight_fake_quant", None)
        if isinstance(fake, FakePalettize) and not fake.partitions:
            fake.create_partitions(module.weight.detach())


def _save_atomic(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    torch.save(obj, partial)
    partial.replace(path)


def dkm_with_lr_search(fp_run: Path, bits: int, out_dir: Path, epochs: int, trial_epochs: int,
                       lrs: list[float], lr_head: float, batch_size: int, kmeans_iters: int,
                       seed: int, checkpoints: Path | None = None) -> dict:
    """DKM with its encoder learning rate chosen on the validation split.

    Each of ``lrs`` trains ``trial_epochs`` epochs and is scored on the valid split (a single
    candidate is taken without a trial); the best (the smaller on ties) trains ``epochs`` epochs
    and is scored on the test split. When ``trial_epochs == epochs`` the best trial is that run
    (same seed, same batches), so it is not trained twice. With ``checkpoints`` (a folder) each
    rate's training is checkpointed there every epoch (``lr<rate>.pt``, see
    :func:`dkm_palettize`) and each finished trial's result kept (``trials.json``): a search cut
    short resumes where it stopped, and the final run continues the chosen rate's trial. Returns
    :func:`dkm_palettize`'s dict plus ``lr_encoder``, ``lr_head``, ``epochs``, ``trial_epochs``
    and ``lr_trials`` ([{``lr_encoder``, ``valid_accuracy``, ``seconds``}]); ``train_seconds``
    counts every epoch trained, trials included, once.
    """
    common = {"bits": bits, "batch_size": batch_size, "lr_head": lr_head,
              "kmeans_iters": kmeans_iters, "seed": seed}
    reuse = trial_epochs == epochs
    saved = checkpoints / "trials.json" if checkpoints else None
    identity = saved and {"fp_model_sha256": _fp_model_sha256(fp_run),
                          "trial_epochs": trial_epochs, "reuse": reuse, **common}
    done = {}
    if saved is not None and saved.is_file():
        stored = json.loads(saved.read_text())
        done = {float(lr): run for lr, run in stored["runs"].items()
                if stored["identity"] == identity}
    trials, runs = [], {}
    for lr in sorted(lrs) if len(lrs) > 1 else []:
        if lr not in done:
            export = out_dir.with_name(f"{out_dir.name}_lr{lr:g}") if reuse else None
            done[lr] = dkm_palettize(
                fp_run, out_dir=export, epochs=trial_epochs, lr_encoder=lr,
                splits=("valid", "test") if reuse else ("valid",),
                checkpoint=checkpoints / f"lr{lr:g}.pt" if checkpoints else None, **common)
            if saved is not None:
                report.write_atomic(saved, json.dumps({"identity": identity, "runs": {
                    str(k): v for k, v in done.items()}}))
        runs[lr] = dict(done[lr])
        trials.append({"lr_encoder": lr, "valid_accuracy": runs[lr].pop("valid_accuracy"),
                       "seconds": runs[lr]["train_seconds"]})
    best = max(trials, key=lambda t: t["valid_accuracy"])["lr_encoder"] if trials else lrs[0]
    if reuse and trials:
        final, seconds = runs[best], sum(t["seconds"] for t in trials)
    else:
        final = dkm_palettize(fp_run, out_dir=out_dir, epochs=epochs, lr_encoder=best,
                              checkpoint=checkpoints / f"lr{best:g}.pt" if checkpoints else None,
                              **common)
        # a checkpointed final run continued its trial: that trial's seconds are in its own
        seconds = final["train_seconds"] + sum(t["seconds"] for t in trials
                                               if checkpoints is None or t["lr_encoder"] != best)
    return {**final, "train_seconds": seconds, "lr_encoder": best, "lr_head": lr_head,
            "epochs": epochs, "lr_trials": trials, "trial_epochs": trial_epochs if trials else 0}


def skm_palettize(fp_run: Path, bits: int, out_dir: Path, samples: int, seed: int) -> dict:
    """coremltools' SKMPalettizer on the fp student: sensitivity-weighted k-means, no training.

    Config: ``n_bits=bits``, per-tensor look-up tables, for every ``Linear``,
    ``calibration_nsamples=samples``; the sensitivities are the squared gradients of the
    cross-entropy of ``samples`` single training recordings (shuffled with ``seed``), as
    ``compress(dataloader=..., loss_fn=...)`` computes them. coremltools 9.0's k-means has no
    ``Conv1d`` support (Linear, Conv2d, Embedding, MultiheadAttention only), so Whisper's two
    input convolutions (7 % of the weights) get QUADS' plain k-means at the same bits: every
    layer QUADS quantizes is b-bit. Exported in the QUADS packed format, scored on the test split.

    Returns:
        ``accuracy``, ``macro_f1``, ``correct``, ``packed_mb``, ``train_seconds`` (calibration +
        clustering), ``calibration_samples``, ``unique_values_max``, ``kmeans_fallback`` (the
        k-means layers) and ``export``.
    """
    from coremltools.optimize.torch.palettization import SKMPalettizer, SKMPalettizerConfig

    torch.manual_seed(seed)
    datasets, _ = run_datasets(fp_run)
    model, labels = load_student(fp_run)
    config = SKMPalettizerConfig.from_dict({
        "module_type_configs": {"Linear": {"n_bits": bits, "granularity": "per_tensor"}},
        "calibration_nsamples": samples})
    loader = DataLoader(datasets["train"], batch_size=1, shuffle=True, collate_fn=PaddedBatch)
    start = time.perf_counter()
    compressed = SKMPalettizer(model, config).compress(dataloader=loader, loss_fn=_task_loss)
    seconds = time.perf_counter() - start
    return {**_palettized_result(compressed, fp_run, bits, labels, out_dir,
                                 {"test": datasets["test"]}, fallback_seed=seed),
            "train_seconds": seconds, "calibration_samples": samples}


def _palettized_result(palettized: nn.Module, fp_run: Path, bits: int, labels: list[str],
                       out_dir: Path | None, datasets: dict[str, DynamicItemDataset],
                       fallback_seed: int | None = None) -> dict:
    """A palettized model's weights in a plain copy of the fp student, exported (if ``out_dir``)
    in the QUADS packed format, its codebooks the palettes bit for bit (see
    :func:`exact_codebooks` for ``fallback_seed``); scored on ``datasets["test"]`` (accuracy,
    macro-F1, correct) and ``datasets["valid"]`` (``valid_accuracy``) where given."""
    plain, _ = load_student(fp_run)
    _copy_weights(palettized, plain)
    quantizer, unique_max, fallback = exact_codebooks(plain, bits, fallback_seed)
    result = {"unique_values_max": unique_max, "kmeans_fallback": fallback}
    if "test" in datasets:
        result.update(evaluate(plain, datasets["test"]))
    if "valid" in datasets:
        result["valid_accuracy"] = evaluate(plain, datasets["valid"])["accuracy"]
    if out_dir is not None:
        sizes = export_model(SimpleNamespace(deployable=plain, quantizer=quantizer), labels,
                             out_dir)
        result.update(packed_mb=sizes["packed_mb"], export=str(out_dir))
    return result


def _copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy every tensor of ``target``'s state_dict from ``source``'s (same names)."""
    state = source.state_dict()
    missing = [key for key in target.state_dict() if key not in state]
    if missing:
        raise KeyError(f"finalized DKM model lacks {missing[:5]} ({len(missing)} tensors)")
    target.load_state_dict({key: state[key] for key in target.state_dict()}, strict=True)


@torch.no_grad()
def exact_codebooks(model: nn.Module, bits: int, fallback_seed: int | None = None):
    """Attach QUADS codebooks to ``model``'s Linear/Conv1d weights that reproduce them exactly.

    Each weight should already hold at most ``2**bits`` distinct values (a palettized model): its
    codebook is those values (zero-padded) and its indices point at them, so the quantizer's
    forward and packed export give the same weights bit for bit. A weight with more values is an
    error, unless ``fallback_seed`` is given: then it keeps QUADS' own k-means codebook (seeded).

    Returns:
        ``(quantizer in mode "frozen", most distinct values found in one palettized weight,
        names of the weights clustered by the k-means fallback)``.
    """
    iters = 0 if fallback_seed is None else QuantizationConfig().kmeans_iters
    quantizer = quantize_(model, QuantizationConfig(bits=bits, kmeans_iters=iters,
                                                    seed=fallback_seed or 0))
    unique_max, fallback = 0, []
    for name, (module, codebook) in quantized_modules(model).items():
        latent = module.parametrizations["weight"].original
        values, inverse = torch.unique(latent, return_inverse=True)
        if values.numel() > 2**bits:
            if fallback_seed is None:
                raise ValueError(f"{name}: {values.numel()} distinct values after palettization, "
                                 f"more than 2**{bits}")
            fallback.append(name)
            continue
        unique_max = max(unique_max, values.numel())
        codebook.centroids.zero_()
        codebook.centroids[0, : values.numel()] = values
        codebook.indices.copy_(inverse.to(torch.uint8))
        codebook.invalidate()
    quantizer.set_mode("frozen")
    return quantizer, unique_max, fallback
