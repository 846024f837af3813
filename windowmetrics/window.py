"""The window mechanics that every windowmetrics metric shares."""

import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NoReturn, Optional

import torch
from torch import Tensor
from torch.nn import Module
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors
from torchmetrics.utilities.exceptions import TorchMetricsUserError
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

from windowmetrics.distributed import current_rank
from windowmetrics.lightning_reset import reset_by_lightning_at_loop_end
from windowmetrics.validation import check_flag, check_window

WINDOW_STATE_KEY = "window_state"
"""The ``state_dict`` entry, beside the registered states, that holds the window's position and configuration."""


class WindowMetric(Metric, ABC):
    """A torchmetrics ``Metric`` that closes a window every ``window`` calls of ``update`` or ``forward``.

    This class owns the window's position and its boundary, and the parts of the torchmetrics protocol that
    follow from them; a subclass owns its accumulators and its latest window value through these methods:

    - ``update(...)`` checks its inputs (a synchronised metric refuses them: :meth:`_refuse_update_while_synced`),
      adds them to the accumulators, then calls :meth:`_advance`;
    - :meth:`_close_window` keeps the value of a completed window, synchronised across processes;
    - :meth:`_clear_window` empties the accumulators;
    - :meth:`_latest_value` returns the kept value;
    - :meth:`_window_value` returns the value of the updates accumulated so far, synchronised like a window;
    - :meth:`_discard_saved_window` drops, from a ``state_dict`` being loaded, the accumulators of a window
      that another process saved.

    The contract, for every subclass:

    - Every call of ``update`` or ``forward`` counts once. The call that completes a window is its *boundary*:
      the window's value is computed, synchronised across processes, kept as the latest window value, and the
      accumulators are cleared. Windows do not overlap; :attr:`at_boundary` says whether the last call was one.
    - ``forward`` returns the latest window value, or ``None`` until a window has completed since ``reset()``.
      Lightning's ``self.log(name, metric)`` logs the same value after ``forward`` or ``update`` (it reads
      ``_forward_cache``, which here *is* the latest window value), and logs nothing before the first window.
    - ``compute()`` returns the latest window value or, before the first window completes, the value of the
      updates so far, synchronised like a full window (a collective that every process must call).
    - Values are returned in torch's default float dtype, but never below float32.
    - ``reset()`` clears everything: accumulators, position, latest value. Lightning calls it on every logged
      metric at the end of each training epoch and validation run, so that by default a window never spans
      two epochs; with ``span_epochs=True`` that one call changes nothing, and windows run on over the whole
      run (a ``reset()`` that any other code calls still clears everything).

    How the states are kept:

    - The registered states (``add_state``) are float64 and stay float64: a dtype cast of the module
      (``.half()``, ``.to(torch.bfloat16)``, ``set_dtype``, Lightning's ``precision="bf16-true"``) moves them
      to the new device, if any, and changes neither their dtype nor their value.
    - The position inside the window, the boundary flag and whether a window has completed are Python
      attributes. With ``persistent(True)``, ``state_dict()`` saves them, with a checksum of the metric's
      configuration and the rank of the saving process, in one int64 tensor (:data:`WINDOW_STATE_KEY`) beside
      the registered states; ``load_state_dict`` refuses the states of a differently configured metric, and
      restores the sums of the window in progress only on the process of the rank that saved them (see
      :meth:`_load_from_state_dict`).
    - ``MetricCollection`` compute groups never merge a window metric with another: its first registered state,
      ``unshared``, holds NaN, which is equal to nothing. Compute groups share registered states only, and a
      window's position is not one.
    """

    full_state_update = True  # forward's value depends on the whole state; torchmetrics' merge_state is refused
    is_differentiable = False
    higher_is_better = None
    __jit_unused_properties__: ClassVar[list[str]] = [
        *Metric.__jit_unused_properties__,
        "at_boundary",
        "_forward_cache",
    ]

    unshared: Tensor

    def __init__(self, window: int, span_epochs: bool = False, **kwargs: Any) -> None:
        window = check_window(window)
        span_epochs = check_flag("span_epochs", span_epochs)
        super().__init__(**kwargs)
        self.window = window
        self.span_epochs = span_epochs
        # torchmetrics' compute wrapper must not synchronise the states: windows are synchronised when they close
        self._to_sync = False
        self._at_boundary = False
        self._has_latest = False
        # NaN is equal to nothing, not even itself: compute groups, which compare the states in the order they
        # were registered (torchmetrics < 1.6 compares only the first), never merge this metric with another.
        self.add_state("unshared", torch.tensor(math.nan, dtype=torch.float64), dist_reduce_fx=None, persistent=False)

    @property
    def at_boundary(self) -> bool:
        """Whether the most recent ``update`` or ``forward`` completed a window (``False`` after ``reset()``).

        A value logged with Lightning's ``self.log`` stays on show until it is logged again, so
        ``if metric.at_boundary: self.log(name, metric)`` logs the same series as logging at every step, for
        one ``self.log`` call (about half a millisecond) per window instead of one per step.
        """
        return self._at_boundary

    @property  # type: ignore[override]  # torchmetrics declares a plain attribute
    def _forward_cache(self) -> Optional[Tensor]:
        """The latest window value, or ``None``: what Lightning logs on step after ``forward`` or ``update``."""
        return self._latest_value() if self._has_latest else None

    @_forward_cache.setter
    def _forward_cache(self, value: object) -> None:
        """Ignore torchmetrics' writes (``__init__``, ``reset``, ``.to``): the cache derives from the states."""

    def _present_latest(self) -> None:
        """Make the latest window value that ``forward`` returns now, so that the next update does not.

        Called where the latest value changes outside a boundary: loading, moving to another device.
        """
        if self._has_latest:
            self._latest_value()

    def _refuse_update_while_synced(self) -> NoReturn:
        """Refuse an update while the states are synchronised (after ``sync()``, before ``unsync()``).

        Raises:
            TorchMetricsUserError: Always; the update path calls it when ``self._is_synced``.
        """
        raise TorchMetricsUserError(
            f"{type(self).__name__} cannot be updated while it is synchronised: call `unsync()` first"
        )

    def _advance(self) -> None:
        """Count one update and, if it completes the window, close the window.

        This and the other methods on the update path set plain attributes in ``__dict__`` directly:
        ``nn.Module.__setattr__`` costs about 1 µs, as much as the rest of an update.
        """
        attributes = self.__dict__
        updates = attributes["_update_count"] = self._update_count + 1
        attributes["_computed"] = None
        if updates % self.window:
            attributes["_at_boundary"] = False
        else:
            self._close()

    def _close(self) -> None:
        attributes = self.__dict__
        attributes["_at_boundary"] = False
        try:
            self._close_window()
        finally:
            self._clear_window()
        attributes["_has_latest"] = attributes["_at_boundary"] = True

    def compute(self) -> Tensor:
        """Return the latest window value; before the first window completes, the value of the updates so far."""
        return self._latest_value() if self._has_latest else self._window_value()

    def reset(self) -> None:
        """Clear the window, its position and the latest value.

        With ``span_epochs=True``, the reset that Lightning's logger connector performs on every logged metric
        at the end of a training epoch or validation run changes nothing; any other call clears everything.
        """
        if self.span_epochs and reset_by_lightning_at_loop_end():
            return
        super().reset()
        self._at_boundary = self._has_latest = False
        self._clear_window()  # the accumulators as updates add to them, not as torchmetrics' defaults left them

    @abstractmethod
    def _close_window(self) -> None:
        """Keep the value of the window that the current update completes, synchronised across processes."""

    @abstractmethod
    def _clear_window(self) -> None:
        """Empty the window's accumulators."""

    @abstractmethod
    def _latest_value(self) -> Tensor:
        """Return the value that the last :meth:`_close_window` kept."""

    @abstractmethod
    def _window_value(self) -> Tensor:
        """Return the value of the updates accumulated so far, synchronised across processes."""

    @abstractmethod
    def _discard_saved_window(self, state_dict: dict[str, Any], prefix: str) -> None:
        """Empty the window's accumulators, and remove their saved values from ``state_dict``."""

    def _wrap_update(self, update: Callable[..., None]) -> Callable[..., None]:
        """Leave ``update`` unwrapped: it counts itself, clears the compute cache and keeps no autograd graph.

        torchmetrics' wrapper would count the call before the inputs are checked, and ``forward`` shares
        ``update``'s path, which a wrapper would slow down by more than an update costs.
        """
        return update

    def _sync_dist(
        self, dist_sync_fn: Callable[..., list[Tensor]] = gather_all_tensors, process_group: Optional[Any] = None
    ) -> None:
        """Synchronise nothing: the states of the window mechanics are the same on every process.

        Subclasses with accumulators replace them by their sums over all processes.
        """

    def _apply(self, fn: Callable[[Tensor], Tensor], exclude_state: Sequence[str] = ()) -> Module:
        """Apply ``fn`` to the module, and move this metric's states to its new device, dtype unchanged.

        torchmetrics applies a dtype cast (``.to(dtype)``, ``set_dtype``) to every state; a window's float64
        sums would lose the precision that long windows need, and a checkpoint saved under one precision could
        not be loaded under another. So this metric's states only follow the device, like the device that
        torchmetrics works out from ``fn``; a value cached by ``compute()`` is dropped, as it may have been cast.
        """
        own = [key for key in self._defaults if key not in exclude_state]
        this = super()._apply(fn, exclude_state=(*exclude_state, *own))
        device = self._device
        for key in own:
            default = self._defaults[key]
            if isinstance(default, Tensor):
                self._defaults[key] = default.to(device)
            self._move_state(key, device)
        self._computed = None
        self._present_latest()
        return this

    def _move_state(self, key: str, device: torch.device) -> None:
        """Move the state ``key`` to ``device``, its dtype unchanged."""
        setattr(self, key, getattr(self, key).to(device))

    def persistent(self, mode: bool = False) -> None:
        """Say whether ``state_dict()`` saves the states and the window's position (default: no)."""
        super().persistent(mode)
        self._persistent["unshared"] = False

    def _config(self) -> str:
        """The class and the arguments, as ``state_dict()`` records them: ``WindowedMean(window=3, ...)``."""
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        """Return the arguments that configure the metric, as ``repr`` shows them."""
        return f"window={self.window}, span_epochs={self.span_epochs}"

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        """Save the window's position beside the persistent states (torchmetrics saves those).

        The entry is an int64 tensor on the CPU: ``[configuration checksum, updates since reset, at_boundary,
        has_latest, rank of the saving process]``.
        """
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if any(self._persistent.values()):
            position = [self._config_checksum(), self._update_count, self._at_boundary, self._has_latest]
            destination[prefix + WINDOW_STATE_KEY] = torch.tensor([*position, current_rank()], dtype=torch.int64)

    def _config_checksum(self) -> int:
        """A CRC-32 of :meth:`_config`: equal for equally configured metrics, different (but by chance) otherwise."""
        return zlib.crc32(self._config().encode())

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
        """Load the states and the window's position, unless they were saved by a differently configured metric.

        A refusal leaves this metric and its submodules (a wrapped metric) as they were. The sums of the window
        in progress are the saving process's own: they are restored only on the process of the same rank
        (the only one, without ``torch.distributed``), and every other process starts them from zero. So a
        checkpoint that each process saves and loads for itself resumes exactly, and a checkpoint of one rank
        loaded by every process (Lightning's) counts no update twice, whatever the world sizes at saving and
        loading: the window in progress then holds that rank's updates, and the other ranks' are lost. The
        position, the latest window value and an EMA are the same on every process, and are restored on all.
        The rank is read when the states are loaded: load them after ``torch.distributed`` is initialised (as
        ``Trainer.fit(ckpt_path=...)`` does).
        """
        saved = state_dict.pop(prefix + WINDOW_STATE_KEY, None)
        if self._device.type == "meta":
            self._materialise_for(state_dict, prefix)
        if saved is not None:
            checksum, updates, at_boundary, has_latest, rank = (int(number) for number in saved.tolist())
            if checksum != self._config_checksum():
                for key in [key for key in state_dict if key.startswith(prefix)]:
                    del state_dict[key]
                error_msgs.append(
                    f"{prefix}{WINDOW_STATE_KEY}: the states were saved by a differently configured metric than"
                    f" {self._config()} (configuration checksum {checksum} instead of {self._config_checksum()})"
                )
                return
            if rank != current_rank():
                self._discard_saved_window(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if saved is not None:
            self._update_count, self._at_boundary, self._has_latest = updates, bool(at_boundary), bool(has_latest)
        self._computed = None
        self._present_latest()

    def _materialise_for(self, state_dict: dict[str, Any], prefix: str) -> None:
        """Give a metric created on the ``meta`` device real initial states where the loaded states are.

        As torchmetrics' own metrics, a metric made under ``torch.device("meta")`` then takes the loaded values
        (``load_state_dict(..., assign=True)``, as deferred initialisation does).
        """
        loaded = [
            state_dict[prefix + key] for key in self._defaults if isinstance(state_dict.get(prefix + key), Tensor)
        ]
        if not loaded or loaded[0].is_meta:
            return
        device = self._device = loaded[0].device
        for key, default in self._defaults.items():
            if isinstance(default, Tensor) and default.is_meta:
                initial = math.nan if key == "unshared" else 0.0
                initial_state = torch.full(default.shape, initial, dtype=default.dtype, device=device)
                self._defaults[key] = initial_state
                setattr(self, key, initial_state.clone())
        self._clear_window()

    def plot(self, val: Optional[Any] = None, ax: Optional[_AX_TYPE] = None) -> _PLOT_OUT_TYPE:
        """Plot a window value, or a sequence of them, with torchmetrics' plotting (needs matplotlib).

        Args:
            val: a value returned by ``forward`` or ``compute``, or a list of them (one per window); by default
                the value of ``compute()``.
            ax: a matplotlib axis to draw into; by default a new figure.

        Returns:
            The figure and the axis.

        Example:
            >>> from windowmetrics import WindowedMean
            >>> metric = WindowedMean(window=2)
            >>> values = [metric(float(step)) for step in range(6)][1::2]  # the value at each boundary
            >>> fig, ax = metric.plot(values)
        """
        return self._plot(val, ax)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, then give every metric state its own storage.

        ``torch.multiprocessing`` (Lightning's ``ddp_spawn``) moves pickled CPU tensors to shared memory, so
        that processes unpickling the same module would otherwise accumulate into the same storage.
        """
        super().__setstate__(state)
        for module in self.modules():
            if isinstance(module, Metric):
                for name in module._defaults:
                    value = getattr(module, name)
                    copy = value.clone() if isinstance(value, Tensor) else [item.clone() for item in value]
                    setattr(module, name, copy)
