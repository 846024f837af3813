"""The pitfalls of docs/lightning.md, each checked on real ``Trainer`` runs against windows recomputed from the losses.

- ``self.log(name, metric(x))`` raises at the first step (``forward`` returns ``None`` before the first window);
- under ``accumulate_grad_batches=k`` Lightning writes logged values only at optimizer steps: with
  ``log_every_n_steps=1`` every window reaches the logger when the window is at least ``k`` updates, at the step
  that completes it when it is a multiple of ``k``; shorter windows are lost in between;
- ``ModelCheckpoint``/``EarlyStopping`` monitoring a window logged on step only fail while no window has
  completed; a value logged with ``on_epoch=True`` (training, checked at the end of the epoch, or validation)
  is there at every check.
"""

from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from lightning import LightningModule
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import Tensor
from torch.utils.data import DataLoader

from tests.lightning_support import LIGHTNING_NOISE, metrics_csv, quiet_trainer, read_csv, synthetic_loader
from tests.reference import Call, mean_of
from windowmetrics import WindowedMean

pytestmark = pytest.mark.filterwarnings(*LIGHTNING_NOISE)


class LossModule(LightningModule):
    """Fit ``y = sum(x)``; record every batch's ``(loss, batch size)`` by stage and run; ``log`` decides the rest."""

    def __init__(self, train_batches: int = 4, val_batches: int = 3) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3, 1)
        self.train_batches, self.val_batches = train_batches, val_batches
        self.calls: dict[str, list[list[Call]]] = {"train": [], "val": []}

    def train_dataloader(self) -> DataLoader[tuple[Tensor, ...]]:
        return synthetic_loader(1, self.train_batches, 4)

    def val_dataloader(self) -> DataLoader[tuple[Tensor, ...]]:
        return synthetic_loader(2, self.val_batches, 4)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def on_train_epoch_start(self) -> None:
        self.calls["train"].append([])

    def on_validation_epoch_start(self) -> None:
        self.calls["val"].append([])

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.step("train", batch)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.step("val", batch)

    def step(self, stage: str, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.calls[stage][-1].append((loss.item(), len(x)))
        self.log_loss(stage, loss, len(x))
        return loss

    def log_loss(self, stage: str, loss: Tensor, size: int) -> None:
        raise NotImplementedError


def latest_window(calls: list[Call], window: int) -> Optional[float]:
    """The value of the latest complete window of the calls, or ``None``."""
    completed = len(calls) // window
    return mean_of(calls[(completed - 1) * window : completed * window]) if completed else None


def epoch_value(calls: list[Call], window: int) -> float:
    """``compute()`` at the end of a run: the latest window, or the partial one."""
    latest = latest_window(calls, window)
    return mean_of(calls) if latest is None else latest


# (a) self.log(name, metric(x)) --------------------------------------------------------------------------------


class ForwardValueModule(LossModule):
    """Logs what ``forward`` returns, the usual torchmetrics idiom, or the metric object."""

    def __init__(self, window: int, log_the_object: bool) -> None:
        super().__init__()
        self.window, self.log_the_object = WindowedMean(window), log_the_object

    def log_loss(self, stage: str, loss: Tensor, size: int) -> None:
        if stage == "train":
            value = self.window(loss, weight=size)
            self.log("train/loss", self.window if self.log_the_object else value)


def test_logging_the_value_that_forward_returns_raises_at_the_first_step(tmp_path: Path) -> None:
    module = ForwardValueModule(window=2, log_the_object=False)
    with pytest.raises(ValueError, match=r"`self\.log\(train/loss, None\)` was called, but `NoneType` values cannot"):
        quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(module)
    assert [len(run) for run in module.calls["train"]] == [1]  # the first step


def test_logging_the_metric_object_instead_works(tmp_path: Path) -> None:
    module = ForwardValueModule(window=2, log_the_object=True)
    quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(module)
    logged = {int(row["step"]): row["train/loss"] for row in read_csv(metrics_csv(tmp_path))}
    calls = module.calls["train"][0]
    assert logged == pytest.approx({step: latest_window(calls[: step + 1], 2) for step in (1, 2, 3)}, rel=1e-6)


# (b) accumulate_grad_batches --------------------------------------------------------------------------------

ACCUMULATE = 3
MICRO_BATCHES = 7  # per epoch: optimizer steps after micro-batches 3, 6 and 7 (Lightning steps on the last)
WINDOWS = [1, 2, 3, 4, 6]


class AccumulatingModule(LossModule):
    """A WindowedMean of the loss per window length, logged at every step, and again with the at_boundary idiom."""

    def __init__(self) -> None:
        super().__init__(train_batches=MICRO_BATCHES)
        self.windows = torch.nn.ModuleList([WindowedMean(window) for window in WINDOWS])
        self.idiom = torch.nn.ModuleList([WindowedMean(window) for window in WINDOWS])

    def log_loss(self, stage: str, loss: Tensor, size: int) -> None:
        for window, every_step, idiom in zip(WINDOWS, self.windows, self.idiom, strict=True):
            assert isinstance(every_step, WindowedMean)
            assert isinstance(idiom, WindowedMean)
            every_step(loss, weight=size)
            self.log(f"w{window}", every_step)
            idiom(loss, weight=size)
            if idiom.at_boundary:
                self.log(f"idiom{window}", idiom)


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, float]], list[list[Call]]]:
    torch.manual_seed(0)
    module = AccumulatingModule()
    log_dir = tmp_path_factory.mktemp("accumulate")
    trainer = quiet_trainer(log_dir, max_epochs=2, limit_val_batches=0, accumulate_grad_batches=ACCUMULATE)
    trainer.fit(module)
    return read_csv(metrics_csv(log_dir)), module.calls["train"]


def written_micro_batches() -> list[int]:
    """The micro-batches (1-based, in an epoch) after which Lightning writes: optimizer steps only."""
    return [batch for batch in range(1, MICRO_BATCHES + 1) if batch % ACCUMULATE == 0 or batch == MICRO_BATCHES]


def test_with_accumulation_the_log_is_written_at_optimizer_steps_only_with_the_latest_window(accumulated) -> None:
    rows, runs = accumulated
    assert [int(row["step"]) for row in rows] == list(range(2 * len(written_micro_batches())))
    positions = [(epoch, batch) for epoch in range(2) for batch in written_micro_batches()]
    for row, (epoch, batch) in zip(rows, positions, strict=True):
        for window in WINDOWS:
            expected = latest_window(runs[epoch][:batch], window)
            if expected is None:  # no window yet in this epoch: nothing logged
                assert f"w{window}" not in row
            else:
                assert row[f"w{window}"] == pytest.approx(expected, rel=1e-6), (window, epoch, batch)
            assert row.get(f"idiom{window}") == row.get(f"w{window}")  # the at_boundary idiom logs the same


@pytest.mark.parametrize("window", WINDOWS)
def test_with_accumulation_every_window_is_written_when_it_is_at_least_k_updates(accumulated, window: int) -> None:
    rows, runs = accumulated
    written = [row[f"w{window}"] for row in rows if f"w{window}" in row]
    for epoch, calls in enumerate(runs):
        boundaries = range(window, len(calls) + 1, window)
        values = {boundary: latest_window(calls[:boundary], window) for boundary in boundaries}
        shown = {b for b, value in values.items() if any(value == pytest.approx(w, rel=1e-6) for w in written)}
        if window >= ACCUMULATE:
            assert shown == set(boundaries), (epoch, window)
        else:
            assert shown != set(boundaries), (epoch, window)  # windows closed and replaced between two writes
        if window % ACCUMULATE == 0:  # written at the very step that completes each window
            assert set(boundaries) <= set(written_micro_batches())


# (c) ModelCheckpoint and EarlyStopping -------------------------------------------------------------------------


class MonitoredModule(LossModule):
    """A training WindowedMean logged as ``train/loss`` (on step, and on epoch if asked) and a validation one."""

    def __init__(self, window: int, on_epoch: bool) -> None:
        super().__init__()
        self.window = window
        self.train_loss, self.val_loss = WindowedMean(window), WindowedMean(window)
        self.on_epoch = on_epoch

    def log_loss(self, stage: str, loss: Tensor, size: int) -> None:
        if stage == "train":
            self.train_loss(loss, weight=size)
            self.log("train/loss", self.train_loss, on_step=True, on_epoch=self.on_epoch)
        else:
            self.val_loss(loss, weight=size)
            self.log("val/loss", self.val_loss)  # validation_step's default: on_epoch=True


def monitor(kind: str, key: str, directory: Path) -> Callback:
    if kind == "checkpoint":
        return ModelCheckpoint(directory / "checkpoints", monitor=key, save_top_k=-1, filename="{epoch}-{step}")
    return EarlyStopping(monitor=key, patience=100)


FAILURES = {
    "checkpoint": (MisconfigurationException, r"ModelCheckpoint\(monitor='train/loss'\)` could not find the monitored"),
    "early-stopping": (RuntimeError, r"Early stopping conditioned on metric `train/loss` which is not available"),
}
# A window of 10 is longer than the epoch (4 batches); with val_check_interval=2, validation runs before a window
# of 3 completes.
NO_WINDOW_YET: dict[str, dict[str, Any]] = {
    "window-longer-than-the-epoch": {"window": 10},
    "validation-before-the-first-window": {"window": 3, "val_check_interval": 2},
}


@pytest.mark.parametrize("kind", FAILURES)
@pytest.mark.parametrize("case", NO_WINDOW_YET)
def test_monitoring_a_window_logged_on_step_fails_while_no_window_has_completed(
    tmp_path: Path, kind: str, case: str
) -> None:
    settings = dict(NO_WINDOW_YET[case])
    module = MonitoredModule(settings.pop("window"), on_epoch=False)
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, callbacks=[monitor(kind, "train/loss", tmp_path)], enable_checkpointing=True, **settings
    )
    error, message = FAILURES[kind]
    with pytest.raises(error, match=message):
        trainer.fit(module)


def scores(callback: Callback) -> list[float]:
    """The monitored values that the callback saw (a checkpoint per check) or its best one."""
    if isinstance(callback, ModelCheckpoint):
        return sorted(float(score) for score in callback.best_k_models.values())
    assert isinstance(callback, EarlyStopping)
    return [float(callback.best_score)]


@pytest.mark.parametrize("kind", FAILURES)
def test_a_training_window_logged_on_epoch_too_is_there_at_the_end_of_every_epoch(tmp_path: Path, kind: str) -> None:
    """``compute()`` at the end of the epoch is the partial window: a window longer than the epoch works."""
    module = MonitoredModule(10, on_epoch=True)
    callback = monitor(kind, "train/loss", tmp_path)
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[callback], enable_checkpointing=True).fit(module)
    expected = sorted(epoch_value(calls, 10) for calls in module.calls["train"])
    assert scores(callback) == pytest.approx(expected if kind == "checkpoint" else [min(expected)], rel=1e-6)


@pytest.mark.parametrize("kind", FAILURES)
@pytest.mark.parametrize("case", NO_WINDOW_YET)
def test_a_validation_window_is_there_after_every_validation_run(tmp_path: Path, kind: str, case: str) -> None:
    """A validation WindowedMean logged on epoch (the default there) gives its latest window, or the partial one
    when the window is longer than the validation run, even before the first training window completes."""
    settings = dict(NO_WINDOW_YET[case])
    window = settings.pop("window")
    module = MonitoredModule(window, on_epoch=False)
    callback = monitor(kind, "val/loss", tmp_path)
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[callback], enable_checkpointing=True, **settings).fit(module)
    expected = sorted(epoch_value(calls, window) for calls in module.calls["val"])
    assert len(expected) == (4 if "val_check_interval" in settings else 2)
    assert scores(callback) == pytest.approx(expected if kind == "checkpoint" else [min(expected)], rel=1e-6)
