"""``process_group`` honoured by manual ``sync()`` and by window boundaries, on two real processes (issue 9, item 5).

A metric created with a group of its own process alone must synchronise over that group (giving its local states),
``sync(process_group=...)`` over the group given (that of the process alone, or both processes over the metric's
own), and ``compute()``/a boundary over the metric's group, in one collective each (an ``all_reduce`` for the
weighted sums, an ``all_gather`` for WindowedMax/WindowedMin). Values are checked against brute-force values of
the inputs, and ``unsync()`` must restore the local states.
"""

import math
from collections.abc import Sequence
from typing import Optional

import pytest

from tests.collectives import Collective
from tests.distributed_scenarios import SUM_KINDS, VALUE_KINDS, Args, States
from tests.group_sync_scenarios import SYNCS, WINDOW, GroupSync, group_sync_inputs, worker
from tests.process_group import WORLD_SIZE, run_in_process_group
from tests.test_distributed import aggregate_of, expected_states, same_states, value_of

Results = list[dict[tuple[str, str], GroupSync]]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    """Every case, recorded by each of two processes (skipped, saying why, where gloo is unavailable)."""
    return run_in_process_group(worker, tmp_path_factory.mktemp("group-sync"))


def window_value(kind: str, calls: Sequence[Args]) -> float:
    """The value of one window (the first) holding ``calls``."""
    return value_of(kind, group_sync_inputs(kind).decay)([list(calls)])


def close(actual: Optional[float], expected: float) -> bool:
    if actual is None:
        return False
    if math.isnan(expected):
        return math.isnan(actual)
    return math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-6)


@pytest.mark.parametrize("case", SYNCS)
@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_sync_and_windows_reduce_over_the_group_they_are_given(results: Results, kind: str, case: str) -> None:
    metric_group, sync_group = SYNCS[case]
    sync_label = sync_group or metric_group or "world"  # sync() falls back on the metric's group, then the world
    window_label = metric_group or "world"
    collective = "all_reduce" if kind in SUM_KINDS else "all_gather"
    calls = group_sync_inputs(kind).calls
    before_last = [own[: WINDOW - 1] for own in calls]
    assert len(results) == WORLD_SIZE
    for rank, run in enumerate(results):
        case_run = run[kind, case]
        where = f"rank {rank}: {case_run}"
        reduced = {"own": [rank], "pair": [0, 1], "world": [0, 1]}
        over_sync = [args for process in reduced[sync_label] for args in before_last[process]]
        over_window = [args for process in reduced[window_label] for args in calls[process]]
        over_partial = [args for process in reduced[window_label] for args in before_last[process]]
        local = before_last[rank]
        assert same_states(case_run.local, expected_states(kind, local, local)), where
        assert same_states(case_run.synced, expected_states(kind, over_sync, over_sync)), where
        assert case_run.restored == case_run.local, where
        # a group of one process is still synchronised over, in one collective
        assert case_run.sync_collectives == [Collective(collective, sync_label)], where
        partial = window_value(kind, over_partial) if kind == "ema" else aggregate_of(kind)(over_partial)
        assert close(case_run.partial, partial), where
        assert case_run.partial_collectives == [Collective(collective, window_label)], where
        assert close(case_run.boundary, window_value(kind, over_window)), where
        assert case_run.boundary_collectives == [Collective(collective, window_label)], where


@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_the_processes_inputs_differ(kind: str) -> None:
    """A reduction over the wrong group shows: each process's states differ from the other's and (the sums) from the
    total; an extreme over both processes is one process's, and differs from the other's."""
    calls = group_sync_inputs(kind).calls
    local = [first_states(expected_states(kind, own[: WINDOW - 1], [])) for own in calls]
    total = first_states(expected_states(kind, [args for own in calls for args in own[: WINDOW - 1]], []))
    assert len({*local, total}) == (3 if kind in SUM_KINDS else 2)


def first_states(states: States) -> tuple[float, ...]:
    """The window's element of every state but the NaN count."""
    return tuple(values[0] for key, values in states.items() if key != "nan_count")
