"""Windowed: any torchmetrics metric computed over windows of n updates."""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy
from typing import TYPE_CHECKING, Any, Optional, cast

import torch
from torch import Tensor
from torch.nn import Module
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat, dim_zero_max, dim_zero_min, dim_zero_sum

from windowmetrics._compile import eagerly, is_dynamo_compiling
from windowmetrics._validation import check_metric, describe
from windowmetrics._window import WindowMetric

_WRAPPED = ("metric", "since_reset", "carried")
"""The submodules that hold the wrapped metric: the window's copy, the since-reset copy, the carried part."""

_MERGEABLE_REDUCTIONS = (dim_zero_sum, dim_zero_max, dim_zero_min, dim_zero_cat)
"""The reductions whose states torchmetrics' ``merge_state`` combines exactly, whatever the update counts."""


def merges_exactly(metric: Metric) -> bool:
    """Return whether ``metric.merge_state(other)`` gives the states of both metrics' updates together.

    True where torchmetrics has ``merge_state`` and either the metric's class provides its own or every state
    of the metric (and of the metrics it holds) is reduced by a sum, a maximum, a minimum or a concatenation.

    Example:
        >>> import torchmetrics
        >>> from torchmetrics import MeanMetric
        >>> from windowmetrics.windowed import merges_exactly
        >>> merges_exactly(MeanMetric()) == hasattr(torchmetrics.Metric, "merge_state")  # torchmetrics >= 1.6
        True
    """
    if not hasattr(metric, "merge_state"):  # torchmetrics < 1.6
        return False
    if type(metric).merge_state is not Metric.merge_state:
        return True
    if metric.full_state_update is not False or metric.dist_sync_on_step:
        return False
    metrics = [module for module in metric.modules() if isinstance(module, Metric)]
    return len(metrics) == 1 and all(reduction in _MERGEABLE_REDUCTIONS for reduction in metric._reductions.values())


def _copy_of(metric: Metric) -> Metric:
    """Return a deep copy of ``metric`` that shares its process groups (a ``ProcessGroup`` cannot be copied)."""
    groups = [module.process_group for module in metric.modules() if isinstance(module, Metric)]
    return deepcopy(metric, memo={id(group): group for group in groups if group is not None})


@contextmanager
def _at_least_float32() -> Iterator[None]:
    """Make torch's default float dtype at least float32 while the block runs (``bf16-true`` makes it bfloat16)."""
    previous = torch.get_default_dtype()
    if previous.itemsize >= 4:
        yield
        return
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class Windowed(WindowMetric):
    """A torchmetrics ``Metric`` computed over the pooled updates of each window of ``window`` updates.

    Every ``update`` goes to the wrapped metric. When a window closes, the wrapped metric's ``compute()``
    (synchronised across processes by the wrapped metric's own settings) becomes the latest window value and
    the wrapped metric is reset. A window's accuracy, F1 score or AUROC is therefore the metric over all the
    samples of the window's batches, whatever their sizes, never an average of per-batch values.

    ``compute()`` is the wrapped metric over every update since the last reset. Where torchmetrics can merge the
    wrapped metric's states exactly (``merge_state``, torchmetrics >= 1.6, states reduced by sum, max, min or
    concatenation: accuracy, F1, AUROC, ``MeanMetric``...), each window's states are merged into an aggregate
    copy at its boundary, and an update costs one update of the wrapped metric; for any other metric, the
    aggregate copy is updated beside the window's, and an update costs two. The wrapped metric's values are
    computed with a default float dtype of at least float32, whatever the default inside the step
    (``precision="bf16-true"``), and a value of a floating dtype below float32 is returned as float32.

    As input to ``forward`` and ``update`` the metric accepts the inputs of the wrapped metric's ``update``.

    As output of ``forward`` and ``compute`` the metric returns the following output

    - ``forward`` (and the property ``window_value``): the wrapped metric's value over the latest completed
      window (a :class:`~torch.Tensor`), or ``None`` until a window completes
    - ``compute``: the wrapped metric's value over every update since the last reset (what the wrapped metric's
      ``compute()`` gives with no update at all, with its warning)

    Args:
        metric: the torchmetrics ``Metric`` to compute per window, whose ``compute()`` returns a tensor (as
            Lightning's logging requires). A ``MetricCollection`` is not accepted: wrap each member instead.
        window: number of ``update``/``forward`` calls that make one window, an int >= 1.
        span_epochs: if ``True``, the reset that Lightning performs on every logged metric at the end of each
            training epoch and validation run clears the since-reset aggregate alone, so that windows close every
            ``window`` updates over the whole run; any other ``reset()`` still clears everything (default
            ``False``: windows start again at each epoch when the metric is logged with ``self.log``).

    Raises:
        TypeError: If ``metric`` is not a torchmetrics ``Metric``, ``window`` is not an int or ``span_epochs``
            is not a bool; at a boundary, if the wrapped metric's ``compute()`` did not return a tensor (the
            window is then discarded).
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
        >>> accuracy(torch.tensor([0]), torch.tensor([1]))  # the next window is in progress
        tensor(0.6000)
        >>> accuracy.compute()  # 3 right of 6 samples since the reset
        tensor(0.5000)
    """

    if TYPE_CHECKING:  # for mypy alone: torch.jit.script cannot resolve a Metric annotation of the class
        metric: Metric
        since_reset: Metric
        carried: Metric

    def __init__(self, metric: Metric, window: int, *, span_epochs: bool = False) -> None:
        metric = check_metric(metric)
        super().__init__(window, span_epochs)
        self.metric = metric
        self.since_reset = _copy_of(metric)
        self.since_reset.reset()
        self._merges = merges_exactly(metric)
        # The part of the window in progress from before the last reset that cleared the aggregate alone (a
        # spanning metric's epoch end), where windows are merged into the aggregate: it belongs to the window,
        # not to the aggregate.
        self.carried = _copy_of(self.since_reset)
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
            return
        self._before_update()
        self.metric.update(*args, **kwargs)
        if not self._merges:
            self.since_reset.update(*args, **kwargs)
        self._count_update()

    @torch.jit.unused
    def forward(self, *args: Any, **kwargs: Any) -> Optional[Tensor]:
        """Update, then return the latest window value, or ``None`` until a window has completed."""
        if is_dynamo_compiling():
            return cast(Optional[Tensor], eagerly(self.forward, *args, **kwargs))
        self.update(*args, **kwargs)
        return self.window_value

    def _close_window(self) -> Tensor:
        if self.carried._update_count:
            whole = _copy_of(self.carried)
            self._merge_into(whole, self.metric)
            value = self._value_of(whole)
        else:
            value = self._value_of(self.metric)
        if self._merges:
            self._merge_into(self.since_reset, self.metric)
        return value

    @staticmethod
    def _merge_into(total: Metric, window: Metric) -> None:
        total.merge_state(window)
        total._update_count += window._update_count
        total._computed = None

    def _aggregate_value(self) -> Tensor:
        if not self._merges or not self.metric._update_count:
            return self._value_of(self.since_reset)
        total = _copy_of(self.since_reset)  # with the window in progress, which its boundary will merge
        self._merge_into(total, self.metric)
        return self._value_of(total)

    def _value_of(self, metric: Metric) -> Tensor:
        """Return ``metric.compute()``, computed at float32 or wider and returned at float32 or wider.

        Raises:
            TypeError: If the wrapped metric's ``compute()`` does not return a tensor.
        """
        with _at_least_float32():
            value = metric.compute()
        if not isinstance(value, Tensor):
            raise TypeError(
                f"Windowed needs a metric whose compute() returns a tensor; {type(metric).__name__}"
                f" returned {describe(value)}"
            )
        if value.is_floating_point() and value.dtype.itemsize < 4:  # never below float32, as Lightning logs
            return value.float()
        return value

    def _present(self, latest: Tensor) -> Tensor:
        return latest

    def _clear_window(self) -> None:
        self.metric.reset()
        self.carried.reset()

    def _clear_aggregate(self) -> None:
        if self._merges and self.metric._update_count:  # the window's updates so far stay out of the aggregate
            self._merge_into(self.carried, self.metric)
            self.metric.reset()
        self.since_reset.reset()

    def _after_reset(self) -> None:
        for metric in self._wrapped().values():
            metric.reset()

    def _rank_local_states(self) -> tuple[str, ...]:
        return tuple(
            f"{name}.{state}"
            for name, module in self.named_modules()
            if name and isinstance(module, Metric)
            for state in module._defaults
        )

    def _extra_fields(self) -> dict[str, int]:
        """Return the update counts of the wrapped metrics, which torchmetrics does not save.

        Whether the part of the window from before the last epoch-end reset is empty, say, follows from them.
        """
        return {f"{name}_updates": metric._update_count for name, metric in self._wrapped().items()}

    def _load_extra_fields(self, fields: dict[str, int], own_rank: bool) -> None:
        for name, metric in self._wrapped().items():
            metric._update_count = fields[f"{name}_updates"] if own_rank else 0

    def _wrapped(self) -> dict[str, Metric]:
        """The wrapped metric's three copies: the window's, the since-reset aggregate's, and the carried part's."""
        return {name: cast(Metric, self._modules[name]) for name in _WRAPPED}

    def _forget_rank_local_states(self) -> None:
        self._after_reset()  # every state of the wrapped metrics is this process's own

    def _saved_states(self) -> list[str]:
        """Name the states that ``state_dict()`` saves: the window's, and the wrapped metrics' persistent ones."""
        wrapped = [
            f"{name}.{key}"
            for name, module in self.named_modules()
            if name and isinstance(module, Metric)
            for key in module._defaults
            if module._persistent.get(key, False)
        ]
        return [*super()._saved_states(), *wrapped]

    def _state_problem(self, key: str, value: object) -> Optional[str]:
        if key == "latest":  # the wrapped metric's value: any shape and dtype
            return None if isinstance(value, Tensor) else f"expected a tensor, got {describe(value)}"
        name, _, state = key.rpartition(".")
        if name:  # a wrapped metric's state: a tensor of its initial shape, or a list of tensors
            default = cast(Metric, self.get_submodule(name))._defaults[state]
            if isinstance(default, Tensor):
                if not isinstance(value, Tensor) or value.shape != default.shape:
                    return f"expected a tensor of shape {tuple(default.shape)}, got {describe(value)}"
                return None
            if not isinstance(value, (list, tuple)) or not all(isinstance(item, Tensor) for item in value):
                return f"expected a list of tensors, got {describe(value)}"
            return None
        return super()._state_problem(key, value)

    def _own_loaded_states(self) -> None:
        self.__dict__["latest"] = self.latest.to(self._device, copy=True)

    def _apply(self, fn: Callable[[Tensor], Tensor], exclude_state: Sequence[str] = ()) -> Module:
        """Apply ``fn`` as :class:`~windowmetrics._window.WindowMetric` does; move the wrapped metrics, dtype unchanged.

        torchmetrics would cast the wrapped metric's states with the module (``.to(torch.bfloat16)``,
        Lightning's ``*-true`` precisions), as it casts its own metrics'; a window's metric keeps its precision.
        """
        wrapped = {name: self._modules.pop(name) for name in _WRAPPED}  # out of fn's reach
        try:
            this = super()._apply(fn, exclude_state)
        finally:
            self._modules.update(wrapped)
        for module in wrapped.values():
            if module is not None:
                module.to(self._device)
        return this

    def persistent(self, mode: bool = False) -> None:
        """Say whether ``state_dict()`` saves the states, the wrapped metric's included."""
        super().persistent(mode)
        for metric in self._wrapped().values():
            metric.persistent(mode)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Load as :class:`~windowmetrics._window.WindowMetric` does; give the wrapped metrics' states own storage.

        torch loads the wrapped metrics after this method returns, from the entries that it leaves in
        ``state_dict`` (torch's copy of the caller's): each is replaced here by a copy on this metric's device, so
        that the wrapped metrics, which update in place, share storage neither with the checkpoint nor with another
        metric loaded from it.
        """
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for key, value in list(state_dict.items()):
            if not key.startswith(prefix) or "." not in key[len(prefix) :]:
                continue
            if isinstance(value, Tensor):
                state_dict[key] = value.to(self._device, copy=True)
            elif isinstance(value, (list, tuple)):
                state_dict[key] = [item.to(self._device, copy=True) for item in value if isinstance(item, Tensor)]
