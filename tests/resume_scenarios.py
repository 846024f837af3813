"""Checkpoints of window metrics saved and loaded across process groups of different sizes.

``tests/test_distributed_resume.py`` checks what these scenarios record. Each *case* is a metric kind, saved
after ``split`` updates (per process) of a series of :data:`COUNT`; the loading processes continue the series
with their own remaining updates. Checkpoints go to disk with ``torch.save`` and come back with
``torch.load(weights_only=True)``. Four ways of saving and loading:

- ``rank0``: a two-process run whose rank 0 alone calls ``state_dict()`` (as Lightning saves); every process of
  a two-process run loads that file;
- ``per-rank``: every process of a two-process run saves its own file and loads it;
- ``single``: a one-process run (no process group) saves; every process of a two-process run loads it;
- ``to-one``: a one-process run loads the two-process run's rank-0 file, or rank 1's own file (``to-one-rank1``).

The processes record what the metrics returned and which collectives ``state_dict``/``load_state_dict`` issued,
as plain Python values; they check nothing themselves.
"""

import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.multiprocessing.spawn import spawn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from tests.collectives import Collective, CollectiveLog
from tests.process_group import TIMEOUT, exit_spawned_process, free_port
from windowmetrics import EMALoss, Windowed, WindowedMax, WindowedMean, WindowedMin, WindowedSum
from windowmetrics._window import WindowMetric

Args = tuple[Any, ...]

WINDOW = 3
COUNT = 10
"""Updates per process in every series."""
SPLITS = (2, 4, 6)
"""Updates before the checkpoint: inside the first window, inside the second, at a boundary."""
DECAY = 0.5
NUM_CLASSES = 4
KINDS = ("mean", "sum", "ema", "max", "min", "windowed-mean", "accuracy")
UNWEIGHTED_KINDS = ("sum", "max", "min")
"""The kinds whose ``update`` takes the value alone."""
SINGLE = "single"
"""The name of the inputs of the one-process run that saves the ``single`` checkpoints."""


def make_metric(kind: str) -> WindowMetric:
    """A fresh metric of ``kind`` with window :data:`WINDOW`, its states persistent."""
    metric: WindowMetric
    if kind == "mean":
        metric = WindowedMean(WINDOW)
    elif kind == "sum":
        metric = WindowedSum(WINDOW)
    elif kind == "ema":
        metric = EMALoss(DECAY, window=WINDOW)
    elif kind == "max":
        metric = WindowedMax(WINDOW)
    elif kind == "min":
        metric = WindowedMin(WINDOW)
    elif kind == "windowed-mean":
        metric = Windowed(MeanMetric(), WINDOW)
    else:
        metric = Windowed(MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro"), WINDOW)
    metric.persistent(True)
    return metric


def make_calls(kind: str, source: object) -> list[Args]:
    """The :data:`COUNT` update arguments of the process ``source`` (a rank, or :data:`SINGLE`), deterministic."""
    rng = random.Random(f"resume-{kind}-{source}")
    generator = torch.Generator().manual_seed(rng.randrange(2**32))
    calls: list[Args] = []
    for _ in range(COUNT):
        size = rng.randint(1, 5)  # batch sizes differ between updates and processes
        if kind == "accuracy":
            preds = torch.randint(NUM_CLASSES, (size,), generator=generator)
            calls.append((preds, torch.randint(NUM_CLASSES, (size,), generator=generator)))
            continue
        values = torch.rand(size, generator=generator, dtype=torch.float64) * 8 - 2
        if kind in UNWEIGHTED_KINDS:
            calls.append((values,) if rng.random() < 0.7 else (float(values[0]),))  # a tensor or a Python number
        else:
            calls.append((values, float(rng.randint(1, 4))))
    return calls


@dataclass
class Step:
    """What one update returned (``forward``), whether it closed a window, and ``compute()`` after it."""

    returned: Optional[float]
    at_boundary: bool
    computed: float


@dataclass
class Resumed:
    """A metric loaded from a checkpoint, then fed the rest of the series."""

    load_collectives: list[Collective]
    update_count: int  # right after loading
    at_boundary: bool
    latest: Optional[float]  # the forward cache right after loading: what Lightning would log
    computed: float  # compute() right after loading: the aggregate since the reset, synchronised (a collective)
    compute_collectives: list[Collective]
    steps: list[Step]


@dataclass
class Results:
    """What one process recorded, by ``(kind, split)``."""

    uninterrupted: dict[tuple[str, int], list[Step]] = field(default_factory=dict)
    save_collectives: dict[tuple[str, int], list[Collective]] = field(default_factory=dict)
    rank0_save_collectives: dict[tuple[str, int], list[Collective]] = field(default_factory=dict)
    resumed: dict[tuple[str, str, int], Resumed] = field(default_factory=dict)  # (how, kind, split)
    issue: dict[str, Optional[float]] = field(default_factory=dict)
    with_parameters: Optional["WithParameters"] = None


def as_float(value: Optional[Tensor]) -> Optional[float]:
    return None if value is None else float(value)


def feed(metric: WindowMetric, calls: Sequence[Args]) -> list[Step]:
    steps = []
    for args in calls:
        returned = metric(*args)
        steps.append(Step(as_float(returned), metric.at_boundary, float(metric.compute())))
    return steps


def checkpoint(directory: Path, how: str, kind: str, split: int, rank: int = 0) -> Path:
    return directory / f"{how}-{kind}-{split}-rank{rank}.pt"


def resume(path: Path, kind: str, calls: Sequence[Args], log: Optional[CollectiveLog]) -> Resumed:
    """Load the checkpoint at ``path`` into a fresh metric (counting collectives), then feed ``calls``."""
    metric = make_metric(kind)
    state = torch.load(path, weights_only=True)
    load = partial(metric.load_state_dict, state)
    collectives = log.during(load)[1] if log is not None else (load(), [])[1]
    after_load = (metric.update_count, metric.at_boundary, as_float(metric._forward_cache))
    computed, compute_collectives = log.during(metric.compute) if log is not None else (metric.compute(), [])
    return Resumed(collectives, *after_load, float(computed), compute_collectives, feed(metric, calls))


def save_single(directory: Path) -> None:
    """Save the ``single`` checkpoints: from a process without ``torch.distributed`` (the test process)."""
    for kind in KINDS:
        for split in SPLITS:
            metric = make_metric(kind)
            feed(metric, make_calls(kind, SINGLE)[:split])
            torch.save(metric.state_dict(), checkpoint(directory, SINGLE, kind, split))


def two_process_worker(rank: int, directory: Path) -> Results:
    """In each process of a two-process group: save, then resume the ``rank0``, ``per-rank`` and ``single`` cases."""
    log = CollectiveLog()
    log.install()
    results = Results()
    for kind in KINDS:
        calls = make_calls(kind, rank)
        for split in SPLITS:
            run_two_process_case(kind, split, rank, calls, directory, log, results)
    results.issue = issue_scenario(rank, directory)
    results.with_parameters = with_parameters_scenario(rank, directory)
    return results


def run_two_process_case(
    kind: str, split: int, rank: int, calls: list[Args], directory: Path, log: CollectiveLog, results: Results
) -> None:
    results.uninterrupted[kind, split] = feed(make_metric(kind), calls)
    metric = make_metric(kind)
    feed(metric, calls[:split])
    state, results.save_collectives[kind, split] = log.during(metric.state_dict)
    torch.save(state, checkpoint(directory, "per-rank", kind, split, rank))
    if rank == 0:  # rank 1 goes straight on to the barrier: a collective here would never be matched
        state, results.rank0_save_collectives[kind, split] = log.during(metric.state_dict)
        torch.save(state, checkpoint(directory, "rank0", kind, split))
    dist.barrier()  # the files are written
    continued = calls[split:]
    cases = {
        "rank0": checkpoint(directory, "rank0", kind, split),
        "per-rank": checkpoint(directory, "per-rank", kind, split, rank),
        SINGLE: checkpoint(directory, SINGLE, kind, split),
    }
    for how, path in cases.items():
        results.resumed[how, kind, split] = resume(path, kind, continued, log)


def issue_scenario(rank: int, directory: Path) -> dict[str, Optional[float]]:
    """Issue 9's report: ``WindowedMean(2)``, rank r updates ``float(r)``, a checkpoint, then every rank ``10.0``."""
    metric = WindowedMean(2)
    metric.persistent(True)
    metric.update(float(rank))
    torch.save(metric.state_dict(), directory / f"issue-rank{rank}.pt")
    dist.barrier()
    values = {}
    for how, saver in (("rank0", 0), ("per-rank", rank)):
        resumed = WindowedMean(2)
        resumed.persistent(True)
        resumed.load_state_dict(torch.load(directory / f"issue-rank{saver}.pt", weights_only=True))
        values[how] = as_float(resumed(10.0))
    uninterrupted = WindowedMean(2)
    uninterrupted.update(float(rank))
    values["uninterrupted"] = as_float(uninterrupted(10.0))
    return values


class Projected(Metric):
    """A metric with parameters of its own, as FID, LPIPS or CLIPScore have (a feature extractor): the sum of a
    linear projection of its inputs. Its parameters are in ``state_dict()``, beside its state ``total``."""

    full_state_update = False
    total: Tensor

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(2, 1, dtype=torch.float64)
        generator = torch.Generator().manual_seed(seed)  # each process initialises its own
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(1, 2, generator=generator, dtype=torch.float64))
            self.proj.bias.copy_(torch.randn(1, generator=generator, dtype=torch.float64))
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x: Tensor) -> None:
        self.total = self.total + self.proj(x).detach().sum()

    def compute(self) -> Tensor:
        return self.total


PROJECTED_INPUTS = ([[1.0, 2.0]], [[-3.0, 0.5]], [[4.0, -1.0]], [[0.25, 8.0]])
"""The inputs of :func:`with_parameters_scenario`: rank 0's and rank 1's before the checkpoint, then after."""


@dataclass
class WithParameters:
    saved_parameters: list[float]  # the saving process's weight and bias
    error: str  # what a strict load_state_dict raised, or ""
    loaded_parameters: list[float]
    total: float  # the wrapped metric's window sum right after loading
    value: Optional[float]  # the window's value after the update that closes it


def with_parameters_scenario(rank: int, directory: Path) -> WithParameters:
    """Rank 0 saves a ``Windowed`` metric whose wrapped metric has parameters; every rank loads it strictly."""
    metric = Windowed(Projected(seed=rank), 2)
    metric.persistent(True)
    metric.update(torch.tensor(PROJECTED_INPUTS[rank], dtype=torch.float64))
    path = directory / "with-parameters.pt"
    if rank == 0:
        torch.save(metric.state_dict(), path)
    dist.barrier()

    def projected(wrapped: Windowed) -> Projected:
        assert isinstance(wrapped.metric, Projected)
        return wrapped.metric

    def parameters(wrapped: Windowed) -> list[float]:
        projection = projected(wrapped).proj
        return [*projection.weight.flatten().tolist(), *projection.bias.tolist()]

    resumed = Windowed(Projected(seed=10 + rank), 2)
    resumed.persistent(True)
    error = ""
    try:
        resumed.load_state_dict(torch.load(path, weights_only=True))
    except RuntimeError as raised:
        error = str(raised)
    loaded = torch.tensor([not error])
    dist.all_reduce(loaded, op=dist.ReduceOp.MIN)  # the window's synchronisation only where every rank loaded
    total = float(projected(resumed).total)
    value = as_float(resumed(torch.tensor(PROJECTED_INPUTS[2 + rank], dtype=torch.float64))) if loaded else None
    return WithParameters(parameters(metric), error, parameters(resumed), total, value)


def one_process_resumes(directory: Path, log: Optional[CollectiveLog]) -> Results:
    """Load the two-process run's rank-0 file, and rank 1's own file, into one process; feed rank 0's updates."""
    results = Results()
    for kind in KINDS:
        continued = make_calls(kind, 0)
        for split in SPLITS:
            rank0 = checkpoint(directory, "rank0", kind, split)
            rank1 = checkpoint(directory, "per-rank", kind, split, rank=1)
            results.resumed["to-one", kind, split] = resume(rank0, kind, continued[split:], log)
            results.resumed["to-one-rank1", kind, split] = resume(rank1, kind, continued[split:], log)
    return results


def one_process_worker(rank: int, directory: Path, port: int, result: Path) -> None:
    """The one process of a one-process gloo group: :func:`one_process_resumes`, its results pickled to ``result``."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=1, timeout=TIMEOUT)
    try:
        log = CollectiveLog()
        log.install()
        result.write_bytes(pickle.dumps(one_process_resumes(directory, log)))
    except BaseException:
        dist.destroy_process_group()
        raise
    exit_spawned_process()  # past the deadlock of torch < 2.8 (tests/process_group.py)


def run_in_one_process_group(directory: Path) -> Results:
    """Spawn one process in a gloo group of its own and run :func:`one_process_worker` there."""
    result = directory / "one-process.pickle"
    spawn(one_process_worker, args=(directory, free_port(), result), nprocs=1)  # type: ignore[no-untyped-call]
    loaded: Results = pickle.loads(result.read_bytes())
    return loaded
