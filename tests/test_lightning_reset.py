"""``lightning_reset_caller``: which resets come from Lightning's logger connector, and which of those from its sanity
check, under both its package names, checked with Lightning's own ``_ResultMetric`` and on real ``Trainer`` runs.

The probes are torchmetrics metrics that record, at every ``reset()``, what the check answers there; they need
nothing of windowmetrics but the check.
"""

import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Metric, MetricCollection

from tests.lightning_support import LIGHTNING_NOISE
from windowmetrics._lightning import lightning_reset_caller

pytestmark = pytest.mark.filterwarnings(*LIGHTNING_NOISE)

PACKAGES = ["lightning.pytorch", "pytorch_lightning"]


class ResetProbe(Metric):
    """A metric that counts its updates and records, at each ``reset()``, what the check answers."""

    full_state_update = False
    count: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")
        self.answers: list[str] = []
        self.on_reset: Callable[[str], None] = lambda answer: None

    def update(self, value: Tensor) -> None:
        self.count = self.count + 1

    def compute(self) -> Tensor:
        return self.count

    def reset(self) -> None:
        answer = lightning_reset_caller(self).name
        self.answers.append(answer)
        self.on_reset(answer)
        super().reset()


class OverridingProbe(ResetProbe):
    """A subclass whose ``reset`` override calls ``super().reset()`` through a second override."""

    def reset(self) -> None:
        super().reset()


class DeeperProbe(OverridingProbe):
    def reset(self) -> None:
        super().reset()


def logged_call(method: Callable[..., None]) -> Callable[..., None]:
    """A decorator of the kind users wrap around methods: its wrapper frame stands between caller and method."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        method(*args, **kwargs)

    return wrapper


class DecoratedProbe(ResetProbe):
    """A subclass whose ``reset`` is wrapped by a decorator."""

    @logged_call
    def reset(self) -> None:
        super().reset()


class Holder(Metric):
    """A metric that resets another one (a probe) in its own ``reset``, as a wrapper does."""

    def __init__(self, inner: ResetProbe) -> None:
        super().__init__()
        self.inner = inner

    def update(self, value: Tensor) -> None:
        self.inner.update(value)

    def compute(self) -> Tensor:
        return self.inner.compute()

    def reset(self) -> None:
        super().reset()
        self.inner.reset()


def lightning_package(name: str) -> ModuleType:
    package: ModuleType = pytest.importorskip(name)
    return package


def result_metric(package: str, value: Metric) -> Metric:
    """Lightning's own ``_ResultMetric`` holding ``value``, as ``self.log(name, value)`` makes and fills it."""
    lightning_package(package)
    result = importlib.import_module(f"{package}.trainer.connectors.logger_connector.result")
    holder: Metric = result._ResultMetric(result._Metadata(fx="training_step", name="probe"), is_tensor=False)
    holder.forward(value, 1)  # what _ResultCollection.update_metrics does at each self.log
    return holder


def test_a_reset_that_user_code_calls_is_not_lightnings() -> None:
    probe = ResetProbe()
    probe.reset()
    MetricCollection({"probe": probe}).reset()
    assert probe.answers == ["OTHER", "OTHER"]


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize("probe_class", [ResetProbe, OverridingProbe, DeeperProbe, DecoratedProbe])
def test_lightnings_result_metric_reset_is_recognised(package: str, probe_class: type[ResetProbe]) -> None:
    probe = probe_class()
    result_metric(package, probe).reset()
    probe.reset()
    assert probe.answers == ["LOOP_END", "OTHER"]


@pytest.mark.parametrize("package", PACKAGES)
def test_a_decorator_around_the_reset_of_an_instance_is_seen_through(package: str) -> None:
    probe = ResetProbe()
    probe.reset = logged_call(probe.reset)  # type: ignore[method-assign]
    result_metric(package, probe).reset()
    probe.reset()
    assert probe.answers == ["LOOP_END", "OTHER"]


@pytest.mark.parametrize("package", PACKAGES)
def test_a_metric_reset_by_a_logged_metric_in_its_own_reset_is_not_reset_by_lightning(package: str) -> None:
    probe = ResetProbe()
    holder = Holder(probe)
    result_metric(package, holder).reset()  # Lightning resets the holder; the holder resets the probe
    assert probe.answers == ["OTHER"]


@pytest.mark.parametrize("package", PACKAGES)
def test_a_result_metric_holding_another_metric_is_not_taken_for_this_ones(package: str) -> None:
    probe, other = ResetProbe(), ResetProbe()
    holder = result_metric(package, other)

    class Resetter(Metric):  # a metric whose reset resets the probe, while a _ResultMetric's reset runs
        def update(self) -> None:
            pass

        def compute(self) -> Tensor:
            return torch.zeros(())

        def reset(self) -> None:
            probe.reset()

    holder.value = Resetter()
    holder.reset()
    assert probe.answers == ["OTHER"]


def test_depth_names_the_frame_of_the_metrics_reset() -> None:
    probe = ResetProbe()

    def reset() -> str:
        return helper()

    def helper() -> str:
        return lightning_reset_caller(probe, depth=3).name

    assert reset() == "OTHER"
    assert lightning_reset_caller(probe, depth=10_000).name == "OTHER"  # deeper than the stack


def probe_module_class(package: str) -> type:
    """A LightningModule of ``package`` that logs a training and a validation probe and resets them in hooks."""
    pl = lightning_package(package)

    class ProbeModule(pl.LightningModule):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(1, 1)
            self.train_probe = OverridingProbe()
            self.val_probe = ResetProbe()
            self.val_collection = MetricCollection({"probe": ResetProbe()}, prefix="val/collection/")
            self.resets: list[tuple[str, str, bool, int]] = []
            for name, probe in [("train", self.train_probe), ("val", self.val_probe)]:
                probe.on_reset = self.recorder(name)

        def recorder(self, name: str) -> Callable[[str], None]:
            def record(answer: str) -> None:
                trainer = self._trainer
                sanity = trainer is not None and trainer.sanity_checking
                self.resets.append((name, answer, sanity, -1 if trainer is None else trainer.current_epoch))

            return record

        def train_dataloader(self) -> DataLoader[tuple[Tensor, ...]]:
            return DataLoader(TensorDataset(torch.randn(7, 1), torch.randn(7, 1)), batch_size=1)

        def val_dataloader(self) -> DataLoader[tuple[Tensor, ...]]:
            return DataLoader(TensorDataset(torch.randn(3, 1), torch.randn(3, 1)), batch_size=1)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.train_probe.update(loss)  # not forward: torchmetrics' forward resets the metric itself
            self.log("train/probe", self.train_probe, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.val_probe.update(loss)
            self.val_collection.update(loss)
            self.log("val/probe", self.val_probe)
            self.log_dict(self.val_collection)

        def on_train_epoch_start(self) -> None:
            if self.current_epoch == 1:  # the user's resets, in a hook: of a metric, and of a collection
                self.train_probe.reset()
                self.val_collection.reset()

    return ProbeModule


@pytest.mark.parametrize("package", PACKAGES)
def test_on_a_real_fit_only_lightnings_loop_end_resets_outside_the_sanity_check_are_recognised(
    tmp_path: Path, package: str
) -> None:
    pl = lightning_package(package)
    module: Any = probe_module_class(package)()
    collection_probe = module.val_collection["probe"]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        val_check_interval=0.5,  # validation after the 3rd and 6th of the 7 batches of each epoch
        num_sanity_val_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module)
    sanity = [("val", "SANITY_CHECK", True, 0)] * 2  # at the end of the sanity check's validation run, and after it
    validation_end = ("val", "LOOP_END", False)
    assert module.resets == [
        *sanity,
        (*validation_end, 0),
        (*validation_end, 0),
        ("train", "LOOP_END", False, 0),  # Lightning's, at the end of epoch 0
        ("train", "OTHER", False, 1),  # the user's, in on_train_epoch_start of epoch 1
        (*validation_end, 1),
        (*validation_end, 1),
        ("train", "LOOP_END", False, 1),
    ]
    # the collection's member: the sanity check's two resets, four validation ends and the user's reset (in
    # epoch 1, after the two validation ends of epoch 0 and before the two of epoch 1)
    loop_end = ["LOOP_END", "LOOP_END"]
    assert collection_probe.answers == ["SANITY_CHECK", "SANITY_CHECK", *loop_end, "OTHER", *loop_end]
