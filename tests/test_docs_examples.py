"""Every ``python`` block of the README and the docs runs as it is written; the smoothed-monitor recipe on a Trainer.

tests/docs_blocks.py says how blocks are found and marked. Each block runs in a fresh namespace, in a temporary
folder (a ``Trainer`` there writes its logs there); a block marked ``<!-- skip: REASON -->`` is skipped with that
reason, and a block followed by a ``text`` block marked ``<!-- output -->`` must print exactly that.
"""

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import LightningModule
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import Tensor

from tests.docs_blocks import ROOT, Block, documents, example, python_blocks
from tests.lightning_support import LIGHTNING_NOISE, metrics_csv, quiet_trainer, read_csv, synthetic_loader
from tests.reference import Call, ema_of, mean_of

pytestmark = pytest.mark.filterwarnings(*LIGHTNING_NOISE)

BLOCKS = python_blocks()
# The examples that a test of their own drives: tests/test_readme_examples.py, and this file's smoothed-monitor.
DRIVEN = {"lightning", "windowed", "fabric", "pytorch", "smoothed-monitor"}


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_every_python_block_runs_as_written(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if block.skip_reason is not None:
        pytest.skip(f"{block.where}: {block.skip_reason}")
    monkeypatch.chdir(tmp_path)
    default_dtype = torch.get_default_dtype()
    module = types.ModuleType("docs_block")  # a real module: torch.compile (dynamo of torch 2.1) imports it by name
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block.code, block.where, "exec"), module.__dict__)
    assert torch.get_default_dtype() == default_dtype, "a block must leave torch's default dtype as it found it"
    if block.output is not None:
        assert capsys.readouterr().out == block.output


def test_every_example_marker_names_a_driven_example_once() -> None:
    names = [block.example_name for block in BLOCKS if block.example_name is not None]
    assert sorted(names) == sorted(DRIVEN)


def test_the_docs_pages_have_python_blocks() -> None:
    """A page that moved or a fence that stopped matching must not leave the docs untested."""
    pages = {block.path.name for block in BLOCKS}
    assert {"README.md", "window.md", "lightning.md", "getting-started.md", "fabric.md", "checkpoints.md"} <= pages


VAL_BATCHES = 13  # per validation run: longer than the window of 10; the last a sample short, so weights count
DECAY = 0.5


def test_the_smoothed_monitor_recipe_logs_an_ema_of_the_exact_validation_means(tmp_path: Path) -> None:
    """``val/loss`` is each validation run's exact per-sample mean; ``val/loss_smoothed`` their EMA, run after run,
    from the first real run on (the sanity check's batches reach nothing); the callbacks monitor the latter."""
    namespace = example("smoothed-monitor")
    model: LightningModule = namespace["Model"](decay=DECAY)
    torch.manual_seed(0)
    net = model.net = torch.nn.Linear(3, 1)  # the synthetic data have 3 features
    runs: list[list[Call]] = []
    validation_step: Any = model.validation_step

    def recording_step(batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        if not model.trainer.sanity_checking:
            if batch_idx == 0:
                runs.append([])
            with torch.no_grad():
                runs[-1].append((torch.nn.functional.mse_loss(net(x), y).item(), len(x)))
        validation_step(batch, batch_idx)

    model.validation_step = recording_step  # type: ignore[method-assign]
    early_stopping, checkpoint = namespace["callbacks"]
    assert isinstance(early_stopping, EarlyStopping)
    assert isinstance(checkpoint, ModelCheckpoint)
    checkpoint.dirpath = str(tmp_path / "checkpoints")
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=4,
        callbacks=[early_stopping, checkpoint],
        enable_checkpointing=True,
        num_sanity_val_steps=2,  # Lightning's default: the sanity check must leave the metrics as they were
    )
    trainer.fit(model, synthetic_loader(1, 5, 4), synthetic_loader(2, VAL_BATCHES, 4))

    assert len(runs) == 4
    assert all(len(run) == VAL_BATCHES for run in runs)
    means = [mean_of(run) for run in runs]
    smoothed = [ema_of([[(mean, 1.0)] for mean in means[: count + 1]], DECAY) for count in range(len(means))]
    rows = [row for row in read_csv(metrics_csv(tmp_path)) if "val/loss" in row]
    assert [row["val/loss"] for row in rows] == pytest.approx(means, rel=1e-6)
    assert [row["val/loss_smoothed"] for row in rows] == pytest.approx(smoothed, rel=1e-6)
    assert float(early_stopping.best_score) == pytest.approx(min(smoothed), rel=1e-6)
    assert checkpoint.best_model_score is not None
    assert float(checkpoint.best_model_score) == pytest.approx(min(smoothed), rel=1e-6)


FILE_NAMED = re.compile(r"`((?:tests|bench|docs|windowmetrics|\.ci)/[\w/.-]+)`")


def test_every_file_of_the_repository_that_the_docs_name_exists() -> None:
    """``tests/test_x.py`` in the text of the README, CONTRIBUTING.md or a page names a file that is there."""
    named = {
        (path.name, name)
        for path in [*documents(), ROOT / "CONTRIBUTING.md"]
        for name in FILE_NAMED.findall(path.read_text())
        if not name.startswith("docs/_build")
    }
    assert len(named) > 20
    assert [(page, name) for page, name in sorted(named) if not (ROOT / name).exists()] == []
