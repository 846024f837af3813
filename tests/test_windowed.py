"""Windowed(metric, window) against the same metric computed on each window's concatenated data."""

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torchmetrics import MeanMetric, MeanSquaredError, Metric, MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecisionRecallCurve,
)

import windowmetrics._window as window_module
from windowmetrics import Windowed
from windowmetrics._lightning import LightningReset
from windowmetrics.windowed import merges_exactly

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
            assert metric.window_value is None
        else:
            torch.testing.assert_close(returned, latest)
            torch.testing.assert_close(metric.window_value, latest)
        # compute(): the wrapped metric over everything since the reset, the window in progress included
        torch.testing.assert_close(metric.compute(), on_concatenated(make, batches[:count]))


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
    expected_total = uninterrupted.compute()
    before.persistent(True)
    for batch in batches[:4]:
        before.update(*batch)
    torch.save(before.state_dict(), tmp_path / "auroc.pt")
    after.persistent(True)
    after.load_state_dict(torch.load(tmp_path / "auroc.pt"))
    torch.testing.assert_close(after.compute(), on_concatenated(BinaryAUROC, batches[:4]))
    for batch, wanted in zip(batches[4:], expected[4:], strict=True):
        torch.testing.assert_close(after(*batch), wanted)
    torch.testing.assert_close(after.compute(), expected_total)


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
    accuracy = on_concatenated(lambda: MulticlassAccuracy(3), batches)
    for name in ("accuracy", "accuracy_window_2", "accuracy_window_3"):  # compute(): everything since the reset
        torch.testing.assert_close(computed[name], accuracy)
    torch.testing.assert_close(computed["f1_window_2"], on_concatenated(lambda: MulticlassF1Score(3), batches))
    windows = {
        "accuracy_window_2": on_concatenated(lambda: MulticlassAccuracy(3), batches[4:]),
        "accuracy_window_3": on_concatenated(lambda: MulticlassAccuracy(3), batches[3:]),
        "f1_window_2": on_concatenated(lambda: MulticlassF1Score(3), batches[4:]),
    }
    for name, wanted in windows.items():
        member = collection[name]
        assert isinstance(member, Windowed)
        torch.testing.assert_close(member.window_value, wanted)
    assert sorted(len(group) for group in collection.compute_groups.values()) == [1, 1, 1, 1]


# compute(): the wrapped metric over everything since the reset ------------------------------------------------


class RunningMean(Metric):
    """A mean that declares ``full_state_update=True``: its states are not merged, but updated beside the window's."""

    full_state_update = True
    total: torch.Tensor
    count: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor) -> None:
        self.total += value.double().sum()
        self.count += value.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class MeanOfBatchMeans(Metric):
    """States reduced by ``"mean"`` (and ``None``): merging two such metrics' states is not their union."""

    full_state_update = False
    batch_means: torch.Tensor
    batches: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("batch_means", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="mean")
        self.add_state("batches", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx=None)

    def update(self, value: torch.Tensor) -> None:
        self.batch_means += value.double().mean()
        self.batches += 1

    def compute(self) -> torch.Tensor:
        return self.batch_means / self.batches


def _values(rng: random.Random) -> Batch:
    return (torch.tensor([rng.uniform(-3, 3) for _ in range(rng.randint(1, 6))]),)


AGGREGATE_CASES: dict[str, tuple[Callable[[], Metric], Callable[[random.Random], Batch], bool]] = {
    # the wrapped metric, its batches, and whether Windowed merges the windows' states into the aggregate
    "accuracy (merged)": (lambda: MulticlassAccuracy(num_classes=4), lambda rng: _labels(rng, 4), True),
    "accuracy-micro (merged)": (lambda: MulticlassAccuracy(4, average="micro"), lambda rng: _labels(rng, 4), True),
    "mean (merged)": (MeanMetric, _values, True),
    "sum (merged)": (SumMetric, _values, True),
    "auroc, list states (merged)": (BinaryAUROC, _scores, True),
    "full_state_update=True (updated alongside)": (RunningMean, _values, False),
    "mean-reduced states (updated alongside)": (MeanOfBatchMeans, _values, False),
}


def batch_by_batch(make: Callable[[], Metric], batches: list[Batch]) -> torch.Tensor:
    """The brute force: a fresh metric fed the batches one update each (the metric's own semantics), then compute()."""
    reference = make()
    for batch in batches:
        reference.update(*batch)
    value: torch.Tensor = reference.compute()
    return value


def check_aggregate(make: Callable[[], Metric], batch_of: Callable[[random.Random], Batch], seed: int) -> None:
    rng = random.Random(seed)
    window = rng.randint(1, 4)
    metric = Windowed(make(), window)
    batches = [batch_of(rng) for _ in range(rng.randint(1, 14))]
    for count, batch in enumerate(batches, 1):
        if count % 2:
            metric(*batch)
        else:
            metric.update(*batch)
        torch.testing.assert_close(metric.compute(), batch_by_batch(make, batches[:count]), msg=f"after {count}")
        if count >= window:
            start = (count // window - 1) * window
            torch.testing.assert_close(metric.window_value, batch_by_batch(make, batches[start : start + window]))
        metric.compute()  # twice: compute() changes nothing
    torch.testing.assert_close(metric.compute(), batch_by_batch(make, batches))


@pytest.mark.parametrize("name", AGGREGATE_CASES)
@pytest.mark.parametrize("seed", range(6))
def test_compute_is_the_wrapped_metric_over_everything_since_the_reset(name: str, seed: int) -> None:
    make, batch_of, merged = AGGREGATE_CASES[name]
    merged = merged and hasattr(Metric, "merge_state")  # torchmetrics < 1.6 has none: every metric is copied
    assert merges_exactly(make()) is merged
    assert Windowed(make(), 2)._merges is merged
    check_aggregate(make, batch_of, seed)


@pytest.mark.parametrize("seed", range(4))
def test_compute_without_merge_state_as_torchmetrics_before_1_6(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchmetrics < 1.6 has no ``Metric.merge_state``: the aggregate is then updated beside the window."""
    monkeypatch.delattr(Metric, "merge_state", raising=False)
    assert not merges_exactly(accuracy_of_4())
    assert not Windowed(accuracy_of_4(), 2)._merges
    check_aggregate(accuracy_of_4, lambda rng: _labels(rng, 4), seed)


def accuracy_of_4() -> Metric:
    return MulticlassAccuracy(num_classes=4)


@pytest.mark.parametrize("name", AGGREGATE_CASES)
def test_reset_clears_the_aggregate(name: str) -> None:
    make, batch_of, _ = AGGREGATE_CASES[name]
    rng = random.Random(name)
    metric = Windowed(make(), 2)
    for _ in range(5):
        metric.update(*batch_of(rng))
    metric.reset()
    batches = [batch_of(rng) for _ in range(3)]
    for batch in batches:
        metric.update(*batch)
    torch.testing.assert_close(metric.compute(), batch_by_batch(make, batches))


@pytest.mark.parametrize("name", AGGREGATE_CASES)
def test_span_epochs_a_loop_end_reset_mid_window_starts_the_aggregate_and_leaves_the_window(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unit level (the Trainer tests are elsewhere): the reset that Lightning's logger connector performs at the
    end of an epoch, simulated here, clears the aggregate alone; the window in progress keeps its earlier updates."""
    make, batch_of, _ = AGGREGATE_CASES[name]
    rng = random.Random(name)
    metric = Windowed(make(), 3, span_epochs=True)
    epochs = [[batch_of(rng) for _ in range(4)], [batch_of(rng) for _ in range(4)], [batch_of(rng) for _ in range(3)]]
    seen: list[Batch] = []
    for epoch in epochs:
        for count, batch in enumerate(epoch, 1):
            metric.update(*batch)
            seen.append(batch)
            torch.testing.assert_close(metric.compute(), batch_by_batch(make, epoch[:count]))
            if len(seen) >= 3:
                start = (len(seen) // 3 - 1) * 3
                torch.testing.assert_close(metric.window_value, batch_by_batch(make, seen[start : start + 3]))
        with monkeypatch.context() as patch:
            patch.setattr(window_module, "lightning_reset_caller", lambda _: LightningReset.LOOP_END)
            metric.reset()
        assert metric._position == len(seen) % 3
    assert metric.window_value is not None


# Precision: the wrapped metric's values are never computed below float32 ---------------------------------------


@pytest.fixture
def bfloat16_default() -> Iterator[None]:
    """Make bfloat16 torch's default float dtype, as Lightning's precision="bf16-true" does inside the step."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    yield
    torch.set_default_dtype(previous)


def f1_series(batches: list[Batch], window: int, bf16: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    metric = Windowed(MulticlassF1Score(num_classes=3), window)
    values = []
    previous = torch.get_default_dtype()
    if bf16:
        torch.nn.Module().add_module("metric", metric)
        metric.to(torch.bfloat16)  # the cast of the module, as precision="bf16-true" makes it
        torch.set_default_dtype(torch.bfloat16)
    try:
        for batch in batches:
            metric.update(*batch)
            if metric.at_boundary:
                window_value, computed = metric.window_value, metric.compute()
                assert window_value is not None
                values.append((window_value, computed))
    finally:
        torch.set_default_dtype(previous)
    return values


@pytest.mark.parametrize("window", [1, 3, 7])
def test_under_a_bfloat16_default_dtype_window_values_and_compute_equal_the_float32_ones(window: int) -> None:
    """The issue: under precision="bf16-true" a Windowed F1 logged 0.2080 for 0.2074, the bfloat16 rounding."""
    rng = random.Random(window)
    batches = [_labels(rng, 3) for _ in range(28)]
    float32 = f1_series(batches, window, bf16=False)
    bfloat16 = f1_series(batches, window, bf16=True)
    assert len(float32) == len(bfloat16) == 28 // window
    rounded_in_bf16 = 0
    for (value_32, compute_32), (value_16, compute_16) in zip(float32, bfloat16, strict=True):
        for wanted, got in ((value_32, value_16), (compute_32, compute_16)):
            assert got.dtype == wanted.dtype == torch.float32
            assert torch.equal(got, wanted), (got.item(), wanted.item())
            rounded_in_bf16 += int(wanted.bfloat16().float() != wanted)
    assert rounded_in_bf16  # the values are ones that bfloat16 would have rounded


@pytest.mark.usefixtures("bfloat16_default")
def test_the_issue_reproducer_under_bfloat16_default() -> None:
    metric = Windowed(MulticlassF1Score(num_classes=3), 2)
    reference = MulticlassF1Score(num_classes=3)
    batches = [
        (torch.tensor([0, 1, 2, 2, 1, 0, 1]), torch.tensor([0, 2, 2, 1, 1, 1, 0])),
        (torch.tensor([2, 2, 0, 1, 0]), torch.tensor([1, 2, 0, 0, 0])),
    ]
    for batch in batches:
        metric.update(*batch)
        reference.update(*batch)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        wanted = reference.compute()
    finally:
        torch.set_default_dtype(previous)
    assert wanted.dtype == torch.float32
    for got in (metric.window_value, metric.compute()):
        assert got is not None
        assert got.dtype == torch.float32
        assert torch.equal(got, wanted), (got.item(), wanted.item())
    assert torch.get_default_dtype() == torch.bfloat16  # left as the step had it


@pytest.mark.usefixtures("bfloat16_default")
def test_a_wrapped_mean_is_returned_as_float32_under_bfloat16_default() -> None:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        metric = Windowed(MeanMetric(), 2)  # created in __init__, before the step
    finally:
        torch.set_default_dtype(previous)
    values = [0.2074, 0.3001, 1 / 3]
    for value in values:
        metric.update(torch.tensor(value, dtype=torch.float32))
    assert metric.window_value is not None
    assert metric.window_value.dtype == torch.float32
    assert metric.window_value == torch.tensor([0.2074, 0.3001], dtype=torch.float32).mean()
    assert metric.compute().dtype == torch.float32
    torch.testing.assert_close(metric.compute(), torch.tensor(values, dtype=torch.float32).mean(), rtol=1e-6, atol=0)
