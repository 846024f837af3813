"""On a CUDA device: the counts of tests/test_dispatch_counts.py hold, nothing synchronises, and values are right.

The package runs one code path on every device, so the CPU suite tests what a GPU runs; this file checks it on a
GPU. Skipped, visibly, where there is no CUDA device (as on CI); run it on a machine with one.

- The operators and host reads of an update that closes no window, counted by
  :class:`~tests.dispatch_counter.DispatchCounter` on CUDA tensors (a host read is then a real synchronisation,
  a copy of a device tensor to the CPU included), are exactly the CPU's, for every class, strategy, loss and
  weight of tests/test_dispatch_counts.py; a boundary reads the device as often as on the CPU (at most once).
- ``torch.cuda.set_sync_debug_mode("error")`` makes every synchronising CUDA call raise. Each class, with each
  ``nan_strategy``, is updated over two windows and again after ``reset()``: every update that closes no window
  runs in that mode (the first after construction, after a boundary and after ``reset()`` included), and with
  ``nan_strategy="disable"`` every boundary too.
- Every window value and every ``compute()`` is checked against a brute-force computation on the CPU, in float64,
  from the same inputs: a one-process run of every class, ``Windowed`` included, on CUDA.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional, Union

import pytest
import torch
from torch import Tensor
from torchmetrics import MaxMetric, MeanMetric, Metric

from tests.dispatch_counter import DispatchCounter
from tests.test_dispatch_counts import CASES, CLOSE_READS, Case, call, counted, describe, non_boundary_updates
from tests.versions import NO_DISABLED_NAN_STRATEGY
from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedMin, WindowedSum
from windowmetrics._window import WindowMetric

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICE = "cuda"
WINDOW = 4
DECAY = 0.9
STRATEGIES: list[Union[str, float]] = ["disable", "ignore", "warn", "error", 0.0]
CLASSES: dict[str, Callable[..., WindowMetric]] = {
    "WindowedMean": WindowedMean,
    "WindowedSum": WindowedSum,
    "EMALoss": lambda window, **kwargs: EMALoss(DECAY, window=window, **kwargs),
    "WindowedMax": WindowedMax,
    "WindowedMin": WindowedMin,
}
WEIGHTED = ("WindowedMean", "EMALoss")
Call = tuple[Union[float, Tensor], Union[float, Tensor]]


@contextmanager
def no_synchronisation() -> Iterator[None]:
    """Raise on any CUDA call that synchronises the host with the device, inside the block."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


# The counts of tests/test_dispatch_counts.py, on CUDA tensors --------------------------------------------------------


@pytest.mark.parametrize("operation", ["update", "forward"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_an_update_that_closes_no_window_dispatches_what_it_does_on_the_cpu(case: Case, operation: str) -> None:
    measured = non_boundary_updates(case, operation, device=DEVICE)
    assert all(counter.sync_count == 0 for counter in measured.values()), describe(measured)
    expected = case.update_ops()
    for where, counter in measured.items():
        assert counter.op_count == expected, f"{where}: expected {expected} operators\n{describe(measured)}"


@pytest.mark.parametrize("operation", ["update", "forward"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_boundary_reads_the_device_as_often_as_on_the_cpu(case: Case, operation: str) -> None:
    """At most one read (``"warn"``/``"error"``: the window's NaN count; none for the other strategies).

    The boundary's operators are printed beside the CPU's (``pytest -s``), not asserted: setting an element of a
    state from a Python number may dispatch differently on each device.
    """
    metric = case.build(device=DEVICE)
    args = case.args(DEVICE)
    step = call(metric, operation, args)
    for _ in range(2 * 3 - 1):  # test_dispatch_counts' window of 3: a window, then up to the next boundary
        step()
    boundary = counted(step)
    assert metric.at_boundary
    assert boundary.sync_count == CLOSE_READS[case.nan_strategy], f"{boundary.ops} reads {boundary.host_reads}"
    on_cpu = case.update_ops() + case.close_ops() + (1 if operation == "forward" else 0)
    print(f"\n{case}, {operation}: {boundary.op_count} operators at a boundary on CUDA, {on_cpu} on the CPU")
    window_value = metric.window_value
    assert window_value is not None
    assert window_value.device.type == "cuda"
    torch.testing.assert_close(window_value.cpu().double(), torch.tensor(case.reference(3), dtype=torch.float64))


# No synchronisation, and the values of a one-process run ---------------------------------------------------------


def calls(metric_name: str, seed: int) -> list[Call]:
    """One window's ``(value, weight)`` pairs: a loss that requires grad, a per-sample loss with a batch size, a
    tensor weight broadcast to its value, Python numbers (the classes without a weight get weight 1)."""
    device = torch.device(DEVICE)
    generator = torch.Generator(device=device).manual_seed(seed)
    vector = torch.rand(256, device=device, generator=generator, requires_grad=True)
    matrix = torch.rand(8, 4, device=device, generator=generator)
    columns = torch.rand(4, device=device, generator=generator)
    if metric_name not in WEIGHTED:
        return [(vector.mean() * 2, 1.0), (vector * 3, 1.0), (matrix, 1.0), (0.5 + seed, 1.0)]
    return [(vector.mean() * 2, 1.0), (vector * 3, 32), (matrix, columns), (0.5 + seed, 2.0)]


def on_cpu(number: Union[float, Tensor]) -> Tensor:
    return number.detach().cpu().double() if isinstance(number, Tensor) else torch.tensor(number, dtype=torch.float64)


def weighted_mean(updates: list[Call]) -> float:
    """The weighted mean of every element of every value, brute force in float64 on the CPU."""
    total = weights = 0.0
    for value, weight in updates:
        values = on_cpu(value)
        broadcast = on_cpu(weight).expand_as(values)
        total += float((values * broadcast).sum())
        weights += float(broadcast.sum())
    return total / weights


def elements(updates: list[Call]) -> Tensor:
    return torch.cat([on_cpu(value).reshape(-1) for value, _ in updates])


def value_of(metric_name: str, updates: list[Call]) -> float:
    """What a window of these updates is worth (or every update since a reset, for ``compute()``)."""
    if metric_name == "WindowedSum":
        return float(elements(updates).sum())
    if metric_name == "WindowedMax":
        return float(elements(updates).max())
    if metric_name == "WindowedMin":
        return float(elements(updates).min())
    return weighted_mean(updates)


def ema_values(windows: list[list[Call]]) -> list[float]:
    """The average after each window, in closed form: ``sum_j d**(k-1-j) m_j / sum_j d**(k-1-j)`` after k windows."""
    means = [weighted_mean(window) for window in windows]
    averages = []
    for count in range(1, len(means) + 1):
        weights = [DECAY ** (count - 1 - index) for index in range(count)]
        averages.append(sum(w * m for w, m in zip(weights, means[:count], strict=True)) / sum(weights))
    return averages


def update(metric: WindowMetric, metric_name: str, value: Union[float, Tensor], weight: Union[float, Tensor]) -> None:
    if metric_name in WEIGHTED:
        metric.update(value, weight)
    else:
        metric.update(value)


def run_window(metric: WindowMetric, metric_name: str, window: list[Call], boundary_synchronises: bool) -> Tensor:
    """Feed one window, every update but the last (and the last too where a boundary reads nothing) under
    :func:`no_synchronisation`; return the boundary's value, which ``forward`` returns."""
    for value, weight in window[:-1]:
        with no_synchronisation():
            update(metric, metric_name, value, weight)
        assert not metric.at_boundary
    value, weight = window[-1]
    args = (value, weight) if metric_name in WEIGHTED else (value,)
    result: Optional[Tensor]
    if boundary_synchronises:
        result = metric(*args)
    else:
        with no_synchronisation():
            result = metric(*args)
    assert metric.at_boundary
    assert result is not None
    return result


@pytest.mark.parametrize("nan_strategy", STRATEGIES)
@pytest.mark.parametrize("metric_name", list(CLASSES))
def test_updates_do_not_synchronise_and_values_are_the_brute_force_values(
    metric_name: str, nan_strategy: Union[str, float]
) -> None:
    metric = CLASSES[metric_name](WINDOW, nan_strategy=nan_strategy).to(DEVICE)
    first, second = calls(metric_name, 0), calls(metric_name, 1)
    reads_at_boundary = nan_strategy in ("warn", "error")
    values = [run_window(metric, metric_name, window, reads_at_boundary) for window in (first, second)]
    computed = [metric.compute()]
    metric.reset()
    values.append(run_window(metric, metric_name, first, reads_at_boundary))
    with no_synchronisation():
        update(metric, metric_name, *second[0])  # a window in progress: compute() covers it too
    computed.append(metric.compute())
    if metric_name == "EMALoss":
        expected = [*ema_values([first, second]), *ema_values([first])]
        expected_computed = [expected[1], expected[2]]
    else:
        expected = [value_of(metric_name, first), value_of(metric_name, second), value_of(metric_name, first)]
        expected_computed = [value_of(metric_name, first + second), value_of(metric_name, [*first, second[0]])]
    for value, reference in zip([*values, *computed], [*expected, *expected_computed], strict=True):
        assert value.device.type == "cuda"
        torch.testing.assert_close(value.cpu().double(), torch.tensor(reference, dtype=torch.float64))


@pytest.mark.parametrize("metric_name", list(CLASSES))
def test_with_nan_strategy_disable_even_a_boundary_does_not_synchronise(metric_name: str) -> None:
    metric = CLASSES[metric_name](WINDOW).to(DEVICE)
    loss = torch.rand((), device=DEVICE)
    with no_synchronisation():
        for _ in range(3 * WINDOW):
            update(metric, metric_name, loss, 8.0)
            metric.window_value  # noqa: B018  # what Lightning reads to log on step
    expected = loss * (3 * WINDOW) if metric_name == "WindowedSum" else loss
    torch.testing.assert_close(metric.compute(), expected)


WRAPPED: dict[str, Callable[[], Metric]] = {
    "MeanMetric": lambda: MeanMetric(nan_strategy="disable"),  # merged into the since-reset copy at boundaries
    "MaxMetric": lambda: MaxMetric(nan_strategy="disable"),  # updated beside the window's copy
}


@NO_DISABLED_NAN_STRATEGY
@pytest.mark.parametrize("wrapped", list(WRAPPED))
def test_windowed_adds_no_synchronisation_to_its_metric(wrapped: str) -> None:
    metric = Windowed(WRAPPED[wrapped](), WINDOW).to(DEVICE)
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    losses = [torch.rand(16, device=DEVICE, generator=generator) for _ in range(2 * WINDOW + 1)]
    reduce: Callable[[Tensor], Tensor] = torch.mean if wrapped == "MeanMetric" else torch.max
    values: list[Optional[Tensor]] = []
    for index, loss in enumerate(losses):
        if (index + 1) % WINDOW:
            with no_synchronisation():
                values.append(metric(loss))
        else:
            values.append(metric(loss))  # the wrapped metric's compute() may read the device
    assert values[: WINDOW - 1] == [None] * (WINDOW - 1)
    for boundary in (WINDOW, 2 * WINDOW):
        value = values[boundary - 1]
        assert value is not None
        torch.testing.assert_close(value, reduce(torch.cat(losses[boundary - WINDOW : boundary])))
    torch.testing.assert_close(metric.compute(), reduce(torch.cat(losses)))


def test_dispatch_counter_sees_a_device_read() -> None:
    """The counter that the tests above rely on counts a read of a CUDA tensor as a synchronisation."""
    tensor = torch.ones((), device=DEVICE)
    with DispatchCounter() as counter:
        tensor.item()
        tensor.cpu()
    assert counter.sync_count == 2, counter.host_reads
