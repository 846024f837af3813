"""Count the operators that torch dispatches, and the reads of tensor values by the host, in a block of code.

What costs an update on an accelerator is not Python but kernel launches and host synchronisations.
:class:`DispatchCounter` is a ``TorchDispatchMode``: used as a context manager, it records every operator that
reaches torch's dispatcher (one kernel launch each on a GPU, views and metadata operators aside) and every read
of a tensor's value by the host (a synchronisation with the device on a GPU)::

    with DispatchCounter() as counter:
        metric.update(loss)
    counter.ops, counter.host_reads

The package runs one code path on every device, so what an update dispatches on the CPU is what it dispatches on
an accelerator; every host read is counted as the synchronisation it would be on the device (nothing here knows
which CPU tensors would be accelerator tensors), and on an accelerator a copy of a device tensor to the CPU is one
too. Used by tests/test_dispatch_counts.py, tests/test_cuda.py and bench/test_dispatch.py.

A Python number written into a tensor (``state[0] = 0.0``, ``torch.tensor(0.5, device=...)``) is a CPU tensor that
torch copies to the device: on CUDA a blocking copy from pageable memory, which synchronises the host with the
device (``cudaStreamSynchronize``). On the CPU it dispatches ``lift_fresh`` (the number made a tensor) and then a
copy of it; the counter records such a copy as the synchronisation it would be on an accelerator. A copy of a CPU
tensor to an accelerator with ``non_blocking=False`` is recorded as one too.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Optional

import torch
from torch._ops import OpOverload
from torch.utils._python_dispatch import TorchDispatchMode

HOST_READ_OPS = frozenset(
    {
        "_local_scalar_dense",  # .item(), float(t), int(t), bool(t), `if t:`
        "equal",  # torch.equal returns a Python bool
        "is_nonzero",  # bool(t) (normally decomposed into _local_scalar_dense before it reaches the mode)
        "item",  # (likewise)
        # Operators whose output shape depends on the values: a GPU waits for the values to size the output.
        "nonzero",
        "masked_select",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
    }
)
"""Operators that read a tensor's value on the host: each is a synchronisation with an accelerator."""

HOST_READ_METHODS = ("tolist", "numpy")
"""Tensor methods that read values on the host without dispatching any operator for a CPU tensor (for an
accelerator tensor they dispatch a copy to the CPU, counted by the mode instead)."""

COPY_OPS = frozenset({"_to_copy", "copy_"})

PYTHON_NUMBER_COPY_OPS = frozenset({"_to_copy", "copy_", "index_put_", "index_put", "_index_put_impl_"})
"""Operators that, given a tensor made from a Python number (a ``lift_fresh`` output), copy it into a tensor: on an
accelerator, a blocking host-to-device copy."""


class DispatchCounter(TorchDispatchMode):
    """Record the operators dispatched and the host reads of tensor values while the context is active.

    Attributes:
        ops: the name of every operator dispatched, in order: the overload packet's name (``"add_"``) for
            ``aten`` operators, ``"namespace.name"`` otherwise (``"c10d.allgather_"`` for a collective).
        host_reads: the name of every host-device synchronisation, in order: an operator of
            :data:`HOST_READ_OPS`, a copy from a non-CPU device to the CPU, ``"Tensor.tolist"`` /
            ``"Tensor.numpy"``, or a blocking copy to the device (``"copy_ of a Python number"`` where an operator
            of :data:`PYTHON_NUMBER_COPY_OPS` copies a ``lift_fresh`` output; ``"copy_ to the device"`` for a CPU
            tensor copied to an accelerator). A read that dispatches operators is recorded once, as the outermost
            call.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # torch's TorchDispatchMode is unannotated
        self.ops: list[str] = []
        self.host_reads: list[str] = []
        self._reading = 0  # depth of Tensor.tolist/numpy calls in progress
        self._numbers: list[torch.Tensor] = []  # the tensors that lift_fresh made from Python numbers
        self._saved_methods: dict[str, Optional[Callable[..., Any]]] = {}

    @property
    def op_count(self) -> int:
        """The number of operators dispatched."""
        return len(self.ops)

    @property
    def sync_count(self) -> int:
        """The number of host reads: host-device synchronisations on an accelerator."""
        return len(self.host_reads)

    def __enter__(self) -> "DispatchCounter":
        for name in HOST_READ_METHODS:
            self._saved_methods[name] = vars(torch.Tensor).get(name)  # None: inherited from torch._C.TensorBase
            setattr(torch.Tensor, name, self._counted_method(name, getattr(torch.Tensor, name)))
        super().__enter__()  # type: ignore[no-untyped-call]  # (likewise)
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        try:
            super().__exit__(exc_type, exc_value, traceback)  # type: ignore[no-untyped-call]  # (likewise)
        finally:
            for name, original in self._saved_methods.items():
                if original is None:
                    delattr(torch.Tensor, name)
                else:
                    setattr(torch.Tensor, name, original)
            self._saved_methods.clear()

    def __torch_dispatch__(
        self,
        func: OpOverload,
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: Optional[Mapping[str, Any]] = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if func.namespace != "aten":
            name = f"{func.namespace}.{name}"
        self.ops.append(name)
        if not self._reading:
            if name in HOST_READ_OPS or _copies_to_host(name, args, kwargs):
                self.host_reads.append(name)
            elif name in PYTHON_NUMBER_COPY_OPS and self._copies_a_python_number(args, kwargs):
                self.host_reads.append(f"{name} of a Python number")
            elif _copies_to_device(name, args, kwargs):
                self.host_reads.append(f"{name} to the device")
        result = func(*args, **kwargs)
        if name == "lift_fresh" and isinstance(result, torch.Tensor):
            self._numbers.append(result)
        return result

    def _copies_a_python_number(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
        """Return whether an operator's inputs include a tensor that ``lift_fresh`` made from a Python number."""
        inputs = [*args, *kwargs.values()]
        return any(item is number for item in inputs for number in self._numbers)

    def _counted_method(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self._reading:
                self.host_reads.append(f"Tensor.{name}")
            self._reading += 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self._reading -= 1

        return counted


def _copies_to_host(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Return whether an operator copies a non-CPU tensor to the CPU (``t.cpu()``, ``t.to("cpu")``, ``copy_``)."""
    if name not in COPY_OPS or not args or not isinstance(args[0], torch.Tensor):
        return False
    if name == "copy_":
        source = args[1] if len(args) > 1 else kwargs.get("src")
        return isinstance(source, torch.Tensor) and not source.is_cpu and args[0].is_cpu
    device = kwargs.get("device")
    return not args[0].is_cpu and device is not None and torch.device(device).type == "cpu"


def _copies_to_device(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Return whether an operator copies a CPU tensor to another device and waits for it (``non_blocking=False``)."""
    if name not in COPY_OPS or not args or not isinstance(args[0], torch.Tensor):
        return False
    if kwargs.get("non_blocking") or (name == "copy_" and len(args) > 2 and args[2]):
        return False
    if name == "copy_":
        source = args[1] if len(args) > 1 else kwargs.get("src")
        return isinstance(source, torch.Tensor) and source.is_cpu and not args[0].is_cpu
    device = kwargs.get("device")
    return args[0].is_cpu and device is not None and torch.device(device).type != "cpu"


def count(action: Callable[[], object]) -> DispatchCounter:
    """Return the counts of one call of ``action``."""
    with DispatchCounter() as counter:
        action()
    return counter
