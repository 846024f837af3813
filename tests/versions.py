"""Skip markers for tests whose expectations differ on the oldest declared PyTorch, torchmetrics and Lightning.

Each one says why: what the old release does differently, never a windowmetrics result that is wrong there. Where
a release lacks a feature, the marker tries the feature rather than reading a version number.
"""

from typing import Optional, cast

import lightning
import pytest
import torch
import torch._dynamo
import torchmetrics
from torch import Tensor
from torch._dynamo.utils import counters
from torchmetrics import SumMetric


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _sum_metric_is_created_on_meta() -> bool:
    with torch.device("meta"):
        model = SumMetric()
    return model.device.type == "meta" and bool(model.sum_value.is_meta)


OLD_LIGHTNING_RESUMES = pytest.mark.skipif(
    _minor(lightning.__version__) < (2, 5),
    reason="Lightning < 2.5 restarts its loops differently after a resume (the step it logs, which validation runs"
    " it repeats or skips, how many epochs and which batches it trains), so a resumed run's whole log differs from"
    " the uninterrupted run's as Lightning >= 2.5 writes it; the windows' values are the same",
)

NO_DISABLED_NAN_STRATEGY = pytest.mark.skipif(
    _minor(torchmetrics.__version__) < (1, 6),
    reason='torchmetrics < 1.6 has no nan_strategy="disable" for MeanMetric and SumMetric, which this test wraps',
)

SUM_METRIC_NOT_ON_META = pytest.mark.skipif(
    not _sum_metric_is_created_on_meta(),
    reason="this torchmetrics gives its own SumMetric, the model these tests compare with, the CPU as its device"
    ' when it is created under torch.device("meta") (torchmetrics 1.3 does; so does any torchmetrics on a torch'
    " whose get_default_device() ignores that block, as 2.7's does)",
)


def _dynamo_traces_typing_subscripts() -> bool:
    """Whether dynamo traces ``Optional[Tensor]`` (as ``forward``'s ``cast`` evaluates it) without a graph break."""

    def step(value: Tensor) -> Optional[Tensor]:
        return cast(Optional[Tensor], value + 1)

    torch._dynamo.reset()
    counters.clear()
    try:
        torch.compile(step, backend="eager")(torch.zeros(()))
        return not counters["graph_break"]
    finally:
        torch._dynamo.reset()
        counters.clear()


DYNAMO_BREAKS_ON_TYPING = pytest.mark.skipif(
    not _dynamo_traces_typing_subscripts(),
    reason="this torch's dynamo breaks the graph at typing's Optional[Tensor] (torch 2.1 does), which forward"
    " evaluates in its cast after the eager update: a compiled forward breaks the graph once more than the count"
    " this test holds it to; it neither recompiles nor returns another value (test_a_compiled_step_never_recompiles)",
)


def _cpu_trains_in(dtype: torch.dtype) -> bool:
    """Whether this torch's CPU kernels train the precision tests' model (a Linear layer, an MSE loss) in ``dtype``."""
    net = torch.nn.Linear(2, 1).to(dtype)
    try:
        torch.nn.functional.mse_loss(net(torch.ones(3, 2, dtype=dtype)), torch.zeros(3, 1, dtype=dtype)).backward()  # type: ignore[no-untyped-call]
    except RuntimeError:  # "... not implemented for 'Half'"
        return False
    return True


_HALF_PRECISIONS = {"bf16-true": torch.bfloat16, "16-true": torch.float16}


def cpu_lacks_precision(*precisions: str) -> list[pytest.MarkDecorator]:
    """Skip markers for a test that trains on the CPU under each of Lightning's ``precisions`` this torch cannot.

    torch 2.1 has no CPU kernel for a float16 ``Linear`` layer (``addmm``) nor a bfloat16 MSE loss; a GPU has them.
    """
    return [
        pytest.mark.skip(
            reason=f'this torch cannot train on the CPU in {_HALF_PRECISIONS[precision]} (precision="{precision}"):'
            " it has no CPU kernel for a Linear layer or an MSE loss in that dtype, which the test's model uses"
        )
        for precision in precisions
        if precision in _HALF_PRECISIONS and not _cpu_trains_in(_HALF_PRECISIONS[precision])
    ]
