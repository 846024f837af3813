"""A real two-process ``Trainer(strategy="ddp")`` run resumed mid-window from Lightning's checkpoint on disk.

Lightning's checkpoint is rank 0's ``state_dict()``, loaded by every process. ``tests/ddp_resume_fit.py`` saves
one after 4 of 6 training steps (window 3: the second window then holds one update of each process), and
resumes a fresh run from it. After the resume, every process and rank 0's log must show the brute-force values
of the windows that must be seen: the first window, closed before the checkpoint, over both processes; the
second over rank 0's update before the checkpoint (restored from the file) and both processes' updates after
it. Rank 1's update before the checkpoint is lost (its sums are not in the file), and no update counts twice.
"""

import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch.distributed as dist

from tests.ddp_resume_fit import CHECKPOINT_STEP, PHASES, TRAIN_BATCHES, WINDOW, checkpoint_path
from tests.lightning_support import Record, metrics_csv, read_csv, read_records, subprocess_environment
from tests.logged_reference import close, window_epoch_series, window_series, window_step_columns
from tests.versions import OLD_LIGHTNING_RESUMES

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is unavailable"
)

REPOSITORY = Path(__file__).resolve().parent.parent
SERIES = window_series(WINDOW)
COLUMN = window_step_columns("train")


def run_phase(phase: str, out_dir: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.ddp_resume_fit", phase, str(out_dir)],
        cwd=REPOSITORY,
        env=subprocess_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def train_records(records: list[Record]) -> list[Record]:
    return [record for record in records if record["stage"] == "train"]


@pytest.mark.timeout(240)
@OLD_LIGHTNING_RESUMES
def test_a_ddp_run_resumed_mid_window_logs_the_windows_it_must_see(tmp_path: Path) -> None:
    for phase in PHASES:
        run_phase(phase, tmp_path)
    assert checkpoint_path(tmp_path).is_file()
    saved = [train_records(records) for records in read_records(tmp_path / "save")]
    resumed = [train_records(records) for records in read_records(tmp_path / "resume")]
    assert len(saved) == len(resumed) == 2
    for rank in range(2):
        assert [record["batch_idx"] for record in saved[rank]] == list(range(TRAIN_BATCHES))
        assert [record["batch_idx"] for record in resumed[rank]] == list(range(CHECKPOINT_STEP, TRAIN_BATCHES))
        for before, after in zip(saved[rank][CHECKPOINT_STEP:], resumed[rank], strict=True):  # the data resumed
            assert close(after["loss"], before["loss"]), (rank, before, after)

    first_window = [record for own in saved for record in own[:WINDOW]]
    pending_rank0 = saved[0][WINDOW:CHECKPOINT_STEP]  # restored from the file
    lost = saved[1][WINDOW:CHECKPOINT_STEP]  # rank 1's sums are not in the file
    second_window = pending_rank0 + [record for own in resumed for record in own[: 2 * WINDOW - CHECKPOINT_STEP]]
    assert len(second_window) == 2 * WINDOW - len(lost)

    rows = read_csv(metrics_csv(tmp_path / "resume"))
    step_rows = {int(row["step"]): row for row in rows if "train/raw" in row}
    assert sorted(step_rows) == list(range(CHECKPOINT_STEP, TRAIN_BATCHES))
    (epoch_row,) = [row for row in rows if "train/loss_epoch" in row]
    for name, series in SERIES.items():
        windows = [[series.call(record) for record in window] for window in (first_window, second_window)]
        for position, batch in enumerate(range(CHECKPOINT_STEP, TRAIN_BATCHES)):
            completed = (batch + 1) // WINDOW
            latest = series.value_of(windows[:completed])
            for rank in range(2):  # what each process's metric reported after the update
                reported = resumed[rank][position]["reported"][name]
                assert close(reported, latest), (name, batch, rank, reported, latest)
            logged: Optional[float] = step_rows[batch].get(COLUMN(name))
            # the `at_boundary` idiom logs nothing until the first boundary after the resume
            expected = None if name == "boundary_loss" and batch + 1 < 2 * WINDOW else latest
            assert close(logged, expected), (name, batch, logged, expected)
        if name in window_epoch_series(WINDOW):
            # the aggregate since the epoch began: rank 0's restored updates and both ranks' resumed ones
            since_start = saved[0][:CHECKPOINT_STEP] + resumed[0] + resumed[1]
            epoch_value = (
                series.value_of(windows)
                if series.aggregate_of is None
                else series.aggregate_of([series.call(record) for record in since_start])
            )
            assert close(epoch_row[f"train/{name}_epoch"], epoch_value), name

    # What the uninterrupted run logged at the second boundary counts rank 1's lost update
    uninterrupted = {int(row["step"]): row for row in read_csv(metrics_csv(tmp_path / "save")) if "train/raw" in row}
    last = 2 * WINDOW - 1
    lost_samples = sum(record["size"] for record in lost)
    assert uninterrupted[last]["train/samples_step"] == step_rows[last]["train/samples_step"] + lost_samples
