"""The Lightning example of the README and the docs' ``Windowed``, Fabric and plain PyTorch examples, run as written.

Each example is the Python block that follows its ``<!-- example: NAME ... -->`` marker in README.md or a page of
docs/ (tests/docs_blocks.py finds it); it is executed, then driven with a loss function that records every loss it
computes, and what it logged or returned is compared with the windows of those losses.
"""

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers.csv_logs import CSVLogger as FabricCSVLogger

from tests.docs_blocks import example
from tests.lightning_support import LIGHTNING_NOISE, metrics_csv, quiet_trainer, synthetic_loader
from tests.reference import Call, mean_of

pytestmark = pytest.mark.filterwarnings(*LIGHTNING_NOISE)

WINDOW = 3
BATCHES = 6  # 2 windows; the last batch is a sample short, so that the weights count


class RecordingLoss(torch.nn.Module):
    """The mean squared error, recording ``(loss, batch size)`` for every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(prediction, target)
        self.calls.append((loss.item(), len(prediction)))
        return loss


def window_means(calls: list[Call]) -> list[float]:
    """The per-sample mean loss of each complete window of the calls."""
    return [mean_of(calls[start : start + WINDOW]) for start in range(0, len(calls) - WINDOW + 1, WINDOW)]


def loader() -> Any:
    return synthetic_loader(seed=7, batches=BATCHES, batch_size=4)


def linear_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def test_the_lightning_example_logs_one_value_per_window_and_none_before_the_first(tmp_path: Path) -> None:
    model = example("lightning")["Model"](window=WINDOW)
    model.net = linear_model()  # the synthetic data have 3 features
    model.loss_fn = RecordingLoss()
    quiet_trainer(tmp_path, max_epochs=2).fit(model, loader())
    with metrics_csv(tmp_path).open(newline="") as file:
        logged = {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file)}
    calls = model.loss_fn.calls
    assert len(calls) == 2 * BATCHES
    expected = {}  # by step: the latest window of the step's epoch; no row before the epoch's first window
    for step in range(2 * BATCHES):
        epoch, position = divmod(step, BATCHES)
        completed = (position + 1) // WINDOW
        if completed:
            expected[step] = window_means(calls[epoch * BATCHES : (epoch + 1) * BATCHES])[completed - 1]
    assert logged.keys() == expected.keys()
    assert [logged[step] for step in expected] == pytest.approx(list(expected.values()), rel=1e-6)


class RecordingNet(torch.nn.Module):
    """A linear classifier that records the probability it predicts and the target of every sample."""

    def __init__(self, features: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(features, 1)
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.linear(x)
        self.outputs.append(torch.sigmoid(logits).detach().squeeze(-1))
        return logits


def classification_loader() -> Any:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(BATCHES * 4 - 1, 8, generator=generator)
    y = (x[:, 0] + 0.5 * torch.randn(len(x), generator=generator) > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def test_the_windowed_example_logs_accuracy_and_mae_over_the_samples_of_each_window(tmp_path: Path) -> None:
    model = example("windowed")["Classifier"](window=WINDOW)
    model.net = RecordingNet(features=8)
    quiet_trainer(tmp_path, max_epochs=1).fit(model, classification_loader())
    with metrics_csv(tmp_path).open(newline="") as file:
        rows = {int(row["step"]): row for row in csv.DictReader(file)}
    targets = [y for _, y in classification_loader()]
    assert len(model.net.outputs) == len(targets) == BATCHES
    assert sorted(rows) == list(range(WINDOW - 1, BATCHES))  # nothing before the first window
    for step, row in rows.items():
        start = ((step + 1) // WINDOW - 1) * WINDOW  # the latest completed window
        probabilities = torch.cat(model.net.outputs[start : start + WINDOW])
        labels = torch.cat(targets[start : start + WINDOW])
        accuracy = ((probabilities > 0.5).long() == labels).double().mean().item()
        mae = (probabilities.double() - labels.double()).abs().mean().item()
        assert float(row["train/accuracy"]) == pytest.approx(accuracy, rel=1e-6), step
        assert float(row["train/mae"]) == pytest.approx(mae, rel=1e-6), step


def test_the_fabric_example_logs_the_mean_of_each_window(tmp_path: Path) -> None:
    fit = example("fabric")["fit"]
    fabric = Fabric(accelerator="cpu", devices=1, loggers=FabricCSVLogger(tmp_path, name="logs", version=0))
    model = linear_model()
    loss_fn = RecordingLoss()
    fit(fabric, model, torch.optim.SGD(model.parameters(), lr=0.05), loader(), loss_fn, window=WINDOW)
    fabric.logger.finalize("success")
    with metrics_csv(tmp_path).open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["step"]) for row in rows] == [2, 5]
    assert [float(row["train/loss"]) for row in rows] == pytest.approx(window_means(loss_fn.calls), rel=1e-6)


def test_the_pytorch_example_prints_and_returns_the_mean_of_each_window(capsys: pytest.CaptureFixture[str]) -> None:
    train = example("pytorch")["train"]
    model = linear_model()
    loss_fn = RecordingLoss()
    means = train(model, torch.optim.SGD(model.parameters(), lr=0.05), loader(), loss_fn, window=WINDOW)
    assert len(loss_fn.calls) == BATCHES
    assert means == pytest.approx(window_means(loss_fn.calls), rel=1e-6)
    assert capsys.readouterr().out.splitlines() == [
        f"batches 1-3: loss {means[0]:.4f}",
        f"batches 4-6: loss {means[1]:.4f}",
    ]
