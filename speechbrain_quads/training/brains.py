"""SpeechBrain ``Brain`` classes for QUADS, one responsibility each.

- :class:`~speechbrain_quads.training.phase_brain.PhaseBrain` (the base, its own module): the
  epoch-by-epoch phase plan, one optimizer per phase kind, gradient clipping over every optimized
  parameter, loss-term tallies, and resumption from any checkpoint.
- :class:`DistillationBrain`: distils a Whisper student + intent head from a frozen Whisper teacher
  (distillation phases only).
- :class:`~speechbrain_quads.training.quantization_brain.QuantizationBrain` (its own module,
  importable from here too): trains k-means codebooks of the deployable weights in quantization
  phases, on top of any task Brain's own ``compute_forward`` / ``compute_objectives``: put it first
  in the bases, ``class MyQuantizedBrain(QuantizationBrain, MyBrain)``.
- :class:`MCTBrain` = QuantizationBrain + DistillationBrain: multi-stage combined training, the
  alternation of both phase kinds and the transitions between them.

Modules (``modules:`` in the hparams): ``student`` (WhisperStudent), ``classifier``
(IntentClassifier), ``teacher`` (WhisperTeacher) and ``distill`` (FeatureDistillation). Every
module but ``teacher`` and ``distill`` is deployable (what the quantizer and the export see).
Batches carry ``id``, ``sig`` (waveforms, relative lengths) and ``intent_encoded``. The loss terms
are in :mod:`speechbrain_quads.training.losses`.

Phase transitions happen at the first epoch of a phase, computed from the epoch number alone:
entering a quantization phase re-clusters the codebooks from the latent weights, warm-started
from the current codebook (``recluster: refit``), or keeps the trained centroids and re-assigns
the weights to them (``reassign``), or keeps codebooks and assignments (``never``, the official
code's behaviour), and resets the quantization optimizer. Leaving one switches the quantizer off:
distillation goes on training the full-precision latent weights, as in the official code.
``commit_after_quant: true`` instead writes the quantized values into the latent weights first;
measured on the demo corpus this traps the model on its first codebook grid.

Transitions change checkpointed state only (codebook buffers, optimizer state), so a run resumed
from an end-of-epoch checkpoint repeats exactly what the uninterrupted run did, and a run resumed
from an intra-epoch checkpoint (``ckpt_interval_steps`` / ``ckpt_interval_minutes``; SpeechBrain
then restores ``step > 0``) does not repeat them: it only re-applies the per-epoch settings
(learning rates, which weights train, the latent power) and keeps the epoch's loss-term tallies.
"""

from __future__ import annotations

from typing import NamedTuple

import speechbrain as sb
import torch

from speechbrain_quads.evaluation.metrics import accuracy, macro_f1
from speechbrain_quads.models.features import lengths_to_samples
from speechbrain_quads.models.heads import masked_mean
from speechbrain_quads.training.losses import (
    classification_loss,
    distillation_objective,
    distilled_task_loss,
    logit_distillation_loss,
    self_distillation_loss,
)
from speechbrain_quads.training.phase_brain import PhaseBrain, codebook_ids
from speechbrain_quads.training.probe import (
    ProbeHead,
    fit_probe,
    fold_into_linear,
    pooled_features,
)
from speechbrain_quads.training.quantization_brain import QuantizationBrain
from speechbrain_quads.training.schedule import DISTILL, QUANT, EpochPhase, PhasePlan


class StudentForward(NamedTuple):
    """What ``compute_forward`` returns: ``logits`` (B, K); ``hidden`` (L+1, B, T, C), the
    student's hidden states; ``lens`` (B,), relative valid lengths; ``teacher`` (N, B, T, C') or
    None when the step needs no teacher; ``reference`` (L+1, B, T, C), the same input through
    the full-precision latent weights, or None (see :meth:`MCTBrain.encode`)."""

    logits: torch.Tensor
    hidden: torch.Tensor
    lens: torch.Tensor
    teacher: torch.Tensor | None = None
    reference: torch.Tensor | None = None


class DistillationBrain(PhaseBrain):
    """Distil a Whisper student (+ intent head) from a frozen Whisper teacher; every epoch distils.

    hparams used: ``alpha``, ``distill_opt_class`` (``!name:`` optimizer taking param groups),
    ``distill_lr_encoder``, ``distill_lr_head``, ``train_logger``, optional ``teacher_cache``
    (TeacherCache), ``augmentation`` (callable (wavs, lens) -> (wavs, lens) applied to the
    student's input only; it must keep the length: the teacher sees the clean waveform and its
    features are compared frame by frame) and ``logit_distill_weight`` (default 0) with
    ``logit_temperature`` (default 2): a soft-target term towards a teacher intent head, a
    linear probe fitted on the frozen teacher's pooled last hidden state over the training set
    before the first epoch and checkpointed with the run. ``classifier_init: probe`` (default
    ``random``) starts the intent head from a linear probe of the pretrained student's own
    frozen features (linear probing, then fine-tuning: LP-FT, Kumar et al. 2022), fitted before
    the first epoch of a run that has no checkpoint yet.
    """

    HEAD_MODULES = ("classifier", "distill")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache = getattr(self.hparams, "teacher_cache", None)
        if self.cache is not None and "teacher" in self.modules:
            self.cache.bind(self.modules.teacher)
        self.teacher_head: ProbeHead | None = None

    @property
    def logit_weight(self) -> float:
        """``logit_distill_weight`` (0: no logit distillation)."""
        return float(getattr(self.hparams, "logit_distill_weight", 0.0) or 0.0)

    def fit(self, epoch_counter, train_set, valid_set=None, *args, **kwargs):
        """With logit distillation: the teacher's intent head, fitted now or (for a run with a
        checkpoint) recovered from it."""
        fresh = self.checkpointer is None or self.checkpointer.find_checkpoint() is None
        init = getattr(self.hparams, "classifier_init", "random")
        if init not in ("random", "probe"):
            raise ValueError(f"classifier_init: {init!r} is not one of ('random', 'probe')")
        if init == "probe" and fresh:
            head = self._probe_of(self.modules.student, train_set)
            fold_into_linear(head, self.modules.classifier.linear)
            self.modules.student.train()
        if self.logit_weight > 0 and self.teacher_head is None:
            n_classes = self.modules.classifier.n_intents
            if not fresh:
                width = self.modules.teacher.output_size
                self.teacher_head = ProbeHead(width, n_classes).requires_grad_(False)
            else:
                self.teacher_head = self._probe_of(self.modules.teacher, train_set)
            self.teacher_head.to(self.device)
            if self.checkpointer is not None:
                self.checkpointer.add_recoverable("teacher_head", self.teacher_head)
        super().fit(epoch_counter, train_set, valid_set, *args, **kwargs)

    def _probe_of(self, encoder: torch.nn.Module, dataset) -> ProbeHead:
        """A linear probe of the frozen ``encoder``'s pooled features over ``dataset`` (the
        encoder is left in eval mode)."""
        features, labels = pooled_features(encoder.eval(), dataset)
        return fit_probe(features, labels, self.modules.classifier.n_intents,
                         seed=getattr(self.hparams, "seed", 0))

    def build_plan(self, epochs: int) -> PhasePlan:
        """Every epoch distils."""
        return PhasePlan("distill_only", iterations=1, distill_epochs=epochs, quant_epochs=0,
                         final_quant_epochs=0)

    def make_optimizers(self, kinds: set[str]) -> dict[str, torch.optim.Optimizer]:
        """Adds the distillation optimizer."""
        optimizers = super().make_optimizers(kinds)
        if DISTILL in kinds:
            optimizers[DISTILL] = self.make_distill_optimizer()
        return optimizers

    def make_distill_optimizer(self) -> torch.optim.Optimizer:
        """Encoder weights at ``distill_lr_encoder``, head and projections at ``distill_lr_head``;
        codebooks are not distilled."""
        encoder, head = self.parameter_groups(skip=codebook_ids(self.deployable))
        return self.hparams.distill_opt_class([
            {"params": encoder, "lr": self.hparams.distill_lr_encoder},
            {"params": head, "lr": self.hparams.distill_lr_head}])

    # ----------------------------------------------------------------------------- forward
    def needs_teacher(self, stage) -> bool:
        """Whether this step's loss uses teacher features."""
        return stage == sb.Stage.TRAIN and self.phase.kind == DISTILL

    def compute_forward(self, batch, stage) -> StudentForward:
        """Waveforms -> the student's logits and hidden states, and the teacher's features when
        the step needs them."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        student_wavs, student_lens = wavs, lens
        augmentation = getattr(self.hparams, "augmentation", None)
        if stage == sb.Stage.TRAIN and augmentation is not None:
            student_wavs, student_lens = augmentation(wavs, lens)
            if student_wavs.shape[0] != wavs.shape[0]:
                raise ValueError("augmentation must keep the batch size (teacher features and "
                                 "labels are per clean utterance)")
        try:
            out = self.encode(student_wavs, student_lens, stage)
        except ValueError as error:  # the front end's "utterance i of the batch ...": name it
            raise ValueError(f"{error} (this batch's utterances, in order: "
                             f"{', '.join(batch.id)})") from error
        if self.needs_teacher(stage):
            frames = torch.round(out.lens * out.hidden.shape[2]).long().tolist()
            out = out._replace(teacher=self.teacher_features(batch.id, wavs, lens, frames,
                                                             out.hidden.shape[2]))
        return out

    def encode(self, wavs: torch.Tensor, lens: torch.Tensor, stage) -> StudentForward:
        """The student's input (B, T) -> its logits, hidden states and frame lengths."""
        hidden, frame_lens = self.modules.student(wavs, lens)
        return StudentForward(self.modules.classifier(hidden[-1], frame_lens), hidden, frame_lens)

    def teacher_features(self, ids: list[str], wavs: torch.Tensor, lens: torch.Tensor,
                         student_frames: list[int], frames: int) -> torch.Tensor:
        """Float32 teacher hidden states (N, B, frames, C) on ``self.device`` for the clean
        waveforms, from the cache if present; ``student_frames`` (B,) are the student's valid
        frames, which must match the teacher's up to one frame of rounding."""
        n_samples = lengths_to_samples(lens, wavs.shape[1]).tolist()
        found = [self.cache.load(u, n, self.device) if self.cache else None
                 for u, n in zip(ids, n_samples, strict=True)]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            rows = torch.tensor(missing, device=self.device)
            # full precision whatever --precision says: features are cached and reused
            with torch.autocast(device_type=self.device_type, enabled=False):
                hidden, frame_lens = self.modules.teacher(wavs[rows], lens[rows])
            valid = torch.round(frame_lens * hidden.shape[2]).long().tolist()
            for j, i in enumerate(missing):
                found[i] = hidden[:, j, : valid[j]].float()
                if self.cache is not None:
                    self.cache.store(ids[i], n_samples[i], found[i])
        for utt_id, feats, count in zip(ids, found, student_frames, strict=True):
            if abs(feats.shape[1] - count) > 1:
                augmentation = getattr(self.hparams, "augmentation", None)
                name = getattr(augmentation, "__name__", type(augmentation).__name__)
                raise ValueError(
                    f"utterance {utt_id}: the student has {count} valid frames but the teacher "
                    f"(clean waveform) has {feats.shape[1]}: augmentation {name!r} changes the "
                    "length, and teacher features are compared frame by frame; use a "
                    "length-preserving augmentation")
        first = found[0]
        out = torch.zeros(first.shape[0], len(found), frames, first.shape[-1],
                          dtype=torch.float32, device=self.device)
        for i, feats in enumerate(found):
            count = min(feats.shape[1], frames)
            out[:, i, :count] = feats[:, :count]
        return out

    # ----------------------------------------------------------------------------- losses
    def loss_terms(self, predictions: StudentForward, targets, stage) -> dict[str, torch.Tensor]:
        """Loss terms of a step; ``loss`` is what is optimised."""
        logits, hidden, lens, teacher, _ = predictions
        ce = classification_loss(logits, targets)
        if teacher is None:  # evaluation: no teacher needed
            return {"loss": ce, "ce": ce}
        l1 = self.modules.distill(hidden, teacher, lens)
        terms = {"loss": distillation_objective(self.hparams.alpha, l1, ce), "l1": l1, "ce": ce}
        if self.logit_weight > 0:
            target = self.teacher_head(masked_mean(teacher[-1], lens))
            terms["kd"] = logit_distillation_loss(
                logits, target, float(getattr(self.hparams, "logit_temperature", 2.0)))
            terms["loss"] = terms["loss"] + self.logit_weight * terms["kd"]
        return terms

    def compute_objectives(self, predictions, batch, stage):
        """The step's loss; the tally keeps its terms and the predictions for the metrics."""
        targets = batch.intent_encoded.data.reshape(-1).to(self.device)
        terms = self.loss_terms(predictions, targets, stage)
        self.tally.add({key: value for key, value in terms.items() if key != "loss"})
        self.tally.extend("predicted", predictions.logits.argmax(dim=-1).tolist())
        self.tally.extend("targets", targets.tolist())
        self.tally.extend("ids", list(batch.id))
        return terms["loss"]

    @property
    def predicted(self) -> list[int]:
        """Predicted class indices of the current (or last) stage."""
        return self.tally.records.get("predicted", [])

    @property
    def targets(self) -> list[int]:
        """True class indices of the current (or last) stage."""
        return self.tally.records.get("targets", [])

    @property
    def predicted_ids(self) -> list[str]:
        """Utterance ids of :attr:`predicted`."""
        return self.tally.records.get("ids", [])

    # ----------------------------------------------------------------------------- stages
    def stage_stats(self, stage_loss) -> dict[str, float]:
        """Mean loss terms, accuracy and macro-F1 of the finished stage."""
        stats = {"loss": stage_loss, **self.tally.means()}
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


class MCTBrain(QuantizationBrain, DistillationBrain):
    """Multi-stage combined training: distillation and quantization phases alternate.

    hparams used besides both bases': ``phase_plan`` (PhasePlan: strategy, iterations, epochs per
    phase, final quantization epochs), ``quant_distill_weight`` (L1 weight in quantization
    phases, default 0: no teacher there; the paper's ``gamma * L_dis + (1 - gamma) * L_quant``
    up to scale), ``quant_self_distill_weight`` (default 0; see :meth:`encode`),
    ``commit_after_quant`` (default false) and ``distill_through_quantizer`` (default false:
    quantization-aware distillation, see :attr:`through_quantizer`).
    """

    @property
    def self_distill_weight(self) -> float:
        """``quant_self_distill_weight`` (0: off)."""
        return float(getattr(self.hparams, "quant_self_distill_weight", 0.0) or 0.0)

    def encode(self, wavs: torch.Tensor, lens: torch.Tensor, stage) -> StudentForward:
        """With ``quant_self_distill_weight`` in a quantization training step, also runs the same
        input through the latent weights (quantizer off, no gradient): those hidden states are
        the ``reference`` the codebooks learn to reproduce, what the full-precision student
        computes on every layer, a signal that does not vanish once the training set is fitted
        (CE does)."""
        reference = None
        if stage == sb.Stage.TRAIN and self.phase.kind == QUANT and self.self_distill_weight > 0:
            mode = self.quantizer.mode
            self.quantizer.set_mode("off")
            try:
                with torch.no_grad():
                    reference = self.modules.student(wavs, lens)[0]
            finally:
                self.quantizer.set_mode(mode)
        return super().encode(wavs, lens, stage)._replace(reference=reference)

    def build_plan(self, epochs: int) -> PhasePlan:
        """The plan from the hparams (``strategy: mct | sequential | distill_only | quant_only``)."""
        return self.hparams.phase_plan

    def needs_teacher(self, stage) -> bool:
        """Quantization uses the teacher only when distillation is kept at a weight."""
        if stage == sb.Stage.TRAIN and self.phase.kind == QUANT:
            return getattr(self.hparams, "quant_distill_weight", 0.0) > 0
        return super().needs_teacher(stage)

    def loss_terms(self, predictions: StudentForward, targets, stage) -> dict[str, torch.Tensor]:
        """In quantization training: ``CE + quant_distill_weight * L1 + quant_self_distill_weight *
        L_self`` (the centroid term is added by QuantizationBrain); otherwise DistillationBrain's
        terms."""
        if not (stage == sb.Stage.TRAIN and self.phase.kind == QUANT):
            return super().loss_terms(predictions, targets, stage)
        logits, hidden, lens, teacher, reference = predictions
        terms = {"ce": classification_loss(logits, targets)}
        if teacher is not None:
            terms["l1"] = self.modules.distill(hidden, teacher, lens)
        weight = getattr(self.hparams, "quant_distill_weight", 0.0)
        terms["loss"] = distilled_task_loss(terms["ce"], terms.get("l1"), weight)
        if reference is not None:
            terms["self_l1"] = self_distillation_loss(hidden, reference, lens)
            terms["loss"] = terms["loss"] + self.self_distill_weight * terms["self_l1"]
        return terms

    def enter_phase(self, phase: EpochPhase, resumed: bool) -> None:
        """Leaving quantization for distillation: the quantizer goes off (after committing its
        values with ``commit_after_quant``) and the latent weights train again; with
        ``distill_through_quantizer`` it goes to mode ``ste`` instead (clustered first if it
        never was, otherwise re-assigned to the trained codebook)."""
        if phase.kind == DISTILL:
            if phase.starts_phase and not resumed:
                if getattr(self.hparams, "commit_after_quant", False) and (
                        self.quantizer.mode != "off"):
                    self.quantizer.commit()
                if self.through_quantizer:
                    if self.quantizer.clustered:
                        self.quantizer.reassign()
                    else:
                        self.cluster_codebooks()
                    self.quantizer.set_mode("ste")
                elif self.quantizer.mode != "off":
                    self.quantizer.set_mode("off")
            for latent in self.latents():
                latent.requires_grad_(True)
        super().enter_phase(phase, resumed)

    @property
    def through_quantizer(self) -> bool:
        """``distill_through_quantizer`` (default false): distillation steps run the quantized
        forward, with the gradient passed straight through to the latent weights and every
        weight re-assigned to its nearest centroid before each step."""
        return bool(getattr(self.hparams, "distill_through_quantizer", False))

    def on_fit_batch_start(self, batch, should_step):
        """In mode ``ste``, follow the latent weights the last step moved."""
        if self.quantizer.mode == "ste":
            self.quantizer.reassign()
        super().on_fit_batch_start(batch, should_step)
