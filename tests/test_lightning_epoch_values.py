"""The epoch value beside the window, on real ``Trainer`` runs: validation and test log the exact value of the run,
the sanity check leaves every metric as it found it, and the smoothed monitor drives ``EarlyStopping``.

Every expected value is recomputed by brute force from the losses the module recorded (tests/reference.py).
"""

import math
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor
from torchmetrics.classification import MulticlassF1Score

from tests.lightning_support import LIGHTNING_NOISE, RecordingModule, WindowLoggingModule, quiet_trainer, read_csv
from tests.lightning_support import metrics_csv as csv_of
from tests.logged_reference import Resets, check_window_module_rows
from tests.reference import Call, mean_of
from tests.versions import cpu_lacks_precision
from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedSum
from windowmetrics._window import WindowMetric

pytestmark = pytest.mark.filterwarnings(*LIGHTNING_NOISE)


class ValidationMeanModule(RecordingModule):
    """Log a ``WindowedMean(window)`` of the loss in ``validation_step`` and ``test_step``, with Lightning's defaults
    (``on_step=False, on_epoch=True`` there), and record every loss."""

    def __init__(self, window: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_loss = WindowedMean(window)
        self.test_loss = WindowedMean(window)
        self.val_max = WindowedMax(window)

    def log_step(self, stage: str, loss: Tensor, size: int) -> dict[str, Optional[float]]:
        if stage == "val":
            self.val_loss(loss, weight=size)
            self.val_max(loss)
            self.log("val/loss", self.val_loss)
            self.log("val/max", self.val_max)
        return {}

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.records.append({"stage": "test", "loss": loss.item(), "size": len(x)})
        self.test_loss(loss, weight=len(x))
        self.log("test/loss", self.test_loss)
        return loss

    def test_dataloader(self) -> Any:
        return self.val_dataloader()


def calls_of(records: list[dict[str, Any]], stage: str) -> list[Call]:
    return [(record["loss"], record["size"]) for record in records if record["stage"] == stage]


def test_validation_and_test_log_the_exact_value_of_the_whole_run(tmp_path: Path) -> None:
    """The issue's case: a window of 50 over 120 validation batches logged the mean of batches 51-100."""
    torch.manual_seed(0)
    module = ValidationMeanModule(window=50, train_batches=2, val_batches=120, batch_size=3)
    trainer = quiet_trainer(tmp_path, 1, default_root_dir=tmp_path)
    trainer.fit(module)
    rows = read_csv(csv_of(tmp_path))
    (logged,) = [row["val/loss"] for row in rows if "val/loss" in row]
    val_calls = calls_of(module.records, "val")
    assert len(val_calls) == 120
    assert math.isclose(logged, mean_of(val_calls), rel_tol=1e-6)
    assert not math.isclose(logged, mean_of(val_calls[50:100]), rel_tol=1e-3)  # not the last window
    (logged_max,) = [row["val/max"] for row in rows if "val/max" in row]
    assert logged_max == max(torch.tensor(loss).item() for loss, _ in val_calls)  # float32 losses, exactly

    (results,) = trainer.test(module, verbose=False)
    test_calls = calls_of(module.records, "test")
    assert len(test_calls) == 120
    assert math.isclose(results["test/loss"], mean_of(test_calls), rel_tol=1e-6)


class Snapshots(Callback):
    """Record what every window metric of the module shows when the sanity check starts and when training starts."""

    def __init__(self) -> None:
        self.at: dict[str, dict[str, Any]] = {}

    def _take(self, module: LightningModule, when: str) -> None:
        self.at[when] = {
            name: {
                "window_value": None if metric.window_value is None else metric.window_value.item(),
                "position": metric._position,
                "updates": metric._update_count,
                "states": {key: getattr(metric, key).clone() for key in metric._defaults},
            }
            for name, metric in module.named_modules()
            if isinstance(metric, WindowMetric) and name.startswith(("val", "unlogged"))
        }

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._take(pl_module, "sanity start")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._take(pl_module, "train start")


class SanityModule(WindowLoggingModule):
    """A WindowLoggingModule with spanning windows, and a validation metric that it updates but never logs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(span_epochs=True, persistent=True, **kwargs)
        self.unlogged = WindowedSum(2, span_epochs=True)

    def log_step(self, stage: str, loss: Tensor, size: int) -> dict[str, Optional[float]]:
        if stage == "val":
            self.unlogged.update(size)
        return super().log_step(stage, loss, size)


def assert_as_found(snapshots: Snapshots) -> None:
    before, after = snapshots.at["sanity start"], snapshots.at["train start"]
    assert before.keys() == after.keys()
    assert before
    for name, found in before.items():
        left = after[name]
        assert left["window_value"] == found["window_value"], name
        assert (left["position"], left["updates"]) == (found["position"], found["updates"]), name
        for key, state in found["states"].items():
            torch.testing.assert_close(left["states"][key], state, rtol=0, atol=0, equal_nan=True, msg=f"{name}.{key}")


def test_a_sanity_check_leaves_carried_windows_as_it_found_them_and_reaches_nothing(tmp_path: Path) -> None:
    """A second ``fit`` of the same module runs a sanity check over windows carried from the first."""
    torch.manual_seed(0)
    module = SanityModule(window=3, val_batches=4)
    first = quiet_trainer(tmp_path / "first", 1, num_sanity_val_steps=2, default_root_dir=tmp_path / "first")
    first.fit(module)
    rows = read_csv(csv_of(tmp_path / "first"))
    # the first fit's sanity check reaches no window, no aggregate and no average of the validation run after it
    check_window_module_rows(rows, [module.records], 3, Resets(span_epochs=True))
    assert module.val_metrics.loss._position == 4 % 3  # windows carried over: one update into the second window
    snapshots = Snapshots()
    second = quiet_trainer(
        tmp_path / "second", 2, num_sanity_val_steps=2, callbacks=[snapshots], default_root_dir=tmp_path / "second"
    )
    second.fit(module)
    assert_as_found(snapshots)
    assert snapshots.at["sanity start"]["unlogged"]["updates"] == 4  # the unlogged metric, put back at the next read


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")  # the resumed run needs no checkpoints
def test_a_sanity_check_after_a_resume_leaves_the_restored_windows_as_it_found_them(tmp_path: Path) -> None:
    """The issue's case: a spanning validation metric restored from an end-of-epoch checkpoint was cleared."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    checkpoints = tmp_path / "checkpoints"
    saving = SanityModule(window=3, val_batches=4)
    callback = ModelCheckpoint(checkpoints, filename="end-{epoch}", save_top_k=-1)
    uninterrupted = quiet_trainer(
        tmp_path / "run", 2, callbacks=[callback], enable_checkpointing=True, default_root_dir=tmp_path / "run"
    )
    uninterrupted.fit(saving)
    expected = [row for row in read_csv(csv_of(tmp_path / "run")) if "val/raw" in row]

    resumed_module = SanityModule(window=3, val_batches=4)
    snapshots = Snapshots()
    resumed = quiet_trainer(
        tmp_path / "resumed", 2, num_sanity_val_steps=2, callbacks=[snapshots], default_root_dir=tmp_path / "resumed"
    )
    resumed.fit(resumed_module, ckpt_path=checkpoints / "end-epoch=0.ckpt")
    assert_as_found(snapshots)
    assert snapshots.at["sanity start"]["val_metrics.loss"]["window_value"] is not None  # restored, not fresh
    logged = [row for row in read_csv(csv_of(tmp_path / "resumed")) if "val/raw" in row]
    keys = ("val/loss_step", "val/samples_step", "val/ema_step", "val/loss_sum_step", "val/boundary_loss")
    assert [[row.get(key) for key in keys] for row in logged] == [
        [row.get(key) for key in keys] for row in expected[4:]
    ]


class MonitorModule(RecordingModule):
    """The smoothed-monitor recipe: an EMA of validation-run means, logged for ``EarlyStopping``."""

    def __init__(self, decay: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_loss = WindowedMean(window=10)
        self.smoothed_val_loss = EMALoss(decay, span_epochs=True)

    def log_step(self, stage: str, loss: Tensor, size: int) -> dict[str, Optional[float]]:
        if stage == "val":
            self.val_loss.update(loss, weight=size)
            self.log("val/loss", self.val_loss)  # Lightning logs compute() at the run's end, then resets it
        return {}

    def on_validation_epoch_end(self) -> None:
        self.smoothed_val_loss.update(self.val_loss.compute())  # the run's exact mean, over all processes
        self.log("val/loss_smoothed", self.smoothed_val_loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.3)  # a rate that overshoots: the loss goes up and down


def test_the_smoothed_monitor_recipe_stops_where_a_brute_force_ema_of_the_run_means_says(tmp_path: Path) -> None:
    torch.manual_seed(0)
    decay, patience = 0.5, 2
    module = MonitorModule(decay, train_batches=4, val_batches=3)
    stopping = EarlyStopping("val/loss_smoothed", patience=patience, mode="min")
    trainer = quiet_trainer(tmp_path, 30, callbacks=[stopping], default_root_dir=tmp_path)
    trainer.fit(module)
    runs = sorted({record["epoch"] for record in module.records if record["stage"] == "val"})
    means = [
        mean_of([(r["loss"], r["size"]) for r in module.records if (r["stage"], r["epoch"]) == ("val", e)])
        for e in runs
    ]
    numerator = denominator = 0.0
    smoothed = []
    for mean in means:
        numerator, denominator = decay * numerator + (1 - decay) * mean, decay * denominator + (1 - decay)
        smoothed.append(numerator / denominator)
    logged = [row["val/loss_smoothed"] for row in read_csv(csv_of(tmp_path)) if "val/loss_smoothed" in row]
    assert logged == pytest.approx(smoothed, rel=1e-6)
    best, waited, stop = math.inf, 0, None  # EarlyStopping's rule, by brute force
    for epoch, value in enumerate(smoothed):
        if value < best:
            best, waited = value, 0
        else:
            waited += 1
            if waited >= patience:
                stop = epoch
                break
    assert stop is not None, "the run must stop early for the test to mean something"
    assert trainer.current_epoch == stop + 1
    assert stopping.stopped_epoch == stop


class F1Module(RecordingModule):
    """Log ``Windowed(MulticlassF1Score(3))`` of the predictions on step and on epoch."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.f1 = Windowed(MulticlassF1Score(3, average="macro"), window=3)
        self.batches: list[tuple[Tensor, Tensor]] = []

    def log_step(self, stage: str, loss: Tensor, size: int) -> dict[str, Optional[float]]:
        if stage == "train":
            generator = torch.Generator().manual_seed(len(self.batches))
            preds, target = torch.randint(0, 3, (size * 7,), generator=generator), torch.randint(0, 3, (size * 7,))
            self.batches.append((preds, target))
            self.f1(preds, target)
            self.log("train/f1", self.f1, on_step=True, on_epoch=True)
        return {}


@pytest.mark.parametrize("precision", [pytest.param("bf16-true", marks=cpu_lacks_precision("bf16-true"))])
def test_a_windowed_metric_under_bf16_true_logs_its_float32_value(tmp_path: Path, precision: str) -> None:
    """The issue's case: under ``bf16-true`` the window closed inside the step logged 0.2080 for 0.2074."""
    torch.manual_seed(0)
    module = F1Module(train_batches=7, val_batches=1)
    trainer = quiet_trainer(tmp_path, 1, precision=precision, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module)
    rows = read_csv(csv_of(tmp_path))
    step_values = [row["train/f1_step"] for row in rows if "train/f1_step" in row]
    reference = MulticlassF1Score(3, average="macro")
    expected = []
    for start in range(0, 6, 3):
        reference.reset()
        for preds, target in module.batches[start : start + 3]:
            reference.update(preds, target)
        expected.append(reference.compute().item())
    assert step_values[2] == expected[0]
    assert step_values[-1] == expected[1]
    reference.reset()
    for preds, target in module.batches:
        reference.update(preds, target)
    (epoch_value,) = [row["train/f1_epoch"] for row in rows if "train/f1_epoch" in row]
    assert epoch_value == reference.compute().item()
