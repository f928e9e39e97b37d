"""Loss terms on known inputs."""

import pytest
import torch

from speechbrain_quads.evaluation.metrics import accuracy, macro_f1
from speechbrain_quads.training.losses import FeatureDistillation, distillation_objective


def test_frame_l1_ignores_padding_and_averages_layers():
    loss = FeatureDistillation(2, 2, layer_map=[[-1, -1]], teacher_layers=[-1])
    student = torch.zeros(3, 2, 4, 2)
    teacher = torch.zeros(1, 2, 4, 2)
    student[-1, 0, :2] = 1.0  # utterance 0: 2 valid frames off by 1
    student[-1, 0, 2:] = 100.0  # its padding: must not count
    student[-1, 1] = 3.0  # utterance 1: 4 valid frames off by 3
    lens = torch.tensor([0.5, 1.0])
    # (2 frames x 2 ch x 1 + 4 frames x 2 ch x 3) / (6 frames x 2 ch) = 28 / 12
    assert loss(student, teacher, lens).item() == pytest.approx(28 / 12)


def test_utterance_level_compares_pooled_features():
    loss = FeatureDistillation(2, 2, level="utterance")
    student = torch.zeros(1, 1, 4, 2)
    student[0, 0, :, 0] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # pools to 0: no frame-level gap
    teacher = torch.zeros(1, 1, 4, 2)
    assert loss(student, teacher, torch.tensor([1.0])).item() == 0.0
    frame_loss = FeatureDistillation(2, 2, level="frame")
    assert frame_loss(student, teacher, torch.tensor([1.0])).item() == pytest.approx(0.5)


def test_projection_when_widths_differ_is_learned():
    loss = FeatureDistillation(384, 512, layer_map=[[2, 3], [-1, -1]], teacher_layers=[3, -1])
    assert len(loss.projections) == 2
    assert loss.projections[0].weight.shape == (512, 384)
    student = torch.randn(5, 2, 6, 384)
    teacher = torch.randn(2, 2, 6, 512)
    value = loss(student, teacher, torch.tensor([1.0, 0.5]))
    value.backward()
    assert loss.projections[0].weight.grad.abs().sum() > 0
    assert loss.pairs == [(2, 0), (-1, 1)]


def test_bad_settings():
    with pytest.raises(ValueError, match="not in the teacher's output_layers"):
        FeatureDistillation(4, 4, layer_map=[[-1, 2]], teacher_layers=[-1])
    with pytest.raises(ValueError, match="level"):
        FeatureDistillation(4, 4, level="token")
    with pytest.raises(ValueError, match="frames"):
        FeatureDistillation(4, 4)(torch.zeros(2, 1, 5, 4), torch.zeros(1, 1, 6, 4), torch.ones(1))
    with pytest.raises(ValueError, match="alpha"):
        distillation_objective(1.5, torch.tensor(1.0), torch.tensor(1.0))


def test_objective_mixes_l1_and_ce():
    value = distillation_objective(0.25, torch.tensor(4.0), torch.tensor(2.0))
    assert value.item() == pytest.approx(0.25 * 4 + 0.75 * 2)


def test_metrics_on_known_predictions():
    predicted = ["a", "a", "b", "c"]
    target = ["a", "b", "b", "b"]
    assert accuracy(predicted, target) == 0.5
    # a: P=1/2 R=1 F1=2/3; b: P=1 R=1/3 F1=1/2; c: F1=0
    assert macro_f1(predicted, target) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
