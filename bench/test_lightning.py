"""Time a real Lightning training step: without logging, with the raw loss logged, and with windowmetrics logged.

Time per step is read by a callback that records ``time.perf_counter()`` at every ``on_train_batch_start``: the
interval between two starts is one whole step (batch fetch, ``training_step``, backward, optimizer step,
``self.log`` and the logger connector's work). The first window of steps is a warm-up, so Trainer start-up is never
timed and every metric has closed and logged a window before the clock counts; then each round is the mean step
time over one window of steps, which holds exactly one boundary of every windowed metric: logging only at
boundaries is charged at its real rate. All configurations train the same model on the same data with a
``CSVLogger`` (Lightning's default ``log_every_n_steps=50``).
"""

import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from bench.names import LIGHTNING, WINDOW
from windowmetrics import EMALoss, WindowedMean, WindowedSum

WARM_UP_STEPS = WINDOW
STEPS_PER_ROUND = WINDOW
ROUNDS = 20
BATCH_SIZE = 32
FEATURES = 16


class StepClock(Callback):
    """Record the time at which each training step starts."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.starts.append(time.perf_counter())

    def round_means(self) -> list[float]:
        """Return the mean step time of each round of ``STEPS_PER_ROUND`` steps after the warm-up."""
        marks = self.starts[WARM_UP_STEPS::STEPS_PER_ROUND]
        return [(end - start) / STEPS_PER_ROUND for start, end in pairwise(marks)]


class TinyRegression(LightningModule):
    """A linear regression whose ``training_step`` logs as its ``logging`` function says."""

    def __init__(self, logging: Callable[["TinyRegression", Tensor, int], None]) -> None:
        super().__init__()
        self.layer = nn.Linear(FEATURES, 1)
        self.logging = logging
        self.loss_mean = WindowedMean(window=WINDOW)
        self.samples = WindowedSum(window=WINDOW)
        self.loss_ema = EMALoss(window=WINDOW)
        self.loss_sum = 0.0
        self.steps = 0

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        loss = nn.functional.mse_loss(self.layer(inputs), targets)
        self.logging(self, loss, len(inputs))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def update_windows(self, loss: Tensor, batch_size: int) -> dict[str, Any]:
        """Update the three windowmetrics; return them by logged name."""
        self.loss_mean(loss, weight=batch_size)
        self.samples(batch_size)
        self.loss_ema(loss)
        return {"train/loss": self.loss_mean, "train/samples": self.samples, "train/loss_ema": self.loss_ema}


def no_logging(module: TinyRegression, loss: Tensor, batch_size: int) -> None:
    pass


def raw_loss(module: TinyRegression, loss: Tensor, batch_size: int) -> None:
    module.log("train/loss", loss)


def hand_written(module: TinyRegression, loss: Tensor, batch_size: int) -> None:
    """The seeds' style: ``loss.item()`` summed at every step, its mean logged every ``WINDOW`` steps."""
    module.loss_sum += loss.item()
    module.steps += 1
    if module.steps % WINDOW == 0:
        module.log("train/loss", module.loss_sum / WINDOW)
        module.loss_sum = 0.0


def windows_not_logged(module: TinyRegression, loss: Tensor, batch_size: int) -> None:
    module.update_windows(loss, batch_size)


def windows_every_step(module: TinyRegression, loss: Tensor, batch_size: int) -> None:
    for name, metric in module.update_windows(loss, batch_size).items():
        module.log(name, metric)


def windows_at_boundary(module: TinyRegression, loss: Tensor, batch_size: int) -> None:
    for name, metric in module.update_windows(loss, batch_size).items():
        if metric.at_boundary:
            module.log(name, metric)


CONFIGURATIONS = {
    "no logging": no_logging,
    "self.log(raw loss) every step": raw_loss,
    f"hand-written: loss.item() summed, self.log every {WINDOW} steps": hand_written,
    "3 windowmetrics updated, not logged": windows_not_logged,
    "3 windowmetrics, self.log every step": windows_every_step,
    "3 windowmetrics, self.log if at_boundary": windows_at_boundary,
}


def train(logging: Callable[[TinyRegression, Tensor, int], None], root: Path) -> StepClock:
    """Train for the warm-up and the rounds, plus one step whose start closes the last round."""
    steps = WARM_UP_STEPS + ROUNDS * STEPS_PER_ROUND + 1
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(steps * BATCH_SIZE, FEATURES), torch.randn(steps * BATCH_SIZE, 1))
    clock = StepClock()
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(root),
        callbacks=[clock],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(TinyRegression(logging), DataLoader(data, batch_size=BATCH_SIZE))
    return clock


@pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning")
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated")  # raised inside Lightning 2.6 on torch 2.13
@pytest.mark.parametrize("label", list(CONFIGURATIONS))
def test_training_step(record_rounds: Any, label: str, tmp_path: Path) -> None:
    clock = train(CONFIGURATIONS[label], tmp_path)
    reference = {"reference": True} if CONFIGURATIONS[label] is no_logging else {}
    record_rounds(LIGHTNING, clock.round_means(), {"label": label, **reference})
