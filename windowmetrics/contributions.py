"""What one update adds to a window: the sum of value times weight, the sum of weights, the NaN count."""

import math
from typing import Union

import torch
from torch import Tensor

from windowmetrics import scalars
from windowmetrics.nan_strategy import NanStrategy
from windowmetrics.scalars import Scalar, host_value, new_scalar_tensor


def contributions(
    value: Union[float, Tensor], weight: Union[float, Tensor], nans: NanStrategy
) -> tuple[Scalar, Scalar, Scalar]:
    """Return ``(sum of value * weight, sum of weight, number of NaN elements)`` over every element of ``value``.

    ``weight`` is broadcast to ``value``'s shape (which :func:`~windowmetrics.validation.check_weight` has
    checked) and NaN elements are treated as ``nans`` says. Sums are taken in float64 (exact for integer
    values up to 2**53) and returned as :data:`~windowmetrics.scalars.Scalar`: Python floats for CPU inputs,
    tensors on the inputs' device otherwise. Inputs are not kept and no autograd graph is built.

    Example:
        >>> contributions(torch.tensor([1.0, 2.0, float("nan")]), 2.0, NanStrategy("ignore"))
        (6.0, 4.0, 1.0)
    """
    if isinstance(weight, float) and nans.propagates:  # the default, and the common case: one reduction
        if isinstance(value, float):
            return value * weight, weight, 0.0
        if value.dim() == 0 and scalars.PREFER_HOST and value.is_cpu:  # on_host(value), inlined
            return value.item() * weight, weight, 0.0
        if value.requires_grad:
            value = value.detach()
        return host_value(value.sum(dtype=torch.float64)) * weight, weight * value.numel(), 0.0
    if isinstance(value, float) and isinstance(weight, float):
        return _number_contributions(value, weight, nans)
    return _tensor_contributions(value, weight, nans)


def _number_contributions(value: float, weight: float, nans: NanStrategy) -> tuple[float, float, float]:
    if nans.imputes and math.isnan(value):
        value = nans.fill
    elif nans.drops and (math.isnan(value) or math.isnan(weight)):
        return 0.0, 0.0, 1.0
    return value * weight, weight, 0.0


def _tensor_contributions(
    value: Union[float, Tensor], weight: Union[float, Tensor], nans: NanStrategy
) -> tuple[Scalar, Scalar, Scalar]:
    device = value.device if isinstance(value, Tensor) else torch.as_tensor(weight).device
    values = _float64(value, device)
    weights = _float64(weight, device).expand(values.shape)
    nan_count: Scalar = 0.0
    if nans.imputes:
        values = torch.where(torch.isnan(values), nans.fill, values)
    elif nans.drops:
        dropped = torch.isnan(values) | torch.isnan(weights)
        values = torch.where(dropped, 0.0, values)
        weights = torch.where(dropped, 0.0, weights)
        nan_count = host_value(dropped.sum(dtype=torch.float64))
    return host_value((values * weights).sum()), host_value(weights.sum()), nan_count


def _float64(number: Union[float, Tensor], device: torch.device) -> Tensor:
    if isinstance(number, Tensor):
        return number.detach().to(torch.float64)
    return new_scalar_tensor(number, torch.float64, device)
