"""Tell the reset that Lightning performs on logged metrics at the end of a loop from every other reset.

Lightning keeps each value given to ``self.log``/``self.log_dict`` in a ``_ResultMetric`` of its logger
connector (``lightning.pytorch.trainer.connectors.logger_connector.result``, or
``pytorch_lightning.trainer.connectors.logger_connector.result`` under the package's other name). When the
logged value is a torchmetrics ``Metric``, ``_ResultMetric.reset`` is, on every Lightning release from 2.1.0 to
2.6.6 (both package names, every minor's first and last release read)::

    def reset(self) -> None:
        if self.is_tensor:
            super().reset()
        else:
            self.value.reset()
        self.has_reset = True

and it is the only place where Lightning calls ``reset()`` on a user's metric. It runs through
``_ResultCollection.reset`` (``item.reset()`` on every item; the other call of that method, in
``LightningModule.log``, passes ``metrics=False`` and resets logged tensors only), called only by
``_LoggerConnector.reset_results``, which is called:

- at the end of each training epoch (``_LoggerConnector.update_train_epoch_metrics``, after the
  ``on_train_epoch_end`` hooks, where ``ModelCheckpoint`` saves by default, and after the epoch-end values,
  ``compute()`` of metrics logged with ``on_epoch=True``, have been logged);
- at the end of each validation or test run (``_EvaluationLoop._on_evaluation_end``, after the
  ``on_validation_end``/``on_test_end`` hooks and after the run's epoch-end values have been logged);
- when ``Trainer.fit``/``validate``/``test``/``predict`` starts (``Trainer._run``), on the results of the loop
  about to run: empty on a new ``Trainer``, or holding what the previous run of that loop logged;
- before and after the sanity check (``Trainer._run_sanity_check``), whose validation run also ends with the
  reset above.

So a ``reset()`` of a metric was requested by Lightning's logger connector exactly when ``_ResultMetric.reset``
with this metric as its ``value`` called it. The check reads the interpreter's frames (``sys._getframe``) and
never imports Lightning. A reset that user code calls (directly, through ``MetricCollection.reset()``, in a
Lightning hook such as ``on_train_epoch_start``, or outside Lightning) never runs under that frame and is never
mistaken for Lightning's. Every way the check can fail (another Python implementation without
``sys._getframe``, a future Lightning that renames or restructures these methods) makes it answer ``OTHER``, so
that the reset clears the metric as it does without ``span_epochs``; the Lightning tests, run on the oldest and
newest supported releases, would then fail, as spanning windows would no longer span.

The resets around and at the end of the sanity check (``Trainer(num_sanity_val_steps=...)``, on by default)
are told apart: the sanity check's batches are a dry run whose values Lightning logs nowhere, and it must leave
every metric as it found it. They are found through the frame of ``_LoggerConnector.reset_results``, two frames
above ``_ResultMetric.reset`` on every release read, whose ``self.trainer.sanity_checking`` is then true.

Between the metric's ``reset`` and ``_ResultMetric.reset`` there may be other frames: overrides of ``reset``
calling ``super().reset()``, or a decorator's wrapper around ``reset``. Up to :data:`_CALLER_FRAMES` frames are
searched for a ``_ResultMetric.reset`` whose ``value`` is this very metric; a metric reset by another metric's
``reset`` (a user's override that resets a second metric) is therefore not taken for Lightning's.

Whether an *update* runs in the sanity check (:func:`lightning_sanity_checking`) is read the same way: the
frames above it include Lightning's evaluation loop, whose ``trainer`` says.
"""

import enum
import sys
from types import FrameType
from typing import Any, Optional

_RESULT_MODULE = ".trainer.connectors.logger_connector.result"
_CONNECTOR_MODULE = ".trainer.connectors.logger_connector.logger_connector"
_LIGHTNING_PACKAGES = ("lightning.", "pytorch_lightning.")
_CALLER_FRAMES = 8
"""How many frames above the metric's ``reset`` are searched for Lightning's ``_ResultMetric.reset``."""
_CONNECTOR_FRAMES = 3
"""How many frames above ``_ResultMetric.reset`` are searched for ``_LoggerConnector.reset_results``."""
_UPDATE_FRAMES = 40
"""How many frames above an update are searched for a Lightning frame that knows the trainer."""


class LightningReset(enum.Enum):
    """Who asked for a metric's ``reset()``."""

    OTHER = "user code, or anything but Lightning's logger connector"
    LOOP_END = "Lightning's logger connector, at the end of a loop or the start of a run"
    SANITY_CHECK = "Lightning's logger connector, around or at the end of the sanity check"


def lightning_reset_caller(metric: object, depth: int = 2) -> LightningReset:
    """Return who asked for the ``reset()`` of ``metric`` that is running now.

    Args:
        metric: the metric being reset.
        depth: how many frames above this function's own the metric's ``reset`` runs: ``2`` (the default) when
            the metric's ``reset`` calls this function itself.

    Returns:
        ``LOOP_END`` or ``SANITY_CHECK`` if Lightning's ``_ResultMetric.reset`` holding ``metric`` called it,
        through at most :data:`_CALLER_FRAMES` frames; ``OTHER`` otherwise, and wherever the frames cannot be
        read.

    Example:
        >>> import torch
        >>> from windowmetrics._lightning import lightning_reset_caller
        >>> class Probe(torch.nn.Module):
        ...     def reset(self) -> str:
        ...         return lightning_reset_caller(self).name
        >>> Probe().reset()  # called by user code, not by Lightning's logger connector
        'OTHER'
    """
    frame = _frame(depth)
    for _ in range(_CALLER_FRAMES):
        if frame is None:
            return LightningReset.OTHER
        if _is_result_metric_reset_of(frame, metric):
            return LightningReset.SANITY_CHECK if _sanity_checking(frame) else LightningReset.LOOP_END
        frame = frame.f_back
    return LightningReset.OTHER


def lightning_sanity_checking(depth: int = 2) -> bool:
    """Return whether the code running now was called by Lightning during its sanity check.

    Looks at up to :data:`_UPDATE_FRAMES` frames above the caller's for a Lightning frame that holds the
    trainer (a loop's ``self.trainer``, or a ``trainer`` variable), and returns its ``sanity_checking``;
    ``False`` outside Lightning. A few microseconds: called once after a metric is created, reset, loaded or
    moved, not at every update.
    """
    frame = _frame(depth)
    for _ in range(_UPDATE_FRAMES):
        if frame is None:
            return False
        if str(frame.f_globals.get("__name__", "")).startswith(_LIGHTNING_PACKAGES):
            trainer = _trainer_in(frame)
            if trainer is not None:
                return getattr(trainer, "sanity_checking", False) is True
        frame = frame.f_back
    return False


def _frame(depth: int) -> Optional[FrameType]:
    get_frame = getattr(sys, "_getframe", None)
    if get_frame is None:  # an implementation without frames: every reset clears
        return None
    try:
        return get_frame(depth)  # type: ignore[no-any-return]  # sys._getframe is typed loosely
    except ValueError:  # the stack is shallower than depth
        return None


def _trainer_in(frame: FrameType) -> Optional[Any]:
    """The Lightning trainer that a frame holds, as ``self.trainer`` or as a local ``trainer``, or ``None``."""
    local = frame.f_locals
    owner_attributes = getattr(local.get("self"), "__dict__", None) or {}
    candidates = [local.get("trainer"), owner_attributes.get("trainer")]
    for candidate in candidates:
        if candidate is not None and hasattr(candidate, "sanity_checking"):
            return candidate
    return None


def _is_result_metric_reset_of(frame: FrameType, metric: object) -> bool:
    """Whether ``frame`` runs Lightning's ``_ResultMetric.reset`` on the ``_ResultMetric`` that holds ``metric``."""
    if frame.f_code.co_name != "reset":
        return False
    owner = frame.f_locals.get("self")
    return _is_instance_of(owner, "_ResultMetric", _RESULT_MODULE) and getattr(owner, "value", None) is metric


def _sanity_checking(result_frame: FrameType) -> bool:
    """Whether the ``_LoggerConnector.reset_results`` above ``_ResultMetric.reset`` runs in the sanity check."""
    frame = result_frame.f_back
    for _ in range(_CONNECTOR_FRAMES):
        if frame is None:
            return False
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "reset_results" and _is_instance_of(owner, "_LoggerConnector", _CONNECTOR_MODULE):
            return getattr(getattr(owner, "trainer", None), "sanity_checking", False) is True
        frame = frame.f_back
    return False


def _is_instance_of(value: Any, class_name: str, module_suffix: str) -> bool:
    """Whether ``value``'s class, or one of its bases, is ``class_name`` from a module ending in ``module_suffix``.

    This recognises Lightning's classes under both its package names without importing Lightning.
    """
    return any(cls.__name__ == class_name and cls.__module__.endswith(module_suffix) for cls in type(value).__mro__)
