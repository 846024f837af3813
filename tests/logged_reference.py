"""What a Lightning run should have logged, recomputed by brute force from the losses its modules recorded.

A *run* is one training epoch or one validation run: Lightning resets logged metrics at the end of each, so
windows start afresh in every run. A run's *batches* are the batch positions of the run, each with the records
of every process (ranks in order): a window covers ``window`` positions and every process's records in them.
"""

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

from tests.lightning_support import Record
from tests.reference import Call, ema_of, mean_of, sum_of

Batch = list[Record]
Run = list[Batch]


@dataclass(frozen=True)
class Series:
    """How a logged metric's values follow from the records: its window, its inputs and its value."""

    window: int
    call: Callable[[Record], Call]
    value_of: Callable[[list[list[Call]]], float]


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


def ema(decay: float) -> Callable[[list[list[Call]]], float]:
    return lambda windows: ema_of(windows, decay)


def window_series(window: int) -> dict[str, Series]:
    """The series of :class:`~tests.lightning_support.WindowLoggingModule`, by metric name."""
    return {
        "loss": Series(window, loss_call, latest_mean),
        "samples": Series(window, size_call, latest_sum),
        "ema": Series(window, loss_call, ema(0.5)),
        "loss_sum": Series(window, unweighted_loss_call, latest_sum),
        "boundary_loss": Series(window, loss_call, latest_mean),
    }


def window_epoch_series(window: int) -> dict[str, Series]:
    """The series of a WindowLoggingModule that are logged at epoch end too (all but ``boundary_loss``)."""
    return {name: one for name, one in window_series(window).items() if name != "boundary_loss"}


def collection_series() -> dict[str, Series]:
    """The windowmetrics of :func:`~tests.lightning_support.mixed_collection`, fed the loss alone."""
    return {
        "mean3": Series(3, unweighted_loss_call, latest_mean),
        "mean5": Series(5, unweighted_loss_call, latest_mean),
        "twin_a": Series(2, unweighted_loss_call, latest_mean),
        "twin_b": Series(2, unweighted_loss_call, latest_mean),
        "sum3": Series(3, unweighted_loss_call, latest_sum),
        "ema2": Series(2, unweighted_loss_call, ema(0.5)),
    }


def runs(records_by_rank: Sequence[Sequence[Record]], stage: str) -> list[Run]:
    """Return the stage's runs (one per epoch), each a list of batches holding every process's record."""
    per_rank = [[record for record in records if record["stage"] == stage] for records in records_by_rank]
    result = []
    for epoch in sorted({record["epoch"] for record in per_rank[0]}):
        columns = [[record for record in records if record["epoch"] == epoch] for records in per_rank]
        assert len({len(column) for column in columns}) == 1, "every process must compute as many batches"
        result.append([list(batch) for batch in zip(*columns, strict=True)])
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


def epoch_value(run: Run, series: Series) -> float:
    """What ``compute()`` gives at the end of the run: the latest window value, or that of the partial window."""
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
) -> int:
    """Check the stage's on-step rows (those with ``<stage>/raw``, the batch's loss); return how many there are.

    Each row is matched with rank 0's record of its batch (training rows by global step; validation rows, which
    Lightning writes at every batch, in order) and its ``raw`` column must be that record's loss. Each series'
    column must hold the latest window value over all processes, and be empty before the first window of the
    run. Each process's record must also hold, for every series, the value that the metric reported after it.
    """
    stage_runs = runs(records_by_rank, stage)
    latest = {name: [latest_values(run, one) for run in stage_runs] for name, one in series.items()}
    positions = [(index, position) for index, run in enumerate(stage_runs) for position in range(len(run))]
    for index, position in positions:
        for record in stage_runs[index][position]:
            for name in series:
                assert close(record["reported"][name], latest[name][index][position]), (name, record)
    step_rows = [row for row in rows if f"{stage}/raw" in row]
    if stage == "train":
        at_step = {stage_runs[index][position][0]["global_step"]: (index, position) for index, position in positions}
        matched = [(row, at_step[int(row["step"])]) for row in step_rows]
    else:
        assert len(step_rows) == len(positions)
        matched = list(zip(step_rows, positions, strict=True))
    for row, (index, position) in matched:
        assert row[f"{stage}/raw"] == stage_runs[index][position][0]["loss"]
        for name in series:
            assert close(row.get(column(name)), latest[name][index][position]), (name, row)
    return len(step_rows)


def check_epoch_rows(
    rows: list[dict[str, float]],
    records_by_rank: Sequence[Sequence[Record]],
    stage: str,
    series: dict[str, Series],
    column: Columns,
) -> None:
    """Check that the stage's on-epoch rows, one per run in order, hold ``compute()`` of each series at its end."""
    stage_runs = runs(records_by_rank, stage)
    epoch_rows = [row for row in rows if any(column(name) in row for name in series)]
    assert len(epoch_rows) == len(stage_runs)
    for row, run in zip(epoch_rows, stage_runs, strict=True):
        for name, one in series.items():
            assert close(row[column(name)], epoch_value(run, one)), (name, row)


def columns(template: str, stage: str) -> Columns:
    """The columns ``template.format(stage=stage, name=name)``, e.g. with ``"{stage}/{name}_epoch"``."""
    return lambda name: template.format(stage=stage, name=name)


def window_step_columns(stage: str) -> Columns:
    """The on-step columns of a WindowLoggingModule: ``<stage>/<name>_step``; ``boundary_loss`` is on step only."""
    return lambda name: f"{stage}/{name}" if name == "boundary_loss" else f"{stage}/{name}_step"


def check_window_module_rows(
    rows: list[dict[str, float]], records_by_rank: Sequence[Sequence[Record]], window: int
) -> dict[str, int]:
    """Check every on-step and on-epoch row of a WindowLoggingModule; return the number of step rows by stage."""
    counts = {}
    for stage in ("train", "val"):
        counts[stage] = check_step_rows(rows, records_by_rank, stage, window_series(window), window_step_columns(stage))
        epoch_columns = columns("{stage}/{name}_epoch", stage)
        check_epoch_rows(rows, records_by_rank, stage, window_epoch_series(window), epoch_columns)
    return counts
