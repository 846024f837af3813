"""windowmetrics under Lightning's ``*-true`` precisions, checked on real ``Trainer`` runs.

A tiny model is fitted under ``precision="bf16-true"``, ``"16-true"``, ``"64-true"`` and ``"32"``; its step feeds
windowmetrics the batch's loss and per-sample values that every precision holds exactly (integers below 256,
and ones), records what it fed and what the metrics returned, and logs the metrics on step and on epoch. The
CSV log is compared with the brute-force windows of the records (``tests/logged_reference.py``), and runs
resumed from mid-epoch checkpoints saved under another precision with those of uninterrupted runs.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from lightning import LightningModule
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import SumMetric

from tests.lightning_support import (
    FEATURES,
    LIGHTNING_NOISE,
    Record,
    ResumableLoader,
    metrics_csv,
    quiet_trainer,
    read_csv,
    reported,
)
from tests.logged_reference import (
    Series,
    check_epoch_rows,
    check_step_rows,
    columns,
    ema,
    latest_mean,
    latest_sum,
    loss_call,
)
from tests.reference import Call, mean_of, sum_of
from tests.versions import OLD_LIGHTNING_RESUMES, cpu_lacks_precision
from windowmetrics import EMALoss, Windowed, WindowedMean, WindowedSum
from windowmetrics._window import WindowMetric

pytestmark = pytest.mark.filterwarnings(
    *LIGHTNING_NOISE,
    "ignore:Be aware that when using `ckpt_path`:UserWarning",
)

WINDOW = 3


def values_call(record: Record) -> Call:
    return torch.tensor(record["values"], dtype=torch.float64), 1.0


def ones_call(record: Record) -> Call:
    return torch.ones(record["size"], dtype=torch.float64), 1.0


SERIES = {
    "loss": Series(WINDOW, loss_call, latest_mean, mean_of),  # the loss, the batch size as weight
    "ema": Series(WINDOW, loss_call, ema(0.5), None),
    "value_mean": Series(WINDOW, values_call, latest_mean, mean_of),  # per-sample values, exact in every precision
    "value_sum": Series(WINDOW, values_call, latest_sum, sum_of),
    "value_ema": Series(WINDOW, values_call, ema(0.5), None),
    "ones": Series(WINDOW, ones_call, latest_sum, sum_of),  # one per sample: a window of 3 batches of 87 holds 261
    "ones_windowed": Series(WINDOW, ones_call, latest_sum, sum_of),  # (SumMetric sums a batch in its dtype: ones only)
}
EXACT = [name for name in SERIES if name not in ("loss", "ema")]
"""The series whose inputs every precision holds exactly: the same values in every run."""


class PrecisionModule(LightningModule):
    """Fit ``y = sum(x)``; feed the metrics of :data:`SERIES`; record each step (as ``RecordingModule`` does)."""

    def __init__(self, batches: int = 7, batch_size: int = 87) -> None:
        super().__init__()
        self.net = torch.nn.Linear(FEATURES, 1)
        self.batches, self.batch_size = batches, batch_size
        self.loss = WindowedMean(WINDOW)
        self.ema = EMALoss(0.5, window=WINDOW)
        self.value_mean = WindowedMean(WINDOW)
        self.value_sum = WindowedSum(WINDOW)
        self.value_ema = EMALoss(0.5, window=WINDOW)
        self.ones = WindowedSum(WINDOW)
        self.ones_windowed = Windowed(SumMetric(), WINDOW)
        for name in SERIES:
            self.metric(name).persistent(True)
        self.records: list[Record] = []

    def metric(self, name: str) -> WindowMetric:
        metric = getattr(self, name)
        assert isinstance(metric, WindowMetric)
        return metric

    def train_dataloader(self) -> ResumableLoader:
        generator = torch.Generator().manual_seed(5)
        count = self.batches * self.batch_size - 1  # the last batch a sample short
        x = torch.randn(count, FEATURES, generator=generator)
        y = x.sum(dim=1, keepdim=True) + 0.5 * torch.randn(count, 1, generator=generator)
        values = torch.randint(0, 256, (count,), generator=generator).float()
        return ResumableLoader(DataLoader(TensorDataset(x, y, values), batch_size=self.batch_size))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, values = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        size = len(x)
        inputs: dict[str, tuple[Any, ...]] = {
            "loss": (loss, size),
            "ema": (loss, size),
            "value_mean": (values,),
            "value_sum": (values,),
            "value_ema": (values,),
            "ones": (torch.ones_like(values),),
            "ones_windowed": (torch.ones_like(values),),
        }
        returned = {name: self.metric(name)(*arguments) for name, arguments in inputs.items()}
        for name in SERIES:
            self.log(f"train/{name}", self.metric(name), on_step=True, on_epoch=True)
        self.log("train/raw", loss, on_step=True, on_epoch=False)
        self.records.append(
            {
                "stage": "train",
                "epoch": self.current_epoch,
                "batch_idx": batch_idx,
                "global_step": self.global_step,
                "rank": 0,
                "sanity": self.trainer.sanity_checking,
                "loss": loss.item(),
                "size": size,
                "values": values.tolist(),
                "input_dtype": values.dtype,
                "default_dtype": torch.get_default_dtype(),
                "reported": {name: reported(value) for name, value in returned.items()},
                "dtypes": {name: None if value is None else value.dtype for name, value in returned.items()},
            }
        )
        return loss


STEP_COLUMNS = columns("{stage}/{name}_step", "train")
EPOCH_COLUMNS = columns("{stage}/{name}_epoch", "train")
PRECISION_DTYPES = {
    "bf16-true": torch.bfloat16,
    "16-true": torch.float16,
    "64-true": torch.float64,
    "32": torch.float32,
}


@pytest.mark.parametrize(
    "precision",
    [
        pytest.param(precision, marks=cpu_lacks_precision(precision))
        for precision in ("bf16-true", "16-true", "64-true")
    ],
)
def test_windows_logged_under_a_true_precision_are_the_reference_windows_in_float32_or_float64(
    tmp_path: Path, precision: str
) -> None:
    torch.manual_seed(0)
    module = PrecisionModule()
    quiet_trainer(tmp_path, max_epochs=1, precision=precision).fit(module)
    rows = read_csv(metrics_csv(tmp_path))
    records = module.records
    dtype = PRECISION_DTYPES[precision]
    # the precision was in force in the step: inputs and the default dtype
    assert all(record["input_dtype"] == record["default_dtype"] == dtype for record in records)
    # returned values are float32 or float64, never the 16-bit default
    returned = {name: {record["dtypes"][name] for record in records} - {None} for name in SERIES}
    for name, dtypes in returned.items():  # the default dtype but never below float32; Windowed: SumMetric's
        assert dtypes == {torch.float64 if dtype == torch.float64 and name != "ones_windowed" else torch.float32}
    # a window of 3 batches of 87 samples of value 1 holds 261, not bfloat16's 260
    step_rows = [row for row in rows if "train/raw" in row]
    assert len(step_rows) == 7
    for row in step_rows[WINDOW - 1 :]:
        assert row["train/ones_step"] == row["train/ones_windowed_step"] == 261.0
    # every logged value is the brute-force value of the recorded inputs, on step and on epoch
    check_step_rows(rows, [records], "train", SERIES, STEP_COLUMNS)
    check_epoch_rows(rows, [records], "train", SERIES, EPOCH_COLUMNS)
    # the epoch value counts every sample of the epoch: 7 batches of 87, the last one a sample short
    epoch_row = next(row for row in rows if "train/ones_epoch" in row)
    assert epoch_row["train/ones_epoch"] == epoch_row["train/ones_windowed_epoch"] == 608.0


# Checkpoints saved under one precision, resumed under another ----------------------------------------------------

CHECKPOINT_STEP = 4  # a window and one batch of the next
RESUME_BATCHES = 8
RESUME_BATCH_SIZE = 8  # windows of 24 values below 256: sums above 2048, which no 16-bit float holds exactly


@dataclass
class Run:
    rows: list[dict[str, float]]
    records: list[Record]
    checkpoint: Path


def fit(out_dir: Path, precision: str, callbacks: list[Callback], ckpt_path: Optional[Path] = None) -> PrecisionModule:
    torch.manual_seed(0)
    module = PrecisionModule(batches=RESUME_BATCHES, batch_size=RESUME_BATCH_SIZE)
    trainer = quiet_trainer(
        out_dir,
        1,
        precision=precision,
        callbacks=callbacks,
        enable_checkpointing=bool(callbacks),
        default_root_dir=out_dir,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return module


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Run]:
    """The uninterrupted run under a precision, run once, with a checkpoint saved after step 4."""
    runs: dict[str, Run] = {}

    def run(precision: str) -> Run:
        if precision not in runs:
            out_dir = tmp_path_factory.mktemp(f"uninterrupted-{precision}")
            checkpoints = out_dir / "checkpoints"
            saving = ModelCheckpoint(
                checkpoints, filename="step-{step}", every_n_train_steps=CHECKPOINT_STEP, save_top_k=-1
            )
            module = fit(out_dir, precision, [saving])
            rows = read_csv(metrics_csv(out_dir))
            runs[precision] = Run(rows, module.records, checkpoints / f"step-step={CHECKPOINT_STEP}.ckpt")
        return runs[precision]

    return run


def from_step(rows: list[dict[str, float]], step: int) -> list[dict[str, float]]:
    first = next(index for index, row in enumerate(rows) if "train/raw" in row and row["step"] == step)
    return rows[first:]


def exact_columns(row: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in row.items() if any(key.startswith(f"train/{name}_") for name in EXACT)}


CROSSINGS = [
    ("bf16-true", "32"),
    ("16-true", "32"),
    ("32", "bf16-true"),
    ("32", "16-true"),
    ("64-true", "32"),
    ("32", "64-true"),
]


@OLD_LIGHTNING_RESUMES
@pytest.mark.parametrize(
    ("saved_under", "resumed_under"),
    [pytest.param(*crossing, marks=cpu_lacks_precision(*crossing)) for crossing in CROSSINGS],
)
def test_a_mid_epoch_checkpoint_resumes_exactly_under_another_precision(
    uninterrupted: Callable[[str], Run], tmp_path: Path, saved_under: str, resumed_under: str
) -> None:
    saved, reference = uninterrupted(saved_under), uninterrupted(resumed_under)
    checkpoint = torch.load(saved.checkpoint, weights_only=False)["state_dict"]
    assert checkpoint["value_sum.value_sum"].dtype == torch.float64  # float64 whatever the precision
    assert checkpoint["ones_windowed.metric.sum_value"].dtype == torch.float32
    assert checkpoint["value_sum.window_position"] == CHECKPOINT_STEP % WINDOW != 0  # in the middle of a window
    module = fit(tmp_path, resumed_under, [], ckpt_path=saved.checkpoint)
    rows = read_csv(metrics_csv(tmp_path))
    # the series of inputs that every precision holds exactly: the rows of the uninterrupted run, bit for bit
    expected = from_step(reference.rows, CHECKPOINT_STEP)
    assert [exact_columns(row) for row in rows] == [exact_columns(row) for row in expected]
    if "64-true" not in (saved_under, resumed_under):  # (whose step values are float64)
        assert [exact_columns(row) for row in saved.rows] == [exact_columns(row) for row in reference.rows]
    # every series, the losses included: the window in progress holds the saving run's losses, then the resumed run's
    records = [record for record in saved.records if record["global_step"] < CHECKPOINT_STEP] + module.records
    assert [record["batch_idx"] for record in records] == list(range(RESUME_BATCHES))
    check_step_rows(rows, [records], "train", SERIES, STEP_COLUMNS)
    check_epoch_rows(rows, [records], "train", SERIES, EPOCH_COLUMNS)


@pytest.mark.parametrize(
    ("saved_under", "cast"),
    [
        pytest.param(saved_under, cast, marks=cpu_lacks_precision(saved_under))
        for saved_under, cast in [("bf16-true", None), ("16-true", None), ("32", torch.bfloat16)]
    ],
)
def test_load_from_checkpoint_under_another_precision_continues_the_window(
    uninterrupted: Callable[[str], Run], saved_under: str, cast: Optional[torch.dtype]
) -> None:
    saved = uninterrupted(saved_under)
    module = PrecisionModule.load_from_checkpoint(saved.checkpoint, batches=RESUME_BATCHES)
    if cast is not None:
        module.to(cast)  # as a bf16-true run converts the module
    for name in SERIES:
        assert module.metric(name).update_count == CHECKPOINT_STEP, name
    for record in saved.records[CHECKPOINT_STEP:]:
        values = torch.tensor(record["values"], dtype=cast or torch.float32)
        for name in ("value_mean", "value_sum", "value_ema"):
            returned = module.metric(name)(values)
            assert returned is not None
            assert returned.dtype == torch.float32
            assert returned.item() == record["reported"][name], (name, record["batch_idx"])
