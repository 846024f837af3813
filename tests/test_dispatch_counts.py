"""Operators and host reads per update, counted on the one code path that every device runs.

The metrics run the same code on the CPU as on an accelerator: every state is a float64 tensor ``[window in
progress, since the last reset]`` on the metric's device, updated in place. :class:`~tests.dispatch_counter.
DispatchCounter` counts what an update dispatches: on a GPU, one kernel launch per operator (views aside) and one
host-device synchronisation per host read. The budget (SPEC, "Values, weights and precision"):

- from the very first update on (after construction, a boundary, ``reset()`` or ``load_state_dict()``), an update
  that closes no window dispatches at most 1 operator for a 0-dim loss and at most 2 for a per-sample loss, with
  the default weight or a number as weight, under the default ``nan_strategy``; the since-reset aggregate is
  included (one broadcast ``add_`` feeds both elements of a state). :data:`OP_TARGET`;
- no update that closes no window reads a device value on the host, whatever the strategy, the weight or the loss;
- tensor weights and the other NaN strategies cost no more operators than before the one-path rewrite
  (:data:`BEFORE_ONE_PATH`, the accelerator path's counts at commit 614268c);
- a boundary reads the device at most once (``"warn"`` and ``"error"`` read the window's NaN count; the others
  read nothing), and in a process group issues one collective. The counter also counts, as the synchronisation it
  is on a GPU, a Python number copied into a state (``state[0] = 0.0``: a blocking host-to-device copy);
- ``forward`` that returns the cached window value dispatches nothing beyond its update: the window value is
  rounded to the output dtype once per window (:data:`PRESENTING_OPS`), whoever reads it first.

:data:`UPDATE_OPS` and :data:`EXTREME_OPS` are the exact counts of an update; a change to the package that moves
them must update them here, and say why. :data:`CLOSE_OPS` are the most operators that closing a window may add (the
counts at commit 65ea74e): a boundary may get cheaper, never dearer. tests/test_cuda.py checks the same counts on
CUDA tensors.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import pytest
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.aggregation import MaxMetric, MeanMetric, SumMetric

from tests.dispatch_counter import DispatchCounter
from tests.process_group import destroy_process_group, free_port
from tests.versions import NO_DISABLED_NAN_STRATEGY
from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedMin, WindowedSum
from windowmetrics._window import WindowMetric

WINDOW = 3
"""A window whose updates but every third one are not boundaries."""

OP_TARGET = {"0-dim": 1, "256": 2}
"""At most this many operators per update that closes no window, by loss, where the target applies."""

STRATEGIES: list[Union[str, float]] = ["disable", "ignore", "warn", "error", 0.0]
CLASSES: dict[str, Callable[..., WindowMetric]] = {
    "WindowedMean": WindowedMean,
    "WindowedSum": WindowedSum,
    "EMALoss": lambda window, **kwargs: EMALoss(0.9, window=window, **kwargs),
    "WindowedMax": WindowedMax,
    "WindowedMin": WindowedMin,
}
WEIGHTED = ("WindowedMean", "EMALoss")
"""The classes whose ``update`` takes a weight."""
EXTREMES = ("WindowedMax", "WindowedMin")
STATES = {
    "WindowedMean": ("value_sum", "weight_sum", "nan_count"),
    "WindowedSum": ("value_sum", "weight_sum", "nan_count"),
    "EMALoss": ("value_sum", "weight_sum", "nan_count"),
    "WindowedMax": ("extreme", "nan_count", "element_count"),
    "WindowedMin": ("extreme", "nan_count", "element_count"),
}
"""The ``[window, since reset]`` states of each class."""

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


def on(device: torch.device, value: object) -> object:
    return value.to(device) if isinstance(value, Tensor) else value


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

    def build(self, window: int = WINDOW, device: str = "cpu") -> WindowMetric:
        return CLASSES[self.metric](window, nan_strategy=self.nan_strategy).to(device)

    def args(self, device: str = "cpu") -> tuple[object, ...]:
        loss, weight = on(torch.device(device), LOSSES[self.loss]), on(torch.device(device), WEIGHTS[self.weight])
        return (loss,) if weight is None else (loss, weight)

    def update_ops(self) -> int:
        if self.metric in EXTREMES:
            return EXTREME_OPS[self.nan_strategy, self.loss]
        return UPDATE_OPS[self.nan_strategy, self.loss, self.weight]

    def close_ops(self) -> int:
        """The most operators that closing a window may add to its last update, the NaN count's read included."""
        reads = CLOSE_READS[self.nan_strategy]
        if self.metric in EXTREMES:
            drops = self.nan_strategy in DROPPING
            return CLOSE_OPS[self.metric] + (EXTREME_DROPPED_CLOSE_OPS if drops else 0) + reads
        folds = NUMBER_WEIGHTS_FOLD_OPS if self.weight in NUMBER_WEIGHTS else 0
        return CLOSE_OPS[self.metric] + folds + REPORT_OPS * reads

    def reference(self, calls: int) -> float:
        """The value of a window of ``calls`` updates, brute force in float64 (the first EMA value is the mean)."""
        loss = LOSSES[self.loss].double()
        weight = WEIGHTS[self.weight]
        weights = torch.ones_like(loss) if weight is None else torch.as_tensor(weight).double().expand_as(loss)
        if self.metric == "WindowedSum":
            return calls * float(loss.sum())
        if self.metric == "WindowedMax":
            return float(loss.max())
        if self.metric == "WindowedMin":
            return float(loss.min())
        return float((loss * weights).sum() / weights.sum())


CASES = [
    Case(metric, strategy, loss, weight)
    for metric in CLASSES
    for strategy in STRATEGIES
    for loss in LOSSES
    for weight in WEIGHTS
    if (metric in WEIGHTED or weight == "default") and (loss == "256" or weight != "tensor 256")
]

DROPPING = ("ignore", "warn", "error")

UPDATE_OPS: dict[tuple[Union[str, float], str, str], int] = {
    # nan_strategy="disable" (the default): add_ (a number weight is its alpha, and the window's weights are summed
    # on the host), after a sum for a per-sample loss. One add_ of a [window, since reset] state feeds both.
    **{("disable", "0-dim", weight): 1 for weight in NUMBER_WEIGHTS},
    **{("disable", "256", weight): 2 for weight in NUMBER_WEIGHTS},
    # A tensor weight: _to_copy (float64 values), mul, [sum], add_ of the products; [sum], add_ of the weights.
    ("disable", "0-dim", "tensor 0-dim"): 4,
    ("disable", "256", "tensor 0-dim"): 5,
    ("disable", "256", "tensor 256"): 6,
    # Strategies that drop NaN elements, number weights: isnan, sum (NaN count), nansum, then 3 add_ (values, NaN
    # weights taken off the weights, NaN count).
    **{(strategy, loss, weight): 6 for strategy in DROPPING for loss in LOSSES for weight in NUMBER_WEIGHTS},
    # ... tensor weights: _to_copy x2, expand, isnan x2, bitwise_or, (scalar_tensor, where) x2, 3 sums, mul, 3 add_.
    **{(strategy, "0-dim", "tensor 0-dim"): 17 for strategy in DROPPING},
    **{(strategy, "256", weight): 17 for strategy in DROPPING for weight in ("tensor 0-dim", "tensor 256")},
    # Imputing (a float): nan_to_num first, then as "disable".
    **{(0.0, "0-dim", weight): 2 for weight in NUMBER_WEIGHTS},
    **{(0.0, "256", weight): 3 for weight in NUMBER_WEIGHTS},
    (0.0, "0-dim", "tensor 0-dim"): 5,
    (0.0, "256", "tensor 0-dim"): 6,
    (0.0, "256", "tensor 256"): 7,
}
"""Exact operators per update that closes no window, by (strategy, loss, weight), for WindowedMean, WindowedSum and
EMALoss, from the first update after any change of state on."""

EXTREME_OPS: dict[tuple[Union[str, float], str], int] = {
    ("disable", "0-dim"): 1,  # maximum (minimum) of the state and the loss, in place (out=)
    ("disable", "256"): 2,  # amax (amin), maximum (minimum)
    # isnan, sum, add_ (NaN count), add_ (element count), masked_fill, [amax], maximum
    **{(strategy, "0-dim"): 6 for strategy in DROPPING},
    **{(strategy, "256"): 7 for strategy in DROPPING},
    (0.0, "0-dim"): 2,  # nan_to_num, maximum
    (0.0, "256"): 3,  # nan_to_num, amax, maximum
}
"""Exact operators per update that closes no window, by (strategy, loss), for WindowedMax and WindowedMin."""


class Ops(NamedTuple):
    """Operators of an update that closes no window, on the accelerator path before the one-path rewrite."""

    first: int
    """The first update after construction, a boundary, ``reset()`` or ``load_state_dict()``."""
    later: int
    """The other updates of a window."""


BEFORE_ONE_PATH: dict[tuple[Union[str, float], str, str], Ops] = {
    **{("disable", "0-dim", weight): Ops(1, 1) for weight in NUMBER_WEIGHTS},
    **{("disable", "256", weight): Ops(2, 2) for weight in NUMBER_WEIGHTS},
    ("disable", "0-dim", "tensor 0-dim"): Ops(5, 4),
    ("disable", "256", "tensor 0-dim"): Ops(6, 5),
    ("disable", "256", "tensor 256"): Ops(6, 6),
    **{(strategy, loss, weight): Ops(7, 7) for strategy in DROPPING for loss in LOSSES for weight in NUMBER_WEIGHTS},
    **{(strategy, "0-dim", "tensor 0-dim"): Ops(17, 17) for strategy in DROPPING},
    **{(strategy, "256", weight): Ops(17, 17) for strategy in DROPPING for weight in ("tensor 0-dim", "tensor 256")},
    **{(0.0, "0-dim", weight): Ops(2, 2) for weight in NUMBER_WEIGHTS},
    **{(0.0, "256", weight): Ops(3, 3) for weight in NUMBER_WEIGHTS},
    (0.0, "0-dim", "tensor 0-dim"): Ops(6, 5),
    (0.0, "256", "tensor 0-dim"): Ops(7, 6),
    (0.0, "256", "tensor 256"): Ops(7, 7),
}
"""The counts of :data:`UPDATE_OPS` at commit 614268c, before the one-path rewrite (0-dim float64 sums, a window's
weight sum lifted to the device by its first tensor weight): no count may grow."""

CLOSE_OPS: dict[str, int] = {
    # select x3, stack ([value sum, weight sum, NaN count] of the window), select x2, div (the value); then the
    # window's element of each of the 3 sums zeroed in place: (select, zero_) x3. (Writing a Python number into it,
    # `sum[0] = 0.0`, would be lift_fresh, select, copy_: a blocking host-to-device copy on a GPU.)
    "WindowedMean": 13,
    "WindowedSum": 11,  # the value is the value sum: one select, no div
    # select x3, stack, select, ne (a weighted window?), mul, select x2, div (the mean), add, where (numerator), mul,
    # add, where (denominator), div (the value); the 3 sums' window element zeroed
    "EMALoss": 23,
    # select x3, stack ([extreme, NaN count, element count]), unbind; then (select, fill_) for the extreme and
    # (select, zero_) for the 2 counts
    "WindowedMax": 11,
    "WindowedMin": 11,
}
"""At most this many operators that closing a window adds to its last update, by class (before the additions
below): the counts at commit 65ea74e, where each was exact."""

NUMBER_WEIGHTS_FOLD_OPS = 1
"""A window fed number weights folds their host sum into ``weight_sum`` at the boundary: one ``add_``."""
REPORT_OPS = 2
"""``"warn"`` and ``"error"`` read the window's NaN count at a weighted-sums boundary: select, _local_scalar_dense."""
EXTREME_DROPPED_CLOSE_OPS = 3
"""WindowedMax/Min with a strategy that drops NaN elements: gt, scalar_tensor, where (a window of NaN alone is NaN)."""
CLOSE_READS: dict[Union[str, float], int] = {"disable": 0, "ignore": 0, "warn": 1, "error": 1, 0.0: 0}
"""Host reads at a boundary in one process: ``"warn"`` and ``"error"`` read the window's NaN count, once (one
``_local_scalar_dense`` operator more)."""

PRESENTING_OPS = 1
"""``forward`` returns the latest window value rounded to the default dtype: one ``_to_copy`` per new value, made
when it is first read (at the boundary, for a boundary that ``forward`` makes)."""


def counted(action: Callable[[], object]) -> DispatchCounter:
    with DispatchCounter() as counter:
        action()
    return counter


def call(metric: Metric, operation: str, args: tuple[object, ...]) -> Callable[[], object]:
    return (lambda: metric(*args)) if operation == "forward" else (lambda: metric.update(*args))


def non_boundary_updates(case: Case, operation: str, device: str = "cpu") -> dict[str, DispatchCounter]:
    """Count an update that closes no window at each place where one is first after a change of state."""
    args = case.args(device)
    measured: dict[str, DispatchCounter] = {}

    metric = case.build(device=device)
    step = call(metric, operation, args)  # every call of a test is an update, or every call a forward
    measured["first after construction"] = counted(step)
    step()
    step()  # a boundary
    assert metric.at_boundary
    measured["first after a boundary"] = counted(step)
    measured["second after a boundary"] = counted(step)

    metric.reset()
    measured["first after reset()"] = counted(step)

    saved = case.build(device=device)
    saved.persistent(True)
    for _ in range(WINDOW + 1):  # a window, then one update of the next
        saved.update(*args)
    loaded = case.build(device=device)
    loaded.persistent(True)
    loaded.load_state_dict(saved.state_dict())
    if operation == "forward":
        loaded.window_value  # noqa: B018  # the loaded value, read (and rounded) once, as Lightning would log it
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
        target = OP_TARGET[case.loss]
        assert worst <= target, f"more than {target} operators per update:\n{describe(measured)}"
    expected = case.update_ops()
    for where, counter in measured.items():
        assert counter.op_count == expected, f"{where}: expected {expected} operators\n{describe(measured)}"


@pytest.mark.parametrize("case", [case for case in CASES if case.metric in WEIGHTED], ids=str)
def test_no_update_costs_more_operators_than_before_the_one_path(case: Case) -> None:
    """Tensor weights and NaN strategies cost no more than on the accelerator path before the rewrite."""
    before = BEFORE_ONE_PATH[case.nan_strategy, case.loss, case.weight]
    assert case.update_ops() <= min(before), f"{case.update_ops()} operators, {before} before"


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
    presenting = PRESENTING_OPS if operation == "forward" else 0
    count = case.update_ops() + case.close_ops() + presenting
    for where, counter in measured.items():
        assert counter.op_count <= count, f"{where}: expected at most {count} operators\n{describe(measured)}"
    # Counting changes nothing: the value is the window's, computed independently.
    window_value = metric.window_value
    assert window_value is not None
    torch.testing.assert_close(window_value.double(), torch.tensor(case.reference(WINDOW), dtype=torch.float64))
    torch.testing.assert_close(single.compute().double(), torch.tensor(case.reference(2), dtype=torch.float64))


@pytest.mark.parametrize("metric_name", list(CLASSES))
def test_forward_returns_the_cached_window_value_at_no_cost(metric_name: str) -> None:
    """The window value is rounded to the output dtype once per window; every other read costs no operator."""
    case = Case(metric_name, "disable", "0-dim", "default")
    args = case.args()
    metric = case.build()
    for _ in range(WINDOW):
        metric.update(*args)  # a boundary by update: nothing has read the value yet
    first_read = counted(lambda: metric.window_value)
    assert first_read.ops == ["_to_copy"] * PRESENTING_OPS, first_read.ops
    assert counted(lambda: metric.window_value).ops == []
    for _ in range(WINDOW - 1):
        forward = counted(lambda: metric(*args))
        assert forward.op_count == case.update_ops(), forward.ops
        assert forward.sync_count == 0, forward.host_reads
    twin = case.build()  # the same updates, by update()
    for _ in range(2 * WINDOW - 1):
        twin.update(*args)
    by_update = counted(lambda: twin.update(*args))
    boundary = counted(lambda: metric(*args))  # a new window value, rounded once by the forward that makes it
    assert boundary.ops == [*by_update.ops, *["_to_copy"] * PRESENTING_OPS], (boundary.ops, by_update.ops)
    assert counted(lambda: metric.window_value).ops == []


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
    window_value = metric.window_value
    assert window_value is not None
    torch.testing.assert_close(window_value.double(), torch.tensor(case.reference(WINDOW), dtype=torch.float64))


WRAPPED: dict[str, tuple[Callable[[], Metric], bool]] = {
    "MeanMetric": (lambda: MeanMetric(nan_strategy="disable"), True),
    "SumMetric": (lambda: SumMetric(nan_strategy="disable"), True),
    "MaxMetric": (lambda: MaxMetric(nan_strategy="disable"), False),
}
"""torchmetrics metrics to wrap, and whether ``merge_state`` merges their windows exactly (else ``Windowed``
updates a second copy beside the window's)."""


@NO_DISABLED_NAN_STRATEGY
@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("wrapped", list(WRAPPED))
def test_windowed_dispatches_its_metrics_updates_and_nothing_more(wrapped: str, loss: str) -> None:
    """Off a boundary, ``Windowed`` dispatches its metric's update once (twice where it cannot merge), and no read.

    ``forward`` returns the cached window value at no cost.
    """
    value = LOSSES[loss]
    make, merges = WRAPPED[wrapped]
    bare = make()
    bare.update(value)
    alone = counted(lambda: bare.update(value))
    metric = Windowed(make(), WINDOW)
    assert metric._merges is merges
    measured = {"first after construction": counted(lambda: metric.update(value))}
    metric.update(value)
    metric(value)  # a boundary
    measured["forward, first after a boundary"] = counted(lambda: metric(value))
    measured["update, second after a boundary"] = counted(lambda: metric.update(value))
    metric.reset()
    measured["forward, first after reset()"] = counted(lambda: metric(value))
    expected = alone.ops * (1 if merges else 2)
    for where, counter in measured.items():
        assert counter.sync_count == alone.sync_count == 0, f"{where}: {counter.host_reads}"
        assert counter.ops == expected, f"{where}: {counter.ops}, {wrapped}.update alone: {alone.ops}"


def assert_states_are_device_tensors(metric: WindowMetric, name: str, when: str) -> None:
    for state in STATES[name]:
        value = getattr(metric, state)
        assert isinstance(value, Tensor), f"{state} {when}: {value!r}"
        assert value.shape == (2,), f"{state} {when}: {value!r}"
        assert value.dtype == torch.float64, f"{state} {when}: {value!r}"
        assert value.device == metric.device, f"{state} {when}: on {value.device}, metric on {metric.device}"
    assert metric.latest.shape == (), f"latest {when}: {metric.latest!r}"
    assert metric.latest.dtype == torch.float64, f"latest {when}: {metric.latest!r}"


@pytest.mark.parametrize("nan_strategy", STRATEGIES)
@pytest.mark.parametrize("metric_name", list(CLASSES))
def test_states_are_float64_window_and_aggregate_pairs_on_the_metric_device(
    metric_name: str, nan_strategy: Union[str, float]
) -> None:
    case = Case(metric_name, nan_strategy, "256", "default")
    metric = case.build()
    assert_states_are_device_tensors(metric, metric_name, "after construction")
    metric.update(*case.args())
    assert_states_are_device_tensors(metric, metric_name, "after an update")
    for _ in range(WINDOW - 1):
        metric.update(*case.args())
    assert metric.at_boundary
    assert_states_are_device_tensors(metric, metric_name, "after a boundary")
    metric.update(*case.args())
    metric.persistent(True)
    saved = metric.state_dict()
    metric.reset()
    assert_states_are_device_tensors(metric, metric_name, "after reset()")
    loaded = case.build()
    loaded.persistent(True)
    loaded.load_state_dict(saved)
    assert_states_are_device_tensors(loaded, metric_name, "after load_state_dict()")
