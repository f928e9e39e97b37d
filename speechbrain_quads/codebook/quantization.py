"""Codebook (palettized) weight quantization with the codebook in the training loop.

Lifecycle, in the spirit of coremltools' palettizer and torchao's ``quantize_``::

    quantizer = CodebookQuantizer(QuantizationConfig(bits=4))
    quantizer.prepare(model)        # parametrize the selected weights (mode "off")
    quantizer.cluster()             # k-means from the current weights, mode -> "train"
    ...train...                     # gradients reach the centroids
    quantizer.set_mode("off" | "train" | "frozen" | "ste")
    quantizer.commit()              # write centroids[indices] into the latent weights
    packing.size_report(model)    # sizes (packing builds on this module)
    quantizer.finalize()            # plain quantized weights, parametrizations removed

Each quantized ``weight`` gets a
:class:`~speechbrain_quads.codebook.parametrization.CodebookParametrization` through
``torch.nn.utils.parametrize``; it holds the ``centroids`` parameter and the ``indices``,
``mode`` and ``clustered`` buffers, so the model's own ``state_dict`` carries the whole
quantizer state (a checkpoint saved mid-training restores it with ``load_state_dict``).
Pure torch: no SpeechBrain or Whisper import here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from speechbrain_quads.codebook.kmeans import INITS
from speechbrain_quads.codebook.parametrization import (
    MAX_BITS,
    MODES,
    CodebookParametrization,
)

GRANULARITIES = ("per_tensor", "per_group")

RECLUSTER = ("refit", "reassign", "never")
"""What re-clustering does to an already-clustered codebook (see :class:`QuantizationConfig`)."""


@dataclass
class QuantizationConfig:
    """Plain-typed settings of a :class:`CodebookQuantizer` (HyperPyYAML friendly).

    Attributes:
        bits: index width b; each codebook has k = 2**b centroids (1 <= b <= 16).
        init: k-means initialisation: ``linear`` (default; up to 1.55x the exact optimum's
            squared error at 4 bits, 6.05x at 8 on tiny.en), ``optimal`` (the exact 1-D optimum
            of a sketch, then Lloyd: within 0.25 % at 1-8 bits; no measurable accuracy gain in
            PTQ, worse for the ONNX int8 path; the one to use with sensitivity weights),
            ``density``, ``kmeans++``, ``range`` (see
            :func:`~speechbrain_quads.codebook.kmeans.init_centroids`).
        kmeans_iters: maximum Lloyd iterations per clustering.
        seed: seed of the (deterministic) clustering.
        granularity: ``per_tensor`` (one codebook per weight) or ``per_group``.
        group_size: output channels (rows of dim 0) per codebook when ``per_group`` (rounded
            to the nearest equal split of a layer's rows when it does not divide them).
        module_types: class names of the modules whose ``weight`` is quantized (matched against
            the class and its bases, so subclasses of ``nn.Linear`` count as ``Linear``).
        include: regexes; if any are given, a module name must match one (``re.search``).
        exclude: regexes; a module name matching one is left in full precision.
        min_numel: weights with fewer elements stay in full precision.
        recluster: what :meth:`CodebookQuantizer.cluster` does to a codebook that is already
            clustered (entering a later quantization phase): ``refit`` (or true) runs k-means on
            the latent weights again; ``reassign`` keeps the trained centroids and moves each
            latent weight to its nearest one (what the codebook learned is kept, the
            assignments follow what distillation changed); ``never`` (or false) keeps codebook
            and assignments (the official code).
        warm_start: re-clustering starts Lloyd from the current codebook (MCT then tracks what
            distillation changed; re-initialising on weights that were committed from a
            codebook lands in poor local optima); False re-initialises with ``init``. Not used
            with ``init: optimal``, which solves each refit afresh (near the global optimum).
        clip_percentile: percent of outliers clipped at each end by ``init="range"``.
        module_bits: ``{module name: bits}``, widths that replace ``bits`` for those modules
            (mixed precision; see also :mod:`~speechbrain_quads.codebook.allocation`).
        outlier_fraction: share of each weight kept exactly, outside the codebook (dense and
            sparse decomposition, as SqueezeLLM): the ``round(fraction * numel)`` weights of
            largest magnitude (or, clustered with sensitivities, of largest
            ``sensitivity * w**2``) are chosen at each fit, left out of the k-means, and used
            as their latent values; exported as int32 positions + float32 values (8 bytes each).
    """

    bits: int = 8
    init: str = "linear"
    kmeans_iters: int = 30
    seed: int = 0
    granularity: str = "per_tensor"
    group_size: int = 64
    module_types: Sequence[str] = ("Linear", "Conv1d")
    include: Sequence[str] = field(default_factory=tuple)
    exclude: Sequence[str] = field(default_factory=tuple)
    min_numel: int = 0
    recluster: str | bool = "refit"
    warm_start: bool = True
    clip_percentile: float = 0.5
    module_bits: Mapping[str, int] = field(default_factory=dict)
    outlier_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name in ("module_types", "include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"{name}: expected a list of strings, got {value!r}")
            setattr(self, name, tuple(value))
        self._check_int("bits", 1, MAX_BITS)
        self._check_int("kmeans_iters", 0, None)
        self._check_int("seed", 0, None)
        self._check_int("group_size", 1, None)
        self._check_int("min_numel", 0, None)
        if self.init not in INITS:
            raise ValueError(f"init: {self.init!r} is not one of {INITS}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity: {self.granularity!r} is not one of {GRANULARITIES}")
        if not self.module_types:
            raise ValueError("module_types: at least one module type is required")
        if isinstance(self.recluster, bool):
            self.recluster = "refit" if self.recluster else "never"
        if self.recluster not in RECLUSTER:
            raise ValueError(f"recluster: {self.recluster!r} is not one of {RECLUSTER} (or "
                             "true / false for refit / never)")
        if not isinstance(self.warm_start, bool):
            raise ValueError(f"warm_start: expected true or false, got {self.warm_start!r}")
        self.module_bits = dict(self.module_bits)
        for name, width in self.module_bits.items():
            if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_BITS:
                raise ValueError(f"module_bits: {name!r}: expected an integer in [1, {MAX_BITS}], "
                                 f"got {width!r}")
        fraction = self.outlier_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
                0.0 <= fraction < 0.5):
            raise ValueError(f"outlier_fraction: expected 0 <= value < 0.5, got {fraction!r}")
        percentile = self.clip_percentile
        if not isinstance(percentile, (int, float)) or not 0.0 <= percentile < 50.0:
            raise ValueError(f"clip_percentile: expected 0 <= value < 50, got {percentile!r}")
        for name in ("include", "exclude"):
            for pattern in getattr(self, name):
                try:
                    re.compile(pattern)
                except re.error as error:
                    raise ValueError(f"{name}: bad regex {pattern!r} ({error})") from None

    def kmeans_settings(self) -> dict:
        """The keyword arguments of ``CodebookParametrization.fit`` this config sets."""
        return {"init": self.init, "iters": self.kmeans_iters,
                "clip_percentile": self.clip_percentile, "warm_start": self.warm_start}

    def _check_int(self, name: str, low: int, high: int | None) -> None:
        """Raise ValueError naming ``name`` unless it is an int in ``[low, high]``."""
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = f"{low} <= {name} <= {high}" if high is not None else f"{name} >= {low}"
            raise ValueError(f"{name}: {value} is out of range ({bound})")



def _type_matches(module: nn.Module, module_types: Sequence[str]) -> bool:
    """True if the class of ``module`` or one of its bases is named in ``module_types``."""
    return any(cls.__name__ in module_types for cls in type(module).__mro__)


def _name_selected(name: str, config: QuantizationConfig) -> bool:
    """Apply the include/exclude regexes of ``config`` to a module name."""
    if config.include and not any(re.search(p, name) for p in config.include):
        return False
    return not any(re.search(p, name) for p in config.exclude)


def select_modules(model: nn.Module, config: QuantizationConfig) -> list[tuple[str, nn.Module]]:
    """Modules of ``model`` whose ``weight`` the config quantizes, in ``named_modules`` order.

    A module is selected if its type matches ``module_types``, its name passes ``include`` /
    ``exclude``, it owns a floating ``weight`` parameter with at least ``min_numel`` elements.
    Biases, norms and (by default) embeddings therefore stay in full precision.
    """
    selected = []
    for name, module in model.named_modules():
        if not _type_matches(module, config.module_types) or not _name_selected(name, config):
            continue
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"module {name!r}: weight is already parametrized (prepared twice?)")
        weight = module._parameters.get("weight")
        if weight is None or not weight.is_floating_point() or weight.dim() < 1:
            continue
        if weight.numel() >= config.min_numel:
            selected.append((name, module))
    return selected


def _group_count(name: str, weight: torch.Tensor, config: QuantizationConfig) -> int:
    """Number of codebooks for ``weight``: 1 per tensor, or ``rows / group_size`` per group.

    Groups are equal blocks of output channels, so when ``group_size`` does not divide the
    rows (a 56-intent head with ``group_size: 16``), the count is the divisor of ``rows``
    nearest to ``rows / group_size`` (ties: more groups), e.g. 4 groups of 14 rows.
    """
    rows = weight.shape[0]
    if config.granularity == "per_tensor" or rows <= config.group_size:
        return 1
    wanted = rows / config.group_size
    divisors = [d for d in range(1, rows + 1) if rows % d == 0]
    return min(divisors, key=lambda d: (abs(d - wanted), -d))


def quantized_modules(model: nn.Module) -> dict[str, tuple[nn.Module, CodebookParametrization]]:
    """All ``(module, parametrization)`` pairs of ``model`` quantized by this engine, by name."""
    found = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for candidate in module.parametrizations["weight"]:
                if isinstance(candidate, CodebookParametrization):
                    found[name] = (module, candidate)
    return found


class CodebookQuantizer:
    """Attaches trainable codebooks to the selected weights of a model and drives them.

    Args:
        config: the settings; defaults to ``QuantizationConfig()`` (8 bits, per tensor).
    """

    def __init__(self, config: QuantizationConfig | None = None) -> None:
        self.config = config if config is not None else QuantizationConfig()
        self.model: nn.Module | None = None
        self.modules: dict[str, tuple[nn.Module, CodebookParametrization]] = {}

    @property
    def quantized_names(self) -> list[str]:
        """Names of the quantized modules (their ``weight`` is quantized)."""
        return list(self.modules)

    def prepare(self, model: nn.Module) -> list[str]:
        """Parametrize the selected weights of ``model`` in place (mode ``off``).

        Returns:
            the names of the quantized modules.
        """
        if self.model is not None:
            raise RuntimeError("prepare(): this quantizer is already attached to a model")
        selected = select_modules(model, self.config)
        if not selected:
            raise ValueError(
                "prepare(): no module matches module_types/include/exclude/min_numel "
                f"({self.config.module_types}, {self.config.include}, {self.config.exclude}, "
                f"{self.config.min_numel})"
            )
        groups = [_group_count(name, module.weight, self.config) for name, module in selected]
        for (name, module), count in zip(selected, groups, strict=True):
            outliers = round(self.config.outlier_fraction * module.weight.numel())
            codebook = CodebookParametrization(module.weight, self.config.bits, count, outliers)
            parametrize.register_parametrization(module, "weight", codebook)
            self.modules[name] = (module, codebook)
        self.model = model
        self.set_bits(self.config.module_bits)
        return self.quantized_names

    def set_bits(self, widths: dict[str, int]) -> None:
        """Give the named quantized modules their own index widths (mixed precision) before
        the first clustering; unknown names raise ValueError naming them."""
        modules = self._attached("set_bits")
        unknown = sorted(set(widths) - set(modules))
        if unknown:
            raise ValueError(f"set_bits: no quantized module named {unknown[:3]}")
        for name, bits in widths.items():
            modules[name][1].resize(bits)

    def _attached(self, verb: str) -> dict[str, tuple[nn.Module, CodebookParametrization]]:
        """The quantized modules, or RuntimeError naming ``verb`` if not prepared."""
        if not self.modules:
            raise RuntimeError(f"{verb}(): call prepare(model) first (or after finalize())")
        return self.modules

    def _require_clustered(self, verb: str) -> None:
        """RuntimeError naming ``verb`` and the first unclustered module, if any."""
        for name, (_, codebook) in self._attached(verb).items():
            if not int(codebook.clustered):
                raise RuntimeError(f"{verb}(): module {name!r} has no codebook; call cluster()")

    def cluster(self, sensitivity: dict[str, torch.Tensor] | None = None) -> None:
        """k-means every codebook from the current latent weights, then set mode ``train``.

        ``sensitivity`` ({module name: tensor of the weight's shape}, e.g. from
        :func:`~speechbrain_quads.codebook.sensitivity.squared_gradients`) weights each value's
        squared error in the k-means it is given to (a codebook refitted or clustered now).

        An already-clustered codebook is refitted, re-assigned or kept, as ``recluster`` says;
        if every codebook is kept, nothing changes (not even the mode). Under
        torch.distributed, rank 0's codebooks are broadcast.
        """
        modules = self._attached("cluster")
        todo = [
            (position, module, codebook)
            for position, (module, codebook) in enumerate(modules.values())
            if self.config.recluster != "never" or not int(codebook.clustered)
        ]
        if not todo:
            return
        names = list(modules)
        unknown = sorted(set(sensitivity or {}) - set(names))
        if unknown:
            raise ValueError(f"sensitivity: no quantized module named {unknown[:3]}")
        for position, module, codebook in todo:
            latent = module.parametrizations["weight"].original
            if self.config.recluster == "reassign" and int(codebook.clustered):
                codebook.reassign(latent)
            else:
                codebook.fit(latent, **self.config.kmeans_settings(),
                             seed=self.config.seed + position,
                             sensitivity=(sensitivity or {}).get(names[position]))
            codebook.broadcast_from_rank0()
        self.set_mode("train")

    def reassign(self) -> None:
        """Point every weight at the nearest centroid of its (unchanged) codebook; in mode
        ``ste`` this keeps the forward on the codebook values nearest to the moving latents."""
        self._require_clustered("reassign")
        for module, codebook in self.modules.values():
            codebook.reassign(module.parametrizations["weight"].original)

    @property
    def clustered(self) -> bool:
        """Whether every codebook has been clustered."""
        return all(int(codebook.clustered) for _, codebook in self._attached("clustered").values())

    @property
    def mode(self) -> str:
        """The current mode (all codebooks share it)."""
        return next(iter(self._attached("mode").values()))[1].current_mode()

    def set_mode(self, mode: str) -> None:
        """Switch every codebook to ``off``, ``train``, ``frozen`` or ``ste`` (:data:`MODES`)."""
        if mode not in MODES:
            raise ValueError(f"mode: {mode!r} is not one of {MODES}")
        if mode != "off":
            self._require_clustered("set_mode")
        for _, codebook in self._attached("set_mode").values():
            codebook.mode.fill_(MODES.index(mode))

    @torch.no_grad()
    def commit(self) -> None:
        """Write ``centroids[indices]`` into every latent weight (the mode is unchanged)."""
        self._require_clustered("commit")
        for module, codebook in self.modules.values():
            latent = module.parametrizations["weight"].original
            latent.copy_(codebook.with_outliers(codebook.quantized(), latent))

    def finalize(self) -> None:
        """Replace every parametrized weight by its plain quantized value and detach.

        The ``weight`` parameter objects are kept (optimizers stay valid); the model then holds
        at most 2**bits distinct values per codebook and no quantizer state, and the quantizer
        can be prepared again (on this model or another).
        """
        self._require_clustered("finalize")
        self.set_mode("frozen")
        for module, _ in self.modules.values():
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        self.modules = {}
        self.model = None

    def centroid_distance(self) -> torch.Tensor:
        """Mean squared distance between latent weights and their assigned centroids.

        Returns:
            a differentiable 0-dim tensor (weight units squared), averaged over every weight a
            codebook stands for: the weights kept exactly (``outlier_fraction``) have no
            centroid, so they count neither in the sum nor in the mean, and pull no centroid.
            Gradients reach the latent weights and (unless mode is ``frozen``) the centroids.
        """
        self._require_clustered("centroid_distance")
        total = None
        count = 0
        for module, codebook in self.modules.values():
            latent = module.parametrizations["weight"].original
            assigned = codebook.with_outliers(codebook.quantized(), latent)
            if self.mode == "frozen":
                assigned = assigned.detach()
            squared = (latent - assigned).square().sum()
            total = squared if total is None else total + squared
            count += latent.numel() - codebook.outliers
        return total / count


def quantize_(model: nn.Module, config: QuantizationConfig | None = None) -> CodebookQuantizer:
    """Prepare and cluster ``model`` in place (one verb); returns the quantizer (mode train)."""
    quantizer = CodebookQuantizer(config)
    quantizer.prepare(model)
    quantizer.cluster()
    return quantizer
