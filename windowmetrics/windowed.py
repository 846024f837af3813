"""Windowed: any torchmetrics metric computed over windows of n updates."""

from collections.abc import Callable, Sequence
from typing import Any, Optional, cast

import torch
from torch import Tensor
from torch.nn import Module
from torchmetrics import Metric

from windowmetrics.compile import eagerly, is_dynamo_compiling
from windowmetrics.validation import check_metric, describe
from windowmetrics.window import WindowMetric


class Windowed(WindowMetric):
    """A torchmetrics ``Metric`` computed over the pooled updates of each window of ``window`` updates.

    Every ``update`` goes to the wrapped metric. When a window closes, the wrapped metric's ``compute()``
    (synchronised across processes by the wrapped metric's own settings) becomes the latest window value and
    the wrapped metric is reset. A window's accuracy, F1 score or AUROC is therefore the metric over all the
    samples of the window's batches, whatever their sizes, never an average of per-batch values. See
    :class:`~windowmetrics.window.WindowMetric` for the window contract.

    A value of a floating dtype below float32 (a metric cast to half precision) is returned as float32.

    As input to ``forward`` and ``update`` the metric accepts the inputs of the wrapped metric's ``update``.

    As output of ``forward`` and ``compute`` the metric returns the following output

    - ``forward``: the wrapped metric's value over the latest completed window (a :class:`~torch.Tensor`),
      or ``None`` until a window completes
    - ``compute``: the same; before the first window completes, the wrapped metric's value over the updates so
      far (what the wrapped metric's ``compute()`` gives with no update at all, with its warning)

    Args:
        metric: the torchmetrics ``Metric`` to compute per window, whose ``compute()`` returns a tensor (as
            Lightning's logging requires). A ``MetricCollection`` is not accepted: wrap each member instead.
        window: number of ``update``/``forward`` calls that make one window, an int >= 1.
        span_epochs: if ``True``, the reset that Lightning performs on every logged metric at the end of each
            training epoch and validation run changes nothing, so that windows close every ``window`` updates
            over the whole run; any other ``reset()`` still clears everything (default ``False``: windows
            start again at each epoch when the metric is logged with ``self.log``).

    Raises:
        TypeError: If ``metric`` is not a torchmetrics ``Metric``, ``window`` is not an int or ``span_epochs``
            is not a bool; at a boundary,
            if the wrapped metric's ``compute()`` did not return a tensor (the window is then discarded).
        ValueError: If ``window`` is smaller than 1.

    Example:
        >>> import torch
        >>> from torchmetrics.classification import MulticlassAccuracy
        >>> from windowmetrics import Windowed
        >>> accuracy = Windowed(MulticlassAccuracy(num_classes=3, average="micro"), window=2)
        >>> print(accuracy(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 1])))
        None
        >>> accuracy(torch.tensor([1]), torch.tensor([1]))  # 3 right of 5 samples, not the mean of 50% and 100%
        tensor(0.6000)
    """

    latest: Tensor

    def __init__(self, metric: Metric, window: int, *, span_epochs: bool = False) -> None:
        metric = check_metric(metric)
        super().__init__(window, span_epochs)
        self.metric = metric
        # The wrapped metric's value over the latest window: the same on every process, never reduced.
        self.add_state("latest", torch.zeros(()), dist_reduce_fx=None)

    def extra_repr(self) -> str:
        """Return the arguments that configure the metric, as ``repr`` shows them (the metric as a submodule)."""
        return f"window={self.window}, span_epochs={self.span_epochs}"

    def _config(self) -> str:
        return f"{type(self).__name__}({type(self.metric).__name__}, {self.extra_repr()})"

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Update the wrapped metric; close the window if this update completes it."""
        if is_dynamo_compiling():
            eagerly(self.update, *args, **kwargs)
            return None
        if self._is_synced:
            self._refuse_update_while_synced()
        self.metric.update(*args, **kwargs)
        self._advance()
        return None

    @torch.jit.unused
    def forward(self, *args: Any, **kwargs: Any) -> Optional[Tensor]:
        """Update, then return the latest window value, or ``None`` until a window has completed."""
        if is_dynamo_compiling():
            return cast(Optional[Tensor], eagerly(self.forward, *args, **kwargs))
        self.update(*args, **kwargs)
        return self._latest_value() if self._has_latest else None

    def _close_window(self) -> None:
        self.__dict__["latest"] = self._window_value()

    def _apply(self, fn: Callable[[Tensor], Tensor], exclude_state: Sequence[str] = ()) -> Module:
        """Apply ``fn`` as :class:`~windowmetrics.window.WindowMetric` does; move the wrapped metric, dtype unchanged.

        torchmetrics would cast the wrapped metric's states with the module (``.to(torch.bfloat16)``,
        Lightning's ``*-true`` precisions), as it casts its own metrics'; a window's metric keeps its precision.
        """
        metric = self._modules.pop("metric")  # out of the module's reach while fn is applied
        try:
            this = super()._apply(fn, exclude_state)
        finally:
            self._modules["metric"] = metric
        if metric is not None:
            metric.to(self._device)
        return this

    def _discard_saved_window(self, state_dict: dict[str, Any], prefix: str) -> None:
        """Drop the wrapped metric's saved states (its own and its submetrics'), and reset it.

        Its parameters and buffers (a feature extractor's, as FID or LPIPS have) are not the window's: they load.
        """
        for name, module in self.metric.named_modules(prefix=prefix + "metric"):
            if isinstance(module, Metric):
                for state in module._defaults:
                    state_dict.pop(f"{name}.{state}", None)
        self.metric.reset()

    def _clear_window(self) -> None:
        self.metric.reset()

    def _latest_value(self) -> Tensor:
        return self.latest

    def _window_value(self) -> Tensor:
        value = self.metric.compute()
        if not isinstance(value, Tensor):
            raise TypeError(
                f"Windowed needs a metric whose compute() returns a tensor; {type(self.metric).__name__}"
                f" returned {describe(value)}"
            )
        if value.is_floating_point() and value.dtype.itemsize < 4:  # never below float32, as Lightning logs
            return value.float()
        return value

    def persistent(self, mode: bool = False) -> None:
        """Say whether ``state_dict()`` saves the states, the wrapped metric's included."""
        super().persistent(mode)
        self.metric.persistent(mode)
