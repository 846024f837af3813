"""The cost of a window's synchronisation across two gloo processes, against torchmetrics' ``MeanMetric.compute()``.

pytest-benchmark times each operation here, in rank 0 of a two-process gloo group on the loopback interface;
a spawned process is rank 1 and mirrors every operation, as a DDP peer would. Before each round, in the
untimed setup, rank 0 broadcasts which operation comes next, both ranks prepare it (the updates of the
window but its last), and both meet at a barrier; the round then times the operation alone. Rank 1 therefore
follows any number of rounds, and pytest-benchmark's options work as usual.

Run with ``.venv/bin/python -m pytest bench/test_distributed_cost.py --benchmark-only``. ``MeanMetric.compute()``
is the group's reference row: ``bench/report.py`` divides every row's median by its median.
"""

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pytest_benchmark.fixture import BenchmarkFixture
from torchmetrics import MeanMetric

from tests.process_group import free_port, skip_without_gloo
from windowmetrics import EMALoss, WindowedMean, WindowedSum

WINDOW = 8
ROUNDS = 200
WARMUP_ROUNDS = 20
TIMEOUT = timedelta(seconds=60)
STOP = -1


class WindowBoundary:
    """Times the update that closes a window (one collective); the window's other updates are the setup."""

    def __init__(self, make: Callable[[], WindowedMean | WindowedSum | EMALoss]) -> None:
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


MEAN_METRIC = "MeanMetric compute()"
OPERATIONS: dict[str, Callable[[], WindowBoundary | MeanMetricCompute]] = {
    MEAN_METRIC: MeanMetricCompute,  # the reference row of the report
    "WindowedMean boundary": lambda: WindowBoundary(lambda: WindowedMean(WINDOW)),
    "WindowedSum boundary": lambda: WindowBoundary(lambda: WindowedSum(WINDOW)),
    "EMALoss boundary": lambda: WindowBoundary(lambda: EMALoss(0.9, window=WINDOW)),
}
NAMES = list(OPERATIONS)


def _peer(port: int) -> None:
    """Rank 1: mirror every operation that rank 0 announces, until it announces the end."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=1, world_size=2, timeout=TIMEOUT)
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


@pytest.fixture(scope="module")
def peer() -> Iterator[None]:
    """Make this process rank 0 of a gloo group whose rank 1 is a spawned mirror of its operations."""
    skip_without_gloo()
    port = free_port()
    process = mp.get_context("spawn").Process(target=_peer, args=(port,))
    process.start()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2, timeout=TIMEOUT)
    try:
        yield
        _next_operation(STOP)
    finally:
        dist.destroy_process_group()
        process.join(timeout=TIMEOUT.total_seconds())
        if process.is_alive():
            process.kill()


@pytest.mark.parametrize("name", NAMES)
def test_boundary_cost(peer: None, benchmark: BenchmarkFixture, name: str) -> None:
    operation = OPERATIONS[name]()

    def setup() -> None:
        _next_operation(NAMES.index(name))
        operation.prepare()
        dist.barrier()

    benchmark.group = "a window's synchronisation, gloo, 2 processes"
    benchmark.extra_info["label"] = name
    benchmark.extra_info["reference"] = name == MEAN_METRIC
    benchmark.pedantic(operation.run, setup=setup, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)  # type: ignore[no-untyped-call]
