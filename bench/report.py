"""Write bench/README.md from the JSON of a pytest-benchmark run: ``python -m bench.report RESULTS.json OUTPUT.md``.

Every benchmark in the JSON appears in the table of its pytest-benchmark ``group``, groups in the order in which
they ran, so benchmarks added to bench/ later join the report without changes here. A row reads these optional
``extra_info`` keys: ``label`` (the row's name, else the test's), ``reference`` (true for the row that the whole
group is divided by, e.g. the floor) and ``counterpart`` (the label of another row of the group that this row is
divided by, e.g. its torchmetrics counterpart) and ``untimed`` (true for a row whose columns are all its
``extra_info``, e.g. counts of dispatched operators; a group of such rows has no time columns); any other key
becomes a column. Times are medians over the rounds, ratios are ratios of medians. The targets at the top are
read from the rows that bench/names.py names.
"""

import argparse
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

from bench.names import (
    ACCURACY_INPUTS,
    FLOOR,
    LIGHTNING,
    MAX_METRIC,
    MEAN_METRIC,
    MEMORY,
    MEMORY_WINDOWS,
    OPERATIONS,
    OPS_FIRST_UPDATE,
    OPS_PER_UPDATE,
    PER_SAMPLE,
    READS_AT_BOUNDARY,
    READS_PER_UPDATE,
    SCALAR,
    STATE_BYTES,
    WINDOW,
    dispatch_group,
    group,
    running,
    windowed,
    wrapped,
)

_READ_KEYS = ("label", "reference", "counterpart", "untimed")
COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e '.[dev]'"
    " && .venv/bin/python -m pytest bench --benchmark-min-time=0.0005 --benchmark-max-time=0.5"
    " --benchmark-json=.benchmarks/bench.json"
    " && .venv/bin/python -m bench.report .benchmarks/bench.json bench/README.md"
)
GROUP_ORDER = [
    *(group(operation, inputs) for inputs in (SCALAR, PER_SAMPLE, ACCURACY_INPUTS) for operation in OPERATIONS),
    LIGHTNING,
    MEMORY,
]

METHOD = """\
## How it is measured

- One process, one thread (`torch.set_num_threads(1)`), every benchmark side by side in the same run; numbers are
  medians over the rounds and ratios are ratios of medians, so they compare like with like on this machine. No
  benchmark asserts a time.
- `forward` is the metric's `__call__` (what `metric(loss)` costs a user), `update` is `metric.update(loss)`. Each
  metric is first called for two windows, so the timed calls are in steady state and a window closes at its real
  rate (one call in `window`; with `window=1`, every call). pytest-benchmark calibrates each round to at least
  0.5 ms of calls; its loop's own cost (about 50 ns a call) is in every row, the floor's included.
- The floor is one in-place `add_` on a 0-dim tensor: `acc.add_(loss)` for the scalar loss and `acc.add_(loss.sum())`
  for the per-sample loss (the least that summing it costs). The hand-written accumulator is the seeds' style:
  `total += loss.item()` (`loss.sum().item()` for the per-sample loss), a counter and the mean every 100 steps.
- torchmetrics' `MeanMetric`, `SumMetric`, `MaxMetric` and `MinMetric` run with their default `nan_strategy="warn"`,
  which checks every update for NaN; `RunningMean`/`RunningSum` and `Running(MaxMetric(), window=100)` keep a copy
  of the wrapped metric's states per window slot, and their `forward` returns the batch's value, not the running one
  (`Running` refuses `MaxMetric` as it is, whose `full_state_update` is true; the row wraps it with `False`, which
  gives the same running maximum).
- `Windowed` keeps a since-reset copy of the metric it wraps beside the window's: `Windowed(MeanMetric())` merges
  each window into it at the boundary (`merge_state`; one update of the wrapped metric per update), while
  `Windowed(MaxMetric())`, whose states torchmetrics cannot merge exactly (`full_state_update=True`), updates the
  copy beside the window's (two updates per update). Each row is divided by the wrapped metric alone.
- Lightning: a linear regression on random data (batch 32, 16 features), `Trainer` on CPU with a `CSVLogger`,
  no progress bar, checkpointing or model summary. A callback records `time.perf_counter()` at every
  `on_train_batch_start`; the first 100 steps are a warm-up (Trainer start-up is never timed), then each round is
  the mean step time over 100 steps, a full window, so a metric logged only at its boundary is charged its real rate.
  The three windowmetrics are `WindowedMean(100)` of the loss weighted by the batch size, `WindowedSum(100)` of
  the batch size and `EMALoss(window=100)` of the loss.
- A window's synchronisation: rank 0 of a gloo group on the loopback interface (2, then 4 processes on this
  machine's cores), the other ranks spawned and mirroring every operation; each round times one operation after an
  untimed barrier. The floor is one bare `all_reduce` of a float64 tensor holding a window's three sums and the
  update count (the 4 values a boundary packs); `MeanMetric compute()` synchronises each of its two states.
- Dispatched operators and host reads: the CPU runs the code that a GPU runs (float64 `[window, since reset]` tensor
  states, updated in place), and a `TorchDispatchMode` (tests/dispatch_counter.py) records every operator dispatched
  (one kernel launch each on a GPU, views aside) and every read of a tensor's value by the host (`.item()`,
  `tolist()`, ...: a host-device synchronisation on a GPU). "Per update" is an update that closes no window, the
  second of a window after two windows; "first update" the first after construction; "at a boundary" the update
  that closes a window, and for torchmetrics' metrics `compute()` after an update; "synchronised" the same in a gloo
  group of one process, where it synchronises as under DDP (collectives are the `c10d` operators dispatched; the
  floor of a synchronised window is one); "compute()" after two windows and one update of the next. The update and
  boundary counts are exact; tests/test_dispatch_counts.py asserts them.
- Memory: the bytes of all state tensors that `state_dict()` saves with `persistent(True)`, and the Python heap
  (tracemalloc) that building the metric and 1000 updates leave allocated; tracemalloc sees tensor objects but not
  torch's tensor storage, which the first column counts.
"""


@dataclass(frozen=True)
class Row:
    """One benchmark of the JSON: its label, its statistics (seconds) and what the report compares it with."""

    label: str
    median: float
    minimum: float
    rounds: int
    reference: bool
    counterpart: Optional[str]
    columns: dict[str, Any]
    untimed: bool = False

    @classmethod
    def read(cls, benchmark: dict[str, Any]) -> "Row":
        extra_info = benchmark.get("extra_info") or {}
        stats = benchmark["stats"]
        return cls(
            label=str(extra_info.get("label", benchmark["name"])),
            median=stats["median"],
            minimum=stats["min"],
            rounds=stats["rounds"],
            reference=bool(extra_info.get("reference", False)),
            counterpart=extra_info.get("counterpart"),
            columns={key: value for key, value in extra_info.items() if key not in _READ_KEYS},
            untimed=bool(extra_info.get("untimed", False)),
        )


Groups = dict[str, dict[str, Row]]


def read_groups(benchmarks: Iterable[dict[str, Any]]) -> Groups:
    """Return the rows by group and label: rows in the order in which they ran, groups in ``GROUP_ORDER``'s order,
    then the other groups in the order in which they ran."""
    groups: Groups = {}
    for benchmark in benchmarks:
        row = Row.read(benchmark)
        groups.setdefault(benchmark.get("group") or "ungrouped", {})[row.label] = row
    ordered = sorted(groups, key=lambda title: GROUP_ORDER.index(title) if title in GROUP_ORDER else len(GROUP_ORDER))
    return {title: groups[title] for title in ordered}


def microseconds(seconds: float) -> str:
    value = seconds * 1e6
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def times(ratio: float) -> str:
    if ratio >= 10:
        return f"{ratio:,.0f}×"
    return f"{ratio:.2f}×" if ratio >= 1 else f"{ratio:.3f}×"


def cell(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def markdown_table(
    header: list[str], body: Iterable[list[str]], numbers: bool = True, text: Iterable[str] = ()
) -> Iterator[str]:
    """Return a markdown table; with ``numbers``, every column but the first and the ``text`` ones is aligned right."""
    left = set(text)
    alignments = ("---:" if index and numbers and name not in left else "---" for index, name in enumerate(header))
    yield "| " + " | ".join(header) + " |"
    yield "|" + "|".join(alignments) + "|"
    for line in body:
        yield "| " + " | ".join(line) + " |"


def _is_number(value: object) -> bool:
    return value == "" or (isinstance(value, (int, float)) and not isinstance(value, bool))


def group_table(rows: dict[str, Row]) -> Iterator[str]:
    """Return a group's table: times in µs, ratios to its reference row and to each row's counterpart, extra columns.

    A group of untimed rows has its extra columns only; a column that is not all numbers is aligned left.
    """
    extra = list(dict.fromkeys(key for row in rows.values() for key in row.columns))
    text = [key for key in extra if not all(_is_number(row.columns.get(key, "")) for row in rows.values())]
    if all(row.untimed for row in rows.values()):
        body = ([row.label] + [cell(row.columns.get(key, "")) for key in extra] for row in rows.values())
        return markdown_table(["", *extra], body, text=text)
    reference = next((row for row in rows.values() if row.reference), None)
    has_counterparts = any(row.counterpart for row in rows.values())
    header = ["", "median µs", "min µs", "rounds"]
    header += [f"÷ {reference.label}"] if reference else []
    header += ["÷ torchmetrics counterpart"] if has_counterparts else []
    header += extra

    def line(row: Row) -> list[str]:
        cells = [row.label, microseconds(row.median), microseconds(row.minimum), str(row.rounds)]
        cells += [times(row.median / reference.median)] if reference else []
        if has_counterparts:
            counterpart = rows.get(row.counterpart or "")
            cells.append(f"{times(row.median / counterpart.median)} {counterpart.label}" if counterpart else "")
        return cells + [cell(row.columns.get(key, "")) for key in extra]

    return markdown_table(header, (line(row) for row in rows.values()), text=text)


def ratio(groups: Groups, title: str, numerator: str, denominator: str) -> Optional[float]:
    """Return the ratio of two rows' medians in a group, or ``None`` if either was not measured."""
    rows = groups.get(title, {})
    if numerator not in rows or denominator not in rows:
        return None
    return rows[numerator].median / rows[denominator].median


def verdict(met: Optional[bool]) -> str:
    return "not measured" if met is None else ("yes" if met else "**no**")


FLOOR_TARGET = 4


def forward_targets(groups: Groups) -> Iterator[list[str]]:
    title = group("forward", SCALAR)
    mean = windowed("WindowedMean", WINDOW)
    to_floor = ratio(groups, title, mean, FLOOR)
    rows = groups.get(title, {})
    timed = f" ({microseconds(rows[mean].median)} µs vs {microseconds(rows[FLOOR].median)} µs)" if to_floor else ""
    yield [
        f"`{mean}.forward` on a scalar ≤ {FLOOR_TARGET}× the floor",
        f"{times(to_floor)}{timed}" if to_floor else "",
        verdict(None if to_floor is None else to_floor <= FLOOR_TARGET),
    ]
    speed_up = ratio(groups, title, MEAN_METRIC, mean)
    timed = f" ({microseconds(rows[MEAN_METRIC].median)} µs)" if speed_up else ""
    yield [
        f"`{mean}.forward` on a scalar ≥ 20× faster than `MeanMetric.forward`",
        f"{times(speed_up)} faster{timed}" if speed_up else "",
        verdict(None if speed_up is None else speed_up >= 20),
    ]


SIBLINGS = ("WindowedSum", "EMALoss", "WindowedMax", "WindowedMin")


def sibling_ratios(groups: Groups) -> Iterator[tuple[float, str]]:
    """Yield each sibling's time over WindowedMean's, at the same operation, input and window."""
    for title in (group(operation, inputs) for inputs in (SCALAR, PER_SAMPLE) for operation in OPERATIONS):
        for window in (1, WINDOW):
            for name in SIBLINGS:
                measured = ratio(groups, title, windowed(name, window), windowed("WindowedMean", window))
                if measured is not None:
                    yield measured, f"{windowed(name, window)}, {title}"


def sibling_target(groups: Groups) -> list[str]:
    ratios = sorted(sibling_ratios(groups), reverse=True)
    names = ", ".join(f"`{name}`" for name in SIBLINGS)
    if not ratios:
        return [f"{names} within 1.5× of `WindowedMean`", "", verdict(None)]
    worst, where = ratios[0]
    return [
        f"{names} within 1.5× of `WindowedMean` (same operation, input and window)",
        f"worst {times(worst)} ({where}); {sum(r <= 1.5 for r, _ in ratios)} of {len(ratios)} within",
        verdict(worst <= 1.5),
    ]


def memory_target(groups: Groups) -> list[str]:
    rows = groups.get(MEMORY, {})
    short, long = MEMORY_WINDOWS
    labels = [
        *(partial(windowed, name) for name in ("WindowedMean", "WindowedSum", "EMALoss", "WindowedMax")),
        partial(wrapped, MEAN_METRIC),
    ]
    pairs = [(label(short), label(long)) for label in labels]
    measured = [
        (rows[a].columns[STATE_BYTES], rows[b].columns[STATE_BYTES]) for a, b in pairs if a in rows and b in rows
    ]
    target = f"state memory independent of the window (window {short:,} vs {long:,})"
    if not measured:
        return [target, "", verdict(None)]
    running = [rows.get(windowed("RunningMean", window)) for window in MEMORY_WINDOWS]
    running_bytes = " → ".join(f"{row.columns[STATE_BYTES]:,}" for row in running if row) or "not measured"
    return [
        target,
        f"{sum(a == b for a, b in measured)} of {len(measured)} windowmetrics keep the same state bytes;"
        f" RunningMean: {running_bytes} bytes",
        verdict(all(a == b for a, b in measured)),
    ]


DISPATCH_TARGETS = {SCALAR: 1, PER_SAMPLE: 2}
"""At most this many operators per update that closes no window, by input."""
DISPATCHED_CLASSES = ("WindowedMean", "WindowedSum", "EMALoss", "WindowedMax", "WindowedMin")


def dispatch_target(groups: Groups) -> list[str]:
    """The budget of the one path: per update that closes no window, from the first on, at most 1 operator on a
    scalar loss and 2 on a per-sample loss, and no host read, for every windowmetrics row with the default weight or
    a number as weight; at most 1 host read at a boundary."""
    target = (
        "≤ 1 operator (scalar loss) or 2 (per-sample loss) and no host read per update that closes no window;"
        " ≤ 1 host read at a boundary (WindowedMean, WindowedSum, EMALoss, WindowedMax, WindowedMin; default or"
        " number weight; first update and steady state)"
    )
    measured = [
        (row, DISPATCH_TARGETS[inputs])
        for inputs in (SCALAR, PER_SAMPLE)
        for label, row in groups.get(dispatch_group(inputs), {}).items()
        if label.split("(")[0] in DISPATCHED_CLASSES and "tensor" not in label
    ]
    if not measured:
        return [target, "", verdict(None)]

    def ops(row: Row) -> int:
        return int(max(row.columns[OPS_PER_UPDATE], row.columns[OPS_FIRST_UPDATE]))

    over = [row for row, allowed in measured if ops(row) > allowed]
    worst = {
        inputs: max((ops(row) for row, allowed in measured if allowed == n), default=0)
        for inputs, n in DISPATCH_TARGETS.items()
    }
    reads = max(row.columns[READS_PER_UPDATE] for row, _ in measured)
    boundary_reads = max(row.columns[READS_AT_BOUNDARY] for row, _ in measured)
    return [
        target,
        f"at most {worst[SCALAR]} operator(s) per update on a scalar loss, {worst[PER_SAMPLE]} on a per-sample loss;"
        f" {reads} host reads per update, {boundary_reads} at a boundary; {len(measured)} rows",
        verdict(not over and reads == 0 and boundary_reads <= 1),
    ]


def headline_ratios(groups: Groups) -> Iterator[list[str]]:
    """The ratios that compare windowmetrics with torchmetrics at a glance, at ``WINDOW``."""
    scalar_forward, scalar_update = group("forward", SCALAR), group("update", SCALAR)
    lines = [
        (scalar_forward, windowed("WindowedMean", WINDOW), FLOOR, "the floor"),
        (scalar_forward, MEAN_METRIC, windowed("WindowedMean", WINDOW), "faster"),
        (scalar_update, MEAN_METRIC, windowed("WindowedMean", WINDOW), "faster"),
        (scalar_forward, MAX_METRIC, windowed("WindowedMax", WINDOW), "faster"),
        (scalar_forward, running(MAX_METRIC, WINDOW), windowed("WindowedMax", WINDOW), "faster"),
        (scalar_update, running(MAX_METRIC, WINDOW), windowed("WindowedMax", WINDOW), "faster"),
        (scalar_update, wrapped(MEAN_METRIC, WINDOW), MEAN_METRIC, "merge path"),
        (scalar_update, wrapped(MAX_METRIC, WINDOW), MAX_METRIC, "copy path"),
        (group("update", ACCURACY_INPUTS), wrapped("MulticlassAccuracy", WINDOW), "MulticlassAccuracy", "merge path"),
    ]
    for title, numerator, denominator, kind in lines:
        measured = ratio(groups, title, numerator, denominator)
        if measured is None:
            continue
        if kind == "faster":
            text = f"`{denominator}` is {times(measured)} faster than `{numerator}`"
        elif kind == "the floor":
            text = f"`{numerator}` takes {times(measured)} the time of `{denominator}`"
        else:
            text = f"`{numerator}` takes {times(measured)} the time of `{denominator}` ({kind})"
        yield [title, text]


def targets(groups: Groups) -> Iterator[str]:
    body = [*forward_targets(groups), sibling_target(groups), memory_target(groups), dispatch_target(groups)]
    return markdown_table(["target", "measured", "met"], body, numbers=False)


def machine(results: dict[str, Any]) -> Iterator[str]:
    info = results["machine_info"]
    versions = ", ".join(f"{name} {number}" for name, number in info.get("versions", {}).items())
    commit = results.get("commit_info", {})
    cores, threads = info.get("cpu_count", "?"), info.get("torch_threads", "?")
    yield f"- Machine: {info['cpu'].get('brand_raw', '?')}, {cores} cores, {info['system']}; {threads} torch thread"
    yield f"- Versions: {versions}"
    dirty = " (dirty)" if commit.get("dirty") else ""
    seconds = info.get("suite_seconds", 0)
    yield f"- Run: {results['datetime']}, commit {commit.get('id', '?')[:12]}{dirty}, suite {seconds:.0f} s"


def report(results: dict[str, Any]) -> str:
    groups = read_groups(results["benchmarks"])
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/report.py` from one run of the suite; regenerate it from the repository root with:",
        "",
        f"```\n{COMMAND}\n```",
        "",
        *machine(results),
        "",
        "## Targets",
        "",
        *targets(groups),
        "",
        "## Headline ratios",
        "",
        *markdown_table(["measured", "ratio of medians"], headline_ratios(groups), numbers=False),
        "",
    ]
    for title, rows in groups.items():
        lines += [f"## {title}", "", *group_table(rows), ""]
    return "\n".join([*lines, METHOD])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the JSON written by pytest --benchmark-json")
    parser.add_argument("output", type=Path, help="the markdown file to write")
    arguments = parser.parse_args()
    text = report(json.loads(arguments.results.read_text()))
    arguments.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
