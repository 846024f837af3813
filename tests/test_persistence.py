"""state_dict round trips (on disk), refused foreign states, pickle, deepcopy, clone."""

import copy
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedMin, WindowedSum
from windowmetrics._window import WindowMetric

FACTORIES: dict[str, Callable[[], WindowMetric]] = {
    "mean": lambda: WindowedMean(4),
    "sum": lambda: WindowedSum(4),
    "ema": lambda: EMALoss(0.9, window=3),
    "max": lambda: WindowedMax(4),
    "min": lambda: WindowedMin(3, nan_strategy="ignore"),
    "windowed": lambda: Windowed(MulticlassAccuracy(num_classes=3), 4),
    "windowed-mean": lambda: Windowed(MeanMetric(), 3),
}
POSITION_FIELDS = ("config", "position", "updates", "at_boundary", "has_latest", "rank")


def inputs(seed: int, count: int, metric: WindowMetric) -> list[tuple]:
    generator = torch.Generator().manual_seed(seed)
    calls: list[tuple] = []
    for _ in range(count):
        size = int(torch.randint(1, 5, (), generator=generator))
        if isinstance(metric, Windowed) and isinstance(metric.metric, MulticlassAccuracy):
            calls.append((torch.randint(0, 3, (size,), generator=generator),) * 2)
            calls[-1] = (calls[-1][0], torch.randint(0, 3, (size,), generator=generator))
        elif isinstance(metric, (WindowedSum, WindowedMax, WindowedMin, Windowed)):
            calls.append((torch.rand(size, generator=generator),))
        else:
            calls.append((torch.rand(size, generator=generator), float(size)))
    return calls


def outputs(metric: WindowMetric, calls: list[tuple]) -> list[Any]:
    observed = []
    for call in calls:
        returned = metric(*call)
        observed.append((None if returned is None else returned.clone(), metric.at_boundary, metric.compute()))
    return observed


def assert_same_outputs(first: list[Any], second: list[Any]) -> None:
    assert len(first) == len(second)
    for (returned_a, boundary_a, computed_a), (returned_b, boundary_b, computed_b) in zip(first, second, strict=True):
        assert boundary_a == boundary_b
        torch.testing.assert_close(returned_a, returned_b, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(computed_a, computed_b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("split", [1, 5, 6, 9])
def test_a_checkpoint_mid_window_resumes_exactly(name: str, split: int, tmp_path: Path) -> None:
    uninterrupted, before, after = FACTORIES[name](), FACTORIES[name](), FACTORIES[name]()
    calls = inputs(split, 14, uninterrupted)
    expected = outputs(uninterrupted, calls)
    before.persistent(True)
    outputs(before, calls[:split])
    torch.save(before.state_dict(), tmp_path / "metric.pt")
    after.persistent(True)
    after.load_state_dict(torch.load(tmp_path / "metric.pt"))
    assert after.update_count == split
    assert after.window_value is None if split < after.window else after.window_value is not None
    # what the resumed run emits, window values and compute() after every update, is the uninterrupted run's
    assert_same_outputs(outputs(after, calls[split:]), expected[split:])


@pytest.mark.parametrize("name", FACTORIES)
def test_a_checkpoint_holds_the_states_and_the_position_as_named_0_dim_int64_entries(name: str) -> None:
    metric = FACTORIES[name]()
    metric.persistent(True)
    outputs(metric, inputs(0, 5, metric))
    saved = metric.state_dict()
    for field in POSITION_FIELDS:
        entry = saved[f"window_{field}"]
        assert entry.dtype == torch.int64, field
        assert entry.shape == (), field
    assert saved["window_position"] == 5 % metric.window
    assert saved["window_updates"] == 5
    assert saved["window_has_latest"] == 1
    assert saved["window_rank"] == 0
    assert "window_state" not in saved
    assert "unshared" not in saved
    assert {f"window_{field}" for field in POSITION_FIELDS} <= {key for key in saved if key.startswith("window_")}
    for key in saved:
        if key.startswith("window_"):  # the position's fields, and any a class adds (Windowed's wrapped counts)
            assert saved[key].dtype == torch.int64, key
            assert saved[key].shape == (), key
    for key in metric._defaults:
        if key != "unshared":
            assert key in saved, key


@pytest.mark.parametrize("name", FACTORIES)
def test_metrics_loaded_from_one_checkpoint_share_no_storage_with_it_or_each_other(name: str) -> None:
    source = FACTORIES[name]()
    source.persistent(True)
    calls = inputs(3, 9, source)
    outputs(source, calls[:5])
    checkpoint = source.state_dict()
    saved = copy.deepcopy(checkpoint)
    first, second = FACTORIES[name](), FACTORIES[name]()
    for metric in (first, second):
        metric.persistent(True)
        metric.load_state_dict(checkpoint)
    outputs(first, calls[5:])
    for key, value in saved.items():  # the checkpoint is as it was saved
        torch.testing.assert_close(checkpoint[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
    assert_same_outputs(outputs(second, calls[5:]), outputs(source, calls[5:]))


def test_states_are_not_saved_unless_persistent() -> None:
    metric = WindowedMean(2)
    metric.update(1.0)
    assert metric.state_dict() == {}


@pytest.mark.parametrize(
    ("saved", "loaded"),
    [
        (lambda: WindowedMean(3), lambda: WindowedMean(5)),
        (lambda: WindowedMean(3), lambda: WindowedSum(3)),
        (lambda: WindowedMean(3), lambda: WindowedMean(3, nan_strategy="ignore")),
        (lambda: EMALoss(0.9), lambda: EMALoss(0.99)),
        (lambda: Windowed(MeanMetric(), 3), lambda: Windowed(MeanMetric(), 4)),
        (lambda: Windowed(MeanMetric(), 3), lambda: Windowed(SumMetric(), 3)),
        (lambda: WindowedMax(3), lambda: WindowedMin(3)),
        (lambda: WindowedMax(3), lambda: WindowedMax(3, nan_strategy="ignore")),
        (lambda: WindowedMin(3), lambda: WindowedMin(2)),
        (lambda: WindowedMin(3), lambda: WindowedMin(3, span_epochs=True)),
    ],
)
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "not-strict"])
def test_states_of_a_differently_configured_metric_are_refused(saved: Callable, loaded: Callable, strict: bool) -> None:
    """Refused under strict=True; left out with a warning under strict=False: the metric is as it was."""
    source, target = saved(), loaded()
    source.persistent(True)
    target.persistent(True)
    for value in (7.0, 2.0, 5.0, 1.0):
        source.update(value)
    target.update(1.0)
    before = copy.deepcopy(target.state_dict())
    message = r"window_config: the states were saved by a differently configured metric than \w+\("
    if strict:
        with pytest.raises(RuntimeError, match=message):
            target.load_state_dict(source.state_dict(), strict=True)
    else:
        with pytest.warns(UserWarning, match=message + r".*left out \(strict=False\)"):
            result = target.load_state_dict(source.state_dict(), strict=False)
        assert result.missing_keys == []
        assert result.unexpected_keys == []
    for key, value in target.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize(
    "duplicate",
    [copy.deepcopy, lambda metric: metric.clone(), lambda metric: pickle.loads(pickle.dumps(metric))],
    ids=["deepcopy", "clone", "pickle"],
)
def test_copies_behave_like_the_original(name: str, duplicate: Callable) -> None:
    original = FACTORIES[name]()
    calls = inputs(random.Random(name).randrange(1000), 12, original)
    outputs(original, calls[:5])
    copied = duplicate(original)
    assert_same_outputs(outputs(copied, calls[5:]), outputs(original, calls[5:]))


def test_a_copy_does_not_share_storage_with_the_original() -> None:
    original = Windowed(MulticlassAccuracy(num_classes=3, average="micro"), 3)
    original.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    copied = pickle.loads(pickle.dumps(original))
    copied.update(torch.tensor([2, 2]), torch.tensor([0, 1]))
    assert original.update_count == 1
    assert original.compute() == torch.tensor(1.0)
    assert copied.compute() == torch.tensor(0.5)
