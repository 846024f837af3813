"""WindowedSum: the sum of a quantity over windows of n updates."""

from typing import Any, Optional, Union, cast

import torch
from torch import Tensor

from windowmetrics._compile import eagerly, is_dynamo_compiling
from windowmetrics._nan_strategy import NanStrategyArg
from windowmetrics._weighted_sums import WeightedSums


class WindowedSum(WeightedSums):
    """Sum of every element of every value over windows of ``window`` updates.

    Counts such as samples or tokens seen per window, summed over processes. Sums are float64 (exact for
    integer values up to 2**53) and the value is rounded once, to torch's default float dtype but never below
    float32. ``compute()`` is the sum of every update since the last reset.

    As input to ``forward`` and ``update`` the metric accepts the following input

    - ``value`` (:class:`~float` or :class:`~torch.Tensor`): a number, or a tensor of any shape and real dtype
      (integers and bools are cast)

    As output of ``forward`` and ``compute`` the metric returns the following output

    - ``forward`` (and the property ``window_value``): the latest window value (0-dim :class:`~torch.Tensor`),
      or ``None`` until a window completes
    - ``compute``: the sum of every update since the last reset, over all processes (0 with no update, as
      torchmetrics' ``SumMetric``)

    Args:
        window: number of ``update``/``forward`` calls that make one window, an int >= 1.
        nan_strategy: what to do with NaN elements, as for :class:`~windowmetrics.WindowedMean`.
        span_epochs: if ``True``, the reset that Lightning performs on every logged metric at the end of each
            training epoch and validation run changes nothing, so that windows close every ``window`` updates
            over the whole run; any other ``reset()`` still clears everything (default ``False``: windows
            start again at each epoch when the metric is logged with ``self.log``).
        kwargs: torchmetrics' ``Metric`` keyword arguments, with their torchmetrics meaning.

    Raises:
        TypeError: If ``window`` is not an int, ``span_epochs`` is not a bool, or ``nan_strategy`` is neither a name nor
            a number.
        ValueError: If ``window`` is smaller than 1, or ``nan_strategy`` is an unknown name.

    Example:
        >>> import torch
        >>> from windowmetrics import WindowedSum
        >>> samples_seen = WindowedSum(window=3)
        >>> for batch_size in (32, 32, 16):
        ...     value = samples_seen(batch_size)
        >>> value
        tensor(80.)
        >>> samples_seen(64)  # the next window is in progress: forward repeats the last window's value
        tensor(80.)
        >>> samples_seen.compute()  # everything since the reset
        tensor(144.)
    """

    def __init__(
        self, window: int, *, nan_strategy: NanStrategyArg = "disable", span_epochs: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(window, nan_strategy, span_epochs, **kwargs)

    def update(self, value: Union[float, Tensor]) -> None:
        """Add ``value``'s elements to the window; close it if this update completes it."""
        if is_dynamo_compiling():
            eagerly(self.update, value)
            return
        self._add(value, 1.0)
        self._count_update()

    @torch.jit.unused
    def forward(self, value: Union[float, Tensor]) -> Optional[Tensor]:
        """Update, then return the latest window value, or ``None`` until a window has completed."""
        if is_dynamo_compiling():
            return cast(Optional[Tensor], eagerly(self.forward, value))
        self._add(value, 1.0)
        self._count_update()
        return self.window_value

    def _worth(self, value_sums: Tensor, weight_sums: Tensor) -> Tensor:
        return value_sums.clone()  # the window's element is cleared in place when the window closes
