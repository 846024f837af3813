"""nan_strategy: each strategy against the brute-force reference, and when it reports."""

import math
import random
import warnings
from collections.abc import Callable
from typing import Optional

import pytest
import torch

from tests.reference import Call, ema_of, expected_series, mean_of, random_calls, sum_of
from tests.test_window_contract import assert_value
from windowmetrics import EMALoss, WindowedMean, WindowedSum
from windowmetrics._nan_strategy import NanStrategyArg
from windowmetrics._window import WindowMetric


def with_nans(rng: random.Random, calls: list[Call]) -> list[Call]:
    """Put NaN into some floating values and weights."""
    result: list[Call] = []
    for value, weight in calls:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() and rng.random() < 0.4:
            value = value.clone()
            value.view(-1)[rng.randrange(value.numel())] = math.nan
        elif isinstance(value, float) and rng.random() < 0.2:
            value = math.nan
        if isinstance(weight, torch.Tensor) and weight.numel() and rng.random() < 0.2:
            weight = weight.clone()
            weight.view(-1)[0] = math.nan
        result.append((value, weight))
    return result


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("nan_strategy", ["disable", "ignore", "warn", 0.5, -3.0])
def test_strategies_match_the_reference(seed: int, nan_strategy: NanStrategyArg) -> None:
    rng = random.Random(seed)
    calls = with_nans(rng, random_calls(rng, rng.randint(1, 25)))
    unweighted: list[Call] = [(value, 1.0) for value, _ in calls]
    window, decay = rng.randint(1, 5), 0.5
    cases: list[tuple[WindowMetric, list[Call], Callable[[list[list[Call]]], float], Optional[Callable]]] = [
        (
            WindowedMean(window, nan_strategy=nan_strategy),
            calls,
            lambda w: mean_of(w[-1], nan_strategy),
            lambda c: mean_of(c, nan_strategy),
        ),
        (
            WindowedSum(window, nan_strategy=nan_strategy),
            unweighted,
            lambda w: sum_of(w[-1], nan_strategy),
            lambda c: sum_of(c, nan_strategy),
        ),
        (
            EMALoss(decay, window=window, nan_strategy=nan_strategy),
            calls,
            lambda w: ema_of(w, decay, nan_strategy),
            None,
        ),
    ]
    for metric, metric_calls, value_of, aggregate_of in cases:
        forwards, computes = expected_series(metric_calls, window, value_of, aggregate_of)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "warn" is checked on its own below
            for index, (value, weight) in enumerate(metric_calls):
                returned = metric(value) if isinstance(metric, WindowedSum) else metric(value, weight)
                assert_value(returned, forwards[index])
                assert_value(metric.compute(), computes[index])


def test_disable_propagates_nan_like_a_logged_loss() -> None:
    metric = WindowedMean(2)
    metric.update(torch.tensor([1.0, math.nan]))
    assert math.isnan(metric(1.0).item())
    assert metric(2.0) is not None
    assert metric(4.0) == torch.tensor(3.0)


def test_warn_reports_the_count_only_when_a_window_closes() -> None:
    metric = WindowedMean(3, nan_strategy="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on updates that close no window
        metric.update(torch.tensor([math.nan, 1.0, math.nan]))
        metric.update(torch.tensor(3.0), weight=torch.tensor(math.nan))
    with pytest.warns(UserWarning, match=r"^3 NaN element\(s\) in the window were ignored \(nan_strategy='warn'\)$"):
        assert metric(5.0) == torch.tensor(3.0)


def test_error_raises_at_the_boundary_discards_the_window_and_the_next_starts_clean() -> None:
    metric = WindowedSum(3, nan_strategy="error")
    for value in (1.0, 2.0, 3.0):
        metric.update(value)
    metric.update(torch.tensor([math.nan, math.nan]))  # no error yet: reading the count would synchronise
    metric.update(10.0)
    with pytest.raises(ValueError, match=r"^2 NaN element\(s\) in the window \(nan_strategy='error'\)$"):
        metric.update(20.0)
    # compute() covers every update since the reset, the discarded window's included: it still reports its NaNs
    with pytest.raises(ValueError, match=r"^2 NaN element\(s\) in the updates since the last reset"):
        metric.compute()
    assert not metric.at_boundary
    assert metric.window_value == torch.tensor(6.0)  # the latest window value is the last good window's
    assert [metric(v) for v in (100.0, 200.0, 300.0)][-1] == torch.tensor(600.0)
    assert metric.at_boundary


def test_error_on_a_partial_compute_raises_and_discards_nothing() -> None:
    metric = WindowedMean(3, nan_strategy="error")
    metric.update(math.nan)
    metric.update(4.0)
    with pytest.raises(
        ValueError, match=r"^1 NaN element\(s\) in the updates since the last reset \(nan_strategy='error'\)$"
    ):
        metric.compute()
    assert metric.update_count == 2
    with pytest.raises(ValueError, match=r"^1 NaN element\(s\) in the window \(nan_strategy='error'\)$"):
        metric.update(5.0)


def test_imputed_values_count_with_their_weight() -> None:
    metric = WindowedMean(2, nan_strategy=0.0)
    metric.update(torch.tensor([math.nan, 4.0]), weight=torch.tensor([3.0, 1.0]))
    assert metric(2.0, weight=4.0) == torch.tensor((0.0 * 3 + 4.0 * 1 + 2.0 * 4) / (3 + 1 + 4))


def test_ema_ignores_a_window_without_valid_elements() -> None:
    metric = EMALoss(0.5, window=2, nan_strategy="ignore")
    metric.update(2.0)
    assert metric(4.0) == torch.tensor(3.0)
    metric.update(math.nan)
    assert metric(torch.tensor([math.nan])) == torch.tensor(3.0)
    metric.update(5.0)
    assert metric(5.0) == torch.tensor((0.25 * 3.0 + 0.5 * 5.0) / 0.75)
