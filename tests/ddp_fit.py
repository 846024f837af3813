"""Fit a WindowLoggingModule on two CPU processes: ``python -m tests.ddp_fit STRATEGY DIR``.

With ``strategy="ddp"`` Lightning starts the second process by running this command again (with
``LOCAL_RANK=1``), so that strategy cannot run inside pytest, which would run the test session again: the
tests run this script in a subprocess. ``ddp_spawn`` pickles the module to the processes it spawns, and runs
inside pytest as well as here. Each process writes the records of its losses to DIR, rank 0 the CSV log.
"""

import sys
from pathlib import Path

import torch
from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger

from tests.lightning_support import WindowLoggingModule

EPOCHS = 2
WINDOW = 3


def fit_on_two_processes(strategy: str, out_dir: Path) -> None:
    """Fit with window 3 for two epochs on two CPU processes (gloo), each with its own data and batch size."""
    torch.manual_seed(0)
    module = WindowLoggingModule(window=WINDOW, record_dir=str(out_dir))
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        use_distributed_sampler=False,  # each process keeps the loader that the module made for its rank
        max_epochs=EPOCHS,
        log_every_n_steps=1,
        logger=CSVLogger(out_dir, name="logs", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module)


if __name__ == "__main__":
    fit_on_two_processes(sys.argv[1], Path(sys.argv[2]))
