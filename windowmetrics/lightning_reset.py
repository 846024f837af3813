"""Telling Lightning's end-of-loop ``reset()`` of a logged metric apart from every other ``reset()``."""

import sys

_RESULT_MODULE_SUFFIX = "trainer.connectors.logger_connector.result"


def reset_by_lightning_at_loop_end() -> bool:
    """Return whether the ``reset()`` running now was called by Lightning's logger connector.

    Lightning keeps each metric passed to ``self.log`` in a ``_ResultMetric`` of its logger connector, and at
    the end of every training epoch and validation run resets them all: ``_ResultCollection.reset`` calls
    ``_ResultMetric.reset``, which calls ``self.value.reset()`` on the logged metric itself. That method is
    the only caller of a logged metric's ``reset`` inside Lightning, and the one caller that user code never
    is. So the call comes from Lightning's end-of-loop reset exactly when the first frame above the metric's
    own ``reset`` methods (a subclass's ``reset`` may call ``super().reset()``) is ``reset`` of an object whose
    class is named ``_ResultMetric`` and defined in ``...trainer.connectors.logger_connector.result``: the
    module of both package names, ``lightning.pytorch`` and ``pytorch_lightning``. Lightning is not imported.
    The check walks a few frames, once per logged metric per epoch end.

    Example:
        >>> reset_by_lightning_at_loop_end()  # called here, not by Lightning
        False
    """
    frame = sys._getframe(1)
    # Step over the reset methods of the metric's own classes: they run on the same object.
    metric = frame.f_locals.get("self")
    while frame.f_back is not None and frame.f_code.co_name == "reset" and frame.f_locals.get("self") is metric:
        frame = frame.f_back
    caller = frame.f_locals.get("self")
    caller_class = type(caller)
    return (
        frame.f_code.co_name == "reset"
        and caller_class.__name__ == "_ResultMetric"
        and caller_class.__module__.endswith(_RESULT_MODULE_SUFFIX)
    )
