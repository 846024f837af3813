"""Operators and host reads per update on the accelerator path, counted on the CPU.

With ``windowmetrics.scalars.PREFER_HOST = False`` the metrics keep their sums as 0-dim float64 tensors, as they
do on a GPU, and :class:`~tests.dispatch_counter.DispatchCounter` counts what an update dispatches: on a GPU,
one kernel launch per operator (views aside) and one host-device synchronisation per host read. The targets:

- from the very first update on (after construction, ``reset()`` or ``load_state_dict()``), an update that
  closes no window dispatches at most :data:`OP_TARGET` operators for a 0-dim or a per-sample loss with the
  default weight or a number as weight, under the default ``nan_strategy``;
- no update that closes no window reads a device value on the host, whatever the strategy, the weight or the
  loss;
- a boundary reads at most one device value, and, in a process group, issues one collective.

:data:`UPDATE_OPS` and :data:`CLOSE_OPS` are the exact counts of the core; a change to the core that moves them
must update them here, and say why.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import pytest
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.aggregation import MeanMetric, SumMetric

from tests.dispatch_counter import DispatchCounter
from tests.process_group import destroy_process_group, free_port
from tests.versions import NO_DISABLED_NAN_STRATEGY
from windowmetrics import EMALoss, Windowed, WindowedMean, WindowedSum, scalars
from windowmetrics.window import WindowMetric

WINDOW = 3
"""A window whose updates but every third one are not boundaries."""

OP_TARGET = 2
"""At most this many operators per update that closes no window, where the target applies (module docstring)."""

STRATEGIES: list[Union[str, float]] = ["disable", "ignore", "warn", "error", 0.0]
CLASSES: dict[str, Callable[..., WindowMetric]] = {
    "WindowedMean": WindowedMean,
    "WindowedSum": WindowedSum,
    "EMALoss": lambda window, **kwargs: EMALoss(0.9, window=window, **kwargs),
}
SUM_STATES = {
    "WindowedMean": ("value_sum", "weight_sum", "nan_count", "latest"),
    "WindowedSum": ("value_sum", "weight_sum", "nan_count", "latest"),
    "EMALoss": ("value_sum", "weight_sum", "nan_count", "latest", "ema_numerator", "ema_denominator"),
}

_generator = torch.Generator().manual_seed(11)
LOSSES = {"0-dim": torch.rand((), generator=_generator), "256": torch.rand(256, generator=_generator)}
"""float32 losses: a batch's mean loss, and a per-sample loss."""
WEIGHTS: dict[str, Optional[Union[int, float, Tensor]]] = {
    "default": None,  # update(loss): the default weight
    "number": 32,  # a batch size, as in update(loss, weight=len(x))
    "float": 0.25,
    "tensor 0-dim": torch.tensor(32.0),
    "tensor 256": torch.rand(256, generator=_generator) + 0.5,
}
NUMBER_WEIGHTS = ("default", "number", "float")
"""The weights of the target: none (the default), an int, a float."""


@dataclass(frozen=True)
class Case:
    """One metric class, strategy, loss and weight: the arguments of every update of a test."""

    metric: str
    nan_strategy: Union[str, float]
    loss: str
    weight: str

    def __str__(self) -> str:
        return f"{self.metric}-{self.nan_strategy}-{self.loss} loss-{self.weight} weight"

    @property
    def targeted(self) -> bool:
        """Whether :data:`OP_TARGET` applies to this case's updates."""
        return self.nan_strategy == "disable" and self.weight in NUMBER_WEIGHTS

    def build(self, window: int = WINDOW) -> WindowMetric:
        return CLASSES[self.metric](window, nan_strategy=self.nan_strategy)

    def args(self) -> tuple[object, ...]:
        weight = WEIGHTS[self.weight]
        return (LOSSES[self.loss],) if weight is None else (LOSSES[self.loss], weight)

    def reference(self, calls: int) -> float:
        """The value of a window of ``calls`` updates, brute force in float64 (the first EMA value is the mean)."""
        loss = LOSSES[self.loss].double()
        weight = WEIGHTS[self.weight]
        weights = torch.ones_like(loss) if weight is None else torch.as_tensor(weight).double().expand_as(loss)
        if self.metric == "WindowedSum":
            return calls * float(loss.sum())
        return float((loss * weights).sum() / weights.sum())


CASES = [
    Case(metric, strategy, loss, weight)
    for metric in CLASSES
    for strategy in STRATEGIES
    for loss in LOSSES
    for weight in WEIGHTS
    if (metric != "WindowedSum" or weight == "default") and (loss == "256" or weight != "tensor 256")
]


class Ops(NamedTuple):
    """Operators of an update that closes no window."""

    first: int
    """The first update after construction, a boundary, ``reset()`` or ``load_state_dict()``."""
    later: int
    """The other updates of a window."""


DROPPING = ("ignore", "warn", "error")

UPDATE_OPS: dict[tuple[Union[str, float], str, str], Ops] = {
    # nan_strategy="disable" (the default)
    **{("disable", "0-dim", weight): Ops(1, 1) for weight in NUMBER_WEIGHTS},  # add (the weight is its alpha)
    **{("disable", "256", weight): Ops(2, 2) for weight in NUMBER_WEIGHTS},  # sum, add
    # A tensor weight: _to_copy (float64 values), mul, [sum], add of the values; add of the weights. The weight
    # sum of a window starts as a host float: the first 0-dim tensor weight lifts it to the device (scalar_tensor).
    ("disable", "0-dim", "tensor 0-dim"): Ops(5, 4),
    ("disable", "256", "tensor 0-dim"): Ops(6, 5),
    ("disable", "256", "tensor 256"): Ops(6, 6),  # _to_copy, mul, sum, sum, add, add
    # Strategies that drop NaN elements, number weights: isnan, sum (NaN count), nansum, then 4 adds (values,
    # weights, NaN weights taken off the weights, NaN count).
    **{(strategy, loss, weight): Ops(7, 7) for strategy in DROPPING for loss in LOSSES for weight in NUMBER_WEIGHTS},
    # ... tensor weights: _to_copy x2, expand, isnan x2, bitwise_or, (scalar_tensor, where) x2, 3 sums, mul, 3 adds.
    **{(strategy, "0-dim", "tensor 0-dim"): Ops(17, 17) for strategy in DROPPING},
    **{(strategy, "256", weight): Ops(17, 17) for strategy in DROPPING for weight in ("tensor 0-dim", "tensor 256")},
    # Imputing (a float): nan_to_num first, then as "disable".
    **{(0.0, "0-dim", weight): Ops(2, 2) for weight in NUMBER_WEIGHTS},
    **{(0.0, "256", weight): Ops(3, 3) for weight in NUMBER_WEIGHTS},
    (0.0, "0-dim", "tensor 0-dim"): Ops(6, 5),
    (0.0, "256", "tensor 0-dim"): Ops(7, 6),
    (0.0, "256", "tensor 256"): Ops(7, 7),
}
"""Exact operators per update that closes no window, by (strategy, loss, weight), for every class."""

CLOSE_OPS: dict[tuple[str, bool], int] = {
    ("WindowedMean", True): 2,  # div (the window's value), zeros (the cleared value sum)
    ("WindowedMean", False): 2,
    ("WindowedSum", True): 1,  # zeros
    ("WindowedSum", False): 1,
    ("EMALoss", True): 8,  # mul, div, mul, add (numerator), mul, add (denominator), div (value), zeros
    ("EMALoss", False): 11,  # and ne (a weighted window?), where for the numerator and for the denominator
}
"""Exact operators that closing a window adds to its last update (reading the NaN count aside), by class and
whether the window's weight sum is on the host (number weights, strategies that drop nothing) or on the device."""

CLOSE_READS: dict[Union[str, float], int] = {"disable": 0, "ignore": 0, "warn": 1, "error": 1, 0.0: 0}
"""Host reads at a boundary in one process: ``"warn"`` and ``"error"`` read the window's NaN count, once (one
``_local_scalar_dense`` operator more)."""


PRESENTING_OPS = 1
"""``forward`` returns the latest window value rounded to the default dtype: one ``_to_copy`` per new value, at
the boundary that makes it (``load_state_dict()`` rounds a loaded value itself, so no update pays for it)."""


def close_ops(case: Case) -> int:
    weight_sum_on_host = case.weight in NUMBER_WEIGHTS and case.nan_strategy not in DROPPING
    return CLOSE_OPS[case.metric, weight_sum_on_host] + CLOSE_READS[case.nan_strategy]


@pytest.fixture(autouse=True)
def accelerator_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every scalar a 0-dim tensor, as on an accelerator (the package's documented switch)."""
    monkeypatch.setattr(scalars, "PREFER_HOST", False)


def counted(action: Callable[[], object]) -> DispatchCounter:
    with DispatchCounter() as counter:
        action()
    return counter


def call(metric: Metric, operation: str, args: tuple[object, ...]) -> Callable[[], object]:
    return (lambda: metric(*args)) if operation == "forward" else (lambda: metric.update(*args))


def non_boundary_updates(case: Case, operation: str) -> dict[str, DispatchCounter]:
    """Count an update that closes no window at each place where one is first after a change of state."""
    args = case.args()
    measured: dict[str, DispatchCounter] = {}

    metric = case.build()
    step = call(metric, operation, args)  # every call of a test is an update, or every call a forward
    measured["first after construction"] = counted(step)
    step()
    step()  # a boundary
    assert metric.at_boundary
    measured["first after a boundary"] = counted(step)
    measured["second after a boundary"] = counted(step)

    metric.reset()
    measured["first after reset()"] = counted(step)

    saved = case.build()
    saved.persistent(True)
    for _ in range(WINDOW + 1):  # a window, then one update of the next
        saved.update(*args)
    loaded = case.build()
    loaded.load_state_dict(saved.state_dict())
    measured["first after load_state_dict()"] = counted(call(loaded, operation, args))
    assert not loaded.at_boundary
    return measured


def describe(measured: dict[str, DispatchCounter]) -> str:
    return "\n".join(f"  {where}: {counter.ops} host reads {counter.host_reads}" for where, counter in measured.items())


@pytest.mark.parametrize("operation", ["update", "forward"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_an_update_that_closes_no_window_never_reads_the_device(case: Case, operation: str) -> None:
    measured = non_boundary_updates(case, operation)
    assert all(counter.sync_count == 0 for counter in measured.values()), describe(measured)
    if case.targeted:
        worst = max(counter.op_count for counter in measured.values())
        assert worst <= OP_TARGET, f"more than {OP_TARGET} operators per update:\n{describe(measured)}"
    expected = UPDATE_OPS[case.nan_strategy, case.loss, case.weight]
    for where, counter in measured.items():
        count = expected.first if where.startswith("first") else expected.later
        assert counter.op_count == count, f"{where}: expected {count} operators\n{describe(measured)}"


@pytest.mark.parametrize("operation", ["update", "forward"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_boundary_reads_the_device_at_most_once(case: Case, operation: str) -> None:
    args = case.args()
    measured: dict[str, DispatchCounter] = {}
    single = case.build(window=1)
    measured["window=1, first update"] = counted(call(single, operation, args))
    measured["window=1, second update"] = counted(call(single, operation, args))
    metric = case.build()
    step = call(metric, operation, args)
    for _ in range(2 * WINDOW - 1):
        step()
    measured[f"update {2 * WINDOW} of window={WINDOW}"] = counted(step)
    assert single.at_boundary
    assert metric.at_boundary
    expected_reads = CLOSE_READS[case.nan_strategy]
    assert all(counter.sync_count == expected_reads for counter in measured.values()), describe(measured)
    update_ops = UPDATE_OPS[case.nan_strategy, case.loss, case.weight]
    expected = {  # a window=1 update is the first of its window
        "window=1, first update": update_ops.first,
        "window=1, second update": update_ops.first,
        f"update {2 * WINDOW} of window={WINDOW}": update_ops.later,
    }
    presenting = PRESENTING_OPS if operation == "forward" else 0
    for where, counter in measured.items():
        count = expected[where] + close_ops(case) + presenting
        assert counter.op_count == count, f"{where}: expected {count} operators\n{describe(measured)}"
    # Counting changes nothing: the value is the window's, computed independently.
    torch.testing.assert_close(metric.compute().double(), torch.tensor(case.reference(WINDOW), dtype=torch.float64))
    torch.testing.assert_close(single.compute().double(), torch.tensor(case.reference(1), dtype=torch.float64))


@pytest.fixture
def one_process_group() -> Iterator[None]:
    """A gloo process group of this process alone: a boundary then synchronises, as it does under DDP."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    destroy_process_group()  # past the deadlock of torch < 2.8 (tests/process_group.py)


@pytest.mark.usefixtures("one_process_group")
@pytest.mark.parametrize("nan_strategy", STRATEGIES)
@pytest.mark.parametrize("metric_name", list(CLASSES))
def test_a_synchronised_boundary_issues_one_collective_and_reads_the_device_at_most_once(
    metric_name: str, nan_strategy: Union[str, float]
) -> None:
    case = Case(metric_name, nan_strategy, "256", "default")
    metric = case.build()
    args = case.args()
    for _ in range(WINDOW - 1):
        off_boundary = counted(lambda: metric.update(*args))
        assert off_boundary.sync_count == 0
        assert not [op for op in off_boundary.ops if op.startswith("c10d.")]
    boundary = counted(lambda: metric.update(*args))
    assert metric.at_boundary
    collectives = [op for op in boundary.ops if op.startswith("c10d.")]
    assert len(collectives) == 1, boundary.ops
    assert boundary.sync_count <= 1, f"{boundary.ops} host reads {boundary.host_reads}"
    torch.testing.assert_close(metric.compute().double(), torch.tensor(case.reference(WINDOW), dtype=torch.float64))


WRAPPED: dict[str, Callable[[], Metric]] = {
    "MeanMetric": lambda: MeanMetric(nan_strategy="disable"),
    "SumMetric": lambda: SumMetric(nan_strategy="disable"),
}


@NO_DISABLED_NAN_STRATEGY
@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("wrapped", list(WRAPPED))
def test_windowed_adds_no_host_read_to_its_metric(wrapped: str, loss: str) -> None:
    """``Windowed`` updates its metric: off a boundary, it reads nothing that its metric does not."""
    value = LOSSES[loss]
    metric = Windowed(WRAPPED[wrapped](), WINDOW)
    first = counted(lambda: metric.update(value))
    metric.update(value)
    metric.update(value)
    after_boundary = counted(lambda: metric.update(value))
    metric.reset()
    after_reset = counted(lambda: metric(value))
    for counter in (first, after_boundary, after_reset):
        assert counter.sync_count == 0, counter.host_reads


def assert_sums_are_device_tensors(metric: WindowMetric, name: str, when: str) -> None:
    for state in SUM_STATES[name]:
        value = getattr(metric, state)
        assert isinstance(value, Tensor), f"{state} {when}: {value!r}"
        assert value.shape == (), f"{state} {when}: {value!r}"
        assert value.dtype == torch.float64, f"{state} {when}: {value!r}"
        assert value.device == metric.device, f"{state} {when}: on {value.device}, metric on {metric.device}"


@pytest.mark.parametrize("nan_strategy", STRATEGIES)
@pytest.mark.parametrize("metric_name", list(CLASSES))
def test_sums_are_0_dim_float64_tensors_on_the_metric_device(metric_name: str, nan_strategy: object) -> None:
    case = Case(metric_name, nan_strategy, "256", "default")  # type: ignore[arg-type]
    metric = case.build()
    assert_sums_are_device_tensors(metric, metric_name, "after construction")
    metric.update(*case.args())
    assert_sums_are_device_tensors(metric, metric_name, "after an update")
    for _ in range(WINDOW - 1):
        metric.update(*case.args())
    assert metric.at_boundary
    assert_sums_are_device_tensors(metric, metric_name, "after a boundary")
    metric.update(*case.args())
    metric.persistent(True)
    saved = metric.state_dict()
    metric.reset()
    assert_sums_are_device_tensors(metric, metric_name, "after reset()")
    loaded = case.build()
    loaded.load_state_dict(saved)
    assert_sums_are_device_tensors(loaded, metric_name, "after load_state_dict()")
