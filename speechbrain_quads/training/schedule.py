"""The multi-stage combined training (MCT) plan as plain data: which phase runs at which epoch.

Strategies (every one spends the same total number of epochs, so they compare fairly):

- ``mct``: [distill x D, quant x Q] repeated ``iterations`` times, then quant x F (the paper).
- ``sequential``: all distillation epochs first, then all quantization epochs.
- ``distill_only``: every epoch distils (the full-precision student; no quantization).
- ``quant_only``: every epoch quantizes (no distillation from the teacher).
"""

from __future__ import annotations

from dataclasses import dataclass

DISTILL = "distill"
QUANT = "quant"
STRATEGIES = ("mct", "sequential", "distill_only", "quant_only")


@dataclass(frozen=True)
class EpochPhase:
    """What one epoch does.

    Attributes
    ----------
    epoch : int
        1-based epoch number (SpeechBrain's ``EpochCounter`` convention).
    kind : str
        ``"distill"`` or ``"quant"``.
    phase : int
        1-based index of the phase this epoch belongs to (consecutive epochs of one kind).
    epoch_in_phase : int
        1-based position inside the phase.
    phase_epochs : int
        Length of the phase in epochs.
    """

    epoch: int
    kind: str
    phase: int
    epoch_in_phase: int
    phase_epochs: int

    @property
    def starts_phase(self) -> bool:
        """True on the first epoch of a phase (where the quantizer switches)."""
        return self.epoch_in_phase == 1

    @property
    def name(self) -> str:
        """Short label for logs, e.g. ``quant-3 (2/4)``."""
        return f"{self.kind}-{self.phase} ({self.epoch_in_phase}/{self.phase_epochs})"


class PhasePlan:
    """The epoch-by-epoch plan of a QUADS run.

    Arguments
    ---------
    strategy : str
        One of ``STRATEGIES``.
    iterations : int
        Number of (distill, quant) rounds before the final quantization phase (paper: 5).
    distill_epochs : int
        Epochs per distillation phase.
    quant_epochs : int
        Epochs per quantization phase inside the rounds.
    final_quant_epochs : int
        Epochs of the final quantization phase (0 for none).

    Example
    -------
    >>> [e.kind for e in PhasePlan("mct", 2, 1, 1, 1)]
    ['distill', 'quant', 'distill', 'quant', 'quant']
    """

    def __init__(self, strategy: str = "mct", iterations: int = 5, distill_epochs: int = 1,
                 quant_epochs: int = 1, final_quant_epochs: int = 1):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        for key, value in (("iterations", iterations), ("distill_epochs", distill_epochs),
                           ("quant_epochs", quant_epochs), ("final_quant_epochs", final_quant_epochs)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
        self.strategy = strategy
        distill_total = iterations * distill_epochs
        quant_total = iterations * quant_epochs + final_quant_epochs
        if distill_total + quant_total == 0:
            raise ValueError("the plan has no epoch: set iterations and epochs per phase")
        if strategy == "mct":
            kinds = [DISTILL] * distill_epochs + [QUANT] * quant_epochs
            kinds = kinds * iterations + [QUANT] * final_quant_epochs
        elif strategy == "sequential":
            kinds = [DISTILL] * distill_total + [QUANT] * quant_total
        elif strategy == "distill_only":
            kinds = [DISTILL] * (distill_total + quant_total)
        else:
            kinds = [QUANT] * (distill_total + quant_total)
        self.epochs = _number(kinds)

    @property
    def total_epochs(self) -> int:
        """Number of epochs in the plan."""
        return len(self.epochs)

    @property
    def quantizes(self) -> bool:
        """Whether any epoch runs a quantization phase."""
        return any(e.kind == QUANT for e in self.epochs)

    def __getitem__(self, epoch: int) -> EpochPhase:
        """The phase of 1-based ``epoch``."""
        if not 1 <= epoch <= len(self.epochs):
            raise IndexError(f"epoch {epoch} is outside the plan's 1..{len(self.epochs)}")
        return self.epochs[epoch - 1]

    def __iter__(self):
        return iter(self.epochs)

    def __repr__(self) -> str:
        runs = [f"{e.kind}x{e.phase_epochs}" for e in self.epochs if e.starts_phase]
        return f"PhasePlan({self.strategy}: {' -> '.join(runs)})"


def _number(kinds: list[str]) -> list[EpochPhase]:
    """Group consecutive epochs of one kind into numbered phases."""
    runs: list[list[str]] = []
    for kind in kinds:
        if runs and runs[-1][0] == kind:
            runs[-1].append(kind)
        else:
            runs.append([kind])
    epochs, epoch = [], 0
    for phase, run in enumerate(runs, start=1):
        for position in range(1, len(run) + 1):
            epoch += 1
            epochs.append(EpochPhase(epoch, run[0], phase, position, len(run)))
    return epochs
