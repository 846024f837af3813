"""The weighted sums that WindowedMean, WindowedSum and EMALoss keep: of value times weight, of weight, of NaNs.

Each sum is a float64 tensor of two elements on the metric's device, ``[window in progress, since the last
reset]``, updated in place: one broadcast ``add_`` feeds both. A sum of Python-number weights needs no device:
it is kept as a Python float (:attr:`WeightedSums._number_weights`) and folded into ``weight_sum`` where the
registered state must be whole (a boundary, ``compute()``, ``sync()``, ``state_dict()``).
"""

import math
from collections.abc import Callable
from typing import Any, ClassVar, Optional, Union

import torch
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from windowmetrics._distributed import GatherFn, sum_over_processes
from windowmetrics._nan_strategy import NanStrategy, NanStrategyArg
from windowmetrics._validation import check_value, check_weight
from windowmetrics._window import WindowMetric, output_dtype

WINDOW, SINCE_RESET = 0, 1
"""The two elements of every sum."""

_SUMS = ("value_sum", "weight_sum", "nan_count")


class WeightedSums(WindowMetric):
    """A window metric over ``sum(value * weight)``, ``sum(weight)`` and the number of NaN elements.

    Each update adds every element of its value with its weight (broadcast) to the window and to the
    since-reset aggregate at once, in float64, without reading the device. A subclass says what a window and the
    aggregate are worth (:meth:`_worth`).

    States (``add_state``, each ``[window, since reset]``, float64, reduced by ``"sum"``):

    - ``value_sum``: the sum of value times weight;
    - ``weight_sum``: the sum of the weights (of the elements, so a per-sample loss of ``n`` elements with
      weight ``w`` adds ``n * w``), apart from the Python-number weights not yet folded in;
    - ``nan_count``: the number of NaN elements left out (strategies that drop them);
    - ``latest`` (0-dim, not reduced): the value of the latest window.
    """

    _python_state: ClassVar[tuple[str, ...]] = (*WindowMetric._python_state, "_number_weights")

    value_sum: Tensor
    weight_sum: Tensor
    nan_count: Tensor

    def __init__(self, window: int, nan_strategy: NanStrategyArg, span_epochs: bool = False, **kwargs: Any) -> None:
        strategy = NanStrategy.parse(nan_strategy)
        super().__init__(window, span_epochs, **kwargs)
        self.nan_strategy = nan_strategy
        self._nans = strategy
        self._number_weights = 0.0  # Python-number weights added to both elements of weight_sum, not yet folded
        for name in _SUMS:
            self.add_state(name, torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")
        # The latest window value, computed from synchronised sums: the same on every process, never reduced.
        self.add_state("latest", torch.zeros((), dtype=torch.float64), dist_reduce_fx=None)

    def extra_repr(self) -> str:
        """Return the arguments that configure the metric, as ``repr`` shows them."""
        return f"window={self.window}, nan_strategy={self.nan_strategy!r}, span_epochs={self.span_epochs}"

    # Adding an update ------------------------------------------------------------------------------------------

    def _add(self, value: object, weight: object) -> None:
        """Check an update's inputs, then add them to the window and the aggregate; raise before changing anything.

        The hot path: the checks of :func:`~windowmetrics._validation.check_value` and of :meth:`_before_update`
        are inlined for the commonest inputs, and the commonest update (a tensor that needs no grad, a number as
        weight, the default strategy) goes straight to :meth:`_add_values`: one operator (two for a per-sample loss).

        Raises:
            TypeError: If ``value`` or ``weight`` is neither a real number nor a real tensor.
            ValueError: If a tensor is on another device than the metric, or ``weight`` does not broadcast to
                ``value``.
            TorchMetricsUserError: If the metric is synchronised.
        """
        device = self._device  # torchmetrics' attribute behind the `device` property
        checked: Union[float, Tensor]
        if isinstance(value, Tensor) and not value.dtype.is_complex and value.device == device:
            checked = value  # what check_value returns for it
        else:
            checked = check_value(value, device)
        if not isinstance(weight, float):  # a float, the default, needs no check
            weight = check_weight(weight, checked, device)
        if self._is_synced or self._probe_lightning:  # what _before_update checks, without calling it
            self._before_update()
        if isinstance(checked, float):
            if isinstance(weight, float):
                self._add_number(checked, weight)
                return
            checked = torch.scalar_tensor(checked, dtype=torch.float64, device=device)
        if isinstance(weight, float) and self._nans.propagates and not checked.requires_grad:  # the commonest update
            elements = checked.numel()
            if elements:
                self._add_values(checked, weight, elements)
            return
        if checked.requires_grad or (isinstance(weight, Tensor) and weight.requires_grad):
            with torch.no_grad():  # detaching would cost an operation on the device; no_grad costs none
                self._add_tensor(checked, weight)
        else:
            self._add_tensor(checked, weight)

    def _add_values(self, value: Tensor, weight: float, elements: int) -> None:
        """Add every element of ``value`` (``elements`` of them) with a number ``weight``: 1 operator, 2 per-sample."""
        summed = value if not value.dim() else value.sum(dtype=torch.float64)
        if weight == 1.0:  # the default weight: an alpha of 1 changes nothing, and costs about 0.3 µs on the CPU
            self.value_sum.add_(summed)
        else:
            self.value_sum.add_(summed, alpha=weight)
        self.__dict__["_number_weights"] = self._number_weights + weight * elements

    def _add_number(self, value: float, weight: float) -> None:
        """Add a Python-number value with a Python-number weight: one operator, with the weight on the host."""
        nans = self._nans
        if nans.imputes and math.isnan(value):
            value = nans.fill
        elif nans.drops and (math.isnan(value) or math.isnan(weight)):
            self.nan_count.add_(1.0)
            return
        self.value_sum.add_(value * weight)
        self.__dict__["_number_weights"] = self._number_weights + weight

    def _add_tensor(self, value: Tensor, weight: Union[float, Tensor]) -> None:
        nans = self._nans
        elements = value.numel()
        if not elements:  # no element: nothing to add, whatever the weight (a NaN one included)
            return
        if isinstance(weight, float) and nans.propagates:  # the commonest update: 1 operator, 2 per-sample
            self._add_values(value, weight, elements)
            return
        floating = value.is_floating_point()  # integers and bools hold no NaN
        if nans.imputes and floating:
            value = torch.nan_to_num(value, nan=nans.fill, posinf=math.inf, neginf=-math.inf)
        if isinstance(weight, Tensor):
            self._add_weighted(value, weight, nans)
        elif nans.drops and math.isnan(weight):  # every element is dropped
            self.nan_count.add_(elements)
        elif nans.drops and floating:
            dropped = torch.isnan(value).sum(dtype=torch.float64)
            self.value_sum.add_(torch.nansum(value, dtype=torch.float64), alpha=weight)
            self.weight_sum.add_(dropped, alpha=-weight)
            self.nan_count.add_(dropped)
            self.__dict__["_number_weights"] = self._number_weights + weight * elements
        else:
            self._add_values(value, weight, elements)

    def _add_weighted(self, value: Tensor, weight: Tensor, nans: NanStrategy) -> None:
        """Add ``value`` with a tensor ``weight`` (broadcast to its shape), NaN elements treated as ``nans`` says."""
        values = value.to(torch.float64)
        if nans.drops:
            weights = weight.to(torch.float64).expand(values.shape)
            dropped = torch.isnan(values) | torch.isnan(weights)
            values = torch.where(dropped, 0.0, values)
            weights = torch.where(dropped, 0.0, weights)
            self.nan_count.add_(dropped.sum(dtype=torch.float64))
            self.value_sum.add_((values * weights).sum())
            self.weight_sum.add_(weights.sum())
            return
        products = values * weight  # float64 products, exact for float32 inputs
        self.value_sum.add_(products if not products.dim() else products.sum())
        repeats = value.numel() // max(weight.numel(), 1)  # how often broadcasting repeats each weight
        self.weight_sum.add_(weight if not weight.dim() else weight.sum(dtype=torch.float64), alpha=repeats)

    # Values ----------------------------------------------------------------------------------------------------

    def _fold_number_weights(self) -> None:
        """Add the Python-number weights to ``weight_sum``, so that the registered state is whole."""
        if self._number_weights:
            self.weight_sum.add_(self._number_weights)
            self.__dict__["_number_weights"] = 0.0

    def _sums(self, element: int, where: str) -> tuple[Tensor, Tensor]:
        """Return the sums of values and of weights, over all processes, ``[window, since reset]`` each.

        Synchronised in one collective when torchmetrics' settings say so: every sum travels in it, and is read back
        with the collective's check, in one read of the device. Without it, nothing is read but the NaN count of a
        strategy that reports it. The NaN count of ``element`` (0: the window, 1: the aggregate) is reported as
        the strategy says.
        """
        self._fold_number_weights()
        reports = self._nans.reports
        if self.sync_on_compute and not self._is_synced and self.distributed_available_fn():
            totals = sum_over_processes(
                [self.value_sum, self.weight_sum, self.nan_count],
                self._update_count,
                self.process_group,
                self.dist_sync_fn,
            )
            if reports:
                self._nans.report(int(totals[2][element]), where)
            values, weights = torch.tensor(totals[:2], dtype=torch.float64, device=self._device)
            return values, weights
        if reports:
            self._nans.report(int(self.nan_count[element].item()), where)
        return self.value_sum, self.weight_sum

    def _value_of(self, element: int, where: str) -> Tensor:
        """Return what the window (``element`` 0) or the aggregate (1) is worth over all processes, a 0-dim tensor."""
        return self._worth(*self._sums(element, where))[element]

    def _worth(self, value_sums: Tensor, weight_sums: Tensor) -> Tensor:
        """Return what sums of values and of weights are worth, element by element: a new float64 tensor."""
        raise NotImplementedError

    def _close_window(self) -> Tensor:
        return self._value_of(WINDOW, "the window")

    def _aggregate_value(self) -> Tensor:
        return self._value_of(SINCE_RESET, "the updates since the last reset").to(output_dtype())

    def _clear_window(self) -> None:
        self._fold_number_weights()
        for name in _SUMS:  # zero_ in place: `sum[WINDOW] = 0.0` would copy a CPU number, which syncs a GPU
            getattr(self, name)[WINDOW].zero_()

    def _clear_aggregate(self) -> None:
        self._fold_number_weights()
        for name in _SUMS:
            getattr(self, name)[SINCE_RESET].zero_()

    def _after_reset(self) -> None:
        self.__dict__["_number_weights"] = 0.0

    def _own_loaded_states(self) -> None:
        """Take the loaded sums as they are: they hold every weight (Python-number ones were folded in to save)."""
        super()._own_loaded_states()
        self.__dict__["_number_weights"] = 0.0

    def _rank_local_states(self) -> tuple[str, ...]:
        return _SUMS

    def _before_saving(self) -> None:
        self._fold_number_weights()

    def sync(
        self,
        dist_sync_fn: Optional[Callable[..., Any]] = None,
        process_group: Optional[Any] = None,
        should_sync: bool = True,
        distributed_available: Optional[Callable[..., bool]] = None,
    ) -> None:
        """Synchronise the states across processes, as torchmetrics' ``sync()`` does (see its documentation)."""
        self._fold_number_weights()  # before torchmetrics keeps the local states for `unsync()`
        super().sync(dist_sync_fn, process_group, should_sync, distributed_available)

    def _sync_dist(self, dist_sync_fn: GatherFn = gather_all_tensors, process_group: Optional[Any] = None) -> None:
        """Replace each sum by its sum over all processes, in one collective (torchmetrics' ``sync()``)."""
        group = process_group or self.process_group
        gather = None if dist_sync_fn is gather_all_tensors and self.dist_sync_fn is None else dist_sync_fn
        totals = sum_over_processes([getattr(self, name) for name in _SUMS], self._update_count, group, gather)
        for name, total in zip(_SUMS, totals, strict=True):
            setattr(self, name, torch.tensor(total, dtype=torch.float64, device=self._device))
