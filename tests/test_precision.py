"""Float64 accumulation, one rounding to the default dtype, integer and bool inputs, autograd."""

import pytest
import torch

from windowmetrics import EMALoss, WindowedMean, WindowedSum
from windowmetrics._weighted_sums import WeightedSums

BIG = 2**53 - 2**30  # far above float32's 2**24: float32 holds it, but not its sums with small integers


@pytest.mark.usefixtures("float64_default")
def test_integer_sums_are_exact_up_to_2_to_the_53_with_float64_default() -> None:
    metric = WindowedSum(window=4)
    for value in (torch.tensor(BIG), 2**28, torch.tensor([2**28, 2**28], dtype=torch.int32), torch.tensor(2**28)):
        result = metric(value)
    assert result is not None
    assert result.dtype == torch.float64
    assert int(result.item()) == 2**53


@pytest.mark.usefixtures("float64_default")
def test_integer_mean_is_exact_with_float64_default() -> None:
    metric = WindowedMean(window=3)
    for value in (BIG + 1, BIG + 3, torch.tensor([BIG + 5, BIG + 7])):
        result = metric(value)
    assert result is not None
    assert int(result.item()) == BIG + 4


def test_the_exact_sum_is_rounded_once_to_float32() -> None:
    values = [2**25, 1, 1, 1, 1]  # float32 accumulation loses every 1; the exact sum 2**25 + 4 is a float32
    metric = WindowedSum(window=len(values))
    naive = torch.zeros(())
    for value in values:
        result = metric(torch.tensor(float(value)))
        naive += value
    assert result is not None
    assert result.dtype == torch.float32
    assert result == torch.tensor(2**25 + 4, dtype=torch.float32)
    assert naive != result  # what a float32 accumulator would have said


def test_result_dtype_is_the_default_at_the_time_of_the_call() -> None:
    metric = WindowedSum(window=2)
    metric.update(torch.tensor(2**30, dtype=torch.int64))
    closed = metric(1)
    assert closed is not None
    assert closed.dtype == torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert metric.compute().dtype == torch.float64
        assert int(metric.compute().item()) == 2**30 + 1  # the float32 rounding above did not stick
    finally:
        torch.set_default_dtype(previous)


def test_bool_and_integer_tensors_are_cast() -> None:
    metric = WindowedMean(window=2)
    metric.update(torch.tensor([True, False, True, True]))
    assert metric(torch.tensor([2, 0], dtype=torch.uint8), weight=torch.tensor([1, 3])) == torch.tensor(5 / 8)


@pytest.mark.parametrize("metric_class", [WindowedMean, WindowedSum, EMALoss])
@pytest.mark.parametrize("nan_strategy", ["disable", "ignore"])
def test_inputs_that_require_grad_leave_no_graph(metric_class: type, nan_strategy: str) -> None:
    metric: WeightedSums = metric_class(window=2, nan_strategy=nan_strategy)
    parameter = torch.ones(3, requires_grad=True)
    losses = [parameter * 2, (parameter**2).sum(), parameter[0] * 3]
    weights = [torch.ones(3, requires_grad=True), 2.0, torch.tensor(1.5, requires_grad=True)]
    outputs = []
    for loss, weight in zip(losses, weights, strict=True):
        outputs.append(metric(loss) if isinstance(metric, WindowedSum) else metric(loss, weight))
    outputs.append(metric.compute())
    metric.persistent(True)
    tensors = [output for output in outputs if output is not None] + list(metric.state_dict().values())
    tensors += [getattr(metric, name) for name in metric._defaults]
    assert all(not tensor.requires_grad and tensor.grad_fn is None for tensor in tensors)
