"""Count the operators that an update dispatches and its host reads, on the one path that every device runs.

On a GPU an update's cost is its kernel launches (one per dispatched operator, views aside) and its host-device
synchronisations (one per read of a device value by the host). windowmetrics runs the same code on the CPU as on a
GPU (float64 ``[window, since reset]`` tensor states, updated in place), so tests/dispatch_counter.py counts both
on the CPU. Each row is a metric with a loss and a weight, beside torchmetrics' counterparts and the floor; the
counts are deterministic and go to ``bench/report.py`` as ``extra_info`` columns (the row's one timed round is
not shown).

- per update: an update that closes no window, in the steady state (the second of a window, after two windows),
  and the first update after construction;
- at a boundary: the update that closes a window; for torchmetrics' metrics, which have no window,
  ``compute()`` after an update (what producing a value to log costs);
- at a synchronised boundary: the same in a gloo process group of this process alone, where a boundary
  synchronises as under DDP: its collectives (``c10d`` operators; the floor is one) and its host reads;
- ``compute()``: its operators and host reads after two windows and one update of the next, in one process (for
  windowmetrics, the value since the last reset; reported, not a target).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional, Union

import pytest
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.aggregation import MaxMetric, MeanMetric, MinMetric, RunningMean, SumMetric

from bench.names import (
    FLOOR,
    FLOOR_OF_SUM,
    MAX_METRIC,
    MEAN_METRIC,
    MIN_METRIC,
    OPS_AT_BOUNDARY,
    OPS_FIRST_UPDATE,
    OPS_OF_COMPUTE,
    OPS_PER_UPDATE,
    PER_SAMPLE,
    READS_AT_BOUNDARY,
    READS_AT_SYNCHRONISED_BOUNDARY,
    READS_OF_COMPUTE,
    READS_PER_UPDATE,
    SCALAR,
    SUM_METRIC,
    SYNCHRONISED_COLLECTIVES,
    UPDATE_OPERATORS,
    WINDOW,
    dispatch_group,
    windowed,
    wrapped,
)
from tests.dispatch_counter import DispatchCounter
from tests.process_group import free_port, skip_without_gloo
from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedMin, WindowedSum
from windowmetrics._window import WindowMetric

LOSSES = {SCALAR: torch.tensor(0.7), PER_SAMPLE: torch.rand(256, generator=torch.Generator().manual_seed(0))}
Weight = Optional[Union[int, Tensor]]


def weights(inputs: str) -> dict[str, Weight]:
    """Return the weights of a group's rows by label suffix: none, a batch size, a 0-dim and a per-sample tensor."""
    chosen: dict[str, Weight] = {"": None, ", weight=32": 32, ", weight=tensor(32.)": torch.tensor(32.0)}
    if inputs == PER_SAMPLE:
        chosen[", weight=tensor(256 float32)"] = torch.rand(256, generator=torch.Generator().manual_seed(1)) + 0.5
    return chosen


@dataclass(frozen=True)
class Case:
    """One row: what to build, and the weight that its updates pass (``None``: the default weight)."""

    label: str
    build: Callable[[], Any]
    weight: Weight = None

    def update(self, built: Any, loss: Tensor) -> Callable[[], object]:
        if not isinstance(built, Metric):
            return lambda: built(loss)  # the floor
        if self.weight is None:
            return lambda: built.update(loss)
        return lambda: built.update(loss, self.weight)

    def boundary(self, built: Any, loss: Tensor) -> Optional[Callable[[], object]]:
        """Prepare ``built`` for its next boundary and return it; ``None`` for the floor."""
        if not isinstance(built, Metric):
            return None
        update = self.update(built, loss)
        if isinstance(built, WindowMetric):
            for _ in range(WINDOW - 1):
                update()
            return update
        update()
        return built.compute

    def compute(self, built: Any, loss: Tensor) -> Optional[Callable[[], object]]:
        """Update ``built`` for two windows and one update of the next, and return its ``compute``; ``None`` for
        the floor."""
        if not isinstance(built, Metric):
            return None
        update = self.update(built, loss)
        for _ in range(2 * WINDOW + 1):
            update()
        return built.compute


def floor() -> Callable[[Tensor], Tensor]:
    return torch.zeros(()).add_


def floor_of_sum() -> Callable[[Tensor], Tensor]:
    total = torch.zeros(())
    return lambda loss: total.add_(loss.sum())


def cases(inputs: str) -> list[Case]:
    per_sample = inputs == PER_SAMPLE
    rows = [Case(FLOOR_OF_SUM, floor_of_sum) if per_sample else Case(FLOOR, floor)]
    for name, build in (("WindowedMean", partial(WindowedMean, WINDOW)), ("EMALoss", partial(EMALoss, window=WINDOW))):
        rows += [Case(windowed(name, WINDOW) + suffix, build, weight) for suffix, weight in weights(inputs).items()]
    unweighted: dict[str, Callable[[], WindowMetric]] = {
        "WindowedSum": partial(WindowedSum, WINDOW),
        "WindowedMax": partial(WindowedMax, WINDOW),
        "WindowedMin": partial(WindowedMin, WINDOW),
    }
    rows += [Case(windowed(name, WINDOW), build) for name, build in unweighted.items()]
    rows.append(Case(wrapped(MEAN_METRIC, WINDOW), lambda: Windowed(MeanMetric(), WINDOW)))
    rows.append(Case(wrapped(MAX_METRIC, WINDOW), lambda: Windowed(MaxMetric(), WINDOW)))
    rows += [Case(MEAN_METRIC + suffix, MeanMetric, weight) for suffix, weight in weights(inputs).items()]
    rows += [Case(SUM_METRIC, SumMetric), Case(MAX_METRIC, MaxMetric), Case(MIN_METRIC, MinMetric)]
    rows.append(Case(windowed("RunningMean", WINDOW), partial(RunningMean, window=WINDOW)))
    return rows


DISPATCH_BENCHMARKS = [(inputs, case) for inputs in (SCALAR, PER_SAMPLE) for case in cases(inputs)]


def collectives(counter: DispatchCounter) -> int:
    return sum(op.startswith("c10d.") for op in counter.ops)


def counted(action: Callable[[], object]) -> DispatchCounter:
    with DispatchCounter() as counter:
        action()
    return counter


@contextmanager
def one_process_group() -> Iterator[None]:
    """A gloo process group of this process alone: a boundary synchronises in it as under DDP."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("inputs", "case"),
    DISPATCH_BENCHMARKS,
    ids=[f"{inputs.split()[0]}-{case.label}" for inputs, case in DISPATCH_BENCHMARKS],
)
def test_dispatch(benchmark: Any, inputs: str, case: Case) -> None:
    loss = LOSSES[inputs]
    first = counted(case.update(case.build(), loss))
    built = case.build()
    update = case.update(built, loss)
    for _ in range(2 * WINDOW + 1):  # two windows and the first update of the next
        update()
    steady = counted(update)
    boundary = case.boundary(case.build(), loss)
    at_boundary = counted(boundary) if boundary else None
    compute = case.compute(case.build(), loss)
    of_compute = counted(compute) if compute else None
    skip_without_gloo()
    with one_process_group():
        synchronised = case.boundary(case.build(), loss)
        at_synchronised = counted(synchronised) if synchronised else None
    benchmark.group = dispatch_group(inputs)
    benchmark.extra_info.update(
        {
            "label": case.label,
            "untimed": True,
            OPS_PER_UPDATE: steady.op_count,
            OPS_FIRST_UPDATE: first.op_count,
            READS_PER_UPDATE: max(steady.sync_count, first.sync_count),
            OPS_AT_BOUNDARY: at_boundary.op_count if at_boundary else "",
            READS_AT_BOUNDARY: at_boundary.sync_count if at_boundary else "",
            SYNCHRONISED_COLLECTIVES: collectives(at_synchronised) if at_synchronised else "",
            READS_AT_SYNCHRONISED_BOUNDARY: at_synchronised.sync_count if at_synchronised else "",
            OPS_OF_COMPUTE: of_compute.op_count if of_compute else "",
            READS_OF_COMPUTE: of_compute.sync_count if of_compute else "",
            UPDATE_OPERATORS: ", ".join(steady.ops),
        }
    )
    benchmark.pedantic(update, rounds=1, iterations=1)  # a row for the report; its time is not shown
