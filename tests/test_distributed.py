"""Windows across real processes: values, agreement, collectives, errors, MetricCollection, sync() and pickling.

One spawn of two processes in a gloo group (on the loopback interface) runs every scenario of
``tests/distributed_scenarios.py``; each test below checks what the processes recorded against brute-force
values over the inputs of all the processes: a window's value over every process's updates of that window, and
``compute()`` over every process's updates since the reset (completed windows and the window in progress), but
``EMALoss``'s, which is the latest average.

The counts of collectives are deterministic and asserted: a boundary issues exactly one collective (an
``all_reduce`` of the packed sums; ``WindowedMax``/``WindowedMin``: an ``all_gather``; with a user's
``dist_sync_fn``, one call of it); ``compute()`` of the aggregate issues exactly one; updates between boundaries,
a cached ``compute()``, and ``sync_on_compute=False`` issue none.
"""

import functools
import math
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import pytest
import torch

from tests.collectives import Collective
from tests.distributed_scenarios import (
    COLLECTION_MEMBERS,
    EXTREME_KINDS,
    MANUAL_SYNC_COUNT,
    MANUAL_SYNC_STRATEGY,
    MANUAL_SYNC_WINDOW,
    NAN_STRATEGIES,
    PICKLED_KINDS,
    SERIES,
    SUM_KINDS,
    SYNCS,
    UNEVEN,
    UNEVEN_GATHERS,
    UNWEIGHTED_KINDS,
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
    uneven_inputs,
    uneven_key,
    worker,
)
from tests.process_group import WORLD_SIZE, run_in_process_group
from tests.reference import Call, elements, ema_of, mean_of, sum_of, weighted_sums
from windowmetrics._window import WindowMetric

ValueOf = Callable[[list[list[Args]]], float]
"""The value after the given windows (the last one possibly partial) of a metric, from the windows' inputs."""
AggregateOf = Callable[[list[Args]], float]
"""The value of ``compute()`` over the given updates (every process's, since the reset)."""


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


def as_calls(kind: str, calls: Sequence[Args]) -> list[Call]:
    """The ``(value, weight)`` pairs of tests/reference.py: the kinds that take no weight weigh 1."""
    return [(args[0], 1.0) for args in calls] if kind in UNWEIGHTED_KINDS else [(args[0], args[1]) for args in calls]


def nans_in(kind: str, calls: Sequence[Args]) -> int:
    """The NaN elements (of value or weight) in the calls: what ``"warn"``/``"error"`` report."""
    return sum(
        math.isnan(value) or math.isnan(weight)
        for call in as_calls(kind, calls)
        for value, weight in zip(*elements(call), strict=True)
    )


def extreme_of(calls: Sequence[Call], largest: bool, nan_strategy: Any = "disable") -> float:
    """The largest (smallest) element of the calls' values, NaN treated as the strategy says.

    ``"disable"``: a NaN propagates; no element gives ``-inf`` (``inf``), as torchmetrics' ``MaxMetric``.
    Dropping strategies: NaN elements are left out, and no valid element gives NaN. A float replaces NaN.
    """
    values = [value for call in calls for value in elements(call)[0]]
    pick = max if largest else min
    if nan_strategy == "disable":
        if any(math.isnan(value) for value in values):
            return math.nan
        return pick(values, default=-math.inf if largest else math.inf)
    if isinstance(nan_strategy, float):
        values = [nan_strategy if math.isnan(value) else value for value in values]
        return pick(values, default=-math.inf if largest else math.inf)
    valid = [value for value in values if not math.isnan(value)]
    return pick(valid) if valid else math.nan


def accuracy_of(calls: Sequence[Args]) -> float:
    pairs = [pair for preds, target in calls for pair in zip(preds.tolist(), target.tolist(), strict=True)]
    return sum(1 for pred, target in pairs if pred == target) / len(pairs)


def mean_squared_error_of(calls: Sequence[Args]) -> float:
    pairs = [pair for preds, target in calls for pair in zip(preds.tolist(), target.tolist(), strict=True)]
    return math.fsum((pred - target) ** 2 for pred, target in pairs) / len(pairs)


def aggregate_of(kind: str, nan_strategy: Any = "disable") -> AggregateOf:
    """The brute-force value of one window (or of ``compute()``) holding the given updates."""
    if kind == "mean":
        return lambda calls: mean_of(as_calls(kind, calls), nan_strategy)
    if kind == "sum":
        return lambda calls: sum_of(as_calls(kind, calls), nan_strategy)
    if kind in EXTREME_KINDS:
        return lambda calls: extreme_of(as_calls(kind, calls), kind == "max", nan_strategy)
    if kind == "accuracy":
        return accuracy_of
    assert kind == "mse", kind
    return mean_squared_error_of


def value_of(kind: str, decay: float, nan_strategy: Any = "disable") -> ValueOf:
    """The brute-force value of a metric of ``kind`` after the given windows: the last one's, or the EMA."""
    if kind == "ema":
        return lambda windows: ema_of([as_calls(kind, window) for window in windows], decay, nan_strategy)
    aggregate = aggregate_of(kind, nan_strategy)
    return lambda windows: aggregate(windows[-1])


@dataclass
class Expected:
    """What one update of a series must give, over the synchronised processes' updates so far."""

    latest: Optional[float]  # the latest window value (None before the first window that was kept)
    boundary: bool  # the update completes a window
    boundary_nans: int  # NaN elements in the window it completes
    raises: bool  # the boundary raises (nan_strategy="error"): the window is discarded
    computed: float
    compute_nans: int  # NaN elements in what compute() covers
    compute_raises: bool
    compute_synchronises: bool  # compute() reads synchronised sums (EMALoss after its first window reads none)
    compute_where: str  # what compute() covers, as a NaN report names it


def expected_over(
    kind: str, decay: float, nan_strategy: Any, calls: Sequence[Sequence[Args]], window: int
) -> list[Expected]:
    """Return, after each update, what the metric must give over the given processes' ``calls``.

    A window is the concatenation of every process's updates of that window; ``compute()`` covers every
    process's updates so far (``EMALoss``: the latest average; before its first window, the window in
    progress). With ``nan_strategy="error"`` a window holding a NaN raises at its boundary and is discarded.
    """
    value = value_of(kind, decay, nan_strategy)
    aggregate = aggregate_of(kind, nan_strategy) if kind != "ema" else None
    error = nan_strategy == "error"
    expected = []
    for count in range(1, len(calls[0]) + 1):
        completed = count // window
        windows = [[args for own in calls for args in own[i * window : (i + 1) * window]] for i in range(completed)]
        kept = [done for done in windows if not (error and nans_in(kind, done))]
        latest = value(kept) if kept else None
        boundary = count % window == 0
        boundary_nans = nans_in(kind, windows[-1]) if boundary else 0
        if aggregate is None:  # EMALoss
            progress = [args for own in calls for args in own[completed * window : count]]
            synchronises = not kept
            computed = latest if latest is not None else value([progress])
            compute_nans = nans_in(kind, progress) if synchronises else 0
            where = "the window"
        else:
            everything = [args for own in calls for args in own[:count]]
            synchronises = True
            computed = aggregate(everything)
            compute_nans = nans_in(kind, everything)
            where = "the updates since the last reset"
        expected.append(
            Expected(
                latest=latest,
                boundary=boundary,
                boundary_nans=boundary_nans,
                raises=error and boundary and boundary_nans > 0,
                computed=computed,
                compute_nans=compute_nans,
                compute_raises=error and compute_nans > 0,
                compute_synchronises=synchronises,
                compute_where=where,
            )
        )
    return expected


def tolerance(kind: str) -> float:
    return 1e-5 if kind == "mse" else 1e-6  # MeanSquaredError sums in float32


def as_float32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float64).float())


def close(actual: Optional[float], expected: Optional[float], rel: float = 1e-6) -> bool:
    if actual is None or expected is None:
        return actual is expected
    return bool(actual == pytest.approx(expected, rel=rel, abs=rel, nan_ok=True))


def matches(kind: str, actual: Optional[float], expected: Optional[float]) -> bool:
    """An extreme is the input's element exactly, rounded once to float32; other values to a tolerance."""
    if kind in EXTREME_KINDS and actual is not None and expected is not None:
        return bits(actual) == bits(as_float32(expected))
    return close(actual, expected, tolerance(kind))


def bits(value: Optional[float]) -> Optional[bytes]:
    return None if value is None else struct.pack("<d", value)


# Series of updates: values, errors, agreement between processes, collectives ----------------------------------


def series_of(distributed: Distributed, spec: SeriesSpec) -> list[list[Step]]:
    """Return each participating rank's steps; check that the other ranks ran nothing."""
    for rank in range(WORLD_SIZE):
        if rank not in spec.ranks():
            assert spec.name not in distributed.results[rank].series, f"rank {rank} is outside the group"
    for rank in spec.ranks():
        error = distributed.results[rank].not_made.get(spec.name)
        assert error is None, f"rank {rank} could not make the metric: {error}"
    return [distributed.results[rank].series[spec.name] for rank in spec.ranks()]


@functools.cache
def expected_of(spec: SeriesSpec, rank: int) -> list[Expected]:
    inputs = spec.inputs
    synchronised = [inputs.calls[rank]] if spec.sync in ("off", "rank0") else list(inputs.calls)
    return expected_over(spec.kind, inputs.decay, spec.nan_strategy, synchronised, inputs.window)


def test_series_cover_every_kind_and_synchronisation() -> None:
    """Each metric runs, with each synchronisation, a series of two windows or more."""
    for kind in VALUE_KINDS + WRAPPED_KINDS:
        for sync in SYNCS:
            windows = [
                (len(spec.inputs.calls[0]), spec.inputs.window)
                for spec in SERIES
                if (spec.kind, spec.sync, spec.nans) == (kind, sync, False)
            ]
            assert any(count >= 2 * window > 2 for count, window in windows), (kind, sync, windows)


@pytest.mark.parametrize("nan_strategy", NAN_STRATEGIES, ids=str)
@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_the_series_with_nans_hold_windows_with_and_without_nans(kind: str, nan_strategy: Any) -> None:
    """Every strategy meets boundaries whose window holds a NaN and boundaries whose window holds none, and
    (``"error"``) a window kept after a discarded one."""
    found: Counter[str] = Counter()
    for spec in SERIES:
        if (spec.kind, spec.nan_strategy, spec.nans) == (kind, nan_strategy, True):
            expected = expected_of(spec, 0)
            found["nan"] += sum(step.boundary and step.boundary_nans > 0 for step in expected)
            found["clean"] += sum(step.boundary and step.boundary_nans == 0 for step in expected)
            raised = [index for index, step in enumerate(expected) if step.raises]
            if raised:
                found["kept after"] += any(step.boundary and not step.raises for step in expected[raised[0] + 1 :])
    assert found["nan"], found
    assert found["clean"], found
    if nan_strategy == "error":
        assert found["kept after"], found


@pytest.mark.parametrize("spec", SERIES, ids=lambda spec: spec.name)
def test_series_values_match_reference(distributed: Distributed, spec: SeriesSpec) -> None:
    """Every window value is the value over the window's updates of every synchronised process; ``compute()`` is
    the value over all their updates so far; ``"error"`` raises (on every process) where the reference has a NaN,
    and ``"warn"`` warns with the number of NaN elements over all processes."""
    window = spec.inputs.window
    for rank, steps in enumerate(series_of(distributed, spec)):
        for index, (step, expected) in enumerate(zip(steps, expect := expected_of(spec, rank), strict=True)):
            where = f"rank {rank}, update {index + 1} (window {window}): {step} instead of {expected}"
            assert step.at_boundary == (expected.boundary and not expected.raises), where
            assert bool(step.error) == expected.raises, where
            if expected.raises:
                assert step.error.startswith(f"ValueError: {expected.boundary_nans} NaN element(s) in the window"), (
                    where
                )
            assert matches(spec.kind, step.window_value, expected.latest), where
            assert bits(step.forward_cache) == bits(step.window_value), where
            returned = step.window_value if spec.use_forward and not expected.raises else None
            assert bits(step.returned) == bits(returned), where
            if expected.compute_raises:
                assert step.computed is None, where
                message = f"ValueError: {expected.compute_nans} NaN element(s) in {expected.compute_where}"
                assert step.compute_error.startswith(message), where
            else:
                assert step.compute_error == "", where
                assert matches(spec.kind, step.computed, expected.computed), where
            assert bits(step.recomputed) == bits(step.computed), where
            if rank == 0:  # torchmetrics warns on its rank zero, which spawned processes all are
                assert step.warned == expected_warnings(spec, expected), where
            else:
                assert step.warned in ([], steps_of_rank0(distributed, spec)[index].warned), where
        assert len(steps) == len(expect)


def steps_of_rank0(distributed: Distributed, spec: SeriesSpec) -> list[Step]:
    return distributed.results[0].series[spec.name]


def expected_warnings(spec: SeriesSpec, expected: Expected) -> list[str]:
    if spec.nan_strategy != "warn":
        return []
    warned = []
    if expected.boundary and expected.boundary_nans:
        warned.append(f"{expected.boundary_nans} NaN element(s) in the window were ignored (nan_strategy='warn')")
    if expected.compute_synchronises and expected.compute_nans:
        warned.append(
            f"{expected.compute_nans} NaN element(s) in {expected.compute_where} were ignored (nan_strategy='warn')"
        )
    return warned


@pytest.mark.parametrize(
    "spec", [spec for spec in SERIES if spec.sync in ("world", "custom", "fn")], ids=lambda spec: spec.name
)
def test_series_ranks_agree_bitwise(distributed: Distributed, spec: SeriesSpec) -> None:
    """Every process returns the same values and raises the same errors, to the last bit, after every update."""
    first, second = series_of(distributed, spec)
    for index, (one, other) in enumerate(zip(first, second, strict=True)):
        where = f"update {index + 1}: {one} on rank 0, {other} on rank 1"
        assert bits(one.returned) == bits(other.returned), where
        assert bits(one.window_value) == bits(other.window_value), where
        assert bits(one.computed) == bits(other.computed), where
        assert (one.error, one.compute_error) == (other.error, other.compute_error), where


def synchronisation(distributed: Distributed, spec: SeriesSpec, rank: int) -> list[Collective]:
    """The collectives of one synchronisation of the series' metric in process ``rank``."""
    results = distributed.results[rank]
    if spec.kind in WRAPPED_KINDS:  # what the unwrapped metric's compute() issues with the same settings
        return results.bare_compute[spec.kind, spec.sync]
    if spec.sync == "off":
        return []
    if spec.sync == "fn":
        return results.one_gather
    return [Collective("all_reduce" if spec.kind in SUM_KINDS else "all_gather", spec.sync)]


@pytest.mark.parametrize("spec", SERIES, ids=lambda spec: spec.name)
def test_series_collectives(distributed: Distributed, spec: SeriesSpec) -> None:
    """One synchronisation per boundary and per uncached ``compute()`` of the aggregate, none between boundaries,
    none from a cached ``compute()`` (one again after a ``compute()`` that raised); none at all without sync. Over
    the default group, a boundary and a ``compute()`` of windowmetrics' own metrics read the device exactly once
    (the collective's result, with the lockstep check and any NaN count), and an update between boundaries never.

    ``EMALoss.compute()`` synchronises before its first window, and reads the latest average after it. A user's
    ``dist_sync_fn`` is called once per synchronisation of a windowmetrics metric.
    """
    window = spec.inputs.window
    for rank, steps in enumerate(series_of(distributed, spec)):
        sync = synchronisation(distributed, spec, rank)
        for index, (step, expected) in enumerate(zip(steps, expected_of(spec, rank), strict=True)):
            where = f"rank {rank}, update {index + 1} (window {window})"
            assert step.update_collectives == (sync if expected.boundary else []), where
            assert step.compute_collectives == (sync if expected.compute_synchronises else []), where
            assert step.recompute_collectives == (sync if expected.compute_raises else []), where
            if spec.sync == "fn" and spec.kind in VALUE_KINDS:
                assert step.update_gathers == int(expected.boundary), where
                assert step.compute_gathers == int(expected.compute_synchronises), where
            if spec.sync != "off" and spec.kind in VALUE_KINDS:
                assert len(sync) == (1 if spec.sync != "fn" else len(distributed.results[rank].one_gather))
            if step.update_reads is not None:  # counted: the world series of windowmetrics' own metrics
                assert step.update_reads == (1 if expected.boundary else 0), (where, step.update_reads)
                assert step.compute_reads == (1 if expected.compute_synchronises else 0), (where, step.compute_reads)


def test_unwrapped_metrics_synchronise_in_compute(distributed: Distributed) -> None:
    """The unwrapped metrics' compute(), which the Windowed expectations copy, synchronises on the given group."""
    for results in distributed.results:
        assert results.one_gather == [Collective("barrier", "world"), *[Collective("all_gather", "world")] * 2]
        for (kind, sync), collectives in results.bare_compute.items():
            names = {collective.name for collective in collectives}
            assert (names == set()) if sync == "off" else (names == {"barrier", "all_gather"}), (kind, sync)
            group = "world" if sync == "fn" else sync
            assert all(collective.group == group for collective in collectives), (kind, sync, collectives)


# Uneven numbers of updates -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gather", UNEVEN_GATHERS)
@pytest.mark.parametrize("scenario", UNEVEN)
@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_uneven_updates_raise_on_every_process(distributed: Distributed, kind: str, scenario: str, gather: str) -> None:
    """Processes at different update counts at a synchronisation all raise the RuntimeError, naming the counts,
    after the same collectives (nothing hangs); the processes then go on synchronising."""
    _, counts = UNEVEN[scenario]
    key = uneven_key(kind, scenario, gather)
    errors = [results.uneven[key] for results in distributed.results]
    for rank, (message, _) in enumerate(errors):
        assert message.startswith("RuntimeError: windowmetrics: the processes reached this synchronisation"), (
            rank,
            message,
        )
        assert f"({list(counts)})" in message, f"rank {rank}: {message!r}"
    assert errors[0][1] == errors[1][1], errors
    after = [results.after_uneven[key] for results in distributed.results]
    inputs = uneven_inputs(kind, scenario)
    expected = value_of(kind, inputs.decay)([[args for own in inputs.calls for args in own[: inputs.window]]])
    assert bits(after[0]) == bits(after[1]), after
    assert matches(kind, after[0], expected), (after, expected)


# MetricCollection ----------------------------------------------------------------------------------------------


def member_kind(name: str) -> str:
    return name.removesuffix("_twin")


@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
def test_collection_values_match_reference(distributed: Distributed, use_forward: bool) -> None:
    inputs = collection_inputs()
    for rank, results in enumerate(distributed.results):
        run = results.collection[use_forward]
        for name in COLLECTION_MEMBERS:
            kind = member_kind(name)  # the kinds that take no weight get the value alone from the collection
            calls = [[args[:1] if kind in UNWEIGHTED_KINDS else args for args in own] for own in inputs.calls]
            expected = expected_over(kind, inputs.decay, "disable", calls, inputs.window)
            for index, reference in enumerate(expected):
                where = f"rank {rank}, {name}, update {index + 1}"
                assert matches(kind, run.logged[index][name], reference.latest), (where, run.logged[index], reference)
                assert matches(kind, run.computed[index][name], reference.computed), (where, run.computed[index])


@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
def test_collection_collectives(distributed: Distributed, use_forward: bool) -> None:
    """One collective per member per boundary and per uncached compute(), none between boundaries."""
    window = collection_inputs().window
    per_member = {"mean": "all_reduce", "mean_twin": "all_reduce", "sum": "all_reduce", "ema": "all_reduce"}
    per_member |= {"max": "all_gather", "min": "all_gather"}
    for rank, results in enumerate(distributed.results):
        run = results.collection[use_forward]
        assert all(len(group) == 1 for group in run.compute_groups), run.compute_groups  # never merged
        for index, (update, compute) in enumerate(zip(run.update_collectives, run.compute_collectives, strict=True)):
            where = f"rank {rank}, update {index + 1}: {update}, {compute}"
            boundary = (index + 1) % window == 0
            synchronised = [name for name in per_member if name != "ema" or index + 1 < window]
            expected_update = Counter(per_member.values()) if boundary else Counter()
            assert Counter(collective.name for collective in update) == expected_update, where
            assert Counter(collective.name for collective in compute) == Counter(
                per_member[name] for name in synchronised
            ), where
            assert {collective.group for collective in update + compute} <= {"world"}, where


# Manual sync() and unsync() ----------------------------------------------------------------------------------


def expected_states(
    kind: str, window: Sequence[Args], since_reset: Sequence[Args], nan_strategy: Any = "disable"
) -> dict[str, list[float]]:
    """The registered states (``[window, since reset]``) of a metric of ``kind`` that took these updates.

    WindowedMax and WindowedMin count elements and NaN elements only with the strategies that drop NaN elements.
    """
    if kind in EXTREME_KINDS:
        identity = -math.inf if kind == "max" else math.inf
        counted = nan_strategy in ("ignore", "warn", "error")
        states: dict[str, list[float]] = {"extreme": [], "nan_count": [], "element_count": []}
        for calls in (window, since_reset):
            values = [value for call in as_calls(kind, calls) for value in elements(call)[0]]
            valid = [value for value in values if not math.isnan(value)]
            states["extreme"].append((max if kind == "max" else min)(valid, default=identity))
            states["nan_count"].append(float(len(values) - len(valid)) if counted else 0.0)
            states["element_count"].append(float(len(values)) if counted else 0.0)
        return states
    sums = [weighted_sums(as_calls(kind, calls), nan_strategy) for calls in (window, since_reset)]
    names = ("value_sum", "weight_sum", "nan_count")
    return {name: [float(part[index]) for part in sums] for index, name in enumerate(names)}


def same_states(actual: dict[str, list[float]], expected: dict[str, list[float]]) -> bool:
    return actual.keys() == expected.keys() and all(all(map(close, actual[key], expected[key])) for key in expected)


@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_manual_sync_gives_global_states_then_restores_local_ones(distributed: Distributed, kind: str) -> None:
    """``sync()`` and ``sync_context()`` give both elements of every state over both processes, in one collective;
    ``unsync()`` restores the local ones; the boundary and ``compute()`` after them count every update once."""
    inputs = manual_sync_inputs(kind)
    synced_count = MANUAL_SYNC_COUNT - 1
    window_start = MANUAL_SYNC_WINDOW
    assert nans_in(kind, [args for own in inputs.calls for args in own[:synced_count]]), "no NaN to count"
    both = [args for own in inputs.calls for args in own[window_start:synced_count]]
    everything = [args for own in inputs.calls for args in own[:synced_count]]
    global_states = expected_states(kind, both, everything, MANUAL_SYNC_STRATEGY)
    collective = Collective("all_reduce" if kind in SUM_KINDS else "all_gather", "world")
    for rank, results in enumerate(distributed.results):
        run = results.manual_sync[kind]
        own = inputs.calls[rank]
        local_states = expected_states(kind, own[window_start:synced_count], own[:synced_count], MANUAL_SYNC_STRATEGY)
        assert same_states(run.local, local_states), (rank, run.local, local_states)
        assert same_states(run.synced, global_states), (rank, run.synced, global_states)
        assert same_states(run.in_context, global_states), (rank, run.in_context, global_states)
        assert run.restored == run.local, rank
        assert run.after_context == run.local, rank
        assert run.sync_collectives == [collective], rank
        expected = expected_over(kind, inputs.decay, MANUAL_SYNC_STRATEGY, inputs.calls, inputs.window)[-1]
        assert matches(kind, run.boundary, expected.latest), (rank, run.boundary, expected)  # every update once
        assert matches(kind, run.computed, expected.computed), (rank, run.computed, expected)


# Metrics pickled into spawned processes ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", PICKLED_KINDS)
def test_pickled_metric_keeps_each_process_own_state(distributed: Distributed, kind: str) -> None:
    """Each process's updates of a metric pickled into it stay in its own state (not in shared memory)."""
    _, before, after = pickled_inputs(kind)
    aggregate = aggregate_of(kind)
    for rank, results in enumerate(distributed.results):
        expected = aggregate([*before, *after[rank]])
        returned, computed = results.pickled[kind]
        assert matches(kind, returned, expected), (rank, returned, expected)
        assert matches(kind, computed, expected), (rank, computed, expected)


@pytest.mark.parametrize("kind", PICKLED_KINDS)
def test_pickled_metric_is_unchanged_in_parent(distributed: Distributed, kind: str) -> None:
    _, before, _ = pickled_inputs(kind)
    computed: Any = distributed.parent_metrics[kind].compute()
    expected = aggregate_of(kind)(before)
    assert matches(kind, float(computed), expected), (float(computed), expected)
