"""Time ``forward`` and ``update`` of windowmetrics beside torchmetrics, a hand-written accumulator and the floor.

Each benchmark warms its metric up for two windows, so that what is timed is the steady state, window boundaries
included at their rate (one call in ``window`` closes one). Beside each windowmetrics class, its torchmetrics
counterpart: ``MeanMetric``, ``SumMetric``, ``MaxMetric``, ``MinMetric``, ``RunningMean`` and
``Running(MaxMetric(), window=100)``. ``Windowed`` wraps a metric whose windows it merges into its since-reset
copy at each boundary (``MeanMetric``, ``MulticlassAccuracy``: one update of the wrapped metric per update) and one
it cannot merge (``MaxMetric``, whose ``full_state_update`` is true: the copy is updated beside the window's, two
updates per update); each is divided by the wrapped metric alone.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import pytest
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.aggregation import MaxMetric, MeanMetric, MinMetric, RunningMean, RunningSum, SumMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.wrappers import Running

from bench.names import (
    ACCURACY,
    ACCURACY_INPUTS,
    FLOOR,
    FLOOR_OF_SUM,
    HAND_WRITTEN,
    MAX_METRIC,
    MEAN_METRIC,
    MIN_METRIC,
    OPERATIONS,
    PER_SAMPLE,
    SCALAR,
    SUM_METRIC,
    WINDOW,
    group,
    running,
    windowed,
    wrapped,
)
from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedMin, WindowedSum

WINDOWS = (1, WINDOW)
WARM_UP_CALLS = 2 * WINDOW

LOSSES = {SCALAR: torch.tensor(0.7), PER_SAMPLE: torch.rand(256)}
PREDICTIONS = torch.randint(10, (256,))
TARGETS = torch.randint(10, (256,))


class HandWritten:
    """The seeds' accumulator: ``total += loss.item()`` at every step, a counter, and the mean every n steps.

    A per-sample loss is summed first (``loss.sum().item()``) and counted by elements, so that the value is
    the same per-sample mean as ``WindowedMean``'s.
    """

    def __init__(self, window: int, per_sample: bool) -> None:
        self.window = window
        self.per_sample = per_sample
        self.total = 0.0
        self.count = 0
        self.steps = 0
        self.value: Optional[float] = None

    def __call__(self, loss: Tensor) -> Optional[float]:
        if self.per_sample:
            self.total += loss.sum().item()
            self.count += loss.numel()
        else:
            self.total += loss.item()
            self.count += 1
        self.steps += 1
        if self.steps == self.window:
            self.value = self.total / self.count
            self.total, self.count, self.steps = 0.0, 0, 0
        return self.value


class RunnableMaxMetric(MaxMetric):
    """``MaxMetric`` as torchmetrics' ``Running`` accepts it: ``Running`` refuses a metric whose
    ``full_state_update`` is not ``False``, which ``MaxMetric`` declares to be safe; its one state, reduced by a
    maximum, gives the same running value either way, since ``Running`` resets the metric after each update."""

    full_state_update = False


def floor() -> Callable[[Tensor], Tensor]:
    return torch.zeros(()).add_


def floor_of_sum() -> Callable[[Tensor], Tensor]:
    total = torch.zeros(())
    return lambda loss: total.add_(loss.sum())


@dataclass(frozen=True)
class Case:
    """One row of a group: what to build, and what the report compares it with."""

    label: str
    build: Callable[[], Any]
    counterpart: Optional[str] = None
    reference: bool = False

    def step(self, operation: str) -> Callable[..., object]:
        """Return the call to time: a metric's ``__call__`` (forward) or ``update``; any other callable as is."""
        built = self.build()
        if isinstance(built, Metric):
            return built if operation == "forward" else built.update
        return built  # type: ignore[no-any-return]  # the floor and the hand-written accumulator

    def record(self, benchmark: Any, title: str) -> None:
        """Name the benchmark's group and say what the report compares this row with."""
        benchmark.group = title
        benchmark.extra_info["label"] = self.label
        if self.reference:
            benchmark.extra_info["reference"] = True
        if self.counterpart is not None:
            benchmark.extra_info["counterpart"] = self.counterpart


def windowmetrics_cases(window: int) -> list[Case]:
    """Return the windowmetrics rows at ``window``, each with its torchmetrics counterpart."""
    running_mean = windowed("RunningMean", WINDOW)
    return [
        Case(windowed("WindowedMean", window), partial(WindowedMean, window), MEAN_METRIC),
        Case(windowed("WindowedSum", window), partial(WindowedSum, window), SUM_METRIC),
        Case(windowed("EMALoss", window), partial(EMALoss, window=window), running_mean),
        Case(windowed("WindowedMax", window), partial(WindowedMax, window), MAX_METRIC),
        Case(windowed("WindowedMin", window), partial(WindowedMin, window), MIN_METRIC),
        Case(wrapped(MEAN_METRIC, window), lambda: Windowed(MeanMetric(), window), MEAN_METRIC),
        Case(wrapped(MAX_METRIC, window), lambda: Windowed(MaxMetric(), window), MAX_METRIC),
    ]


def loss_cases(per_sample: bool) -> list[Case]:
    """Return the rows of a group that smooths a loss: the floor first, torchmetrics last."""
    return [
        Case(FLOOR_OF_SUM, floor_of_sum, reference=True) if per_sample else Case(FLOOR, floor, reference=True),
        Case(HAND_WRITTEN, partial(HandWritten, WINDOW, per_sample)),
        *(case for window in WINDOWS for case in windowmetrics_cases(window)),
        Case(MEAN_METRIC, MeanMetric),
        Case(SUM_METRIC, SumMetric),
        Case(windowed("RunningMean", WINDOW), partial(RunningMean, window=WINDOW)),
        Case(windowed("RunningSum", WINDOW), partial(RunningSum, window=WINDOW)),
        Case(MAX_METRIC, MaxMetric),
        Case(MIN_METRIC, MinMetric),
        Case(running(MAX_METRIC, WINDOW), lambda: Running(RunnableMaxMetric(), window=WINDOW)),
    ]


def accuracy() -> MulticlassAccuracy:
    return MulticlassAccuracy(num_classes=10)


def windowed_accuracy(window: int) -> Windowed:
    return Windowed(accuracy(), window)


def accuracy_cases() -> list[Case]:
    """Return the rows of the accuracy group: torchmetrics' metric first, then wrapped in ``Windowed``."""

    return [
        Case(ACCURACY, accuracy, reference=True),
        *(Case(wrapped(ACCURACY, window), partial(windowed_accuracy, window)) for window in WINDOWS),
    ]


LOSS_BENCHMARKS = [
    (operation, inputs, case)
    for inputs in (SCALAR, PER_SAMPLE)
    for operation in OPERATIONS
    for case in loss_cases(per_sample=inputs == PER_SAMPLE)
]
ACCURACY_BENCHMARKS = [(operation, case) for operation in OPERATIONS for case in accuracy_cases()]


def warmed_up(step: Callable[..., object], *inputs: Tensor) -> Callable[..., object]:
    for _ in range(WARM_UP_CALLS):
        step(*inputs)
    return step


@pytest.mark.parametrize(
    ("operation", "inputs", "case"),
    LOSS_BENCHMARKS,
    ids=[f"{operation}-{inputs.split()[0]}-{case.label}" for operation, inputs, case in LOSS_BENCHMARKS],
)
def test_loss(benchmark: Any, operation: str, inputs: str, case: Case) -> None:
    case.record(benchmark, group(operation, inputs))
    loss = LOSSES[inputs]
    benchmark(warmed_up(case.step(operation), loss), loss)


@pytest.mark.parametrize(
    ("operation", "case"),
    ACCURACY_BENCHMARKS,
    ids=[f"{operation}-{case.label}" for operation, case in ACCURACY_BENCHMARKS],
)
def test_accuracy(benchmark: Any, operation: str, case: Case) -> None:
    case.record(benchmark, group(operation, ACCURACY_INPUTS))
    benchmark(warmed_up(case.step(operation), PREDICTIONS, TARGETS), PREDICTIONS, TARGETS)
