"""Summing a window's statistics over processes with one collective."""

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from windowmetrics.scalars import Scalar, as_tensor, on_host

GatherFn = Callable[..., list[Tensor]]
"""A torchmetrics ``dist_sync_fn``: ``fn(tensor, group=group)`` returns every process's ``tensor``."""


def all_gather(tensor: Tensor, group: Optional[Any] = None) -> list[Tensor]:
    """Return ``tensor`` from every process of ``group``, in rank order, with one ``all_gather``.

    Unlike torchmetrics' default ``gather_all_tensors`` it does not first gather the shapes: every process
    packs the same statistics, so the shapes agree.
    """
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, tensor, group=group)
    return gathered


def sum_over_processes(
    statistics: Sequence[Scalar],
    updates: int,
    device: torch.device,
    group: Optional[Any] = None,
    gather: Optional[GatherFn] = None,
) -> tuple[Scalar, ...]:
    """Return the sums over all processes of a window's ``statistics``, packed into one collective.

    ``updates`` (each process's number of updates since its last reset) travels with the statistics: every
    process must be at the same update, or their windows do not line up. The sums are added in rank order on
    every process, so that every process gets the same result to the last bit. On the CPU they come back as
    Python floats, elsewhere as tensors on ``device``.

    Raises:
        RuntimeError: If the processes are at different updates.
    """
    packed = torch.stack([as_tensor(statistic, device) for statistic in (*statistics, float(updates))])
    rows = torch.stack((gather or all_gather)(packed, group=group))
    counts = [int(count) for count in rows[:, -1].tolist()]  # read on the host: once per synchronised window
    if len(set(counts)) > 1:
        raise RuntimeError(
            "windowmetrics: the processes reached this window's synchronisation after different numbers of"
            f" updates since their last reset ({counts}, in rank order); every process must call"
            " `update`/`forward` the same number of times, or the windows do not line up."
        )
    totals = rows[:, :-1].sum(dim=0)
    return tuple(totals.tolist()) if on_host(totals) else tuple(totals.unbind())
