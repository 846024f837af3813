"""Tiny LightningModules that record every loss they compute, and a reader for what a CSVLogger wrote.

The modules fit a linear model to synthetic data, record each batch's loss, batch size and the values their
metrics reported (per process, written to JSON when ``record_dir`` is given), and log windowmetrics in the ways
the tests check. They live in an importable module so that ``ddp_spawn`` can unpickle them in its processes.
"""

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanMetric, Metric, MetricCollection, SumMetric

from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedSum
from windowmetrics._window import WindowMetric

FEATURES = 3
LIGHTNING_NOISE = (
    "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning",  # no loader workers, short epochs, ...
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning",  # Lightning's use of torch
)
"""Filters of the warnings that Lightning gives about these tiny runs: for ``pytest.mark.filterwarnings``."""
Record = dict[str, Any]
"""One computed batch: stage, epoch, batch_idx, global_step, rank, sanity (whether in Lightning's sanity check),
loss, size, and what metrics reported."""


def synthetic_loader(seed: int, batches: int, batch_size: int) -> DataLoader[tuple[Tensor, ...]]:
    """Return a loader of ``batches`` batches of ``batch_size`` samples, the last one a sample short."""
    generator = torch.Generator().manual_seed(seed)
    count = batches * batch_size - 1
    x = torch.randn(count, FEATURES, generator=generator)
    y = x.sum(dim=1, keepdim=True) + 0.5 * torch.randn(count, 1, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class ResumableLoader:
    """The batches of a loader, resumable mid-epoch: Lightning saves and restores loaders with ``state_dict``.

    A plain DataLoader starts its epoch again from the first batch after a mid-epoch resume; this one continues
    where the checkpoint was saved, so that a resumed run computes the losses an uninterrupted one computes.
    """

    def __init__(self, loader: DataLoader[tuple[Tensor, ...]]) -> None:
        self.batches = list(loader)
        self.position = 0
        self.start = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        start, self.start = self.start, 0
        for index in range(start, len(self.batches)):
            self.position = index + 1
            yield self.batches[index]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.start = state["position"]


def reported(value: Optional[Tensor]) -> Optional[float]:
    """Return what a metric reported (``forward``'s value or ``_forward_cache``) as a number or ``None``."""
    return None if value is None else value.item()


class RecordingModule(LightningModule):
    """Fit ``y = sum(x)`` with a linear layer; record each loss; subclasses log metrics in ``log_step``.

    Each process uses its own data (seeded by its rank) with its own batch size (``batch_size + rank``), so
    that a value that is not the one over all processes' samples shows. Every process has the same number of
    batches, as DDP requires.
    """

    def __init__(
        self,
        train_batches: int = 8,
        val_batches: int = 7,
        batch_size: int = 4,
        record_dir: Optional[str] = None,
        resumable_data: bool = False,
    ) -> None:
        super().__init__()
        self.net = torch.nn.Linear(FEATURES, 1)
        self.resumable_data = resumable_data
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.batch_size = batch_size
        self.record_dir = record_dir
        self.records: list[Record] = []

    def train_dataloader(self) -> Union[DataLoader[tuple[Tensor, ...]], ResumableLoader]:
        loader = synthetic_loader(100 + self.global_rank, self.train_batches, self.batch_size + self.global_rank)
        return ResumableLoader(loader) if self.resumable_data else loader

    def val_dataloader(self) -> DataLoader[tuple[Tensor, ...]]:
        return synthetic_loader(200 + self.global_rank, self.val_batches, self.batch_size + self.global_rank)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step("train", batch, batch_idx)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step("val", batch, batch_idx)

    def _step(self, stage: str, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        record: Record = {
            "stage": stage,
            "epoch": self.current_epoch,
            "batch_idx": batch_idx,
            "global_step": self.global_step,
            "rank": self.global_rank,
            "sanity": self.trainer.sanity_checking,
            "loss": loss.item(),
            "size": len(x),
        }
        record["reported"] = self.log_step(stage, loss, len(x))
        self.records.append(record)
        return loss

    def log_step(self, stage: str, loss: Tensor, size: int) -> dict[str, Optional[float]]:
        """Update and log metrics; return what they reported after this step, by name."""
        raise NotImplementedError

    def on_fit_end(self) -> None:
        if self.record_dir is not None:
            path = Path(self.record_dir) / f"records-rank{self.global_rank}.json"
            path.write_text(json.dumps(self.records))


class StageMetrics(torch.nn.Module):
    """The windowmetrics that :class:`WindowLoggingModule` logs for one stage."""

    def __init__(self, window: int, span_epochs: bool = False) -> None:
        super().__init__()
        self.loss = WindowedMean(window, span_epochs=span_epochs)
        self.samples = WindowedSum(window, span_epochs=span_epochs)
        self.ema = EMALoss(0.5, window=window, span_epochs=span_epochs)
        self.loss_sum = Windowed(SumMetric(), window, span_epochs=span_epochs)
        self.boundary_loss = WindowedMean(window, span_epochs=span_epochs)
        self.max = WindowedMax(window, span_epochs=span_epochs)

    def all(self) -> list[WindowMetric]:
        return [self.loss, self.samples, self.ema, self.loss_sum, self.boundary_loss, self.max]


class WindowLoggingModule(RecordingModule):
    """Log a WindowedMean, WindowedSum, EMALoss and Windowed metric per stage with ``self.log(name, metric)``.

    Per stage (``train``/``val``): ``loss`` (WindowedMean of the loss, batch size as weight), ``samples``
    (WindowedSum of batch sizes), ``ema`` (EMALoss of the loss), ``loss_sum`` (``Windowed(SumMetric())`` of
    the loss, whose wrapped metric accumulates in place) and ``max`` (WindowedMax of the loss), each logged at
    every step with ``on_step=True, on_epoch=True``; ``boundary_loss``, a second WindowedMean of the loss logged
    with the idiom ``if metric.at_boundary: self.log(...)``, on step only; and ``raw``, the batch's loss. All of
    them are created with ``span_epochs`` as given.
    """

    def __init__(self, window: int = 3, persistent: bool = False, span_epochs: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window = window
        self.train_metrics = StageMetrics(window, span_epochs)
        self.val_metrics = StageMetrics(window, span_epochs)
        for metric in self.train_metrics.all() + self.val_metrics.all():
            metric.persistent(persistent)

    def log_step(self, stage: str, loss: Tensor, size: int) -> dict[str, Optional[float]]:
        metrics = self.train_metrics if stage == "train" else self.val_metrics
        values = {
            "loss": reported(metrics.loss(loss, weight=size)),
            "samples": reported(metrics.samples(size)),
            "ema": reported(metrics.ema(loss, weight=size)),
            "loss_sum": reported(metrics.loss_sum(loss)),
            "max": reported(metrics.max(loss)),
        }
        for name in values:
            self.log(f"{stage}/{name}", getattr(metrics, name), on_step=True, on_epoch=True)
        metrics.boundary_loss.update(loss, weight=size)
        if metrics.boundary_loss.at_boundary:
            self.log(f"{stage}/boundary_loss", metrics.boundary_loss, on_step=True, on_epoch=False)
        values["boundary_loss"] = reported(metrics.boundary_loss._forward_cache)
        self.log(f"{stage}/raw", loss, on_step=True, on_epoch=False)
        return values


class EpochStartResetModule(WindowLoggingModule):
    """The README's recipe for resuming from end-of-epoch checkpoints: reset the windows when an epoch starts."""

    def on_train_epoch_start(self) -> None:
        for metric in self.train_metrics.all():
            metric.reset()

    def on_validation_epoch_start(self) -> None:
        for metric in self.val_metrics.all():
            metric.reset()


class UserResetModule(WindowLoggingModule):
    """Reset the training windows in ``on_train_epoch_start`` of epoch ``reset_epoch``: user code's reset."""

    def __init__(self, reset_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reset_epoch = reset_epoch

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == self.reset_epoch:
            for metric in self.train_metrics.all():
                metric.reset()


def mixed_metrics(span_epochs: bool = False) -> dict[str, Union[Metric, MetricCollection]]:
    """Several windowmetrics of one class, two identical ones, and torchmetrics' MeanMetric, for a collection.

    A dict, not a ``MetricCollection``: torchmetrics < 1.7 takes no collection as a collection's first argument.
    """
    return {
        "mean3": WindowedMean(3, span_epochs=span_epochs),
        "mean5": WindowedMean(5, span_epochs=span_epochs),
        "twin_a": WindowedMean(2, span_epochs=span_epochs),
        "twin_b": WindowedMean(2, span_epochs=span_epochs),
        "sum3": WindowedSum(3, span_epochs=span_epochs),
        "ema2": EMALoss(0.5, window=2, span_epochs=span_epochs),
        "mean_metric": MeanMetric(),
    }


class CollectionLoggingModule(RecordingModule):
    """Log a MetricCollection (``train/<name>/w``, ``val/<name>/w``) with ``self.log_dict``.

    The training collection is built with a prefix and postfix; the validation one is its ``clone`` with others.
    ``use_forward`` chooses ``collection(loss)`` or ``collection.update(loss)`` at each step; the windowmetrics
    are created with ``span_epochs`` as given.
    """

    def __init__(self, use_forward: bool, span_epochs: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.use_forward = use_forward
        self.train_collection = MetricCollection(mixed_metrics(span_epochs), prefix="train/", postfix="/w")
        self.val_collection = self.train_collection.clone(prefix="val/")

    def log_step(self, stage: str, loss: Tensor, size: int) -> dict[str, Optional[float]]:
        collection = self.train_collection if stage == "train" else self.val_collection
        if self.use_forward:
            collection(loss)
        else:
            collection.update(loss)
        self.log_dict(collection, on_step=True, on_epoch=True)
        self.log(f"{stage}/raw", loss, on_step=True, on_epoch=False)
        return {
            name: reported(metric._forward_cache) if isinstance(metric, WindowMetric) else None
            for name, metric in collection.items(keep_base=True, copy_state=False)
        }


LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "GLOBAL_RANK")


def subprocess_environment() -> dict[str, str]:
    """This process's environment without the variables of a distributed launch, which an earlier in-process
    run may have left: a subprocess that starts processes of its own must choose its own port and ranks."""
    return {name: value for name, value in os.environ.items() if name not in LAUNCH_VARIABLES}


def quiet_trainer(log_dir: Path, max_epochs: int, **options: Any) -> Trainer:
    """Return a CPU Trainer with no progress bar, model summary, sanity check or checkpoint (unless ``options``
    say otherwise), whose CSVLogger writes each logged step to :func:`metrics_csv` of ``log_dir``."""
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "max_epochs": max_epochs,
        "log_every_n_steps": 1,
        "logger": CSVLogger(log_dir, name="logs", version=0),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    return Trainer(**(settings | options))


def metrics_csv(log_dir: Path) -> Path:
    """The file in which :func:`quiet_trainer`'s logger writes."""
    return log_dir / "logs" / "version_0" / "metrics.csv"


def read_csv(path: Path) -> list[dict[str, float]]:
    """Return a CSVLogger's rows in the order they were logged, with only their non-empty columns, as numbers."""
    with path.open(newline="") as file:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(file)]


def read_records(record_dir: Path) -> list[list[Record]]:
    """Return the records that each process wrote, in rank order."""
    paths = sorted(record_dir.glob("records-rank*.json"))
    return [json.loads(path.read_text()) for path in paths]
