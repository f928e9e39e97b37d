"""SpeechBrain ``Brain`` classes for QUADS: distillation, quantization and their alternation (MCT).

Modules (``modules:`` in the hparams): ``student`` (WhisperStudent), ``classifier``
(IntentClassifier), ``teacher`` (WhisperTeacher; not needed by QuantizationBrain unless
``quant_distill_weight > 0``) and ``distill`` (FeatureDistillation).
Batches carry ``id``, ``sig`` (waveforms, relative lengths) and ``intent_encoded``.

Losses, per phase:

- distillation: ``alpha * L1(student, teacher) + (1 - alpha) * CE``.
- quantization: ``centroid_weight * L_centroid + CE + quant_distill_weight * L1`` where
  ``L_centroid = ||W - C[idx]||^2 / ||W||^2`` is the relative squared error between the latent
  (full-precision) weights and their assigned centroids: it anchors the trained codebook to the
  clusters of the distilled weights while CE moves the centroids (dimensionless, about 1e-2 at
  4 bits).

Phase transitions happen at the first epoch of a phase, computed from the epoch number alone, so a
run resumed from a checkpoint repeats exactly what an uninterrupted run does: entering a
quantization phase re-clusters the codebooks from the latent weights, warm-started from the
current codebook (or keeps them with ``recluster: false``, the official code's behaviour) and
resets the quantization optimizer. Leaving one switches the quantizer off: distillation goes on
training the full-precision latent weights, as in the official code, where weights stay full
precision and the codebook follows them. ``commit_after_quant: true`` instead writes the
quantized values into the latent weights first; measured on the demo corpus this traps the
model on its first codebook grid (distillation's small steps cannot leave it).
"""

from __future__ import annotations

import math

import speechbrain as sb
import torch
from torch import nn

from speechbrain_quads.codebook.packing import size_report
from speechbrain_quads.evaluation.metrics import accuracy, macro_f1
from speechbrain_quads.models.features import lengths_to_samples
from speechbrain_quads.training.losses import distillation_objective
from speechbrain_quads.training.schedule import DISTILL, QUANT, PhasePlan


class DistillationBrain(sb.Brain):
    """Distil a Whisper student (+ intent head) from a frozen Whisper teacher.

    hparams used: ``alpha``, ``distill_opt_class`` (``!name:`` optimizer taking param groups),
    ``distill_lr_encoder``, ``distill_lr_head``, ``epoch_counter``, optional ``teacher_cache``
    (TeacherCache), ``augmentation`` (callable (wavs, lens) -> (wavs, lens) applied to the
    student's input only; the teacher always sees the clean waveform) and ``train_logger``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deployable = nn.ModuleDict({"student": self.modules.student,
                                         "classifier": self.modules.classifier})
        self.cache = getattr(self.hparams, "teacher_cache", None)
        if self.cache is not None and "teacher" in self.modules:
            self.cache.bind(self.modules.teacher)
        self.plan = self.build_plan()
        self.phase = self.plan[1]

    # ----------------------------------------------------------------------------- the plan
    def build_plan(self) -> PhasePlan:
        """Every epoch distils."""
        return PhasePlan("distill_only", iterations=1, distill_epochs=self.hparams.epoch_counter.limit,
                         quant_epochs=0, final_quant_epochs=0)

    def on_fit_start(self):
        """Check the plan covers the epoch counter, then build optimizers and recover."""
        limit = self.hparams.epoch_counter.limit
        if self.plan.total_epochs != limit:
            raise ValueError(f"the phase plan has {self.plan.total_epochs} epochs but "
                             f"epoch_counter.limit (number_of_epochs) is {limit}")
        super().on_fit_start()

    # ----------------------------------------------------------------------------- optimizers
    def _codebook_ids(self) -> set[int]:
        return set()

    def make_distill_optimizer(self) -> torch.optim.Optimizer:
        """Encoder weights at ``distill_lr_encoder``, head and projections at ``distill_lr_head``."""
        skip = self._codebook_ids()
        encoder = [p for p in self.modules.student.parameters()
                   if p.requires_grad and id(p) not in skip]
        head = [p for name in ("classifier", "distill") if name in self.modules
                for p in self.modules[name].parameters() if p.requires_grad]
        return self.hparams.distill_opt_class([
            {"params": encoder, "lr": self.hparams.distill_lr_encoder},
            {"params": head, "lr": self.hparams.distill_lr_head}])

    def init_optimizers(self):
        """One optimizer per phase kind the plan uses, each recoverable from checkpoints."""
        self.optimizers_dict = {}
        kinds = {e.kind for e in self.plan}
        if DISTILL in kinds:
            self.optimizers_dict[DISTILL] = self.make_distill_optimizer()
        if QUANT in kinds:
            self.optimizers_dict[QUANT] = self.make_quant_optimizer()
        for kind, optimizer in self.optimizers_dict.items():
            if self.checkpointer is not None:
                self.checkpointer.add_recoverable(f"{kind}_optimizer", optimizer)

    def freeze_optimizers(self, optimizers):
        """Only the current phase's optimizer steps."""
        return {self.phase.kind: optimizers[self.phase.kind]}

    # ----------------------------------------------------------------------------- forward
    def needs_teacher(self, stage) -> bool:
        """Whether this step's loss uses teacher features."""
        return stage == sb.Stage.TRAIN and self.phase.kind == DISTILL

    def compute_forward(self, batch, stage):
        """Waveforms -> (logits (B, K), student hidden (L+1, B, T, C), lens (B,), teacher or None)."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        student_wavs, student_lens = wavs, lens
        augmentation = getattr(self.hparams, "augmentation", None)
        if stage == sb.Stage.TRAIN and augmentation is not None:
            student_wavs, student_lens = augmentation(wavs, lens)
            if student_wavs.shape[0] != wavs.shape[0]:
                raise ValueError("augmentation must keep the batch size (teacher features and "
                                 "labels are per clean utterance)")
        hidden, frame_lens = self.modules.student(student_wavs, student_lens)
        logits = self.modules.classifier(hidden[-1], frame_lens)
        teacher = None
        if self.needs_teacher(stage):
            teacher = self.teacher_features(batch.id, wavs, lens, hidden.shape[2])
        return logits, hidden, frame_lens, teacher

    def teacher_features(self, ids: list[str], wavs: torch.Tensor, lens: torch.Tensor,
                         frames: int) -> torch.Tensor:
        """Teacher hidden states (N, B, frames, C) for clean waveforms, from the cache if present."""
        n_samples = lengths_to_samples(lens, wavs.shape[1]).tolist()
        found = [self.cache.load(u, n) if self.cache else None for u, n in zip(ids, n_samples,
                                                                                strict=True)]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            rows = torch.tensor(missing, device=wavs.device)
            hidden, frame_lens = self.modules.teacher(wavs[rows], lens[rows])
            valid = torch.round(frame_lens * hidden.shape[2]).long().tolist()
            for j, i in enumerate(missing):
                found[i] = hidden[:, j, : valid[j]].float()
                if self.cache is not None:
                    self.cache.store(ids[i], n_samples[i], found[i])
        first = found[0]
        out = first.new_zeros(first.shape[0], len(found), frames, first.shape[-1])
        for i, feats in enumerate(found):
            out[:, i, : feats.shape[1]] = feats[:, :frames].to(out.device)
        return out

    # ----------------------------------------------------------------------------- losses
    def distill_terms(self, predictions, targets) -> dict[str, torch.Tensor]:
        """Loss terms of a distillation step; ``loss`` is what is optimised."""
        logits, hidden, lens, teacher = predictions
        ce = nn.functional.cross_entropy(logits, targets)
        if teacher is None:  # evaluation: no teacher needed
            return {"loss": ce, "ce": ce}
        l1 = self.modules.distill(hidden, teacher, lens)
        return {"loss": distillation_objective(self.hparams.alpha, l1, ce), "l1": l1, "ce": ce}

    def compute_objectives(self, predictions, batch, stage):
        """The current phase's loss; also accumulates loss terms and predictions for metrics."""
        targets = batch.intent_encoded.data.reshape(-1).to(self.device)
        terms = self.phase_terms(predictions, targets, stage)
        for key, value in terms.items():
            self.term_sums[key] = self.term_sums.get(key, 0.0) + float(value.detach())
        self.term_count += 1
        self.predicted.extend(predictions[0].argmax(dim=-1).tolist())
        self.targets.extend(targets.tolist())
        self.predicted_ids.extend(batch.id)
        return terms["loss"]

    def phase_terms(self, predictions, targets, stage) -> dict[str, torch.Tensor]:
        """Loss terms for the current phase kind."""
        return self.distill_terms(predictions, targets)

    # ----------------------------------------------------------------------------- stages
    def on_stage_start(self, stage, epoch=None):
        """Reset accumulators; on training epochs, enter the epoch's phase."""
        self.term_sums, self.term_count = {}, 0
        self.predicted, self.targets, self.predicted_ids = [], [], []
        if stage == sb.Stage.TRAIN:
            self.enter_phase(self.plan[epoch])

    def enter_phase(self, phase) -> None:
        """Make the model match ``phase`` (idempotent within a phase)."""
        self.phase = phase

    def model_megabytes(self) -> float:
        """Deployable size in MiB (the paper's "MB") at float32: every parameter, codebooks
        excluded (a quantizer that is off holds only the latent weights that matter)."""
        skip = self._codebook_ids()
        params = sum(p.numel() for p in self.deployable.parameters() if id(p) not in skip)
        return params * 4 / 2**20

    def stage_stats(self, stage_loss) -> dict[str, float]:
        """Mean loss terms, accuracy and macro-F1 of the finished stage."""
        stats = {"loss": stage_loss}
        stats.update({k: v / max(self.term_count, 1) for k, v in self.term_sums.items()
                      if k != "loss"})
        stats["ACC"] = accuracy(self.predicted, self.targets)
        stats["macro_F1"] = macro_f1(self.predicted, self.targets)
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log phase, every loss term, accuracy and size; checkpoint after validation."""
        stats = self.stage_stats(stage_loss)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if stage == sb.Stage.VALID:
            meta = {"epoch": epoch, "phase": self.phase.name,
                    "size_MB": round(self.model_megabytes(), 4)}
            for kind, optimizer in self.optimizers_dict.items():
                meta[f"lr_{kind}"] = optimizer.param_groups[0]["lr"]
            self.hparams.train_logger.log_stats(stats_meta=meta, train_stats=self.train_stats,
                                                valid_stats=stats)
            if self.checkpointer is not None:
                self.checkpointer.save_and_keep_only(meta={"ACC": stats["ACC"], "epoch": epoch},
                                                     num_to_keep=1)
        if stage == sb.Stage.TEST:
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats)


class QuantizationBrain(DistillationBrain):
    """Train the codebooks of a quantized student with ``L_centroid + CE`` (no teacher needed).

    hparams used besides DistillationBrain's: ``quantizer`` (CodebookQuantizer, prepared here on
    the student + classifier), ``quant_opt_class`` (``!name:`` optimizer taking param groups),
    ``quant_lr`` (codebooks and the student's other tensors) and optional ``quant_lr_head``, both
    with cosine decay over each quantization phase, ``centroid_weight``,
    ``quant_distill_weight`` and optional ``commit_after_quant`` (default false).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.quantizer = self.hparams.quantizer
        self.quantizer.prepare(self.deployable)
        self.latent_power = None

    def build_plan(self) -> PhasePlan:
        """Every epoch quantizes."""
        return PhasePlan("quant_only", iterations=0, distill_epochs=0, quant_epochs=0,
                         final_quant_epochs=self.hparams.epoch_counter.limit)

    def _latents(self) -> list[torch.Tensor]:
        return [m.parametrizations["weight"].original for m, _ in self.quantizer.modules.values()]

    def _codebook_ids(self) -> set[int]:
        return {id(codebook.centroids) for _, codebook in self.quantizer.modules.values()}

    def make_quant_optimizer(self) -> torch.optim.Optimizer:
        """Codebooks and the student's full-precision tensors at ``quant_lr``; head and projections
        at ``quant_lr_head``. Latent weights are not trained in quantization phases.

        A centroid's gradient is the sum over its members (thousands of weights), so its scale
        grows with the cluster: an adaptive optimizer (Adam) keeps steps at ``quant_lr`` whatever
        the cluster size; SGD needs a learning rate matched to the tensor sizes.
        """
        latents = {id(p) for p in self._latents()}
        student = [p for p in self.modules.student.parameters() if id(p) not in latents]
        head = [p for name in ("classifier", "distill") if name in self.modules
                for p in self.modules[name].parameters()]
        head_lr = getattr(self.hparams, "quant_lr_head", self.hparams.quant_lr)
        return self.hparams.quant_opt_class([{"params": student, "lr": self.hparams.quant_lr},
                                             {"params": head, "lr": head_lr}])

    def needs_teacher(self, stage) -> bool:
        """Quantization uses the teacher only when distillation is kept at a weight."""
        if self.phase.kind == QUANT:
            weight = getattr(self.hparams, "quant_distill_weight", 0.0)
            return stage == sb.Stage.TRAIN and weight > 0
        return super().needs_teacher(stage)

    def enter_phase(self, phase) -> None:
        """Switch the quantizer at phase boundaries; set the quantization phase's cosine LR."""
        starting = phase.starts_phase
        if phase.kind == QUANT:
            if starting:
                self.quantizer.cluster()
                self.quantizer.set_mode("train")
                self.optimizers_dict[QUANT].state.clear()
            with torch.no_grad():
                latents = self._latents()
                self.latent_power = (sum(w.square().sum() for w in latents)
                                     / sum(w.numel() for w in latents))
            for latent in self._latents():
                latent.requires_grad_(False)
            decay = 0.5 * (1 + math.cos(math.pi * (phase.epoch_in_phase - 1) / phase.phase_epochs))
            student_group, head_group = self.optimizers_dict[QUANT].param_groups
            student_group["lr"] = self.hparams.quant_lr * decay
            head_group["lr"] = getattr(self.hparams, "quant_lr_head", self.hparams.quant_lr) * decay
        else:
            if starting and self.quantizer.mode != "off":
                if getattr(self.hparams, "commit_after_quant", False):
                    self.quantizer.commit()
                self.quantizer.set_mode("off")
            for latent in self._latents():
                latent.requires_grad_(True)
        super().enter_phase(phase)

    def quant_terms(self, predictions, targets) -> dict[str, torch.Tensor]:
        """Loss terms of a quantization step."""
        logits, hidden, lens, teacher = predictions
        ce = nn.functional.cross_entropy(logits, targets)
        centroid = self.quantizer.centroid_distance() / self.latent_power
        loss = self.hparams.centroid_weight * centroid + ce
        terms = {"ce": ce, "centroid": centroid}
        if teacher is not None:
            terms["l1"] = self.modules.distill(hidden, teacher, lens)
            loss = loss + self.hparams.quant_distill_weight * terms["l1"]
        terms["loss"] = loss
        return terms

    def phase_terms(self, predictions, targets, stage) -> dict[str, torch.Tensor]:
        """Quantization terms in quantization phases (training only needs the centroid term)."""
        if self.phase.kind == QUANT and stage == sb.Stage.TRAIN:
            return self.quant_terms(predictions, targets)
        return super().phase_terms(predictions, targets, stage)

    def model_megabytes(self) -> float:
        """Packed size in quantization phases, full precision otherwise (MiB)."""
        if self.quantizer.mode == "off":
            return super().model_megabytes()
        return size_report(self.deployable).packed_mb


class MCTBrain(QuantizationBrain):
    """Multi-stage combined training: distillation and quantization phases alternate.

    hparams used besides QuantizationBrain's: ``phase_plan`` (PhasePlan: strategy, iterations,
    epochs per phase, final quantization epochs).
    """

    def build_plan(self) -> PhasePlan:
        """The plan from the hparams (``strategy: mct | sequential | distill_only | quant_only``)."""
        return self.hparams.phase_plan
