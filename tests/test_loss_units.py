"""npllama.loss_units: the one place a loss's unit is named."""
import pytest

from npllama.loss_units import UNITS, loss_axis_label, loss_unit


@pytest.mark.parametrize("objective", sorted(UNITS))
def test_each_objectives_axis_label_carries_its_unit(objective):
    assert loss_axis_label(objective).endswith(f"({loss_unit(objective)})")


@pytest.mark.parametrize("wrong", ["nsp", None, 3])
def test_an_unknown_objective_is_refused_naming_the_argument(wrong):
    with pytest.raises(ValueError, match=r"objective must be one of 'causal', 'mlm'.*got " + repr(repr(wrong))[1:-1]):
        loss_unit(wrong)
