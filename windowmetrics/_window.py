"""The window mechanics that every windowmetrics metric shares: position, boundary, reset, persistence."""

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from copy import deepcopy
from typing import Any, ClassVar, NoReturn, Optional

import torch
from torch import Tensor
from torch.nn import Module
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors
from torchmetrics.utilities.exceptions import TorchMetricsUserError
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

from windowmetrics._checkpoint import (
    FIELD_PREFIX,
    Absent,
    Position,
    is_integer_entry,
    load_position,
    save_position,
)
from windowmetrics._distributed import GatherFn
from windowmetrics._lightning import LightningReset, lightning_reset_caller, lightning_sanity_checking
from windowmetrics._validation import check_flag, check_window, describe


def output_dtype() -> torch.dtype:
    """Return the dtype of returned values: torch's default float dtype, but never below float32."""
    dtype = torch.get_default_dtype()
    return dtype if dtype.itemsize >= 4 else torch.float32


class WindowMetric(Metric, ABC):
    """A torchmetrics ``Metric`` that closes a window every ``window`` calls of ``update`` or ``forward``.

    This class owns the window's position, its boundary and the latest window value, and the parts of the
    torchmetrics and Lightning protocols that follow from them. A subclass owns its accumulators, which hold the
    window in progress and, beside it, everything since the last reset, and says through five methods what they
    are worth:

    - :meth:`_close_window` returns the value of the window that the current update completes, synchronised
      across processes; :meth:`_clear_window` then empties the window (never the since-reset aggregate);
    - :meth:`_aggregate_value` returns the value of everything since the last reset, synchronised (what
      ``compute()`` returns);
    - :meth:`_clear_aggregate` empties the since-reset aggregate alone (the reset that Lightning performs at the
      end of a loop, with ``span_epochs=True``);
    - :meth:`_rank_local_states` names the states that hold this process's own updates (restored from a
      checkpoint only on the process of the rank that saved them).

    Its ``update`` checks the inputs, adds them (a synchronised metric refuses them:
    :meth:`_refuse_update_while_synced`), then calls :meth:`_count_update`. The contract, for every subclass:

    - Every call of ``update`` or ``forward`` counts once. The call that completes a window is its *boundary*:
      the window's value is computed, synchronised across processes, kept as the latest window value
      (:attr:`window_value`), and the window's accumulators are cleared. Windows do not overlap.
    - ``forward`` returns :attr:`window_value`: the latest window value, or ``None`` until a window has
      completed since ``reset()``. Lightning's ``self.log(name, metric)`` logs the same value on step after
      ``forward`` or ``update`` (it reads ``_forward_cache``, which here *is* the window value).
    - ``compute()`` returns the value of everything since the last reset (what Lightning's ``on_epoch=True``
      logs), synchronised across processes: a collective that every process must call.
    - Values are returned in torch's default float dtype, but never below float32.
    - ``reset()`` clears everything. Lightning calls it on every logged metric at the end of each training
      epoch and validation run; with ``span_epochs=True`` that reset clears the since-reset aggregate alone, so
      that windows run on over the whole run while ``compute()`` stays per epoch. The resets of Lightning's
      sanity check leave the metric as it was before the sanity check, whose updates are undone.

    How the states are kept:

    - The registered states (``add_state``) are float64 tensors on the metric's device, updated in place, on
      every device alike. A dtype cast of the module (``.half()``, ``.to(torch.bfloat16)``, ``set_dtype``,
      Lightning's ``precision="bf16-true"``) moves them to the new device, if any, and changes neither their
      dtype nor their value.
    - The position inside the window is Python state; with ``persistent(True)``, ``state_dict()`` saves it as
      named entries beside the states (see :mod:`windowmetrics._checkpoint`).
    - ``MetricCollection`` compute groups never merge a window metric with another: its first registered state,
      ``unshared``, holds NaN, which is equal to nothing; a compute group listed by hand is refused on its first
      update (:attr:`_update_count`).
    """

    full_state_update = True  # forward's value depends on the whole state
    is_differentiable = False
    higher_is_better = None
    __jit_unused_properties__: ClassVar[list[str]] = [
        *Metric.__jit_unused_properties__,
        "at_boundary",
        "window_value",
        "_forward_cache",
        "_update_count",
        "update_called",  # torchmetrics' properties that read _update_count
        "update_count",
    ]
    _python_state: ClassVar[tuple[str, ...]] = ("_position", "_updates", "_at_boundary", "_has_latest")
    """The attributes beside the registered states that a snapshot (the sanity check's) saves and restores."""

    unshared: Tensor
    latest: Tensor

    def __init__(self, window: int, span_epochs: bool = False, **kwargs: Any) -> None:
        window = check_window(window)
        span_epochs = check_flag("span_epochs", span_epochs)
        super().__init__(**kwargs)
        self.window = window
        self.span_epochs = span_epochs
        self._to_sync = False  # torchmetrics' compute wrapper must not synchronise: compute() does, in one collective
        self._position = 0  # updates into the window in progress
        self._at_boundary = False
        self._has_latest = False
        self._presented: Optional[tuple[torch.dtype, Tensor]] = None  # the latest value as `forward` returns it
        self._probe_lightning = True  # look once whether the next update runs in Lightning's sanity check
        self._sanity_snapshot: Optional[dict[str, Any]] = None  # the metric as the sanity check found it
        # NaN is equal to nothing, not even itself: compute groups, which compare the states in the order they
        # were registered (torchmetrics < 1.6 compares only the first), never merge this metric with another.
        self.add_state("unshared", torch.tensor(math.nan, dtype=torch.float64), dist_reduce_fx=None, persistent=False)

    # The position ------------------------------------------------------------------------------------------------

    @property
    def _update_count(self) -> int:
        """The number of updates since the last reset (of any kind): what ``compute()`` covers.

        torchmetrics reads it (``compute()`` before any update warns) and resets it. A ``MetricCollection``
        compute group writes its first member's count into the others after each update, with that member's
        states: a window metric's position is not a state, so it refuses to be such a member, with an error that
        says so, rather than report another metric's windows.

        Raises:
            ValueError: If anything but a reset changes the count (a compute group listed by hand).
        """
        return int(self.__dict__.get("_updates", 0))

    @_update_count.setter
    def _update_count(self, value: int) -> None:
        if value == 0:
            self.__dict__["_updates"] = 0
        elif value != self.__dict__.get("_updates", 0):
            raise ValueError(
                f"{type(self).__name__} cannot share the states of another metric in a MetricCollection compute"
                " group: its window's position is its own. Leave it out of `compute_groups` (the default,"
                " compute_groups=True, never groups a window metric)."
            )

    @property
    def at_boundary(self) -> bool:
        """Whether the most recent ``update`` or ``forward`` completed a window (``False`` after ``reset()``).

        A value logged with Lightning's ``self.log`` stays on show until it is logged again, so
        ``if metric.at_boundary: self.log(name, metric)`` logs the same series as logging at every step, for
        one ``self.log`` call (about half a millisecond) per window instead of one per step.
        """
        return self._at_boundary

    @property
    def window_value(self) -> Optional[Tensor]:
        """The value of the latest completed window, or ``None`` until a window completes after ``reset()``.

        What ``forward`` returns and what Lightning's ``self.log(name, metric)`` logs on step, after ``forward``
        or ``update`` alike. It is made once per window, in torch's default float dtype but never below float32.

        Example:
            >>> import torch
            >>> from windowmetrics import WindowedMean
            >>> metric = WindowedMean(window=2)
            >>> metric.update(torch.tensor(1.0))
            >>> print(metric.window_value)
            None
            >>> metric.update(torch.tensor(3.0))
            >>> metric.window_value
            tensor(2.)
        """
        if self._sanity_snapshot is not None:  # read after a sanity check that did not reset this metric
            self._follow_sanity_check()
        if not self._has_latest:
            return None
        presented = self._presented
        default = torch.get_default_dtype()
        if presented is None or presented[0] is not default:
            presented = (default, self._present(self.latest))
            self.__dict__["_presented"] = presented
        return presented[1]

    @property  # type: ignore[override]  # torchmetrics declares a plain attribute
    def _forward_cache(self) -> Optional[Tensor]:
        """The latest window value, or ``None``: what Lightning logs on step after ``forward`` or ``update``."""
        return self.window_value

    @_forward_cache.setter
    def _forward_cache(self, value: object) -> None:
        """Ignore torchmetrics' writes (``__init__``, ``reset``, ``.to``): the cache is the window value."""

    def _present(self, latest: Tensor) -> Tensor:
        """Return the latest window value as ``forward`` returns it: rounded once to the output dtype."""
        return latest.to(output_dtype())

    def _refuse_update_while_synced(self) -> NoReturn:
        """Refuse an update while the states are synchronised (after ``sync()``, before ``unsync()``).

        Raises:
            TorchMetricsUserError: Always; the update path calls it when ``self._is_synced``.
        """
        raise TorchMetricsUserError(
            f"{type(self).__name__} cannot be updated while it is synchronised: call `unsync()` first"
        )

    def _before_update(self) -> None:
        """Check, before an update changes anything, that the metric may be updated; undo Lightning's sanity check.

        Raises:
            TorchMetricsUserError: If the metric is synchronised.
        """
        if self._is_synced:
            self._refuse_update_while_synced()
        if self._probe_lightning:
            self._follow_sanity_check()

    def _count_update(self) -> None:
        """Count one update and, if it completes the window, close the window.

        This and the other methods on the update path set plain attributes in ``__dict__`` directly:
        ``nn.Module.__setattr__`` costs about 1 µs, as much as the rest of an update.
        """
        attributes = self.__dict__
        attributes["_updates"] = attributes["_updates"] + 1
        attributes["_computed"] = None
        position = self._position + 1
        if position < self.window:
            attributes["_position"] = position
            attributes["_at_boundary"] = False
        else:
            attributes["_position"] = 0
            self._close()

    def _close(self) -> None:
        attributes = self.__dict__
        attributes["_at_boundary"] = False
        try:
            latest = self._close_window()
        finally:
            self._clear_window()
        attributes["latest"] = latest
        attributes["_presented"] = None
        attributes["_has_latest"] = attributes["_at_boundary"] = True

    def compute(self) -> Tensor:
        """Return the value of every update since the last reset, synchronised across processes.

        Every process must call it, as for torchmetrics' own metrics. With no update since the reset, what the
        torchmetrics counterpart returns, with torchmetrics' warning.
        """
        if self._sanity_snapshot is not None:  # read after a sanity check that did not reset this metric
            self._follow_sanity_check()
        return self._aggregate_value()

    # Resets and Lightning's sanity check ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Clear the window, its position, the latest value and the since-reset aggregate.

        Two resets that Lightning performs on every logged metric are told apart from any other: the one at the
        end of a training epoch or validation run, which with ``span_epochs=True`` clears the since-reset
        aggregate alone; and those of the sanity check, which put the metric back as the sanity check found it.
        Any other call clears everything.
        """
        caller = lightning_reset_caller(self)
        if caller is LightningReset.SANITY_CHECK:
            self._end_sanity_check()
            return
        self.__dict__["_probe_lightning"] = True
        if caller is LightningReset.LOOP_END and self.span_epochs:
            self._clear_aggregate()
            self.__dict__["_updates"] = 0
            self.__dict__["_computed"] = None
            return
        super().reset()
        attributes = self.__dict__
        attributes["_position"] = 0
        attributes["_at_boundary"] = attributes["_has_latest"] = False
        attributes["_presented"] = None
        attributes["_sanity_snapshot"] = None
        self._after_reset()

    def _after_reset(self) -> None:
        """Put what torchmetrics' ``reset()`` does not know back to its initial value (nothing here)."""

    def _follow_sanity_check(self) -> None:
        """Snapshot the metric when an update first runs in Lightning's sanity check; restore it after the check.

        Called on the first update after the metric was created, reset, loaded, moved or unpickled (Lightning
        moves the module at the start of every ``fit``), and on every update while a snapshot is held: a few
        microseconds each, never on the updates of a training or validation run.
        """
        sanity = lightning_sanity_checking()
        if self._sanity_snapshot is None:
            if sanity:
                self.__dict__["_sanity_snapshot"] = self._snapshot()
            else:
                self.__dict__["_probe_lightning"] = False
        elif not sanity:  # the sanity check is over, and Lightning did not reset this metric (it is not logged)
            self._end_sanity_check()
            self.__dict__["_probe_lightning"] = False

    def _end_sanity_check(self) -> None:
        """Put the metric back as the sanity check found it, if the sanity check updated it."""
        snapshot = self.__dict__["_sanity_snapshot"]
        if snapshot is not None:
            self._restore(snapshot)
            self.__dict__["_sanity_snapshot"] = None
        self.__dict__["_probe_lightning"] = True

    def _snapshot(self) -> dict[str, Any]:
        """Return copies of every state of this metric and of the metrics it holds, and of its Python state."""
        metrics = {
            name: (
                {key: deepcopy(getattr(module, key)) for key in module._defaults},
                {key: deepcopy(module.__dict__.get(key)) for key in self._python_state_of(module)},
            )
            for name, module in self.named_modules()
            if isinstance(module, Metric)
        }
        return {"metrics": metrics}

    def _restore(self, snapshot: dict[str, Any]) -> None:
        """Restore what :meth:`_snapshot` saved."""
        modules = dict(self.named_modules())
        for name, (states, python_state) in snapshot["metrics"].items():
            module = modules[name]
            for key, value in states.items():
                setattr(module, key, value)
            module.__dict__.update(python_state)
            module._computed = None
        self.__dict__["_presented"] = None

    @staticmethod
    def _python_state_of(module: Module) -> tuple[str, ...]:
        if isinstance(module, WindowMetric):
            return module._python_state
        return ("_update_count",)

    # Abstract: the accumulators ------------------------------------------------------------------------------------

    @abstractmethod
    def _close_window(self) -> Tensor:
        """Return the value of the window that the current update completes, synchronised across processes."""

    @abstractmethod
    def _clear_window(self) -> None:
        """Empty the window's accumulators, leaving the since-reset aggregate."""

    @abstractmethod
    def _aggregate_value(self) -> Tensor:
        """Return the value of every update since the last reset, synchronised across processes."""

    @abstractmethod
    def _clear_aggregate(self) -> None:
        """Empty the since-reset aggregate, leaving the window."""

    @abstractmethod
    def _rank_local_states(self) -> tuple[str, ...]:
        """Name the states that hold this process's own updates (``state_dict`` keys, relative to the metric)."""

    # The torchmetrics protocol -----------------------------------------------------------------------------------

    def _wrap_update(self, update: Callable[..., None]) -> Callable[..., None]:
        """Leave ``update`` unwrapped: it counts itself, clears the compute cache and keeps no autograd graph.

        torchmetrics' wrapper would count the call before the inputs are checked, and ``forward`` shares
        ``update``'s path, which a wrapper would slow down by more than an update costs.
        """
        return update

    def _sync_dist(self, dist_sync_fn: GatherFn = gather_all_tensors, process_group: Optional[Any] = None) -> None:
        """Synchronise nothing: the latest window value is the same on every process.

        Subclasses with accumulators replace them by their reductions over all processes.
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
            setattr(self, key, getattr(self, key).to(device))
        self._computed = None
        self.__dict__["_presented"] = None
        self.__dict__["_probe_lightning"] = True
        return this

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

    def _position_now(self) -> Position:
        return Position(
            config=self._config(),
            position=self._position,
            updates=self._update_count,
            at_boundary=self._at_boundary,
            has_latest=self._has_latest,
        )

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        """Save the window's position beside the persistent states (torchmetrics saves those).

        Each field is its own entry, a 0-dim int64 tensor (see :mod:`windowmetrics._checkpoint`).
        """
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if any(self._persistent.values()):
            self._before_saving()
            save_position(self._position_now(), destination, prefix)
            for name, number in self._extra_fields().items():
                destination[f"{prefix}{FIELD_PREFIX}{name}"] = torch.tensor(number, dtype=torch.int64)

    def _extra_fields(self) -> dict[str, int]:
        """Name the counts that a subclass saves beside the position, each a non-negative int (none here)."""
        return {}

    def _load_extra_fields(self, fields: dict[str, int], own_rank: bool) -> None:
        """Take the counts that :meth:`_extra_fields` saved, after the states are loaded (nothing here)."""

    def _before_saving(self) -> None:
        """Bring the registered states up to date before torchmetrics copies them (nothing here)."""

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
        """Load the states and the window's position; refuse malformed or foreign entries, changing nothing.

        Every entry is checked before anything is loaded (see :func:`~windowmetrics._checkpoint.load_position`):
        a refusal adds an error that names the key (``load_state_dict`` then raises) and leaves this metric and
        the metrics it holds as they were. States saved by a differently configured metric (another window,
        say) are refused too; with ``strict=False`` they are left out with a warning instead, and the metric
        starts afresh, so that a run can resume from a checkpoint after its windows changed.

        The states that hold a process's own updates (the window in progress and the since-reset aggregate)
        are restored only on the process of the rank that saved them (the only one, without
        ``torch.distributed``), and every other process starts them from zero. So a checkpoint that each process
        saves and loads for itself resumes exactly, and a checkpoint of one rank loaded by every process
        (Lightning's) counts no update twice, whatever the world sizes at saving and loading. The position, the
        latest window value and an EMA are the same on every process, and are restored on all. The rank is read
        when the states are loaded: load them after ``torch.distributed`` is initialised (as
        ``Trainer.fit(ckpt_path=...)`` does).
        """
        if any(isinstance(default, Tensor) and default.is_meta for default in self._defaults.values()):
            self._materialise_for(state_dict, prefix)  # (torchmetrics < 1.4 gives such a metric the CPU as device)
        loaded = load_position(self, state_dict, prefix, strict, error_msgs)
        if loaded is Absent.REFUSED:
            return
        if loaded is Absent.NOTHING_SAVED:
            super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
            return
        position, own_rank = loaded
        extra = self._take_extra_fields(state_dict, prefix, error_msgs)
        if extra is None:
            return
        if not own_rank:
            for key in self._rank_local_states():
                state_dict.pop(prefix + key, None)
            self._forget_rank_local_states()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._own_loaded_states()
        self._load_extra_fields(extra, own_rank)
        attributes = self.__dict__
        attributes["_position"] = position.position
        attributes["_updates"] = position.updates
        attributes["_at_boundary"], attributes["_has_latest"] = position.at_boundary, position.has_latest
        attributes["_computed"] = attributes["_presented"] = attributes["_sanity_snapshot"] = None
        attributes["_probe_lightning"] = True

    def _take_extra_fields(
        self, state_dict: dict[str, Any], prefix: str, error_msgs: list[str]
    ) -> Optional[dict[str, int]]:
        """Check and take the entries of :meth:`_extra_fields` out of ``state_dict``; ``None`` if one is refused.

        A refusal adds an error naming the key and removes this metric's entries, so that nothing of it loads.
        """
        fields: dict[str, int] = {}
        for name in self._extra_fields():
            key = f"{prefix}{FIELD_PREFIX}{name}"
            value = state_dict.pop(key, None)
            if not is_integer_entry(value) or int(value.item()) < 0:
                for other in [other for other in state_dict if other.startswith(prefix)]:
                    del state_dict[other]
                got = "nothing" if value is None else describe(value)
                if is_integer_entry(value):
                    got = str(int(value.item()))
                error_msgs.append(
                    f"{key}: expected a 0-dim integer tensor >= 0, got {got}; {type(self).__name__} left unchanged"
                )
                return None
            fields[name] = int(value.item())
        return fields

    def _saved_states(self) -> list[str]:
        """Name the registered states that ``state_dict()`` saves with ``persistent(True)``."""
        return [key for key in self._defaults if key != "unshared"]

    def _state_problem(self, key: str, value: object) -> Optional[str]:
        """Return what is wrong with ``value`` as the saved state ``key``, or ``None`` if it can be loaded."""
        default = self._defaults[key]
        if not isinstance(value, Tensor) or not value.dtype.is_floating_point:
            return f"expected a floating-point tensor, got {describe(value)}"
        if isinstance(default, Tensor) and value.shape != default.shape:
            return f"expected shape {tuple(default.shape)}, got {describe(value)}"
        return None

    def _forget_rank_local_states(self) -> None:
        """Start the states that hold this process's own updates from zero (they were another rank's)."""
        for key in self._rank_local_states():
            default = self._defaults[key]
            if isinstance(default, Tensor):
                setattr(self, key, default.detach().clone())

    def _own_loaded_states(self) -> None:
        """Give each loaded state its own storage, float64 on this metric's device: updates add to it in place."""
        for key, default in self._defaults.items():
            value = getattr(self, key)
            if isinstance(value, Tensor) and isinstance(default, Tensor):
                setattr(self, key, value.to(device=self._device, dtype=default.dtype, copy=True))

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
                initial_state = self._initial_state(key, default.shape, device)
                self._defaults[key] = initial_state
                setattr(self, key, initial_state.clone())

    def _initial_state(self, key: str, shape: torch.Size, device: torch.device) -> Tensor:
        """Return the initial value of the state ``key`` on ``device`` (zeros; NaN for ``unshared``)."""
        initial = math.nan if key == "unshared" else 0.0
        return torch.full(shape, initial, dtype=torch.float64, device=device)

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
        self.__dict__["_probe_lightning"] = True
        for module in self.modules():
            if isinstance(module, Metric):
                for name in module._defaults:
                    value = getattr(module, name)
                    copy = value.clone() if isinstance(value, Tensor) else [item.clone() for item in value]
                    setattr(module, name, copy)
