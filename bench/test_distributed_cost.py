"""The cost of a window's synchronisation across gloo processes, against its floor and torchmetrics' own metrics.

pytest-benchmark times each operation here, in rank 0 of a gloo group on the loopback interface, for 2 and for
4 processes; spawned processes are the other ranks and mirror every operation, as DDP peers would. Before each
round, in the untimed setup, rank 0 broadcasts which operation comes next, every rank prepares it (the updates
of the window but its last; for ``compute()``, one update, which clears its cached value), and all meet at a
barrier; the round then times the operation alone. The other ranks therefore follow any number of rounds, and
pytest-benchmark's options work as usual.

The floor of a synchronised window is one collective of the window's statistics: a bare ``all_reduce`` of a
float64 tensor holding what a boundary of ``WindowedMean``, ``WindowedSum`` or ``EMALoss`` packs (its three sums,
its update count and the count's square, 5 elements). It is the group's reference row, which ``bench/report.py``
divides every row's median by. ``compute()`` of the aggregate since the reset is the same one collective.
``WindowedMax`` packs its extreme and two counts with the update count (4 elements) into one ``all_gather``, timed
bare beside it. Each row is also divided by its torchmetrics counterpart: ``MeanMetric.compute()`` (a collective
per state) or ``MaxMetric.compute()``.

On a machine with fewer cores than processes (4 processes on 2 cores), the rows measure oversubscription: the
peers' busy-polling competes with rank 0 for the cores.

Run with ``.venv/bin/python -m pytest bench/test_distributed_cost.py --benchmark-only``.
"""

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Union

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pytest_benchmark.fixture import BenchmarkFixture
from torchmetrics import MaxMetric, MeanMetric

from bench.names import synchronisation_group
from tests.process_group import free_port, skip_without_gloo
from windowmetrics import EMALoss, WindowedMax, WindowedMean, WindowedSum
from windowmetrics._window import WindowMetric

WINDOW = 8
ROUNDS = 200
WARMUP_ROUNDS = 20
TIMEOUT = timedelta(seconds=60)
STOP = -1
WORLD_SIZES = (2, 4)
PACKED = 5
"""The elements a boundary of WindowedMean, WindowedSum or EMALoss packs: three sums, the update count, its square."""
GATHERED = 4
"""The elements each process contributes to a boundary of WindowedMax: the extreme, two counts, the update count."""
PACKED_ALL_REDUCE = f"floor: all_reduce of the packed sums ({PACKED} float64)"
"""The reference row (bench/names.py's ``PACKED_ALL_REDUCE`` names the 4 elements of the former boundary)."""
GATHERED_ALL_GATHER = f"all_gather of the packed extreme ({GATHERED} float64)"


class WindowBoundary:
    """Times the update that closes a window (one collective); the window's other updates are the setup."""

    def __init__(self, make: Callable[[], WindowMetric]) -> None:
        self.metric = make()
        self.loss = torch.tensor(0.5)

    def prepare(self) -> None:
        for _ in range(WINDOW - 1):
            self.metric.update(self.loss)

    def run(self) -> None:
        self.metric.update(self.loss)
        assert self.metric.at_boundary


class Compute:
    """Times ``compute()`` after an update (which clears its cached value): windowmetrics' aggregate since the reset
    (one collective), or torchmetrics' own metric (a collective per state)."""

    def __init__(self, make: Callable[[], Union[WindowMetric, MeanMetric, MaxMetric]]) -> None:
        self.metric = make()
        self.loss = torch.tensor(0.5)

    def prepare(self) -> None:
        self.metric.update(self.loss)

    def run(self) -> None:
        self.metric.compute()


class BareCollective:
    """Times a bare collective of a float64 tensor: the ``all_reduce`` floor, or an ``all_gather``."""

    def __init__(self, elements: int, gather: bool) -> None:
        self.packed = torch.zeros(elements, dtype=torch.float64)
        self.gather = gather
        self.rows = [torch.empty_like(self.packed) for _ in range(dist.get_world_size())] if gather else []

    def prepare(self) -> None:
        self.packed.copy_(torch.arange(1.0, self.packed.numel() + 1, dtype=torch.float64))

    def run(self) -> None:
        if self.gather:
            dist.all_gather(self.rows, self.packed)
        else:
            dist.all_reduce(self.packed)


Operation = Union[WindowBoundary, Compute, BareCollective]
MEAN_METRIC = "MeanMetric compute()"
MAX_METRIC = "MaxMetric compute()"
OPERATIONS: dict[str, Callable[[], Operation]] = {
    PACKED_ALL_REDUCE: lambda: BareCollective(PACKED, gather=False),  # the reference row of the report
    GATHERED_ALL_GATHER: lambda: BareCollective(GATHERED, gather=True),
    MEAN_METRIC: lambda: Compute(MeanMetric),
    MAX_METRIC: lambda: Compute(MaxMetric),
    "WindowedMean boundary": lambda: WindowBoundary(lambda: WindowedMean(WINDOW)),
    "WindowedSum boundary": lambda: WindowBoundary(lambda: WindowedSum(WINDOW)),
    "EMALoss boundary": lambda: WindowBoundary(lambda: EMALoss(0.9, window=WINDOW)),
    "WindowedMean compute()": lambda: Compute(lambda: WindowedMean(WINDOW)),
    "WindowedMax boundary (all_gather)": lambda: WindowBoundary(lambda: WindowedMax(WINDOW)),
}
NAMES = list(OPERATIONS)
COUNTERPARTS = {
    "WindowedMean boundary": MEAN_METRIC,
    "WindowedSum boundary": MEAN_METRIC,
    "EMALoss boundary": MEAN_METRIC,
    "WindowedMean compute()": MEAN_METRIC,
    "WindowedMax boundary (all_gather)": MAX_METRIC,
}
"""Each windowmetrics row's torchmetrics counterpart, which the report divides it by."""


def _init(port: int, rank: int, world_size: int) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=TIMEOUT
    )


def _peer(port: int, rank: int, world_size: int) -> None:
    """A rank other than 0: mirror every operation that rank 0 announces, until it announces the end."""
    torch.set_num_threads(1)
    _init(port, rank, world_size)
    operations = {name: make() for name, make in OPERATIONS.items()}
    try:
        while (index := _next_operation()) != STOP:
            operation = operations[NAMES[index]]
            operation.prepare()
            dist.barrier()
            operation.run()
    finally:
        dist.destroy_process_group()


def _next_operation(index: int = STOP) -> int:
    """Return rank 0's ``index`` on every rank (the other ranks' ``index`` is overwritten)."""
    message = torch.tensor([index])
    dist.broadcast(message, src=0)
    return int(message)


@pytest.fixture(scope="module", params=WORLD_SIZES, ids=lambda size: f"{size} processes")
def world_size(request: pytest.FixtureRequest) -> Iterator[int]:
    """Make this process rank 0 of a gloo group whose other ranks are spawned mirrors of its operations."""
    skip_without_gloo()
    size: int = request.param
    port = free_port()
    context = mp.get_context("spawn")
    peers = [context.Process(target=_peer, args=(port, rank, size)) for rank in range(1, size)]
    for process in peers:
        process.start()
    _init(port, 0, size)
    try:
        yield size
        _next_operation(STOP)
    finally:
        dist.destroy_process_group()
        for process in peers:
            process.join(timeout=TIMEOUT.total_seconds())
            if process.is_alive():
                process.kill()


@pytest.mark.parametrize("name", NAMES)
def test_boundary_cost(world_size: int, benchmark: BenchmarkFixture, name: str) -> None:
    operation = OPERATIONS[name]()

    def setup() -> None:
        _next_operation(NAMES.index(name))
        operation.prepare()
        dist.barrier()

    benchmark.group = synchronisation_group(world_size)
    benchmark.extra_info["label"] = name
    benchmark.extra_info["reference"] = name == PACKED_ALL_REDUCE
    if name in COUNTERPARTS:
        benchmark.extra_info["counterpart"] = COUNTERPARTS[name]
    benchmark.pedantic(operation.run, setup=setup, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)  # type: ignore[no-untyped-call]
