"""Manual ``sync()`` and window boundaries on process groups other than the default one (issue 9, item 5).

Run in each process of a two-process gloo group; ``tests/test_distributed_process_group.py`` checks what they
record. Each process makes one group of itself alone (``new_group([0])`` and ``new_group([1])``, both called by
every process, as ``new_group`` requires) and one group of both. A metric fills all but the last update of a
window with this rank's inputs, is synchronised by hand and restored, computes its aggregate (every update so
far), then closes the window.
"""

from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import torch.distributed as dist

from tests.collectives import Collective, CollectiveLog
from tests.distributed_scenarios import VALUE_KINDS, Inputs, States, make_inputs, make_metric, registered_states

WINDOW = 4

SYNCS = {
    "metric group": ("own", None),
    "explicit group": (None, "own"),
    "explicit group over the metric's": ("own", "pair"),
}
"""How a case synchronises: the group the metric is created with, and the group given to ``sync()``
(``None``: the default, the whole world for the metric; the metric's own group for ``sync()``)."""


def group_sync_inputs(kind: str) -> Inputs:
    return make_inputs(f"group-sync-{kind}-2", kind, count=WINDOW, window=WINDOW)


@dataclass
class GroupSync:
    local: States
    synced: States
    restored: States
    sync_collectives: list[Collective]
    partial: float  # compute() before the window closes: the updates so far
    partial_collectives: list[Collective]
    boundary: Optional[float]  # the value of the window, after the update that closes it
    boundary_collectives: list[Collective]


def worker(rank: int) -> dict[tuple[str, str], GroupSync]:
    """Run every case of :data:`SYNCS` for every value kind."""
    log = CollectiveLog()
    log.install()
    alone = [dist.new_group([0]), dist.new_group([1])]  # every process creates every group
    groups = {"own": alone[rank], "pair": dist.new_group([0, 1]), None: None}
    log.name_group(groups["own"], "own")
    log.name_group(groups["pair"], "pair")
    log.name_group(alone[1 - rank], "the other process's")  # this process is not in it: it must never show
    results = {}
    for kind in VALUE_KINDS:
        for case, (metric_group, sync_group) in SYNCS.items():
            kwargs: dict[str, Any] = {} if metric_group is None else {"process_group": groups[metric_group]}
            results[kind, case] = run_case(kind, rank, kwargs, groups[sync_group], log)
    return results


def run_case(kind: str, rank: int, kwargs: dict[str, Any], sync_group: Any, log: CollectiveLog) -> GroupSync:
    inputs = group_sync_inputs(kind)
    metric = make_metric(kind, inputs, **kwargs)
    *first, last = inputs.calls[rank]
    for args in first:
        metric.update(*args)
    local = registered_states(metric)
    _, sync_collectives = log.during(partial(metric.sync, process_group=sync_group))
    synced = registered_states(metric)
    metric.unsync()
    restored = registered_states(metric)
    partial_value, partial_collectives = log.during(metric.compute)
    _, boundary_collectives = log.during(partial(metric.update, *last))
    boundary = metric.window_value
    return GroupSync(
        local,
        synced,
        restored,
        sync_collectives,
        float(partial_value),
        partial_collectives,
        None if boundary is None else float(boundary),
        boundary_collectives,
    )
