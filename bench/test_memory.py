"""Measure the memory of a metric's state at a short and a very long window, beside torchmetrics' ``RunningMean``.

Two measures per metric and window: the bytes of every state tensor in ``state_dict()`` with ``persistent(True)``,
and the Python heap that building the metric and ``UPDATES`` updates leave allocated (tracemalloc: it sees Python
objects, tensor objects included, but not the tensor storage that torch allocates, which the first measure counts).
Each row also times ``update`` at that window.
"""

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.aggregation import MeanMetric, RunningMean

from bench.names import HEAP_BYTES, MEAN_METRIC, MEMORY, MEMORY_WINDOWS, STATE_BYTES, windowed, wrapped
from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedSum

UPDATES = 1000
LOSS = torch.tensor(0.7)

BUILDERS: dict[str, Callable[[int], Metric]] = {
    "WindowedMean": WindowedMean,
    "WindowedSum": WindowedSum,
    "EMALoss": lambda window: EMALoss(window=window),
    "WindowedMax": WindowedMax,
    MEAN_METRIC: lambda window: Windowed(MeanMetric(), window),
    "RunningMean": lambda window: RunningMean(window=window),
}


def label(name: str, window: int) -> str:
    return wrapped(name, window) if name == MEAN_METRIC else windowed(name, window)


def state_bytes(metric: Metric) -> int:
    """Return the bytes of every state tensor that ``state_dict()`` saves with ``persistent(True)``."""
    metric.persistent(True)
    return sum(
        state.numel() * state.element_size() for state in metric.state_dict().values() if isinstance(state, Tensor)
    )


def built_and_updated(build: Callable[[int], Metric], window: int) -> tuple[Metric, int]:
    """Build the metric and update it ``UPDATES`` times; return it and the Python heap bytes left allocated."""
    gc.collect()
    tracemalloc.start()
    try:
        metric = build(window)
        for _ in range(UPDATES):
            metric.update(LOSS)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return metric, held


@pytest.mark.parametrize("window", MEMORY_WINDOWS)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_state_memory(benchmark: Any, name: str, window: int) -> None:
    built_and_updated(BUILDERS[name], min(MEMORY_WINDOWS))  # first calls allocate torch's and Python's caches
    metric, held = built_and_updated(BUILDERS[name], window)
    benchmark.group = MEMORY
    benchmark.extra_info.update({"label": label(name, window), STATE_BYTES: state_bytes(metric), HEAP_BYTES: held})
    benchmark(metric.update, LOSS)
