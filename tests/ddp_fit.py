"""Fit a WindowLoggingModule on two CPU processes: ``python -m tests.ddp_fit STRATEGY DIR [--span-epochs]``.

With ``strategy="ddp"`` Lightning starts the second process by running this command again (with
``LOCAL_RANK=1``), so that strategy cannot run inside pytest, which would run the test session again: the
tests run this script in a subprocess. ``ddp_spawn`` pickles the module to the processes it spawns, and runs
inside pytest as well as here. Each process writes the records of its losses to DIR, rank 0 the CSV log.
"""

import sys
from pathlib import Path

import torch

from tests.lightning_support import WindowLoggingModule, quiet_trainer

EPOCHS = 2
WINDOW = 3


def fit_on_two_processes(strategy: str, out_dir: Path, span_epochs: bool = False) -> None:
    """Fit with window 3 for two epochs on two CPU processes (gloo), each with its own data and batch size.

    With ``span_epochs`` the metrics are created with ``span_epochs=True`` and Lightning's two-batch sanity
    check runs first.
    """
    torch.manual_seed(0)
    module = WindowLoggingModule(window=WINDOW, record_dir=str(out_dir), span_epochs=span_epochs)
    trainer = quiet_trainer(
        out_dir,
        EPOCHS,
        devices=2,
        strategy=strategy,
        use_distributed_sampler=False,  # each process keeps the loader that the module made for its rank
        num_sanity_val_steps=2 if span_epochs else 0,
    )
    trainer.fit(module)


if __name__ == "__main__":
    fit_on_two_processes(sys.argv[1], Path(sys.argv[2]), span_epochs="--span-epochs" in sys.argv[3:])
