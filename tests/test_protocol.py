"""The rest of torchmetrics' ``Metric`` protocol, in the spirit of torchmetrics' own base-class tests.

A stable ``__hash__`` (sets, ``named_modules``), ``torch.jit.script`` of the metrics and of modules holding them
(``LightningModule.to_torchscript`` included), ``plot()``, updates refused while synchronised (``sync()`` without
``unsync()``, in a one-process world and in a real two-process gloo group), creation under
``torch.device("meta")`` (torchmetrics' ``SumMetric`` as the model), and ``persistent()`` with no argument.
"""

import copy
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import matplotlib
import pytest
import torch
from lightning import LightningModule
from torch import Tensor
from torchmetrics import Metric, MetricCollection, SumMetric
from torchmetrics.classification import BinaryAccuracy
from torchmetrics.utilities.exceptions import TorchMetricsUserError

from tests.process_group import run_in_process_group
from tests.reference import Call, ema_of, expected_series, mean_of, sum_of
from tests.synced_updates import FACTORIES, VALUES, all_states, synced_updates_worker
from tests.versions import SUM_METRIC_NOT_ON_META
from windowmetrics import EMALoss, Windowed, WindowedMean
from windowmetrics._window import WindowMetric

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning",
    "ignore:This property will be removed in 2.0.0:DeprecationWarning",  # torchmetrics', read by the scripting
)


def reference(name: str, calls: list[Call]) -> tuple[list[Optional[float]], list[float]]:
    """What forward and compute return after each call (tests/reference.py); Windowed wraps a SumMetric."""
    value_of: Callable[[list[list[Call]]], float] = {
        "mean": lambda windows: mean_of(windows[-1]),
        "sum": lambda windows: sum_of(windows[-1]),
        "ema": lambda windows: ema_of(windows, 0.5),
        "max": lambda windows: largest(windows[-1]),
        "min": lambda windows: smallest(windows[-1]),
        "windowed": lambda windows: sum_of(windows[-1]),
    }[name]
    aggregate_of: Optional[Callable[[list[Call]], float]] = {
        "mean": mean_of,
        "sum": sum_of,
        "ema": None,
        "max": largest,
        "min": smallest,
        "windowed": sum_of,
    }[name]
    return expected_series(calls, 3, value_of, aggregate_of)


def largest(calls: list[Call]) -> float:
    return max(float(value) for value, _ in calls)


def smallest(calls: list[Call]) -> float:
    return min(float(value) for value, _ in calls)


def assert_same_states(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, Tensor):
            torch.testing.assert_close(actual[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
        else:
            assert actual[key] == value, key


def plotted_lines(ax: Any) -> list[list[float]]:
    """The y values of each line that matplotlib drew on the axis."""
    return [[float(y) for y in line.get_ydata()] for line in ax.get_lines()]


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


# Hash ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FACTORIES)
def test_the_hash_is_stable_between_updates_and_a_metric_is_in_a_set_of_itself(name: str) -> None:
    metric, other = FACTORIES[name](), FACTORIES[name]()
    for value in [None, *VALUES]:
        if value is not None:
            metric(value)
            other(value)
            metric.compute()
        assert hash(metric) == hash(metric)
        assert metric in {metric}
        assert metric in {metric: 1}
        assert hash(metric) != hash(other)  # the same states, but another metric (torchmetrics hashes the id)
        assert metric not in {other}


@pytest.mark.parametrize("name", FACTORIES)
def test_a_metric_held_by_two_attributes_is_one_module(name: str) -> None:
    holder = torch.nn.Module()
    holder.first = FACTORIES[name]()
    holder.second = holder.first
    for value in VALUES[:4]:
        holder.first(value)
        named = dict(holder.named_modules())
        assert [key for key, module in named.items() if module is holder.first] == ["first"]
        assert len([module for module in holder.modules() if module is holder.first]) == 1


# TorchScript -------------------------------------------------------------------------------------------------


class Holder(torch.nn.Module):
    """A model that holds a metric, which its forward does not use (metrics are not scripted)."""

    def __init__(self, metric: Metric) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 1)
        self.metric = metric

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


class LightningHolder(LightningModule):
    def __init__(self, metric: Metric) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 1)
        self.metric = metric

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


@pytest.mark.parametrize("name", FACTORIES)
def test_torch_jit_script_of_the_metric_and_of_a_module_holding_it(name: str) -> None:
    torch.jit.script(FACTORIES[name]())
    holder = Holder(FACTORIES[name]())
    for value in VALUES[:4]:  # a window and a part of the next: states, a latest value, a position
        holder.metric(value)
    scripted = torch.jit.script(holder)
    x = torch.randn(4, 2)
    torch.testing.assert_close(scripted(x), holder(x), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:`LightningModule.to_torchscript` has been deprecated")
@pytest.mark.parametrize("name", FACTORIES)
def test_lightning_to_torchscript_of_a_module_holding_the_metric(name: str, tmp_path: Path) -> None:
    module = LightningHolder(FACTORIES[name]())
    module.metric(2.0)
    scripted = module.to_torchscript(file_path=tmp_path / "model.pt")
    assert isinstance(scripted, torch.jit.ScriptModule)
    x = torch.randn(4, 2)
    torch.testing.assert_close(scripted(x), module(x), rtol=0, atol=0)
    loaded = torch.jit.load(tmp_path / "model.pt")  # type: ignore[no-untyped-call]
    torch.testing.assert_close(loaded(x), module(x), rtol=0, atol=0)


# plot() ------------------------------------------------------------------------------------------------------


def windows_of(name: str, metric: WindowMetric) -> list[Tensor]:
    """Feed the metric :data:`VALUES`; return the value of each window, as forward returns it at boundaries."""
    values = []
    for value in VALUES:
        if name == "accuracy":
            returned = metric(torch.tensor([value / 10, 0.9, 0.2]), torch.tensor([1, 0, 0]))
        else:
            returned = metric(value)
        if metric.at_boundary:
            assert returned is not None
            values.append(returned)
    return values


PLOTTED: dict[str, Callable[[], WindowMetric]] = {
    **FACTORIES,
    "accuracy": lambda: Windowed(BinaryAccuracy(), 3),
}


@pytest.mark.parametrize("name", PLOTTED)
def test_plot_one_value_a_list_of_window_values_and_the_default(name: str) -> None:
    metric = PLOTTED[name]()
    values = windows_of(name, metric)
    assert len(values) == 2
    fig, ax = metric.plot(values[-1])
    assert fig is not None
    assert plotted_lines(ax) == [[values[-1].item()]]
    fig, ax = metric.plot(values)
    assert isinstance(ax, matplotlib.axes.Axes)
    assert plotted_lines(ax) == [[value.item() for value in values]]
    assert ax.get_xlabel() == "Step"
    _, ax = metric.plot()  # compute(): the latest window
    assert plotted_lines(ax) == [[metric.compute().item()]]
    _, given = plt.subplots()
    assert metric.plot(values, ax=given)[1] is given


def test_metric_collection_plot_with_windowmetrics_members() -> None:
    collection = MetricCollection({"mean": WindowedMean(2), "ema": EMALoss(0.5, window=2), "sum": SumMetric()})
    computed = []
    for value in VALUES[:4]:
        collection(torch.tensor(value))
        computed.append(collection.compute())
    separately = collection.plot()
    assert isinstance(separately, list)
    assert len(separately) == 3
    plotted = {ax.get_ylabel(): plotted_lines(ax) for _, ax in separately}
    assert plotted["WindowedMean"] == [[3.75]]  # compute(): every update since the reset, (2 + 5 + 1 + 7) / 4
    together: Any = collection.plot(together=True)
    assert len(together[1].get_lines()) == 3
    steps = collection.plot(computed)
    assert isinstance(steps, list)
    by_name = {ax.get_ylabel(): plotted_lines(ax) for _, ax in steps}
    assert by_name["WindowedMean"] == [[value["mean"].item() for value in computed]]


# Updates while synchronised ------------------------------------------------------------------------------------


def one_process_gather(tensor: Tensor, group: Optional[Any] = None) -> list[Tensor]:
    """``all_gather`` in a world of one process: this process's tensor."""
    return [tensor.clone()]


def check_refused_while_synced(metric: WindowMetric, value: float) -> None:
    """Every way to update raises TorchMetricsUserError and leaves every state as it was."""
    before = all_states(metric)
    for attempt in (lambda: metric.update(value), lambda: metric(value), lambda: metric.forward(value)):
        with pytest.raises(TorchMetricsUserError, match=r"cannot be updated while it is synchronised: call `unsync"):
            attempt()
        assert_same_states(all_states(metric), before)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("updates", [2, 4])
def test_update_and_forward_while_synced_raise_and_change_nothing(name: str, updates: int) -> None:
    """``sync()`` in a world of one process (the gather returns this process's tensor), then every update raises;
    after ``unsync()`` the metric goes on like one that was never synchronised."""
    metric, twin = FACTORIES[name](), FACTORIES[name]()
    for value in VALUES[:updates]:
        metric(value)
        twin(value)
    metric.sync(dist_sync_fn=one_process_gather, distributed_available=lambda: True)
    assert metric._is_synced
    check_refused_while_synced(metric, 100.0)
    metric.unsync()
    forwards, computes = reference(name, [(value, 1.0) for value in VALUES])
    for index in range(updates, len(VALUES)):
        returned = metric(VALUES[index])
        twin(VALUES[index])
        assert returned is not None
        torch.testing.assert_close(returned, torch.tensor(forwards[index]), rtol=1e-6, atol=0)
        torch.testing.assert_close(metric.compute(), torch.tensor(computes[index]), rtol=1e-6, atol=0)
    assert_same_states(all_states(metric), all_states(twin))


def test_torchmetrics_own_metric_refuses_forward_while_synced_too() -> None:
    """The model: torchmetrics' SumMetric refuses ``forward`` while synced (its ``update`` does not check)."""
    metric = SumMetric()
    metric.update(1.0)
    metric.sync(dist_sync_fn=one_process_gather, distributed_available=lambda: True)
    with pytest.raises(TorchMetricsUserError, match="shouldn't be synced when performing ``forward``"):
        metric(1.0)


@pytest.fixture(scope="module")
def synced_in_two_processes(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, Any]]]:
    return run_in_process_group(synced_updates_worker, tmp_path_factory.mktemp("synced"))


def synced_window_and_aggregate(name: str, rank: int, run: dict[str, Any]) -> None:
    """The synchronised states: each ``[open window, since reset]`` over both processes (rank r fed its values
    times r + 1: a window of 3, then one update of the next)."""
    open_values = [VALUES[3] * (process + 1) for process in range(2)]
    all_values = [value * (process + 1) for process in range(2) for value in VALUES[:4]]
    own_values = [value * (rank + 1) for value in VALUES[:4]]
    synced, local = run["synced"], run["local"]
    if name in ("max", "min"):
        pick = max if name == "max" else min
        assert synced[".extreme"].tolist() == [pick(open_values), pick(all_values)], rank
        assert local[".extreme"].tolist() == [open_values[rank], pick(own_values)], rank
        return
    assert synced[".value_sum"].tolist() == [sum(open_values), sum(all_values)], rank
    assert synced[".weight_sum"].tolist() == [2.0, 8.0], rank  # 1 and 4 number weights of 1.0 on each process
    assert local[".value_sum"].tolist() == [open_values[rank], sum(own_values)], rank


@pytest.mark.parametrize("name", FACTORIES)
def test_updates_while_synced_in_a_real_process_group_raise_and_change_nothing(
    synced_in_two_processes: list[dict[str, dict[str, Any]]], name: str
) -> None:
    for rank, results in enumerate(synced_in_two_processes):
        run = results[name]
        assert len(run["refusals"]) == 2, (rank, run["refusals"])
        assert all("cannot be updated while it is synchronised" in refusal for refusal in run["refusals"])
        assert_same_states(run["after"], run["synced"])
        assert_same_states(run["unsynced"], run["local"])
        if name != "windowed":  # Windowed's sync() leaves the wrapped metric to synchronise itself
            synced_window_and_aggregate(name, rank, run)


# Creation under torch.device("meta") ---------------------------------------------------------------------------

META_FACTORIES: dict[str, Callable[[], Metric]] = {**FACTORIES, "SumMetric (the model)": SumMetric}


@SUM_METRIC_NOT_ON_META
@pytest.mark.parametrize("name", META_FACTORIES)
def test_creation_under_the_meta_device_is_like_sum_metrics(name: str) -> None:
    """Created under ``torch.device("meta")``, a metric is on the meta device with every state there, with the
    dtypes and shapes of one created on the CPU; it has the same ``repr`` and ``state_dict`` keys, and ``reset()``
    and ``compute()`` keep it there, as torchmetrics' ``SumMetric``."""
    with torch.device("meta"):
        metric = META_FACTORIES[name]()
    on_cpu = META_FACTORIES[name]()
    assert metric.device == torch.device("meta")
    assert repr(metric) == repr(on_cpu)
    for (prefix, module), (_, cpu_module) in zip(metric.named_modules(), on_cpu.named_modules(), strict=True):
        assert isinstance(module, Metric)
        assert isinstance(cpu_module, Metric)
        for key in cpu_module._defaults:
            state, default, cpu_state = getattr(module, key), module._defaults[key], getattr(cpu_module, key)
            assert isinstance(default, Tensor)
            assert state.is_meta, (prefix, key)
            assert default.is_meta, (prefix, key)
            assert (state.dtype, state.shape) == (cpu_state.dtype, cpu_state.shape), (prefix, key)
    metric.persistent(True)
    on_cpu.persistent(True)
    assert metric.state_dict().keys() == on_cpu.state_dict().keys()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The ``compute`` method of metric", UserWarning)
        assert metric.compute().is_meta
    metric.reset()
    assert all(getattr(metric, key).is_meta for key in metric._defaults)


@SUM_METRIC_NOT_ON_META
@pytest.mark.parametrize("name", ["mean", "sum", "ema"])
def test_a_metric_created_on_the_meta_device_takes_meta_inputs(name: str) -> None:
    """More than SumMetric does (its NaN check reads the value): updates with meta inputs run, shapes only."""
    with torch.device("meta"):
        metric = FACTORIES[name]()
        values = [torch.ones(2) for _ in range(4)]
    returned = [metric(value) for value in values]
    assert returned[:2] == [None, None]
    assert all(value is not None and value.is_meta and value.shape == () for value in returned[2:])
    assert metric.update_count == 4
    assert not metric.at_boundary


@pytest.mark.parametrize("name", ["mean", "sum", "ema"])
def test_a_meta_metric_materialised_by_an_assigning_load_goes_on_like_sum_metric(name: str) -> None:
    source = FACTORIES[name]()
    source.persistent(True)
    for value in VALUES[:4]:
        source(value)
    with torch.device("meta"):
        metric = FACTORIES[name]()
    metric.persistent(True)
    metric.load_state_dict(source.state_dict(), assign=True)
    assert not metric.compute().is_meta
    torch.testing.assert_close(metric.compute(), source.compute())


# persistent() --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*FACTORIES, "accuracy"])
def test_persistent_with_no_argument_leaves_the_states_out_as_torchmetrics_does(name: str) -> None:
    metric = PLOTTED[name]()
    inner = copy.deepcopy(metric.metric) if isinstance(metric, Windowed) else SumMetric()
    windows_of(name, metric)
    metric.persistent(True)
    saved = metric.state_dict()
    assert "window_position" in saved
    if isinstance(metric, Windowed):
        assert any(key.startswith("metric.") for key in saved)
    metric.persistent()
    assert metric.state_dict() == {}
    if isinstance(metric, Windowed):  # the wrapped metric's states are out too
        assert metric.metric.state_dict() == {}
        assert not any(metric.metric._persistent.values())
    assert not any(metric._persistent.values())
    inner.persistent(True)
    inner.persistent()  # torchmetrics' own metric, the model
    assert inner.state_dict() == {}
    # persistent(False) is the same as no argument; persistent(True) again saves them all
    metric.persistent(True)
    metric.persistent(False)
    assert metric.state_dict() == {}
    metric.persistent(True)
    assert metric.state_dict().keys() == saved.keys()
