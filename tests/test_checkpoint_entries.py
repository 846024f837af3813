"""Checkpoints are input too (issue 20, item 5): every malformed or foreign entry is refused, naming its key, and
leaves the metric exactly as it was; a differently configured metric's states are refused under ``strict=True``
and left out with a warning under ``strict=False``.

For every class, the metric that refuses a checkpoint is compared with an untouched twin fed the same updates:
every registered state (the wrapped metrics' included), ``window_value``, the position, ``_update_count``, and
the values that the next updates give.
"""

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any, Optional

import pytest
import torch
from torch import Tensor
from torchmetrics import Metric, SumMetric

from tests.synced_updates import FACTORIES  # one of each class, window 3
from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedMin, WindowedSum
from windowmetrics._window import WindowMetric

OTHER_CONFIG: dict[str, Callable[[], WindowMetric]] = {
    "mean": lambda: WindowedMean(4),
    "sum": lambda: WindowedSum(3, nan_strategy="ignore"),
    "ema": lambda: EMALoss(0.9, window=3),
    "max": lambda: WindowedMax(3, span_epochs=True),
    "min": lambda: WindowedMin(3, nan_strategy=0.0),
    "windowed": lambda: Windowed(SumMetric(), 5),
}
FIELDS = ("config", "position", "updates", "at_boundary", "has_latest", "rank")
VALUES = [2.0, 5.0, 1.0, 7.0, 3.0, 4.0, 8.0, 6.0, 0.5, 9.0]
SAVED_UPDATES = 4  # a window and one update of the next
PRIOR_UPDATES = 5  # what the metric that refuses a checkpoint has seen: a window and two updates of the next


def everything(metric: WindowMetric) -> dict[str, Any]:
    """Everything observable about a window metric: every registered state of it and of the metrics it holds,
    ``window_value``, the position, ``_update_count`` (of each metric) and the Python state."""
    found: dict[str, Any] = {}
    for prefix, module in metric.named_modules():
        if isinstance(module, Metric):
            for key in module._defaults:
                value = getattr(module, key)
                found[f"{prefix}.{key}"] = (
                    value.detach().clone() if isinstance(value, Tensor) else [item.clone() for item in value]
                )
            found[f"{prefix}._update_count"] = module._update_count
    if "_number_weights" in metric.__dict__:  # Python-number weights not yet folded into weight_sum: fold them here
        found[".weight_sum"] = found[".weight_sum"] + metric.__dict__["_number_weights"]
    value = metric.window_value
    found["window_value"] = None if value is None else value.clone()
    for name in ("_position", "_at_boundary", "_has_latest", "ema_numerator", "ema_denominator"):
        if hasattr(metric, name):
            attribute = getattr(metric, name)
            found[name] = attribute.clone() if isinstance(attribute, Tensor) else attribute
    found["at_boundary"] = metric.at_boundary
    return found


def assert_same(actual: dict[str, Any], expected: dict[str, Any], where: str = "") -> None:
    assert actual.keys() == expected.keys(), where
    for key, wanted in expected.items():
        got = actual[key]
        if isinstance(wanted, Tensor):
            assert isinstance(got, Tensor), (where, key)
            assert got.dtype == wanted.dtype, (where, key, got.dtype, wanted.dtype)
            torch.testing.assert_close(got, wanted, rtol=0, atol=0, equal_nan=True, msg=f"{where}: {key}")
        elif isinstance(wanted, list):
            assert len(got) == len(wanted), (where, key)
            for item, wanted_item in zip(got, wanted, strict=True):
                torch.testing.assert_close(item, wanted_item, rtol=0, atol=0, equal_nan=True)
        else:
            assert got == wanted or (got is None and wanted is None), (where, key, got, wanted)


def feed(metric: WindowMetric, values: list[float]) -> list[Optional[Tensor]]:
    returned = []
    for value in values:
        out = metric(torch.tensor(value))
        returned.append(None if out is None else out.clone())
    return returned


def next_values(metric: WindowMetric) -> list[tuple[Optional[Tensor], Tensor, bool]]:
    """What the metric gives on its next updates: forward's value, compute() and at_boundary after each."""
    observed = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compute() before any update, after a fresh start
        for value in VALUES[:7]:
            out = metric(torch.tensor(value))
            observed.append((None if out is None else out.clone(), metric.compute().clone(), metric.at_boundary))
    return observed


def assert_same_next_values(actual: list, expected: list) -> None:
    assert len(actual) == len(expected)
    for (out_a, compute_a, boundary_a), (out_b, compute_b, boundary_b) in zip(actual, expected, strict=True):
        assert boundary_a == boundary_b
        torch.testing.assert_close(out_a, out_b, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(compute_a, compute_b, rtol=0, atol=0, equal_nan=True)


def saved_checkpoint(name: str) -> dict[str, Any]:
    source = FACTORIES[name]()
    source.persistent(True)
    feed(source, VALUES[-SAVED_UPDATES:])
    return source.state_dict()


def target_and_twin(name: str) -> tuple[WindowMetric, WindowMetric]:
    target, twin = FACTORIES[name](), FACTORIES[name]()
    for metric in (target, twin):
        metric.persistent(True)
        feed(metric, VALUES[:PRIOR_UPDATES])
    return target, twin


def state_keys(name: str) -> list[str]:
    """The keys of the registered states in a checkpoint of ``name`` (not the position's)."""
    return [key for key in saved_checkpoint(name) if not key.startswith("window_")]


def _with(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(checkpoint: dict[str, Any]) -> dict[str, Any]:
        checkpoint[key] = value
        return checkpoint

    return change


def _without(*keys: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(checkpoint: dict[str, Any]) -> dict[str, Any]:
        for key in keys:
            del checkpoint[key]
        return checkpoint

    return change


def _position_only(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in checkpoint.items() if key.startswith("window_")}


def _states_only(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in checkpoint.items() if not key.startswith("window_")}


def _wrong_shape(checkpoint: dict[str, Any]) -> dict[str, Any]:
    key = _sum_key(checkpoint)
    checkpoint[key] = torch.zeros(4, dtype=torch.float64)
    return checkpoint


def _sum_key(checkpoint: dict[str, Any]) -> str:
    """The key of the first 2-element state (a window metric's ``[window, since reset]`` accumulator), or the wrapped
    metric's sum."""
    for key, value in checkpoint.items():
        if not key.startswith("window_") and "." not in key and isinstance(value, Tensor) and value.shape == (2,):
            return key
    return "metric.sum_value"  # Windowed(SumMetric()): the wrapped metric's sum


int64 = torch.int64
MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    # what is done to the checkpoint, and the key that the error must name
    "3-element position": (_with("window_position", torch.tensor([1, 0, 0])), "window_position"),
    "2-D position": (_with("window_position", torch.tensor([[1]])), "window_position"),
    "float position": (_with("window_position", torch.tensor(1.0)), "window_position"),
    "float64 position": (_with("window_position", torch.tensor(1.0, dtype=torch.float64)), "window_position"),
    "bool position": (_with("window_position", torch.tensor(True)), "window_position"),
    "complex position": (_with("window_position", torch.tensor(1 + 0j)), "window_position"),
    "negative updates": (_with("window_updates", torch.tensor(-5)), "window_updates"),
    "position = window": (_with("window_position", torch.tensor(3)), "window_position"),
    "position > window": (_with("window_position", torch.tensor(7)), "window_position"),
    "negative position": (_with("window_position", torch.tensor(-1)), "window_position"),
    "at_boundary 2": (_with("window_at_boundary", torch.tensor(2)), "window_at_boundary"),
    "has_latest -1": (_with("window_has_latest", torch.tensor(-1)), "window_has_latest"),
    "negative rank": (_with("window_rank", torch.tensor(-1)), "window_rank"),
    "position a bool": (_with("window_position", True), "window_position"),
    "position a str": (_with("window_position", "1"), "window_position"),
    "position None": (_with("window_position", None), "window_position"),
    "position an int": (_with("window_position", 1), "window_position"),
    "config a str": (_with("window_config", "WindowedMean(window=3)"), "window_config"),
    "no config": (_without("window_config"), "window_config"),
    "no updates": (_without("window_updates"), "window_updates"),
    "no rank": (_without("window_rank"), "window_rank"),
    "states without the position": (_states_only, "window_config"),
    "4-element sums": (_wrong_shape, "SUM"),
    "latest a bool": (_with("latest", True), "latest"),
    "latest a str": (_with("latest", "0.5"), "latest"),
    "latest None": (_with("latest", None), "latest"),
}
"""Every malformed entry, by what is wrong with it. ``SUM`` stands for the key of the metric's first accumulator."""


def malformed(name: str, case: str) -> tuple[dict[str, Any], str]:
    change, key = MALFORMED[case]
    checkpoint = change(saved_checkpoint(name))
    return checkpoint, _sum_key(saved_checkpoint(name)) if key == "SUM" else key


def assert_refused_and_unchanged(
    target: WindowMetric, twin: WindowMetric, checkpoint: dict[str, Any], key: str, strict: bool = True
) -> None:
    before = everything(target)
    with pytest.raises(RuntimeError, match=rf"(?m)^\s*{key}: ") as raised:
        target.load_state_dict(checkpoint, strict=strict)
    assert f"{type(target).__name__} left unchanged" in str(raised.value) or "differently configured" in str(
        raised.value
    )
    assert_same(everything(target), before, f"after refusing {key}")
    assert_same(everything(target), everything(twin), "against the untouched twin")
    assert_same_next_values(next_values(target), next_values(twin))


@pytest.mark.parametrize("case", MALFORMED)
@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "not-strict"])
def test_a_malformed_entry_is_refused_naming_its_key_and_changes_nothing(name: str, case: str, strict: bool) -> None:
    checkpoint, key = malformed(name, case)
    target, twin = target_and_twin(name)
    assert_refused_and_unchanged(target, twin, checkpoint, key, strict)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "not-strict"])
def test_a_position_without_the_states_is_refused(name: str, strict: bool) -> None:
    checkpoint = _position_only(saved_checkpoint(name))
    target, twin = target_and_twin(name)
    first_state = state_keys(name)[0]
    before = everything(target)
    with pytest.raises(RuntimeError, match=r"missing beside the window's position") as raised:
        target.load_state_dict(checkpoint, strict=strict)
    assert any(f"{key}: missing" in str(raised.value) for key in state_keys(name)), (first_state, raised.value)
    assert_same(everything(target), before)
    assert_same_next_values(next_values(target), next_values(twin))


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("missing", ["each"], ids=[""])
def test_each_missing_state_is_refused_naming_it(name: str, missing: str) -> None:
    for key in state_keys(name):
        if key == "latest" or key.startswith(("metric.", "since_reset.")):
            continue  # the window's own states; a wrapped metric's are checked by the wrapped metric
        checkpoint = _without(key)(saved_checkpoint(name))
        target, twin = target_and_twin(name)
        assert_refused_and_unchanged(target, twin, checkpoint, key)


@pytest.mark.parametrize("name", FACTORIES)
def test_each_state_of_another_dtype_kind_is_refused(name: str) -> None:
    for key in state_keys(name):
        if "." in key:
            continue
        for bad in (torch.zeros(2, dtype=torch.int64), torch.zeros((), dtype=torch.bool), "0", None, 0.5):
            if key == "latest" and isinstance(bad, Tensor) and name == "windowed":
                continue  # Windowed's latest is the wrapped metric's value: any tensor
            checkpoint = _with(key, bad)(saved_checkpoint(name))
            target, twin = target_and_twin(name)
            assert_refused_and_unchanged(target, twin, checkpoint, key)


# A differently configured metric ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FACTORIES)
def test_a_differently_configured_metric_is_refused_under_strict(name: str) -> None:
    source = OTHER_CONFIG[name]()
    source.persistent(True)
    feed(source, VALUES[-SAVED_UPDATES:])
    target, twin = target_and_twin(name)
    before = everything(target)
    with pytest.raises(
        RuntimeError,
        match=r"window_config: the states were saved by a differently configured metric than \w+\(.*strict=False",
    ):
        target.load_state_dict(source.state_dict(), strict=True)
    assert_same(everything(target), before)
    assert_same_next_values(next_values(target), next_values(twin))


class Model(torch.nn.Module):
    """A model holding a layer and a window metric, as a LightningModule does."""

    def __init__(self, metric: WindowMetric) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 2)
        self.metric = metric
        metric.persistent(True)


@pytest.mark.parametrize("name", FACTORIES)
def test_a_differently_configured_metric_is_left_out_with_a_warning_and_the_rest_loads(name: str) -> None:
    source = Model(OTHER_CONFIG[name]())
    feed(source.metric, VALUES[-SAVED_UPDATES:])
    checkpoint = source.state_dict()
    target, twin = target_and_twin(name)
    model = Model(target)
    with torch.no_grad():
        model.net.weight.fill_(3.0)
    before = everything(target)
    with pytest.warns(UserWarning, match=r"metric\.window_config: the states were saved by a differently config"):
        result = model.load_state_dict(checkpoint, strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    torch.testing.assert_close(model.net.weight, source.net.weight, rtol=0, atol=0)  # the rest of the model loads
    torch.testing.assert_close(model.net.bias, source.net.bias, rtol=0, atol=0)
    # "loads nothing for that metric": the metric is as it was (its own updates), not the source's
    assert_same(everything(target), before)
    assert_same_next_values(next_values(target), next_values(twin))
    del twin


@pytest.mark.parametrize("name", FACTORIES)
def test_the_same_configuration_loads(name: str) -> None:
    """The checkpoints above are refused for their faults alone: unchanged, each loads and resumes exactly."""
    source = FACTORIES[name]()
    source.persistent(True)
    feed(source, VALUES[-SAVED_UPDATES:])
    checkpoint = copy.deepcopy(source.state_dict())
    target, _ = target_and_twin(name)
    target.load_state_dict(checkpoint, strict=True)
    assert_same(everything(target), everything(source))
    assert_same_next_values(next_values(target), next_values(source))


# Models that change between saving and loading ------------------------------------------------------------------


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 2)


class NetWithMetric(Net):
    def __init__(self, metric: WindowMetric) -> None:
        super().__init__()
        self.metric = metric  # not persistent: torchmetrics' default


@pytest.mark.parametrize("name", FACTORIES)
def test_a_model_that_gains_a_non_persistent_window_metric_loads_its_older_checkpoint_strictly(name: str) -> None:
    old = Net()
    new = NetWithMetric(FACTORIES[name]())
    feed(new.metric, VALUES[:2])
    before = everything(new.metric)
    result = new.load_state_dict(old.state_dict(), strict=True)
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    torch.testing.assert_close(new.net.weight, old.net.weight, rtol=0, atol=0)
    assert_same(everything(new.metric), before)


@pytest.mark.parametrize("name", FACTORIES)
def test_a_model_that_gains_a_persistent_window_metric_loads_its_older_checkpoint_like_torchmetrics(name: str) -> None:
    """With ``persistent(True)`` too, as torchmetrics' ``SumMetric``: no key is reported missing (torchmetrics
    reports none for its states), and the metric keeps its updates."""
    old = Net()
    new = NetWithMetric(FACTORIES[name]())
    new.metric.persistent(True)
    feed(new.metric, VALUES[:2])
    before = everything(new.metric)
    result = new.load_state_dict(old.state_dict(), strict=True)
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    assert_same(everything(new.metric), before)
    model = NetWithMetric(SumMetric())  # type: ignore[arg-type]
    model.metric.persistent(True)
    assert model.load_state_dict(old.state_dict(), strict=True).missing_keys == []


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "not-persistent"])
def test_a_legacy_window_state_key_is_unexpected_under_strict(name: str, persistent: bool) -> None:
    model = NetWithMetric(FACTORIES[name]())
    model.metric.persistent(persistent)
    checkpoint = model.state_dict()
    checkpoint["metric.window_state"] = torch.tensor([1.0, 2.0], dtype=torch.float64)  # the format before issue 20
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "metric\.window_state"'):
        model.load_state_dict(checkpoint, strict=True)
    result = model.load_state_dict(checkpoint, strict=False)
    assert result.unexpected_keys == ["metric.window_state"]


# Refusals inside a model: the whole load fails, nothing of the metric loads -------------------------------------


@pytest.mark.parametrize("name", FACTORIES)
def test_a_refusal_inside_a_model_names_the_prefixed_key(name: str) -> None:
    source = Model(FACTORIES[name]())
    feed(source.metric, VALUES[-SAVED_UPDATES:])
    checkpoint = source.state_dict()
    checkpoint["metric.window_updates"] = torch.tensor(-5)
    target, twin = target_and_twin(name)
    model = Model(target)
    before = everything(target)
    with pytest.raises(RuntimeError, match=r"metric\.window_updates: expected an integer >= 0, got -5"):
        model.load_state_dict(checkpoint, strict=True)
    assert_same(everything(target), before)
    assert_same_next_values(next_values(target), next_values(twin))


def test_nan_and_inf_states_are_loaded_as_saved() -> None:
    """Values are not checked, only their kind and shape: a NaN window (a diverged loss) resumes as NaN."""
    source = WindowedMean(2)
    source.persistent(True)
    source.update(math.nan)
    target = WindowedMean(2)
    target.persistent(True)
    target.load_state_dict(source.state_dict())
    assert math.isnan(target(1.0).item())


# Windowed's own fields: the wrapped metrics' update counts -------------------------------------------------------

WRAPPED_COUNT_KEYS = ("window_metric_updates", "window_since_reset_updates", "window_carried_updates")
WRAPPED_COUNT_CASES: dict[str, Any] = {
    "negative": torch.tensor(-5),
    "float": torch.tensor(1.0),
    "bool": torch.tensor(True),
    "3-element": torch.tensor([1, 0, 0]),
    "a str": "1",
    "None": None,
    "an int": 1,
    "2-D": torch.tensor([[1]]),
}


@pytest.mark.parametrize("key", WRAPPED_COUNT_KEYS)
@pytest.mark.parametrize("bad", WRAPPED_COUNT_CASES.values(), ids=WRAPPED_COUNT_CASES.keys())
def test_a_malformed_wrapped_count_of_windowed_is_refused_naming_its_key(key: str, bad: Any) -> None:
    checkpoint = saved_checkpoint("windowed")
    assert key in checkpoint
    checkpoint[key] = bad
    target, twin = target_and_twin("windowed")
    assert_refused_and_unchanged(target, twin, checkpoint, key)


@pytest.mark.parametrize("key", WRAPPED_COUNT_KEYS)
def test_a_missing_wrapped_count_of_windowed_is_refused_naming_its_key(key: str) -> None:
    checkpoint = _without(key)(saved_checkpoint("windowed"))
    target, twin = target_and_twin("windowed")
    assert_refused_and_unchanged(target, twin, checkpoint, key)
