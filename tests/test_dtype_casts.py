"""Dtype casts of the metric or of a module holding it change no state's dtype or value; checkpoints saved under
one precision load under any other; compute groups never merge differently configured metrics under any dtype.

Values are checked against the brute-force references of ``tests/reference.py`` and states bit for bit
against their values before the cast.
"""

import math
import random
from collections.abc import Callable
from typing import Any, Optional

import pytest
import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric, MetricCollection, SumMetric

from tests.reference import Call, elements, ema_of, expected_series, mean_of, sum_of
from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedMin, WindowedSum
from windowmetrics._weighted_sums import WeightedSums
from windowmetrics._window import WindowMetric

Cast = Callable[[torch.nn.Module], Any]


def set_dtype(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """torchmetrics' ``set_dtype`` on the metric or collection, or on the metrics that a model holds."""
    if isinstance(module, (Metric, MetricCollection)):
        module.set_dtype(dtype)
    else:
        for child in module.children():
            if isinstance(child, Metric):
                child.set_dtype(dtype)


CASTS: dict[str, Cast] = {
    "half": lambda module: module.half(),
    "bfloat16": lambda module: module.bfloat16(),
    "float": lambda module: module.float(),
    "double": lambda module: module.double(),
    "to-bfloat16": lambda module: module.to(torch.bfloat16),
    "to-dtype-float16": lambda module: module.to(dtype=torch.float16),
    "to-float64": lambda module: module.to(torch.float64),
    "to-tensor-float16": lambda module: module.to(torch.zeros((), dtype=torch.float16)),
    "type-bfloat16": lambda module: module.type(torch.bfloat16),
    "set_dtype-float16": lambda module: set_dtype(module, torch.float16),
    "set_dtype-bfloat16": lambda module: set_dtype(module, torch.bfloat16),
    "set_dtype-float64": lambda module: set_dtype(module, torch.float64),
}
"""Every way to cast a metric: torch's module casts, torchmetrics' ``set_dtype``, and those that Lightning's
``*-true`` precisions use (``.to(dtype=...)`` for 16 bits, ``.double()`` for 64)."""

FACTORIES: dict[str, Callable[[], WindowMetric]] = {
    "mean": lambda: WindowedMean(3),
    "sum": lambda: WindowedSum(3),
    "ema": lambda: EMALoss(0.75, window=3),
    "max": lambda: WindowedMax(3),
    "min": lambda: WindowedMin(3, nan_strategy="ignore"),
    "windowed": lambda: Windowed(SumMetric(), 3),
}


def max_of(calls: list[Call]) -> float:
    return max(value for call in calls for value in elements(call)[0])


def min_of(calls: list[Call]) -> float:
    return min(value for call in calls for value in elements(call)[0])


def reference_values(name: str, calls: list[Call]) -> tuple[list[Optional[float]], list[float]]:
    """What forward and compute return after each call, from tests/reference.py."""
    window = FACTORIES[name]().window
    value_of: Callable[[list[list[Call]]], float] = {
        "mean": lambda windows: mean_of(windows[-1]),
        "sum": lambda windows: sum_of(windows[-1]),
        "ema": lambda windows: ema_of(windows, 0.75),
        "max": lambda windows: max_of(windows[-1]),
        "min": lambda windows: min_of(windows[-1]),
        "windowed": lambda windows: sum_of(windows[-1]),
    }[name]
    aggregate_of: Optional[Callable[[list[Call]], float]] = {
        "mean": mean_of,
        "sum": sum_of,
        "ema": None,
        "max": max_of,
        "min": min_of,
        "windowed": sum_of,
    }[name]
    return expected_series(calls, window, value_of, aggregate_of)


class Holder(torch.nn.Module):
    """A model that holds a metric, as a LightningModule does: casting the model reaches the metric."""

    def __init__(self, metric: Metric) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 1)
        self.metric = metric


def states(metric: Metric) -> dict[str, Tensor]:
    """Every registered state of the metric and of the metrics it holds (a wrapped metric), by qualified name."""
    found = {}
    for prefix, module in metric.named_modules():
        if isinstance(module, Metric):
            for key in module._defaults:
                value = getattr(module, key)
                found[f"{prefix}.{key}" if prefix else key] = value.detach().clone()
    return found


def assert_states_equal(actual: dict[str, Tensor], expected: dict[str, Tensor], where: str) -> None:
    assert actual.keys() == expected.keys(), where
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, (where, key, actual[key].dtype, value.dtype)
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, equal_nan=True, msg=f"{where}: {key}")


def position(metric: WindowMetric) -> tuple[int, bool, Optional[Tensor]]:
    cache = metric._forward_cache
    return metric.update_count, metric.at_boundary, None if cache is None else cache.clone()


# Values that no 16-bit float holds and float32 only rounds: a cast that touched a float64 sum would show.
FINE_VALUES = [1 + 2**-40, 3 - 2**-35, 2**25 + 1.0, 0.1, 5.000001]


def fine_call(rng: random.Random) -> Call:
    value: Any = rng.choice(FINE_VALUES)
    kind = rng.choice(["number", "float64 tensor", "float64 vector"])
    if kind == "float64 tensor":
        value = torch.tensor(value, dtype=torch.float64)
    elif kind == "float64 vector":
        value = torch.tensor([value, rng.choice(FINE_VALUES)], dtype=torch.float64)
    return value, 1.0


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("on", ["metric", "holder"])
def test_casts_in_any_order_with_updates_change_no_state(name: str, seed: int, on: str) -> None:
    """Random interleavings of updates and every cast, on the metric or on a model holding it: no cast changes
    any state (dtype and value, bit for bit) or the window's position, every value is the reference's, and
    the same, bit for bit, as that of a twin that was never cast."""
    rng = random.Random(seed)
    metric, twin = FACTORIES[name](), FACTORIES[name]()
    target: torch.nn.Module = metric if on == "metric" else Holder(metric)
    calls = [fine_call(rng) for _ in range(14)]
    forwards, computes = reference_values(name, calls)
    casts = list(CASTS.items())
    for index, call in enumerate(calls):
        for cast_name, cast in rng.sample(casts, rng.randint(0, 3)):
            before, where = (states(metric), position(metric)), f"{cast_name} after {index} updates"
            cast(target)
            assert_states_equal(states(metric), before[0], where)
            assert position(metric)[:2] == before[1][:2], where
            torch.testing.assert_close(position(metric)[2], before[1][2], rtol=0, atol=0)
        returned, twin_returned = metric(call[0]), twin(call[0])
        check_value(returned, forwards[index])
        check_value(metric.compute(), computes[index])
        torch.testing.assert_close(returned, twin_returned, rtol=0, atol=0)
        torch.testing.assert_close(metric.compute(), twin.compute(), rtol=0, atol=0)
    assert_states_equal(states(metric), states(twin), "against the twin")


def check_value(actual: Optional[Tensor], expected: Optional[float]) -> None:
    """``actual`` is the reference value, in the default dtype (float32) whatever the casts."""
    if expected is None:
        assert actual is None
        return
    assert actual is not None
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["mean", "sum", "ema"])
@pytest.mark.parametrize("cast_name", ["half", "to-bfloat16", "set_dtype-float16", "to-dtype-float16"])
def test_float64_sums_stay_float64_and_unrounded(name: str, cast_name: str) -> None:
    metric = FACTORIES[name]()
    assert isinstance(metric, WeightedSums)
    metric.update(torch.tensor(1 + 2**-40, dtype=torch.float64))
    CASTS[cast_name](Holder(metric))
    assert metric.value_sum.dtype == torch.float64
    assert metric.value_sum.shape == (2,)  # [window in progress, since the last reset]
    assert metric.value_sum.tolist() == [1 + 2**-40, 1 + 2**-40]
    metric.update(torch.tensor(2**-40, dtype=torch.float64))
    assert metric.value_sum.tolist() == [1 + 2**-39, 1 + 2**-39]
    assert all(getattr(metric, key).dtype == torch.float64 for key in metric._defaults)


@pytest.mark.parametrize("name", ["max", "min"])
@pytest.mark.parametrize("cast_name", ["half", "to-bfloat16", "set_dtype-float16", "to-dtype-float16"])
def test_float64_extremes_stay_float64_and_unrounded(name: str, cast_name: str) -> None:
    metric = FACTORIES[name]()
    assert isinstance(metric, (WindowedMax, WindowedMin))
    sign = 1.0 if name == "max" else -1.0
    fine = sign * (1 + 2**-40)
    metric.update(torch.tensor([0.5, fine, -0.5], dtype=torch.float64))
    CASTS[cast_name](Holder(metric))
    assert metric.extreme.dtype == torch.float64
    assert metric.extreme.tolist() == [fine, fine]
    metric.update(torch.tensor(2 * fine, dtype=torch.float64))
    assert metric.extreme.tolist() == [2 * fine, 2 * fine]
    metric.update(0.0)  # closes the window: its value is rounded once, to float32
    assert metric.extreme.tolist() == [-sign * math.inf, 2 * fine]
    assert metric.window_value == torch.tensor(2 * fine, dtype=torch.float64).float()
    assert all(getattr(metric, key).dtype == torch.float64 for key in metric._defaults)


def test_a_wrapped_metric_keeps_its_dtype_under_a_cast_of_the_windowed_metric() -> None:
    metric = Windowed(SumMetric(), 261)
    Holder(metric).to(dtype=torch.bfloat16)  # as Lightning's precision="bf16-true" does
    for _ in range(261):
        metric.update(torch.tensor(1.0, dtype=torch.bfloat16))
    assert metric.metric.sum_value.dtype == torch.float32
    assert metric.compute() == torch.tensor(261.0)  # not 260, bfloat16's nearest


# Checkpoints across precisions --------------------------------------------------------------------------------

PRECISIONS: dict[str, Optional[Cast]] = {
    "float32": None,
    "bfloat16": CASTS["to-bfloat16"],
    "float16": CASTS["half"],
    "float64": CASTS["double"],
    "set_dtype-float16": CASTS["set_dtype-float16"],
}


def cast_to(metric: WindowMetric, precision: str) -> WindowMetric:
    cast = PRECISIONS[precision]
    if cast is not None:
        cast(Holder(metric))
    return metric


def test_the_issue_reproducer_a_bfloat16_state_dict_loads_into_a_fresh_metric() -> None:
    saved = WindowedMean(3)
    saved.persistent(True)
    saved.to(dtype=torch.bfloat16)
    saved.update(1.0)
    loaded = WindowedMean(3)
    loaded.load_state_dict(saved.state_dict())
    assert loaded.update_count == 1
    loaded.update(2.0)
    assert loaded(6.0) == torch.tensor(3.0)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("saved_under", PRECISIONS)
@pytest.mark.parametrize("loaded_under", PRECISIONS)
def test_a_state_dict_saved_under_one_precision_loads_under_any_other(
    name: str, saved_under: str, loaded_under: str
) -> None:
    rng = random.Random(f"{name}{saved_under}{loaded_under}")
    calls = [fine_call(rng) for _ in range(10)]
    forwards, _ = reference_values(name, calls)
    saved = cast_to(FACTORIES[name](), saved_under)
    saved.persistent(True)
    for value, _ in calls[:4]:  # a window and a part of the next
        saved.update(value)
    state_dict = saved.state_dict()
    loaded = cast_to(FACTORIES[name](), loaded_under)
    loaded.persistent(True)
    before = {key: value.dtype for key, value in loaded.state_dict().items()}
    loaded.load_state_dict(state_dict)
    assert loaded.update_count == 4
    assert {key: value.dtype for key, value in loaded.state_dict().items()} == before
    assert_states_equal(states(loaded), states(saved), f"{saved_under} -> {loaded_under}")
    for index in range(4, len(calls)):
        check_value(loaded(calls[index][0]), forwards[index])


# Compute groups under every dtype -----------------------------------------------------------------------------


@pytest.mark.parametrize("cast_name", ["to-dtype-float16", "to-bfloat16", "half", "set_dtype-float16"])
def test_the_issue_reproducer_mean_and_sum_in_a_float16_collection(cast_name: str) -> None:
    collection = MetricCollection({"mean": WindowedMean(2), "sum": WindowedSum(2)})
    CASTS[cast_name](collection)
    for x in (1.0, 3.0, 5.0, 7.0):
        collection.update(torch.tensor(x))
    assert collection.compute() == {"mean": torch.tensor(4.0), "sum": torch.tensor(16.0)}  # since the reset
    assert collection["mean"].window_value == torch.tensor(6.0)  # the latest window: (5, 7)
    assert collection["sum"].window_value == torch.tensor(12.0)
    assert sorted(collection.compute_groups.values()) == [["mean"], ["sum"]]


def ema(decay: float) -> Callable[[list[list[Call]]], float]:
    return lambda windows: ema_of(windows, decay)


def latest_window(calls: list[Call], window: int, value_of: Callable[[list[list[Call]]], float]) -> Optional[float]:
    """The reference window value after the calls: that of the completed windows, or ``None`` before the first."""
    completed = len(calls) // window
    if not completed:
        return None
    return value_of([calls[start * window : (start + 1) * window] for start in range(completed)])


def latest_mean(windows: list[list[Call]]) -> float:
    return mean_of(windows[-1])


def latest_sum(windows: list[list[Call]]) -> float:
    return sum_of(windows[-1])


def latest_max(windows: list[list[Call]]) -> float:
    return max_of(windows[-1])


def latest_min(windows: list[list[Call]]) -> float:
    return min_of(windows[-1])


Member = tuple[Callable[[], Metric], Callable[[list[list[Call]]], float], Optional[Callable[[list[Call]], float]]]
"""A member's factory, its reference window value after its windows, and its reference compute() after the calls
(``None``: the latest window value, or the mean of the calls so far before it, as EMALoss)."""

PAIRS: dict[str, tuple[Member, Member, int]] = {
    # two members and the number of calls
    "ema-0.999-vs-0.9999": (
        (lambda: EMALoss(0.999), ema(0.999), None),
        (lambda: EMALoss(0.9999), ema(0.9999), None),
        40,
    ),
    "mean-256-vs-257": (
        (lambda: WindowedMean(256), latest_mean, mean_of),
        (lambda: WindowedMean(257), latest_mean, mean_of),
        300,
    ),
    "windowed-mean-vs-sum": (
        (lambda: Windowed(MeanMetric(), 2), latest_mean, mean_of),
        (lambda: Windowed(SumMetric(), 2), latest_sum, sum_of),
        40,
    ),
    "max-vs-min": ((lambda: WindowedMax(3), latest_max, max_of), (lambda: WindowedMin(3), latest_min, min_of), 40),
    "max-3-vs-4": ((lambda: WindowedMax(3), latest_max, max_of), (lambda: WindowedMax(4), latest_max, max_of), 40),
}


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("cast_name", ["to-bfloat16", "set_dtype-bfloat16", "to-dtype-float16"])
def test_differently_configured_members_never_merge_under_a_cast(pair: str, cast_name: str) -> None:
    """compute() of each member is its aggregate since the reset and its window value the latest window's."""
    member_a, member_b, count = PAIRS[pair]
    references = {"a": member_a, "b": member_b}
    members: dict[str, Any] = {"a": member_a[0](), "b": member_b[0]()}
    assert all(isinstance(member, WindowMetric) for member in members.values())
    windows = {name: member.window for name, member in members.items() if isinstance(member, WindowMetric)}
    collection = MetricCollection(members)
    CASTS[cast_name](collection)
    # bfloat16-exact inputs (integers below 256), as a bf16-true step gives them
    calls: list[Call] = [(float((7 * step) % 23), 1.0) for step in range(count)]
    checked = {1, 2, 3, 255, 256, 257, 258, 299} | set(range(0, count + 1, 25)) if count > 40 else range(count + 1)
    differ = False
    for index, (value, _) in enumerate(calls):
        collection.update(torch.tensor(value, dtype=torch.bfloat16))
        if index + 1 not in checked:
            continue
        computed = collection.compute()
        so_far = calls[: index + 1]
        for name in ("a", "b"):
            _, value_of, aggregate_of = references[name]
            latest = latest_window(so_far, windows[name], value_of)
            expected = aggregate_of(so_far) if aggregate_of is not None else latest
            if expected is None:
                expected = value_of([so_far])
            torch.testing.assert_close(computed[name].double(), torch.tensor(expected).double(), rtol=1e-6, atol=0)
            window_value = collection[name].window_value
            if latest is None:
                assert window_value is None
            else:
                torch.testing.assert_close(window_value.double(), torch.tensor(latest).double(), rtol=1e-6, atol=0)
        values = [(computed[name], collection[name].window_value) for name in ("a", "b")]
        differ = differ or not torch.equal(values[0][0], values[1][0]) or str(values[0][1]) != str(values[1][1])
    assert sorted(collection.compute_groups.values()) == [["a"], ["b"]]
    assert differ  # the two members are told apart by their values, so a merge would have shown
