"""Windows across real processes: values, agreement, collectives, errors, MetricCollection, sync() and pickling.

One spawn of two processes in a gloo group (on the loopback interface) runs every scenario of
``tests/distributed_scenarios.py``; each test below checks what the processes recorded against brute-force
values over the inputs of all the processes.
"""

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Optional

import pytest

from tests.collectives import Collective
from tests.distributed_scenarios import (
    COLLECTION_MEMBERS,
    MANUAL_SYNC_WINDOW,
    SERIES,
    SYNCS,
    UNEVEN,
    VALUE_KINDS,
    WRAPPED_KINDS,
    Args,
    Results,
    SeriesSpec,
    Step,
    collection_inputs,
    manual_sync_inputs,
    pickled_inputs,
    pickled_metrics,
    worker,
)
from tests.process_group import WORLD_SIZE, run_in_process_group
from tests.reference import Call, ema_of, mean_of, sum_of, weighted_sums
from windowmetrics._window import WindowMetric

ValueOf = Callable[[list[list[Args]]], float]
"""The value after the given windows (the last one possibly partial) of a metric, from the windows' inputs."""


class Distributed(NamedTuple):
    results: list[Results]  # by rank
    parent_metrics: dict[str, WindowMetric]  # pickled into the processes after the parent's updates


@pytest.fixture(scope="module")
def distributed(tmp_path_factory: pytest.TempPathFactory) -> Distributed:
    """Run every scenario in one spawn of two processes (skipped, saying why, where gloo is unavailable)."""
    metrics = pickled_metrics()
    for kind, metric in metrics.items():
        for args in pickled_inputs(kind)[1]:
            metric.update(*args)
    results = run_in_process_group(worker, tmp_path_factory.mktemp("distributed"), metrics)
    return Distributed(results, metrics)


# References ------------------------------------------------------------------------------------------------------


def accuracy_of(calls: Sequence[Args]) -> float:
    pairs = [pair for preds, target in calls for pair in zip(preds.tolist(), target.tolist(), strict=True)]
    return sum(1 for pred, target in pairs if pred == target) / len(pairs)


def mean_squared_error_of(calls: Sequence[Args]) -> float:
    pairs = [pair for preds, target in calls for pair in zip(preds.tolist(), target.tolist(), strict=True)]
    return math.fsum((pred - target) ** 2 for pred, target in pairs) / len(pairs)


def unweighted(calls: Sequence[Args]) -> list[Call]:
    return [(value, 1.0) for (value,) in calls]


def value_of(kind: str, decay: float) -> ValueOf:
    """The brute-force value of a metric of ``kind`` after the given windows."""
    if kind == "mean":
        return lambda windows: mean_of(windows[-1])
    if kind == "sum":
        return lambda windows: sum_of(unweighted(windows[-1]))
    if kind == "ema":
        return lambda windows: ema_of(windows, decay)
    if kind == "accuracy":
        return lambda windows: accuracy_of(windows[-1])
    return lambda windows: mean_squared_error_of(windows[-1])


def expected_over(
    calls: Sequence[Sequence[Args]], window: int, value: ValueOf
) -> tuple[list[Optional[float]], list[float]]:
    """Return, after each update, what ``forward`` and ``compute`` return over the given processes' ``calls``.

    A window is the concatenation of every process's updates of that window; before the first window
    completes, ``compute`` gives the value of every process's updates so far.
    """
    forwards: list[Optional[float]] = []
    computes: list[float] = []
    for count in range(1, len(calls[0]) + 1):
        completed = count // window
        windows = [[args for own in calls for args in own[i * window : (i + 1) * window]] for i in range(completed)]
        latest = value(windows) if completed else None
        forwards.append(latest)
        computes.append(latest if latest is not None else value([[args for own in calls for args in own[:count]]]))
    return forwards, computes


def tolerance(kind: str) -> float:
    return 1e-5 if kind == "mse" else 1e-6  # MeanSquaredError sums in float32


def close(actual: Optional[float], expected: Optional[float], rel: float = 1e-6) -> bool:
    if actual is None or expected is None:
        return actual is expected
    return bool(actual == pytest.approx(expected, rel=rel, abs=rel, nan_ok=True))


def bits(value: Optional[float]) -> Optional[bytes]:
    return None if value is None else struct.pack("<d", value)


# Series of updates: values, agreement between processes, collectives -------------------------------------------


def series_of(distributed: Distributed, spec: SeriesSpec) -> list[list[Step]]:
    """Return each participating rank's steps; check that the other ranks ran nothing."""
    for rank in range(WORLD_SIZE):
        if rank not in spec.ranks():
            assert spec.name not in distributed.results[rank].series, f"rank {rank} is outside the group"
    return [distributed.results[rank].series[spec.name] for rank in spec.ranks()]


def test_series_cover_every_kind_and_synchronisation() -> None:
    """Each metric runs, with each synchronisation, a series of two windows or more, computed before the first."""
    for kind in VALUE_KINDS + WRAPPED_KINDS:
        for sync in SYNCS:
            windows = [
                (len(spec.inputs.calls[0]), spec.inputs.window)
                for spec in SERIES
                if (spec.kind, spec.sync) == (kind, sync)
            ]
            assert any(count >= 2 * window > 2 for count, window in windows), (kind, sync, windows)


@pytest.mark.parametrize("spec", SERIES, ids=lambda spec: spec.name)
def test_series_values_match_reference(distributed: Distributed, spec: SeriesSpec) -> None:
    """Every forward and compute value is the value over the window's updates of every synchronised process."""
    inputs = spec.inputs
    value = value_of(spec.kind, inputs.decay)
    for rank, steps in enumerate(series_of(distributed, spec)):
        synchronised = [inputs.calls[rank]] if spec.sync in ("off", "rank0") else list(inputs.calls)
        forwards, computes = expected_over(synchronised, inputs.window, value)
        for index, step in enumerate(steps):
            where = f"rank {rank}, update {index + 1} (window {inputs.window})"
            assert step.at_boundary == ((index + 1) % inputs.window == 0), where
            assert close(step.returned, forwards[index], tolerance(spec.kind)), (where, step, forwards[index])
            assert close(step.computed, computes[index], tolerance(spec.kind)), (where, step, computes[index])
            assert bits(step.recomputed) == bits(step.computed), where


@pytest.mark.parametrize("spec", [spec for spec in SERIES if spec.sync in ("world", "custom")], ids=lambda s: s.name)
def test_series_ranks_agree_bitwise(distributed: Distributed, spec: SeriesSpec) -> None:
    """Every process returns the same values, to the last bit, after every update."""
    first, second = series_of(distributed, spec)
    for index, (one, other) in enumerate(zip(first, second, strict=True)):
        where = f"update {index + 1}: {one} on rank 0, {other} on rank 1"
        assert bits(one.returned) == bits(other.returned), where
        assert bits(one.computed) == bits(other.computed), where


@pytest.mark.parametrize("spec", SERIES, ids=lambda spec: spec.name)
def test_series_collectives(distributed: Distributed, spec: SeriesSpec) -> None:
    """No collective between boundaries; one per boundary (Windowed: its metric's own); none from a cached value.

    ``compute()`` before the first window is synchronised like a boundary; after it, it reads the latest value.
    """
    window = spec.inputs.window
    for rank, steps in enumerate(series_of(distributed, spec)):
        if spec.kind in WRAPPED_KINDS:  # what the unwrapped metric's compute() issues with the same settings
            sync = distributed.results[rank].bare_compute[spec.kind, spec.sync]
        else:
            sync = [] if spec.sync == "off" else [Collective("all_gather", spec.sync)]
        for index, step in enumerate(steps):
            where = f"rank {rank}, update {index + 1} (window {window})"
            assert step.update_collectives == (sync if step.at_boundary else []), where
            assert step.compute_collectives == (sync if index + 1 < window else []), where
            assert step.recompute_collectives == [], where


def test_unwrapped_metrics_synchronise_in_compute(distributed: Distributed) -> None:
    """The unwrapped metrics' compute(), which the Windowed expectations copy, synchronises on the given group."""
    for results in distributed.results:
        for (kind, sync), collectives in results.bare_compute.items():
            names = {collective.name for collective in collectives}
            assert (names == set()) if sync == "off" else (names == {"barrier", "all_gather"}), (kind, sync)
            assert all(collective.group == sync for collective in collectives), (kind, sync, collectives)


# Uneven numbers of updates -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", UNEVEN)
@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_uneven_updates_raise_on_every_process(distributed: Distributed, kind: str, scenario: str) -> None:
    """Processes at different update counts at a synchronisation all raise, naming the counts."""
    _, counts = UNEVEN[scenario]
    for rank, results in enumerate(distributed.results):
        message = results.uneven[f"{kind}: {scenario}"]
        assert f"({list(counts)}, in rank order)" in message, f"rank {rank}: {message!r}"


# MetricCollection ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
def test_collection_values_match_reference(distributed: Distributed, use_forward: bool) -> None:
    inputs = collection_inputs()
    values = {name: value_of(name.removesuffix("_twin"), inputs.decay) for name in COLLECTION_MEMBERS}
    weights_ignored = {"sum"}  # WindowedSum takes no weight: the collection passes it the value alone
    for rank, results in enumerate(distributed.results):
        run = results.collection[use_forward]
        for name in COLLECTION_MEMBERS:
            calls = [[(call[0],) for call in own] if name in weights_ignored else own for own in inputs.calls]
            forwards, computes = expected_over(calls, inputs.window, values[name])
            for index, expected in enumerate(forwards):
                where = f"rank {rank}, {name}, update {index + 1}"
                assert close(run.logged[index][name], expected), (where, run.logged[index][name], expected)
                assert close(run.computed[index][name], computes[index]), (where, run.computed[index], computes)


@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
def test_collection_collectives(distributed: Distributed, use_forward: bool) -> None:
    """At most one collective per member per boundary, none between boundaries, none from compute() after one."""
    window = collection_inputs().window
    for rank, results in enumerate(distributed.results):
        run = results.collection[use_forward]
        assert all(len(group) == 1 for group in run.compute_groups), run.compute_groups  # never merged
        for index, (update, compute) in enumerate(zip(run.update_collectives, run.compute_collectives, strict=True)):
            where = f"rank {rank}, update {index + 1}: {update}, {compute}"
            boundary = (index + 1) % window == 0
            assert set(update) <= {Collective("all_gather", "world")}, where
            assert len(update) <= (len(COLLECTION_MEMBERS) if boundary else 0), where
            assert set(compute) <= {Collective("all_gather", "world")}, where
            assert len(compute) <= (len(COLLECTION_MEMBERS) if index + 1 < window else 0), where


# Manual sync() and unsync() ----------------------------------------------------------------------------------


def window_sums_of(kind: str, calls: Sequence[Args]) -> tuple[float, float, float]:
    value_sum, weight_sum, nans = weighted_sums(unweighted(calls) if kind == "sum" else calls)
    return value_sum, weight_sum, float(nans)


@pytest.mark.parametrize("host", [True, False], ids=["host", "tensor"])
@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_manual_sync_gives_global_sums_then_restores_local_ones(
    distributed: Distributed, kind: str, host: bool
) -> None:
    inputs = manual_sync_inputs(kind)
    before_last = [own[: MANUAL_SYNC_WINDOW - 1] for own in inputs.calls]
    global_sums = window_sums_of(kind, [args for own in before_last for args in own])
    for rank, results in enumerate(distributed.results):
        run = results.manual_sync[kind, host]
        local_sums = window_sums_of(kind, before_last[rank])
        assert all(map(close, run.local, local_sums)), (rank, run.local, local_sums)
        assert all(map(close, run.synced, global_sums)), (rank, run.synced, global_sums)
        assert all(map(close, run.in_context, global_sums)), (rank, run.in_context, global_sums)
        assert run.restored == run.local, rank
        assert run.after_context == run.local, rank
        expected = value_of(kind, inputs.decay)([[args for own in inputs.calls for args in own]])
        assert close(run.boundary, expected), (rank, run.boundary, expected)  # the window counted every update once
        assert run.sync_collectives, "sync() issued no collective"


# Metrics pickled into spawned processes ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mean", *WRAPPED_KINDS])
def test_pickled_metric_keeps_each_process_own_state(distributed: Distributed, kind: str) -> None:
    """Each process's updates of a metric pickled into it stay in its own state (not in shared memory)."""
    inputs, before, after = pickled_inputs(kind)
    value = value_of(kind, inputs.decay)
    for rank, results in enumerate(distributed.results):
        expected = value([[*before, *after[rank]]])
        returned, computed = results.pickled[kind]
        assert close(returned, expected, tolerance(kind)), (rank, returned, expected)
        assert close(computed, expected, tolerance(kind)), (rank, computed, expected)


@pytest.mark.parametrize("kind", ["mean", *WRAPPED_KINDS])
def test_pickled_metric_is_unchanged_in_parent(distributed: Distributed, kind: str) -> None:
    inputs, before, _ = pickled_inputs(kind)
    computed: Any = distributed.parent_metrics[kind].compute()
    expected = value_of(kind, inputs.decay)([before])
    assert close(float(computed), expected, tolerance(kind)), (float(computed), expected)
