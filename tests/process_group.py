"""Run a function in each process of a real two-process gloo group on this machine's loopback interface."""

import os
import pickle
import socket
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import pytest
import torch.distributed as dist
from torch.multiprocessing.spawn import spawn

WORLD_SIZE = 2
TIMEOUT = timedelta(seconds=60)
"""How long a collective waits for a missing peer before it fails (gloo's default is 30 minutes)."""

Worker = Callable[..., Any]
"""``worker(rank, *args)``: runs in each process once the group is up; what it returns goes to the parent."""


def skip_without_gloo() -> None:
    """Skip the calling test, saying why, if this torch build cannot make a gloo process group."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    if not dist.is_gloo_available():
        pytest.skip("the gloo backend of torch.distributed is not available in this torch build")


def free_port() -> int:
    """Return a TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_in_process_group(worker: Worker, directory: Path, *args: Any) -> list[Any]:
    """Spawn :data:`WORLD_SIZE` processes in one gloo group, run ``worker(rank, *args)`` in each, return the results.

    ``worker`` must be importable by name (a module-level function), and ``args`` are pickled into each process
    by ``torch.multiprocessing`` (CPU tensors travel through shared memory). A worker's exception is re-raised
    here, and the other process is stopped; a process that returns no result fails the caller.
    """
    skip_without_gloo()
    spawn(_process, args=(free_port(), directory, worker, args), nprocs=WORLD_SIZE)  # type: ignore[no-untyped-call]
    results = [pickle.loads(_result_file(directory, rank).read_bytes()) for rank in range(WORLD_SIZE)]
    assert len(results) == WORLD_SIZE
    return results


def destroy_process_group() -> None:
    """``dist.destroy_process_group()`` once every process of the group has called it: a barrier, then the destroy.

    The barrier is for PyTorch before 2.8, whose gloo process group keeps the GIL while its destructor joins its
    worker threads (fixed by pytorch/pytorch#154976). A thread that is still freeing the last collective (the
    tensors of an ``all_gather``, whose Python objects it must drop) needs the GIL, so the destructor and the
    thread wait for each other for ever: the suite hung so, in ``dist.destroy_process_group()``, on torch 2.1 and
    2.7. A barrier waits for every collective before it with the GIL released, which lets those threads finish
    first. Gloo runs two worker threads per group, so the barrier may complete on one while the other still frees
    the collective before it: a short sleep, with the GIL released, lets it. Call it where every process reaches it:
    a process whose worker failed destroys its group without it.
    """
    dist.barrier()
    time.sleep(0.2)
    dist.destroy_process_group()


def exit_spawned_process() -> NoReturn:
    """End a spawned process whose work is done and saved, once every process of its group is done too.

    A barrier, then ``os._exit(0)``: no process group is destroyed. A gloo group that ``dist.new_group`` made, with
    two worker threads, can still be freeing an ``all_gather``'s tensors on one thread while a barrier completes on
    the other, and the destructor of PyTorch before 2.8 then deadlocks as :func:`destroy_process_group` says (seen
    on torch 2.1 in CI). The process's results are on disk already; its exit code 0 tells the parent it succeeded.
    """
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _process(rank: int, port: int, directory: Path, worker: Worker, args: tuple[Any, ...]) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE, timeout=TIMEOUT
    )
    try:
        # the scenarios are about several processes: never let them run in a world of one
        if (dist.get_rank(), dist.get_world_size(), dist.get_backend()) != (rank, WORLD_SIZE, "gloo"):
            raise RuntimeError(f"process {rank} is not in a gloo group of {WORLD_SIZE} processes")
        result = worker(rank, *args)
        _result_file(directory, rank).write_bytes(pickle.dumps(result))
    except BaseException:
        dist.destroy_process_group()  # without the barrier, which the other process may never reach
        raise
    exit_spawned_process()


def _result_file(directory: Path, rank: int) -> Path:
    return directory / f"rank{rank}.pickle"
