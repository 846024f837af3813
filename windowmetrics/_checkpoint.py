"""The window's position in a ``state_dict``: named entries beside the registered states, checked when loaded.

A persistent window metric saves, beside its states, one 0-dim int64 tensor per field of :class:`Position` and
the saving process's rank, each under its own key (``<prefix>window_position``, ...). A field added later gets
a default when an older checkpoint lacks it; the fields that exist today are all required.

A checkpoint is input like any other: every entry of this metric is checked before anything is loaded, and a
malformed or foreign one is refused with an error that names its key, leaving the metric as it was.
"""

import enum
import sys
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from windowmetrics._distributed import current_rank

if TYPE_CHECKING:
    from windowmetrics._window import WindowMetric

FIELD_PREFIX = "window_"
"""The prefix of the position's entries in a ``state_dict``, after the metric's own prefix."""


@dataclass(frozen=True)
class Position:
    """Where a window metric stands: what ``state_dict()`` saves beside its states.

    Attributes:
        config: the metric's class and arguments (saved as a CRC-32 checksum).
        position: updates into the window in progress, ``0 <= position < window``.
        updates: updates since the last reset (what ``compute()`` covers).
        at_boundary: whether the last update completed a window.
        has_latest: whether a window has completed since the last full reset.
    """

    config: str
    position: int
    updates: int
    at_boundary: bool
    has_latest: bool


def config_checksum(config: str) -> int:
    """A CRC-32 of a metric's configuration: equal for equally configured metrics, different (but by chance)."""
    return zlib.crc32(config.encode())


def save_position(position: Position, destination: dict[str, Any], prefix: str) -> None:
    """Write ``position`` and this process's rank into ``destination``, one CPU int64 tensor per field."""
    fields = {
        "config": config_checksum(position.config),
        "position": position.position,
        "updates": position.updates,
        "at_boundary": int(position.at_boundary),
        "has_latest": int(position.has_latest),
        "rank": current_rank(),
    }
    for name, number in fields.items():
        destination[f"{prefix}{FIELD_PREFIX}{name}"] = torch.tensor(number, dtype=torch.int64)


class Absent(enum.Enum):
    """:func:`load_position`'s answer when nothing is to be loaded."""

    NOTHING_SAVED = "the state_dict holds no entry of this metric"
    REFUSED = "the entries were refused, or left out with a warning"


_FIELDS = ("config", "position", "updates", "at_boundary", "has_latest", "rank")


def load_position(
    metric: "WindowMetric", state_dict: dict[str, Any], prefix: str, strict: bool, error_msgs: list[str]
) -> Union[Absent, tuple[Position, bool]]:
    """Check and take ``metric``'s position entries out of ``state_dict``.

    Returns:
        The saved position, and whether this process has the rank that saved it; or why nothing is loaded.
        Entries that are refused (an error in ``error_msgs``) or left out (a differently configured metric with
        ``strict=False``, with a warning) are removed from ``state_dict``, with those of the metrics ``metric``
        holds, so that nothing of them loads.
    """
    keys = {name: f"{prefix}{FIELD_PREFIX}{name}" for name in _FIELDS}
    fields = {name: state_dict.pop(key) for name, key in keys.items() if key in state_dict}
    saved_states = [key for key in metric._saved_states() if prefix + key in state_dict]
    if not fields and not saved_states:
        return Absent.NOTHING_SAVED
    problem = _field_problem(fields, keys)
    if problem is None:
        numbers = {name: int(value.item()) for name, value in fields.items()}
        if numbers["config"] != config_checksum(metric._config()):  # before the ranges: another window's position
            _drop_entries(state_dict, prefix)
            message = (
                f"{keys['config']}: the states were saved by a differently configured metric than {metric._config()}"
                f" (configuration checksum {numbers['config']} instead of {config_checksum(metric._config())})"
            )
            if _strict_of_the_load(strict):
                error_msgs.append(f"{message}; load with strict=False to start this metric afresh instead")
            else:
                rank_zero_warn(f"{message}: left out (strict=False), the metric starts afresh", UserWarning)
            return Absent.REFUSED
        problem = _problem_with(metric, numbers, keys, state_dict, prefix)
    if problem is not None:
        _drop_entries(state_dict, prefix)
        error_msgs.append(f"{problem}; {type(metric).__name__} left unchanged")
        return Absent.REFUSED
    position = Position(
        config=metric._config(),
        position=numbers["position"],
        updates=numbers["updates"],
        at_boundary=bool(numbers["at_boundary"]),
        has_latest=bool(numbers["has_latest"]),
    )
    return position, numbers["rank"] == current_rank()


def _strict_of_the_load(strict: bool) -> bool:
    """Return the ``strict`` argument of the ``Module.load_state_dict`` call that loads this metric.

    ``torch.nn.Module.load_state_dict`` passes ``strict=True`` to every module's ``_load_from_state_dict``, whatever
    its own argument, and applies that argument to the missing and unexpected keys alone. The argument is read from
    its frame; without one (``_load_from_state_dict`` called directly), ``strict`` as given.
    """
    code = torch.nn.Module.load_state_dict.__code__
    frame = sys._getframe(1) if hasattr(sys, "_getframe") else None
    while frame is not None:
        if frame.f_code is code:
            return bool(frame.f_locals.get("strict", strict))
        frame = frame.f_back
    return strict


def is_integer_entry(value: object) -> bool:
    """Whether ``value`` is a 0-dim integer tensor (a bool is not), as :func:`save_position` saves every field."""
    if not isinstance(value, Tensor) or value.dim() != 0:
        return False
    return not (value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool)


def _field_problem(fields: dict[str, Any], keys: dict[str, str]) -> Optional[str]:
    """Return what is wrong with the position's entries (each a 0-dim integer tensor), naming the key, or ``None``."""
    for name in _FIELDS:
        if name not in fields:
            return f"{keys[name]}: missing; the states of a window metric load only with its position"
        if not is_integer_entry(fields[name]):
            return f"{keys[name]}: expected a 0-dim integer tensor, got {_describe(fields[name])}"
    return None


def _problem_with(
    metric: "WindowMetric", numbers: dict[str, int], keys: dict[str, str], state_dict: dict[str, Any], prefix: str
) -> Optional[str]:
    """Return what is wrong with the saved position's values and the saved states, naming the key, or ``None``."""
    allowed = {
        "position": (0, metric.window - 1),
        "updates": (0, None),
        "at_boundary": (0, 1),
        "has_latest": (0, 1),
        "rank": (0, None),
    }
    for name, (low, high) in allowed.items():
        number = numbers[name]
        if number < low or (high is not None and number > high):
            bound = f"from {low} to {high}" if high is not None else f">= {low}"
            return f"{keys[name]}: expected an integer {bound}, got {number}"
    for key in metric._saved_states():
        if prefix + key not in state_dict:
            return f"{prefix}{key}: missing beside the window's position"
        problem = metric._state_problem(key, state_dict[prefix + key])
        if problem is not None:
            return f"{prefix}{key}: {problem}"
    return None


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{value!r} ({type(value).__name__})"


def _drop_entries(state_dict: dict[str, Any], prefix: str) -> None:
    for key in [key for key in state_dict if key.startswith(prefix)]:
        del state_dict[key]
