"""Count the ``torch.distributed`` collectives that a process issues, while still issuing them.

:meth:`CollectiveLog.install` replaces every public collective of ``torch.distributed`` (and of
``torch.distributed.distributed_c10d``, where torch's own helpers look them up) by a wrapper that records the
call, then calls the original. A collective that calls another one (``all_gather_object`` calls
``all_gather``) is recorded once, as the outer call: what the caller asked for.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Optional, TypeVar

import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

COLLECTIVES = (
    "_all_gather_base",
    "_reduce_scatter_base",
    "all_gather",
    "all_gather_coalesced",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_reduce",
    "all_reduce_coalesced",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "batch_isend_irecv",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "irecv",
    "isend",
    "monitored_barrier",
    "recv",
    "recv_object_list",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
    "send_object_list",
)
"""Every function of ``torch.distributed`` that communicates with other processes."""

T = TypeVar("T")


class Collective(NamedTuple):
    """One collective call: the function's name and the label of the process group it ran on."""

    name: str
    group: str


class CollectiveLog:
    """Records the collectives issued in this process during :meth:`during`, once :meth:`install` has run."""

    def __init__(self) -> None:
        self._issued: Optional[list[Collective]] = None  # where the collectives of the current action go
        self._depth = 0
        self._labels: dict[int, str] = {}

    def name_group(self, group: object, label: str) -> None:
        """Record collectives on ``group`` under ``label`` (the default group is ``"world"``)."""
        self._labels[id(group)] = label

    def install(self) -> None:
        """Wrap every collective of ``torch.distributed``; call once per process."""
        for name in COLLECTIVES:
            original = getattr(dist, name, None)
            if original is None:  # not in this torch version
                continue
            wrapper = self._wrap(name, original)
            for module in (dist, c10d):
                if getattr(module, name, None) is original:
                    setattr(module, name, wrapper)

    def during(self, action: Callable[[], T]) -> tuple[T, list[Collective]]:
        """Return what ``action()`` returns and the collectives it issued."""
        issued: list[Collective] = []
        self._issued = issued
        try:
            result = action()
        finally:
            self._issued = None
        return result, issued

    def _label(self, group: object) -> str:
        if group is None or group is dist.group.WORLD:
            return "world"
        return self._labels.get(id(group), "unnamed group")

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(original)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._issued is not None and self._depth == 0:
                group = signature.bind_partial(*args, **kwargs).arguments.get("group")
                self._issued.append(Collective(name, self._label(group)))
            self._depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1

        return wrapper
