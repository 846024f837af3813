"""WindowedMean: the weighted mean of a loss or metric over windows of n updates."""

from typing import Any, Optional, Union, cast

import torch
from torch import Tensor

from windowmetrics._compile import eagerly, is_dynamo_compiling
from windowmetrics._nan_strategy import NanStrategyArg
from windowmetrics._weighted_sums import WeightedSums


class WindowedMean(WeightedSums):
    r"""Weighted mean of every element of every value over windows of ``window`` updates.

    A window's value is :math:`\sum_i v_i w_i / \sum_i w_i` over every element :math:`v_i` of every value given
    to the window's updates, with its weight :math:`w_i`: a per-sample loss tensor, or a per-batch mean loss
    with the batch size as weight, gives the per-sample mean of the window, never a mean of batch means.
    Sums are float64 (exact for integer values up to 2**53), whatever dtype the module is cast to, and the
    value is rounded once, to torch's default float dtype but never below float32. ``compute()`` is the same
    weighted mean over every update since the last reset (what Lightning's ``on_epoch=True`` logs), kept beside
    the window at no extra cost per update. Negative weights are taken as given (a weighted mean of a
    difference, say): nothing checks their sign, and a window whose weights sum to zero has the value ``±inf``
    or NaN, as the division gives.

    As input to ``forward`` and ``update`` the metric accepts the following input

    - ``value`` (:class:`~float` or :class:`~torch.Tensor`): a number, or a tensor of any shape and real dtype
      (integers and bools are cast); inputs that require grad are accepted, and no graph is kept
    - ``weight`` (:class:`~float` or :class:`~torch.Tensor`): a number, or a tensor that broadcasts to the
      shape of ``value`` (default ``1.0``)

    As output of ``forward`` and ``compute`` the metric returns the following output

    - ``forward`` (and the property ``window_value``): the latest window value (0-dim :class:`~torch.Tensor`),
      or ``None`` until a window completes
    - ``compute``: the mean of every update since the last reset, over all processes (NaN with no update, as
      torchmetrics' ``MeanMetric``, with its warning)

    Args:
        window: number of ``update``/``forward`` calls that make one window, an int >= 1.
        nan_strategy: what to do with NaN elements: ``"disable"`` (default: NaN propagates, as in a logged
            loss), ``"ignore"``, ``"warn"``, ``"error"`` or a float to impute; see
            :class:`~windowmetrics._nan_strategy.NanStrategy`.
        span_epochs: if ``True``, the reset that Lightning performs on every logged metric at the end of each
            training epoch and validation run changes nothing, so that windows close every ``window`` updates
            over the whole run; any other ``reset()`` still clears everything (default ``False``: windows
            start again at each epoch when the metric is logged with ``self.log``).
        kwargs: torchmetrics' ``Metric`` keyword arguments (``sync_on_compute``, ``process_group``,
            ``dist_sync_fn``, ...), with their torchmetrics meaning.

    Raises:
        TypeError: If ``window`` is not an int, ``span_epochs`` is not a bool, or ``nan_strategy`` is neither a name nor
            a number.
        ValueError: If ``window`` is smaller than 1, or ``nan_strategy`` is an unknown name.

    Example:
        >>> import torch
        >>> from windowmetrics import WindowedMean
        >>> loss_window = WindowedMean(window=2)
        >>> print(loss_window(torch.tensor(1.0)))
        None
        >>> loss_window(torch.tensor([2.0, 3.0]))
        tensor(2.)
        >>> loss_window.at_boundary
        True
        >>> loss_window(torch.tensor(4.0), weight=3)  # a window is open again: forward repeats the last value
        tensor(2.)
        >>> loss_window.compute()  # the mean of (1 + 2 + 3 + 3 * 4) / 6: every update since the reset
        tensor(3.)
        >>> loss_window(torch.tensor(0.0), weight=1)
        tensor(3.)
        >>> loss_window.window_value
        tensor(3.)
    """

    def __init__(
        self, window: int, *, nan_strategy: NanStrategyArg = "disable", span_epochs: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(window, nan_strategy, span_epochs, **kwargs)

    def update(self, value: Union[float, Tensor], weight: Union[float, Tensor] = 1.0) -> None:
        """Add ``value``'s elements with ``weight`` to the window; close it if this update completes it."""
        if is_dynamo_compiling():
            eagerly(self.update, value, weight)
            return
        self._add(value, weight)
        self._count_update()

    @torch.jit.unused
    def forward(self, value: Union[float, Tensor], weight: Union[float, Tensor] = 1.0) -> Optional[Tensor]:
        """Update, then return the latest window value, or ``None`` until a window has completed."""
        if is_dynamo_compiling():
            return cast(Optional[Tensor], eagerly(self.forward, value, weight))
        self._add(value, weight)
        self._count_update()
        return self.window_value

    def _worth(self, value_sums: Tensor, weight_sums: Tensor) -> Tensor:
        return value_sums / weight_sums
