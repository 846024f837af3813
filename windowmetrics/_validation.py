"""Checks of constructor arguments and update inputs, each raising at once with a message that names them.

Wrong types raise ``TypeError`` and wrong values ``ValueError``; a ``bool`` is never taken for a number.
"""

import numbers
from typing import Union

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection


def describe(value: object) -> str:
    """Return a short description of ``value`` for an error message: its repr and its type."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def check_window(window: object) -> int:
    """Return ``window`` as an ``int`` if it is an integer >= 1.

    Raises:
        TypeError: If ``window`` is not an integer (a ``bool`` is not).
        ValueError: If ``window`` is smaller than 1.
    """
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise TypeError(f"`window` must be an int >= 1, got {describe(window)}")
    if window < 1:
        raise ValueError(f"`window` must be an int >= 1, got {window}")
    return int(window)


def check_flag(name: str, flag: object) -> bool:
    """Return ``flag`` if it is a ``bool``.

    Raises:
        TypeError: If ``flag`` is not a ``bool`` (an int is not).
    """
    if not isinstance(flag, bool):
        raise TypeError(f"`{name}` must be a bool, got {describe(flag)}")
    return flag


def check_decay(decay: object) -> float:
    """Return ``decay`` as a ``float`` if it is a real number with ``0 <= decay < 1``.

    Raises:
        TypeError: If ``decay`` is not a real number (a ``bool`` is not).
        ValueError: If ``decay`` is NaN or outside ``[0, 1)``.
    """
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
        raise TypeError(f"`decay` must be a float with 0 <= decay < 1, got {describe(decay)}")
    value = float(decay)
    if not 0 <= value < 1:  # also rejects NaN
        raise ValueError(f"`decay` must be a float with 0 <= decay < 1, got {value}")
    return value


def check_metric(metric: object) -> Metric:
    """Return ``metric`` if it is a torchmetrics ``Metric``.

    Raises:
        TypeError: If ``metric`` is not a ``Metric``; a ``MetricCollection`` is not one.
    """
    if isinstance(metric, MetricCollection):
        raise TypeError(
            "`metric` must be a torchmetrics Metric, got a MetricCollection: wrap each of its metrics instead"
        )
    if not isinstance(metric, Metric):
        raise TypeError(f"`metric` must be a torchmetrics Metric, got {describe(metric)}")
    return metric


def check_value(value: object, device: torch.device) -> Union[float, Tensor]:
    """Return ``value`` as a Python float, or as the tensor it is if it is real-valued and on ``device``.

    Raises:
        TypeError: If ``value`` is neither a real number nor a tensor, or is a complex tensor.
        ValueError: If ``value`` is a tensor on another device than the metric.
    """
    if isinstance(value, Tensor):
        if value.dtype.is_complex or value.device != device:  # the checks of _checked_tensor, inlined: the hot path
            return _checked_tensor("value", value, device)
        return value
    if isinstance(value, float):  # checked before numbers.Real, an ABC check that costs ten times more
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`value` must be a real number or a real-valued tensor, got {describe(value)}")
    return float(value)


def check_weight(weight: object, value: Union[float, Tensor], device: torch.device) -> Union[float, Tensor]:
    """Return ``weight`` as a Python float, or as the tensor it is if it broadcasts to ``value``'s shape.

    Raises:
        TypeError: If ``weight`` is neither a real number nor a tensor, or is a complex tensor.
        ValueError: If ``weight`` is a tensor on another device than the metric, or does not broadcast to
            the shape of ``value``.
    """
    if isinstance(weight, float):  # the default; checked first, as numbers.Real is a slow ABC check
        return weight
    if isinstance(weight, Tensor):
        _checked_tensor("weight", weight, device)
        value_shape = value.shape if isinstance(value, Tensor) else torch.Size()
        try:
            broadcast = torch.broadcast_shapes(value_shape, weight.shape)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        except RuntimeError:
            broadcast = None
        if broadcast != value_shape:
            raise ValueError(
                f"`weight` of shape {tuple(weight.shape)} does not broadcast to `value` of shape {tuple(value_shape)}"
            )
        return weight
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise TypeError(f"`weight` must be a real number or a real-valued tensor, got {describe(weight)}")
    return float(weight)


def _checked_tensor(name: str, tensor: Tensor, device: torch.device) -> Tensor:
    if tensor.dtype.is_complex:
        raise TypeError(f"`{name}` must be real-valued, got {describe(tensor)}")
    if tensor.device != device:
        raise ValueError(
            f"`{name}` is on {tensor.device} but the metric is on {device}: move the metric with `.to(device)`"
        )
    return tensor
