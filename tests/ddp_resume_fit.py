"""A two-process ``ddp`` fit on the CPU that saves a checkpoint mid-window, and its resumption from that file.

``python -m tests.ddp_resume_fit save DIR`` fits one epoch of :data:`TRAIN_BATCHES` batches, logging persistent
windowmetrics of window :data:`WINDOW`, and saves a checkpoint (Lightning's: rank 0 writes the file) after
training step :data:`CHECKPOINT_STEP`, in the middle of a window; ``python -m tests.ddp_resume_fit resume DIR``
resumes a fresh run from that file with ``Trainer.fit(ckpt_path=...)``. Each run writes the records of every
process's losses to ``DIR/<phase>`` and rank 0's CSV log under it. As in ``tests/ddp_fit.py``, ``ddp`` starts the
second process by running the command again, so the tests run this script in a subprocess.
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tests.lightning_support import WindowLoggingModule, quiet_trainer

WINDOW = 3
TRAIN_BATCHES = 6
CHECKPOINT_STEP = 4
"""The checkpoint is saved after 4 updates: the second window holds one update of each process."""
PHASES = ("save", "resume")


def checkpoint_path(out_dir: Path) -> Path:
    return out_dir / "checkpoints" / f"step-step={CHECKPOINT_STEP}.ckpt"


def fit(phase: str, out_dir: Path) -> None:
    """Fit one epoch on two CPU processes (gloo), each with its own data and batch size, validation off."""
    run_dir = out_dir / phase
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    module = WindowLoggingModule(
        window=WINDOW, persistent=True, train_batches=TRAIN_BATCHES, resumable_data=True, record_dir=str(run_dir)
    )
    callbacks: list[Callback] = []
    if phase == "save":
        every = ModelCheckpoint(out_dir / "checkpoints", "step-{step}", every_n_train_steps=CHECKPOINT_STEP)
        callbacks.append(every)
    trainer = quiet_trainer(
        run_dir,
        1,
        devices=2,
        strategy="ddp",
        use_distributed_sampler=False,  # each process keeps the loader that the module made for its rank
        limit_val_batches=0,
        callbacks=callbacks,
        enable_checkpointing=bool(callbacks),
        default_root_dir=run_dir,
    )
    trainer.fit(module, ckpt_path=checkpoint_path(out_dir) if phase == "resume" else None)


if __name__ == "__main__":
    fit(sys.argv[1], Path(sys.argv[2]))
