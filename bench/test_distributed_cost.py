"""The cost of a window's synchronisation across gloo processes, against its floor and torchmetrics' ``MeanMetric``.

pytest-benchmark times each operation here, in rank 0 of a gloo group on the loopback interface, for 2 and for
4 processes; spawned processes are the other ranks and mirror every operation, as DDP peers would. Before each
round, in the untimed setup, rank 0 broadcasts which operation comes next, every rank prepares it (the updates
of the window but its last), and all meet at a barrier; the round then times the operation alone. The other
ranks therefore follow any number of rounds, and pytest-benchmark's options work as usual.

The floor of a synchronised window is one collective of the window's statistics: a bare ``all_reduce`` of a
float64 tensor holding the window's three sums and the update count (4 elements, what a boundary packs). It is
the group's reference row, which ``bench/report.py`` divides every row's median by; each window's boundary is
also divided by ``MeanMetric.compute()`` (torchmetrics' synchronisation, a collective per state).

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
from torchmetrics import MeanMetric

from bench.names import PACKED_ALL_REDUCE, synchronisation_group
from tests.process_group import free_port, skip_without_gloo
from windowmetrics import EMALoss, WindowedMean, WindowedSum

WINDOW = 8
ROUNDS = 200
WARMUP_ROUNDS = 20
TIMEOUT = timedelta(seconds=60)
STOP = -1
WORLD_SIZES = (2, 4)
PACKED = 4
"""The elements a boundary of WindowedMean, WindowedSum or EMALoss packs: three sums and the update count."""


class WindowBoundary:
    """Times the update that closes a window (one collective); the window's other updates are the setup."""

    def __init__(self, make: Callable[[], Union[WindowedMean, WindowedSum, EMALoss]]) -> None:
        self.metric = make()
        self.loss = torch.tensor(0.5)

    def prepare(self) -> None:
        for _ in range(WINDOW - 1):
            self.metric.update(self.loss)

    def run(self) -> None:
        self.metric.update(self.loss)
        assert self.metric.at_boundary


class MeanMetricCompute:
    """Times ``MeanMetric.compute()`` after an update (torchmetrics syncs each of its two states)."""

    def __init__(self) -> None:
        self.metric = MeanMetric()
        self.loss = torch.tensor(0.5)

    def prepare(self) -> None:
        self.metric.update(self.loss)  # also clears compute()'s cached value

    def run(self) -> None:
        self.metric.compute()


class PackedAllReduce:
    """Times the floor: one ``all_reduce`` of a window's packed statistics, a float64 tensor of 4 elements."""

    def __init__(self) -> None:
        self.packed = torch.zeros(PACKED, dtype=torch.float64)

    def prepare(self) -> None:
        self.packed.copy_(torch.tensor([0.5 * (WINDOW - 1), WINDOW - 1.0, 0.0, WINDOW - 1.0], dtype=torch.float64))

    def run(self) -> None:
        dist.all_reduce(self.packed)


Operation = Union[WindowBoundary, MeanMetricCompute, PackedAllReduce]
MEAN_METRIC = "MeanMetric compute()"
OPERATIONS: dict[str, Callable[[], Operation]] = {
    PACKED_ALL_REDUCE: PackedAllReduce,  # the reference row of the report
    MEAN_METRIC: MeanMetricCompute,
    "WindowedMean boundary": lambda: WindowBoundary(lambda: WindowedMean(WINDOW)),
    "WindowedSum boundary": lambda: WindowBoundary(lambda: WindowedSum(WINDOW)),
    "EMALoss boundary": lambda: WindowBoundary(lambda: EMALoss(0.9, window=WINDOW)),
}
NAMES = list(OPERATIONS)


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
    if isinstance(operation, WindowBoundary):
        benchmark.extra_info["counterpart"] = MEAN_METRIC
    benchmark.pedantic(operation.run, setup=setup, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)  # type: ignore[no-untyped-call]
