"""Brute-force reference values, computed from the raw inputs without windowmetrics' code.

A "call" is the ``(value, weight)`` pair given to one ``update``/``forward``. Sums are exactly rounded
(``math.fsum``) over the flattened, broadcast elements, so the reference does not share the metrics'
summation order or accumulators.
"""

import math
import random
from collections.abc import Callable, Sequence
from typing import Optional, Union

import torch

Number = Union[float, int, torch.Tensor]
Call = tuple[Number, Number]


def elements(call: Call) -> tuple[list[float], list[float]]:
    """Return a call's values and their weights as float64 lists, the weight broadcast to the value's shape."""
    value, weight = call
    values = torch.as_tensor(value).to(torch.float64)
    weights = torch.as_tensor(weight).to(torch.float64).expand(values.shape)
    return values.flatten().tolist(), weights.flatten().tolist()


def ieee_divide(numerator: float, denominator: float) -> float:
    if denominator != 0 or math.isnan(denominator):
        return numerator / denominator
    if numerator == 0 or math.isnan(numerator):
        return math.nan
    return math.copysign(math.inf, numerator) * math.copysign(1.0, denominator)


def weighted_sums(calls: Sequence[Call], nan_strategy: object = "disable") -> tuple[float, float, int]:
    """Return (sum of value*weight, sum of weight, NaN elements) over the calls, treating NaN as told."""
    products: list[float] = []
    weights: list[float] = []
    nans = 0
    for call in calls:
        for value, weight in zip(*elements(call), strict=True):
            if nan_strategy != "disable" and (math.isnan(value) or math.isnan(weight)):
                if isinstance(nan_strategy, float):
                    value = nan_strategy if math.isnan(value) else value
                else:
                    nans += 1
                    continue
            products.append(value * weight)
            weights.append(weight)
    return _fsum(products), _fsum(weights), nans


def _fsum(numbers: list[float]) -> float:
    # math.fsum raises on inf - inf where IEEE addition gives NaN
    try:
        return math.fsum(numbers)
    except (OverflowError, ValueError):
        return sum(numbers)


def mean_of(calls: Sequence[Call], nan_strategy: object = "disable") -> float:
    value_sum, weight_sum, _ = weighted_sums(calls, nan_strategy)
    return ieee_divide(value_sum, weight_sum)


def sum_of(calls: Sequence[Call], nan_strategy: object = "disable") -> float:
    return weighted_sums(calls, nan_strategy)[0]


def ema_of(windows: Sequence[Sequence[Call]], decay: float, nan_strategy: object = "disable") -> float:
    """The bias-corrected EMA after the given windows, from its definition as a weighted average of window means.

    A window without weight leaves the average as it was: it neither contributes nor ages the others.
    """
    means = []
    for window in windows:
        value_sum, weight_sum, _ = weighted_sums(window, nan_strategy)
        if weight_sum != 0:
            means.append(ieee_divide(value_sum, weight_sum))
    ages = range(len(means) - 1, -1, -1)
    numerator = sum(decay**age * (1 - decay) * mean for age, mean in zip(ages, means, strict=True))
    denominator = sum(decay**age * (1 - decay) for age in ages)
    return ieee_divide(numerator, denominator)


def expected_series(
    calls: Sequence[Call],
    window: int,
    value_of: Callable[[list[list[Call]]], float],
    aggregate_of: Optional[Callable[[list[Call]], float]] = None,
) -> tuple[list[Optional[float]], list[float]]:
    """Return, after each call, what ``forward`` returns and what ``compute`` returns.

    ``value_of(windows)`` gives the value after the given windows (the last one possibly partial);
    ``aggregate_of(calls)`` gives ``compute()``, the value of every call so far (``None``: ``compute()`` is the
    latest window value, or before the first window the value of the calls so far, as for ``EMALoss``).
    """
    forwards: list[Optional[float]] = []
    computes: list[float] = []
    for count in range(1, len(calls) + 1):
        completed = count // window
        windows = [list(calls[i * window : (i + 1) * window]) for i in range(completed)]
        latest = value_of(windows) if completed else None
        forwards.append(latest)
        if aggregate_of is not None:
            computes.append(aggregate_of(list(calls[:count])))
        else:
            computes.append(latest if latest is not None else value_of([list(calls[:count])]))
    return forwards, computes


def random_calls(rng: random.Random, count: int, weighted: bool = True) -> list[Call]:
    """Random calls: Python numbers and tensors of random shapes and dtypes, with random weights."""
    calls: list[Call] = []
    for _ in range(count):
        kind = rng.choice(["float", "int", "scalar", "vector", "matrix", "empty", "integer tensor", "bool"])
        value: Number
        if kind == "float":
            value = rng.uniform(-10, 10)
        elif kind == "int":
            value = rng.randint(-5, 5)
        elif kind == "scalar":
            value = torch.tensor(rng.uniform(-10, 10))
        elif kind == "vector":
            value = torch.tensor([rng.uniform(-10, 10) for _ in range(rng.randint(1, 6))])
        elif kind == "matrix":
            value = torch.tensor([[rng.uniform(-10, 10) for _ in range(3)] for _ in range(2)], dtype=torch.float64)
        elif kind == "empty":
            value = torch.zeros(0)
        elif kind == "integer tensor":
            value = torch.tensor([rng.randint(-100, 100) for _ in range(4)])
        else:
            value = torch.tensor([rng.random() < 0.5 for _ in range(3)])
        calls.append((value, _random_weight(rng, value) if weighted else 1.0))
    return calls


def _random_weight(rng: random.Random, value: Number) -> Number:
    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
    kind = rng.choice(["default", "number", "same shape", "scalar tensor", "broadcast"])
    if kind == "default":
        return 1.0
    if kind == "number":
        return rng.choice([rng.randint(1, 64), rng.uniform(0.1, 5.0)])
    if kind == "scalar tensor" or not shape:
        return torch.tensor(rng.uniform(0.1, 5.0))
    if kind == "same shape":
        return torch.rand(shape, dtype=torch.float64) + 0.1
    return torch.rand(shape[-1:]) + 0.1  # broadcasts along the leading dimensions
