"""Bad constructor arguments and bad update inputs raise at once, and a rejected update changes nothing."""

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torchmetrics import MeanMetric, MetricCollection

from windowmetrics import EMALoss, Windowed, WindowedMean, WindowedSum
from windowmetrics._window import WindowMetric

WINDOW_CASES = [
    (0, ValueError, r"`window` must be an int >= 1, got 0"),
    (-1, ValueError, r"`window` must be an int >= 1, got -1"),
    (2.5, TypeError, r"`window` must be an int >= 1, got 2\.5 \(float\)"),
    (3.0, TypeError, r"`window` must be an int >= 1, got 3\.0 \(float\)"),
    (True, TypeError, r"`window` must be an int >= 1, got True \(bool\)"),
    ("3", TypeError, r"`window` must be an int >= 1, got '3' \(str\)"),
    (None, TypeError, r"`window` must be an int >= 1, got None \(NoneType\)"),
]
FACTORIES: dict[str, Callable[[Any], WindowMetric]] = {
    "mean": lambda window: WindowedMean(window),
    "sum": lambda window: WindowedSum(window),
    "ema": lambda window: EMALoss(window=window),
    "windowed": lambda window: Windowed(MeanMetric(), window),
}


@pytest.mark.parametrize("make", FACTORIES.values(), ids=FACTORIES.keys())
@pytest.mark.parametrize(("window", "error", "message"), WINDOW_CASES)
def test_bad_window_is_rejected(make: Callable[[Any], WindowMetric], window: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make(window)


@pytest.mark.parametrize(
    ("decay", "error", "message"),
    [
        (-0.1, ValueError, r"`decay` must be a float with 0 <= decay < 1, got -0\.1"),
        (1.0, ValueError, r"`decay` must be a float with 0 <= decay < 1, got 1\.0"),
        (1, ValueError, r"`decay` must be a float with 0 <= decay < 1, got 1\.0"),
        (math.nan, ValueError, r"`decay` must be a float with 0 <= decay < 1, got nan"),
        (True, TypeError, r"`decay` must be a float .*, got True \(bool\)"),
        ("0.9", TypeError, r"`decay` must be a float .*, got '0\.9' \(str\)"),
        (None, TypeError, r"`decay` must be a float .*, got None"),
    ],
)
def test_bad_decay_is_rejected(decay: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        EMALoss(decay)


@pytest.mark.parametrize("metric_class", [WindowedMean, WindowedSum])
@pytest.mark.parametrize(
    ("nan_strategy", "error", "message"),
    [
        ("drop", ValueError, r"`nan_strategy` must be one of 'disable', 'ignore', 'warn', 'error' or a float.*'drop'"),
        (math.nan, ValueError, r"`nan_strategy` must not be NaN"),
        (True, TypeError, r"`nan_strategy` must be one of .*, got True \(bool\)"),
        (None, TypeError, r"`nan_strategy` must be one of .*, got None"),
        ([0.0], TypeError, r"`nan_strategy` must be one of .*, got \[0\.0\] \(list\)"),
    ],
)
def test_bad_nan_strategy_is_rejected(metric_class: type, nan_strategy: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        metric_class(2, nan_strategy=nan_strategy)
    with pytest.raises(error, match=message):
        EMALoss(nan_strategy=nan_strategy)


def test_unknown_metric_keyword_is_rejected_by_torchmetrics() -> None:
    with pytest.raises(ValueError, match="Unexpected keyword arguments: `windw`"):
        WindowedMean(2, windw=3)


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (MetricCollection([MeanMetric()]), r"`metric` must be a torchmetrics Metric, got a MetricCollection"),
        (torch.nn.Linear(2, 2), r"`metric` must be a torchmetrics Metric, got Linear"),
        ("accuracy", r"`metric` must be a torchmetrics Metric, got 'accuracy' \(str\)"),
    ],
)
def test_windowed_rejects_what_is_not_a_metric(metric: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        Windowed(metric, 2)


def snapshot(metric: WindowMetric) -> dict[str, Any]:
    """Everything observable about a metric's window: states, position, cache, boundary flag."""
    metric.persistent(True)
    states = {name: value.clone() for name, value in metric.state_dict().items()}
    cache = metric._forward_cache
    return {
        "states": states,
        "update_count": metric.update_count,
        "at_boundary": metric.at_boundary,
        "cache": None if cache is None else cache.clone(),
    }


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys()
    assert before["states"].keys() == after["states"].keys()
    for name, value in before["states"].items():
        torch.testing.assert_close(after["states"][name], value, equal_nan=True, rtol=0, atol=0, msg=name)
    assert after["update_count"] == before["update_count"]
    assert after["at_boundary"] == before["at_boundary"]
    torch.testing.assert_close(after["cache"], before["cache"], equal_nan=True, rtol=0, atol=0)


BAD_UPDATES: list[tuple[tuple[Any, ...], dict[str, Any], type[Exception], str]] = [
    (("loss",), {}, TypeError, r"`value` must be a real number or a real-valued tensor, got 'loss' \(str\)"),
    ((None,), {}, TypeError, r"`value` must be a real number or a real-valued tensor, got None \(NoneType\)"),
    ((["a", "b"],), {}, TypeError, r"`value` must be a real number .*, got \['a', 'b'\] \(list\)"),
    (([1.0, 2.0],), {}, TypeError, r"`value` must be a real number .*, got \[1\.0, 2\.0\] \(list\)"),
    ((True,), {}, TypeError, r"`value` must be a real number .*, got True \(bool\)"),
    ((torch.ones(2, dtype=torch.complex64),), {}, TypeError, r"`value` must be real-valued, got a tensor of shape"),
    ((torch.ones(2), torch.ones(3)), {}, ValueError, r"`weight` of shape \(3,\) does not broadcast to `value` of"),
    ((torch.ones(2), torch.ones(2, 2)), {}, ValueError, r"`weight` of shape \(2, 2\) does not broadcast"),
    ((1.0, torch.ones(2)), {}, ValueError, r"`weight` of shape \(2,\) does not broadcast to `value` of shape \(\)"),
    ((1.0, "2"), {}, TypeError, r"`weight` must be a real number or a real-valued tensor, got '2' \(str\)"),
    ((1.0, None), {}, TypeError, r"`weight` must be a real number .*, got None"),
    ((1.0, False), {}, TypeError, r"`weight` must be a real number .*, got False \(bool\)"),
    ((torch.ones(2), torch.ones(2, dtype=torch.complex64)), {}, TypeError, r"`weight` must be real-valued"),
    ((torch.ones(2, device="meta"),), {}, ValueError, r"`value` is on meta but the metric is on cpu"),
]


@pytest.mark.parametrize(("args", "kwargs", "error", "message"), BAD_UPDATES)
@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
@pytest.mark.parametrize(
    ("make", "final"),
    [(lambda: WindowedMean(3), 5.0), (lambda: EMALoss(0.5, window=3), (0.25 * 2 + 0.5 * 5) / 0.75)],
    ids=["mean", "ema"],
)
def test_bad_update_raises_and_changes_nothing(
    make: Callable[[], WindowMetric],
    final: float,
    use_forward: bool,
    args: tuple,
    kwargs: dict,
    error: type,
    message: str,
) -> None:
    metric = make()
    for value in (1.0, 2.0, 3.0, 4.0):  # one window closed, one open
        metric.update(value)
    before = snapshot(metric)
    with pytest.raises(error, match=message):
        (metric if use_forward else metric.update)(*args, **kwargs)
    assert_unchanged(before, snapshot(metric))
    metric.update(5.0)  # and it goes on as if nothing had happened: windows (1, 2, 3) and (4, 5, 6)
    metric.update(6.0)
    assert metric.window_value == torch.tensor(final)


@pytest.mark.parametrize(("args", "error", "message"), [(a, e, m) for a, k, e, m in BAD_UPDATES if len(a) == 1])
def test_windowed_sum_rejects_bad_values_and_changes_nothing(args: tuple, error: type, message: str) -> None:
    metric = WindowedSum(2)
    metric.update(1.0)
    before = snapshot(metric)
    with pytest.raises(error, match=message):
        metric(*args)
    assert_unchanged(before, snapshot(metric))


def test_windowed_sum_takes_no_weight() -> None:
    with pytest.raises(TypeError, match="positional argument"):
        WindowedSum(2).update(1.0, 2.0)  # type: ignore[call-arg]


def test_windowed_leaves_its_position_when_the_wrapped_update_rejects_the_input() -> None:
    metric = Windowed(MeanMetric(nan_strategy="error"), 2)
    metric.update(1.0)
    with pytest.raises(RuntimeError, match="nan"):
        metric.update(math.nan)
    assert metric.update_count == 1
    assert metric(3.0) == torch.tensor(2.0)


def test_nan_under_error_strategy_discards_the_window_and_keeps_the_latest_value() -> None:
    metric = WindowedMean(1, nan_strategy="error")
    metric.update(2.0)
    before = snapshot(metric)
    with pytest.raises(ValueError, match=r"^1 NaN element\(s\) in the window \(nan_strategy='error'\)$"):
        metric.update(math.nan)
    after = snapshot(metric)
    # With window=1 the discarded window is the NaN update itself: the window's sums and the latest value are as
    # before; the since-reset aggregate counts the NaN element (compute() reports it).
    for name in ("value_sum", "weight_sum", "nan_count"):
        assert torch.equal(after["states"][name][0], before["states"][name][0])
    assert after["states"]["latest"] == before["states"]["latest"]
    assert after["states"]["nan_count"][1] == before["states"]["nan_count"][1] + 1
    assert after["cache"] == before["cache"] == torch.tensor(2.0)
    # The call counted, as every call does, and closed no window.
    assert after["update_count"] == before["update_count"] + 1
    assert after["at_boundary"] is False
    assert metric(4.0) == torch.tensor(4.0)
