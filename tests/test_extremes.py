"""WindowedMax and WindowedMin against a brute force: plain Python max/min over the flattened elements of the inputs.

The reference reads each input's elements as Python floats (every float16, bfloat16, float32 and small integer
converts exactly) and takes ``max``/``min`` of them, with ``nan_strategy`` applied as SPEC.md says; the metric's
value must be that element, rounded once to the returned dtype, exactly (no tolerance).
"""

import copy
import math
import pickle
import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional, cast

import matplotlib
import pytest
import torch
from torch import Tensor
from torchmetrics import MaxMetric, MetricCollection, MinMetric
from torchmetrics.utilities.exceptions import TorchMetricsUserError

import windowmetrics._window as window_module
from tests.test_checkpoint_entries import assert_same, everything
from tests.test_protocol import Holder
from tests.versions import NO_DISABLED_NAN_STRATEGY, SUM_METRIC_NOT_ON_META
from windowmetrics import EMALoss, WindowedMax, WindowedMean, WindowedMin, WindowedSum
from windowmetrics._lightning import LightningReset
from windowmetrics._window import WindowMetric

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

Value = Any  # a Python number or a tensor
CLASSES: dict[str, tuple[type[WindowMetric], Callable[..., float], float]] = {
    "max": (WindowedMax, max, -math.inf),
    "min": (WindowedMin, min, math.inf),
}
STRATEGIES: list[Any] = ["disable", "ignore", "warn", 0.5, -3.0]


def elements(value: Value) -> list[float]:
    """The value's elements as Python floats: exact for every input dtype used here."""
    if isinstance(value, Tensor):
        return [float(element) for element in value.detach().flatten().tolist()]
    return [float(value)]


def extreme_of(name: str, calls: list[Value], nan_strategy: Any) -> float:
    """The brute-force extreme of the calls' elements, under ``nan_strategy`` (SPEC.md, WindowedMax/WindowedMin)."""
    _, pick, identity = CLASSES[name]
    found = [element for value in calls for element in elements(value)]
    if nan_strategy == "disable":
        if any(math.isnan(element) for element in found):
            return math.nan
        return pick(found, default=identity)
    if isinstance(nan_strategy, float):  # imputed
        return pick([nan_strategy if math.isnan(element) else element for element in found], default=identity)
    valid = [element for element in found if not math.isnan(element)]
    return pick(valid) if valid else math.nan  # a window (or aggregate) with no valid element is NaN


def random_value(rng: random.Random, with_nans: bool = False) -> Value:
    """A random input: Python numbers, 0-dim, vectors, matrices, empty, integer, bool, 16-bit and float64 tensors."""
    kind = rng.choice(
        ["float", "int", "scalar", "vector", "matrix", "empty", "integers", "bool", "float16", "bfloat16", "float64"]
    )

    def number() -> float:
        return rng.choice([rng.uniform(-10, 10), rng.uniform(-1e-3, 1e-3), rng.choice([0.1, -0.1, 1 / 3, 1e-8])])

    value: Value
    if kind == "float":
        value = number()
    elif kind == "int":
        value = rng.randint(-50, 50)
    elif kind == "scalar":
        value = torch.tensor(number())
    elif kind == "vector":
        value = torch.tensor([number() for _ in range(rng.randint(1, 6))])
    elif kind == "matrix":
        value = torch.tensor([[number() for _ in range(3)] for _ in range(2)])
    elif kind == "empty":
        value = torch.zeros(rng.choice([(0,), (2, 0), (0, 3)]))
    elif kind == "integers":
        value = torch.tensor([rng.randint(-100, 100) for _ in range(rng.randint(1, 4))], dtype=torch.int32)
    elif kind == "bool":
        value = torch.tensor([rng.random() < 0.5 for _ in range(3)])
    elif kind in ("float16", "bfloat16"):
        value = torch.tensor([number() for _ in range(rng.randint(1, 4))], dtype=getattr(torch, kind))
    else:
        value = torch.tensor([number() for _ in range(rng.randint(1, 3))], dtype=torch.float64)
    if with_nans and rng.random() < 0.3:
        if isinstance(value, float):
            value = math.nan
        elif isinstance(value, Tensor) and value.is_floating_point() and value.numel():
            value = value.clone()
            value.view(-1)[rng.randrange(value.numel())] = math.nan
    return value


def expected_tensor(expected: float) -> Tensor:
    """The reference element, rounded once to the returned dtype (the default dtype, never below float32)."""
    dtype = torch.get_default_dtype() if torch.get_default_dtype().itemsize >= 4 else torch.float32
    return torch.tensor(expected, dtype=torch.float64).to(dtype)


def assert_exact(actual: Optional[Tensor], expected: Optional[float], where: str = "") -> None:
    if expected is None:
        assert actual is None, where
        return
    assert actual is not None, where
    assert actual.shape == (), where
    wanted = expected_tensor(expected)
    assert actual.dtype == wanted.dtype, where
    torch.testing.assert_close(actual, wanted, rtol=0, atol=0, equal_nan=True, msg=where)


def check_series(name: str, metric: WindowMetric, calls: list[Value], nan_strategy: Any, use_forward: bool) -> None:
    window = metric.window
    latest: Optional[float] = None
    for count, value in enumerate(calls, 1):
        if use_forward:
            returned = metric(value)
        else:
            metric.update(value)
            returned = metric._forward_cache
        where = f"after {count} calls"
        if count % window == 0:
            latest = extreme_of(name, calls[count - window : count], nan_strategy)
        assert metric.at_boundary == (count % window == 0), where
        assert_exact(returned, latest, where)
        assert_exact(metric.window_value, latest, where)
        if latest is not None:
            assert metric.window_value is returned or use_forward is False
        assert_exact(metric.compute(), extreme_of(name, calls[:count], nan_strategy), where)
        assert metric._update_count == count


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("nan_strategy", STRATEGIES)
@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
def test_matches_the_brute_force(name: str, nan_strategy: Any, seed: int, use_forward: bool) -> None:
    rng = random.Random(f"{name}{nan_strategy}{seed}")
    calls = [random_value(rng, with_nans=True) for _ in range(rng.randint(1, 25))]
    metric = CLASSES[name][0](rng.randint(1, 6), nan_strategy=nan_strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "warn" is checked on its own below
        check_series(name, metric, calls, nan_strategy, use_forward)


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.usefixtures("float64_default")
def test_with_float64_as_default_the_extreme_is_the_float64_input_exactly(name: str) -> None:
    rng = random.Random(name)
    calls = [torch.tensor([rng.uniform(-1, 1) for _ in range(3)], dtype=torch.float64) for _ in range(9)]
    calls.append(torch.tensor([1 + 2**-50, -(1 + 2**-50)], dtype=torch.float64))
    check_series(name, CLASSES[name][0](3), calls, "disable", True)
    metric = CLASSES[name][0](1)
    assert metric(torch.tensor(2**53 + 2.0, dtype=torch.float64)) == 2**53 + 2.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int64, torch.int8])
@pytest.mark.parametrize("name", CLASSES)
def test_the_extreme_is_the_input_element_exactly_whatever_its_dtype(name: str, dtype: torch.dtype) -> None:
    """No sum rounds it: the returned value equals the input's element converted to float32, bit for bit."""
    metric = CLASSES[name][0](2)
    if dtype.is_floating_point:
        first = torch.tensor([0.1, -0.3, 1 / 3], dtype=dtype)
        second = torch.tensor(-1 / 7, dtype=dtype)
    else:
        first = torch.tensor([3, -100, 7], dtype=dtype)
        second = torch.tensor(-9, dtype=dtype)
    metric.update(first)
    value = metric(second)
    both = torch.cat([first.flatten(), second.flatten()])
    wanted = (both.max() if name == "max" else both.min()).to(torch.float32)
    assert value is not None
    assert value.dtype == torch.float32
    assert value.item() == wanted.item()


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("nan_strategy", ["disable", 0.5])
def test_a_window_of_empty_tensors_alone_is_the_identity_as_max_metric(name: str, nan_strategy: Any) -> None:
    """Without a strategy that drops NaN, a window with no element is worth -inf (inf), as MaxMetric (MinMetric)."""
    metric = CLASSES[name][0](2, nan_strategy=nan_strategy)
    metric.update(torch.zeros(0))
    value = metric(torch.zeros(2, 0))
    assert value is not None
    assert value.item() == CLASSES[name][2]


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("nan_strategy", ["ignore", "warn"])
def test_a_window_with_no_valid_element_is_nan_and_the_next_is_clean(name: str, nan_strategy: str) -> None:
    metric = CLASSES[name][0](2, nan_strategy=nan_strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric.update(torch.tensor([math.nan, math.nan]))
        value = metric(torch.zeros(0))
        assert value is not None
        assert math.isnan(value.item())
        assert math.isnan(metric.compute().item())
        metric.update(1.5)
        assert metric(torch.tensor([math.nan, -2.0])) == (1.5 if name == "max" else -2.0)
        assert metric.compute() == (1.5 if name == "max" else -2.0)


@pytest.mark.parametrize("name", CLASSES)
def test_disable_makes_the_window_nan_and_the_next_window_is_clean(name: str) -> None:
    metric = CLASSES[name][0](2)
    metric.update(torch.tensor([1.0, math.nan]))
    value = metric(5.0)
    assert value is not None
    assert math.isnan(value.item())
    metric.update(2.0)
    assert metric(3.0) == (3.0 if name == "max" else 2.0)
    assert math.isnan(metric.compute().item())  # the aggregate since the reset holds the NaN


@pytest.mark.parametrize("name", CLASSES)
def test_warn_reports_the_count_at_the_boundary_only(name: str) -> None:
    metric = CLASSES[name][0](3, nan_strategy="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on updates that close no window
        metric.update(torch.tensor([math.nan, 1.0, math.nan]))
        metric.update(math.nan)
    with pytest.warns(UserWarning, match=r"^4 NaN element\(s\) in the window were ignored \(nan_strategy='warn'\)$"):
        value = metric(torch.tensor([2.0, math.nan, 0.5], dtype=torch.bfloat16))
    assert value == (2.0 if name == "max" else 0.5)
    with pytest.warns(UserWarning, match=r"^4 NaN element\(s\) in the updates since the last reset were ignored"):
        metric.compute()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            metric.update(1.0)  # a clean window: no warning at its boundary


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("seed", range(6))
def test_error_raises_at_the_boundary_naming_the_count_and_discards_the_window(name: str, seed: int) -> None:
    rng = random.Random(seed)
    window = rng.randint(1, 4)
    calls = [random_value(rng, with_nans=True) for _ in range(rng.randint(4, 20))]
    metric = CLASSES[name][0](window, nan_strategy="error")
    latest: Optional[float] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compute() of the aggregate before its first element
        for count, value in enumerate(calls, 1):
            in_window = calls[(count - 1) // window * window : count]
            nans = sum(math.isnan(element) for call in in_window for element in elements(call))
            if count % window == 0 and nans:
                with pytest.raises(
                    ValueError, match=rf"^{nans} NaN element\(s\) in the window \(nan_strategy='error'\)$"
                ):
                    metric(value)
                assert not metric.at_boundary
            else:
                metric(value)
                if count % window == 0:
                    latest = extreme_of(name, in_window, "ignore")
                assert metric.at_boundary == (count % window == 0)
            assert_exact(metric.window_value, latest, f"after {count} calls")
            assert metric._update_count == count
            total_nans = sum(math.isnan(element) for call in calls[:count] for element in elements(call))
            if total_nans:
                with pytest.raises(ValueError, match=rf"^{total_nans} NaN element\(s\) in the updates since the last"):
                    metric.compute()
            else:
                assert_exact(metric.compute(), extreme_of(name, calls[:count], "ignore"))


# compute() with no update, reset, span_epochs ------------------------------------------------------------------


@pytest.mark.parametrize("nan_strategy", [*STRATEGIES, "error"])
@pytest.mark.parametrize(("name", "counterpart"), [("max", MaxMetric), ("min", MinMetric)])
def test_compute_with_no_update_is_what_max_metric_returns_with_its_warning(
    name: str, counterpart: type, nan_strategy: Any
) -> None:
    metric = CLASSES[name][0](3, nan_strategy=nan_strategy)
    with pytest.warns(UserWarning, match=r"The ``compute`` method of metric Windowed\w+ was called before the ``upd"):
        value = metric.compute()
    with pytest.warns(UserWarning, match=r"The ``compute`` method of metric M\w+ was called before the ``update``"):
        wanted = counterpart().compute()
    assert value.item() == wanted.item() == CLASSES[name][2]
    assert value.dtype == wanted.dtype == torch.float32
    assert metric.window_value is None


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("nan_strategy", [pytest.param("disable", marks=NO_DISABLED_NAN_STRATEGY), "ignore"])
def test_compute_agrees_with_max_metric_over_the_same_inputs(name: str, nan_strategy: Any) -> None:
    rng = random.Random(name)
    counterpart = (MaxMetric if name == "max" else MinMetric)(nan_strategy=nan_strategy)
    metric = CLASSES[name][0](4, nan_strategy=nan_strategy)
    for _ in range(15):
        value = torch.tensor([rng.uniform(-5, 5) for _ in range(3)])
        metric.update(value)
        counterpart.update(value)
        assert metric.compute() == counterpart.compute()


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("span_epochs", [False, True])
def test_reset_clears_everything(name: str, span_epochs: bool) -> None:
    """A reset that user code calls clears everything, with span_epochs=True too."""
    fresh, used = CLASSES[name][0](3, span_epochs=span_epochs), CLASSES[name][0](3, span_epochs=span_epochs)
    for value in (1.0, math.nan, 3.0, 4.0):
        used.update(value)
    used.reset()
    assert not used.at_boundary
    assert used.window_value is None
    assert used._forward_cache is None
    assert used._update_count == 0
    assert_same(everything(used), everything(fresh))
    for value in (5.0, -6.0, 7.0, 8.0):
        returned, wanted = used(value), fresh(value)
        assert (returned is None and wanted is None) or returned == wanted
        assert used.at_boundary == fresh.at_boundary
    assert used.compute() == fresh.compute()


@pytest.fixture
def lightning_loop_end_reset(monkeypatch: pytest.MonkeyPatch) -> Callable[[WindowMetric], None]:
    """Reset a metric as Lightning's logger connector does at the end of an epoch (the caller is simulated)."""

    def reset(metric: WindowMetric) -> None:
        with monkeypatch.context() as patch:
            patch.setattr(window_module, "lightning_reset_caller", lambda _: LightningReset.LOOP_END)
            metric.reset()

    return reset


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("nan_strategy", ["disable", "ignore"])
def test_span_epochs_a_loop_end_reset_starts_a_new_aggregate_and_leaves_the_window(
    name: str, nan_strategy: str, lightning_loop_end_reset: Callable[[WindowMetric], None]
) -> None:
    """Unit level (the Trainer tests are elsewhere): the reset that Lightning performs at an epoch's end, simulated
    here, clears the since-reset aggregate alone with ``span_epochs=True``, and everything without."""
    spanning = CLASSES[name][0](3, nan_strategy=nan_strategy, span_epochs=True)
    plain = CLASSES[name][0](3, nan_strategy=nan_strategy)
    epochs = [[9.0, -9.0, 1.0, 2.0], [3.0, 0.5, 4.0, -1.0, 6.0]]
    pick = CLASSES[name][1]
    seen: list[float] = []
    for epoch in epochs:
        for value in epoch:
            spanning.update(value)
            plain.update(value)
            seen.append(value)
            if len(seen) % 3 == 0:
                assert spanning.window_value == pick(seen[-3:])
            assert spanning.compute() == pick(epoch[: epoch.index(value) + 1])
        lightning_loop_end_reset(spanning)
        lightning_loop_end_reset(plain)
        assert plain.window_value is None
        assert plain._position == 0
        assert spanning._position == len(seen) % 3
        assert spanning._update_count == 0
    assert spanning.window_value == pick(seen[6:9])
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert spanning.compute().item() == CLASSES[name][2]


# Bad inputs --------------------------------------------------------------------------------------------------

BAD_VALUES: list[tuple[Any, type[Exception], str]] = [
    ("loss", TypeError, r"`value` must be a real number or a real-valued tensor, got 'loss' \(str\)"),
    (None, TypeError, r"`value` must be a real number .*, got None \(NoneType\)"),
    ([1.0, 2.0], TypeError, r"`value` must be a real number .*, got \[1\.0, 2\.0\] \(list\)"),
    (True, TypeError, r"`value` must be a real number .*, got True \(bool\)"),
    (1 + 2j, TypeError, r"`value` must be a real number .*, got \(1\+2j\) \(complex\)"),
    (torch.ones(2, dtype=torch.complex64), TypeError, r"`value` must be real-valued, got a tensor of shape"),
    (torch.ones(2, device="meta"), ValueError, r"`value` is on meta but the metric is on cpu"),
]


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("nan_strategy", ["disable", "ignore", 0.0])
@pytest.mark.parametrize(("value", "error", "message"), BAD_VALUES)
@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
def test_a_bad_input_raises_and_changes_nothing(
    name: str, nan_strategy: Any, value: Any, error: type, message: str, use_forward: bool
) -> None:
    metric, twin = CLASSES[name][0](3, nan_strategy=nan_strategy), CLASSES[name][0](3, nan_strategy=nan_strategy)
    for good in (1.0, torch.tensor([4.0, -2.0]), 3.0, torch.tensor(0.5)):  # a window closed, one open
        metric.update(good)
        twin.update(good)
    before = everything(metric)
    with pytest.raises(error, match=message):
        (metric if use_forward else metric.update)(value)
    assert_same(everything(metric), before)
    for good in (7.0, -8.0, 2.0):
        assert metric(good) == twin(good)
        assert metric.compute() == twin.compute()


@pytest.mark.parametrize("name", CLASSES)
def test_no_weight_is_taken(name: str) -> None:
    with pytest.raises(TypeError, match="positional argument"):
        CLASSES[name][0](2).update(1.0, 2.0)


@pytest.mark.parametrize("name", CLASSES)
def test_an_update_while_synced_is_refused_and_changes_nothing(name: str) -> None:
    metric = CLASSES[name][0](2)
    metric.update(1.0)
    metric.sync(should_sync=True, distributed_available=lambda: True, dist_sync_fn=lambda tensor, group=None: [tensor])
    before = everything(metric)
    with pytest.raises(TorchMetricsUserError, match="cannot be updated while it is synchronised"):
        metric.update(2.0)
    assert_same(everything(metric), before)
    metric.unsync()
    assert metric(2.0) == (2.0 if name == "max" else 1.0)


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize(
    ("nan_strategy", "error"),
    [("drop", ValueError), (math.nan, ValueError), (True, TypeError), (None, TypeError)],
)
def test_a_bad_nan_strategy_is_refused(name: str, nan_strategy: Any, error: type) -> None:
    with pytest.raises(error, match="`nan_strategy` must"):
        CLASSES[name][0](2, nan_strategy=nan_strategy)


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize(("window", "error"), [(0, ValueError), (2.0, TypeError), (True, TypeError), ("3", TypeError)])
def test_a_bad_window_is_refused(name: str, window: Any, error: type) -> None:
    with pytest.raises(error, match="`window` must be an int >= 1"):
        CLASSES[name][0](window)


# Persistence, copies, casts --------------------------------------------------------------------------------------


def feed(metric: WindowMetric, values: list[Value]) -> list[tuple[Optional[Tensor], Tensor, bool]]:
    observed = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for value in values:
            returned = metric(value)
            observed.append((None if returned is None else returned.clone(), metric.compute(), metric.at_boundary))
    return observed


def assert_same_observations(actual: list, expected: list) -> None:
    assert len(actual) == len(expected)
    for (out_a, compute_a, boundary_a), (out_b, compute_b, boundary_b) in zip(actual, expected, strict=True):
        assert boundary_a == boundary_b
        torch.testing.assert_close(out_a, out_b, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(compute_a, compute_b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("nan_strategy", STRATEGIES)
@pytest.mark.parametrize("split", [1, 4, 5, 6])
def test_a_checkpoint_mid_window_resumes_exactly(name: str, nan_strategy: Any, split: int, tmp_path: Path) -> None:
    rng = random.Random(f"{name}{nan_strategy}{split}")
    values = [random_value(rng, with_nans=True) for _ in range(14)]
    metric_class = CLASSES[name][0]
    uninterrupted, before, after = (metric_class(4, nan_strategy=nan_strategy) for _ in range(3))
    expected = feed(uninterrupted, values)
    before.persistent(True)
    feed(before, values[:split])
    torch.save(before.state_dict(), tmp_path / "metric.pt")
    after.persistent(True)
    after.load_state_dict(torch.load(tmp_path / "metric.pt"))
    assert_same(everything(after), everything(before))
    assert_same_observations(feed(after, values[split:]), expected[split:])


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize(
    "duplicate",
    [copy.deepcopy, lambda metric: metric.clone(), lambda metric: pickle.loads(pickle.dumps(metric))],
    ids=["deepcopy", "clone", "pickle"],
)
def test_copies_behave_like_the_original_and_share_no_storage(name: str, duplicate: Callable) -> None:
    rng = random.Random(name)
    values = [random_value(rng, with_nans=False) for _ in range(12)]
    original = CLASSES[name][0](3, nan_strategy="ignore")
    feed(original, values[:5])
    copied = duplicate(original)
    assert_same(everything(copied), everything(original))
    assert_same_observations(feed(copied, values[5:]), feed(original, values[5:]))
    copied.update(1e6 if name == "max" else -1e6)
    assert original.compute() != copied.compute()


CASTS: dict[str, Callable[[torch.nn.Module], Any]] = {
    "half": lambda module: module.half(),
    "to-bfloat16": lambda module: module.to(torch.bfloat16),
    "to-dtype-float16": lambda module: module.to(dtype=torch.float16),
    "double": lambda module: module.double(),
    "set_dtype-float16": lambda module: cast(WindowMetric, module).set_dtype(torch.float16),
}


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("cast", CASTS)
def test_a_dtype_cast_changes_no_state(name: str, cast: str) -> None:
    metric, twin = CLASSES[name][0](3), CLASSES[name][0](3)
    values = [torch.tensor([0.1, 1 / 3]), 2**25 + 1.0, torch.tensor(-(2**-30)), 5.000001]
    for value in values:
        metric.update(value)
        twin.update(value)
    before = everything(metric)
    CASTS[cast](metric)
    assert_same(everything(metric), before)
    assert all(getattr(metric, key).dtype == torch.float64 for key in metric._defaults)
    for value in (torch.tensor(1 + 2**-40, dtype=torch.float64), 0.2, -7.0):
        assert metric(value) == twin(value)
        assert metric.compute() == twin.compute()


# Composition and the torchmetrics protocol ------------------------------------------------------------------------


def collection_members() -> dict[str, Any]:
    return {
        "max_3": WindowedMax(3),
        "max_3_again": WindowedMax(3),
        "max_5": WindowedMax(5),
        "max_3_ignore": WindowedMax(3, nan_strategy="ignore"),
        "min_3": WindowedMin(3),
        "mean_3": WindowedMean(3),
        "sum_3": WindowedSum(3),
        "ema": EMALoss(0.5, window=3),
        "running_max": MaxMetric(),
        "running_max_again": MaxMetric(),
        "running_min": MinMetric(),
    }


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
def test_in_a_metric_collection_with_compute_groups_every_member_reports_like_a_standalone_one(
    seed: int, use_forward: bool
) -> None:
    collection = MetricCollection(collection_members(), compute_groups=True)
    standalone = collection_members()
    rng = random.Random(seed)
    for _ in range(14):
        value = torch.tensor([rng.uniform(-10, 10) for _ in range(rng.randint(1, 4))])
        if use_forward:
            collection(value)
        else:
            collection.update(value)
        for member in standalone.values():
            member.update(value)
        computed = collection.compute()
        for key, member in standalone.items():
            torch.testing.assert_close(computed[key], member.compute(), rtol=0, atol=0, msg=key)
            in_collection = collection[key]
            if isinstance(member, WindowMetric):
                assert isinstance(in_collection, WindowMetric)
                torch.testing.assert_close(in_collection.window_value, member.window_value, rtol=0, atol=0)
                torch.testing.assert_close(in_collection._forward_cache, member.window_value, rtol=0, atol=0)
                assert in_collection.at_boundary == member.at_boundary
    groups = sorted(sorted(group) for group in collection.compute_groups.values())
    window_members = {key for key, member in standalone.items() if isinstance(member, WindowMetric)}
    assert all(len(group) == 1 for group in groups if set(group) & window_members)  # never merged


@pytest.fixture
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


@pytest.mark.usefixtures("close_figures")
@pytest.mark.parametrize("name", CLASSES)
def test_plot_one_value_a_list_of_window_values_and_the_default(name: str) -> None:
    metric = CLASSES[name][0](2)
    values = [metric(float(step % 5)) for step in range(8)][1::2]
    assert all(value is not None for value in values)
    _, ax = metric.plot(values)
    assert isinstance(ax, matplotlib.axes.Axes)
    assert plotted_lines(ax) == [[value.item() for value in values if value is not None]]
    _, ax = metric.plot()  # compute(): the extreme since the reset
    assert plotted_lines(ax) == [[metric.compute().item()]]


def plotted_lines(ax: Any) -> list[list[float]]:
    """The y values of each line that matplotlib drew on the axis."""
    return [[float(y) for y in line.get_ydata()] for line in ax.get_lines()]


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:This property will be removed in 2.0.0:DeprecationWarning")
@pytest.mark.parametrize("name", CLASSES)
def test_torch_jit_script_of_the_metric_and_of_a_module_holding_it(name: str) -> None:
    torch.jit.script(CLASSES[name][0](3))
    holder = Holder(CLASSES[name][0](3))
    for value in (2.0, 5.0, 1.0, 7.0):
        holder.metric(value)
    scripted = torch.jit.script(holder)
    x = torch.randn(4, 2)
    torch.testing.assert_close(scripted(x), holder(x), rtol=0, atol=0)


@SUM_METRIC_NOT_ON_META
@pytest.mark.parametrize("name", CLASSES)
def test_creation_under_the_meta_device(name: str) -> None:
    with torch.device("meta"):
        metric = CLASSES[name][0](3, nan_strategy="ignore")
        values = [torch.ones(2) for _ in range(4)]
    on_cpu = CLASSES[name][0](3, nan_strategy="ignore")
    assert metric.device == torch.device("meta")
    assert repr(metric) == repr(on_cpu)
    for key in on_cpu._defaults:
        state = getattr(metric, key)
        assert state.is_meta, key
        assert (state.dtype, state.shape) == (getattr(on_cpu, key).dtype, getattr(on_cpu, key).shape), key
    returned = [metric(value) for value in values]
    assert returned[:2] == [None, None]
    assert all(value is not None and value.is_meta and value.shape == () for value in returned[2:])
    metric.persistent(True)
    on_cpu.persistent(True)
    assert metric.state_dict().keys() == on_cpu.state_dict().keys()


@pytest.mark.parametrize("name", CLASSES)
def test_a_meta_metric_materialised_by_an_assigning_load_goes_on_like_the_source(name: str) -> None:
    source = CLASSES[name][0](3)
    source.persistent(True)
    for value in (2.0, 5.0, 1.0, 7.0):
        source(value)
    with torch.device("meta"):
        metric = CLASSES[name][0](3)
    metric.persistent(True)
    metric.load_state_dict(source.state_dict(), assign=True)
    assert not metric.compute().is_meta
    assert_same(everything(metric), everything(source))
    for value in (-1.0, 9.0):
        assert metric(value) == source(value)


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("nan_strategy", ["disable", "ignore", 0.0])
def test_inputs_that_require_grad_keep_no_graph(name: str, nan_strategy: Any) -> None:
    metric = CLASSES[name][0](2, nan_strategy=nan_strategy)
    weights = torch.tensor([0.5, -1.5, 2.0], requires_grad=True)
    for step in range(4):
        loss = weights * (step + 1)
        returned = metric(loss)
        metric.update(loss.sum())
        loss.sum().backward()  # type: ignore[no-untyped-call]  # the graph is the caller's alone: backward runs, and runs again next step
        if returned is not None:
            assert not returned.requires_grad
            assert returned.grad_fn is None
    for module in metric.modules():
        for key in getattr(module, "_defaults", {}):
            state = getattr(module, key)
            assert not state.requires_grad, key
            assert state.grad_fn is None, key
    value = metric.window_value
    assert value is not None
    assert value.grad_fn is None
    assert metric.compute().grad_fn is None
