"""The window contract of WindowedMean, WindowedSum and EMALoss against a brute-force reference."""

import math
import random
from collections.abc import Callable
from typing import Optional

import pytest
import torch

from tests.reference import Call, ema_of, expected_series, mean_of, random_calls, sum_of
from windowmetrics import EMALoss, WindowedMean, WindowedSum
from windowmetrics._window import WindowMetric

SEEDS = range(30)


def assert_value(actual: Optional[torch.Tensor], expected: Optional[float]) -> None:
    if expected is None:
        assert actual is None
        return
    assert actual is not None
    assert actual.dtype == torch.get_default_dtype()
    assert actual.shape == ()
    torch.testing.assert_close(actual, torch.tensor(expected), equal_nan=True, rtol=1e-6, atol=1e-6)


def run(metric: WindowMetric, calls: list[Call], weighted: bool, use_forward: bool) -> list[tuple]:
    """Feed the calls; after each, record what forward returned (or the forward cache) and compute()."""
    observed = []
    for value, weight in calls:
        args = (value, weight) if weighted else (value,)
        if use_forward:
            returned = metric(*args)
            assert returned is metric._forward_cache
        else:
            metric.update(*args)
            returned = metric._forward_cache
        observed.append((returned, metric.compute(), metric.at_boundary))
    return observed


def check_against_reference(
    metric: WindowMetric,
    calls: list[Call],
    weighted: bool,
    value_of: Callable,
    use_forward: bool,
    aggregate_of: Optional[Callable] = None,
) -> None:
    window = metric.window
    forwards, computes = expected_series(calls, window, value_of, aggregate_of)
    for index, (returned, computed, at_boundary) in enumerate(run(metric, calls, weighted, use_forward), 1):
        assert_value(returned, forwards[index - 1])
        assert_value(computed, computes[index - 1])
        assert at_boundary == (index % window == 0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
def test_windowed_mean_matches_reference(seed: int, use_forward: bool) -> None:
    rng = random.Random(seed)
    calls = random_calls(rng, rng.randint(1, 30))
    metric = WindowedMean(window=rng.randint(1, 7))
    check_against_reference(metric, calls, True, lambda windows: mean_of(windows[-1]), use_forward, mean_of)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
def test_windowed_sum_matches_reference(seed: int, use_forward: bool) -> None:
    rng = random.Random(seed)
    calls = random_calls(rng, rng.randint(1, 30), weighted=False)
    metric = WindowedSum(window=rng.randint(1, 7))
    check_against_reference(metric, calls, False, lambda windows: sum_of(windows[-1]), use_forward, sum_of)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
def test_ema_matches_reference(seed: int, use_forward: bool) -> None:
    rng = random.Random(seed)
    calls = random_calls(rng, rng.randint(1, 30))
    decay = rng.choice([0.0, 0.5, 0.9, 0.98])
    metric = EMALoss(decay, window=rng.randint(1, 5))
    check_against_reference(metric, calls, True, lambda windows: ema_of(windows, decay), use_forward)


def test_forward_is_none_until_the_first_window_then_repeats_the_latest() -> None:
    metric = WindowedMean(window=3)
    assert [metric(float(x)) for x in range(2)] == [None, None]
    assert metric(2.0) == torch.tensor(1.0)
    assert [metric(10.0).item(), metric(20.0).item()] == [1.0, 1.0]
    assert metric(30.0) == torch.tensor(20.0)


def test_per_sample_losses_give_the_per_sample_mean_not_a_mean_of_batch_means() -> None:
    batches = [torch.tensor([1.0, 1.0, 1.0]), torch.tensor([4.0])]
    per_sample = WindowedMean(window=2)
    batch_means = WindowedMean(window=2)
    for batch in batches:
        per_sample.update(batch)
        batch_means.update(batch.mean(), weight=len(batch))
    assert per_sample.compute() == batch_means.compute() == torch.tensor(7 / 4)
    assert torch.stack([batch.mean() for batch in batches]).mean() != torch.tensor(7 / 4)  # the seeds' answer


@pytest.mark.parametrize("metric", [WindowedMean(2), EMALoss(window=2)], ids=["mean", "ema"])
def test_compute_with_no_update_is_nan_with_torchmetrics_warning(metric: WindowMetric) -> None:
    with pytest.warns(UserWarning, match="compute.*before the ``update``"):
        assert math.isnan(metric.compute().item())


def test_sum_compute_with_no_update_is_zero() -> None:
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert WindowedSum(2).compute() == torch.tensor(0.0)


@pytest.mark.parametrize("make", [lambda: WindowedMean(3), lambda: WindowedSum(3), lambda: EMALoss(0.5, window=3)])
def test_reset_clears_everything(make: Callable[[], WindowMetric]) -> None:
    fresh, used = make(), make()
    for value in (1.0, 2.0, 3.0, 4.0):
        used.update(value)
    used.reset()
    assert not used.at_boundary
    assert used._forward_cache is None
    assert used.update_count == 0
    for value in (5.0, 6.0, 7.0, 8.0):
        assert used(value) == fresh(value) or used._forward_cache is fresh._forward_cache is None
        assert used.at_boundary == fresh.at_boundary
    assert used.compute() == fresh.compute()


def test_update_count_counts_every_call_whatever_the_shape() -> None:
    metric = WindowedMean(window=4)
    for value in (1.0, torch.zeros(0), torch.ones(5, 5), torch.tensor(2)):
        metric.update(value)
    assert metric.update_count == 4
    assert metric.at_boundary
    assert metric.compute() == torch.tensor(28 / 27)


def test_ema_first_value_is_the_first_window_mean_without_bias_towards_zero() -> None:
    metric = EMALoss(decay=0.99, window=2)
    metric.update(4.0)
    assert metric(torch.tensor([6.0, 8.0])) == torch.tensor(6.0)


def test_ema_with_decay_zero_is_the_window_mean() -> None:
    ema, mean = EMALoss(decay=0.0, window=3), WindowedMean(window=3)
    for value in range(10):
        assert ema(float(value)) == mean(float(value)) or ema._forward_cache is mean._forward_cache is None


def test_an_open_window_never_carries_into_the_next() -> None:
    metric = WindowedSum(window=2)
    values = [metric(1.0), metric(2.0), metric(100.0), metric(1000.0)]
    assert values[1] == torch.tensor(3.0)
    assert values[3] == torch.tensor(1100.0)
