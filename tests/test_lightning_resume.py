"""Resuming a Lightning run from checkpoints on disk: persistent windowmetrics continue their windows exactly.

One uninterrupted run (three epochs of 8 training and 7 validation batches, window 3) saves checkpoints every 4
training steps, at the end of each training epoch (Lightning's default) and at the end of each validation run;
runs resumed from them with ``Trainer.fit(ckpt_path=...)`` must log what the uninterrupted run logged from there
on. Lightning's own counters are not compared: a resumed run starts its validation step counter afresh, and
after a checkpoint saved during the last batch of an epoch (at its end of validation, or by
``every_n_train_steps``) it numbers the next epoch one too high, and so trains one epoch fewer.
"""

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tests.lightning_support import (
    LIGHTNING_NOISE,
    EpochStartResetModule,
    Record,
    WindowLoggingModule,
    metrics_csv,
    quiet_trainer,
    read_csv,
    read_records,
)
from tests.logged_reference import check_window_module_rows, close
from tests.reference import Call, mean_of
from tests.versions import OLD_LIGHTNING_RESUMES

pytestmark = pytest.mark.filterwarnings(
    *LIGHTNING_NOISE,
    "ignore:Be aware that when using `ckpt_path`:UserWarning",
    "ignore:The dirpath has changed:UserWarning",
)

EPOCHS = 3
WINDOW = 3
TRAIN_BATCHES = 8
ROWS_PER_EPOCH = 8 + 7 + 2  # training steps, validation steps, and the two epoch-end rows


@dataclass
class Run:
    rows: list[dict[str, float]]
    records: list[Record]
    checkpoints: Path


def fit(
    module: WindowLoggingModule, out_dir: Path, callbacks: list[Callback], ckpt_path: Optional[Path] = None
) -> list[dict[str, float]]:
    trainer = quiet_trainer(
        out_dir, EPOCHS, callbacks=callbacks, enable_checkpointing=bool(callbacks), default_root_dir=out_dir
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return read_csv(metrics_csv(out_dir))


def resumable_module(module_class: type[WindowLoggingModule] = WindowLoggingModule, **kwargs) -> WindowLoggingModule:
    return module_class(window=WINDOW, train_batches=TRAIN_BATCHES, persistent=True, resumable_data=True, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out_dir = tmp_path_factory.mktemp("uninterrupted")
    checkpoints = out_dir / "checkpoints"
    callbacks: list[Callback] = [
        ModelCheckpoint(checkpoints, filename="step-{step}", every_n_train_steps=4, save_top_k=-1),
        ModelCheckpoint(checkpoints, filename="train-end-{epoch}", save_top_k=-1),
        ModelCheckpoint(  # a monitor gives it its own state key among the callbacks
            checkpoints,
            filename="val-end-{epoch}",
            monitor="val/loss_epoch",
            save_top_k=-1,
            save_on_train_epoch_end=False,
        ),
    ]
    torch.manual_seed(0)
    module = resumable_module()
    rows = fit(module, out_dir, callbacks)
    return Run(rows, module.records, checkpoints)


def resume(module: WindowLoggingModule, checkpoint: Path, out_dir: Path) -> list[dict[str, float]]:
    return fit(module, out_dir, [], ckpt_path=checkpoint)


def from_step(rows: list[dict[str, float]], step: int) -> list[dict[str, float]]:
    """The rows from the one of training step ``step`` on: those a run resumed before that step logs."""
    first = next(index for index, row in enumerate(rows) if "train/raw" in row and row["step"] == step)
    return rows[first:]


def without(row: dict[str, float], *names: str) -> dict[str, float]:
    return {name: value for name, value in row.items() if name not in names}


def train_calls(records: list[Record], epoch: int) -> list[Call]:
    """The ``(loss, batch size)`` of the epoch's training batches."""
    return [
        (record["loss"], record["size"]) for record in records if (record["stage"], record["epoch"]) == ("train", epoch)
    ]


def test_the_uninterrupted_run_logs_the_reference_windows(uninterrupted: Run) -> None:
    counts = check_window_module_rows(uninterrupted.rows, [uninterrupted.records], WINDOW)
    assert counts == {"train": EPOCHS * TRAIN_BATCHES, "val": EPOCHS * 7}


@OLD_LIGHTNING_RESUMES
@pytest.mark.parametrize("step", [4, 12])
@pytest.mark.parametrize("module_class", [WindowLoggingModule, EpochStartResetModule], ids=["plain", "reset-recipe"])
def test_a_mid_epoch_resume_logs_what_the_uninterrupted_run_logs(
    uninterrupted: Run, tmp_path: Path, step: int, module_class: type[WindowLoggingModule]
) -> None:
    assert step % TRAIN_BATCHES % WINDOW  # the checkpoint is inside a window
    resumed = resume(resumable_module(module_class), uninterrupted.checkpoints / f"step-step={step}.ckpt", tmp_path)
    expected = from_step(uninterrupted.rows, step)
    idiom = ("train/boundary_loss", "val/boundary_loss")
    assert [without(row, "step", *idiom) for row in resumed] == [without(row, "step", *idiom) for row in expected]
    train_steps = [[row["step"] for row in rows if "train/raw" in row] for rows in (resumed, expected)]
    assert train_steps[0] == train_steps[1]
    check_idiom_after_a_mid_epoch_resume(resumed, expected, step)


def check_idiom_after_a_mid_epoch_resume(
    resumed: list[dict[str, float]], expected: list[dict[str, float]], step: int
) -> None:
    """``if metric.at_boundary: self.log(...)`` shows nothing until the first boundary after the resume (the
    resumed Lightning has not seen the metric yet), then the uninterrupted run's values."""
    first_boundary = next(batch for batch in itertools.count(step) if (batch % TRAIN_BATCHES + 1) % WINDOW == 0)
    assert first_boundary > step
    for row, reference in zip(resumed, expected, strict=True):
        if "train/raw" in row and row["step"] < first_boundary:
            assert "train/boundary_loss" not in row
            assert "train/boundary_loss" in reference  # the uninterrupted run repeats its last window value
        else:
            assert row.get("train/boundary_loss") == reference.get("train/boundary_loss")


END_OF_EPOCH_CHECKPOINTS = {  # the checkpoint after epoch 0, and how many epochs Lightning trains after it
    "train-epoch-end": ("train-end-epoch=0.ckpt", 2),
    "validation-end": ("val-end-epoch=0.ckpt", 1),
    "last-batch": (f"step-step={TRAIN_BATCHES}.ckpt", 1),
}


@pytest.mark.parametrize(
    "saved_at",
    [
        saved_at if saved_at == "train-epoch-end" else pytest.param(saved_at, marks=OLD_LIGHTNING_RESUMES)
        for saved_at in END_OF_EPOCH_CHECKPOINTS
    ],
)
def test_an_end_of_epoch_resume_with_the_reset_recipe_logs_what_the_uninterrupted_run_logs(
    uninterrupted: Run, tmp_path: Path, saved_at: str
) -> None:
    name, epochs = END_OF_EPOCH_CHECKPOINTS[saved_at]
    resumed = resume(resumable_module(EpochStartResetModule), uninterrupted.checkpoints / name, tmp_path)
    expected = from_step(uninterrupted.rows, TRAIN_BATCHES)[: epochs * ROWS_PER_EPOCH]
    assert [without(row, "step", "epoch") for row in resumed] == [without(row, "step", "epoch") for row in expected]


def test_an_end_of_epoch_checkpoint_saves_the_windows_before_lightning_resets_them(
    uninterrupted: Run, tmp_path: Path
) -> None:
    """Without the recipe, the first epoch after the resume continues the last partial window of the epoch
    that was checkpointed, and logs that epoch's last window value until its own first window closes."""
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    module = resumable_module(record_dir=str(resumed_dir))
    rows = resume(module, uninterrupted.checkpoints / "train-end-epoch=0.ckpt", tmp_path)
    logged = {row["step"]: row.get("train/loss_step") for row in rows if "train/raw" in row}

    previous = train_calls(uninterrupted.records, 0)
    closed = TRAIN_BATCHES - TRAIN_BATCHES % WINDOW  # the batches of epoch 0 in completed windows
    latest = mean_of(previous[closed - WINDOW : closed])  # the value on show when the checkpoint was saved
    continued = previous[closed:] + train_calls(read_records(resumed_dir)[0], 1)
    for position in range(TRAIN_BATCHES):
        count = TRAIN_BATCHES - closed + position + 1
        if count % WINDOW == 0:
            latest = mean_of(continued[count - WINDOW : count])
        assert close(logged[TRAIN_BATCHES + position], latest), position
    assert logged[TRAIN_BATCHES] is not None  # the uninterrupted run logs no window value at this step
