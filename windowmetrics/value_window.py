"""Windows of weighted sums of values: the accumulators that WindowedMean, WindowedSum and EMALoss share."""

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from windowmetrics.contributions import contributions
from windowmetrics.distributed import sum_over_processes
from windowmetrics.nan_strategy import NanStrategy, NanStrategyArg
from windowmetrics.scalars import Scalar, ScalarState, divide, new_scalar_tensor
from windowmetrics.validation import check_value, check_weight
from windowmetrics.window import WindowMetric

_WINDOW_SUMS = ("value_sum", "weight_sum", "nan_count")

WindowSums = tuple[Scalar, Scalar, Scalar]
"""A window's ``(sum of value * weight, sum of weight, number of NaN elements)``."""


class ValueWindow(WindowMetric):
    """A window metric over the weighted sums of the elements of its values.

    Each update adds ``sum(value * weight)``, ``sum(weight)`` and its number of NaN elements to the window, in
    float64 (see :mod:`windowmetrics.scalars` for where they live). The sums are registered states reduced by
    ``"sum"``; a synchronised window packs all three, with each process's update count, into one collective.
    A subclass says what a window's sums are worth (:meth:`_value_of`).
    """

    value_sum = ScalarState()
    weight_sum = ScalarState()
    nan_count = ScalarState()
    latest = ScalarState()

    def __init__(
        self, window: int, nan_strategy: NanStrategyArg, settings: Sequence[float] = (), **kwargs: Any
    ) -> None:
        strategy = NanStrategy.parse(nan_strategy)
        super().__init__(window, settings=(*strategy.code, *settings), **kwargs)
        self.nan_strategy = nan_strategy
        self._nans = strategy
        self._scalars: dict[str, Scalar] = {}
        self._presented: Optional[tuple[Scalar, torch.dtype, Tensor]] = None
        for name in _WINDOW_SUMS:
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        # The latest window value, computed from synchronised sums: the same on every process, never reduced.
        self.add_state("latest", torch.zeros((), dtype=torch.float64), dist_reduce_fx=None)

    def _accumulate(self, value: object, weight: object) -> None:
        """Check an update's inputs, then add them to the window; raise before changing anything."""
        device = self._device  # torchmetrics' attribute behind the `device` property
        checked_value = check_value(value, device)
        if not isinstance(weight, float):  # a float, the default, needs no check
            weight = check_weight(weight, checked_value, device)
        value_sum, weight_sum, nan_count = contributions(checked_value, weight, self._nans)
        scalars = self._scalars
        # `a = a + b`, never `a += b`: a tensor sum may be shared with MetricCollection members or other processes
        scalars["value_sum"] = scalars["value_sum"] + value_sum
        scalars["weight_sum"] = scalars["weight_sum"] + weight_sum
        scalars["nan_count"] = scalars["nan_count"] + nan_count

    def _window_sums(self) -> WindowSums:
        """Return the window's sums, synchronised across processes when torchmetrics' settings say so."""
        scalars = self._scalars
        sums: WindowSums = (scalars["value_sum"], scalars["weight_sum"], scalars["nan_count"])
        if self.sync_on_compute and not self._is_synced and self.distributed_available_fn():
            value_sum, weight_sum, nan_count = sum_over_processes(
                sums, self._update_count, self.device, self.process_group, self.dist_sync_fn
            )
            sums = (value_sum, weight_sum, nan_count)
        if self._nans.reports:
            self._nans.report(sums[2])
        return sums

    @abstractmethod
    def _value_of(self, sums: WindowSums) -> Scalar:
        """Return what a window with these (synchronised) sums is worth."""

    def _close_window(self) -> None:
        self._scalars["latest"] = self._value_of(self._window_sums())

    def _clear_window(self) -> None:
        scalars = self._scalars
        scalars["value_sum"] = scalars["weight_sum"] = scalars["nan_count"] = 0.0

    def _latest_value(self) -> Tensor:
        """Return the latest window value as a tensor of the default dtype, created once per window."""
        latest, dtype = self._scalars["latest"], torch.get_default_dtype()
        presented = self._presented
        if presented is None or presented[0] is not latest or presented[1] is not dtype:
            presented = (latest, dtype, self._rounded(latest, dtype))
            self.__dict__["_presented"] = presented
        return presented[2]

    def _window_value(self) -> Tensor:
        return self._rounded(self._value_of(self._window_sums()), torch.get_default_dtype())

    def _rounded(self, value: Scalar, dtype: torch.dtype) -> Tensor:
        """Round a float64 value once, to ``dtype`` (torch's default float dtype at the time of the call)."""
        if isinstance(value, Tensor):
            return value.to(dtype)
        return new_scalar_tensor(value, dtype, self._device)

    def _sync_dist(
        self, dist_sync_fn: Callable[..., list[Tensor]] = gather_all_tensors, process_group: Optional[Any] = None
    ) -> None:
        """Replace the window's sums by their sums over all processes (for torchmetrics' ``sync()``)."""
        scalars = self._scalars
        local = [scalars[name] for name in _WINDOW_SUMS]
        group = process_group or self.process_group
        totals = sum_over_processes(local, self._update_count, self.device, group, dist_sync_fn)
        scalars.update(zip(_WINDOW_SUMS, totals, strict=True))


class WeightedMeanWindow(ValueWindow):
    """A value window fed ``(value, weight)`` whose window is worth its weighted mean, per element.

    Shared by :class:`~windowmetrics.WindowedMean` and :class:`~windowmetrics.EMALoss`, which take values and
    weights alike and see the same window mean.
    """

    def update(self, value: Union[float, Tensor], weight: Union[float, Tensor] = 1.0) -> None:
        """Add ``value``'s elements with ``weight`` to the window; close it if this update completes it."""
        self._accumulate(value, weight)
        self._advance()

    def forward(self, value: Union[float, Tensor], weight: Union[float, Tensor] = 1.0) -> Optional[Tensor]:
        """Update, then return the latest window value, or ``None`` until a window has completed."""
        self._accumulate(value, weight)
        self._advance()
        return self._latest_value() if self._has_latest else None

    def _value_of(self, sums: WindowSums) -> Scalar:
        value_sum, weight_sum, _ = sums
        return divide(value_sum, weight_sum)
