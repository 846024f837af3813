"""WindowedMax and WindowedMin: the largest and the smallest element of a loss over windows of n updates."""

import math
from typing import Any, ClassVar, Optional, Union, cast

import torch
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from windowmetrics._compile import eagerly, is_dynamo_compiling
from windowmetrics._distributed import GatherFn, gather_from_processes
from windowmetrics._nan_strategy import NanStrategy, NanStrategyArg
from windowmetrics._validation import check_value
from windowmetrics._window import WindowMetric, output_dtype

WINDOW, SINCE_RESET = 0, 1
"""The two elements of every state."""

_COUNTS = ("nan_count", "element_count")


class _WindowedExtreme(WindowMetric):
    """The extreme element of a window: the shared mechanics of :class:`WindowedMax` and :class:`WindowedMin`.

    States (``add_state``, each ``[window, since reset]``, float64):

    - ``extreme``: the extreme element so far (reduced by ``"max"`` or ``"min"``), exactly the input's value;
    - ``nan_count`` and ``element_count``: NaN elements left out and elements seen, kept only by the strategies
      that drop NaN elements (a window of NaN elements alone is then worth NaN); reduced by ``"sum"``;
    - ``latest`` (0-dim, not reduced): the value of the latest window.
    """

    _identity: ClassVar[float]
    """The extreme of no element: ``-inf`` for a maximum, ``inf`` for a minimum."""

    extreme: Tensor
    nan_count: Tensor
    element_count: Tensor

    def __init__(self, window: int, nan_strategy: NanStrategyArg, span_epochs: bool = False, **kwargs: Any) -> None:
        strategy = NanStrategy.parse(nan_strategy)
        super().__init__(window, span_epochs, **kwargs)
        self.nan_strategy = nan_strategy
        self._nans = strategy
        reduction = "max" if self._identity < 0 else "min"
        self.add_state("extreme", torch.full((2,), self._identity, dtype=torch.float64), dist_reduce_fx=reduction)
        for name in _COUNTS:
            self.add_state(name, torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")
        # The latest window value, computed from synchronised states: the same on every process, never reduced.
        self.add_state("latest", torch.zeros((), dtype=torch.float64), dist_reduce_fx=None)

    def extra_repr(self) -> str:
        """Return the arguments that configure the metric, as ``repr`` shows them."""
        return f"window={self.window}, nan_strategy={self.nan_strategy!r}, span_epochs={self.span_epochs}"

    def update(self, value: Union[float, Tensor]) -> None:
        """Take ``value``'s extreme element into the window; close it if this update completes it."""
        if is_dynamo_compiling():
            eagerly(self.update, value)
            return
        self._add(value)
        self._count_update()

    @torch.jit.unused
    def forward(self, value: Union[float, Tensor]) -> Optional[Tensor]:
        """Update, then return the latest window value, or ``None`` until a window has completed."""
        if is_dynamo_compiling():
            return cast(Optional[Tensor], eagerly(self.forward, value))
        self._add(value)
        self._count_update()
        return self.window_value

    def _add(self, value: object) -> None:
        """Check ``value``, then take it into the window and the aggregate; raise before changing anything.

        Raises:
            TypeError: If ``value`` is neither a real number nor a real tensor.
            ValueError: If ``value`` is a tensor on another device than the metric.
            TorchMetricsUserError: If the metric is synchronised.
        """
        device = self._device
        checked: Union[float, Tensor]
        if isinstance(value, Tensor) and not value.dtype.is_complex and value.device == device:
            checked = value  # what check_value returns for it, checked inline: the hot path
        else:
            checked = check_value(value, device)
        if self._is_synced or self._probe_lightning:  # what _before_update checks, without calling it
            self._before_update()
        if isinstance(checked, float):
            self._add_number(checked)
        elif checked.requires_grad:
            with torch.no_grad():
                self._add_tensor(checked)
        else:
            self._add_tensor(checked)

    def _add_number(self, value: float) -> None:
        nans = self._nans
        if nans.drops:
            self.element_count.add_(1.0)
        if math.isnan(value):
            if nans.drops:
                self.nan_count.add_(1.0)
                return
            if nans.propagates:
                self.extreme.fill_(math.nan)
                return
            value = nans.fill
        self._take_number(value)

    def _add_tensor(self, value: Tensor) -> None:
        nans = self._nans
        elements = value.numel()
        if not elements:
            return
        if nans.propagates:  # the default: the extreme element, NaN included (1 operator, 2 per-sample)
            self._take(value if not value.dim() else self._reduce(value))
            return
        if value.is_floating_point():
            if nans.drops:
                dropped = torch.isnan(value)
                self.nan_count.add_(dropped.sum(dtype=torch.float64))
                self.element_count.add_(elements)
                value = value.masked_fill(dropped, self._identity)
            else:
                value = torch.nan_to_num(value, nan=nans.fill, posinf=math.inf, neginf=-math.inf)
        elif nans.drops:
            self.element_count.add_(elements)
        self._take(value if not value.dim() else self._reduce(value))

    def _take_number(self, value: float) -> None:
        """Take a Python number into both elements of ``extreme``."""
        raise NotImplementedError

    def _take(self, value: Tensor) -> None:
        """Take a 0-dim tensor into both elements of ``extreme``, in place (one operator)."""
        raise NotImplementedError

    def _reduce(self, values: Tensor) -> Tensor:
        """Return the extreme element of ``values``, an update's or the processes' extremes (a NaN propagates)."""
        raise NotImplementedError

    def _statistics(self, element: int, where: str, updated: bool = True) -> Tensor:
        """Return the extreme of the window or the aggregate, over all processes, as a 0-dim float64 tensor.

        Synchronised in one ``all_gather`` when torchmetrics' settings say so; the NaN count is read (with the
        collective's check, in one read) and reported when the strategy reports. With no update at all
        (``updated`` false: ``compute()`` right after a reset), the identity, as torchmetrics' ``MaxMetric`` and
        ``MinMetric`` return, whatever the strategy.
        """
        statistics = torch.stack((self.extreme[element], self.nan_count[element], self.element_count[element]))
        extreme, nans, elements = statistics.unbind()  # views of a copy: clearing the window leaves them
        reports = self._nans.reports
        nan_total: Optional[float] = None
        if self.sync_on_compute and not self._is_synced and self.distributed_available_fn():
            rows, nan_total = gather_from_processes(
                statistics, self._update_count, self.process_group, self.dist_sync_fn, read=1 if reports else None
            )
            extreme = self._reduce(rows[:, 0])
            nans, elements = rows[:, 1].sum(), rows[:, 2].sum()
        elif reports:
            nan_total = nans.item()
        if reports:
            self._nans.report(int(nan_total or 0), where)
        if self._nans.drops and updated:  # a window of NaN elements alone (or of no element) is worth NaN
            return torch.where(elements > nans, extreme, math.nan)
        return extreme

    def _close_window(self) -> Tensor:
        return self._statistics(WINDOW, "the window")

    def _aggregate_value(self) -> Tensor:
        statistics = self._statistics(SINCE_RESET, "the updates since the last reset", self._update_count > 0)
        return statistics.to(output_dtype())

    def _clear_window(self) -> None:
        # In place: `state[WINDOW] = number` would copy a CPU number to the device, which syncs a GPU.
        self.extreme[WINDOW].fill_(self._identity)
        for name in _COUNTS:
            getattr(self, name)[WINDOW].zero_()

    def _clear_aggregate(self) -> None:
        self.extreme[SINCE_RESET].fill_(self._identity)
        for name in _COUNTS:
            getattr(self, name)[SINCE_RESET].zero_()

    def _rank_local_states(self) -> tuple[str, ...]:
        return ("extreme", *_COUNTS)

    def _initial_state(self, key: str, shape: torch.Size, device: torch.device) -> Tensor:
        if key == "extreme":
            return torch.full(shape, self._identity, dtype=torch.float64, device=device)
        return super()._initial_state(key, shape, device)

    def _sync_dist(self, dist_sync_fn: GatherFn = gather_all_tensors, process_group: Optional[Any] = None) -> None:
        """Replace the states by their reductions over all processes, in one collective (torchmetrics' ``sync()``)."""
        gather = None if dist_sync_fn is gather_all_tensors and self.dist_sync_fn is None else dist_sync_fn
        packed = torch.cat((self.extreme, self.nan_count, self.element_count))
        rows, _ = gather_from_processes(packed, self._update_count, process_group or self.process_group, gather)
        self.extreme = torch.stack([self._reduce(rows[:, index]) for index in (0, 1)])
        self.nan_count = rows[:, 2:4].sum(dim=0)
        self.element_count = rows[:, 4:6].sum(dim=0)


class WindowedMax(_WindowedExtreme):
    """The largest element of every value over windows of ``window`` updates: the loss spikes a mean hides.

    A window's value is its largest element, exactly as it was given (a float32 or bfloat16 loss is held in
    float64, which holds it exactly; no sum rounds it), over all processes: at a boundary the window's extreme
    travels in one collective (an ``all_gather`` of three numbers per process, with the check that the processes
    are in step). ``compute()`` is the largest element since the last reset. Logged beside a
    :class:`~windowmetrics.WindowedMean` of the same loss, it shows the spike that the mean smooths away.

    As input to ``forward`` and ``update`` the metric accepts the following input

    - ``value`` (:class:`~float` or :class:`~torch.Tensor`): a number, or a tensor of any shape and real dtype
      (integers and bools are cast); inputs that require grad are accepted, and no graph is kept

    As output of ``forward`` and ``compute`` the metric returns the following output

    - ``forward`` (and the property ``window_value``): the largest element of the latest completed window
      (0-dim :class:`~torch.Tensor`), or ``None`` until a window completes
    - ``compute``: the largest element since the last reset, over all processes (``-inf`` with no element, as
      torchmetrics' ``MaxMetric``)

    Args:
        window: number of ``update``/``forward`` calls that make one window, an int >= 1.
        nan_strategy: what to do with NaN elements: ``"disable"`` (default: a NaN makes the window's value NaN,
            as in a logged loss), ``"ignore"`` (NaN elements are left out; a window with no other element is
            worth NaN), ``"warn"``, ``"error"`` (as ``"ignore"``, and a warning or an error at the boundary names
            the number of NaN elements), or a float to impute.
        span_epochs: if ``True``, the reset that Lightning performs on every logged metric at the end of each
            training epoch and validation run clears the since-reset aggregate alone, so that windows close every
            ``window`` updates over the whole run; any other ``reset()`` still clears everything.
        kwargs: torchmetrics' ``Metric`` keyword arguments, with their torchmetrics meaning.

    Raises:
        TypeError: If ``window`` is not an int, ``span_epochs`` is not a bool, or ``nan_strategy`` is neither a
            name nor a number.
        ValueError: If ``window`` is smaller than 1, or ``nan_strategy`` is an unknown name.

    Example:
        >>> import torch
        >>> from windowmetrics import WindowedMax
        >>> spikes = WindowedMax(window=3)
        >>> for loss in (0.5, 4.0, 0.25):
        ...     value = spikes(torch.tensor(loss))
        >>> value
        tensor(4.)
        >>> spikes(torch.tensor([0.5, 0.75]))  # the next window is in progress
        tensor(4.)
        >>> spikes.compute()  # the largest element since the reset
        tensor(4.)
    """

    _identity = -math.inf

    def __init__(
        self, window: int, *, nan_strategy: NanStrategyArg = "disable", span_epochs: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(window, nan_strategy, span_epochs, **kwargs)

    def _take_number(self, value: float) -> None:
        self.extreme.clamp_(min=value)

    def _take(self, value: Tensor) -> None:
        torch.maximum(self.extreme, value, out=self.extreme)

    def _reduce(self, values: Tensor) -> Tensor:
        return values.amax()


class WindowedMin(_WindowedExtreme):
    """The smallest element of every value over windows of ``window`` updates.

    The mirror image of :class:`~windowmetrics.WindowedMax`: a window's value is its smallest element, exactly
    as it was given, over all processes, and ``compute()`` the smallest since the last reset (``inf`` with no
    element, as torchmetrics' ``MinMetric``).

    As input to ``forward`` and ``update`` the metric accepts the following input

    - ``value`` (:class:`~float` or :class:`~torch.Tensor`): a number, or a tensor of any shape and real dtype

    As output of ``forward`` and ``compute`` the metric returns the following output

    - ``forward`` (and the property ``window_value``): the smallest element of the latest completed window, or
      ``None`` until a window completes
    - ``compute``: the smallest element since the last reset, over all processes

    Args:
        window: number of ``update``/``forward`` calls that make one window, an int >= 1.
        nan_strategy: what to do with NaN elements, as for :class:`~windowmetrics.WindowedMax`.
        span_epochs: as for :class:`~windowmetrics.WindowedMax`.
        kwargs: torchmetrics' ``Metric`` keyword arguments, with their torchmetrics meaning.

    Raises:
        TypeError: If ``window`` is not an int, ``span_epochs`` is not a bool, or ``nan_strategy`` is neither a
            name nor a number.
        ValueError: If ``window`` is smaller than 1, or ``nan_strategy`` is an unknown name.

    Example:
        >>> import torch
        >>> from windowmetrics import WindowedMin
        >>> best = WindowedMin(window=2)
        >>> print(best(torch.tensor([0.5, 0.25])))
        None
        >>> best(torch.tensor(0.75))
        tensor(0.2500)
    """

    _identity = math.inf

    def __init__(
        self, window: int, *, nan_strategy: NanStrategyArg = "disable", span_epochs: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(window, nan_strategy, span_epochs, **kwargs)

    def _take_number(self, value: float) -> None:
        self.extreme.clamp_(max=value)

    def _take(self, value: Tensor) -> None:
        torch.minimum(self.extreme, value, out=self.extreme)

    def _reduce(self, values: Tensor) -> Tensor:
        return values.amin()
