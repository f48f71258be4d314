"""β schedules: plain functions of the optimisation step (they never mutate a config).

Each returns :class:`Weights`: the β the bottleneck handlers apply at that step, and, for capacity control, the
pair (γ, C(t)) that the objective turns into γ|R - C(t)| (then β = 1 on the handlers).

* ``constant``: β.
* ``linear``: β · min(1, t / warmup) — the KL warm-up of Bowman et al. / Sønderby et al.
* ``cyclical``: Fu et al. (2019): the step axis is cut into cycles of length L; within each, β rises linearly from
  0 to β over the first ``ratio`` · L steps and stays there for the rest.
* ``capacity``: Burgess et al. (2018): C(t) = C_max · min(1, t / capacity_steps) nats, objective D + γ|R - C(t)| with
  γ = β.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

SCHEDULES = ("constant", "linear", "cyclical", "capacity")


class Weights(NamedTuple):
    beta: float
    capacity: tuple[float, float] | None = None  # (gamma, C in nats per data point)


@dataclass(frozen=True)
class Schedule:
    kind: str = "constant"
    beta: float = 1.0
    warmup_steps: int = 0
    cycle_steps: int = 0
    ratio: float = 0.5
    capacity_max: float = 25.0
    capacity_steps: int = 0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}: choose one of {', '.join(SCHEDULES)}")
        if not (self.beta >= 0 and self.beta < float("inf")):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta}")
        if self.kind == "linear" and self.warmup_steps < 1:
            raise ValueError("the linear schedule needs a warm-up of at least one step (--warmup-epochs > 0)")
        if self.kind == "cyclical":
            if self.cycle_steps < 1:
                raise ValueError("the cyclical schedule needs a cycle of at least one step (--cycle-epochs > 0)")
            if not 0 < self.ratio <= 1:
                raise ValueError(f"the cyclical ratio must lie in (0, 1], got {self.ratio}")
        if self.kind == "capacity":
            if self.capacity_steps < 1 or self.capacity_max < 0:
                raise ValueError("the capacity schedule needs --capacity-max >= 0 nats and --capacity-epochs > 0")

    def __call__(self, step: int) -> Weights:
        if self.kind == "constant":
            return Weights(self.beta)
        if self.kind == "linear":
            return Weights(self.beta * min(1.0, step / self.warmup_steps))
        if self.kind == "cyclical":
            phase = (step % self.cycle_steps) / self.cycle_steps
            return Weights(self.beta * min(1.0, phase / self.ratio))
        capacity = self.capacity_max * min(1.0, step / self.capacity_steps)
        return Weights(1.0, (self.beta, capacity))
