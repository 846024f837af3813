"""The windowmetrics demo: a noisy per-batch loss next to its windowed mean and its EMA, logged by Lightning.

Run it with ``python -m windowmetrics.demo`` (it needs the ``demo`` extra: ``pip install 'windowmetrics[demo]'``;
``--help`` lists the options). It fits a small MLP to noisy synthetic data on the CPU for a few epochs, with
Lightning's progress bar, and logs with a ``CSVLogger``, at every step:

- ``train/loss``: the batch's loss, as training computes it (on several processes, rank 0's batch);
- ``train/loss_windowed``: a :class:`~windowmetrics.WindowedMean` of the loss: the per-sample mean over the
  last completed window of ``--window`` batches, over all processes;
- ``train/samples_per_window``: a :class:`~windowmetrics.WindowedSum` of the batch sizes: the samples that
  window holds, over all processes;
- ``train/loss_ema``: an :class:`~windowmetrics.EMALoss` of the loss: a bias-corrected exponential moving
  average, updated at every batch.

The two windowed metrics are passed to ``self.log`` only when a window completes (``at_boundary``): a logged
metric stays on show until it is logged again (within an epoch), for one ``self.log`` call per window. All three
metrics are created with ``span_epochs=True``: the reset that Lightning performs on logged metrics at the end of
each epoch changes nothing, so windows close every ``--window`` batches over the whole run, across epoch ends,
and the EMA is one continuous average. Nothing is logged for a windowed metric until its first window completes.

When training ends it prints a summary table per epoch and writes ``loss.png``, a plot of the raw loss, the
windowed mean (drawn over the batches each window covers, across epoch ends) and the EMA, to the ``--output``
directory, next to the CSV log; without matplotlib (the ``plot`` extra) it says so and skips the plot.
``--devices 2`` runs the same on two CPU processes with DDP (Lightning starts the second process by running the
same command again).
"""

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from windowmetrics import EMALoss, WindowedMean, WindowedSum

DEMO_EXTRA = "the demo needs the `demo` extra (Lightning >= 2.4, matplotlib): pip install 'windowmetrics[demo]'"
try:
    import lightning
    from lightning import LightningModule, Trainer, seed_everything
    from lightning.pytorch.loggers import CSVLogger
except ModuleNotFoundError as error:  # run as a program without the extra: say what to install, exit 2
    if error.name != "lightning" or __name__ != "__main__":
        raise
    print(f"windowmetrics.demo: no module named 'lightning': {DEMO_EXTRA}", file=sys.stderr)
    sys.exit(2)
if __name__ == "__main__" and tuple(int(part) for part in lightning.__version__.split(".")[:2]) < (2, 4):
    print(f"windowmetrics.demo: Lightning {lightning.__version__} is too old: {DEMO_EXTRA}", file=sys.stderr)
    sys.exit(2)

FEATURES = 8
PLOT_NAME = "loss.png"
LOSS, WINDOWED, SAMPLES, EMA = "train/loss", "train/loss_windowed", "train/samples_per_window", "train/loss_ema"


class DemoModel(LightningModule):
    """A small MLP whose training step logs the raw loss, its windowed mean and sample count, and its EMA.

    Args:
        window: number of batches per window of the windowed mean and the sample count.
        decay: the EMA's weight of the past.
    """

    def __init__(self, window: int, decay: float) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        # span_epochs=True: Lightning's reset of logged metrics at each epoch end changes nothing, so the windows
        # and the EMA run on over epoch ends, as one curve of the whole run
        self.loss_window = WindowedMean(window, span_epochs=True)
        self.samples_window = WindowedSum(window, span_epochs=True)
        self.loss_ema = EMALoss(decay, span_epochs=True)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Compute the batch's loss, update the metrics and log them (the windowed ones once per window)."""
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.loss_window(loss, weight=len(x))  # per-sample mean: the batch's mean loss weighs its samples
        self.samples_window(len(x))
        self.loss_ema(loss, weight=len(x))
        self.log(LOSS, loss)
        self.log(EMA, self.loss_ema, prog_bar=True)
        if self.loss_window.at_boundary:  # both windows close together: log them once per window
            self.log_dict({WINDOWED: self.loss_window, SAMPLES: self.samples_window}, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Return an Adam optimizer."""
        return torch.optim.Adam(self.parameters(), lr=0.01)


def synthetic_data(samples: int, seed: int) -> TensorDataset:
    """Return ``samples`` pairs ``(x, y)`` with ``y = sin(x @ w) + noise``: a loss that falls, noisily."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, FEATURES, generator=generator)
    weights = torch.randn(FEATURES, 1, generator=generator)
    y = torch.sin(x @ weights) + 0.5 * torch.randn(samples, 1, generator=generator)
    return TensorDataset(x, y)


def positive_int(text: str) -> int:
    """Parse an integer >= 1 (an argparse ``type``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def decay_value(text: str) -> float:
    """Parse a float with ``0 <= decay < 1`` (an argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number with 0 <= decay < 1, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number with 0 <= decay < 1, got {text!r}")
    return value


@dataclass(frozen=True)
class Options:
    """The demo's settings, as the command line gives them."""

    epochs: int
    window: int
    decay: float
    samples: int
    batch_size: int
    devices: int
    seed: int
    output: Path

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch on each process: Lightning's sampler gives each process its share of the samples."""
        return math.ceil(math.ceil(self.samples / self.devices) / self.batch_size)

    @property
    def steps(self) -> int:
        """Batches of the whole run on each process."""
        return self.epochs * self.steps_per_epoch


def parse_args(argv: Optional[Sequence[str]] = None) -> Options:
    """Parse the command line; exit with status 2 and a message on a bad flag or value."""
    parser = argparse.ArgumentParser(
        prog="python -m windowmetrics.demo",
        description="Train a small model and log its raw loss, windowed mean loss and EMA with Lightning.",
    )
    parser.add_argument("--epochs", type=positive_int, default=4, help="training epochs (default: 4)")
    parser.add_argument("--window", type=positive_int, default=16, help="batches per window (default: 16)")
    parser.add_argument("--decay", type=decay_value, default=0.9, help="the EMA's weight of the past (default: 0.9)")
    parser.add_argument("--samples", type=positive_int, default=2048, help="samples per epoch (default: 2048)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="samples per batch (default: 32)")
    parser.add_argument("--devices", type=positive_int, default=1, help="CPU processes, with DDP if > 1 (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--output", type=Path, default=Path("demo_output"), help="directory for the log and plot (default: demo_output)"
    )
    options = Options(**vars(parser.parse_args(argv)))
    if options.window > options.steps:
        parser.error(
            f"--window {options.window} is longer than the whole run ({options.epochs} epochs of"
            f" {options.steps_per_epoch} batches per process): no window would complete"
        )
    return options


def train(options: Options) -> tuple[Trainer, Path]:
    """Fit the model; return the trainer and the path of its CSV log."""
    seed_everything(options.seed, verbose=False)
    loader = DataLoader(synthetic_data(options.samples, options.seed), batch_size=options.batch_size, shuffle=True)
    logger = CSVLogger(options.output, name="csv")
    trainer = Trainer(
        accelerator="cpu",
        devices=options.devices,
        strategy="ddp" if options.devices > 1 else "auto",
        max_epochs=options.epochs,
        log_every_n_steps=1,
        logger=logger,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(DemoModel(options.window, options.decay), loader)
    return trainer, Path(logger.log_dir) / "metrics.csv"


@dataclass
class Step:
    """One logged training step: its epoch, its position in the epoch and in the run, and the values logged."""

    epoch: int
    position: int
    index: int
    step: int
    values: dict[str, float]


def read_steps(path: Path) -> list[Step]:
    """Return the training steps of a CSV log, in order."""
    steps: list[Step] = []
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            if not row.get(LOSS):
                continue
            epoch = int(row["epoch"])
            position = steps[-1].position + 1 if steps and steps[-1].epoch == epoch else 0
            values = {name: float(row[name]) for name in (LOSS, WINDOWED, SAMPLES, EMA) if row.get(name)}
            steps.append(Step(epoch, position, len(steps), int(row["step"]), values))
    return steps


def window_ends(steps: list[Step], window: int) -> list[Step]:
    """Return the steps that completed a window: there the windowed values are those of a new window.

    Windows span epoch ends: one completes every ``window`` steps of the run.
    """
    return [step for step in steps if (step.index + 1) % window == 0 and WINDOWED in step.values]


def summary_table(steps: list[Step], window: int) -> str:
    """Return a table with, per epoch, the raw loss's range, the windowed mean's first and last values, the EMA.

    The windowed mean's values are those of the windows that completed in the epoch; the EMA is its value at the
    epoch's end.
    """
    header = (
        "epoch",
        "steps",
        "windows",
        "raw loss min..max",
        "windowed mean first -> last",
        "EMA at end",
        "samples per window",
    )
    lines = [header]
    for epoch in sorted({step.epoch for step in steps}):
        in_epoch = [step for step in steps if step.epoch == epoch]
        losses = [step.values[LOSS] for step in in_epoch]
        ends = window_ends(in_epoch, window)
        windowed = f"{ends[0].values[WINDOWED]:.4f} -> {ends[-1].values[WINDOWED]:.4f}" if ends else "-"
        samples = f"{ends[-1].values[SAMPLES]:.0f}" if ends else "-"
        lines.append(
            (
                str(epoch),
                str(len(in_epoch)),
                str(len(ends)),
                f"{min(losses):.4f} .. {max(losses):.4f}",
                windowed,
                f"{in_epoch[-1].values[EMA]:.4f}",
                samples,
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in lines)


def write_plot(steps: list[Step], window: int, decay: float, devices: int, path: Path) -> bool:
    """Plot the raw loss, the windowed mean over the batches of each window, and the EMA, to ``path``.

    Returns:
        ``False`` if matplotlib is not installed (nothing is written), else ``True``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(10, 5))
    raw_label = "raw loss of each batch" + (" (rank 0's)" if devices > 1 else "")
    axes.plot([step.step for step in steps], [step.values[LOSS] for step in steps], lw=0.8, alpha=0.45, label=raw_label)
    ends = window_ends(steps, window)
    axes.hlines(
        [end.values[WINDOWED] for end in ends],
        [end.step - window + 0.5 for end in ends],
        [end.step + 0.5 for end in ends],
        colors="C3",
        lw=2.5,
        label=f"WindowedMean, window={window}: drawn over the batches it covers, logged at the last",
    )
    ema_label = f"EMALoss, decay={decay}: updated at every batch, on over epoch ends"
    axes.plot([step.step for step in steps], [step.values[EMA] for step in steps], color="C2", lw=1.5, label=ema_label)
    for step in steps:
        if step.position == 0 and step.step:
            axes.axvline(step.step - 0.5, color="grey", ls=":", lw=1)
    axes.set(xlabel="training step (dotted: epoch ends; windows and the EMA carry on over them)", ylabel="MSE loss")
    axes.set_title("windowmetrics demo: a noisy batch loss, its windowed mean and its EMA")
    axes.legend(loc="upper right", fontsize="small", framealpha=0.9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; return the exit status."""
    options = parse_args(argv)
    trainer, log_path = train(options)
    if not trainer.is_global_zero:
        return 0
    steps = read_steps(log_path)
    processes = "process" if options.devices == 1 else "processes (DDP)"
    print(
        f"\nwindowmetrics demo: {options.epochs} epochs of {options.steps_per_epoch} batches on {options.devices} CPU"
        f" {processes}, windows of {options.window} batches, EMA decay {options.decay}\n"
    )
    print(summary_table(steps, options.window))
    print(f"\nCSV log: {log_path}")
    plot_path = options.output / PLOT_NAME
    if write_plot(steps, options.window, options.decay, options.devices, plot_path):
        print(f"plot: {plot_path}")
    else:
        print("matplotlib is not installed, so no plot was written (pip install 'windowmetrics[plot]')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
