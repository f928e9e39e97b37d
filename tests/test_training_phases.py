"""PhaseBrain and QuantizationBrain on a toy Brain: clipping covers every parameter, plans and
optimizers are checked."""

import functools

import pytest
import speechbrain as sb
import torch
from torch import nn

from speechbrain_quads.codebook.quantization import CodebookQuantizer, QuantizationConfig
from speechbrain_quads.training.brains import QuantizationBrain
from speechbrain_quads.training.phase_brain import PhaseBrain
from speechbrain_quads.training.schedule import PhasePlan


class ToyBrain(sb.Brain):
    """A user's Brain: body -> tanh -> head, loss = sum of squared outputs."""

    def compute_forward(self, batch, stage):
        return self.modules.head(torch.tanh(self.modules.body(batch)))

    def compute_objectives(self, predictions, batch, stage):
        return predictions.square().sum()


class QuantizedToyBrain(QuantizationBrain, ToyBrain):
    HEAD_MODULES = ("head",)


def toy_hparams(**extra) -> dict:
    return {"quantizer": CodebookQuantizer(QuantizationConfig(bits=2, min_numel=1000)),
            "quant_opt_class": functools.partial(torch.optim.SGD), "quant_lr": 1.0,
            "quant_lr_head": 1.0, "centroid_weight": 0.0, "max_grad_norm": 1.0, **extra}


def toy_modules() -> dict:
    torch.manual_seed(0)
    return {"body": nn.Linear(32, 32), "head": nn.Linear(32, 4)}  # body quantized, head not


def test_gradient_clipping_covers_the_head_group():
    brain = QuantizedToyBrain(modules=toy_modules(), hparams=toy_hparams(),
                              run_opts={"device": "cpu"})
    brain.plan = brain.build_plan(1)
    brain.init_optimizers()
    brain.on_stage_start(sb.Stage.TRAIN, 1)  # clusters the body's weight
    optimizer = brain.optimizers_dict["quant"]
    body_group, head_group = optimizer.param_groups
    assert brain.modules.head.weight in head_group["params"]
    params = body_group["params"] + head_group["params"]
    loss = brain.compute_objectives(brain.compute_forward(10 * torch.ones(8, 32), sb.Stage.TRAIN),
                                    None, sb.Stage.TRAIN)
    loss.backward()
    grads = [p.grad.clone() for p in params]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert total > 10  # far above max_grad_norm = 1
    before = [p.detach().clone() for p in params]
    brain.optimizers_step()
    steps = [b - p.detach() for b, p in zip(before, params, strict=True)]  # SGD lr 1: the grads
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in steps]))
    assert clipped.item() == pytest.approx(1.0, rel=1e-4)
    head_weight = [id(p) for p in params].index(id(brain.modules.head.weight))
    torch.testing.assert_close(steps[head_weight], grads[head_weight] / total, rtol=1e-4,
                               atol=1e-7)


def test_a_plan_phase_without_its_optimizer_is_refused():
    class PlanOnlyBrain(PhaseBrain, ToyBrain):
        pass

    plan = PhasePlan("mct", iterations=1, distill_epochs=1, quant_epochs=1, final_quant_epochs=0)
    brain = PlanOnlyBrain(modules=toy_modules(), hparams={"phase_plan": plan},
                          run_opts={"device": "cpu"})
    data = [torch.ones(32)]
    with pytest.raises(ValueError, match=r"trains no \['distill', 'quant'\] phase"):
        brain.fit(sb.utils.epoch_loop.EpochCounter(2), data)
    with pytest.raises(ValueError, match="plan has 2 epochs but epoch_counter.limit"):
        brain.fit(sb.utils.epoch_loop.EpochCounter(3), data)
