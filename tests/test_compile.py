"""torch.compile: a compiled training step that updates a metric compiles once and never recompiles.

A step compiled with ``torch.compile`` calls ``metric.update(loss)`` (or ``metric(loss)``) at every call, over
several windows, for every class (the one code path that every device runs). Dynamo guards on what the step reads:
a guard that fails at the next call (an int attribute that changed, a state that changed type) recompiles the step
at every call, until dynamo's ``recompile_limit`` makes it give up and run the step eagerly. The tests check that

- no call recompiles anything, and nothing is compiled once the first window has closed and the next begun;
- every value is the window's value, computed independently from the same losses;
- the graph breaks on the path of one call (inside a window, and at a boundary) stay within
  :data:`GRAPH_BREAKS`; each one's reason and place is printed (``pytest -s``).

The backend is ``"eager"``: dynamo traces, guards, breaks graphs and recompiles exactly as with inductor, which
only adds code generation after tracing (tens of seconds per graph on a 2-core machine) and changes none of
what is measured here.
"""

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch
import torch._dynamo
from torch import Tensor
from torch._dynamo.utils import counters
from torch._logging import set_logs  # type: ignore[attr-defined]  # documented, re-exported without __all__

from tests.versions import DYNAMO_BREAKS_ON_TYPING
from windowmetrics import EMALoss, WindowedMax, WindowedMean, WindowedMin, WindowedSum
from windowmetrics._window import WindowMetric

BACKEND = "eager"
WINDOW = 3
CALLS = 4 * WINDOW + 1
DECAY = 0.9
METRICS: dict[str, Callable[[], WindowMetric]] = {
    "WindowedMean": lambda: WindowedMean(WINDOW),
    "WindowedSum": lambda: WindowedSum(WINDOW),
    "EMALoss": lambda: EMALoss(DECAY, window=WINDOW),
    "WindowedMax": lambda: WindowedMax(WINDOW),
    "WindowedMin": lambda: WindowedMin(WINDOW),
}
SHAPES: dict[str, tuple[int, ...]] = {"0-dim": (), "256": (256,)}

GRAPH_BREAKS = 2
"""At most this many graph breaks on the path of one call, counted as dynamo counts them. ``update`` and
``forward`` run outside the graph (a ``torch.compiler.disable``'d call, windowmetrics/_compile.py), by design:
their window position is Python state that the graph would be specialised on. That one break, a call deep
into the step, breaks each enclosing frame: the step and ``update`` count 2."""
DISTINCT_GRAPH_BREAKS = 1
"""At most this many different graph breaks (place and reason) on the path of one call."""

_RECOMPILES = "torch._dynamo.guards.__recompiles"
_GRAPH_BREAKS = "torch._dynamo.symbolic_convert.__graph_breaks"


@dataclass
class DynamoLog:
    """What dynamo logged since the test began: each recompilation's message, each graph break's place and reason."""

    recompiles: list[str] = field(default_factory=list)
    graph_breaks: list[tuple[str, str]] = field(default_factory=list)

    def record(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name == _RECOMPILES:
            self.recompiles.append(message)
        else:
            self.graph_breaks.append(_graph_break(message))


def _graph_break(message: str) -> tuple[str, str]:
    """Return the place (``file:line``) and the reason (its first line) of a logged graph break."""
    place = re.search(r"in user code at (\S+:\d+)", message)
    lines = message.split("Graph Break Reason:", 1)[-1].splitlines()
    reasons = [line.strip() for line in lines if line.strip() and "Encountered graph break" not in line]
    return (place.group(1) if place else "?"), (reasons[0] if reasons else "?")


class _Handler(logging.Handler):
    def __init__(self, log: DynamoLog) -> None:
        super().__init__(logging.DEBUG)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.record(record)


@pytest.fixture
def dynamo() -> Iterator[DynamoLog]:
    """Start from an empty dynamo cache and counters; record recompilations and graph breaks.

    torch also prints what it logs to stderr, which pytest shows only for a failed test.
    """
    torch._dynamo.reset()
    counters.clear()
    log = DynamoLog()
    handler = _Handler(log)
    set_logs(recompiles=True, graph_breaks=True)
    loggers = [logging.getLogger(name) for name in (_RECOMPILES, _GRAPH_BREAKS)]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield log
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        set_logs()
        torch._dynamo.reset()
        counters.clear()


def make_step(metric: WindowMetric, operation: str) -> Callable[[Tensor], Optional[Tensor]]:
    """Return a training step's use of the metric: ``metric(loss)`` (forward) or ``metric.update(loss)``."""
    if operation == "forward":
        return lambda loss: metric(loss)

    def update(loss: Tensor) -> None:
        metric.update(loss)

    return update


def window_value(metric_name: str, losses: list[Tensor]) -> float:
    """The value of a window of these losses (or of any run of updates), in float64."""
    values = torch.cat([loss.double().reshape(-1) for loss in losses])
    if metric_name == "WindowedSum":
        return float(values.sum())
    if metric_name == "WindowedMax":
        return float(values.max())
    if metric_name == "WindowedMin":
        return float(values.min())
    return float(values.mean())


def latest_value(metric_name: str, losses: list[Tensor]) -> Optional[float]:
    """The latest window value after these losses, or ``None`` before the first window completes.

    An ``EMALoss`` after ``k`` windows of means ``m_j`` is ``sum_j d**(k-1-j) m_j / sum_j d**(k-1-j)``: the
    bias-corrected average, written in closed form rather than as the metric's recursion.
    """
    complete = len(losses) // WINDOW
    if not complete:
        return None
    windows = [losses[index * WINDOW : (index + 1) * WINDOW] for index in range(complete)]
    if metric_name != "EMALoss":
        return window_value(metric_name, windows[-1])
    means = [window_value("WindowedMean", window) for window in windows]
    weights = [DECAY ** (complete - 1 - index) for index in range(complete)]
    return sum(weight * mean for weight, mean in zip(weights, means, strict=True)) / sum(weights)


def computed_value(metric_name: str, losses: list[Tensor]) -> float:
    """What ``compute()`` returns after these losses: the value of them all; for ``EMALoss``, the latest average
    (the mean of the window in progress before the first window completes)."""
    latest = latest_value(metric_name, losses)
    if metric_name == "EMALoss" and latest is not None:
        return latest
    return window_value(metric_name, losses)


def assert_value(actual: Optional[Tensor], expected: Optional[float], where: str) -> None:
    if expected is None:
        assert actual is None, where
        return
    assert actual is not None, where
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), msg=lambda text: f"{where}: {text}")


def recompiled(message: str) -> str:
    """Return the function that a logged recompilation recompiled and its first failed guard, on one line."""
    lines = [line.strip() for line in message.splitlines()]
    guards = [line[2:] for line in lines if line.startswith("- ") and not line.startswith("- User")]
    return f"{lines[0].removeprefix('Recompiling function ')}: {guards[0] if guards else '?'}"


def describe(log: DynamoLog) -> str:
    breaks = sorted(set(log.graph_breaks))
    return "\n".join([f"  graph break at {place}: {reason}" for place, reason in breaks] or ["  no graph break"])


RECOMPILE_CASES = [
    (metric_name, shape)
    for metric_name in METRICS
    for shape in SHAPES
    if shape == "0-dim" or metric_name in ("WindowedMean", "WindowedMax")
]
"""Every metric on a 0-dim loss; WindowedMean and WindowedMax on a per-sample loss too (the others add the same
way as one of them)."""


@pytest.mark.parametrize("operation", ["update", "forward"])
@pytest.mark.parametrize(("metric_name", "shape"), RECOMPILE_CASES)
def test_a_compiled_step_never_recompiles(dynamo: DynamoLog, metric_name: str, operation: str, shape: str) -> None:
    metric = METRICS[metric_name]()
    step = torch.compile(make_step(metric, operation), backend=BACKEND)
    generator = torch.Generator().manual_seed(CALLS)
    losses = [torch.rand(SHAPES[shape], generator=generator) for _ in range(CALLS)]
    frames: list[int] = []
    for index, loss in enumerate(losses):
        returned = step(loss)
        frames.append(counters["frames"]["total"])
        seen = losses[: index + 1]
        if operation == "forward":
            assert_value(returned, latest_value(metric_name, seen), f"call {index + 1}, forward")
        assert_value(metric.compute(), computed_value(metric_name, seen), f"call {index + 1}, compute()")
    recompiles = "\n".join(f"  {recompiled(message)}" for message in dynamo.recompiles)
    assert not dynamo.recompiles, f"{len(dynamo.recompiles)} recompilations:\n{recompiles}"
    assert frames[WINDOW] == frames[-1], f"frames compiled after each call: {frames}"


@pytest.mark.parametrize("at_boundary", [False, True], ids=["inside a window", "at a boundary"])
@pytest.mark.parametrize("operation", ["update", pytest.param("forward", marks=DYNAMO_BREAKS_ON_TYPING)])
@pytest.mark.parametrize("metric_name", list(METRICS))
def test_graph_breaks_per_call(dynamo: DynamoLog, metric_name: str, operation: str, at_boundary: bool) -> None:
    metric = METRICS[metric_name]()
    loss = torch.tensor(0.25)
    for _ in range(WINDOW + (WINDOW - 1 if at_boundary else 0)):  # a window, then up to this call's place
        metric.update(loss)
    step = torch.compile(make_step(metric, operation), backend=BACKEND)
    step(loss)
    assert metric.at_boundary == at_boundary
    breaks = sum(counters["graph_break"].values())
    print(f"\n{metric_name}, {operation}, {'at a boundary' if at_boundary else 'inside a window'}:")
    print(f"  {breaks} graph break(s)\n{describe(dynamo)}")
    assert breaks <= GRAPH_BREAKS, describe(dynamo)
    assert len(set(dynamo.graph_breaks)) <= DISTINCT_GRAPH_BREAKS, describe(dynamo)


@pytest.mark.parametrize("operation", ["update", "forward"])
def test_two_metrics_that_share_their_code_recompile_once_and_fullgraph_cannot_hold_a_metric_call(
    dynamo: DynamoLog, operation: str
) -> None:
    """What a compiled step that calls several window metrics costs, and why ``fullgraph=True`` cannot compile it.

    - A step that calls two window metrics whose ``update`` (``forward``) is the same function recompiles that
      function once, on the step's first call, and never again. Dynamo compiles the function for the first
      metric's class, guarded on ``type(self)``; the second metric's class fails that guard. ``WindowedMax`` and
      ``WindowedMin`` are such a pair: both inherit ``update`` and ``forward`` from the same base class. Metrics
      of one class (two ``WindowedMean`` metrics of different windows, say) share the compiled code without
      recompiling, and metrics whose classes define their own ``update`` and ``forward`` (``WindowedMean`` beside
      ``WindowedSum``, ``EMALoss`` or ``WindowedMax``) each compile once, with no recompilation.
    - ``torch.compile(step, fullgraph=True)`` raises ``torch._dynamo.exc.Unsupported`` on the first call of a step
      that calls a window metric: ``update`` and ``forward`` run eagerly, outside the graph, behind a
      ``torch.compiler.disable``'d call (windowmetrics/_compile.py), because the window's position is Python
      state that a graph would be specialised on. A graph break is what they cost; ``fullgraph=True`` forbids
      graph breaks. Compile the model's forward with ``fullgraph=True`` and call the metric outside it.
    """
    pair = (WindowedMax(WINDOW), WindowedMin(WINDOW))

    def both(loss: Tensor) -> Tensor:
        for metric in pair:
            metric(loss) if operation == "forward" else metric.update(loss)
        return loss * 2

    compiled = torch.compile(both, backend=BACKEND)
    generator = torch.Generator().manual_seed(1)
    losses = [torch.rand((), generator=generator) for _ in range(CALLS)]
    per_call = []
    for loss in losses:
        before = len(dynamo.recompiles)
        compiled(loss)
        per_call.append(len(dynamo.recompiles) - before)
    assert per_call[0] <= 1, per_call  # once (torch 2.1's dynamo guards so that it does not recompile at all)
    assert per_call[1:] == [0] * (CALLS - 1), per_call
    if per_call[0]:
        assert recompiled(dynamo.recompiles[0]).startswith(f"{operation} in "), dynamo.recompiles[0]
    assert_value(pair[0].window_value, latest_value("WindowedMax", losses), "WindowedMax")
    assert_value(pair[1].window_value, latest_value("WindowedMin", losses), "WindowedMin")

    torch._dynamo.reset()
    dynamo.recompiles.clear()
    others = (WindowedMean(WINDOW), WindowedMean(2 * WINDOW), WindowedSum(WINDOW), EMALoss(DECAY, window=WINDOW))

    def several(loss: Tensor) -> Tensor:
        for metric in others:
            metric(loss) if operation == "forward" else metric.update(loss)
        return loss * 2

    compiled = torch.compile(several, backend=BACKEND)
    for loss in losses:
        compiled(loss)
    assert not dynamo.recompiles, [recompiled(message) for message in dynamo.recompiles]

    torch._dynamo.reset()
    full = torch.compile(make_step(WindowedMean(WINDOW), operation), backend=BACKEND, fullgraph=True)
    with pytest.raises(torch._dynamo.exc.Unsupported):  # the message differs across torch releases
        full(losses[0])
