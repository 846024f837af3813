"""Logging windowmetrics with Lightning's ``self.log``/``self.log_dict``, checked on real ``Trainer`` runs.

Each run fits a tiny module for two epochs of 8 training and 7 validation batches (no multiple of the windows)
with a CSVLogger; the CSV is read back and every logged value compared with the brute-force value of the
windows of the losses that the module recorded.
"""

from pathlib import Path

import pytest
import torch
from lightning import LightningModule

from tests.lightning_support import (
    LIGHTNING_NOISE,
    CollectionLoggingModule,
    Record,
    WindowLoggingModule,
    metrics_csv,
    quiet_trainer,
    read_csv,
)
from tests.logged_reference import (
    check_epoch_rows,
    check_step_rows,
    collection_series,
    columns,
    window_epoch_series,
    window_series,
    window_step_columns,
)

pytestmark = pytest.mark.filterwarnings(*LIGHTNING_NOISE)

EPOCHS = 2
WINDOW = 3


def fit(module: LightningModule, log_dir: Path, log_every_n_steps: int = 1) -> list[dict[str, float]]:
    """Fit ``module`` on one CPU process; return the rows its CSVLogger wrote."""
    quiet_trainer(log_dir, EPOCHS, log_every_n_steps=log_every_n_steps).fit(module)
    return read_csv(metrics_csv(log_dir))


@pytest.fixture(scope="module", params=[1, 4], ids=["every-step", "every-4-steps"])
def window_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, list[dict[str, float]], list[Record]]:
    """Fit a WindowLoggingModule with window 3, logging every step or every 4 steps (which 3 does not divide)."""
    torch.manual_seed(0)
    module = WindowLoggingModule(window=WINDOW)
    rows = fit(module, tmp_path_factory.mktemp("windows"), log_every_n_steps=request.param)
    return request.param, rows, module.records


def test_training_steps_log_the_latest_window_value_and_nothing_before_the_first(window_run) -> None:
    log_every_n_steps, rows, records = window_run
    count = check_step_rows(rows, [records], "train", window_series(WINDOW), window_step_columns("train"))
    steps = [int(row["step"]) for row in rows if "train/raw" in row]
    assert steps == [step for step in range(EPOCHS * 8) if (step + 1) % log_every_n_steps == 0]
    assert count == len(steps)


@pytest.mark.parametrize("window_run", [1], indirect=True, ids=["every-step"])
def test_every_step_logging_shows_one_new_value_per_completed_window(window_run) -> None:
    _, rows, _ = window_run
    for epoch in range(EPOCHS):
        values = [row.get("train/loss_step") for row in rows if "train/raw" in row and row["epoch"] == epoch]
        changes = [index for index in range(len(values)) if values[index] != (values[index - 1] if index else None)]
        assert changes == [2, 5]  # the 3rd and 6th batch close the windows; the 8th batch is in an open window


def test_validation_steps_log_the_latest_window_value_at_every_step(window_run) -> None:
    _, rows, records = window_run
    count = check_step_rows(rows, [records], "val", window_series(WINDOW), window_step_columns("val"))
    assert count == EPOCHS * 7


@pytest.mark.parametrize("stage", ["train", "val"])
def test_epoch_end_logs_compute(window_run, stage: str) -> None:
    _, rows, records = window_run
    check_epoch_rows(rows, [records], stage, window_epoch_series(WINDOW), columns("{stage}/{name}_epoch", stage))


@pytest.mark.parametrize("stage", ["train", "val"])
def test_logging_only_at_boundaries_logs_the_same_series_as_logging_every_step(window_run, stage: str) -> None:
    _, rows, _ = window_run
    step_rows = [row for row in rows if f"{stage}/raw" in row]
    assert any(f"{stage}/boundary_loss" in row for row in step_rows)
    for row in step_rows:
        assert row.get(f"{stage}/boundary_loss") == row.get(f"{stage}/loss_step"), row


@pytest.mark.parametrize("use_forward", [True, False], ids=["forward", "update"])
def test_log_dict_of_a_metric_collection_gives_every_member_its_own_values(tmp_path: Path, use_forward: bool) -> None:
    torch.manual_seed(0)
    module = CollectionLoggingModule(use_forward=use_forward)
    rows = fit(module, tmp_path)
    records = [module.records]
    series = collection_series()
    for stage in ("train", "val"):
        check_step_rows(rows, records, stage, series, columns("{stage}/{name}/w_step", stage))
        check_epoch_rows(rows, records, stage, series, columns("{stage}/{name}/w_epoch", stage))
    # the identical members, like all windowmetrics, are kept in compute groups of their own
    assert ["twin_a"] in module.train_collection.compute_groups.values()
    check_torchmetrics_mean(rows, module.records, use_forward)


def check_torchmetrics_mean(rows: list[dict[str, float]], records: list[Record], use_forward: bool) -> None:
    """torchmetrics' MeanMetric in the collection logs the batch's loss on step after forward (nothing after
    update, which leaves its forward cache empty) and the epoch's mean loss at epoch end."""
    for stage in ("train", "val"):
        step_rows = [row for row in rows if f"{stage}/raw" in row]
        for row in step_rows:
            assert row.get(f"{stage}/mean_metric/w_step") == (row[f"{stage}/raw"] if use_forward else None)
        epoch_means = [row[f"{stage}/mean_metric/w_epoch"] for row in rows if f"{stage}/mean_metric/w_epoch" in row]
        for epoch, logged in enumerate(epoch_means):
            losses = [record["loss"] for record in records if record["stage"] == stage and record["epoch"] == epoch]
            assert logged == pytest.approx(sum(losses) / len(losses), rel=1e-6)
        assert len(epoch_means) == EPOCHS
