"""The watchdog: a thread that reports workflow code holding the event loop.

Python cannot pre-empt a coroutine: workflow code that loops on the CPU or calls ``time.sleep``
keeps the event loop (and with it every other run, timer and request of the engine) until it
reaches its next ``await``. The drivers publish each activation of workflow code in an
:class:`~aion._replay._watch.ActivationWatch`; this thread looks at it a few times per
``limit`` and, once an activation has held the loop longer than ``limit`` seconds, logs a
WARNING on ``aion.engine`` naming the run, its workflow type, the code location (from the loop
thread's current frame) and how long it has held the loop, again each time that time doubles.
It writes the location back, so that the driver can name it when it parks the run.

The thread only observes: it never touches the run. Parking is the driver's (see
:class:`~aion.errors.ActivationFailed`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import FrameType

from aion._replay import Driver
from aion._replay._watch import ActivationWatch

__all__ = ["Watchdog", "location_of"]

log = logging.getLogger("aion.engine")

#: The driver's frame that calls into workflow code: frames above it are the code's own.
_STEP_CODE = Driver._step.__code__


class Watchdog:
    """Reports, from a daemon thread, activations that hold the event loop past the limit.

    Args:
        watch: the slot the engine's drivers publish activations in (its ``limit`` > 0).
    """

    def __init__(self, watch: ActivationWatch) -> None:
        assert watch.limit is not None
        self._watch = watch
        self._limit = watch.limit
        # A few looks per limit: an overrun is reported at most a quarter of it late.
        self._interval = min(max(watch.limit / 4, 0.001), 1.0)
        self._loop_thread: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: tuple[int, float] | None = None  # (activation ordinal, next report at)

    def start(self) -> None:
        """Start watching the calling thread (the event loop's)."""
        if self._thread is not None:
            return
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="aion-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (it finishes its current look, a few microseconds)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check(time.monotonic())
            except Exception:  # the watchdog must never die of a report
                log.exception("the activation watchdog failed to check the event loop")

    def check(self, now: float) -> None:
        """One look: note where a long activation is, and report it past the limit."""
        current = self._watch.current
        if current is None:
            return
        driver, started, ordinal = current
        held = now - started
        if held < self._interval:
            return
        thread = self._loop_thread
        frame = sys._current_frames().get(thread) if thread is not None else None
        where = location_of(frame) if frame is not None else "location unknown"
        if self._watch.current is not current:
            return  # it ended meanwhile: the frame may be of something else
        self._watch.seen = (ordinal, where)
        if held <= self._limit:
            return
        reported = self._reported
        if reported is not None and reported[0] == ordinal and held < reported[1]:
            return
        self._reported = (ordinal, held * 2)
        info = driver.info
        tenant, workflow_id, workflow_type = (
            (info.tenant, info.workflow_id, info.workflow_type)
            if info is not None
            else ("?", "?", driver.definition.name)
        )
        log.warning(
            "workflow %s/%s (%s) has held the event loop for %.1f s at %s%s "
            "(activation_limit %g s); every other run waits. Python cannot interrupt it: "
            "workflow code must not block; move blocking calls and long computations into a "
            "step (ctx.step)",
            tenant,
            workflow_id,
            workflow_type,
            held,
            where,
            " while replaying its history" if driver.in_replay else "",
            self._limit,
        )


def location_of(frame: FrameType) -> str:
    """Where workflow code is, from the loop thread's current frame: the innermost frame, and
    the outermost frame of the workflow's own code if that is another one."""
    inner = frame
    outer: FrameType | None = None
    f: FrameType | None = frame
    while f is not None and f.f_code is not _STEP_CODE:
        outer = f
        f = f.f_back
    if f is None:
        # Not inside workflow code (the driver or the engine is between two of its steps).
        return f"{_where(inner)} (outside workflow code)"
    if outer is None or outer is inner:
        return _where(inner)
    return f"{_where(inner)}, called from {_where(outer)}"


def _where(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} in {code.co_qualname}"
