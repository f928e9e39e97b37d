"""Every QUADS loss term: feature distillation, cross-entropy, the centroid term and their mixes.

- distillation phases: ``alpha * L1(student, teacher) + (1 - alpha) * CE``;
- quantization phases: ``CE + quant_distill_weight * L1 + quant_self_distill_weight * L_self +
  centroid_weight * L_centroid``, where ``L_self`` is the L1 between the student's hidden states
  through its codebooks and through its own full-precision latent weights, and
  ``L_centroid = ||W - C[idx]||^2 / ||W||^2`` is the relative squared error between the latent
  (full-precision) weights and their assigned centroids: it anchors the trained codebook to the
  clusters of the weights while CE moves the centroids (dimensionless, about 1e-2 at 4 bits).

Both encoders are Whisper encoders with the same hop and convolution strides, so their time axes
match frame for frame; with variable-length inputs padded frames are excluded from the loss.
Under mixed precision (autocast) every term is reduced in float32.
"""

from __future__ import annotations

import torch
from torch import nn

from speechbrain_quads.models.features import frame_mask
from speechbrain_quads.models.heads import masked_mean

LEVELS = ("frame", "utterance")


class FeatureDistillation(nn.Module):
    """Masked L1 between student and teacher hidden states, through learned projections.

    Arguments
    ---------
    student_size : int
        Student width (384 for tiny).
    teacher_size : int
        Teacher width (512 for base, 1280 for large).
    layer_map : list of [int, int]
        Pairs (student hidden-state index, teacher hidden-state index) in Hugging Face numbering
        (0 = embeddings, -1 = last). Default: last to last.
    teacher_layers : list of int
        The teacher's ``output_layers`` (what the teacher/cache returns, in that order), used to
        find each mapped teacher layer.
    level : str
        ``"frame"`` (frame-by-frame) or ``"utterance"`` (mean-pooled over valid frames, as the
        official QUADS code does).

    Example
    -------
    >>> loss = FeatureDistillation(384, 512)
    >>> s, t = torch.randn(5, 2, 10, 384), torch.randn(1, 2, 10, 512)
    >>> loss(s, t, torch.tensor([1.0, 0.5])).shape
    torch.Size([])
    """

    def __init__(self, student_size: int, teacher_size: int,
                 layer_map: list[list[int]] = ((-1, -1),), teacher_layers: list[int] = (-1,),
                 level: str = "frame"):
        super().__init__()
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        teacher_layers = list(teacher_layers)
        self.pairs = []
        for pair in layer_map:
            student_layer, teacher_layer = pair
            if teacher_layer not in teacher_layers:
                raise ValueError(f"layer_map pairs student layer {student_layer} with teacher "
                                 f"layer {teacher_layer}, which is not in the teacher's "
                                 f"output_layers {teacher_layers}")
            self.pairs.append((int(student_layer), teacher_layers.index(teacher_layer)))
        self.level = level
        self.projections = nn.ModuleList(
            nn.Identity() if student_size == teacher_size else nn.Linear(student_size, teacher_size)
            for _ in self.pairs)

    def forward(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                lens: torch.Tensor) -> torch.Tensor:
        """Mean L1 over mapped layers, valid frames and channels.

        Arguments
        ---------
        student_hidden : torch.Tensor
            (L+1, B, T, C_s) all student hidden states.
        teacher_hidden : torch.Tensor
            (N, B, T, C_t) the teacher's ``output_layers``.
        lens : torch.Tensor
            (B,) relative valid lengths.

        Returns
        -------
        torch.Tensor
            0-dim loss.
        """
        if student_hidden.shape[2] != teacher_hidden.shape[2]:
            raise ValueError(
                f"student has {student_hidden.shape[2]} frames but teacher has "
                f"{teacher_hidden.shape[2]}: did augmentation change the input length? Use "
                "level: utterance or a length-preserving augmentation")
        losses = []
        for (s, t), projection in zip(self.pairs, self.projections, strict=True):
            student = projection(student_hidden[s]).float()
            teacher = teacher_hidden[t].float()
            if self.level == "utterance":
                losses.append((masked_mean(student, lens) - masked_mean(teacher, lens)).abs().mean())
            else:
                frames = torch.round(lens * student.shape[1]).long().clamp(min=1)
                mask = frame_mask(frames, student.shape[1]).unsqueeze(-1).to(student.dtype)
                l1 = ((student - teacher).abs() * mask).sum()
                losses.append(l1 / (mask.sum() * student.shape[-1]))
        return torch.stack(losses).mean()


def classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, K) logits against (B,) class indices, in float32 (0-dim)."""
    return nn.functional.cross_entropy(logits.float(), targets)


def logit_distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))`` of (B, K) logits, averaged over
    the batch, in float32 (0-dim); Hinton et al.'s soft-target term (``T**2`` keeps its gradient
    scale independent of the temperature)."""
    if temperature <= 0:
        raise ValueError(f"logit_temperature must be positive, got {temperature}")
    log_student = nn.functional.log_softmax(student.float() / temperature, dim=-1)
    log_teacher = nn.functional.log_softmax(teacher.float() / temperature, dim=-1)
    return temperature**2 * nn.functional.kl_div(log_student, log_teacher, log_target=True,
                                                 reduction="batchmean")


def self_distillation_loss(hidden: torch.Tensor, reference: torch.Tensor,
                           lens: torch.Tensor) -> torch.Tensor:
    """Mean L1 between the quantized student's hidden states and its own full-precision ones,
    over every layer, valid frame and channel, in float32 (0-dim).

    Arguments
    ---------
    hidden : torch.Tensor
        (L+1, B, T, C) hidden states of the forward through the codebooks.
    reference : torch.Tensor
        (L+1, B, T, C) hidden states of the same input through the latent weights (no gradient).
    lens : torch.Tensor
        (B,) relative valid lengths.
    """
    if hidden.shape != reference.shape:
        raise ValueError(f"hidden states {tuple(hidden.shape)} and their full-precision "
                         f"reference {tuple(reference.shape)} differ in shape")
    frames = torch.round(lens * hidden.shape[2]).long().clamp(min=1)
    mask = frame_mask(frames, hidden.shape[2]).to(torch.float32)[None, :, :, None]
    l1 = ((hidden.float() - reference.float()).abs() * mask).sum()
    return l1 / (mask.sum() * hidden.shape[0] * hidden.shape[-1])


def distillation_objective(alpha: float, l1: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
    """The distillation phase's loss: ``alpha * L1 + (1 - alpha) * CE``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha * l1 + (1.0 - alpha) * ce


def distilled_task_loss(ce: torch.Tensor, l1: torch.Tensor | None, weight: float) -> torch.Tensor:
    """The task loss of a quantization phase: ``CE + weight * L1`` (``CE`` when ``l1`` is None)."""
    return ce if l1 is None else ce + weight * l1


def latent_power(latents: list[torch.Tensor]) -> torch.Tensor:
    """Mean square of every element of the latent weights (0-dim, float32, no gradient)."""
    with torch.no_grad():
        total = sum(w.float().square().sum() for w in latents)
        return total / sum(w.numel() for w in latents)


def centroid_loss(quantizer, power: torch.Tensor) -> torch.Tensor:
    """``L_centroid``: the quantizer's mean squared latent-to-centroid distance over ``power``
    (from :func:`latent_power`), computed in float32 with autocast off (0-dim, dimensionless)."""
    with torch.autocast(device_type=power.device.type, enabled=False):
        return quantizer.centroid_distance().float() / power


def quantization_objective(task: torch.Tensor, centroid: torch.Tensor,
                           centroid_weight: float) -> torch.Tensor:
    """The quantization phase's loss: ``task + centroid_weight * L_centroid``."""
    return task + centroid_weight * centroid
