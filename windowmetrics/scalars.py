"""Float64 scalars that stay on the host where they can, registered as torchmetrics states.

A window's statistics (the sums of values, of weights and of NaN elements, an EMA's numerator and
denominator, the latest window value) are float64 scalars. Two representations exist:

- the *host path*: where the inputs live on the CPU, every scalar is a Python float. Reading a CPU tensor
  costs no synchronisation, and Python arithmetic is about ten times cheaper than an operation on a 0-dim
  tensor;
- the *accelerator path*: where the inputs live on an accelerator, a scalar that depends on the inputs is a
  0-dim float64 tensor on that device, so that no update waits for the device. A scalar that the host knows
  without reading the device (the sum of Python-number weights, say) stays a Python float even there.

Python's operators mix both kinds freely; :func:`divide` and :func:`where` complete the set, and
:class:`ScalarState` registers such a scalar as a torchmetrics state.

:data:`PREFER_HOST` is the one switch between the two: set it to ``False`` to run the accelerator path on
CPU tensors, as the tests and the benchmarks do on machines without an accelerator.
"""

import math
from typing import Protocol, Union, overload

import torch
from torch import Tensor

Scalar = Union[float, Tensor]
"""A float64 scalar: a Python float, or a 0-dim float64 tensor on the inputs' device."""

PREFER_HOST = True
"""Keep the scalars of CPU inputs as Python floats (the host path). ``False`` makes CPU inputs take the
accelerator path (0-dim float64 tensors), so that it can be tested and measured without an accelerator;
results are the same either way."""


def as_tensor(scalar: Scalar, device: torch.device) -> Tensor:
    """Return ``scalar`` as a 0-dim float64 tensor, created on ``device`` if it is a Python float."""
    if isinstance(scalar, Tensor):
        return scalar
    return torch.scalar_tensor(scalar, dtype=torch.float64, device=device)


def host_path(device: torch.device) -> bool:
    """Return whether a metric on ``device`` keeps its scalars as Python floats (the host path)."""
    return PREFER_HOST and device.type == "cpu"


def place(scalar: Scalar, device: torch.device, prefer_float: bool = False) -> Scalar:
    """Return ``scalar`` in the representation of a metric on ``device``, without reading an accelerator.

    On the host path a Python float. On the accelerator path a 0-dim float64 tensor on ``device``; with
    ``prefer_float``, a Python float stays one, and so does a tensor on the CPU (reading it costs nothing).
    A tensor without data (on the ``meta`` device) stays a tensor.
    """
    if isinstance(scalar, Tensor):
        if scalar.is_meta:
            return scalar
        if host_path(device) or (prefer_float and scalar.is_cpu):
            return scalar.item()
        return scalar.detach().to(device=device, dtype=torch.float64).reshape(())
    if host_path(device) or prefer_float:
        return scalar
    return as_tensor(scalar, device)


def divide(numerator: Scalar, denominator: Scalar) -> Scalar:
    """Return ``numerator / denominator`` with IEEE 754 semantics, for Python floats too.

    Python raises ``ZeroDivisionError`` where a tensor division gives ``inf`` or ``nan``; both kinds of
    scalar must give the same answer.

    Example:
        >>> divide(1.0, 0.0), divide(-1.0, 0.0), divide(0.0, 0.0)
        (inf, -inf, nan)
    """
    if isinstance(numerator, Tensor) or isinstance(denominator, Tensor) or denominator != 0:
        return numerator / denominator
    if numerator == 0 or math.isnan(numerator):
        return math.nan
    return math.copysign(math.inf, numerator) * math.copysign(1.0, denominator)


def where(condition: Union[bool, Tensor], if_true: Scalar, if_false: Scalar) -> Scalar:
    """Return ``if_true`` where ``condition`` holds, else ``if_false``, without reading a device tensor.

    Example:
        >>> where(True, 1.0, 2.0)
        1.0
        >>> where(torch.tensor(False), 1.0, torch.tensor(2.0, dtype=torch.float64))
        tensor(2., dtype=torch.float64)
    """
    if isinstance(condition, Tensor):
        device = condition.device
        return torch.where(condition, as_tensor(if_true, device), as_tensor(if_false, device))
    return if_true if condition else if_false


class _ScalarOwner(Protocol):
    _scalars: dict[str, Scalar]
    _scalar_tensors: dict[str, tuple[float, Tensor]]
    _device: torch.device


class ScalarState:
    """A metric state that holds one float64 :data:`Scalar` in its metric's ``_scalars`` dict.

    Registered with ``add_state`` like any state. torchmetrics, PyTorch and user code read and write it as a
    0-dim float64 tensor on the metric's device (``state_dict()``, ``sync()``, ``.to(device)``, hashing),
    while the metric's own update path reads and replaces the scalar in ``_scalars`` directly, at the cost
    of a dict access. A Python float is turned into a tensor when it is first read, and the same tensor is
    returned until the scalar changes, so that two reads without an update in between are the same object
    (a metric's ``__hash__`` depends on it).

    Args:
        prefer_float: keep the scalar as a Python float on the accelerator path too, where that costs no read
            of the device (see :func:`place`): for sums that updates can keep on the host, such as the sum of
            Python-number weights.
    """

    def __init__(self, prefer_float: bool = False) -> None:
        self.prefer_float = prefer_float

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, metric: None, owner: type) -> "ScalarState": ...

    @overload
    def __get__(self, metric: _ScalarOwner, owner: type) -> Tensor: ...

    def __get__(self, metric: Union[_ScalarOwner, None], owner: type) -> Union["ScalarState", Tensor]:
        if metric is None:
            return self
        scalar = metric._scalars[self.name]
        if isinstance(scalar, Tensor):
            return scalar
        made = metric._scalar_tensors.get(self.name)
        if made is None or made[0] is not scalar or made[1].device != metric._device:
            made = (scalar, as_tensor(scalar, metric._device))
            metric._scalar_tensors[self.name] = made
        return made[1]

    def __set__(self, metric: _ScalarOwner, value: Tensor) -> None:
        metric._scalars[self.name] = place(value, metric._device, self.prefer_float)

    def move(self, metric: _ScalarOwner) -> None:
        """Put the scalar in the representation of the metric's device, after the metric has moved there."""
        metric._scalars[self.name] = place(metric._scalars[self.name], metric._device, self.prefer_float)
