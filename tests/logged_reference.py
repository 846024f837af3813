"""What a Lightning run should have logged, recomputed by brute force from the losses its modules recorded.

A *loop* is one training epoch or one validation run (the sanity check's included). A *run* is the sequence of
batches over which a metric's windows follow each other, from the fit's start or the last reset that cleared
the metric. A run's *batches* are its batch positions, each with the records of every process (ranks in order):
a window covers ``window`` positions and every process's records in them.

When a run starts again follows from what Lightning does (see ``windowmetrics/_lightning.py``): at the end
of each loop it resets every metric it has been given with ``self.log`` in that stage since the fit started
(a metric logged only at boundaries is not, before its first boundary). Such a reset clears the metric unless
it was created with ``span_epochs=True``, in which case it clears the since-reset aggregate alone. The sanity
check leaves every metric as it found it: its batches belong to no run. A reset by user code (:class:`Resets`)
clears it when a loop starts. Resets happen at loop ends only, so ``compute()`` at a loop's end (what
``on_epoch=True`` logs) covers the loop's batches, whatever ``span_epochs`` says.
"""

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch

from tests.lightning_support import Record
from tests.reference import Call, ema_of, mean_of, sum_of

Batch = list[Record]
Run = list[Batch]


@dataclass(frozen=True)
class Resets:
    """What clears a stage's metrics besides Lightning's resets at loop ends: ``span_epochs`` as the metrics
    were created with, and ``by_user``, whether user code resets them when the loop of this first record (rank
    0's) starts."""

    span_epochs: bool = False
    by_user: Callable[[Record], bool] = lambda first: False


@dataclass(frozen=True)
class Series:
    """How a logged metric's values follow from the records: its window, its inputs and its value.

    ``at_boundaries`` marks a metric logged with ``if metric.at_boundary: self.log(...)``: Lightning shows its
    value from the step of a boundary until the end of the loop, so on the first steps of a loop before its
    first boundary the log holds nothing, even where the metric carries a value over from the previous loop.
    """

    window: int
    call: Callable[[Record], Call]
    value_of: Callable[[list[list[Call]]], float]
    aggregate_of: Optional[Callable[[list[Call]], float]]
    """``compute()`` over the calls since the last reset; ``None`` for an EMA, whose ``compute()`` is its average."""
    at_boundaries: bool = False


def loss_call(record: Record) -> Call:
    return (record["loss"], record["size"])


def unweighted_loss_call(record: Record) -> Call:
    return (record["loss"], 1.0)


def size_call(record: Record) -> Call:
    return (record["size"], 1.0)


def latest_mean(windows: list[list[Call]]) -> float:
    return mean_of(windows[-1])


def latest_sum(windows: list[list[Call]]) -> float:
    return sum_of(windows[-1])


def max_of(calls: list[Call]) -> float:
    """The largest element of the calls' values (a NaN propagates), as a loss's WindowedMax holds it."""
    elements = [element for value, _ in calls for element in torch.as_tensor(value).flatten().tolist()]
    return math.nan if any(math.isnan(element) for element in elements) else max(elements, default=-math.inf)


def latest_max(windows: list[list[Call]]) -> float:
    return max_of(windows[-1])


def ema(decay: float) -> Callable[[list[list[Call]]], float]:
    return lambda windows: ema_of(windows, decay)


def window_series(window: int) -> dict[str, Series]:
    """The series of :class:`~tests.lightning_support.WindowLoggingModule`, by metric name."""
    return {
        "loss": Series(window, loss_call, latest_mean, mean_of),
        "samples": Series(window, size_call, latest_sum, sum_of),
        "ema": Series(window, loss_call, ema(0.5), None),
        "loss_sum": Series(window, unweighted_loss_call, latest_sum, sum_of),
        "boundary_loss": Series(window, loss_call, latest_mean, mean_of, at_boundaries=True),
        "max": Series(window, loss_call, latest_max, max_of),
    }


def window_epoch_series(window: int) -> dict[str, Series]:
    """The series of a WindowLoggingModule that are logged at epoch end too (all but ``boundary_loss``)."""
    return {name: one for name, one in window_series(window).items() if name != "boundary_loss"}


def collection_series() -> dict[str, Series]:
    """The windowmetrics of :func:`~tests.lightning_support.mixed_metrics`, fed the loss alone."""
    return {
        "mean3": Series(3, unweighted_loss_call, latest_mean, mean_of),
        "mean5": Series(5, unweighted_loss_call, latest_mean, mean_of),
        "twin_a": Series(2, unweighted_loss_call, latest_mean, mean_of),
        "twin_b": Series(2, unweighted_loss_call, latest_mean, mean_of),
        "sum3": Series(3, unweighted_loss_call, latest_sum, sum_of),
        "ema2": Series(2, unweighted_loss_call, ema(0.5), None),
    }


def loops(records_by_rank: Sequence[Sequence[Record]], stage: str) -> list[Run]:
    """Return the stage's loops in order, each a list of batches holding every process's record.

    Training loops are epochs; validation loops are the sanity check and the validation runs, told apart by the
    global step at which they run (several per epoch with ``val_check_interval``).
    """
    per_rank = [[record for record in records if record["stage"] == stage] for records in records_by_rank]

    def key(record: Record) -> tuple[int, int, bool]:
        return (record["epoch"], record["global_step"] if stage != "train" else 0, not record["sanity"])

    result = []
    for loop in sorted({key(record) for record in per_rank[0]}):
        columns = [[record for record in records if key(record) == loop] for records in per_rank]
        assert len({len(column) for column in columns}) == 1, "every process must compute as many batches"
        result.append([list(batch) for batch in zip(*columns, strict=True)])
    return result


def sanity(loop: Run) -> bool:
    """Whether the loop is Lightning's sanity check, which Lightning logs nothing of."""
    return bool(loop[0][0]["sanity"])


def _boundaries(first: int, count: int, series: Series) -> list[int]:
    """The positions among ``count`` batches from position ``first`` of a run that complete a window."""
    return [position for position in range(count) if (first + position + 1) % series.window == 0]


def runs(
    records_by_rank: Sequence[Sequence[Record]], stage: str, series: Series, resets: Resets
) -> list[tuple[Run, int]]:
    """For each of the stage's loops: the series' run up to the loop's end, and where in it the loop starts."""
    result: list[tuple[Run, int]] = []
    run: Run = []
    logged = False  # whether Lightning has been given the metric in this stage, and so resets it at loop ends
    after_a_loop = False  # whether a loop other than the sanity check has run
    for loop in loops(records_by_rank, stage):
        if sanity(loop):  # the sanity check's batches reach the metric, which is then put back as it was
            logged = logged or not series.at_boundaries or bool(_boundaries(len(run), len(loop), series))
            result.append((run + loop, len(run)))
            continue
        if after_a_loop and logged and not resets.span_epochs:
            run = []
        if resets.by_user(loop[0][0]):
            run = []
        run = run + loop
        first = len(run) - len(loop)
        logged = logged or not series.at_boundaries or bool(_boundaries(first, len(loop), series))
        after_a_loop = True
        result.append((run, first))
    return result


def _windows(run: Run, series: Series, batches: int) -> list[list[Call]]:
    """The completed windows among the run's first ``batches`` batches, each with every process's calls."""
    calls = [[series.call(record) for record in batch] for batch in run[:batches]]
    starts = range(0, batches - series.window + 1, series.window)
    return [list(itertools.chain.from_iterable(calls[start : start + series.window])) for start in starts]


def latest_values(run: Run, series: Series) -> list[Optional[float]]:
    """After each batch of the run: the latest window value, or ``None`` before the first window completes."""
    values: list[Optional[float]] = []
    for count in range(1, len(run) + 1):
        windows = _windows(run, series, count)
        values.append(series.value_of(windows) if windows else None)
    return values


def loop_values(run: Run, first: int, series: Series) -> list[Optional[float]]:
    """After each batch of the loop that starts at position ``first`` of the run: the latest window value."""
    return latest_values(run, series)[first:]


def shown_values(run: Run, first: int, series: Series) -> list[Optional[float]]:
    """After each batch of the loop: what the log shows for the series (see :class:`Series`)."""
    values = loop_values(run, first, series)
    if not series.at_boundaries:
        return values
    boundaries = _boundaries(first, len(values), series)
    return [value if boundaries and boundaries[0] <= position else None for position, value in enumerate(values)]


def epoch_value(run: Run, first: int, series: Series) -> float:
    """What ``compute()`` gives at the end of the loop that starts at position ``first`` of the run: the value of
    the loop's batches; for an EMA, the latest average, or the mean of the partial window before the first."""
    if series.aggregate_of is not None:
        return series.aggregate_of([series.call(record) for batch in run[first:] for record in batch])
    windows = _windows(run, series, len(run))
    if windows:
        return series.value_of(windows)
    return series.value_of([[series.call(record) for batch in run for record in batch]])


def close(actual: Optional[float], expected: Optional[float]) -> bool:
    """Whether a logged (float32) value is the reference (exact float64) value, rounded; ``None`` for none."""
    if actual is None or expected is None:
        return actual is expected
    return math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-6)


Columns = Callable[[str], str]
"""The CSV column in which a series, by name, is logged."""


def check_step_rows(
    rows: list[dict[str, float]],
    records_by_rank: Sequence[Sequence[Record]],
    stage: str,
    series: dict[str, Series],
    column: Columns,
    resets: Resets = Resets(),
) -> int:
    """Check the stage's on-step rows (those with ``<stage>/raw``, the batch's loss); return how many there are.

    Each row is matched with rank 0's record of its batch (training rows by global step; validation rows, which
    Lightning writes at every batch but the sanity check's, in order) and its ``raw`` column must be that
    record's loss. Each series' column must hold the latest window value over all processes of the run (see
    :class:`Series` for what a series logged at boundaries shows), and be empty before the first window of the
    run. Each process's record must also hold, for every series, the value that the metric reported after it.
    """
    stage_loops = loops(records_by_rank, stage)
    series_runs = {name: runs(records_by_rank, stage, one, resets) for name, one in series.items()}
    latest = {name: [loop_values(run, first, series[name]) for run, first in one] for name, one in series_runs.items()}
    shown = {name: [shown_values(run, first, series[name]) for run, first in one] for name, one in series_runs.items()}
    positions = [(index, position) for index, loop in enumerate(stage_loops) for position in range(len(loop))]
    for index, position in positions:
        for record in stage_loops[index][position]:
            for name in series:
                assert close(record["reported"][name], latest[name][index][position]), (name, record)
    logged_positions = [(index, position) for index, position in positions if not sanity(stage_loops[index])]
    step_rows = [row for row in rows if f"{stage}/raw" in row]
    if stage == "train":
        at_step = {stage_loops[index][position][0]["global_step"]: (index, position) for index, position in positions}
        matched = [(row, at_step[int(row["step"])]) for row in step_rows]
    else:
        assert len(step_rows) == len(logged_positions)
        matched = list(zip(step_rows, logged_positions, strict=True))
    for row, (index, position) in matched:
        assert row[f"{stage}/raw"] == stage_loops[index][position][0]["loss"]
        for name in series:
            assert close(row.get(column(name)), shown[name][index][position]), (name, row)
    return len(step_rows)


def check_epoch_rows(
    rows: list[dict[str, float]],
    records_by_rank: Sequence[Sequence[Record]],
    stage: str,
    series: dict[str, Series],
    column: Columns,
    resets: Resets = Resets(),
) -> None:
    """Check that the stage's on-epoch rows, one per loop in order (none for the sanity check), hold
    ``compute()`` of each series at the loop's end: that of its run up to there."""
    logged = [not sanity(loop) for loop in loops(records_by_rank, stage)]
    epoch_rows = [row for row in rows if any(column(name) in row for name in series)]
    assert len(epoch_rows) == sum(logged)
    for name, one in series.items():
        ends = [
            (run, first)
            for (run, first), is_logged in zip(runs(records_by_rank, stage, one, resets), logged, strict=True)
            if is_logged
        ]
        for row, (run, first) in zip(epoch_rows, ends, strict=True):
            assert close(row[column(name)], epoch_value(run, first, one)), (name, row)


def columns(template: str, stage: str) -> Columns:
    """The columns ``template.format(stage=stage, name=name)``, e.g. with ``"{stage}/{name}_epoch"``."""
    return lambda name: template.format(stage=stage, name=name)


def window_step_columns(stage: str) -> Columns:
    """The on-step columns of a WindowLoggingModule: ``<stage>/<name>_step``; ``boundary_loss`` is on step only."""
    return lambda name: f"{stage}/{name}" if name == "boundary_loss" else f"{stage}/{name}_step"


def check_window_module_rows(
    rows: list[dict[str, float]],
    records_by_rank: Sequence[Sequence[Record]],
    window: int,
    resets: Union[Resets, dict[str, Resets]] = Resets(),
) -> dict[str, int]:
    """Check every on-step and on-epoch row of a WindowLoggingModule; return the number of step rows by stage.

    ``resets`` applies to both stages, or is given by stage.
    """
    counts = {}
    for stage in ("train", "val"):
        stage_resets = resets if isinstance(resets, Resets) else resets[stage]
        step_columns = window_step_columns(stage)
        counts[stage] = check_step_rows(rows, records_by_rank, stage, window_series(window), step_columns, stage_resets)
        epoch_columns = columns("{stage}/{name}_epoch", stage)
        check_epoch_rows(rows, records_by_rank, stage, window_epoch_series(window), epoch_columns, stage_resets)
    return counts
