"""What a windowed value metric does with NaN elements: the ``nan_strategy`` argument."""

import math
import numbers
from typing import Literal, Union

from torchmetrics.utilities import rank_zero_warn

from windowmetrics._validation import describe

NanStrategyArg = Union[Literal["disable", "ignore", "warn", "error"], float]
"""The values ``nan_strategy`` takes: one of four names, or a float to impute."""

_NAMES = ("disable", "ignore", "warn", "error")


class NanStrategy:
    """A parsed ``nan_strategy``.

    An element is NaN when its value or its weight is NaN.

    - ``"disable"`` (the default): no check; a NaN propagates to the window value, exactly as it would to a
      logged loss, so that a diverging run shows as NaN.
    - ``"ignore"``: NaN elements are left out of the window, value and weight.
    - ``"warn"``: as ``"ignore"``, and a warning where the window's value is produced gives the number of
      NaN elements.
    - ``"error"``: as ``"ignore"``, and a ``ValueError`` where the window's value is produced gives the
      number of NaN elements; at a boundary the window is then discarded.
    - a float: NaN values are replaced by it and count with their weight (a NaN weight still propagates).

    Elements are counted on the device and read only where a window's value is produced: no strategy
    synchronises the host with the device on an update that is not a boundary.
    """

    __slots__ = ("drops", "fill", "imputes", "name", "propagates", "reports")

    def __init__(self, name: str, fill: float = math.nan) -> None:
        self.name = name
        self.fill = fill
        self.propagates = name == "disable"
        self.drops = name in ("ignore", "warn", "error")
        self.imputes = name == "impute"
        self.reports = name in ("warn", "error")

    def __repr__(self) -> str:
        return f"NanStrategy({self.fill!r})" if self.imputes else f"NanStrategy({self.name!r})"

    @classmethod
    def parse(cls, nan_strategy: object) -> "NanStrategy":
        """Return the strategy that the ``nan_strategy`` argument names.

        Raises:
            TypeError: If ``nan_strategy`` is neither a string nor a real number (a ``bool`` is not).
            ValueError: If ``nan_strategy`` is an unknown name, or NaN.

        Example:
            >>> NanStrategy.parse("ignore").drops, NanStrategy.parse(0.0).fill
            (True, 0.0)
        """
        allowed = f"one of {', '.join(repr(name) for name in _NAMES)} or a float to impute"
        if isinstance(nan_strategy, str):
            if nan_strategy not in _NAMES:
                raise ValueError(f"`nan_strategy` must be {allowed}, got {nan_strategy!r}")
            return cls(nan_strategy)
        if isinstance(nan_strategy, bool) or not isinstance(nan_strategy, numbers.Real):
            raise TypeError(f"`nan_strategy` must be {allowed}, got {describe(nan_strategy)}")
        if math.isnan(nan_strategy):
            raise ValueError("`nan_strategy` must not be NaN: imputing NaN changes nothing, use 'disable'")
        return cls("impute", float(nan_strategy))

    def report(self, count: int, where: str = "the window") -> None:
        """Warn about or raise for ``count`` NaN elements, as the strategy says.

        Called only where a value is produced (a boundary, ``compute()``), with a count read from the device
        there, and only for the strategies that report (``"warn"``, ``"error"``).

        Args:
            count: the number of NaN elements.
            where: what they were in, for the message: ``"the window"`` or ``"the updates since the last reset"``.

        Raises:
            ValueError: If the strategy is ``"error"`` and ``count`` is not zero.
        """
        if not count:
            return
        if self.name == "error":
            raise ValueError(f"{count} NaN element(s) in {where} (nan_strategy='error')")
        rank_zero_warn(f"{count} NaN element(s) in {where} were ignored (nan_strategy='warn')", UserWarning)
