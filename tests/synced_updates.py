"""The metrics, inputs and worker of the tests of updates while synchronised in a real process group.

They live apart from ``tests/test_protocol.py`` so that the spawned processes import only what they need.
"""

from collections.abc import Callable
from typing import Any

from torchmetrics import Metric, SumMetric
from torchmetrics.utilities.exceptions import TorchMetricsUserError

from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedMin, WindowedSum
from windowmetrics._window import WindowMetric

FACTORIES: dict[str, Callable[[], WindowMetric]] = {
    "mean": lambda: WindowedMean(3),
    "sum": lambda: WindowedSum(3),
    "ema": lambda: EMALoss(0.5, window=3),
    "max": lambda: WindowedMax(3),
    "min": lambda: WindowedMin(3),
    "windowed": lambda: Windowed(SumMetric(), 3),
}
VALUES = [2.0, 5.0, 1.0, 7.0, 3.0, 4.0, 8.0]


def all_states(metric: Metric) -> dict[str, Any]:
    """The registered states of the metric and of any metric it wraps, cloned, and the window's position.

    ``weight_sum`` includes the Python-number weights that a metric keeps apart until a boundary, ``compute()``,
    ``sync()`` or ``state_dict()`` adds them to both of its elements: the sum of every weight given.
    """
    found: dict[str, Any] = {}
    for prefix, module in metric.named_modules():
        if isinstance(module, Metric):
            for key in module._defaults:
                found[f"{prefix}.{key}"] = getattr(module, key).clone()
            found[f"{prefix}.update_count"] = module.update_count
    if ".weight_sum" in found:
        found[".weight_sum"] += float(metric.__dict__.get("_number_weights", 0.0))
    if isinstance(metric, WindowMetric):
        found["at_boundary"] = metric.at_boundary
        cache = metric._forward_cache
        found["forward_cache"] = None if cache is None else cache.clone()
    return found


def synced_updates_worker(rank: int) -> dict[str, dict[str, Any]]:
    """In each process of a two-process gloo group, for each metric: update, ``sync()``, try ``update`` and
    ``forward``, ``unsync()``; return the states at each stage and the refusals."""
    results: dict[str, dict[str, Any]] = {}
    for name, make in FACTORIES.items():
        metric = make()
        for value in VALUES[:4]:  # a window, and one update of the next
            metric.update(value * (rank + 1))
        run: dict[str, Any] = {"local": all_states(metric)}
        metric.sync()
        run["synced"] = all_states(metric)
        run["refusals"] = []
        for attempt in (metric.update, metric):
            try:
                attempt(100.0)
            except TorchMetricsUserError as error:
                run["refusals"].append(str(error))
        run["after"] = all_states(metric)
        metric.unsync()
        run["unsynced"] = all_states(metric)
        results[name] = run
    return results
