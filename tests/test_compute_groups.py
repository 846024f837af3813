"""Compute groups listed by hand, and weights of any sign: never a wrong number.

A ``MetricCollection`` updates only the first member of a compute group and gives the others its registered states
and its update count. A window metric's position is not a registered state, so a hand-listed group would report
another metric's windows (the issue saw NaN then 5.0 where 1.5 then 3.5 was right): the collection's first update
is refused instead, with an error that says why. ``compute_groups=True`` (the default) never groups them.
"""

from collections.abc import Callable

import pytest
import torch
from torchmetrics import MetricCollection, SumMetric

from tests.reference import Call, mean_of
from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedMin, WindowedSum
from windowmetrics._window import WindowMetric

MAKERS: dict[str, Callable[[], WindowMetric]] = {
    "WindowedMean": lambda: WindowedMean(2),
    "WindowedSum": lambda: WindowedSum(2),
    "EMALoss": lambda: EMALoss(0.5, window=2),
    "WindowedMax": lambda: WindowedMax(2),
    "WindowedMin": lambda: WindowedMin(2),
    "Windowed": lambda: Windowed(SumMetric(), 2),
}


@pytest.mark.parametrize("name", MAKERS)
def test_a_hand_listed_compute_group_is_refused_when_it_first_shares_states(name: str) -> None:
    """torchmetrics >= 1.4 shares the first member's states at the first update; 1.3 only updates the first member
    (the others show no value) and shares the states at the first ``compute()``."""
    a, b = MAKERS[name](), MAKERS[name]()
    collection = MetricCollection({"a": a, "b": b}, compute_groups=[["a", "b"]])

    def use_the_collection() -> None:
        for value in (1.0, 2.0, 3.0):
            collection.update(torch.tensor(value))
            assert b.window_value is None  # never a value that is not b's own
        collection.compute()

    with pytest.raises(ValueError, match=r"cannot share the states of another metric in a MetricCollection compute"):
        use_the_collection()


@pytest.mark.parametrize("name", MAKERS)
def test_without_hand_listed_groups_every_member_reports_what_it_reports_alone(name: str) -> None:
    collection = MetricCollection({"a": MAKERS[name](), "b": MAKERS[name]()})
    alone = MAKERS[name]()
    for value in (1.0, 2.0, 3.0, 4.0, 5.0):
        collection.update(torch.tensor(value))
        alone.update(torch.tensor(value))
        for member in ("a", "b"):
            torch.testing.assert_close(collection[member]._forward_cache, alone._forward_cache, equal_nan=True)
    computed = collection.compute()
    for member in ("a", "b"):
        torch.testing.assert_close(computed[member], alone.compute(), equal_nan=True)
    assert all(len(group) == 1 for group in collection.compute_groups.values())


def test_the_issues_collection_reports_the_windows_of_each_member() -> None:
    a, b = WindowedMean(2), WindowedMean(2)
    collection = MetricCollection({"a": a, "b": b})
    shown = []
    for value in (1.0, 2.0, 3.0, 4.0, 5.0):
        collection.update(torch.tensor(value))
        shown.append(tuple(None if metric.window_value is None else metric.window_value.item() for metric in (a, b)))
    assert shown == [(None, None), (1.5, 1.5), (1.5, 1.5), (3.5, 3.5), (3.5, 3.5)]


def test_negative_weights_are_taken_as_given() -> None:
    """A weighted mean with weights of either sign is ``sum(v * w) / sum(w)``: nothing checks the sign, and a window
    whose weights sum to zero is worth what the division gives (inf or NaN), as the docstring says."""
    metric = WindowedMean(3)
    calls: list[Call] = [(torch.tensor([1.0, 2.0]), torch.tensor([2.0, -1.0])), (4.0, 3.0), (torch.tensor(5.0), -2.0)]
    for value, weight in calls:
        metric.update(value, weight)
    assert metric.window_value == torch.tensor(mean_of(calls))
    balanced: list[Call] = [(1.0, 1.0), (2.0, -1.0), (3.0, 0.0)]  # weights that sum to zero
    for value, weight in balanced:
        metric.update(value, weight)
    assert metric.window_value == torch.tensor(-float("inf"))  # (1 - 2 + 0) / 0
    assert metric.compute() == torch.tensor(mean_of(calls + balanced))
