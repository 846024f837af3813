"""Benchmark settings shared by every file in bench/, and what they add to pytest-benchmark's JSON.

Every benchmark runs on one thread. Measurements that pytest-benchmark's fixture cannot take (a Lightning step is
timed inside ``Trainer.fit``) are handed to :func:`record_rounds` and join the JSON's benchmarks with the same
fields, so that ``bench/report.py`` reads every row alike. The machine information gains the versions the report
names and the suite's wall time so far.
"""

import os
import platform
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import pytest
import torch
from pytest_benchmark.stats import Stats

RecordRounds = Callable[[str, list[float], dict[str, object]], None]

_RECORDED = pytest.StashKey[list[dict[str, Any]]]()
_STARTED = pytest.StashKey[float]()
_DISTRIBUTIONS = ("torch", "torchmetrics", "lightning", "windowmetrics", "pytest-benchmark")


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)
    config.stash[_RECORDED] = []
    config.stash[_STARTED] = time.perf_counter()


@pytest.fixture
def record_rounds(request: pytest.FixtureRequest) -> RecordRounds:
    """Return a function that records a benchmark measured by the test itself: one duration in seconds per round."""

    def record(group: str, durations: list[float], extra_info: dict[str, object]) -> None:
        stats: Any = Stats()  # type: ignore[no-untyped-call]  # pytest-benchmark has no annotations
        for duration in durations:
            stats.update(duration)
        request.config.stash[_RECORDED].append(
            {
                "group": group,
                "name": request.node.name,
                "fullname": request.node.nodeid,
                "params": None,
                "param": None,
                "extra_info": extra_info,
                "options": {"timer": "time.perf_counter", "measured_by": "the test"},
                "stats": {**stats.as_dict(), "data": durations, "iterations": 1},
            }
        )

    return record


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["versions"] = {"python": platform.python_version()} | {name: version(name) for name in _DISTRIBUTIONS}


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list[Any], output_json: dict[str, Any]) -> None:
    output_json["benchmarks"].extend(config.stash[_RECORDED])
    output_json["machine_info"]["suite_seconds"] = time.perf_counter() - config.stash[_STARTED]
