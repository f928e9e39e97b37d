"""The base of every QUADS Brain: epochs that follow a phase plan.

:class:`PhaseBrain` holds the epoch-by-epoch :class:`~speechbrain_quads.training.schedule.PhasePlan`,
one optimizer per phase kind, gradient clipping over every optimized parameter (SpeechBrain 1.1.2
clips only the first parameter group), the loss-term tallies of a stage (:class:`StageTally`,
checkpointed so an intra-epoch resume logs the same numbers) and resumption from any checkpoint.
It calls nothing that only a subclass defines. The task Brains are in
:mod:`speechbrain_quads.training.brains`.
"""

from __future__ import annotations

import json
from pathlib import Path

import speechbrain as sb
import torch
from torch import nn

from speechbrain_quads.codebook.quantization import quantized_modules
from speechbrain_quads.training.schedule import EpochPhase, PhasePlan


@sb.utils.checkpoints.register_checkpoint_hooks
class StageTally:
    """Running sums of named loss terms and per-utterance records of the current stage.

    A recoverable: an intra-epoch checkpoint keeps it, so a resumed epoch logs the same means as
    the uninterrupted one.
    """

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.records: dict[str, list] = {}

    def reset(self) -> None:
        """Forget everything (a new stage)."""
        self.sums, self.counts, self.records = {}, {}, {}

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        """Add one batch's 0-dim loss terms."""
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value.detach())
            self.counts[key] = self.counts.get(key, 0) + 1

    def extend(self, key: str, values: list) -> None:
        """Append per-utterance values (JSON types) to record ``key``."""
        self.records.setdefault(key, []).extend(values)

    def means(self) -> dict[str, float]:
        """Mean of every term over the batches that reported it."""
        return {key: total / self.counts[key] for key, total in self.sums.items()}

    @sb.utils.checkpoints.mark_as_saver
    def save(self, path: Path) -> None:
        """Write the tally as JSON (floats round-trip exactly)."""
        state = {"sums": self.sums, "counts": self.counts, "records": self.records}
        Path(path).write_text(json.dumps(state), encoding="utf-8")

    @sb.utils.checkpoints.mark_as_loader
    def load(self, path: Path, end_of_epoch: bool) -> None:
        """Read a tally written by :meth:`save`."""
        del end_of_epoch  # a new stage resets it anyway
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        self.sums, self.counts, self.records = state["sums"], state["counts"], state["records"]


def codebook_ids(model: nn.Module) -> set[int]:
    """``id``s of the codebook centroid parameters inside ``model``."""
    return {id(codebook.centroids) for _, codebook in quantized_modules(model).values()}


class PhaseBrain(sb.Brain):
    """A Brain whose epochs follow a :class:`PhasePlan`, with one optimizer per phase kind.

    hparams used: ``phase_plan`` (unless a subclass fixes the plan), ``max_grad_norm`` (clips the
    norm over every parameter of the stepping optimizer). ``fit`` needs an ``EpochCounter``.
    """

    HEAD_MODULES: tuple[str, ...] = ()
    """Modules trained at the head learning rates (the other trainable ones at the body rates)."""
    TRAINING_ONLY: tuple[str, ...] = ("teacher", "distill")
    """Modules used in training but not deployed (neither quantized nor exported)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deployable = nn.ModuleDict({name: module for name, module in self.modules.items()
                                         if name not in self.TRAINING_ONLY})
        self.plan: PhasePlan | None = None
        self.phase: EpochPhase | None = None
        self.tally = StageTally()
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("tally", self.tally, optional_load=True)

    # ----------------------------------------------------------------------------- the plan
    def build_plan(self, epochs: int) -> PhasePlan:
        """The plan of a run of ``epochs`` epochs: ``hparams.phase_plan``."""
        return self.hparams.phase_plan

    def fit(self, epoch_counter, train_set, valid_set=None, *args, **kwargs):
        """Build the plan for ``epoch_counter.limit`` epochs, check it, then SpeechBrain's fit."""
        self.plan = self.build_plan(epoch_counter.limit)
        if self.plan.total_epochs != epoch_counter.limit:
            raise ValueError(f"the phase plan has {self.plan.total_epochs} epochs but "
                             f"epoch_counter.limit (number_of_epochs) is {epoch_counter.limit}")
        super().fit(epoch_counter, train_set, valid_set, *args, **kwargs)

    def on_stage_start(self, stage, epoch=None):
        """Reset the tally (kept when resuming inside an epoch); enter the epoch's phase."""
        resumed = stage == sb.Stage.TRAIN and self.step > 0
        if not resumed:
            self.tally.reset()
        if stage == sb.Stage.TRAIN:
            self.enter_phase(self.plan[epoch], resumed)
        super().on_stage_start(stage, epoch)

    def enter_phase(self, phase: EpochPhase, resumed: bool) -> None:
        """Make model and optimizers match ``phase``; ``resumed``: the epoch already started
        before an intra-epoch checkpoint, so its transition is in the recovered state."""
        self.phase = phase

    # ----------------------------------------------------------------------------- optimizers
    def parameter_groups(self, skip: set[int]) -> tuple[list, list]:
        """(body, head) trainable parameters of every module but the teacher, ``skip`` ids left
        out; head = ``HEAD_MODULES``."""
        body, head = [], []
        for name, module in self.modules.items():
            if name == "teacher":
                continue
            group = head if name in self.HEAD_MODULES else body
            group.extend(p for p in module.parameters() if p.requires_grad and id(p) not in skip)
        return body, head

    def make_optimizers(self, kinds: set[str]) -> dict[str, torch.optim.Optimizer]:
        """The optimizers of the phase ``kinds`` this class trains; subclasses add theirs."""
        return {}

    def init_optimizers(self):
        """One optimizer per phase kind in the plan, each recoverable from checkpoints."""
        kinds = {e.kind for e in self.plan}
        self.optimizers_dict = self.make_optimizers(kinds)
        missing = kinds - set(self.optimizers_dict)
        if missing:
            raise ValueError(f"{type(self).__name__} trains no {sorted(missing)} phase of "
                             f"{self.plan}: use a Brain class that does (e.g. MCTBrain)")
        for kind, optimizer in self.optimizers_dict.items():
            if self.checkpointer is not None:
                self.checkpointer.add_recoverable(f"{kind}_optimizer", optimizer)

    def freeze_optimizers(self, optimizers):
        """Only the current phase's optimizer steps."""
        return {self.phase.kind: optimizers[self.phase.kind]}

    def optimizers_step(self):
        """SpeechBrain's optimizer step, but the gradient norm is clipped to ``max_grad_norm``
        over every parameter of each stepping optimizer (SpeechBrain 1.1.2 clips only its first
        param group, which would leave heads and projections unclipped)."""
        optimizers = self.freeze_optimizers(self.optimizers_dict)
        for optimizer in optimizers.values():
            self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if not self.scaler.is_enabled() and self.skip_nonfinite_grads:
            self.check_gradients()
        for optimizer in optimizers.values():
            self.scaler.step(optimizer)
        self.scaler.update()
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self.optimizer_step += 1

    def model_megabytes(self) -> float:
        """Deployable size in MiB (the paper's "MB") at float32, codebooks excluded."""
        skip = codebook_ids(self.deployable)
        params = sum(p.numel() for p in self.deployable.parameters() if id(p) not in skip)
        return params * 4 / 2**20
