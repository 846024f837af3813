"""The demo, run as its users run it: ``python -m windowmetrics.demo`` in a subprocess, and through ``main``.

Its CSV log is read back and checked against the windows of the raw losses it logged: the demo's batches all
have the same size, so a window's per-sample mean is the mean of its batch losses. The demo's metrics span epoch
ends (``span_epochs=True``): its windows and its EMA follow each other over the whole run.
"""

import csv
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch.distributed as dist

from tests.lightning_support import LIGHTNING_NOISE, subprocess_environment
from tests.reference import ema_of, mean_of
from windowmetrics import demo

pytestmark = pytest.mark.filterwarnings(*LIGHTNING_NOISE)

REPOSITORY = Path(__file__).resolve().parent.parent
SMALL = ["--epochs", "2", "--samples", "320", "--batch-size", "16", "--window", "6"]  # 20 batches: 3 windows + 2


DEMO_LIGHTNING = tuple(int(part) for part in lightning.__version__.split(".")[:2]) >= (2, 4)
needs_demo_lightning = pytest.mark.skipif(
    not DEMO_LIGHTNING, reason=f"the demo needs Lightning >= 2.4 (its extra's), not {lightning.__version__}"
)
INSTALL_THE_EXTRA = "pip install 'windowmetrics[demo]'"


def run_demo(*args: str, bootstrap: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``python -m windowmetrics.demo *args``, after the Python statements ``bootstrap`` if any."""
    if bootstrap:
        run_as_main = "import runpy; runpy.run_module('windowmetrics.demo', run_name='__main__', alter_sys=True)"
        command = [sys.executable, "-c", f"{bootstrap}; {run_as_main}", *args]
    else:
        command = [sys.executable, "-m", "windowmetrics.demo", *args]
    environment = subprocess_environment()
    return subprocess.run(
        command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=240, check=False
    )


def logged_epochs(output: Path) -> list[list[dict[str, str]]]:
    """The training steps of the demo's CSV log, by epoch."""
    (path,) = output.glob("csv/version_*/metrics.csv")
    with path.open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["train/loss"]]
    return [
        [row for row in rows if int(row["epoch"]) == epoch] for epoch in sorted({int(row["epoch"]) for row in rows})
    ]


@needs_demo_lightning
def test_the_demo_logs_the_windows_of_its_losses_and_prints_and_plots_them(tmp_path: Path) -> None:
    completed = run_demo(*SMALL, "--decay", "0.5", "--output", str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    epochs = logged_epochs(tmp_path)
    assert [len(epoch) for epoch in epochs] == [20, 20]
    rows = [row for epoch in epochs for row in epoch]
    losses = [(float(row["train/loss"]), 1.0) for row in rows]
    for index, row in enumerate(rows):  # windows of 6 batches over the run: the 4th spans the epoch end
        # logged at boundaries only, a value stays on show until the epoch ends (Lightning's reset of the epoch)
        shown = [end for end in range(index - index % 20, index + 1) if (end + 1) % 6 == 0]
        if shown:
            latest = losses[shown[-1] - 5 : shown[-1] + 1]
            assert float(row["train/loss_windowed"]) == pytest.approx(mean_of(latest), rel=1e-6)
            assert float(row["train/samples_per_window"]) == 6 * 16
        else:
            assert row["train/loss_windowed"] == row["train/samples_per_window"] == ""
        per_batch = [[call] for call in losses[: index + 1]]  # one EMA over the run, on over the epoch end
        assert float(row["train/loss_ema"]) == pytest.approx(ema_of(per_batch, 0.5), rel=1e-6)
    table = completed.stdout[completed.stdout.index("epoch  steps  windows") :].splitlines()
    for epoch, line in zip(epochs, table[1:3], strict=True):
        cells = line.split()
        assert cells[:3] == [epoch[0]["epoch"], "20", "3"]
        assert cells[-2:] == [f"{float(epoch[-1]['train/loss_ema']):.4f}", "96"]
    first_of_epoch_1 = table[2].split()[6]  # the window of batches 19 to 24 of the run, across the epoch end
    assert first_of_epoch_1 == f"{float(rows[23]['train/loss_windowed']):.4f}"
    plot = tmp_path / demo.PLOT_NAME
    assert f"plot: {plot}" in completed.stdout
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@needs_demo_lightning
@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is unavailable"
)
def test_the_demo_runs_on_two_processes_with_ddp(tmp_path: Path) -> None:
    completed = run_demo(*SMALL, "--devices", "2", "--window", "5", "--output", str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    epochs = logged_epochs(tmp_path)
    assert [len(epoch) for epoch in epochs] == [10, 10]  # each process gets half of the 320 samples
    samples = {row["train/samples_per_window"] for epoch in epochs for row in epoch[4:]}
    assert samples == {str(5.0 * 16 * 2)}  # a window holds both processes' samples
    assert "2 CPU processes (DDP)" in completed.stdout


@needs_demo_lightning
def test_the_demo_without_matplotlib_says_so_and_writes_no_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` finds: it then raises
    assert demo.main([*SMALL, "--epochs", "1", "--output", str(tmp_path)]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / demo.PLOT_NAME).exists()
    assert len(logged_epochs(tmp_path)) == 1


@needs_demo_lightning
def test_the_demo_exits_with_status_2_and_a_message_on_a_bad_flag() -> None:
    completed = run_demo("--window", "0")
    assert completed.returncode == 2
    assert "error: argument --window: must be an integer >= 1, got '0'" in completed.stderr


def test_the_demo_without_lightning_says_which_extra_to_install_and_exits_with_status_2() -> None:
    completed = run_demo("--epochs", "1", bootstrap="import sys; sys.modules['lightning'] = None")  # no lightning
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.splitlines()[-1] == (
        "windowmetrics.demo: no module named 'lightning': the demo needs the `demo` extra (Lightning >= 2.4,"
        f" matplotlib): {INSTALL_THE_EXTRA}"
    )
    assert "Traceback" not in completed.stderr
    assert completed.stdout == ""


@pytest.mark.skipif(DEMO_LIGHTNING, reason=f"Lightning {lightning.__version__} is new enough for the demo")
def test_the_demo_with_a_lightning_older_than_2_4_says_which_extra_to_install_and_exits_with_status_2() -> None:
    completed = run_demo("--epochs", "1")
    assert completed.returncode == 2, completed.stderr
    assert f"Lightning {lightning.__version__} is too old" in completed.stderr
    assert INSTALL_THE_EXTRA in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "two"], "argument --epochs: must be an integer >= 1, got 'two'"),
        (["--decay", "1"], "argument --decay: must be a number with 0 <= decay < 1, got '1'"),
        (["--window", "41", *SMALL[:6]], "--window 41 is longer than the whole run (2 epochs of 20 batches per"),
        (["--colour", "red"], "unrecognized arguments: --colour red"),
    ],
)
def test_bad_flags_are_refused_before_training(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        demo.parse_args(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
