"""QuantizationBrain: trains the k-means codebooks of a model's deployable weights in
quantization phases, on top of any task Brain (placed after it in the bases); see
:mod:`speechbrain_quads.training.brains` for the QUADS Brains built on it."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import speechbrain as sb
import torch

from speechbrain_quads.codebook.allocation import CANDIDATE_BITS
from speechbrain_quads.codebook.packing import size_report
from speechbrain_quads.training.calibration import brain_sensitivity, load_or_allocate_widths
from speechbrain_quads.training.losses import centroid_loss, latent_power, quantization_objective
from speechbrain_quads.training.phase_brain import PhaseBrain
from speechbrain_quads.training.schedule import QUANT, EpochPhase, PhasePlan


class QuantizationBrain(PhaseBrain):
    """Train trained-codebook quantized weights (QUADS' quantization phases); every epoch quantizes.

    The task (forward, loss, logging) comes from the Brain it is combined with, placed after it
    in the bases; the deployable modules (all but ``teacher`` and ``distill``) are quantized and
    ``centroid_weight * L_centroid`` is added to the task loss in quantization training steps.

    hparams used: ``quantizer`` (CodebookQuantizer, prepared here), ``quant_opt_class``
    (``!name:`` optimizer taking param groups), ``quant_lr`` (codebooks and the other body
    tensors) and optional ``quant_lr_head`` (``HEAD_MODULES``), both decayed along a cosine
    over each quantization phase, set once per epoch (epoch e of E runs at
    ``0.5 * (1 + cos(pi * (e - 1) / E))`` of the rate, so a 1-epoch phase keeps the full rate),
    and ``centroid_weight``. Optional: ``sensitivity_samples`` (default 0:
    the first clustering is plain k-means; N: k-means weighted by squared gradients of the
    validation loss over N training recordings) and ``target_mb`` (default null: every tensor
    at ``bits``; a size in MiB: a width per tensor from those sensitivities, so the packed model
    fits it, stored in ``<save_folder>/bit_widths.json`` and re-used on resume), with
    ``target_widths`` (default null: 2, 3, 4, 5, 6 or 8 bits) the widths it may choose.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.quantizer = self.hparams.quantizer
        self.quantizer.prepare(self.deployable)
        self.latent_power: torch.Tensor | None = None
        self._calibration_set = None
        self._calibration_cache: tuple[str, dict[str, torch.Tensor]] | None = None

    def fit(self, epoch_counter, train_set, valid_set=None, *args, **kwargs):
        """Keeps the training set: the calibration recordings of ``target_mb`` and of a
        sensitivity-weighted first clustering."""
        self._calibration_set = train_set
        super().fit(epoch_counter, train_set, valid_set, *args, **kwargs)

    def on_fit_start(self):
        """The widths of ``target_mb``, before SpeechBrain's start (which loads a checkpoint
        into them). Measured here, the sensitivities see the model training starts from: the
        head after ``classifier_init: probe`` (applied earlier, in ``fit``), not a random one."""
        target = getattr(self.hparams, "target_mb", None)
        if target is not None:
            widths = load_or_allocate_widths(
                Path(self.hparams.save_folder) / "bit_widths.json", self.quantizer,
                float(target), self.calibration_sensitivity, self.target_widths)
            self.quantizer.set_bits(widths)
        super().on_fit_start()

    @property
    def target_widths(self) -> list[int]:
        """``target_widths``: the widths ``target_mb`` may give a tensor (default
        :data:`~speechbrain_quads.codebook.allocation.CANDIDATE_BITS`)."""
        widths = getattr(self.hparams, "target_widths", None)
        if widths is None:
            return list(CANDIDATE_BITS)
        if (not isinstance(widths, (list, tuple)) or not widths
                or not all(isinstance(b, int) and 1 <= b <= 16 for b in widths)):
            raise ValueError(f"target_widths: expected a non-empty list of widths in bits "
                             f"(1-16), e.g. [3, 4, 5, 6, 8], got {widths!r}")
        return sorted(set(widths))

    def calibration_sensitivity(self) -> dict[str, torch.Tensor]:
        """Squared gradients of the model as it is now over ``sensitivity_samples`` (at least
        32 when a size target needs them) training recordings."""
        samples = int(getattr(self.hparams, "sensitivity_samples", 0)) or 32
        weights = self._weights_sha256()
        if self._calibration_cache is None or self._calibration_cache[0] != weights:
            self._calibration_cache = (weights, brain_sensitivity(
                self, self.quantizer, self._calibration_set, samples,
                seed=getattr(self.hparams, "seed", 0)))
        return self._calibration_cache[1]

    def _weights_sha256(self) -> str:
        """SHA-256 of every module's parameters: a calibration pass is deterministic (fixed
        recordings, eval mode), so it is measured again only when a weight has changed (a
        ``target_mb`` run whose first clustering comes before any step measures once)."""
        digest = hashlib.sha256()
        for parameter in self.modules.parameters():
            digest.update(parameter.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy())
        return digest.hexdigest()

    def cluster_codebooks(self) -> None:
        """Cluster (or re-cluster) the codebooks; the first clustering is weighted by
        sensitivities measured then (so a run resumed from a checkpoint before it measures what
        the uninterrupted run did) when ``sensitivity_samples`` or ``target_mb`` is set."""
        weighted = (getattr(self.hparams, "sensitivity_samples", 0)
                    or getattr(self.hparams, "target_mb", None) is not None)
        first = not self.quantizer.clustered
        self.quantizer.cluster(
            sensitivity=self.calibration_sensitivity() if weighted and first else None)
        self._calibration_cache = None  # a weight-sized dict: kept no longer than needed

    def build_plan(self, epochs: int) -> PhasePlan:
        """Every epoch quantizes."""
        return PhasePlan("quant_only", iterations=0, distill_epochs=0, quant_epochs=0,
                         final_quant_epochs=epochs)

    def latents(self) -> list[torch.Tensor]:
        """The full-precision weights behind the quantized ones."""
        return [m.parametrizations["weight"].original for m, _ in self.quantizer.modules.values()]

    def make_optimizers(self, kinds: set[str]) -> dict[str, torch.optim.Optimizer]:
        """Adds the quantization optimizer."""
        optimizers = super().make_optimizers(kinds)
        if QUANT in kinds:
            optimizers[QUANT] = self.make_quant_optimizer()
        return optimizers

    def _quant_lrs(self) -> tuple[float, float]:
        return self.hparams.quant_lr, getattr(self.hparams, "quant_lr_head", self.hparams.quant_lr)

    def make_quant_optimizer(self) -> torch.optim.Optimizer:
        """Codebooks and the body's other full-precision tensors at ``quant_lr``; head modules at
        ``quant_lr_head``. Latent weights are not trained in quantization phases.

        A centroid's gradient is the sum over its members (thousands of weights), so its scale
        grows with the cluster: an adaptive optimizer (Adam) keeps steps at ``quant_lr`` whatever
        the cluster size; SGD needs a learning rate matched to the tensor sizes.
        """
        body, head = self.parameter_groups(skip={id(p) for p in self.latents()})
        body_lr, head_lr = self._quant_lrs()
        return self.hparams.quant_opt_class([{"params": body, "lr": body_lr},
                                             {"params": head, "lr": head_lr}])

    def enter_phase(self, phase: EpochPhase, resumed: bool) -> None:
        """At a quantization phase's start: cluster, train the codebooks, reset the optimizer;
        every quantization epoch: freeze the latents, set the cosine learning rates."""
        if phase.kind == QUANT:
            if phase.starts_phase and not resumed:
                self.cluster_codebooks()
                self.quantizer.set_mode("train")
                self.optimizers_dict[QUANT].state.clear()
            for latent in self.latents():
                latent.requires_grad_(False)
            self.latent_power = latent_power(self.latents())
            decay = 0.5 * (1 + math.cos(math.pi * (phase.epoch_in_phase - 1) / phase.phase_epochs))
            for group, lr in zip(self.optimizers_dict[QUANT].param_groups, self._quant_lrs(),
                                 strict=True):
                group["lr"] = lr * decay
        super().enter_phase(phase, resumed)

    def compute_objectives(self, predictions, batch, stage):
        """The task's loss, plus ``centroid_weight * L_centroid`` in quantization training."""
        loss = super().compute_objectives(predictions, batch, stage)
        if stage == sb.Stage.TRAIN and self.phase.kind == QUANT:
            centroid = centroid_loss(self.quantizer, self.latent_power)
            self.tally.add({"centroid": centroid})
            loss = quantization_objective(loss, centroid, self.hparams.centroid_weight)
        return loss

    def model_megabytes(self) -> float:
        """Packed size while the quantizer is on, full precision otherwise (MiB)."""
        if self.quantizer.mode == "off":
            return super().model_megabytes()
        return size_report(self.deployable).packed_mb
