"""Make the docs' figures from real runs, on the CPU, with fixed seeds: ``python docs/figures/make_figures.py [NAME]``.

Each figure is a PNG in this folder, drawn from the values that a real run computed and logged:

- ``demo``: ``demo-loss.png``, the plot of ``python -m windowmetrics.demo`` (its defaults, seed 0), copied here;
- ``logged``: ``logged-loss.png``, one Lightning run with ``log_every_n_steps=10``: the raw loss of every batch, the
  batch loss as Lightning writes it (a tensor logged on step), a ``WindowedMean``, an ``EMALoss`` and the epoch mean,
  all read back from the run's CSV log (why a logged loss differs from the loss of the batch);
- ``spike``: ``spike.png``, a plain PyTorch run with one corrupted batch: its loss spike shows in ``WindowedMax`` and
  hides in ``WindowedMean``. It needs ``windowmetrics.WindowedMax``; with a package that lacks it, it says so and
  makes nothing (exit status 3 if it was the only figure asked for).

With no name it makes all three (about half a minute on 2 cores). It needs the ``demo`` extra (Lightning >= 2.4,
matplotlib). Run it from the repository root, or from anywhere: it writes next to itself.
"""

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's package, whether or not it is installed

import windowmetrics  # noqa: E402
from windowmetrics import EMALoss, WindowedMean  # noqa: E402

DPI = 100
SIZE = (9.0, 4.5)


def make_demo() -> Path:
    """Run the demo with its defaults and copy its plot."""
    with tempfile.TemporaryDirectory() as output:
        subprocess.run(
            [sys.executable, "-m", "windowmetrics.demo", "--output", output], cwd=ROOT, check=True, capture_output=True
        )
        target = HERE / "demo-loss.png"
        shutil.copyfile(Path(output) / "loss.png", target)
    return target


def noisy_regression(samples: int, seed: int, noise: float = 1.0) -> TensorDataset:
    """``y = x . w + noise``: a linear model fits it down to the noise, with a noisy loss per batch."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 8, generator=generator)
    w = torch.linspace(-1.0, 1.0, 8)
    y = x @ w.unsqueeze(1) + noise * torch.randn(samples, 1, generator=generator)
    return TensorDataset(x, y)


def read_log(directory: Path) -> list[dict[str, str]]:
    """The rows of the one CSV log under ``directory``."""
    (path,) = directory.glob("**/metrics.csv")
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def column(rows: list[dict[str, str]], key: str) -> tuple[list[int], list[float]]:
    """The steps and values of the rows that hold ``key``."""
    pairs = [(int(row["step"]), float(row[key])) for row in rows if row.get(key)]
    return [step for step, _ in pairs], [value for _, value in pairs]


def make_logged() -> Path:
    """One Lightning run: what is logged on step and on epoch, beside the loss of every batch."""
    from lightning import LightningModule, Trainer, seed_everything
    from lightning.pytorch.loggers import CSVLogger

    window, every, epochs = 10, 10, 3

    class Model(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(8, 1)
            self.loss_window = WindowedMean(window, span_epochs=True)
            self.loss_ema = EMALoss(0.9, span_epochs=True)
            self.raw: list[float] = []

        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.raw.append(loss.item())  # for the figure only: every batch's loss
            self.loss_window(loss, weight=len(x))
            self.loss_ema(loss, weight=len(x))
            self.log("train/batch_loss", loss)  # a tensor on step: written every `every` steps
            self.log("train/epoch_mean", loss, on_step=False, on_epoch=True)  # Lightning's mean of the epoch
            self.log("train/loss_window", self.loss_window)
            self.log("train/loss_ema", self.loss_ema)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.02)

    seed_everything(0, verbose=False)
    model = Model()
    loader = DataLoader(noisy_regression(40 * 16, seed=1), batch_size=16, shuffle=True)
    with tempfile.TemporaryDirectory() as logs:
        trainer = Trainer(
            max_epochs=epochs,
            log_every_n_steps=every,
            logger=CSVLogger(logs, name="run"),
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            accelerator="cpu",
            devices=1,
        )
        trainer.fit(model, loader)
        rows = read_log(Path(logs))
    steps_per_epoch = len(model.raw) // epochs

    figure, axes = plt.subplots(figsize=SIZE)
    axes.plot(range(len(model.raw)), model.raw, color="C0", lw=0.8, alpha=0.35, label="raw loss of every batch")
    steps, values = column(rows, "train/batch_loss")
    axes.plot(steps, values, "o", color="C0", ms=4, label=f"batch loss logged on step (written every {every} steps)")
    steps, values = column(rows, "train/loss_window")
    axes.hlines(
        values,
        [step - window + 0.5 for step in steps],
        [step + 0.5 for step in steps],
        colors="C3",
        lw=2.5,
        label=f"WindowedMean({window}): drawn over the batches it covers",
    )
    steps, values = column(rows, "train/loss_ema")
    axes.plot(steps, values, color="C2", lw=1.5, label="EMALoss(0.9), as written to the log")
    epoch_rows = [row for row in rows if row.get("train/epoch_mean")]
    for epoch, row in enumerate(epoch_rows):
        start = epoch * steps_per_epoch - 0.5
        label = "epoch mean (on_epoch=True)" if epoch == 0 else "_nolegend_"
        axes.hlines(float(row["train/epoch_mean"]), start, start + steps_per_epoch, colors="k", ls="--", label=label)
        if epoch:
            axes.axvline(start, color="grey", ls=":", lw=1)
    axes.set(xlabel="training step (dotted: epoch ends)", ylabel="MSE loss")
    axes.set_title("One run: the loss of a batch, and what Lightning logs")
    axes.legend(loc="upper right", fontsize="small", framealpha=0.9)
    return save(figure, "logged-loss.png")


def make_spike() -> Optional[Path]:
    """A plain PyTorch run with one corrupted batch: WindowedMax shows the spike, WindowedMean hides it."""
    if not hasattr(windowmetrics, "WindowedMax"):
        print("spike: windowmetrics.WindowedMax is not in this package yet; spike.png not made", file=sys.stderr)
        return None
    windowed_max: Any = windowmetrics.WindowedMax  # type: ignore[attr-defined,unused-ignore]

    window, steps, corrupted = 25, 400, 262
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    data = noisy_regression(steps * 16, seed=2, noise=0.5)
    loader = DataLoader(data, batch_size=16, shuffle=False)
    mean: Any = WindowedMean(window)  # Any: window_value is new in the package's API
    peak: Any = windowed_max(window)
    raw: list[float] = []
    ends: list[int] = []
    means: list[float] = []
    peaks: list[float] = []
    for step, (x, y) in enumerate(loader):
        if step == corrupted:
            y = y * 3.0  # one batch with corrupted labels
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call,unused-ignore]
        optimizer.step()
        raw.append(loss.item())  # for the figure only
        mean.update(loss, weight=len(x))
        peak.update(loss)
        if mean.at_boundary:
            ends.append(step)
            means.append(mean.window_value.item())
            peaks.append(peak.window_value.item())

    figure, axes = plt.subplots(figsize=SIZE)
    axes.plot(range(len(raw)), raw, color="C0", lw=0.8, alpha=0.3, label="raw loss of every batch")
    starts = [end - window + 0.5 for end in ends]
    stops = [end + 0.5 for end in ends]
    axes.hlines(means, starts, stops, colors="C3", lw=2.5, label=f"WindowedMean({window})")
    axes.hlines(peaks, starts, stops, colors="C1", lw=2.5, label=f"WindowedMax({window})")
    axes.set(xlabel=f"training step (batch {corrupted} has corrupted labels)", ylabel="MSE loss", ylim=(0, None))
    axes.set_title("A loss spike shows in WindowedMax and hides in WindowedMean")
    axes.legend(loc="upper right", fontsize="small", framealpha=0.9)
    return save(figure, "spike.png")


def save(figure: Any, name: str) -> Path:
    """Write ``figure`` next to this script, at the docs' resolution, and close it."""
    path = HERE / name
    figure.tight_layout()
    figure.savefig(path, dpi=DPI, metadata={"Software": None})  # no version string: a rerun changes no byte
    plt.close(figure)
    return path


FIGURES: dict[str, Callable[[], Optional[Path]]] = {"demo": make_demo, "logged": make_logged, "spike": make_spike}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Make the figures asked for (all by default); print each path written."""
    parser = argparse.ArgumentParser(prog="python docs/figures/make_figures.py", description=__doc__.splitlines()[0])
    names_help = f"figures to make: {', '.join(FIGURES)} (default: all)"
    parser.add_argument("names", nargs="*", metavar="NAME", help=names_help)
    names = parser.parse_args(argv).names or list(FIGURES)
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figures {unknown}: choose from {', '.join(FIGURES)}")
    missing = 0
    for name in names:
        path = FIGURES[name]()
        if path is None:
            missing += 1
        else:
            print(f"{name}: {path.relative_to(ROOT)}")
    return 3 if missing == len(names) else 0


if __name__ == "__main__":
    sys.exit(main())
