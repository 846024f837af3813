"""MetricCollection with its default compute groups: every member reports its own right values."""

import copy
import random
from collections.abc import Callable

import pytest
import torch
from torchmetrics import MeanMetric, Metric, MetricCollection, SumMetric

from windowmetrics import EMALoss, Windowed, WindowedMean, WindowedSum

ValueMetrics = Callable[[], dict[str, Metric]]

MEMBERS: ValueMetrics = lambda: {  # noqa: E731  # a factory, so that every test gets fresh metrics
    "mean_3": WindowedMean(3),
    "mean_3_again": WindowedMean(3),  # identically configured: kept apart from mean_3 all the same
    "mean_5": WindowedMean(5),
    "mean_3_ignore": WindowedMean(3, nan_strategy="ignore"),
    "sum_3": WindowedSum(3),
    "ema_09": EMALoss(0.9, window=3),
    "ema_05": EMALoss(0.5, window=3),
    "running": MeanMetric(),
    "windowed_mean_3": Windowed(MeanMetric(), 3),
    "windowed_sum_3": Windowed(SumMetric(), 3),
}


def values(seed: int, count: int) -> list[torch.Tensor]:
    rng = random.Random(seed)
    return [torch.tensor([rng.uniform(0, 10) for _ in range(rng.randint(1, 4))]) for _ in range(count)]


def observe(metric: Metric) -> tuple:
    cache = metric._forward_cache
    return (
        None if cache is None else cache.clone(),
        metric.compute().clone(),
        getattr(metric, "at_boundary", None),
    )


def assert_same(observed: tuple, expected: tuple, name: str) -> None:
    assert len(observed) == len(expected)
    for actual, wanted in zip(observed, expected, strict=True):
        if isinstance(wanted, torch.Tensor):
            torch.testing.assert_close(actual, wanted, rtol=0, atol=0, equal_nan=True, msg=name)
        else:
            assert actual == wanted, name


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("copy_state", [False, True], ids=["by reference (Lightning)", "copied"])
def test_members_updated_through_the_collection_report_like_standalone_metrics(seed: int, copy_state: bool) -> None:
    collection = MetricCollection({**MEMBERS()})
    standalone = MEMBERS()
    for index, value in enumerate(values(seed, 14)):
        collection.update(value)
        for metric in standalone.values():
            metric.update(value)
        if index == 0:
            groups = sorted(sorted(group) for group in collection.compute_groups.values())
            # a window's position is no registered state, which is all that compute groups share: never merged
            assert all(len(group) == 1 for group in groups)
        for name, member in collection.items(keep_base=True, copy_state=copy_state):
            assert_same(observe(member), observe(standalone[name]), name)


@pytest.mark.parametrize("seed", range(3))
def test_forward_through_the_collection_matches_standalone_metrics(seed: int) -> None:
    collection = MetricCollection({**MEMBERS()})
    standalone = MEMBERS()
    for value in values(seed, 10):
        returned = collection(value)
        for name, metric in standalone.items():
            expected = metric(value)
            if expected is None:
                assert returned[name] is None, name
            else:
                torch.testing.assert_close(returned[name], expected, rtol=0, atol=0, msg=name)


def test_update_then_forward_on_identical_members_counts_each_value_once() -> None:
    collection = MetricCollection({"first": WindowedSum(2), "second": WindowedSum(2)})
    collection.update(torch.tensor(1.0))  # forms the compute groups: one per member
    assert sorted(collection.compute_groups.values()) == [["first"], ["second"]]
    collection.update(torch.tensor(2.0))
    returned = collection(torch.tensor(10.0))  # forward goes to each member, on the shared states
    assert returned["first"] == returned["second"] == torch.tensor(3.0)
    returned = collection(torch.tensor(20.0))
    assert returned["first"] == returned["second"] == torch.tensor(30.0)


def test_differently_configured_metrics_fed_the_same_data_never_merge() -> None:
    collection = MetricCollection(
        {
            "mean_2": WindowedMean(2),
            "mean_4": WindowedMean(4),
            "sum_2": WindowedSum(2),
            "ema_2": EMALoss(0.9, window=2),
            "ema_2_slow": EMALoss(0.99, window=2),
            "wrapped_a": Windowed(MeanMetric(), 2),
            "wrapped_b": Windowed(MeanMetric(), 2),
        }
    )
    collection.update(torch.tensor(1.0))
    assert len(collection.compute_groups) == 7


def test_a_cloned_collection_continues_like_the_original() -> None:
    collection = MetricCollection({**MEMBERS()}, prefix="train/")
    for value in values(0, 4):
        collection.update(value)
    clone = collection.clone(prefix="val/")
    original = copy.deepcopy(collection)
    for value in values(1, 5):
        clone.update(value)
        original.update(value)
    computed, cloned = original.compute(), clone.compute()
    for name, value in computed.items():
        torch.testing.assert_close(cloned["val/" + name.removeprefix("train/")], value, rtol=0, atol=0)
