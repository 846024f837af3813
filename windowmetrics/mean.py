"""WindowedMean: the weighted mean of a loss or metric over windows of n updates."""

from typing import Any

from windowmetrics.nan_strategy import NanStrategyArg
from windowmetrics.value_window import WeightedMeanWindow


class WindowedMean(WeightedMeanWindow):
    r"""Weighted mean of every element of every value over windows of ``window`` updates.

    A window's value is :math:`\sum_i v_i w_i / \sum_i w_i` over every element :math:`v_i` of every value given
    to the window's updates, with its weight :math:`w_i`: a per-sample loss tensor, or a per-batch mean loss
    with the batch size as weight, gives the per-sample mean of the window, never a mean of batch means.
    Sums are float64 (exact for integer values up to 2**53), whatever dtype the module is cast to, and the
    value is rounded once, to torch's default float dtype but never below float32. See
    :class:`~windowmetrics.window.WindowMetric` for the window contract: when a window closes, what ``forward``,
    ``compute`` and ``reset`` do, and how Lightning logs it.

    As input to ``forward`` and ``update`` the metric accepts the following input

    - ``value`` (:class:`~float` or :class:`~torch.Tensor`): a number, or a tensor of any shape and real dtype
      (integers and bools are cast); inputs that require grad are accepted, and no graph is kept
    - ``weight`` (:class:`~float` or :class:`~torch.Tensor`): a number, or a tensor that broadcasts to the
      shape of ``value`` (default ``1.0``)

    As output of ``forward`` and ``compute`` the metric returns the following output

    - ``forward``: the latest window value (0-dim :class:`~torch.Tensor`), or ``None`` until a window completes
    - ``compute``: the latest window value; before the first window completes, the mean of the updates so far
      (NaN with no update at all, as torchmetrics' ``MeanMetric``, with its warning)

    Args:
        window: number of ``update``/``forward`` calls that make one window, an int >= 1.
        nan_strategy: what to do with NaN elements: ``"disable"`` (default: NaN propagates, as in a logged
            loss), ``"ignore"``, ``"warn"``, ``"error"`` or a float to impute; see
            :class:`~windowmetrics.nan_strategy.NanStrategy`.
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
        >>> loss_window.compute()
        tensor(2.)
        >>> loss_window(torch.tensor(0.0), weight=1)
        tensor(3.)
    """

    def __init__(
        self, window: int, *, nan_strategy: NanStrategyArg = "disable", span_epochs: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(window, nan_strategy, span_epochs, **kwargs)
