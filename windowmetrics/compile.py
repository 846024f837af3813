"""Keeping a window's update out of the graphs that ``torch.compile`` traces."""

from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch
from torch.compiler import is_dynamo_compiling

__all__ = ["eagerly", "is_dynamo_compiling"]

Result = TypeVar("Result")


def eagerly(method: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """Call ``method`` outside the graph being traced: ``torch.compile`` breaks the graph here, once per call.

    A window's position and its boundary decision are Python state, which dynamo would specialise the graph
    on (a recompile at every update). ``update`` and ``forward`` therefore run eagerly when they are called
    from a compiled function: ``if is_dynamo_compiling(): return eagerly(self.update, ...)`` (the check costs
    about 50 ns when nothing is compiled; calling a disabled function always would cost about 0.4 µs).
    """
    return cast(Result, _call_outside_the_graph(method, *args, **kwargs))


def _call(method: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    return method(*args, **kwargs)


_call_outside_the_graph = torch.compiler.disable(_call)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
