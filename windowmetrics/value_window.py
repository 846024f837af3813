"""Windows of weighted sums of values: the accumulators that WindowedMean, WindowedSum and EMALoss share."""

from abc import abstractmethod
from collections.abc import Callable
from typing import Any, Optional, Union, cast

import torch
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from windowmetrics import scalars as scalars_module
from windowmetrics.accumulate import WindowSums, add_update
from windowmetrics.compile import eagerly, is_dynamo_compiling
from windowmetrics.distributed import sum_over_processes
from windowmetrics.nan_strategy import NanStrategy, NanStrategyArg
from windowmetrics.scalars import Scalar, ScalarState, divide, host_path
from windowmetrics.validation import check_value, check_weight
from windowmetrics.window import WindowMetric

_WINDOW_SUMS = ("value_sum", "weight_sum", "nan_count")


def output_dtype() -> torch.dtype:
    """Return the dtype of returned values: torch's default float dtype, but never below float32."""
    dtype = torch.get_default_dtype()
    return dtype if dtype.itemsize >= 4 else torch.float32


class ValueWindow(WindowMetric):
    """A window metric over the weighted sums of the elements of its values.

    Each update adds ``sum(value * weight)``, ``sum(weight)`` and its number of NaN elements to the window, in
    float64 (see :mod:`windowmetrics.scalars` for where they live). The sums are registered states reduced by
    ``"sum"``; a synchronised window packs all three, with each process's update count, into one collective.
    A subclass says what a window's sums are worth (:meth:`_value_of`).
    """

    value_sum = ScalarState()
    weight_sum = ScalarState(prefer_float=True)  # a sum of Python-number weights needs no device
    nan_count = ScalarState(prefer_float=True)  # counted on the device only where NaNs are dropped
    latest = ScalarState()

    def __init__(self, window: int, nan_strategy: NanStrategyArg, span_epochs: bool = False, **kwargs: Any) -> None:
        strategy = NanStrategy.parse(nan_strategy)
        super().__init__(window, span_epochs, **kwargs)
        self.nan_strategy = nan_strategy
        self._nans = strategy
        self._scalars: dict[str, Scalar] = {}
        self._scalar_tensors: dict[str, tuple[float, Tensor]] = {}
        self._presented: Optional[tuple[Scalar, torch.dtype, Tensor]] = None
        for name in _WINDOW_SUMS:
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        # The latest window value, computed from synchronised sums: the same on every process, never reduced.
        self.add_state("latest", torch.zeros((), dtype=torch.float64), dist_reduce_fx=None)

    def extra_repr(self) -> str:
        """Return the arguments that configure the metric, as ``repr`` shows them."""
        return f"window={self.window}, nan_strategy={self.nan_strategy!r}, span_epochs={self.span_epochs}"

    def _accumulate(self, value: object, weight: object) -> None:
        """Check an update's inputs, then add them to the window; raise before changing anything."""
        if self._is_synced:
            self._refuse_update_while_synced()
        device = self._device  # torchmetrics' attribute behind the `device` property
        checked_value = check_value(value, device)
        if not isinstance(weight, float):  # a float, the default, needs no check
            weight = check_weight(weight, checked_value, device)
        scalars = self._scalars
        if (  # the commonest update, a loss on the host path, without a call: forward costs a few µs in all
            isinstance(weight, float)
            and self._nans.propagates
            and isinstance(checked_value, Tensor)
            and scalars_module.PREFER_HOST
            and checked_value.is_cpu
            and not checked_value.dim()
        ):
            scalars["value_sum"] = scalars["value_sum"] + checked_value.item() * weight
            scalars["weight_sum"] = scalars["weight_sum"] + weight
            return
        sums = (scalars["value_sum"], scalars["weight_sum"], scalars["nan_count"])
        scalars["value_sum"], scalars["weight_sum"], scalars["nan_count"] = add_update(
            sums, checked_value, weight, self._nans
        )

    def _window_sums(self) -> WindowSums:
        """Return the window's sums, synchronised across processes when torchmetrics' settings say so."""
        scalars = self._scalars
        sums: WindowSums = (scalars["value_sum"], scalars["weight_sum"], scalars["nan_count"])
        if self.sync_on_compute and not self._is_synced and self.distributed_available_fn():
            sums = sum_over_processes(*sums, self._update_count, self._device, self.process_group, self.dist_sync_fn)
        if self._nans.reports:
            self._nans.report(sums[2])
        return sums

    @abstractmethod
    def _value_of(self, sums: WindowSums) -> Scalar:
        """Return what a window with these (synchronised) sums is worth."""

    def _close_window(self) -> None:
        self._scalars["latest"] = self._value_of(self._window_sums())

    def _clear_window(self) -> None:
        """Start the sums again from zero: on the accelerator path the value sum as a tensor on the device."""
        scalars = self._scalars
        device = self._device
        scalars["value_sum"] = 0.0 if host_path(device) else torch.zeros((), dtype=torch.float64, device=device)
        scalars["weight_sum"] = scalars["nan_count"] = 0.0

    def _move_state(self, key: str, device: torch.device) -> None:
        """Move a scalar to ``device`` in the representation of that device (see :mod:`windowmetrics.scalars`)."""
        state = getattr(type(self), key, None)
        if isinstance(state, ScalarState):
            state.move(self)
        else:
            super()._move_state(key, device)

    def _discard_saved_window(self, state_dict: dict[str, Any], prefix: str) -> None:
        for name in _WINDOW_SUMS:
            state_dict.pop(prefix + name, None)
        self._clear_window()

    def _latest_value(self) -> Tensor:
        """Return the latest window value as a tensor of the output dtype, created once per window.

        It is made again only when the latest value or torch's default dtype has changed since.
        """
        latest, default = self._scalars["latest"], torch.get_default_dtype()
        presented = self._presented
        if presented is None or presented[0] is not latest or presented[1] is not default:
            presented = (latest, default, self._rounded(latest, output_dtype()))
            self.__dict__["_presented"] = presented
        return presented[2]

    def _window_value(self) -> Tensor:
        return self._rounded(self._value_of(self._window_sums()), output_dtype())

    def _rounded(self, value: Scalar, dtype: torch.dtype) -> Tensor:
        """Round a float64 value once, to ``dtype``."""
        if isinstance(value, Tensor):
            return value.to(dtype)
        return torch.scalar_tensor(value, dtype=dtype, device=self._device)

    def _sync_dist(
        self, dist_sync_fn: Callable[..., list[Tensor]] = gather_all_tensors, process_group: Optional[Any] = None
    ) -> None:
        """Replace the window's sums by their sums over all processes (for torchmetrics' ``sync()``)."""
        scalars = self._scalars
        local = (scalars["value_sum"], scalars["weight_sum"], scalars["nan_count"])
        group = process_group or self.process_group
        totals = sum_over_processes(*local, self._update_count, self._device, group, dist_sync_fn)
        scalars.update(zip(_WINDOW_SUMS, totals, strict=True))


class WeightedMeanWindow(ValueWindow):
    """A value window fed ``(value, weight)`` whose window is worth its weighted mean, per element.

    Shared by :class:`~windowmetrics.WindowedMean` and :class:`~windowmetrics.EMALoss`, which take values and
    weights alike and see the same window mean.
    """

    def update(self, value: Union[float, Tensor], weight: Union[float, Tensor] = 1.0) -> None:
        """Add ``value``'s elements with ``weight`` to the window; close it if this update completes it."""
        if is_dynamo_compiling():
            eagerly(self.update, value, weight)
            return None
        self._accumulate(value, weight)
        self._advance()
        return None

    @torch.jit.unused
    def forward(self, value: Union[float, Tensor], weight: Union[float, Tensor] = 1.0) -> Optional[Tensor]:
        """Update, then return the latest window value, or ``None`` until a window has completed."""
        if is_dynamo_compiling():
            return cast(Optional[Tensor], eagerly(self.forward, value, weight))
        self._accumulate(value, weight)
        self._advance()
        return self._latest_value() if self._has_latest else None

    def _value_of(self, sums: WindowSums) -> Scalar:
        value_sum, weight_sum, _ = sums
        return divide(value_sum, weight_sum)
