"""On a CUDA device: no update that closes no window synchronises the host with the device, and values are right.

``torch.cuda.set_sync_debug_mode("error")`` makes every synchronising CUDA call raise. Each metric class, with
each ``nan_strategy``, is updated over two windows and again after ``reset()``: every update that closes no window
runs in that mode (the first after construction, after a boundary and after ``reset()`` included), and every
window value is checked against a brute-force computation on the CPU from the same inputs. Skipped, visibly,
where there is no CUDA device (as on CI); run it on a machine with one. tests/test_dispatch_counts.py checks the
same path on the CPU, by counting host reads with ``windowmetrics.scalars.PREFER_HOST = False``.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional, Union

import pytest
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from windowmetrics import EMALoss, Windowed, WindowedMean, WindowedSum
from windowmetrics._window import WindowMetric

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

WINDOW = 4
DECAY = 0.9
STRATEGIES: list[Union[str, float]] = ["disable", "ignore", "warn", "error", 0.0]
CLASSES: dict[str, Callable[..., WindowMetric]] = {
    "WindowedMean": WindowedMean,
    "WindowedSum": WindowedSum,
    "EMALoss": lambda window, **kwargs: EMALoss(DECAY, window=window, **kwargs),
}
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


def calls(device: torch.device, seed: int) -> list[Call]:
    """One window's ``(value, weight)`` pairs: a loss that requires grad, a per-sample loss with a batch size, a
    tensor weight broadcast to its value, Python numbers."""
    generator = torch.Generator(device=device).manual_seed(seed)
    vector = torch.rand(256, device=device, generator=generator, requires_grad=True)
    return [
        (vector.mean() * 2, 1.0),
        (vector * 3, 32),
        (torch.rand(8, 4, device=device, generator=generator), torch.rand(4, device=device, generator=generator)),
        (0.5 + seed, 2.0),
    ]


def on_cpu(number: Union[float, Tensor]) -> Tensor:
    return number.detach().cpu().double() if isinstance(number, Tensor) else torch.tensor(number, dtype=torch.float64)


def window_mean(window: list[Call]) -> float:
    """The weighted mean of every element of every value, brute force in float64 on the CPU."""
    total = weights = 0.0
    for value, weight in window:
        values = on_cpu(value)
        broadcast = on_cpu(weight).expand_as(values)
        total += float((values * broadcast).sum())
        weights += float(broadcast.sum())
    return total / weights


def window_sum(window: list[Call]) -> float:
    return sum(float(on_cpu(value).sum()) for value, _ in window)


def expected_values(metric_name: str, windows: list[list[Call]]) -> list[float]:
    """Each window's value; an EMA in closed form, ``sum_j d**(k-1-j) m_j / sum_j d**(k-1-j)`` after k windows."""
    if metric_name == "WindowedSum":
        return [window_sum(window) for window in windows]
    means = [window_mean(window) for window in windows]
    if metric_name == "WindowedMean":
        return means
    averages = []
    for count in range(1, len(means) + 1):
        weights = [DECAY ** (count - 1 - index) for index in range(count)]
        averages.append(sum(w * m for w, m in zip(weights, means[:count], strict=True)) / sum(weights))
    return averages


def run_window(metric: WindowMetric, metric_name: str, window: list[Call]) -> Optional[Tensor]:
    """Feed one window: every update but the last under :func:`no_synchronisation`; return the boundary's value."""
    for value, weight in window[:-1]:
        with no_synchronisation():
            if metric_name == "WindowedSum":
                metric.update(value)
            else:
                metric.update(value, weight)
        assert not metric.at_boundary
    value, weight = window[-1]
    result: Optional[Tensor] = metric(value) if metric_name == "WindowedSum" else metric(value, weight)
    assert metric.at_boundary
    return result


@pytest.mark.parametrize("nan_strategy", STRATEGIES)
@pytest.mark.parametrize("metric_name", list(CLASSES))
def test_updates_between_boundaries_do_not_synchronise(metric_name: str, nan_strategy: object) -> None:
    device = torch.device("cuda")
    metric = CLASSES[metric_name](WINDOW, nan_strategy=nan_strategy).to(device)
    first, second = calls(device, 0), calls(device, 1)
    values = [run_window(metric, metric_name, window) for window in (first, second)]
    metric.reset()
    values.append(run_window(metric, metric_name, first))
    expected = [*expected_values(metric_name, [first, second]), *expected_values(metric_name, [first])]
    for value, reference in zip(values, expected, strict=True):
        assert value is not None
        assert value.device.type == "cuda"
        torch.testing.assert_close(value.cpu().double(), torch.tensor(reference, dtype=torch.float64))


@pytest.mark.parametrize("make", [lambda: WindowedMean(WINDOW), lambda: EMALoss(0.9, window=WINDOW)])
def test_with_nan_strategy_disable_even_a_boundary_does_not_synchronise(make: Callable[[], WindowMetric]) -> None:
    metric = make().to("cuda")
    loss = torch.rand((), device="cuda")
    with no_synchronisation():
        for _ in range(3 * WINDOW):
            metric(loss, weight=8)
    torch.testing.assert_close(metric.compute(), loss)


def test_windowed_adds_no_synchronisation_to_its_metric() -> None:
    metric = Windowed(MeanMetric(nan_strategy="disable"), WINDOW).to("cuda")
    loss = torch.rand(16, device="cuda")
    with no_synchronisation():
        for _ in range(WINDOW - 1):
            assert metric(loss) is None
    torch.testing.assert_close(metric(loss), loss.mean())
