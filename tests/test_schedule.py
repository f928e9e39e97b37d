"""The MCT phase plan is plain data: which phase runs at which epoch."""

import pytest

from speechbrain_quads.training.schedule import DISTILL, QUANT, PhasePlan


def kinds(plan):
    return "".join("D" if e.kind == DISTILL else "Q" for e in plan)


def test_mct_alternates_then_final_quantization():
    plan = PhasePlan("mct", iterations=5, distill_epochs=2, quant_epochs=1, final_quant_epochs=3)
    assert kinds(plan) == "DDQ" * 5 + "QQQ"
    assert plan.total_epochs == 18
    # the last round's quantization epoch and the final phase are one phase of 4 epochs
    last = plan[18]
    assert (last.phase, last.epoch_in_phase, last.phase_epochs) == (10, 4, 4)
    starts = [e.epoch for e in plan if e.starts_phase]
    assert starts == [1, 3, 4, 6, 7, 9, 10, 12, 13, 15]
    assert plan[4].name == "distill-3 (1/2)"


def test_official_code_schedule_d3_q3_d6_q8():
    """The official QUADS code's 20 epochs are two uneven rounds; as a plan: D3 Q3 D6 Q8."""
    plan = PhasePlan("sequential", iterations=1, distill_epochs=3, quant_epochs=3,
                     final_quant_epochs=0)
    assert kinds(plan) == "DDDQQQ"


@pytest.mark.parametrize(("strategy", "expected"), [
    ("mct", "DDQDDQQQ"),
    ("sequential", "DDDDQQQQ"),
    ("distill_only", "DDDDDDDD"),
    ("quant_only", "QQQQQQQQ"),
])
def test_every_strategy_spends_the_same_budget(strategy, expected):
    plan = PhasePlan(strategy, iterations=2, distill_epochs=2, quant_epochs=1, final_quant_epochs=2)
    assert kinds(plan) == expected
    assert plan.quantizes == (QUANT in {e.kind for e in plan})


def test_bad_plans_are_rejected():
    with pytest.raises(ValueError, match="strategy"):
        PhasePlan("alternate")
    with pytest.raises(ValueError, match="quant_epochs"):
        PhasePlan("mct", quant_epochs=-1)
    with pytest.raises(ValueError, match="no epoch"):
        PhasePlan("mct", iterations=0, final_quant_epochs=0)
    with pytest.raises(IndexError, match="epoch 9"):
        PhasePlan("mct", iterations=1)[9]
