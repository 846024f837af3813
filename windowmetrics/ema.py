"""EMALoss: an exponential moving average of window means, bias-corrected."""

from typing import Any, Optional, Union, cast

import torch
from torch import Tensor

from windowmetrics._compile import eagerly, is_dynamo_compiling
from windowmetrics._nan_strategy import NanStrategyArg
from windowmetrics._validation import check_decay
from windowmetrics._weighted_sums import WINDOW, WeightedSums
from windowmetrics._window import output_dtype


class EMALoss(WeightedSums):
    r"""Exponential moving average of a loss, fed one window mean per window, bias-corrected.

    Each window's weighted mean :math:`m` (exactly as :class:`~windowmetrics.WindowedMean` computes it, over
    all processes) enters the average when the window closes:

    .. math::
        n \leftarrow d\,n + (1 - d)\,m, \qquad z \leftarrow d\,z + (1 - d), \qquad \text{value} = n / z

    so that the first value equals the first window mean, with no bias towards zero. ``window=1`` is the
    classic per-step EMA. A window with no weight (with ``nan_strategy="ignore"``, one whose elements were all
    NaN) leaves the average unchanged. ``compute()`` is the latest average too (not an aggregate since the
    reset): Lightning's ``on_epoch=True`` logs the average as it stands at the end of the epoch.

    Fed once per validation run with that run's exact mean (``EMALoss(decay, span_epochs=True)`` updated in
    ``on_validation_epoch_end`` with a validation metric's ``compute()``, and logged there), it is a smoothed
    validation loss that ``EarlyStopping``, ``ModelCheckpoint`` and ``ReduceLROnPlateau`` can monitor from the
    first run on.

    As input to ``forward`` and ``update`` the metric accepts the following input

    - ``value`` (:class:`~float` or :class:`~torch.Tensor`): a number, or a tensor of any shape and real dtype
    - ``weight`` (:class:`~float` or :class:`~torch.Tensor`): a number, or a tensor that broadcasts to the
      shape of ``value`` (default ``1.0``)

    As output of ``forward`` and ``compute`` the metric returns the following output

    - ``forward`` (and the property ``window_value``): the average after the latest window (0-dim
      :class:`~torch.Tensor`), or ``None`` until a window completes
    - ``compute``: the same; before the first window completes, the mean of the window in progress over all
      processes (NaN with no update at all)

    Args:
        decay: weight of the past, a float with ``0 <= decay < 1``.
        window: number of ``update``/``forward`` calls per window mean, an int >= 1 (default 1).
        nan_strategy: what to do with NaN elements, as for :class:`~windowmetrics.WindowedMean`.
        span_epochs: if ``True``, the reset that Lightning performs on every logged metric at the end of each
            training epoch and validation run changes nothing, so that windows close every ``window`` updates
            over the whole run; any other ``reset()`` still clears everything (default ``False``: windows
            start again at each epoch when the metric is logged with ``self.log``).
        kwargs: torchmetrics' ``Metric`` keyword arguments, with their torchmetrics meaning.

    Raises:
        TypeError: If ``decay`` is not a number, ``window`` is not an int, ``span_epochs`` is not a bool, or
            ``nan_strategy`` is neither a name nor a number.
        ValueError: If ``decay`` is outside ``[0, 1)``, ``window`` is smaller than 1, or ``nan_strategy`` is an
            unknown name.

    Example:
        >>> import torch
        >>> from windowmetrics import EMALoss
        >>> smoothed = EMALoss(decay=0.5)
        >>> smoothed(torch.tensor(4.0))
        tensor(4.)
        >>> smoothed(torch.tensor(1.0))  # (0.5 * 0.5 * 4 + 0.5 * 1) / (0.5 * 0.5 + 0.5)
        tensor(2.)
    """

    ema_numerator: Tensor
    ema_denominator: Tensor

    def __init__(
        self,
        decay: float = 0.98,
        *,
        window: int = 1,
        nan_strategy: NanStrategyArg = "disable",
        span_epochs: bool = False,
        **kwargs: Any,
    ) -> None:
        decay = check_decay(decay)
        super().__init__(window, nan_strategy, span_epochs, **kwargs)
        self.decay = decay
        # Computed from synchronised window means: the same on every process, never reduced.
        self.add_state("ema_numerator", torch.zeros((), dtype=torch.float64), dist_reduce_fx=None)
        self.add_state("ema_denominator", torch.zeros((), dtype=torch.float64), dist_reduce_fx=None)

    def update(self, value: Union[float, Tensor], weight: Union[float, Tensor] = 1.0) -> None:
        """Add ``value``'s elements with ``weight`` to the window; at its boundary, add its mean to the average."""
        if is_dynamo_compiling():
            eagerly(self.update, value, weight)
            return
        self._add(value, weight)
        self._count_update()

    @torch.jit.unused
    def forward(self, value: Union[float, Tensor], weight: Union[float, Tensor] = 1.0) -> Optional[Tensor]:
        """Update, then return the average after the latest window, or ``None`` until a window has completed."""
        if is_dynamo_compiling():
            return cast(Optional[Tensor], eagerly(self.forward, value, weight))
        self._add(value, weight)
        self._count_update()
        return self.window_value

    def extra_repr(self) -> str:
        """Return the arguments that configure the metric, as ``repr`` shows them."""
        return f"decay={self.decay}, {super().extra_repr()}"

    def _worth(self, value_sums: Tensor, weight_sums: Tensor) -> Tensor:
        return value_sums / weight_sums

    def _close_window(self) -> Tensor:
        values, weights = self._sums(WINDOW, "the window")
        mean, weight = (values / weights)[WINDOW], weights[WINDOW]
        weighted = weight != 0
        decay, numerator, denominator = self.decay, self.ema_numerator, self.ema_denominator
        numerator = torch.where(weighted, decay * numerator + (1 - decay) * mean, numerator)
        denominator = torch.where(weighted, decay * denominator + (1 - decay), denominator)
        self.__dict__["ema_numerator"], self.__dict__["ema_denominator"] = numerator, denominator
        return numerator / denominator

    def _aggregate_value(self) -> Tensor:
        """Return the latest average; before the first window completes, the mean of the window in progress."""
        if self._has_latest:
            return self.latest.to(output_dtype())
        return self._value_of(WINDOW, "the window").to(output_dtype())
