"""Resuming window metrics from checkpoints on disk across real process groups (issue 9, item 2).

One two-process gloo spawn saves checkpoints (rank 0 alone, and every rank its own) and resumes from them, and
from a checkpoint of a one-process run; a one-process gloo spawn, and the test process without any process
group, resume from the two-process run's files. Every value is checked against a brute-force reference of the
windows that the resumed metric must see:

- a window that closed before the checkpoint holds every saving process's updates (its value, and an EMA, are
  restored on every process);
- the window open at the checkpoint holds the pending updates of the saving processes whose sums were restored
  (the loading process of the same rank), then every loading process's new updates;
- later windows hold the loading processes' updates;
- ``compute()`` (the aggregate since the reset) holds the updates before the checkpoint of the saving processes
  whose since-reset states were restored (the loading process of the same rank), then every loading process's
  new updates; ``EMALoss.compute()`` is the latest average (before the first window, the window in progress).

So a rank-0 checkpoint (Lightning's) loses exactly the other ranks' pending updates of the open window and their
part of the aggregate, and counts none twice; a per-rank checkpoint resumes exactly.
"""

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import astuple
from typing import Any, NamedTuple, Optional

import pytest

from tests.collectives import Collective
from tests.process_group import WORLD_SIZE, run_in_process_group, skip_without_gloo
from tests.reference import ema_of, mean_of, sum_of
from tests.resume_scenarios import (
    COUNT,
    DECAY,
    KINDS,
    PROJECTED_INPUTS,
    SINGLE,
    SPLITS,
    UNWEIGHTED_KINDS,
    WINDOW,
    Args,
    Results,
    Resumed,
    Step,
    make_calls,
    one_process_resumes,
    run_in_one_process_group,
    save_single,
    two_process_worker,
)
from tests.test_distributed import extreme_of

ValueOf = Callable[[list[list[Args]]], float]

# compute() of a Windowed metric whose window is empty after the resume (rank 1's file loaded by one process,
# before the first window) warns like the wrapped metric's own compute() before any update
pytestmark = pytest.mark.filterwarnings(r"ignore:The ``compute`` method of metric \w+ was called before:UserWarning")

CASES = [(kind, split) for kind in KINDS for split in SPLITS]
CASE_IDS = [f"{kind}-after-{split}" for kind, split in CASES]


class Runs(NamedTuple):
    two: list[Results]  # by rank
    one_gloo: Results  # a gloo group of one process
    one_plain: Results  # the test process, without torch.distributed


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    skip_without_gloo()
    directory = tmp_path_factory.mktemp("resume")
    save_single(directory)
    two = run_in_process_group(two_process_worker, directory, directory)
    return Runs(two, run_in_one_process_group(directory), one_process_resumes(directory, None))


# References ------------------------------------------------------------------------------------------------------


def accuracy_of(calls: Sequence[Args]) -> float:
    pairs = [pair for preds, target in calls for pair in zip(preds.tolist(), target.tolist(), strict=True)]
    return sum(1 for pred, target in pairs if pred == target) / len(pairs) if pairs else 0.0  # torchmetrics' 0


def unweighted(calls: Sequence[Args]) -> list[tuple[Any, float]]:
    return [(args[0], 1.0) for args in calls]


def aggregate_of(kind: str) -> Callable[[list[Args]], float]:
    """The brute-force value of one window, or of ``compute()``, holding the given updates."""
    if kind in ("mean", "windowed-mean"):
        return lambda calls: mean_of([(args[0], args[1]) for args in calls])
    if kind == "sum":
        return lambda calls: sum_of(unweighted(calls))
    if kind in UNWEIGHTED_KINDS:
        return lambda calls: extreme_of(unweighted(calls), kind == "max")
    return accuracy_of


def value_of(kind: str) -> ValueOf:
    """The brute-force value of a metric of ``kind`` after the given windows (the last one possibly partial)."""
    if kind == "ema":
        return lambda windows: ema_of([[(args[0], args[1]) for args in window] for window in windows], DECAY)
    aggregate = aggregate_of(kind)
    return lambda windows: aggregate(windows[-1])


def window_calls(
    saved: Sequence[Sequence[Args]],
    restored: set[int],
    continued: Sequence[Sequence[Args]],
    split: int,
    start: int,
    end: int,
) -> list[Args]:
    """The updates at positions ``start:end`` (of every process's series) that the resumed metric counts.

    ``saved[j]`` is saving process j's series (its first ``split`` updates were made before the checkpoint),
    ``restored`` the saving processes whose sums of the open window were restored, ``continued[i]`` loading
    process i's updates after the resume (positions ``split`` on).
    """
    calls: list[Args] = []
    closed = end <= split - split % WINDOW  # a window that closed before the checkpoint
    for process, own in enumerate(saved):
        if closed or process in restored:
            calls.extend(own[start : min(end, split)])
    for own in continued:
        calls.extend(own[max(start, split) - split : max(end - split, 0)])
    return calls


def aggregate_calls(
    saved: Sequence[Sequence[Args]], restored: set[int], continued: Sequence[Sequence[Args]], split: int, count: int
) -> list[Args]:
    """The updates that ``compute()`` covers after ``count`` updates: the restored saving processes' updates before
    the checkpoint (their since-reset states), then every loading process's updates after it."""
    calls = [args for process, own in enumerate(saved) if process in restored for args in own[:split]]
    return calls + [args for own in continued for args in own[: count - split]]


def expected_steps(
    kind: str,
    saved: Sequence[Sequence[Args]],
    restored: set[int],
    continued: Sequence[Sequence[Args]],
    split: int,
) -> list[Step]:
    """Right after loading, then after each resumed update: the latest window value (or ``None``), the boundary,
    and ``compute()``."""
    value = value_of(kind)
    steps = []
    for count in range(split, split + len(continued[0]) + 1):
        completed = count // WINDOW
        windows = [
            window_calls(saved, restored, continued, split, k * WINDOW, (k + 1) * WINDOW) for k in range(completed)
        ]
        latest = value(windows) if windows else None
        if kind == "ema":  # the latest average; before the first window, the window in progress
            partial = [window_calls(saved, restored, continued, split, 0, count)]
            computed = latest if latest is not None else value(partial)
        else:
            computed = aggregate_of(kind)(aggregate_calls(saved, restored, continued, split, count))
        steps.append(Step(latest, count % WINDOW == 0, computed))
    return steps


def close(actual: Optional[float], expected: Optional[float], kind: str) -> bool:
    if actual is None or expected is None:
        return actual is expected
    if math.isnan(expected) or math.isinf(expected):  # the mean of an empty window, the maximum of none
        return math.isnan(actual) if math.isnan(expected) else actual == expected
    tolerance = 1e-5 if kind == "windowed-mean" else 1e-6  # MeanMetric sums in float32
    return math.isclose(actual, expected, rel_tol=tolerance, abs_tol=tolerance)


def check_steps(kind: str, resumed: Resumed, expected: Sequence[Step], where: str) -> None:
    """Check the state right after loading and the steps after it against :func:`expected_steps`."""
    loaded = Step(resumed.latest, resumed.at_boundary, resumed.computed)
    steps = [loaded, *resumed.steps]
    assert len(steps) == len(expected), where
    for index, (step, reference) in enumerate(zip(steps, expected, strict=True)):
        at = f"{where}, update {index} after the resume: {step} instead of {reference}"
        assert step.at_boundary == reference.at_boundary, at
        assert close(step.returned, reference.returned, kind), at
        assert close(step.computed, reference.computed, kind), at


def bits(steps: Sequence[Step]) -> list[tuple[Optional[bytes], bool, bytes]]:
    return [
        (
            None if step.returned is None else struct.pack("<d", step.returned),
            step.at_boundary,
            struct.pack("<d", step.computed),
        )
        for step in steps
    ]


def series(kind: str) -> list[list[Args]]:
    return [make_calls(kind, rank) for rank in range(WORLD_SIZE)]


# Two processes to two processes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "split"), CASES, ids=CASE_IDS)
def test_a_rank0_checkpoint_counts_rank0_pending_updates_once_and_loses_rank1s(
    runs: Runs, kind: str, split: int
) -> None:
    calls = series(kind)
    expected = expected_steps(kind, calls, {0}, [own[split:] for own in calls], split)
    for rank, results in enumerate(runs.two):
        check_steps(kind, results.resumed["rank0", kind, split], expected, f"rank {rank}")


@pytest.mark.parametrize("kind", KINDS)
def test_what_a_rank0_checkpoint_loses_is_rank1s_pending_updates(runs: Runs, kind: str) -> None:
    """The first window after the resume is the uninterrupted run's window less rank 1's pending updates."""
    split = 4  # the second window holds one update of each process at the checkpoint
    calls = series(kind)
    start, end = WINDOW, 2 * WINDOW
    uninterrupted_window = [args for own in calls for args in own[start:end]]
    lost = calls[1][start:split]
    assert len(lost) == split - start == 1
    kept = [args for args in uninterrupted_window if not any(args is other for other in lost)]
    assert len(kept) == len(uninterrupted_window) - len(lost)
    first_boundary = end - split - 1  # the index of the resumed update that closes it
    value = value_of(kind)
    history = [[args for own in calls for args in own[:start]]]  # the window closed before the checkpoint
    for rank, results in enumerate(runs.two):
        returned = results.resumed["rank0", kind, split].steps[first_boundary].returned
        assert close(returned, value([*history, kept]), kind), (rank, returned)
        uninterrupted = results.uninterrupted[kind, split][end - 1].returned
        assert close(uninterrupted, value([*history, uninterrupted_window]), kind), rank
        if value([*history, kept]) != value([*history, uninterrupted_window]):  # an extreme may not show it
            assert returned != uninterrupted, rank  # the lost update shows


@pytest.mark.parametrize(("kind", "split"), CASES, ids=CASE_IDS)
def test_per_rank_checkpoints_resume_exactly(runs: Runs, kind: str, split: int) -> None:
    calls = series(kind)
    expected = expected_steps(kind, calls, {0, 1}, [own[split:] for own in calls], split)
    for rank, results in enumerate(runs.two):
        resumed = results.resumed["per-rank", kind, split]
        check_steps(kind, resumed, expected, f"rank {rank}")
        assert bits(resumed.steps) == bits(results.uninterrupted[kind, split][split:]), rank


@pytest.mark.parametrize("kind", KINDS)
def test_a_rank0_checkpoint_at_a_boundary_resumes_the_windows_exactly(runs: Runs, kind: str) -> None:
    """No window is open at the checkpoint, so no window loses an update; the aggregate since the reset loses rank
    1's updates before the checkpoint (its since-reset states are rank 1's own; the value of what it keeps is
    checked by the test of rank-0 checkpoints above), but an EMA's, which is the latest average."""
    split = 2 * WINDOW
    for rank, results in enumerate(runs.two):
        steps = results.resumed["rank0", kind, split].steps
        uninterrupted = results.uninterrupted[kind, split][split:]
        assert [step[:2] for step in bits(steps)] == [step[:2] for step in bits(uninterrupted)], rank
        if kind == "ema":
            assert bits(steps) == bits(uninterrupted), rank


@pytest.mark.parametrize(("kind", "split"), CASES, ids=CASE_IDS)
def test_the_window_position_and_latest_value_resume_on_every_rank(runs: Runs, kind: str, split: int) -> None:
    for how in ("rank0", "per-rank"):
        for rank, results in enumerate(runs.two):
            resumed = results.resumed[how, kind, split]
            before = results.uninterrupted[kind, split][split - 1]
            assert (resumed.update_count, resumed.at_boundary) == (split, split % WINDOW == 0), (how, rank)
            assert resumed.latest == before.returned, (how, rank)  # None before the first window


@pytest.mark.parametrize(("kind", "split"), CASES, ids=CASE_IDS)
def test_state_dict_and_load_state_dict_issue_no_collective(runs: Runs, kind: str, split: int) -> None:
    """Rank 0 alone called ``state_dict()`` once (rank 1 went on to a barrier): it issued nothing, so nothing hung."""
    for rank, results in enumerate(runs.two):
        assert results.save_collectives[kind, split] == [], rank
        for how in ("rank0", "per-rank", SINGLE):
            assert results.resumed[how, kind, split].load_collectives == [], (how, rank)
    assert runs.two[0].rank0_save_collectives[kind, split] == []
    assert (kind, split) not in runs.two[1].rank0_save_collectives
    for how in ("to-one", "to-one-rank1"):
        assert runs.one_gloo.resumed[how, kind, split].load_collectives == [], how


def synchronisation_after_loading(kind: str, split: int) -> list[Collective]:
    """What ``compute()`` right after loading issues in a process group: one collective of the aggregate (none for
    an ``EMALoss`` that has a latest average); ``Windowed``'s, its wrapped metric's own synchronisation."""
    if kind == "ema" and split >= WINDOW:
        return []
    if kind in ("windowed-mean", "accuracy"):  # torchmetrics: a barrier and all_gathers, per state
        return [Collective("barrier", "world")]
    return [Collective("all_gather" if kind in ("max", "min") else "all_reduce", "world")]


@pytest.mark.parametrize(("kind", "split"), CASES, ids=CASE_IDS)
def test_compute_after_loading_synchronises_once(runs: Runs, kind: str, split: int) -> None:
    expected = synchronisation_after_loading(kind, split)
    resumed = [
        *(results.resumed[how, kind, split] for results in runs.two for how in ("rank0", "per-rank", SINGLE)),
        *(runs.one_gloo.resumed[how, kind, split] for how in ("to-one", "to-one-rank1")),
    ]
    for run in resumed:
        if kind in ("windowed-mean", "accuracy"):
            assert run.compute_collectives[:1] == expected, run.compute_collectives
            assert {collective.name for collective in run.compute_collectives} == {"barrier", "all_gather"}
        else:
            assert run.compute_collectives == expected


def test_the_issue_report(runs: Runs) -> None:
    """``WindowedMean(2)``; rank r updates r; checkpoint; every rank updates 10.0 (it used to give 5.0)."""
    for results in runs.two:
        assert results.issue["uninterrupted"] == (0 + 1 + 10 + 10) / 4 == 5.25
        assert results.issue["per-rank"] == 5.25
        assert results.issue["rank0"] == pytest.approx((0 + 10 + 10) / 3, rel=1e-6)  # rank 1's 1.0 is lost


def test_a_wrapped_metric_keeps_its_parameters_from_a_rank0_checkpoint(runs: Runs) -> None:
    """Only the wrapped metric's states are the window's: its parameters (a feature extractor's) load on every
    rank, strictly, and the window counts rank 0's pending update once."""
    saved = runs.two[0].with_parameters
    assert saved is not None
    weight_x, weight_y, bias = saved.saved_parameters

    def projected(x: list[list[float]]) -> float:
        return math.fsum(weight_x * a + weight_y * b + bias for a, b in x)

    pending = projected(PROJECTED_INPUTS[0])
    window = pending + projected(PROJECTED_INPUTS[2]) + projected(PROJECTED_INPUTS[3])  # rank 1's first is lost
    runs_by_rank = [results.with_parameters for results in runs.two]
    assert [run.error if run else None for run in runs_by_rank] == ["", ""]
    for rank, run in enumerate(runs_by_rank):
        assert run is not None
        assert run.loaded_parameters == saved.saved_parameters, rank
        assert run.total == (pending if rank == 0 else 0.0), rank
        assert run.value == pytest.approx(window, rel=1e-6), rank


# Other world sizes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "split"), CASES, ids=CASE_IDS)
def test_one_process_checkpoint_resumed_on_two(runs: Runs, kind: str, split: int) -> None:
    """1 -> 2: rank 0 restores the single process's pending updates; rank 1 starts the open window empty."""
    single = make_calls(kind, SINGLE)
    continued = [own[split:] for own in series(kind)]
    expected = expected_steps(kind, [single], {0}, continued, split)
    for rank, results in enumerate(runs.two):
        resumed = results.resumed[SINGLE, kind, split]
        assert (resumed.update_count, resumed.at_boundary) == (split, split % WINDOW == 0), rank
        check_steps(kind, resumed, expected, f"rank {rank}")


@pytest.mark.parametrize("group", ["gloo world of one", "no process group"])
@pytest.mark.parametrize(("kind", "split"), CASES, ids=CASE_IDS)
def test_two_process_checkpoints_resumed_on_one(runs: Runs, kind: str, split: int, group: str) -> None:
    """2 -> 1: rank 0's file restores rank 0's pending updates; rank 1's own file restores none of them."""
    calls = series(kind)
    results = runs.one_gloo if group == "gloo world of one" else runs.one_plain
    continued = [calls[0][split:]]  # the one process goes on with rank 0's inputs
    for how, restored in (("to-one", {0}), ("to-one-rank1", set())):
        resumed: Resumed = results.resumed[how, kind, split]
        assert (resumed.update_count, resumed.at_boundary) == (split, split % WINDOW == 0), how
        check_steps(kind, resumed, expected_steps(kind, calls, restored, continued, split), how)


def test_every_series_spans_windows_before_and_after_the_checkpoint() -> None:
    assert max(SPLITS) + WINDOW <= COUNT
    assert {split % WINDOW for split in SPLITS} == {0, 1, 2}
    assert [astuple(step) for step in expected_steps("mean", [[(1.0, 1.0)] * COUNT], {0}, [[(3.0, 1.0)] * 2], 1)] == [
        (None, False, 1.0),
        (None, False, 2.0),
        (7 / 3, True, 7 / 3),
    ]
