"""Real two-process Lightning runs on the CPU (gloo): what rank 0 logs is the value over both processes.

The two processes see different data with different batch sizes (4 and 5 samples), so that a per-process
value, a mean of per-process means, or states that the processes share all show in the logged values.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.ddp_fit import EPOCHS, WINDOW, fit_on_two_processes
from tests.lightning_support import LIGHTNING_NOISE, metrics_csv, read_csv, read_records, subprocess_environment
from tests.logged_reference import Resets, check_window_module_rows

pytestmark = [
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is unavailable"
    ),
    pytest.mark.filterwarnings(*LIGHTNING_NOISE),
]

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture
def restore_environ() -> Iterator[None]:
    """Undo what Lightning's launchers write to ``os.environ`` (MASTER_PORT, ...), for the tests that follow."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def fit_with_ddp_in_a_subprocess(out_dir: Path, *options: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.ddp_fit", "ddp", str(out_dir), *options],
        cwd=REPOSITORY,
        env=subprocess_environment(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_two_processes_log_the_windows_over_both_processes(tmp_path: Path, strategy: str, restore_environ) -> None:
    if strategy == "ddp":
        fit_with_ddp_in_a_subprocess(tmp_path)
    else:  # ddp_spawn pickles the module into shared memory, where in-place accumulation would mix the processes
        fit_on_two_processes(strategy, tmp_path)
    rows = read_csv(metrics_csv(tmp_path))
    records = read_records(tmp_path)
    assert [sorted({record["size"] for record in rank}) for rank in records] == [[3, 4], [4, 5]]
    assert check_window_module_rows(rows, records, WINDOW) == {"train": EPOCHS * 8, "val": EPOCHS * 7}


@pytest.mark.timeout(240)
def test_two_processes_keep_spanning_windows_in_step(tmp_path: Path, restore_environ) -> None:
    """With ``span_epochs=True`` both processes carry their windows over every epoch end and validation run, at
    the same position: each process's reported values, and rank 0's log, are the windows over both processes of
    the whole fit (the sanity check's batches left out)."""
    fit_with_ddp_in_a_subprocess(tmp_path, "--span-epochs")
    rows = read_csv(metrics_csv(tmp_path))
    records = read_records(tmp_path)
    assert [sorted({record["size"] for record in rank}) for rank in records] == [[3, 4], [4, 5]]
    assert [sum(record["sanity"] for record in rank) for rank in records] == [2, 2]
    counts = check_window_module_rows(rows, records, WINDOW, Resets(span_epochs=True))
    assert counts == {"train": EPOCHS * 8, "val": EPOCHS * 7}
