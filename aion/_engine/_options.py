"""The engine's options, checked before anything is opened.

``Engine(...)`` calls :func:`check_options` first: a bad option raises ``InvalidArgument`` naming
the option and the range it allows, and nothing (no directory lock, no file, no thread) is held
by an engine that never started.
"""

from __future__ import annotations

import math
from typing import Any

from aion import _validate
from aion.errors import InvalidArgument

__all__ = ["MAX_SECONDS", "check_options"]

#: The longest duration an option may name (about 31 years): far beyond any sensible setting,
#: and far below where adding it to a timestamp overflows.
MAX_SECONDS = 1e9

#: Counts: (smallest allowed, largest allowed).
_COUNTS: dict[str, tuple[int, int]] = {
    "max_payload_bytes": (1, 2**30),
    "max_resident_runs": (1, 2**31),
    "max_resident_bytes": (1, 2**50),
    "max_concurrent_steps": (1, 2**20),
    "step_threads": (1, 4096),
    "activation_workers": (1, 2**20),
    "max_restarts": (0, 2**31),
    "service_restarts": (0, 2**31),
}
#: Durations in seconds, each > 0 and <= MAX_SECONDS.
_DURATIONS = ("inbox_interval", "timer_horizon", "restart_window", "service_window")
_FLAGS = ("durable", "require_waitpoint_key", "tune_gc")


def check_options(**options: Any) -> None:
    """Check ``Engine`` options by name (only those given are checked).

    Raises:
        InvalidArgument: an option has the wrong type or is out of its range; the message
            names the option, the range and the value.
    """
    for name, value in options.items():
        if name in _COUNTS:
            low, high = _COUNTS[name]
            if not _is_int(value) or not low <= value <= high:
                raise InvalidArgument(
                    f"Engine({name}=...) must be an integer from {low} to {high}, not {value!r}"
                )
        elif name in _DURATIONS:
            _check_seconds(name, value)
        elif name == "activation_limit":
            if value is not None:
                _check_seconds(name, value, "; or None to turn the watchdog off")
        elif name == "code_version":
            _check_code_version(value)
        elif name in _FLAGS:
            if not isinstance(value, bool):
                raise InvalidArgument(f"Engine({name}=...) must be True or False, not {value!r}")
        else:
            raise InvalidArgument(f"Engine has no option {name!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_seconds(name: str, value: object, more: str = "") -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and 0 < value <= MAX_SECONDS)
    ):
        raise InvalidArgument(
            f"Engine({name}=...) must be a number of seconds > 0 and <= {MAX_SECONDS:g}{more}, "
            f"not {value!r}"
        )


def _check_code_version(value: object) -> None:
    if value is None:
        return
    try:
        _validate.name(value, "Engine(code_version=...)")  # recorded with every run it starts
    except InvalidArgument as exc:
        raise InvalidArgument(
            f"{exc} (code_version is text of 1 to {_validate.MAX_NAME_BYTES} UTF-8 bytes, or None)"
        ) from None
