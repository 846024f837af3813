"""Scenarios that run in each process of a two-process gloo group; ``tests/test_distributed.py`` checks them.

Every scenario is deterministic: its inputs are generated from its name and seed, identically in the processes
(which each feed their own rank's inputs) and in the test process (which computes the reference values from
all ranks' inputs). The processes record what the metrics returned and which collectives they issued, as plain
Python values; they check nothing themselves.
"""

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import MeanSquaredError, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from tests.collectives import Collective, CollectiveLog
from tests.process_group import WORLD_SIZE
from tests.reference import random_calls
from windowmetrics import EMALoss, Windowed, WindowedMean, WindowedSum, scalars
from windowmetrics._weighted_sums import WeightedSums
from windowmetrics._window import WindowMetric

Args = tuple[Any, ...]
"""The arguments of one ``update``/``forward`` call."""

VALUE_KINDS = ("mean", "sum", "ema")
WRAPPED_KINDS = ("accuracy", "mse")
NUM_CLASSES = 4


# Inputs ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """A scenario's settings and, for each rank, the arguments of each of its updates (as many on every rank)."""

    window: int
    decay: float
    calls: tuple[list[Args], ...]


def make_inputs(name: str, kind: str, count: Optional[int] = None, window: Optional[int] = None) -> Inputs:
    """Return random inputs for metrics of ``kind``, the same for the same ``name`` in every process."""
    rng = random.Random(name)
    window = window or rng.randint(1, 6)
    count = count or rng.randint(1, 24)
    decay = rng.choice([0.0, 0.5, 0.9])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.randrange(2**32))
        calls = tuple(_random_args(kind, rng, count) for _ in range(WORLD_SIZE))
    return Inputs(window, decay, calls)


def _random_args(kind: str, rng: random.Random, count: int) -> list[Args]:
    if kind in ("mean", "ema"):
        return list(random_calls(rng, count))  # (value, weight)
    if kind == "sum":
        return [(value,) for value, _ in random_calls(rng, count, weighted=False)]
    calls: list[Args] = []
    for _ in range(count):
        size = rng.randint(1, 8)  # different batch sizes on each process
        if kind == "accuracy":
            calls.append((torch.randint(NUM_CLASSES, (size,)), torch.randint(NUM_CLASSES, (size,))))
        else:
            calls.append((torch.randn(size), torch.randn(size)))
    return calls


def make_metric(kind: str, inputs: Inputs, **kwargs: Any) -> WindowMetric:
    """Return a fresh metric of ``kind``; ``kwargs`` are torchmetrics' (of the wrapped metric for ``Windowed``)."""
    window = inputs.window
    if kind == "mean":
        return WindowedMean(window, **kwargs)
    if kind == "sum":
        return WindowedSum(window, **kwargs)
    if kind == "ema":
        return EMALoss(inputs.decay, window=window, **kwargs)
    return Windowed(_bare_metric(kind, **kwargs), window)


def _bare_metric(kind: str, **kwargs: Any) -> Metric:
    if kind == "accuracy":
        return MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro", **kwargs)
    return MeanSquaredError(**kwargs)


# Specifications of the series ---------------------------------------------------------------------------------


SYNCS = ("world", "custom", "rank0", "off")
"""How a series synchronises: over the default group, over a new group of both processes, over a group of rank 0
alone (rank 1 runs nothing), or not at all (``sync_on_compute=False``)."""


@dataclass(frozen=True)
class SeriesSpec:
    """A series of updates of one metric, each followed by two ``compute()`` calls."""

    kind: str
    seed: int
    use_forward: bool
    sync: str = "world"
    host: bool = True  # keep the scalars of CPU inputs as Python floats (the default) or as 0-dim tensors

    @property
    def name(self) -> str:
        call = "forward" if self.use_forward else "update"
        return f"{self.kind}-{self.seed}-{call}-{self.sync}-{'host' if self.host else 'tensor'}"

    @property
    def inputs(self) -> Inputs:
        return make_inputs(f"series-{self.kind}-{self.seed}", self.kind)

    def ranks(self) -> range:
        """The ranks that take part."""
        return range(1) if self.sync == "rank0" else range(WORLD_SIZE)


def _series_specs() -> list[SeriesSpec]:
    specs = []
    for kind in VALUE_KINDS + WRAPPED_KINDS:
        for seed in range(4):
            for use_forward in (True, False):
                specs.append(SeriesSpec(kind, seed, use_forward))
                if kind in VALUE_KINDS:
                    specs.append(SeriesSpec(kind, seed, use_forward, host=False))
        for sync in SYNCS[1:]:
            specs.extend(SeriesSpec(kind, seed, seed % 2 == 0, sync) for seed in (10, 11))
    return specs


SERIES = _series_specs()


@dataclass
class Step:
    """What one update of a series returned and issued, then what two ``compute()`` calls did."""

    returned: Optional[float]  # forward's value, or after update what Lightning logs (the forward cache)
    at_boundary: bool
    computed: float
    recomputed: float
    update_collectives: list[Collective]
    compute_collectives: list[Collective]
    recompute_collectives: list[Collective]


# The scenarios, run in each process ------------------------------------------------------------------------------


@dataclass
class Results:
    """Everything one process recorded."""

    series: dict[str, list[Step]] = field(default_factory=dict)
    bare_compute: dict[tuple[str, str], list[Collective]] = field(default_factory=dict)
    uneven: dict[str, str] = field(default_factory=dict)
    collection: dict[bool, "CollectionRun"] = field(default_factory=dict)
    manual_sync: dict[tuple[str, bool], "ManualSync"] = field(default_factory=dict)
    pickled: dict[str, tuple[Optional[float], float]] = field(default_factory=dict)


def worker(rank: int, pickled: dict[str, WindowMetric]) -> Results:
    """Run every scenario in process ``rank``; ``pickled`` holds metrics updated by the parent before the spawn."""
    log = CollectiveLog()
    log.install()
    # new_group is called by every process, member or not
    groups = {"world": None, "custom": dist.new_group([0, 1]), "rank0": dist.new_group([0])}
    log.name_group(groups["custom"], "custom")
    log.name_group(groups["rank0"], "rank0")
    results = Results()
    results.pickled = pickled_scenario(rank, pickled)
    for spec in SERIES:
        if rank in spec.ranks():
            with representation(spec.host):
                metric = make_metric(spec.kind, spec.inputs, **_sync_kwargs(spec.sync, groups))
                results.series[spec.name] = run_series(metric, spec.inputs.calls[rank], spec.use_forward, log)
    for kind in WRAPPED_KINDS:
        for sync in SYNCS:
            if rank == 0 or sync != "rank0":
                results.bare_compute[kind, sync] = bare_compute(kind, rank, _sync_kwargs(sync, groups), log)
    results.uneven = uneven_scenarios(rank)
    results.collection = {use_forward: collection_scenario(rank, use_forward, log) for use_forward in (True, False)}
    for kind in VALUE_KINDS:
        for host in (True, False):
            with representation(host):
                results.manual_sync[kind, host] = manual_sync_scenario(kind, rank, log)
    return results


def _sync_kwargs(sync: str, groups: dict[str, Any]) -> dict[str, Any]:
    if sync == "off":
        return {"sync_on_compute": False}
    return {"process_group": groups[sync]}


@contextmanager
def representation(host: bool) -> Iterator[None]:
    """Keep the scalars of CPU inputs as Python floats, or as 0-dim tensors as on an accelerator."""
    previous = scalars.PREFER_HOST
    scalars.PREFER_HOST = host
    try:
        yield
    finally:
        scalars.PREFER_HOST = previous


def as_float(value: Optional[Tensor]) -> Optional[float]:
    return None if value is None else float(value)


def run_series(metric: WindowMetric, calls: Sequence[Args], use_forward: bool, log: CollectiveLog) -> list[Step]:
    """Feed the calls; after each, call ``compute()`` twice; record values and collectives."""
    steps = []
    for args in calls:
        if use_forward:
            returned, update_collectives = log.during(partial(metric, *args))
        else:
            _, update_collectives = log.during(partial(metric.update, *args))
            returned = metric._forward_cache
        computed, compute_collectives = log.during(metric.compute)
        recomputed, recompute_collectives = log.during(metric.compute)
        steps.append(
            Step(
                as_float(returned),
                metric.at_boundary,
                float(computed),
                float(recomputed),
                update_collectives,
                compute_collectives,
                recompute_collectives,
            )
        )
    return steps


def bare_compute(kind: str, rank: int, kwargs: dict[str, Any], log: CollectiveLog) -> list[Collective]:
    """Return the collectives that an unwrapped torchmetrics metric of ``kind`` issues in ``compute()``."""
    metric = _bare_metric(kind, **kwargs)
    metric.update(*make_inputs("bare", kind, count=1).calls[rank][0])
    return log.during(metric.compute)[1]


UNEVEN = {
    "partial windows": (5, (3, 2)),
    "a boundary against a partial window": (2, (2, 1)),
}
"""Scenarios of uneven updates: the window, and each rank's number of updates before ``compute()``."""


def uneven_scenarios(rank: int) -> dict[str, str]:
    """Return, for each kind and scenario of :data:`UNEVEN`, the error that rank's metric raised (or ``""``).

    Each rank updates a fresh metric as many times as the scenario says, then calls ``compute()``; a rank whose
    last update closes a window has already issued its collective there. Either way every rank issues exactly
    one collective, so the scenario cannot hang.
    """
    errors = {}
    for kind in VALUE_KINDS:
        for scenario, (window, counts) in UNEVEN.items():
            inputs = make_inputs(f"uneven-{kind}-{scenario}", kind, count=max(counts), window=window)
            metric = make_metric(kind, inputs)
            calls = inputs.calls[rank][: counts[rank]]
            try:
                for args in calls:
                    metric.update(*args)
                metric.compute()  # the latest window value, with no collective, if the last update closed a window
            except RuntimeError as error:
                errors[f"{kind}: {scenario}"] = str(error)
            else:
                errors[f"{kind}: {scenario}"] = ""
    return errors


COLLECTION_WINDOW = 3
COLLECTION_MEMBERS = ("mean", "mean_twin", "sum", "ema")
"""A ``MetricCollection`` of windowmetrics, two of them configured identically (torchmetrics merges those)."""


def collection_inputs() -> Inputs:
    return make_inputs("collection", "mean", count=10, window=COLLECTION_WINDOW)


@dataclass
class CollectionRun:
    compute_groups: list[list[str]]
    logged: list[dict[str, Optional[float]]]  # after each update, each member's forward cache
    computed: list[dict[str, float]]
    update_collectives: list[list[Collective]]
    compute_collectives: list[list[Collective]]


def collection_scenario(rank: int, use_forward: bool, log: CollectiveLog) -> CollectionRun:
    """Feed a collection (through ``forward`` or ``update``), then ``compute()`` it, after each call."""
    inputs = collection_inputs()
    window = inputs.window
    collection = MetricCollection(
        {
            "mean": WindowedMean(window),
            "mean_twin": WindowedMean(window),
            "sum": WindowedSum(window),  # takes no weight: the collection passes it the value alone
            "ema": EMALoss(inputs.decay, window=window),
        }
    )
    run = CollectionRun([], [], [], [], [])
    for value, weight in inputs.calls[rank]:
        feed = collection if use_forward else collection.update
        _, update_collectives = log.during(partial(feed, value, weight=weight))
        run.logged.append({name: as_float(metric._forward_cache) for name, metric in collection.items(keep_base=True)})
        computed, compute_collectives = log.during(collection.compute)
        run.computed.append({name: float(result) for name, result in computed.items()})
        run.update_collectives.append(update_collectives)
        run.compute_collectives.append(compute_collectives)
    run.compute_groups = [list(group) for group in collection.compute_groups.values()]
    return run


SyncedSums = tuple[float, float, float]


@dataclass
class ManualSync:
    local: SyncedSums
    synced: SyncedSums
    restored: SyncedSums
    in_context: SyncedSums
    after_context: SyncedSums
    sync_collectives: list[Collective]
    boundary: Optional[float]  # the window's value, closed by an update after the manual syncs


MANUAL_SYNC_WINDOW = 4


def manual_sync_inputs(kind: str) -> Inputs:
    return make_inputs(f"manual-sync-{kind}", kind, count=MANUAL_SYNC_WINDOW, window=MANUAL_SYNC_WINDOW)


def manual_sync_scenario(kind: str, rank: int, log: CollectiveLog) -> ManualSync:
    """Fill all but one update of a window, ``sync()``/``unsync()`` and ``sync_context()``, then close the window."""
    inputs = manual_sync_inputs(kind)
    metric = make_metric(kind, inputs)
    assert isinstance(metric, WeightedSums)
    *first, last = inputs.calls[rank]
    for args in first:
        metric.update(*args)
    local = window_sums(metric)
    _, sync_collectives = log.during(metric.sync)
    synced = window_sums(metric)
    metric.unsync()
    restored = window_sums(metric)
    with metric.sync_context():
        in_context = window_sums(metric)
    after_context = window_sums(metric)
    metric.update(*last)
    boundary = as_float(metric._forward_cache)
    return ManualSync(local, synced, restored, in_context, after_context, sync_collectives, boundary)


def window_sums(metric: WeightedSums) -> SyncedSums:
    """Return the registered states ``(value_sum, weight_sum, nan_count)``, as torchmetrics' ``sync`` sees them."""
    return (float(metric.value_sum), float(metric.weight_sum), float(metric.nan_count))


# Metrics pickled into the processes --------------------------------------------------------------------------------

PICKLED_WINDOW = 5
PICKLED_BEFORE = 2
"""The parent's updates of each pickled metric before the spawn; each process adds the rest of the window."""


def pickled_metrics() -> dict[str, WindowMetric]:
    """Return fresh metrics to be updated by the parent and pickled into the processes (local values only).

    ``MeanSquaredError`` adds to its states in place (``+=``), so that a state left in the shared memory where
    ``torch.multiprocessing`` pickles CPU tensors would take both processes' updates; ``MulticlassAccuracy`` and
    the windowmetrics' own sums replace their states instead.
    """
    return {
        kind: make_metric(kind, pickled_inputs(kind)[0], sync_on_compute=False) for kind in ("mean", *WRAPPED_KINDS)
    }


def pickled_inputs(kind: str) -> tuple[Inputs, list[Args], tuple[list[Args], ...]]:
    """Return the settings, the parent's updates before the spawn, and each process's updates after it."""
    parent = make_inputs(f"pickled-{kind}-parent", kind, count=PICKLED_BEFORE, window=PICKLED_WINDOW)
    processes = make_inputs(f"pickled-{kind}-processes", kind, count=PICKLED_WINDOW - PICKLED_BEFORE)
    return parent, parent.calls[0], processes.calls


def pickled_scenario(rank: int, pickled: dict[str, WindowMetric]) -> dict[str, tuple[Optional[float], float]]:
    """Complete each pickled metric's window with this process's own updates: return the window's value.

    Both processes make all but the last of their updates before either closes its window, so that a state
    shared between the processes would have taken the other's updates by then.
    """
    values = {}
    for kind, metric in pickled.items():
        *updates, last = pickled_inputs(kind)[2][rank]
        for args in updates:
            metric.update(*args)
        dist.barrier()
        returned = metric(*last)
        values[kind] = (as_float(returned), float(metric.compute()))
    return values
