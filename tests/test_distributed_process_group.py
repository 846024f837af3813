"""``process_group`` honoured by manual ``sync()`` and by window boundaries, on two real processes (issue 9, item 5).

A metric created with a group of its own process alone must synchronise over that group (giving its local sums),
``sync(process_group=...)`` over the group given (that of the process alone, or both processes over the metric's
own), and ``compute()``/a boundary over the metric's group. Values are checked against brute-force sums of the
inputs, and ``unsync()`` must restore the local sums.
"""

import math
from collections.abc import Sequence
from typing import Optional

import pytest

from tests.collectives import Collective
from tests.distributed_scenarios import VALUE_KINDS, Args
from tests.group_sync_scenarios import SYNCS, WINDOW, GroupSync, group_sync_inputs, worker
from tests.process_group import WORLD_SIZE, run_in_process_group
from tests.reference import Call, ema_of, mean_of, sum_of, weighted_sums

Sums = tuple[float, float, float]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[tuple[str, str, bool], GroupSync]]:
    """Every case, recorded by each of two processes (skipped, saying why, where gloo is unavailable)."""
    return run_in_process_group(worker, tmp_path_factory.mktemp("group-sync"))


def as_calls(kind: str, calls: Sequence[Args]) -> list[Call]:
    return [(args[0], 1.0) for args in calls] if kind == "sum" else [(args[0], args[1]) for args in calls]


def sums_of(kind: str, calls: Sequence[Args]) -> Sums:
    value_sum, weight_sum, nans = weighted_sums(as_calls(kind, calls))
    return value_sum, weight_sum, float(nans)


def value_of(kind: str, calls: Sequence[Args]) -> float:
    """The value of one window (or of the first, partial one) holding ``calls``."""
    window = as_calls(kind, calls)
    if kind == "sum":
        return sum_of(window)
    if kind == "ema":
        return ema_of([window], decay=group_sync_inputs(kind).decay)
    return mean_of(window)


def close(actual: Optional[float], expected: float) -> bool:
    return actual is not None and math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-6)


def same_sums(actual: Sums, expected: Sums) -> bool:
    return all(map(close, actual, expected))


@pytest.mark.parametrize("host", [True, False], ids=["host", "tensor"])
@pytest.mark.parametrize("case", SYNCS)
@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_sync_and_windows_reduce_over_the_group_they_are_given(
    results: list[dict[tuple[str, str, bool], GroupSync]], kind: str, case: str, host: bool
) -> None:
    metric_group, sync_group = SYNCS[case]
    sync_label = sync_group or metric_group or "world"  # sync() falls back on the metric's group, then the world
    window_label = metric_group or "world"
    calls = group_sync_inputs(kind).calls
    before_last = [own[: WINDOW - 1] for own in calls]
    assert len(results) == WORLD_SIZE
    for rank, run in enumerate(results):
        case_run = run[kind, case, host]
        where = f"rank {rank}: {case_run}"
        reduced = {"own": [rank], "pair": [0, 1], "world": [0, 1]}
        over_sync = [args for process in reduced[sync_label] for args in before_last[process]]
        over_window = [args for process in reduced[window_label] for args in calls[process]]
        over_partial = [args for process in reduced[window_label] for args in before_last[process]]
        assert same_sums(case_run.local, sums_of(kind, before_last[rank])), where
        assert same_sums(case_run.synced, sums_of(kind, over_sync)), where
        assert case_run.restored == case_run.local, where
        assert case_run.sync_collectives, where  # a group of one process is still synchronised over
        assert {collective.group for collective in case_run.sync_collectives} == {sync_label}, where
        assert close(case_run.partial, value_of(kind, over_partial)), where
        assert case_run.partial_collectives == [Collective("all_gather", window_label)], where
        assert close(case_run.boundary, value_of(kind, over_window)), where
        assert case_run.boundary_collectives == [Collective("all_gather", window_label)], where


@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_the_processes_inputs_differ(kind: str) -> None:
    """A sum over the wrong group shows: each process's window sums differ from the other's and from the total."""
    calls = group_sync_inputs(kind).calls
    local = [sums_of(kind, own[: WINDOW - 1])[:2] for own in calls]
    total = sums_of(kind, [args for own in calls for args in own[: WINDOW - 1]])[:2]
    assert len({*local, total}) == 3
