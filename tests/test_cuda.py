"""On a CUDA device: no update that closes no window synchronises the host with the device.

``torch.cuda.set_sync_debug_mode("error")`` makes every synchronising CUDA call raise. Skipped, visibly, where
there is no CUDA device (as on CI); run it on a machine with one.
"""

from collections.abc import Callable

import pytest
import torch
from torchmetrics import MeanMetric

from windowmetrics import EMALoss, Windowed, WindowedMean, WindowedSum
from windowmetrics.window import WindowMetric

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

WINDOW = 4


def on_cpu(value: object) -> object:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def calls(device: torch.device) -> list[tuple[object, object]]:
    generator = torch.Generator(device=device).manual_seed(0)
    vector = torch.rand(256, device=device, generator=generator, requires_grad=True)
    return [
        (vector.mean() * 2, 1.0),  # a scalar loss that requires grad
        (vector * 3, 32),  # a per-sample loss, a batch size as weight
        (torch.rand(8, 4, device=device, generator=generator), torch.rand(4, device=device, generator=generator)),
        (0.5, 2.0),  # Python numbers
    ]


@pytest.mark.parametrize("nan_strategy", ["disable", "ignore", "warn", "error", 0.0])
@pytest.mark.parametrize("metric_class", [WindowedMean, WindowedSum, EMALoss])
def test_updates_between_boundaries_do_not_synchronise(metric_class: type, nan_strategy: object) -> None:
    device = torch.device("cuda")
    metric: WindowMetric = metric_class(window=WINDOW, nan_strategy=nan_strategy).to(device)
    reference: WindowMetric = metric_class(window=WINDOW, nan_strategy=nan_strategy)
    inputs = calls(device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for value, weight in inputs[: WINDOW - 1]:
            args = (value,) if metric_class is WindowedSum else (value, weight)
            assert metric(*args) is None
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for value, weight in inputs:
        reference(*((on_cpu(value),) if metric_class is WindowedSum else (on_cpu(value), on_cpu(weight))))
    value, weight = inputs[WINDOW - 1]
    result = metric(value) if metric_class is WindowedSum else metric(value, weight)
    assert result is not None
    assert result.device.type == "cuda"
    torch.testing.assert_close(result.cpu(), reference.compute())


@pytest.mark.parametrize("make", [lambda: WindowedMean(WINDOW), lambda: EMALoss(0.9, window=WINDOW)])
def test_with_nan_strategy_disable_even_a_boundary_does_not_synchronise(make: Callable[[], WindowMetric]) -> None:
    metric = make().to("cuda")
    loss = torch.rand((), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3 * WINDOW):
            metric(loss, weight=8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(metric.compute(), loss)


def test_windowed_adds_no_synchronisation_to_its_metric() -> None:
    metric = Windowed(MeanMetric(nan_strategy="disable"), WINDOW).to("cuda")
    loss = torch.rand(16, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(WINDOW - 1):
            assert metric(loss) is None
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(metric(loss), loss.mean())
