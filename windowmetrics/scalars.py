"""Float64 scalars that stay on the host where they can.

A window's statistics (the sums of values, of weights and of NaN elements, an EMA's numerator and
denominator) are float64 scalars. Where the inputs live on the CPU they are kept as Python floats: reading a
CPU tensor costs no synchronisation, and Python arithmetic is about ten times cheaper than an operation on a
0-dim tensor. Where the inputs live on an accelerator they are 0-dim float64 tensors on that device, so that
nothing ever waits for it. Python's operators mix both kinds freely; :func:`divide` and :func:`where` complete
the set, and :class:`ScalarState` registers such a scalar as a torchmetrics state.
"""

import math
from typing import Protocol, Union, overload

import torch
from torch import Tensor

Scalar = Union[float, Tensor]
"""A float64 scalar: a Python float, or a 0-dim float64 tensor on an accelerator."""

PREFER_HOST = True
"""Keep the scalars of CPU inputs as Python floats. Tests set it to ``False`` to run the accelerators'
representation (0-dim float64 tensors) on machines that have none; results are the same either way."""


def on_host(tensor: Tensor) -> bool:
    """Return whether a scalar computed from ``tensor`` is kept as a Python float."""
    return PREFER_HOST and tensor.is_cpu


def as_tensor(scalar: Scalar, device: torch.device) -> Tensor:
    """Return ``scalar`` as a 0-dim float64 tensor, created on ``device`` if it is a Python float."""
    if isinstance(scalar, Tensor):
        return scalar
    return new_scalar_tensor(scalar, torch.float64, device)


def new_scalar_tensor(number: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Return a 0-dim tensor holding ``number`` rounded once to ``dtype``, created on ``device``.

    The number is passed to a fill kernel: no host-to-device copy, and half the cost of ``torch.tensor``.
    """
    return torch.scalar_tensor(number, dtype=dtype, device=device)


def as_scalar(tensor: Tensor) -> Scalar:
    """Return a one-element tensor as a :data:`Scalar`: a Python float if it is on the CPU."""
    tensor = tensor.detach().to(torch.float64).reshape(())
    return tensor.item() if on_host(tensor) else tensor


def host_value(tensor: Tensor) -> Scalar:
    """Return a one-element float64 tensor as a Python float if :func:`on_host`, else unchanged."""
    return tensor.item() if on_host(tensor) else tensor


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

    @property
    def device(self) -> torch.device: ...


class ScalarState:
    """A metric state that holds one float64 :data:`Scalar` in its metric's ``_scalars`` dict.

    Registered with ``add_state`` like any state: torchmetrics, ``MetricCollection``, ``state_dict()`` and
    ``.to(device)`` read and write it as a 0-dim float64 tensor on the metric's device, while the metric's
    own code reads and replaces the scalar in ``_scalars`` directly, at the cost of a dict access.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, metric: None, owner: type) -> "ScalarState": ...

    @overload
    def __get__(self, metric: _ScalarOwner, owner: type) -> Tensor: ...

    def __get__(self, metric: Union[_ScalarOwner, None], owner: type) -> Union["ScalarState", Tensor]:
        if metric is None:
            return self
        return as_tensor(metric._scalars[self.name], metric.device)

    def __set__(self, metric: _ScalarOwner, value: Tensor) -> None:
        metric._scalars[self.name] = as_scalar(value)
