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

So a ``reset()`` of a metric was requested by Lightning's logger connector exactly when the frame that called
the metric's ``reset`` is ``_ResultMetric.reset`` with this metric as its ``value``. The check reads the
interpreter's frames (``sys._getframe``) and never imports Lightning. It walks up from the metric's ``reset``
through the ``reset`` frames of the same metric (a subclass whose ``reset`` calls ``super().reset()``), then
looks at the first other frame: if it is not Lightning's, the reset is the user's.
A reset that user code calls (directly, through ``MetricCollection.reset()``, in a Lightning hook such as
``on_train_epoch_start``, or outside Lightning) therefore always has a caller other than
``_ResultMetric.reset`` and is never mistaken for Lightning's. Every way the check can fail (another Python
implementation without ``sys._getframe``, a future Lightning that renames or restructures these methods)
makes it answer ``False``, so that the reset clears the metric as it does without ``span_epochs``; the
Lightning tests, run on the oldest and newest supported releases, would then fail, as spanning windows would
no longer span.

The resets around and at the end of the sanity check (``Trainer(num_sanity_val_steps=...)``, on by default)
are the exception: the sanity check's batches are a dry run whose values Lightning logs nowhere, and its
updates must not reach the first real validation run. For them the check answers ``False`` (the reset
clears). It finds them through the frame of ``_LoggerConnector.reset_results``, two frames above
``_ResultMetric.reset`` on every release read, whose ``self.trainer.sanity_checking`` is then true.
"""

import sys
from types import FrameType
from typing import Any, Optional

_RESULT_MODULE = ".trainer.connectors.logger_connector.result"
_CONNECTOR_MODULE = ".trainer.connectors.logger_connector.logger_connector"
_OWN_RESET_FRAMES = 8
"""How many ``reset`` frames of the metric itself (overrides calling ``super().reset()``) are walked at most."""
_CONNECTOR_FRAMES = 3
"""How many frames above ``_ResultMetric.reset`` are searched for ``_LoggerConnector.reset_results``."""


def reset_by_lightning_at_loop_end(depth: int = 1) -> bool:
    """Return whether the ``reset()`` running now was called by Lightning's logger connector.

    Lightning's ``_ResultMetric.reset`` calls ``reset()`` on every metric passed to ``self.log`` or
    ``self.log_dict`` at the end of each training epoch and of each validation or test run, and when a
    ``Trainer.fit``/``validate``/``test`` starts. Any other caller (user code, ``MetricCollection.reset()``, a
    Lightning hook written by the user), and the resets around the sanity check, give ``False``. The module
    docstring says why this is sound on every supported Lightning release.

    Args:
        depth: how many frames above this function's own the metric's ``reset`` runs: ``1`` (the default)
            when the metric's ``reset`` calls this function itself.

    Returns:
        ``True`` if the frame ``depth`` frames up is a ``reset`` method of a metric that was called, directly
        or through overrides of ``reset`` on the same metric calling ``super().reset()``, by Lightning's
        ``_ResultMetric.reset`` outside the sanity check; ``False`` otherwise.

    Raises:
        TypeError: If ``depth`` is not an int.
        ValueError: If ``depth`` is smaller than 1.

    Example:
        >>> import torch
        >>> from windowmetrics.lightning_reset import reset_by_lightning_at_loop_end
        >>> class Probe(torch.nn.Module):
        ...     def reset(self) -> bool:
        ...         return reset_by_lightning_at_loop_end()
        >>> Probe().reset()  # called by user code, not by Lightning's logger connector
        False
    """
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise TypeError(f"depth must be an int, got {type(depth).__name__}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1 (the frame of the metric's reset), got {depth}")
    get_frame = getattr(sys, "_getframe", None)
    if get_frame is None:  # an implementation without frames: every reset clears
        return False
    try:
        frame: FrameType = get_frame(depth)  # frame 0 is this function's own
    except ValueError:  # the stack is shallower than depth
        return False
    if frame.f_code.co_name != "reset":
        return False
    metric = frame.f_locals.get("self")
    if metric is None:
        return False
    caller = _first_other_caller(frame, metric)
    if caller is None or not _is_result_metric_reset_of(caller, metric):
        return False
    return not _sanity_checking(caller)


def _first_other_caller(frame: FrameType, metric: object) -> Optional[FrameType]:
    """Return the first frame above ``frame`` that is not a ``reset`` of ``metric``.

    ``None`` if there is none, or if :data:`_OWN_RESET_FRAMES` frames above ``frame`` are all such frames.
    """
    caller = frame.f_back
    for _ in range(_OWN_RESET_FRAMES):
        if caller is None or not (caller.f_code.co_name == "reset" and caller.f_locals.get("self") is metric):
            return caller
        caller = caller.f_back
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
