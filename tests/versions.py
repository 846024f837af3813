"""Skip markers for tests whose expectations differ on the oldest declared torchmetrics and Lightning.

Each one says why: what the old release does differently, never a windowmetrics result that is wrong there.
"""

import lightning
import pytest
import torch
import torchmetrics
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
    ' when it is created under torch.device("meta")',
)
