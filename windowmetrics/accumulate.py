"""Adding one update to a window's sums: of value times weight, of weight, and of NaN elements."""

import math
from typing import Union

import torch
from torch import Tensor

from windowmetrics import scalars
from windowmetrics.nan_strategy import NanStrategy
from windowmetrics.scalars import Scalar, as_tensor

WindowSums = tuple[Scalar, Scalar, Scalar]
"""A window's ``(sum of value * weight, sum of weight, number of NaN elements)``, float64 scalars."""


def add_update(
    sums: WindowSums, value: Union[float, Tensor], weight: Union[float, Tensor], nans: NanStrategy
) -> WindowSums:
    """Return ``sums`` with one update added: every element of ``value`` with its ``weight``.

    ``weight`` is broadcast to ``value``'s shape (which :func:`~windowmetrics.validation.check_weight` has
    checked), and NaN elements are treated as ``nans`` says. Sums are taken in float64 (exact for integer
    values up to 2**53). On the host path (CPU inputs, see :mod:`windowmetrics.scalars`) they are Python
    floats; on the accelerator path the sums that depend on the inputs are tensors on the inputs' device,
    computed without reading the device, and a Python-number weight is summed on the host. Inputs are not
    kept, and no autograd graph is built.

    Example:
        >>> add_update((0.0, 0.0, 0.0), torch.tensor([1.0, 2.0, float("nan")]), 2.0, NanStrategy("ignore"))
        (6.0, 4.0, 1.0)
    """
    if isinstance(value, float):
        if isinstance(weight, float):
            return _add_numbers(sums, value, weight, nans)
        value = torch.scalar_tensor(value, dtype=torch.float64, device=weight.device)
    if scalars.PREFER_HOST and value.is_cpu:  # the host path (scalars.host_path, inlined)
        return _add_on_host(sums, value, weight, nans)
    if value.requires_grad or (isinstance(weight, Tensor) and weight.requires_grad):
        with torch.no_grad():  # detaching would cost an operation on the device; no_grad costs none
            return _add_on_device(sums, value, weight, nans)
    return _add_on_device(sums, value, weight, nans)


def _add_numbers(sums: WindowSums, value: float, weight: float, nans: NanStrategy) -> WindowSums:
    value_sum, weight_sum, nan_count = sums
    if nans.imputes and math.isnan(value):
        value = nans.fill
    elif nans.drops and (math.isnan(value) or math.isnan(weight)):
        return value_sum, weight_sum, nan_count + 1.0
    return value_sum + value * weight, weight_sum + weight, nan_count


def _add_on_host(sums: WindowSums, value: Tensor, weight: Union[float, Tensor], nans: NanStrategy) -> WindowSums:
    value_sum, weight_sum, nan_count = sums
    if isinstance(weight, float) and nans.propagates:  # one reduction (a 0-dim loss is summed by ValueWindow)
        total = value.sum(dtype=torch.float64).item()
        return value_sum + total * weight, weight_sum + weight * value.numel(), nan_count
    values, weights, dropped = _masked(value, weight, nans)
    if nans.drops:
        nan_count = nan_count + dropped.sum(dtype=torch.float64).item()
    return value_sum + (values * weights).sum().item(), weight_sum + weights.sum().item(), nan_count


def _add_on_device(sums: WindowSums, value: Tensor, weight: Union[float, Tensor], nans: NanStrategy) -> WindowSums:
    value_sum, weight_sum, nan_count = sums
    if not value.numel():  # no element: nothing to add, whatever the weight (a NaN one included)
        return sums
    floating = value.is_floating_point()  # integers and bools hold no NaN
    if nans.drops and isinstance(weight, Tensor):
        values, weights, dropped = _masked(value, weight, nans)
        nan_count = _add(nan_count, dropped.sum(dtype=torch.float64), 1.0)
        return _add(value_sum, (values * weights).sum(), 1.0), _add(weight_sum, weights.sum(), 1.0), nan_count
    if nans.drops and isinstance(weight, float):
        if math.isnan(weight):  # every element is dropped
            return value_sum, weight_sum, nan_count + value.numel()
        if floating:
            nan_elements = torch.isnan(value).sum(dtype=torch.float64)
            value_sum = _add(value_sum, torch.nansum(value, dtype=torch.float64), weight)
            weight_sum = _add(weight_sum + weight * value.numel(), nan_elements, -weight)
            return value_sum, weight_sum, _add(nan_count, nan_elements, 1.0)
    if nans.imputes and floating:
        value = torch.nan_to_num(value, nan=nans.fill, posinf=math.inf, neginf=-math.inf)
    if isinstance(weight, float):  # the multiply rides on the add
        term = value if value.dim() == 0 else value.sum(dtype=torch.float64)
        return _add(value_sum, term, weight), weight_sum + weight * value.numel(), nan_count
    products = value.to(torch.float64) * weight  # float64 products, exact for float32 inputs
    term = products if products.dim() == 0 else products.sum()
    weights = weight if weight.dim() == 0 else weight.sum(dtype=torch.float64)
    repeats = value.numel() // max(weight.numel(), 1)  # how often broadcasting repeats each weight
    return _add(value_sum, term, 1.0), _add(weight_sum, weights, repeats), nan_count


def _masked(value: Tensor, weight: Union[float, Tensor], nans: NanStrategy) -> tuple[Tensor, Tensor, Tensor]:
    """Return the values and the weights as float64 tensors of ``value``'s shape, with NaN elements treated.

    The third item marks the elements that ``nans`` drops (a NaN value or weight); it is all false where the
    strategy drops nothing.
    """
    values = value.to(torch.float64)
    weights = as_tensor(weight, value.device) if isinstance(weight, float) else weight.to(torch.float64)
    weights = weights.expand(values.shape)
    if nans.imputes:
        values = torch.where(torch.isnan(values), nans.fill, values)
    if not nans.drops:
        return values, weights, torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    dropped = torch.isnan(values) | torch.isnan(weights)
    return torch.where(dropped, 0.0, values), torch.where(dropped, 0.0, weights), dropped


def _add(total: Scalar, term: Tensor, alpha: float) -> Tensor:
    """Return ``total + alpha * term`` as a float64 tensor: one operation where ``total`` is a tensor."""
    if isinstance(total, Tensor):
        return torch.add(total, term, alpha=alpha)
    if alpha == 1 and term.dtype == torch.float64:
        return torch.add(term, total)
    return torch.add(as_tensor(total, term.device), term, alpha=alpha)
