"""EMALoss: an exponential moving average of window means, bias-corrected."""

from typing import Any

import torch

from windowmetrics.nan_strategy import NanStrategyArg
from windowmetrics.scalars import ScalarState, divide, where
from windowmetrics.validation import check_decay
from windowmetrics.value_window import WeightedMeanWindow


class EMALoss(WeightedMeanWindow):
    r"""Exponential moving average of a loss, fed one window mean per window, bias-corrected.

    Each window's weighted mean :math:`m` (exactly as :class:`~windowmetrics.WindowedMean` computes it, over
    all processes) enters the average when the window closes:

    .. math::
        n \leftarrow d\,n + (1 - d)\,m, \qquad z \leftarrow d\,z + (1 - d), \qquad \text{value} = n / z

    so that the first value equals the first window mean, with no bias towards zero. ``window=1`` is the
    classic per-step EMA. A window with no weight (with ``nan_strategy="ignore"``, one whose elements were all
    NaN) leaves the average unchanged. See :class:`~windowmetrics.window.WindowMetric` for the window contract.

    As input to ``forward`` and ``update`` the metric accepts the following input

    - ``value`` (:class:`~float` or :class:`~torch.Tensor`): a number, or a tensor of any shape and real dtype
    - ``weight`` (:class:`~float` or :class:`~torch.Tensor`): a number, or a tensor that broadcasts to the
      shape of ``value`` (default ``1.0``)

    As output of ``forward`` and ``compute`` the metric returns the following output

    - ``forward``: the average after the latest window (0-dim :class:`~torch.Tensor`), or ``None`` until a
      window completes
    - ``compute``: the same; before the first window completes, the mean of the updates so far (NaN with no
      update at all)

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

    ema_numerator = ScalarState()
    ema_denominator = ScalarState()

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

    def extra_repr(self) -> str:
        """Return the arguments that configure the metric, as ``repr`` shows them."""
        return f"decay={self.decay}, {super().extra_repr()}"

    def _close_window(self) -> None:
        sums = self._window_sums()
        weighted = sums[1] != 0
        decay, scalars = self.decay, self._scalars
        numerator, denominator = scalars["ema_numerator"], scalars["ema_denominator"]
        numerator = where(weighted, decay * numerator + (1 - decay) * self._value_of(sums), numerator)
        denominator = where(weighted, decay * denominator + (1 - decay), denominator)
        scalars["ema_numerator"], scalars["ema_denominator"] = numerator, denominator
        scalars["latest"] = divide(numerator, denominator)
