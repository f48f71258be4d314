import math

import pytest

from pyroib.schedules import Schedule


def test_constant():
    s = Schedule("constant", beta=3.0)
    assert [s(t).beta for t in (0, 10, 10**6)] == [3.0, 3.0, 3.0]


def test_linear_warmup_reaches_beta_and_stays():
    s = Schedule("linear", beta=2.0, warmup_steps=100)
    assert s(0).beta == 0.0
    assert s(25).beta == pytest.approx(0.5)
    assert s(100).beta == pytest.approx(2.0)
    assert s(1000).beta == pytest.approx(2.0)


def test_cyclical_follows_fu_et_al():
    s = Schedule("cyclical", beta=1.0, cycle_steps=100, ratio=0.5)
    assert s(0).beta == 0.0
    assert s(25).beta == pytest.approx(0.5)
    assert s(50).beta == pytest.approx(1.0)
    assert s(99).beta == pytest.approx(1.0)
    assert s(100).beta == 0.0  # a new cycle starts from zero
    assert s(125).beta == pytest.approx(0.5)
    values = [s(t).beta for t in range(300)]
    assert all(0 <= v <= 1 for v in values)


def test_capacity_rises_linearly_and_carries_gamma():
    s = Schedule("capacity", beta=100.0, capacity_max=20.0, capacity_steps=200)
    w = s(50)
    assert w.beta == 1.0
    assert w.capacity == (100.0, pytest.approx(5.0))
    assert s(10_000).capacity[1] == pytest.approx(20.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "sigmoid"}, "unknown schedule"),
        ({"kind": "constant", "beta": -1.0}, "beta"),
        ({"kind": "constant", "beta": math.inf}, "beta"),
        ({"kind": "linear", "warmup_steps": 0}, "warm-up"),
        ({"kind": "cyclical", "cycle_steps": 10, "ratio": 0.0}, "ratio"),
        ({"kind": "capacity", "capacity_steps": 0}, "capacity"),
    ],
)
def test_bad_schedules_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)
