"""The garbage-collector setting engines run with: a larger youngest generation.

Every workflow allocates a few hundred container objects (its driver, futures, commands,
batches) that live for the milliseconds to seconds its run takes. With CPython's default
threshold of 700 allocations, the youngest generation is collected every few workflows, and
nearly everything it examines is still alive and moves on to be examined again by the older
generations: about a fifth of the engine's CPU at 1,000 workflows in flight. With 50,000
(a few MB of young objects at most), most of those objects are gone before a collection looks
at them: the collector's share drops to about 1% (docs/operations.md has the measurements).
Cyclic garbage waits a little longer for collection; nothing else changes.

Process-wide, so: only CPython's default is replaced (an application that chose its own
thresholds keeps them), and the old thresholds come back when the last engine stops.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["ENGINE_GEN0_THRESHOLD", "acquire", "release"]

ENGINE_GEN0_THRESHOLD = 50_000
_CPYTHON_DEFAULT_GEN0 = 700  # 3.11 and 3.12 (3.13 raised it; its own choice is kept)

_lock = threading.Lock()
_holders = 0
_saved: tuple[int, int, int] | None = None


def acquire() -> bool:
    """Raise the youngest generation's threshold while an engine runs. True if this call
    holds the setting (pair it with :func:`release`); False if the application's own
    thresholds are kept."""
    global _holders, _saved
    with _lock:
        if _holders == 0:
            current = gc.get_threshold()
            if current[0] != _CPYTHON_DEFAULT_GEN0:
                return False
            _saved = current
            gc.set_threshold(ENGINE_GEN0_THRESHOLD, current[1], current[2])
        _holders += 1
        return True


def release() -> None:
    """An engine that acquired the setting stopped; the last one restores the old thresholds
    (unless the application changed them meanwhile)."""
    global _holders, _saved
    with _lock:
        _holders -= 1
        if _holders == 0 and _saved is not None:
            if gc.get_threshold()[0] == ENGINE_GEN0_THRESHOLD:
                gc.set_threshold(*_saved)
            _saved = None
