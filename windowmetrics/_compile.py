"""Keeping a window's update out of the graphs that ``torch.compile`` traces."""

from collections.abc import Callable
from typing import Any

import torch

from windowmetrics._compat import is_dynamo_compiling

__all__ = ["eagerly", "is_dynamo_compiling"]


def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return method(*args, **kwargs)


eagerly: Callable[..., Any] = torch.compiler.disable(_call)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
"""Call ``method(*args, **kwargs)`` outside the graph being traced: ``torch.compile`` breaks the graph here.

A window's position and its boundary decision are Python state, which dynamo would specialise the graph on (a
recompile at every update). ``update`` and ``forward`` therefore run eagerly when they are called from a
compiled function: ``if is_dynamo_compiling(): return eagerly(self.update, ...)``. The check costs about 50 ns
when nothing is compiled, where calling a disabled function at every update would cost about 0.4 µs.
"""
