"""One collective per synchronisation: a window's statistics packed into one tensor, with a lockstep check.

Every process must call ``update``/``forward`` the same number of times, so that windows close together. Each
synchronisation carries, beside the statistics, each process's number of updates since its last reset, and
raises if they differ (a process that got out of step would otherwise wait in a collective of another window,
or mix two windows).
"""

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor

GatherFn = Callable[..., list[Tensor]]
"""A torchmetrics ``dist_sync_fn``: ``fn(tensor, group=group)`` returns every process's ``tensor``."""

_COUNT_MODULUS = 2**20
"""Update counts travel modulo this, so that their squares summed over up to 4096 processes stay exact in float64."""


def current_rank() -> int:
    """Return this process's rank in the default ``torch.distributed`` group, or 0 if there is none."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def out_of_step(counts: list[int]) -> RuntimeError:
    """Return the error for processes that reached a synchronisation after different numbers of updates."""
    return RuntimeError(
        "windowmetrics: the processes reached this synchronisation after different numbers of updates since their"
        f" last reset ({counts}); every process must call `update`/`forward` the same number of times, or the"
        " windows do not line up."
    )


def sum_over_processes(
    statistics: Sequence[Tensor], updates: int, group: Optional[Any] = None, gather: Optional[GatherFn] = None
) -> list[list[float]]:
    """Return the float64 tensors ``statistics`` summed over every process of ``group``, with one collective.

    The tensors travel packed into one, with ``updates`` as its value and its square: ``n * sum(c**2) == sum(c)**2``
    holds exactly when all ``n`` counts are equal. The collective is an ``all_reduce`` (its cost grows with the
    logarithm of the number of processes, and every process gets the same bits), unless the metric was given a
    torchmetrics ``dist_sync_fn``: that gather is used instead, and the rows are added in rank order. The sums and
    the counts come back to the host together: the one read of the device that a synchronisation makes.

    Args:
        statistics: 1-D float64 tensors on one device, the same shapes on every process.
        updates: this process's number of updates since its last reset.
        group: the process group (``None``: the default group).
        gather: a torchmetrics ``dist_sync_fn`` to use instead of ``all_reduce``.

    Returns:
        Each tensor's sums over all processes, as a list of Python floats.

    Raises:
        RuntimeError: If the processes are at different updates.
    """
    count = updates % _COUNT_MODULUS
    device = statistics[0].device
    checked = torch.tensor([count, count * count], dtype=torch.float64)
    packed = torch.cat((*statistics, checked if device.type == "cpu" else checked.to(device)))
    if gather is None:
        dist.all_reduce(packed, group=group)
        world, totals = dist.get_world_size(group), packed
    else:
        rows = gather(packed, group=group)
        world, totals = len(rows), torch.stack(rows).sum(dim=0)
    *numbers, count_sum, square_sum = totals.tolist()
    if world * square_sum != count_sum * count_sum:
        raise out_of_step(_gathered_counts(updates, device, group))
    sums, start = [], 0
    for statistic in statistics:
        sums.append(numbers[start : start + statistic.numel()])
        start += statistic.numel()
    return sums


def gather_from_processes(
    statistics: Tensor,
    updates: int,
    group: Optional[Any] = None,
    gather: Optional[GatherFn] = None,
    read: Optional[int] = None,
) -> tuple[Tensor, Optional[float]]:
    """Return every process's float64 vector ``statistics`` as the rows of one tensor, with one collective.

    For statistics that a sum cannot combine (a maximum beside a sum of NaN counts): an ``all_gather``, or the
    torchmetrics ``dist_sync_fn`` the metric was given. ``updates`` is checked as in :func:`sum_over_processes`,
    and the rows come back without it.

    Returns:
        The rows, in rank order, and the sum over the rows of the statistic ``read`` (``None`` without ``read``),
        read in the same read of the device as the update counts.

    Raises:
        RuntimeError: If the processes are at different updates.
    """
    packed = torch.cat((statistics, torch.tensor([float(updates)], dtype=torch.float64).to(statistics.device)))
    if gather is None:
        rows = [torch.empty_like(packed) for _ in range(dist.get_world_size(group))]
        dist.all_gather(rows, packed, group=group)
    else:
        rows = gather(packed, group=group)
    table = torch.stack(rows)
    columns = [read, -1] if read is not None else [-1]
    read_back = table[:, columns].tolist()
    counts = [int(row[-1]) for row in read_back]
    if len(set(counts)) > 1:
        raise out_of_step(counts)
    value = sum(row[0] for row in read_back) if read is not None else None
    return table[:, :-1], value


def _gathered_counts(updates: int, device: torch.device, group: Optional[Any]) -> list[int]:
    """Gather every process's update count for the message of an out-of-step error.

    A second collective, on the error path only: every process sees the same sums and raises together.
    """
    count = torch.tensor([updates], dtype=torch.int64, device=device)
    rows = [torch.empty_like(count) for _ in range(dist.get_world_size(group))]
    dist.all_gather(rows, count, group=group)
    return [int(row.item()) for row in rows]
