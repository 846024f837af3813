"""Summing a window's statistics over processes with one collective, and the process's rank."""

from collections.abc import Callable
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from windowmetrics.scalars import Scalar, as_tensor, host_path

GatherFn = Callable[..., list[Tensor]]
"""A torchmetrics ``dist_sync_fn``: ``fn(tensor, group=group)`` returns every process's ``tensor``."""


def current_rank() -> int:
    """Return this process's rank in the default ``torch.distributed`` group, or 0 if there is none."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_gather(tensor: Tensor, group: Optional[Any] = None) -> list[Tensor]:
    """Return ``tensor`` from every process of ``group``, in rank order, with one ``all_gather``.

    Unlike torchmetrics' default ``gather_all_tensors`` it does not first gather the shapes: every process
    packs the same statistics, so the shapes agree.
    """
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, tensor, group=group)
    return gathered


def sum_over_processes(
    value_sum: Scalar,
    weight_sum: Scalar,
    nan_count: Scalar,
    updates: int,
    device: torch.device,
    group: Optional[Any] = None,
    gather: Optional[GatherFn] = None,
) -> tuple[Scalar, Scalar, float]:
    """Return a window's sums over all processes of ``group``, packed into one collective.

    ``updates`` (each process's number of updates since its last reset) travels with the sums: every process
    must be at the same update, or their windows do not line up. The sums are added in rank order on every
    process, so that every process gets the same result to the last bit. The update counts and the NaN counts
    are read on the host in one read; the value and weight sums come back as Python floats on the host path,
    and as tensors on ``device`` on the accelerator path.

    Raises:
        RuntimeError: If the processes are at different updates.
    """
    statistics = (value_sum, weight_sum, nan_count, float(updates))
    packed = torch.stack([as_tensor(statistic, device) for statistic in statistics])  # fills, no host-device copy
    rows = torch.stack((gather or all_gather)(packed, group=group))
    counted = rows[:, 2:].tolist()  # [[NaN elements, updates], ...]: the one read of the device per window
    counts = [int(updates) for _, updates in counted]
    if len(set(counts)) > 1:
        raise RuntimeError(
            "windowmetrics: the processes reached this window's synchronisation after different numbers of"
            f" updates since their last reset ({counts}, in rank order); every process must call"
            " `update`/`forward` the same number of times, or the windows do not line up."
        )
    nan_total = sum(nans for nans, _ in counted)
    totals = rows[:, :2].sum(dim=0)
    if host_path(totals.device):
        value_total, weight_total = totals.tolist()
        return value_total, weight_total, nan_total
    return totals[0], totals[1], nan_total
