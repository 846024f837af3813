"""The window mechanics that every windowmetrics metric shares."""

import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from windowmetrics.validation import check_window


class WindowMetric(Metric, ABC):
    """A torchmetrics ``Metric`` that closes a window every ``window`` calls of ``update`` or ``forward``.

    This class owns the window's position and its boundary, and the parts of the torchmetrics protocol that
    follow from them; a subclass owns its accumulators and its latest window value through five methods:

    - ``update(...)`` adds its inputs to the accumulators, then calls :meth:`_advance`;
    - :meth:`_close_window` keeps the value of a completed window, synchronised across processes;
    - :meth:`_clear_window` empties the accumulators;
    - :meth:`_latest_value` returns the kept value;
    - :meth:`_window_value` returns the value of the updates accumulated so far, synchronised like a window.

    The contract, for every subclass:

    - Every call of ``update`` or ``forward`` counts once. The call that completes a window is its *boundary*:
      the window's value is computed, synchronised across processes, kept as the latest window value, and the
      accumulators are cleared. Windows do not overlap; :attr:`at_boundary` says whether the last call was one.
    - ``forward`` returns the latest window value, or ``None`` until a window has completed since ``reset()``.
      Lightning's ``self.log(name, metric)`` logs the same value after ``forward`` or ``update`` (it reads
      ``_forward_cache``, which here *is* the latest window value), and logs nothing before the first window.
    - ``compute()`` returns the latest window value or, before the first window completes, the value of the
      updates so far, synchronised like a full window (a collective that every process must call).
    - ``reset()`` clears everything: accumulators, position, latest value. Lightning calls it on every logged
      metric at the end of each epoch, so a window never spans two epochs.
    - Every state is registered with ``add_state``: with ``persistent(True)``, ``state_dict()`` saves the
      position inside the current window and a resumed run continues it exactly. The ``settings`` state
      records the metric's class and arguments: ``MetricCollection`` merges the states only of identically
      configured metrics, whose reads all derive from the shared states, and ``load_state_dict`` refuses the
      states of a differently configured metric.
    """

    full_state_update = True  # forward's value depends on the whole state; torchmetrics' merge_state is refused
    is_differentiable = False
    higher_is_better = None

    settings: Tensor

    def __init__(self, window: int, settings: Sequence[float] = (), **kwargs: Any) -> None:
        window = check_window(window)
        super().__init__(**kwargs)
        self.window = window
        # torchmetrics' compute wrapper must not synchronise the states: windows are synchronised when they close
        self._to_sync = False
        self._at_boundary = False
        self._has_latest = False
        # The states below are never reduced across processes (see _sync_dist): they are the same on every one.
        self.add_state("tally", torch.zeros(3, dtype=torch.int64), dist_reduce_fx=None)
        identity = [_class_code(type(self)), window, *settings]
        self.add_state("settings", torch.tensor(identity, dtype=torch.float64), dist_reduce_fx=None)

    @property
    def at_boundary(self) -> bool:
        """Whether the most recent ``update`` or ``forward`` completed a window (``False`` after ``reset()``).

        A value logged with Lightning's ``self.log`` stays on show until it is logged again, so
        ``if metric.at_boundary: self.log(name, metric)`` logs the same series as logging at every step, for
        one ``self.log`` call (about half a millisecond) per window instead of one per step.
        """
        return self._at_boundary

    @property
    def tally(self) -> Tensor:
        """State ``[updates since reset, at_boundary, has a latest value]``, an int64 tensor on the CPU."""
        return torch.tensor([self._update_count, self._at_boundary, self._has_latest], dtype=torch.int64)

    @tally.setter
    def tally(self, value: Tensor) -> None:
        updates, at_boundary, has_latest = value.tolist()
        self.__dict__.update(_update_count=int(updates), _at_boundary=bool(at_boundary), _has_latest=bool(has_latest))

    @property  # type: ignore[override]  # torchmetrics declares a plain attribute
    def _forward_cache(self) -> Optional[Tensor]:
        """The latest window value, or ``None``: what Lightning logs on step after ``forward`` or ``update``."""
        return self._latest_value() if self._has_latest else None

    @_forward_cache.setter
    def _forward_cache(self, value: object) -> None:
        """Ignore torchmetrics' writes (``__init__``, ``reset``, ``.to``): the cache derives from the states."""

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
        """Load the states, unless they were saved by a differently configured metric.

        A refusal leaves this metric and its submodules (a wrapped metric) as they were.
        """
        saved = state_dict.get(prefix + "settings")
        if saved is not None and not _same_numbers(saved, self.settings):
            for key in [key for key in state_dict if key.startswith(prefix)]:
                del state_dict[key]
            error_msgs.append(
                f"{prefix}settings: the states were saved by a differently configured metric ({saved.tolist()}"
                f" instead of {self.settings.tolist()}, as [class code, window, other arguments])"
            )
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

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


def _class_code(cls: type) -> float:
    """Return a number that identifies a class by its qualified name (a CRC-32, exact in float64)."""
    return float(zlib.crc32(f"{cls.__module__}.{cls.__qualname__}".encode()))


def _same_numbers(first: Tensor, second: Tensor) -> bool:
    return first.shape == second.shape and bool(
        torch.allclose(first.cpu(), second.cpu(), rtol=0.0, atol=0.0, equal_nan=True)
    )
