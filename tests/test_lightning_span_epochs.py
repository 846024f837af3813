"""``span_epochs=True`` on real ``Trainer`` runs: windows and EMAs carry on over Lightning's resets at the end of
each training epoch and validation run, and a reset by user code still clears them.

Each run fits a tiny module for three epochs of 7 training batches (which windows of 3 and of 10 do not divide;
10 is longer than an epoch), with a validation run of 5 batches after the 3rd and the 6th batch of each epoch
(``val_check_interval=0.5``) and Lightning's two-batch sanity check. The CSV log is read back and every logged
value compared with the brute-force value of the windows of the losses that the module recorded
(``tests/logged_reference.py``): with ``span_epochs=True`` the windows of a stage follow each other over the
whole fit, without it they start afresh in each epoch and validation run.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torchmetrics import MetricCollection, SumMetric

from tests.lightning_support import (
    LIGHTNING_NOISE,
    CollectionLoggingModule,
    Record,
    RecordingModule,
    UserResetModule,
    WindowLoggingModule,
    metrics_csv,
    quiet_trainer,
    read_csv,
)
from tests.logged_reference import (
    Resets,
    check_epoch_rows,
    check_step_rows,
    check_window_module_rows,
    close,
    collection_series,
    columns,
    window_epoch_series,
    window_series,
    window_step_columns,
)
from tests.reference import mean_of
from tests.test_lightning_resume import END_OF_EPOCH_CHECKPOINTS, ROWS_PER_EPOCH, from_step, resumable_module, without
from tests.test_lightning_resume import fit as fit_with_callbacks
from tests.versions import OLD_LIGHTNING_RESUMES
from windowmetrics import EMALoss, Windowed, WindowedMean, WindowedSum
from windowmetrics._window import WindowMetric

pytestmark = pytest.mark.filterwarnings(
    *LIGHTNING_NOISE,
    "ignore:Be aware that when using `ckpt_path`:UserWarning",
    "ignore:The dirpath has changed:UserWarning",
)

EPOCHS = 3
TRAIN_BATCHES = 7
VAL_BATCHES = 5
VAL_RUNS_PER_EPOCH = 2


@dataclass
class Run:
    window: int
    span_epochs: bool
    rows: list[dict[str, float]]
    records: list[Record]


def fit(module: RecordingModule, log_dir: Path) -> list[dict[str, float]]:
    trainer = quiet_trainer(log_dir, EPOCHS, val_check_interval=0.5, num_sanity_val_steps=2)
    trainer.fit(module)
    return read_csv(metrics_csv(log_dir))


def small_module(module_class: type[WindowLoggingModule] = WindowLoggingModule, **kwargs) -> WindowLoggingModule:
    torch.manual_seed(0)
    return module_class(train_batches=TRAIN_BATCHES, val_batches=VAL_BATCHES, **kwargs)


@pytest.fixture(
    scope="module",
    params=[(3, False), (3, True), (10, False), (10, True)],
    ids=["window3", "window3-span", "window10", "window10-span"],
)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    window, span_epochs = request.param
    module = small_module(window=window, span_epochs=span_epochs)
    rows = fit(module, tmp_path_factory.mktemp("span"))
    return Run(window, span_epochs, rows, module.records)


def test_every_logged_value_is_that_of_the_reference_windows(run: Run) -> None:
    counts = check_window_module_rows(run.rows, [run.records], run.window, Resets(span_epochs=run.span_epochs))
    assert counts == {"train": EPOCHS * TRAIN_BATCHES, "val": EPOCHS * VAL_RUNS_PER_EPOCH * VAL_BATCHES}
    assert sum(record["sanity"] for record in run.records) == 2  # the sanity check ran, and its batches count nowhere


def test_windows_close_every_window_updates_over_the_whole_run_only_with_span_epochs(run: Run) -> None:
    """The training steps at which a new window value is logged: every ``window`` steps of the fit with
    ``span_epochs``; otherwise every ``window`` steps of each epoch (and never, for a window longer than one)."""
    values = [row.get("train/loss_step") for row in run.rows if "train/raw" in row]
    changes = [step for step in range(len(values)) if values[step] != (values[step - 1] if step else None)]
    if run.span_epochs:
        expected = [step for step in range(EPOCHS * TRAIN_BATCHES) if (step + 1) % run.window == 0]
    else:
        expected = [
            epoch * TRAIN_BATCHES + position
            for epoch in range(EPOCHS)
            for position in range(TRAIN_BATCHES)
            if (position + 1) % run.window == 0
        ]
        expected += [epoch * TRAIN_BATCHES for epoch in range(1, EPOCHS) if run.window <= TRAIN_BATCHES]  # cleared
        expected.sort()
    assert changes == expected


@pytest.mark.parametrize("run", [(3, True)], indirect=True, ids=["window3-span"])
def test_the_ema_carries_on_over_epoch_ends(run: Run) -> None:
    """From the first window on, the EMA always shows a value; at the first step of an epoch that closes no
    window it shows the value it had at the end of the previous epoch."""
    ema = [row.get("train/ema_step") for row in run.rows if "train/raw" in row]
    assert ema[:2] == [None, None]
    assert None not in ema[2:]
    starts = [epoch * TRAIN_BATCHES for epoch in range(1, EPOCHS) if (epoch * TRAIN_BATCHES + 1) % run.window]
    assert starts == [7]
    for first in starts:
        assert ema[first] == ema[first - 1]


@pytest.mark.parametrize("run", [(10, False)], indirect=True, ids=["window10"])
def test_without_span_epochs_lightning_does_not_reset_a_metric_it_has_not_been_given_yet(run: Run) -> None:
    """Logged with ``if metric.at_boundary: self.log(...)`` and a window longer than an epoch, a metric has not
    been given to Lightning when epoch 0 ends, so Lightning does not reset it: its first window spans epochs 0
    and 1, where the same metric logged at every step is reset and never completes a window."""
    logged = {int(row["step"]): row for row in run.rows if "train/raw" in row}
    train = [record for record in run.records if record["stage"] == "train"]
    assert "train/loss_step" not in logged[9]
    assert close(logged[9]["train/boundary_loss"], mean_of([(record["loss"], record["size"]) for record in train[:10]]))


def test_a_user_reset_in_on_train_epoch_start_clears_the_spanning_windows(tmp_path: Path) -> None:
    module = small_module(UserResetModule, reset_epoch=2, window=3, span_epochs=True)
    rows = fit(module, tmp_path)

    def from_epoch_2(first: Record) -> bool:
        return bool(first["epoch"] == 2)

    resets = {"train": Resets(span_epochs=True, by_user=from_epoch_2), "val": Resets(span_epochs=True)}
    counts = check_window_module_rows(rows, [module.records], 3, resets)
    assert counts["train"] == EPOCHS * TRAIN_BATCHES
    logged = {int(row["step"]): row.get("train/loss_step") for row in rows if "train/raw" in row}
    first = 2 * TRAIN_BATCHES
    assert logged[first - 1] is not None
    assert [logged[first], logged[first + 1]] == [None, None]  # nothing until the epoch's first window closes
    assert logged[first + 2] is not None


@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
def test_log_dict_of_a_collection_of_spanning_metrics(tmp_path: Path, use_forward: bool) -> None:
    torch.manual_seed(0)
    module = CollectionLoggingModule(
        use_forward=use_forward, span_epochs=True, train_batches=TRAIN_BATCHES, val_batches=VAL_BATCHES
    )
    rows = fit(module, tmp_path)
    records = [module.records]
    for stage in ("train", "val"):
        spanning = Resets(span_epochs=True)
        check_step_rows(rows, records, stage, collection_series(), columns("{stage}/{name}/w_step", stage), spanning)
        check_epoch_rows(rows, records, stage, collection_series(), columns("{stage}/{name}/w_epoch", stage), spanning)
        epoch_means = [row[f"{stage}/mean_metric/w_epoch"] for row in rows if f"{stage}/mean_metric/w_epoch" in row]
        assert len(epoch_means) == EPOCHS * (1 if stage == "train" else VAL_RUNS_PER_EPOCH)
    train_means = [row["train/mean_metric/w_epoch"] for row in rows if "train/mean_metric/w_epoch" in row]
    for epoch, logged in enumerate(train_means):  # torchmetrics' own MeanMetric is still reset at each epoch end
        losses = [record["loss"] for record in module.records if (record["stage"], record["epoch"]) == ("train", epoch)]
        assert logged == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    # the identical members, like all windowmetrics, are kept in compute groups of their own
    assert ["twin_a"] in module.train_collection.compute_groups.values()


SPANNING_METRICS: dict[str, Callable[[], WindowMetric]] = {
    "WindowedMean": lambda: WindowedMean(3, span_epochs=True),
    "WindowedSum": lambda: WindowedSum(3, span_epochs=True),
    "EMALoss": lambda: EMALoss(0.5, window=3, span_epochs=True),
    "Windowed": lambda: Windowed(SumMetric(), 3, span_epochs=True),
}


@pytest.mark.parametrize("name", SPANNING_METRICS)
@pytest.mark.parametrize("how", ["direct", "collection"])
def test_a_reset_outside_lightning_clears_a_spanning_metric(name: str, how: str) -> None:
    metric = SPANNING_METRICS[name]()
    for value in (1.0, 2.0, 3.0, 4.0):
        metric.update(torch.tensor(value))
    before = metric._forward_cache
    assert before is not None
    if how == "direct":
        metric.reset()
    else:
        MetricCollection({"metric": metric}).reset()
    assert metric._forward_cache is None
    assert not metric.at_boundary
    for value in (10.0, 20.0, 30.0):
        metric.update(torch.tensor(value))
    expected = {"WindowedMean": 20.0, "WindowedSum": 60.0, "EMALoss": 20.0, "Windowed": 60.0}
    assert metric.compute().item() == expected[name]  # a window of the updates after the reset


RESUME_EPOCHS = 3
RESUME_TRAIN_BATCHES = 8  # as in tests/test_lightning_resume.py, whose helpers these tests use


@dataclass
class Uninterrupted:
    rows: list[dict[str, float]]
    records: list[Record]
    checkpoints: Path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Uninterrupted:
    """A spanning, persistent run of 3 epochs (8 training, 7 validation batches, window 3) with checkpoints on
    disk at the end of each training epoch, at the end of each validation run and every 4 training steps."""
    out_dir = tmp_path_factory.mktemp("uninterrupted-span")
    checkpoints = out_dir / "checkpoints"
    callbacks: list[Callback] = [
        ModelCheckpoint(checkpoints, filename="step-{step}", every_n_train_steps=4, save_top_k=-1),
        ModelCheckpoint(checkpoints, filename="train-end-{epoch}", save_top_k=-1),
        ModelCheckpoint(
            checkpoints,
            filename="val-end-{epoch}",
            monitor="val/loss_epoch",
            save_top_k=-1,
            save_on_train_epoch_end=False,
        ),
    ]
    torch.manual_seed(0)
    module = resumable_module(span_epochs=True)
    rows = fit_with_callbacks(module, out_dir, callbacks)
    return Uninterrupted(rows, module.records, checkpoints)


def test_the_uninterrupted_spanning_run_logs_the_reference_windows(uninterrupted: Uninterrupted) -> None:
    counts = check_window_module_rows(uninterrupted.rows, [uninterrupted.records], 3, Resets(span_epochs=True))
    assert counts == {"train": RESUME_EPOCHS * RESUME_TRAIN_BATCHES, "val": RESUME_EPOCHS * 7}


AGGREGATED_AT_THE_CHECKPOINT = {"train-epoch-end": ("train",), "validation-end": ("train", "val")}
"""The stages whose since-reset aggregate a checkpoint written at the end of epoch 0 holds: Lightning writes it
before its end-of-loop resets (the training epoch's end, or the validation run's, which precedes it)."""


def first_loop_records(records: list[Record], stage: str, epoch: int, last: bool) -> list[Record]:
    """The records of the first (or, with ``last``, the last) loop of ``stage`` in ``epoch``, sanity check aside."""
    chosen = [
        record for record in records if (record["stage"], record["epoch"], record["sanity"]) == (stage, epoch, False)
    ]
    steps = sorted({record["global_step"] for record in chosen}) if stage == "val" else [None]
    step = steps[-1] if last else steps[0]
    return [record for record in chosen if stage != "val" or record["global_step"] == step]


def pop_first_epoch_values(
    resumed: list[dict[str, float]],
    expected: list[dict[str, float]],
    stages: tuple[str, ...],
    uninterrupted: Uninterrupted,
    resumed_records: list[Record],
) -> None:
    """Check and remove, from both logs, the first epoch values of ``stages`` after a resume from a checkpoint that
    holds their epoch-0 aggregate: brute force over the saved loop's batches and the resumed loop's."""
    series = window_epoch_series(3)
    resumed_epoch = min(record["epoch"] for record in resumed_records)  # as Lightning numbers it after a resume
    for stage in stages:
        index = next(index for index, row in enumerate(resumed) if f"{stage}/loss_epoch" in row)
        records = first_loop_records(uninterrupted.records, stage, 0, last=True)
        records += first_loop_records(resumed_records, stage, resumed_epoch, last=False)
        for name, one in series.items():
            if one.aggregate_of is None:  # the EMA's compute() is its average, which the resume continues exactly
                continue
            value = resumed[index].pop(f"{stage}/{name}_epoch")
            expected[index].pop(f"{stage}/{name}_epoch")
            assert close(value, one.aggregate_of([one.call(record) for record in records])), (stage, name)


@pytest.mark.parametrize("saved_at", ["train-epoch-end", pytest.param("validation-end", marks=OLD_LIGHTNING_RESUMES)])
def test_an_end_of_epoch_resume_of_spanning_metrics_logs_what_the_uninterrupted_run_logs(
    uninterrupted: Uninterrupted, tmp_path: Path, saved_at: str
) -> None:
    """No code in the module: the checkpoint holds the windows that the next epoch continues.

    It also holds the aggregate of the loops that Lightning had not yet reset when it wrote it (as a
    ``MeanMetric``'s would): the first epoch value of such a stage after the resume covers the saved loop's
    batches and the resumed loop's. Every other logged value is the uninterrupted run's.
    """
    name, epochs = END_OF_EPOCH_CHECKPOINTS[saved_at]
    module = resumable_module(span_epochs=True)
    resumed = fit_with_callbacks(module, tmp_path, [], ckpt_path=uninterrupted.checkpoints / name)
    expected = [dict(row) for row in from_step(uninterrupted.rows, RESUME_TRAIN_BATCHES)[: epochs * ROWS_PER_EPOCH]]
    pop_first_epoch_values(resumed, expected, AGGREGATED_AT_THE_CHECKPOINT[saved_at], uninterrupted, module.records)
    assert [without(row, "step", "epoch") for row in resumed] == [without(row, "step", "epoch") for row in expected]


@OLD_LIGHTNING_RESUMES
def test_a_resume_from_an_epochs_last_batch_continues_the_training_windows_exactly(
    uninterrupted: Uninterrupted, tmp_path: Path
) -> None:
    """A checkpoint saved by ``every_n_train_steps`` on the last batch of epoch 0 precedes the epoch's validation
    run, which the resumed run does not run: its training windows continue exactly, and its validation windows
    hold the validation batches that it runs (none of the skipped run's). Lightning does not end the saved epoch
    either: the first training epoch value covers epoch 0's batches and the resumed epoch's."""
    module = resumable_module(span_epochs=True)
    checkpoint = uninterrupted.checkpoints / f"step-step={RESUME_TRAIN_BATCHES}.ckpt"
    resumed = fit_with_callbacks(module, tmp_path, [], ckpt_path=checkpoint)
    expected = [dict(row) for row in from_step(uninterrupted.rows, RESUME_TRAIN_BATCHES)[:ROWS_PER_EPOCH]]
    pop_first_epoch_values(resumed, expected, ("train",), uninterrupted, module.records)

    def training(rows: list[dict[str, float]]) -> list[dict[str, float]]:
        return [without(row, "step", "epoch") for row in rows if any(name.startswith("train/") for name in row)]

    assert training(resumed) == training(expected)
    spanning = Resets(span_epochs=True)
    assert (
        check_step_rows(resumed, [module.records], "val", window_series(3), window_step_columns("val"), spanning) == 7
    )
    check_epoch_rows(
        resumed, [module.records], "val", window_epoch_series(3), columns("{stage}/{name}_epoch", "val"), spanning
    )
