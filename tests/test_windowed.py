"""Windowed(metric, window) against the same metric computed on each window's concatenated data."""

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torchmetrics import MeanMetric, MeanSquaredError, Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecisionRecallCurve,
)

from windowmetrics import Windowed

Batch = tuple[torch.Tensor, ...]

CASES: dict[str, tuple[Callable[[], Metric], Callable[[random.Random], Batch]]] = {
    "accuracy": (
        lambda: MulticlassAccuracy(num_classes=4),
        lambda rng: _labels(rng, 4),
    ),
    "f1": (
        lambda: MulticlassF1Score(num_classes=3, average="macro"),
        lambda rng: _labels(rng, 3),
    ),
    "mse": (
        MeanSquaredError,
        lambda rng: _regression(rng),
    ),
    "auroc": (  # list states: the window's predictions are concatenated
        BinaryAUROC,
        lambda rng: _scores(rng),
    ),
    "mean": (
        MeanMetric,
        lambda rng: (torch.rand(rng.randint(1, 9)),),
    ),
}


def _labels(rng: random.Random, classes: int) -> Batch:
    size = rng.randint(1, 9)
    return (
        torch.tensor([rng.randrange(classes) for _ in range(size)]),
        torch.tensor([rng.randrange(classes) for _ in range(size)]),
    )


def _regression(rng: random.Random) -> Batch:
    size = rng.randint(1, 9)
    return torch.tensor([rng.uniform(-1, 1) for _ in range(size)]), torch.tensor(
        [rng.uniform(-1, 1) for _ in range(size)]
    )


def _scores(rng: random.Random) -> Batch:
    size = rng.randint(2, 9)
    targets = [0, 1] + [rng.randrange(2) for _ in range(size - 2)]  # both classes in every batch
    return torch.tensor([rng.random() for _ in range(size)]), torch.tensor(targets)


def on_concatenated(make: Callable[[], Metric], batches: list[Batch]) -> torch.Tensor:
    """The brute-force value: one fresh metric, one update with the window's batches concatenated."""
    reference = make()
    reference.update(*(torch.cat(parts) for parts in zip(*batches, strict=True)))
    value: torch.Tensor = reference.compute()
    return value


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
def test_each_window_equals_the_metric_on_the_window_data(name: str, seed: int, use_forward: bool) -> None:
    make, batch_of = CASES[name]
    rng = random.Random(seed)
    window = rng.randint(1, 4)
    metric = Windowed(make(), window)
    batches = [batch_of(rng) for _ in range(rng.randint(1, 13))]
    latest = None
    for count, batch in enumerate(batches, 1):
        if use_forward:
            returned = metric(*batch)
        else:
            metric.update(*batch)
            returned = metric._forward_cache
        start = (count - 1) // window * window
        if count % window == 0:
            latest = on_concatenated(make, batches[start:count])
        assert metric.at_boundary == (count % window == 0)
        if latest is None:
            assert returned is None
            torch.testing.assert_close(metric.compute(), on_concatenated(make, batches[:count]))
        else:
            torch.testing.assert_close(returned, latest)
            torch.testing.assert_close(metric.compute(), latest)


def test_a_window_is_not_an_average_of_batch_values() -> None:
    accuracy = Windowed(MulticlassAccuracy(num_classes=2, average="micro"), window=2)
    accuracy.update(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0]))  # 3 of 4 right
    value = accuracy(torch.tensor([1]), torch.tensor([1]))  # 1 of 1 right
    assert value == torch.tensor(4 / 5)
    assert value != torch.tensor((3 / 4 + 1) / 2)  # the seeds' average of batch accuracies


def test_reset_clears_the_window_the_value_and_the_wrapped_metric() -> None:
    metric = Windowed(MeanMetric(), 2)
    for value in (1.0, 2.0, 3.0):
        metric.update(value)
    metric.reset()
    assert metric._forward_cache is None
    assert metric.metric.update_count == 0
    assert metric(10.0) is None
    assert metric(20.0) == torch.tensor(15.0)


def test_list_states_round_trip_through_a_checkpoint_mid_window(tmp_path: Path) -> None:
    rng = random.Random(0)
    batches = [_scores(rng) for _ in range(7)]
    uninterrupted, before, after = Windowed(BinaryAUROC(), 3), Windowed(BinaryAUROC(), 3), Windowed(BinaryAUROC(), 3)
    expected = [uninterrupted(*batch) for batch in batches]
    before.persistent(True)
    for batch in batches[:4]:
        before.update(*batch)
    torch.save(before.state_dict(), tmp_path / "auroc.pt")
    after.persistent(True)
    after.load_state_dict(torch.load(tmp_path / "auroc.pt"))
    for batch, wanted in zip(batches[4:], expected[4:], strict=True):
        torch.testing.assert_close(after(*batch), wanted)


def test_a_metric_that_computes_no_tensor_is_refused_at_the_boundary_and_the_window_discarded() -> None:
    metric = Windowed(MulticlassPrecisionRecallCurve(num_classes=3, thresholds=5), 2)
    batch = (torch.rand(4, 3).softmax(-1), torch.tensor([0, 1, 2, 0]))
    metric.update(*batch)
    with pytest.raises(TypeError, match=r"Windowed needs a metric whose compute\(\) returns a tensor; .*tuple"):
        metric.update(*batch)
    assert metric.metric.update_count == 0
    assert not metric.at_boundary


def test_in_a_collection_beside_the_plain_metric_and_another_windowed_one() -> None:
    collection = MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes=3),
            "accuracy_window_2": Windowed(MulticlassAccuracy(num_classes=3), 2),
            "accuracy_window_3": Windowed(MulticlassAccuracy(num_classes=3), 3),
            "f1_window_2": Windowed(MulticlassF1Score(num_classes=3), 2),
        }
    )
    rng = random.Random(1)
    batches = [_labels(rng, 3) for _ in range(6)]
    for batch in batches:
        collection.update(*batch)
    computed = collection.compute()
    torch.testing.assert_close(computed["accuracy"], on_concatenated(lambda: MulticlassAccuracy(3), batches))
    torch.testing.assert_close(
        computed["accuracy_window_2"], on_concatenated(lambda: MulticlassAccuracy(3), batches[4:])
    )
    torch.testing.assert_close(
        computed["accuracy_window_3"], on_concatenated(lambda: MulticlassAccuracy(3), batches[3:])
    )
    torch.testing.assert_close(computed["f1_window_2"], on_concatenated(lambda: MulticlassF1Score(3), batches[4:]))
