"""Loss terms on known inputs."""

import pytest
import torch

from speechbrain_quads.codebook.quantization import quantize_
from speechbrain_quads.evaluation.metrics import accuracy, macro_f1
from speechbrain_quads.training.losses import (
    FeatureDistillation,
    centroid_loss,
    classification_loss,
    distillation_objective,
    distilled_task_loss,
    latent_power,
    quantization_objective,
)


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


def test_quantization_terms_on_known_values():
    assert distilled_task_loss(torch.tensor(2.0), None, 0.5).item() == 2.0
    assert distilled_task_loss(torch.tensor(2.0), torch.tensor(4.0), 0.5).item() == 4.0
    assert quantization_objective(torch.tensor(1.0), torch.tensor(0.5), 2.0).item() == 2.0
    assert latent_power([torch.full((2, 2), 2.0), torch.zeros(4)]).item() == 2.0  # 16 / 8


def test_centroid_term_is_relative_and_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8))
    latent = model[0].weight.detach().clone()
    quantizer = quantize_(model, config=None)  # 8 bits, per tensor
    with torch.no_grad():
        codebook = quantizer.modules["0"][1]
        codebook.centroids.add_(0.01)  # every weight 0.01 off its centroid...
    expected = 0.01**2 / latent.square().mean().item()  # ...relative to the mean square
    power = latent_power([latent])
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        value = centroid_loss(quantizer, power)
        ce = classification_loss(torch.randn(3, 4).to(torch.bfloat16), torch.tensor([0, 1, 2]))
    assert value.dtype == torch.float32 and ce.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-3)


def test_logit_distillation_is_hinton_kl_with_its_gradient():
    """``T**2 * KL(p_teacher || p_student)`` at temperature T: 0 for equal logits, the closed
    form on known logits, and a gradient that matches finite differences."""
    from speechbrain_quads.training.losses import logit_distillation_loss

    same = torch.tensor([[1.0, 2.0, 0.5]])
    assert logit_distillation_loss(same, same, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]], dtype=torch.float64,
                           requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    p = torch.softmax(teacher / 3.0, dim=-1)
    q = torch.softmax(student.detach() / 3.0, dim=-1)
    expected = 9.0 * (p * (p.log() - q.log())).sum(dim=-1).mean()
    loss = logit_distillation_loss(student, teacher, 3.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    step = 1e-2  # central differences; the loss is computed in float32
    for index in [(0, 0), (1, 2)]:
        up, down = student.detach().clone(), student.detach().clone()
        up[index] += step
        down[index] -= step
        numeric = (logit_distillation_loss(up, teacher, 3.0)
                   - logit_distillation_loss(down, teacher, 3.0)) / (2 * step)
        assert student.grad[index].item() == pytest.approx(numeric.item(), rel=2e-3)
    with pytest.raises(ValueError, match="logit_temperature must be positive"):
        logit_distillation_loss(same, same, 0.0)


def test_a_probe_folds_into_a_plain_linear_layer():
    """``fold_into_linear``: the linear layer on raw features gives the probe's logits."""
    from speechbrain_quads.training.probe import fit_probe, fold_into_linear

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 6, generator=generator) * torch.tensor([1, 10, 0.1, 3, 1, 50.0])
    labels = torch.randint(0, 3, (40,), generator=generator)
    head = fit_probe(features, labels, 3, steps=50)
    linear = torch.nn.Linear(6, 3)
    fold_into_linear(head, linear)
    torch.testing.assert_close(linear(features), head(features), rtol=1e-5, atol=1e-5)
