"""Scenarios that run in each process of a two-process gloo group; ``tests/test_distributed.py`` checks them.

Every scenario is deterministic: its inputs are generated from its name and seed, identically in the processes
(which each feed their own rank's inputs) and in the test process (which computes the reference values from
all ranks' inputs). The processes record what the metrics returned, what they raised and warned, and which
collectives they issued, as plain Python values; they check nothing themselves.
"""

import functools
import math
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import MeanSquaredError, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.utilities.distributed import gather_all_tensors

from tests.collectives import Collective, CollectiveLog
from tests.dispatch_counter import DispatchCounter
from tests.process_group import WORLD_SIZE
from tests.reference import random_calls
from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedMin, WindowedSum
from windowmetrics._window import WindowMetric

Args = tuple[Any, ...]
"""The arguments of one ``update``/``forward`` call."""

SUM_KINDS = ("mean", "sum", "ema")
"""Metrics of weighted sums: a boundary is one ``all_reduce``."""
EXTREME_KINDS = ("max", "min")
"""WindowedMax and WindowedMin: a boundary is one ``all_gather``."""
VALUE_KINDS = SUM_KINDS + EXTREME_KINDS
WRAPPED_KINDS = ("accuracy", "mse")
UNWEIGHTED_KINDS = ("sum", "max", "min")
"""The kinds whose ``update`` takes the value alone."""
NUM_CLASSES = 4
NAN_STRATEGIES: tuple[Any, ...] = ("disable", "ignore", "warn", "error", 2.5)
"""Every kind of ``nan_strategy``: the four names and a float to impute."""
NAN_PROBABILITY = 0.12
"""How often an update of the scenarios with NaN inputs holds a NaN."""
NAN_SERIES_COUNT = 18
"""The updates of each series with NaN inputs."""

T = TypeVar("T")


# Inputs ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """A scenario's settings and, for each rank, the arguments of each of its updates (as many on every rank)."""

    window: int
    decay: float
    calls: tuple[list[Args], ...]


@functools.cache
def make_inputs(
    name: str, kind: str, count: Optional[int] = None, window: Optional[int] = None, nans: float = 0.0
) -> Inputs:
    """Return random inputs for metrics of ``kind``, the same for the same ``name`` in every process.

    Values are Python numbers and tensors of random shapes and dtypes (``tests.reference.random_calls``); the
    fraction ``nans`` of them hold a NaN. Made once per process and arguments (nothing changes them).
    """
    rng = random.Random(name)
    window = window or rng.randint(1, 6)
    count = count or rng.randint(1, 24)
    decay = rng.choice([0.0, 0.5, 0.9])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.randrange(2**32))
        calls = tuple(_random_args(kind, rng, count, nans) for _ in range(WORLD_SIZE))
    return Inputs(window, decay, calls)


def _random_args(kind: str, rng: random.Random, count: int, nans: float) -> list[Args]:
    if kind in VALUE_KINDS:
        pairs = random_calls(rng, count, weighted=kind not in UNWEIGHTED_KINDS)
        if nans:
            pairs = [
                (_with_nan(value, rng), weight) if rng.random() < nans else (value, weight) for value, weight in pairs
            ]
        return [(value,) if kind in UNWEIGHTED_KINDS else (value, weight) for value, weight in pairs]
    calls: list[Args] = []
    for _ in range(count):
        size = rng.randint(1, 8)  # different batch sizes on each process
        if kind == "accuracy":
            calls.append((torch.randint(NUM_CLASSES, (size,)), torch.randint(NUM_CLASSES, (size,))))
        else:
            calls.append((torch.randn(size), torch.randn(size)))
    return calls


def _with_nan(value: Any, rng: random.Random) -> Any:
    """Return ``value`` with one element made NaN (an integer or bool tensor becomes float64 for it; an empty tensor
    holds no element and stays as it is), with the shape it had, so that its weight still broadcasts to it."""
    if not isinstance(value, Tensor):
        return math.nan
    if not value.numel():
        return value
    value = value.clone() if value.is_floating_point() else value.to(torch.float64)
    value.view(-1)[rng.randrange(value.numel())] = math.nan
    return value


def make_metric(kind: str, inputs: Inputs, nan_strategy: Any = "disable", **kwargs: Any) -> WindowMetric:
    """Return a fresh metric of ``kind``; ``kwargs`` are torchmetrics' (of the wrapped metric for ``Windowed``)."""
    window = inputs.window
    if kind == "mean":
        return WindowedMean(window, nan_strategy=nan_strategy, **kwargs)
    if kind == "sum":
        return WindowedSum(window, nan_strategy=nan_strategy, **kwargs)
    if kind == "ema":
        return EMALoss(inputs.decay, window=window, nan_strategy=nan_strategy, **kwargs)
    if kind == "max":
        return WindowedMax(window, nan_strategy=nan_strategy, **kwargs)
    if kind == "min":
        return WindowedMin(window, nan_strategy=nan_strategy, **kwargs)
    assert nan_strategy == "disable", "a wrapped metric takes no nan_strategy here"
    return Windowed(_bare_metric(kind, **kwargs), window)


def _bare_metric(kind: str, **kwargs: Any) -> Metric:
    if kind == "accuracy":
        return MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro", **kwargs)
    return MeanSquaredError(**kwargs)


# A user's dist_sync_fn ------------------------------------------------------------------------------------------

GATHER_CALLS: list[int] = [0]
"""How often :func:`counting_gather` was called in this process."""


def counting_gather(tensor: Tensor, group: Optional[Any] = None) -> list[Tensor]:
    """A user's ``dist_sync_fn``: torchmetrics' ``gather_all_tensors``, counted."""
    GATHER_CALLS[0] += 1
    return gather_all_tensors(tensor, group=group)


# Specifications of the series ---------------------------------------------------------------------------------


SYNCS = ("world", "custom", "rank0", "off", "fn")
"""How a series synchronises: over the default group, over a new group of both processes, over a group of rank 0
alone (rank 1 runs nothing), not at all (``sync_on_compute=False``), or through a user's ``dist_sync_fn``
(:func:`counting_gather`) over the default group."""


@dataclass(frozen=True)
class SeriesSpec:
    """A series of updates of one metric, each followed by two ``compute()`` calls."""

    kind: str
    seed: int
    use_forward: bool
    sync: str = "world"
    nan_strategy: Any = "disable"
    nans: bool = False  # whether some inputs hold a NaN

    @property
    def name(self) -> str:
        call = "forward" if self.use_forward else "update"
        nans = f"-nans-{self.nan_strategy}" if self.nans else ""
        return f"{self.kind}-{self.seed}-{call}-{self.sync}{nans}"

    @property
    def inputs(self) -> Inputs:
        if self.nans:  # long enough for windows with and without a NaN
            name = f"series-{self.kind}-{self.seed}-nans"
            return make_inputs(name, self.kind, count=NAN_SERIES_COUNT, window=1 + self.seed % 4, nans=NAN_PROBABILITY)
        return make_inputs(f"series-{self.kind}-{self.seed}", self.kind)

    def ranks(self) -> range:
        """The ranks that take part."""
        return range(1) if self.sync == "rank0" else range(WORLD_SIZE)


def _series_specs() -> list[SeriesSpec]:
    specs: list[SeriesSpec] = []
    for kind in VALUE_KINDS + WRAPPED_KINDS:
        seeds = range(4) if kind in VALUE_KINDS else range(2)  # a wrapped metric's synchronisation is slow
        specs.extend(SeriesSpec(kind, seed, use_forward) for seed in seeds for use_forward in (True, False))
        for sync in SYNCS[1:]:
            specs.extend(SeriesSpec(kind, seed, seed % 2 == 0, sync) for seed in (10, 11))
    for kind in VALUE_KINDS:
        for strategy in NAN_STRATEGIES:
            specs.extend(SeriesSpec(kind, seed, seed % 2 == 0, "world", strategy, True) for seed in (20, 21, 22))
    return specs


SERIES = _series_specs()


@dataclass
class Step:
    """What one update of a series returned, raised and issued, then what two ``compute()`` calls did."""

    returned: Optional[float]  # forward's value (None after update, or if it raised)
    window_value: Optional[float]  # the property, after the update
    forward_cache: Optional[float]  # what Lightning logs on step
    error: str  # what the update raised ("" if nothing)
    at_boundary: bool
    computed: Optional[float]  # None if compute() raised
    compute_error: str
    recomputed: Optional[float]
    warned: list[str]  # NaN warnings of the update and of the first compute()
    update_collectives: list[Collective]
    compute_collectives: list[Collective]
    recompute_collectives: list[Collective]
    update_gathers: int  # calls of the user's dist_sync_fn
    compute_gathers: int
    update_reads: Optional[int]  # host reads of the update (a host-device synchronisation each on an accelerator)
    compute_reads: Optional[int]  # and of the first compute(); None where not counted


# The scenarios, run in each process ------------------------------------------------------------------------------


@dataclass
class Results:
    """Everything one process recorded."""

    series: dict[str, list[Step]] = field(default_factory=dict)
    not_made: dict[str, str] = field(default_factory=dict)  # series whose metric could not be made: the error
    bare_compute: dict[tuple[str, str], list[Collective]] = field(default_factory=dict)
    one_gather: list[Collective] = field(default_factory=list)  # what one call of counting_gather issues
    uneven: dict[str, tuple[str, list[Collective]]] = field(default_factory=dict)
    after_uneven: dict[str, Optional[float]] = field(default_factory=dict)
    collection: dict[bool, "CollectionRun"] = field(default_factory=dict)
    manual_sync: dict[str, "ManualSync"] = field(default_factory=dict)
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
    results.one_gather = log.during(partial(counting_gather, torch.zeros(5, dtype=torch.float64)))[1]
    for spec in SERIES:
        if rank in spec.ranks():
            kwargs = sync_kwargs(spec.sync, groups)
            count_reads = spec.sync == "world" and spec.kind in VALUE_KINDS
            try:
                metric = make_metric(spec.kind, spec.inputs, spec.nan_strategy, **kwargs)
            except TypeError as error:  # recorded for the test to report, so that the other scenarios run
                results.not_made[spec.name] = f"{type(error).__name__}: {error}"
                continue
            calls = spec.inputs.calls[rank]
            results.series[spec.name] = run_series(metric, calls, spec.use_forward, log, count_reads)
    for kind in WRAPPED_KINDS:
        for sync in SYNCS:
            if rank == 0 or sync != "rank0":
                results.bare_compute[kind, sync] = bare_compute(kind, rank, sync_kwargs(sync, groups), log)
    results.uneven, results.after_uneven = uneven_scenarios(rank, log)
    results.collection = {use_forward: collection_scenario(rank, use_forward, log) for use_forward in (True, False)}
    results.manual_sync = {kind: manual_sync_scenario(kind, rank, log) for kind in VALUE_KINDS}
    return results


def sync_kwargs(sync: str, groups: dict[str, Any]) -> dict[str, Any]:
    if sync == "off":
        return {"sync_on_compute": False}
    if sync == "fn":
        return {"dist_sync_fn": counting_gather}
    return {"process_group": groups[sync]}


def as_float(value: Optional[Tensor]) -> Optional[float]:
    return None if value is None else float(value)


def attempt(action: Callable[[], T]) -> tuple[Optional[T], str]:
    """Return what ``action()`` returns and ``""``, or ``None`` and what it raised (a RuntimeError or ValueError)."""
    try:
        return action(), ""
    except (RuntimeError, ValueError) as error:
        return None, f"{type(error).__name__}: {error}"


def counted(action: Callable[[], T], count_reads: bool) -> tuple[T, Optional[int]]:
    """Return what ``action()`` returns and, if ``count_reads``, the host reads it made (else ``None``)."""
    if not count_reads:
        return action(), None
    with DispatchCounter() as counter:
        result = action()
    return result, counter.sync_count


def run_series(
    metric: WindowMetric, calls: Sequence[Args], use_forward: bool, log: CollectiveLog, count_reads: bool = False
) -> list[Step]:
    """Feed the calls; after each, call ``compute()`` twice; record values, errors, warnings, collectives and (with
    ``count_reads``) host reads."""
    steps = []
    for args in calls:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gathers = GATHER_CALLS[0]
            feed = partial(metric, *args) if use_forward else partial(metric.update, *args)
            ((returned, error), update_reads), update_collectives = log.during(
                partial(counted, partial(attempt, feed), count_reads)
            )
            update_gathers = GATHER_CALLS[0] - gathers
            gathers = GATHER_CALLS[0]
            ((computed, compute_error), compute_reads), compute_collectives = log.during(
                partial(counted, partial(attempt, metric.compute), count_reads)
            )
            compute_gathers = GATHER_CALLS[0] - gathers
        (recomputed, _), recompute_collectives = log.during(partial(attempt, metric.compute))
        steps.append(
            Step(
                returned=as_float(returned),
                window_value=as_float(metric.window_value),
                forward_cache=as_float(metric._forward_cache),
                error=error,
                at_boundary=metric.at_boundary,
                computed=as_float(computed),
                compute_error=compute_error,
                recomputed=as_float(recomputed),
                warned=[str(warning.message) for warning in caught if "NaN" in str(warning.message)],
                update_collectives=update_collectives,
                compute_collectives=compute_collectives,
                recompute_collectives=recompute_collectives,
                update_gathers=update_gathers,
                compute_gathers=compute_gathers,
                update_reads=update_reads,
                compute_reads=compute_reads,
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
UNEVEN_GATHERS = ("collective", "dist_sync_fn")
"""The metric's own collective, or a user's ``dist_sync_fn`` (:func:`counting_gather`)."""


def uneven_key(kind: str, scenario: str, gather: str) -> str:
    return f"{kind}: {scenario}, {gather}"


def uneven_scenarios(rank: int, log: CollectiveLog) -> tuple[dict[str, tuple[str, list[Collective]]], dict[str, Any]]:
    """Return, for each kind and scenario of :data:`UNEVEN`, what that rank's metric raised and issued.

    Each rank updates a fresh metric as many times as the scenario says, then calls ``compute()``; a rank whose
    last update closes a window raises there, and calls no ``compute()``. Then, in the same processes, a fresh
    metric of the same kind closes a window (the processes are usable after the error): its value is returned.
    """
    errors: dict[str, tuple[str, list[Collective]]] = {}
    after: dict[str, Any] = {}
    for kind in VALUE_KINDS:
        for scenario, (window, counts) in UNEVEN.items():
            for gather in UNEVEN_GATHERS:
                kwargs = {"dist_sync_fn": counting_gather} if gather == "dist_sync_fn" else {}
                inputs = uneven_inputs(kind, scenario)
                metric = make_metric(kind, inputs, **kwargs)
                calls = inputs.calls[rank][: counts[rank]]

                def run(metric: WindowMetric = metric, calls: list[Args] = calls) -> None:
                    for args in calls:
                        metric.update(*args)
                    metric.compute()

                (_, error), collectives = log.during(partial(attempt, run))
                errors[uneven_key(kind, scenario, gather)] = (error, collectives)
                fresh = make_metric(kind, inputs, **kwargs)
                for args in inputs.calls[rank][:window]:
                    fresh.update(*args)
                after[uneven_key(kind, scenario, gather)] = as_float(fresh.window_value)
    return errors, after


def uneven_inputs(kind: str, scenario: str) -> Inputs:
    window, counts = UNEVEN[scenario]
    return make_inputs(f"uneven-{kind}-{scenario}", kind, count=max(*counts, window), window=window)


COLLECTION_WINDOW = 3
COLLECTION_MEMBERS = ("mean", "mean_twin", "sum", "ema", "max", "min")
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
            "max": WindowedMax(window),
            "min": WindowedMin(window),
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


States = dict[str, list[float]]
"""A metric's registered states other than ``latest``: each ``[window, since reset]``."""


@dataclass
class ManualSync:
    local: States
    synced: States
    restored: States
    in_context: States
    after_context: States
    sync_collectives: list[Collective]
    boundary: Optional[float]  # the window's value, closed by an update after the manual syncs
    computed: float  # compute() after the boundary: every update since the reset


MANUAL_SYNC_WINDOW = 4
MANUAL_SYNC_COUNT = 2 * MANUAL_SYNC_WINDOW
MANUAL_SYNC_STRATEGY = "ignore"
"""The manual syncs come after a window and 3 updates of the next; the inputs hold NaNs, which are counted."""


def manual_sync_inputs(kind: str) -> Inputs:
    return make_inputs(f"manual-sync-{kind}", kind, count=MANUAL_SYNC_COUNT, window=MANUAL_SYNC_WINDOW, nans=0.3)


def manual_sync_scenario(kind: str, rank: int, log: CollectiveLog) -> ManualSync:
    """Fill a window and all but one update of the next, ``sync()``/``unsync()`` and ``sync_context()``, then
    close the window."""
    inputs = manual_sync_inputs(kind)
    metric = make_metric(kind, inputs, MANUAL_SYNC_STRATEGY)
    *first, last = inputs.calls[rank]
    for args in first:
        metric.update(*args)
    local = registered_states(metric)
    _, sync_collectives = log.during(metric.sync)
    synced = registered_states(metric)
    metric.unsync()
    restored = registered_states(metric)
    with metric.sync_context():
        in_context = registered_states(metric)
    after_context = registered_states(metric)
    metric.update(*last)
    boundary = as_float(metric._forward_cache)
    return ManualSync(
        local, synced, restored, in_context, after_context, sync_collectives, boundary, float(metric.compute())
    )


def registered_states(metric: WindowMetric) -> States:
    """Return the registered accumulators (``[window, since reset]`` each), as torchmetrics' ``sync`` sees them.

    The Python-number weights that a metric of weighted sums keeps apart until a synchronisation (they are added
    to both elements of ``weight_sum``) are added, as ``sync()`` adds them.
    """
    states = {
        key: [float(element) for element in getattr(metric, key)]
        for key in metric._defaults
        if key not in ("unshared", "latest", "ema_numerator", "ema_denominator")
    }
    pending = float(getattr(metric, "_number_weights", 0.0))
    if "weight_sum" in states:
        states["weight_sum"] = [element + pending for element in states["weight_sum"]]
    return states


# Metrics pickled into the processes --------------------------------------------------------------------------------

PICKLED_WINDOW = 5
PICKLED_BEFORE = 2
PICKLED_KINDS = ("mean", "max", *WRAPPED_KINDS)
"""The parent's updates of each pickled metric before the spawn; each process adds the rest of the window."""


def pickled_metrics() -> dict[str, WindowMetric]:
    """Return fresh metrics to be updated by the parent and pickled into the processes (local values only).

    Every windowmetrics state and ``MeanSquaredError``'s are added to in place (``+=``, ``add_``, ``out=``), so
    that a state left in the shared memory where ``torch.multiprocessing`` pickles CPU tensors would take both
    processes' updates; ``MulticlassAccuracy`` replaces its states instead.
    """
    return {kind: make_metric(kind, pickled_inputs(kind)[0], sync_on_compute=False) for kind in PICKLED_KINDS}


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
