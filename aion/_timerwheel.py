"""A hierarchical timing wheel: the in-memory half of aion's durable timers.

The wheel knows nothing about workflows. It holds timers (a due time, an ordered hashable key, a
payload) due within a *horizon*, fires each one by awaiting a callback, and is driven by one task
(:meth:`TimerWheel.run`) sleeping on an injected :class:`~aion._clock.Clock`. Timers due further
out stay in a durable due-time index (the store) and are loaded by range scan as time advances,
at most ``max_held`` at a time: a backlog of due timers is paged through, never loaded whole.

Shape (see docs/timers.md for the reasoning and the measured costs):

- Time is cut into ticks of ``resolution`` seconds, counted from the epoch. Level ``l`` has 256
  slots of ``256**l`` ticks each; a timer sits at the level of the highest base-256 digit in
  which its tick differs from the wheel's current tick. Insert is an ``append`` to a slot list.
- Cancel is lazy and O(1): it drops the key from the index (``key -> entry``) and marks the entry
  cancelled, releasing its payload. Cascades move entries without touching the index; cancelled
  entries are skipped when reached, or swept once they outnumber the live ones.
- When time reaches a slot of level 1 and up, its entries cascade to lower levels; when it reaches
  a level-0 slot (one tick), its entries move to a small heap ordered by ``(due, key)``: exact
  due order inside a tick, and ties in key order, the order a scan of the index returns them,
  whichever way (scan or schedule, before or after a restart) each timer came in.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Awaitable, Callable, Iterable
from itertools import compress
from typing import Any, Generic, NamedTuple, Protocol, TypeAlias, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from aion._clock import Clock

__all__ = ["FireCallback", "Loader", "OrderedKey", "Peeker", "Timer", "TimerWheel"]


class OrderedKey(Protocol):
    """What a timer key must be: hashable (for cancel) and ordered (to break ties)."""

    def __hash__(self) -> int: ...

    def __lt__(self, other: Any, /) -> bool: ...


K = TypeVar("K", bound=OrderedKey)
P = TypeVar("P")


class Timer(NamedTuple, Generic[K, P]):
    """A timer handed to the fire callback: when it was due, its key and its payload."""

    due: float
    key: K
    payload: P


FireCallback: TypeAlias = Callable[[Timer[K, P]], Awaitable[None]]
"""``async fire(timer)``: awaited by the driver for each timer, one at a time, in due order."""

Loader: TypeAlias = Callable[[float, K | None, float, int], Awaitable[Iterable[tuple[float, K, P]]]]
"""``async load(after, after_key, until, limit)``: a page of the stored timers past a position.

Returns the stored ``(due, key, payload)`` rows positioned after ``(after, after_key)`` and due at
or before ``until``, in ``(due, key)`` order: the first ``limit`` of them, or all if fewer. A
row is past the position if ``due > after``, or ``due == after`` and ``key > after_key``;
``after_key`` None means every key at ``after`` is done (``due > after``). ``after`` is ``-inf``
on the first load of a run, so it also returns overdue timers. Fewer than ``limit`` rows in the
range means there are no more up to ``until``; with ``limit`` or more, the wheel takes the
range as loaded through the ``limit``-th row and asks for the rest later. Rows at or before the
position or past ``until`` may be included (a loader that rounds the bounds returns some): they
are ignored and not counted.
"""

Peeker: TypeAlias = Callable[[float], Awaitable[float | None]]
"""``async peek(after)``: due time of the earliest stored timer with ``due > after``, or None."""

_BITS = 8  # 256 slots per level: few levels, so few cascades per timer (each is Python work)
_SLOTS = 1 << _BITS
_MASK = _SLOTS - 1
_MAX_DUE = 253402300799.0  # 9999-12-31T23:59:59Z: the wheel's levels are sized to reach it
_COMPACT_EVERY = 1 << 16  # inserts between checks for too many dead (cancelled) entries
_COMPACT_MIN_DEAD = 1 << 16
_FIRES_PER_CHECKPOINT = 64  # let other tasks run during a long backlog of quick callbacks
_SMALL_SLOT = 32  # up to this many timers in the next slot: sleep until the earliest one
_ROWS_PER_FIRE = 256  # scanned rows applied between two looks for timers come due
# Rows asked of one scan at most, whatever room max_held leaves: the read blocks the event loop
# (about 2 us a row in the engine's LMDB adapter), so one scan stays a ~20 ms stall, and due
# timers fire between scans.
_SCAN_PAGE = 8192

# An entry is a list [due, key, seq, payload, tick]: lists compare like tuples, and cancel
# overwrites the payload with _CANCELLED (so a cancelled entry is recognised without hashing its
# key, and does not keep the payload alive). seq is unique: it settles the tie of a cancelled
# entry and a new one for the same key and due time, so payloads (and ticks) are never compared.
# The tick is kept so that a cascade need not recompute it.
_Entry: TypeAlias = list[Any]
_CANCELLED: Any = object()


class TimerWheel(Generic[K, P]):
    """Timers due within a horizon, fired in due order by one driver task.

    The wheel is generic: a key names a timer and is hashable and ordered (keys of one wheel
    must compare with each other: timers due at the same time fire in key order, so make the
    key order the index's order); a payload is anything. Use the wheel from the event loop
    thread only.

    With a ``load`` callback the wheel mirrors a durable due-time index: it holds only timers
    up to :attr:`loaded_until` (at most ``horizon`` seconds ahead of the clock) and loads the
    next range by scan as time advances, at most ``max_held`` timers at a time: a backlog of
    due timers (after an outage) is paged through in due order, never loaded whole. A timer is
    *scheduled* by writing its row durably and then calling :meth:`schedule`; a timer beyond the
    loaded range is not held in memory, since the scan that covers its due time will load it.
    Without ``load``, the wheel holds every timer it is given (no durable index; ``horizon`` and
    ``max_held`` are unused).

    Contract with the durable index (what makes "fires once" hold):

    - Call :meth:`schedule` after the timer's row is committed, and :meth:`cancel` after its
      deletion is committed.
    - ``load`` returns the first ``limit`` rows of its range (see :data:`Loader`), in
      ``(due, key)`` order, as a range scan of the index does: the key order must be the
      index's order, since a page can end between two timers due at the same time. A timer's
      due time is the same float in :meth:`schedule` and in ``load`` (round it once, before
      both, to the precision the store keeps), otherwise a timer can fall between two scans.
    - Firing is at least once, as with any durable timer: a restarted driver rescans the index,
      so a timer whose row the engine has not yet deleted can fire again. The engine's
      bookkeeping (record the fire and delete the row in one transaction) must treat a fire of
      a timer whose row is gone as a no-op.

    Args:
        clock: the source of time; the driver sleeps with ``clock.sleep_until``.
        fire: awaited for each due timer (see :meth:`run` for ordering and errors).
        load: reads a page of the durable index (:data:`Loader`); None to hold every timer in
            memory.
        peek: the due time of the next stored timer after a point. Optional; with it an idle
            wheel sleeps until the next stored timer is near instead of rescanning every
            ``horizon / 2`` seconds, so a manual clock can jump 30 days in a few steps.
        horizon: with ``load``, how far ahead of the clock timers are held, in seconds. The
            next range is scanned when half of it is left, so a scan happens ``horizon / 2``
            seconds before its first timer is due, and brings in about ``horizon / 2`` seconds'
            worth of timers: at high timer rates a shorter horizon keeps each scan short.
        resolution: tick length in seconds, from 1e-6 to 60. It affects only speed, never the
            order or the exact time of firing; a power of two keeps tick arithmetic exact.
        max_held: with ``load``, the most timers a scan brings in: a scan asks for
            ``max_held`` minus the timers held, and runs only once at most half of
            ``max_held`` are held. Timers scheduled directly within the loaded range are held
            whatever their number (they are as many as the engine schedules within it).

    Raises:
        ValueError: ``horizon``, ``resolution`` or ``max_held`` is out of range, or ``peek``
            without ``load``.
    """

    def __init__(
        self,
        clock: Clock,
        fire: FireCallback[K, P],
        *,
        load: Loader[K, P] | None = None,
        peek: Peeker | None = None,
        horizon: float = 60.0,
        resolution: float = 2.0**-10,
        max_held: int = 50_000,
    ) -> None:
        if not (0.0 < horizon < _MAX_DUE and 1e-6 <= resolution <= 60.0):
            raise ValueError(
                f"horizon ({horizon!r}) must be a positive number of seconds and resolution "
                f"({resolution!r}) between 1e-6 and 60 seconds"
            )
        if not (isinstance(max_held, int) and max_held >= 1):
            raise ValueError(f"max_held ({max_held!r}) must be a positive int")
        if peek is not None and load is None:
            raise ValueError("peek needs load: it only tells the wheel when to scan next")
        self._clock = clock
        self._fire = fire
        self._load = load
        self._peek = peek
        self._horizon = float(horizon)
        self._max_held = max_held
        self._low_water = max_held // 2  # a scan waits until at most this many are held
        self._res = float(resolution)
        self._inv = 1.0 / self._res
        levels = -(-int(_MAX_DUE * self._inv).bit_length() // _BITS)
        self._levels: list[list[list[_Entry]]] = [
            [[] for _ in range(_SLOTS)] for _ in range(levels)
        ]
        # Level and slot for an insert, indexed by (tick ^ current tick).bit_length().
        self._by_bits = tuple(
            ((max(b - 1, 0) // _BITS) * _BITS, self._levels[max(b - 1, 0) // _BITS])
            for b in range(levels * _BITS + 1)
        )
        self._index: dict[K, _Entry] = {}
        self._ready: list[_Entry] = []  # heap: entries of ticks before self._cur
        self._cur = int(clock.now() * self._inv)  # ticks before it have moved to _ready
        self._seq = 0  # entries ever made
        self._removed = 0  # entries dropped from the structure; _seq - _removed are stored
        self._compact_at = _COMPACT_EVERY
        # Loading state. A *position* is (due, key); key None stands for every key at that due.
        # Stored timers at or before (_loaded, _loaded_key) are held (or done): a scan cut short
        # by max_held ends between two keys of one due time. No stored timer has a due time in
        # (_loaded, _next_stored), as far as scans and schedules have shown. schedule() holds
        # timers at or before (_limit, _limit_key): the loaded position, or the scanned range.
        unbounded = load is None
        self._loaded = _MAX_DUE if unbounded else -math.inf
        self._loaded_key: K | None = None
        self._next_stored = _MAX_DUE if unbounded else -math.inf
        self._limit = self._loaded
        self._limit_key: K | None = None
        self._loading = False
        self._tombstones: set[K] = set()  # keys cancelled while a scan is in flight
        self._dropped_min = math.inf  # earliest due dropped while a scan is in flight
        # Entries scheduled directly while a scan is awaited: held because the scan's snapshot
        # may miss them, but let go if the scan is cut short before them. None: not recording.
        self._meanwhile: list[_Entry] | None = None
        # Driver state. _wake_at is the driver's sleep target, -inf while it is not sleeping.
        self._running = False
        self._wake_at = -math.inf
        self._sleep_scope: anyio.CancelScope | None = None

    # --- public ---------------------------------------------------------------------------

    @property
    def horizon(self) -> float:
        """How far ahead of the clock timers are held, in seconds (with a loader)."""
        return self._horizon

    @property
    def loaded_until(self) -> float:
        """Every stored timer due before this time is held or done (``-inf`` at first).

        So are those due exactly at it, unless the last scan was cut short by ``max_held``
        between two timers due at this time: then only those up to :attr:`loaded_key`.
        """
        return self._loaded

    @property
    def loaded_key(self) -> K | None:
        """The last key loaded at :attr:`loaded_until`, or None if all of them are."""
        return self._loaded_key

    @property
    def max_held(self) -> int:
        """The most timers a scan brings in (with a loader)."""
        return self._max_held

    def __len__(self) -> int:
        """Timers held: scheduled or loaded, not yet cancelled, and not done firing."""
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def schedule(self, due: float, key: K, payload: P) -> bool:
        """Hold a timer, unless it is beyond the loaded range or its key is already held.

        O(1). Wakes the driver if the timer is due before the driver's current sleep target.
        A timer with a due time in the past fires at once. A key stays held from this call
        until its fire callback returns, so a second schedule of it (say, one from a scan and
        one direct) is ignored: to change a due time, cancel and schedule again.

        Args:
            due: seconds since the epoch, on the wheel's clock.
            key: names the timer; :meth:`cancel` takes it.
            payload: handed to the fire callback.

        Returns:
            True if the wheel now holds the timer; False if the key was already held or the
            timer is beyond the loaded range (it stays in the durable index and will be loaded).

        Raises:
            ValueError: ``due`` is not finite, or (without a loader) later than year 9999.
        """
        if not due < self._limit:  # also NaN
            key_limit = self._limit_key
            if due != self._limit or (key_limit is not None and key_limit < key):
                return self._schedule_beyond(due, key, payload)
        try:
            t = int(due * self._inv)
        except OverflowError:  # -inf
            raise ValueError(f"timer {key!r}: due time must be finite, got {due!r}") from None
        self._seq = seq = self._seq + 1
        entry = [due, key, seq, payload, t]
        # One hash of the key for the dedupe check and the insert.
        if self._index.setdefault(key, entry) is not entry:
            self._removed += 1
            return False
        if self._meanwhile is not None:
            self._meanwhile.append(entry)
        cur = self._cur
        if t < cur:
            heapq.heappush(self._ready, entry)
        else:
            shift, row = self._by_bits[(t ^ cur).bit_length()]
            row[(t >> shift) & _MASK].append(entry)
        if due < self._wake_at:
            self._interrupt()
        if seq >= self._compact_at:
            self._maybe_compact()
        return True

    def cancel(self, key: K) -> bool:
        """Forget a timer so it will not fire. O(1).

        Cancelling a key the wheel does not hold is allowed (it may not be loaded yet, in which
        case the durable deletion keeps the scan from returning it; a key cancelled while a scan
        is in flight is also kept out of that scan's result). Cancelling the timer whose
        callback is running cannot stop that callback, but it stops a retry of it.

        Returns:
            True if the wheel held the timer.
        """
        if self._loading:
            self._tombstones.add(key)
        entry = self._index.pop(key, None)
        if entry is None:
            return False
        entry[3] = _CANCELLED
        if len(self._index) == self._low_water and self._load is not None:
            self._interrupt()  # a scan held back by max_held may be due
        return True

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Drive the wheel: load, fire due timers in due order, sleep. Runs until cancelled.

        Reports started (for ``TaskGroup.start``) once the first scan has been applied, so the
        overdue timers are held and fire next, earliest first. Each fire awaits the callback
        before the next one starts: timers fire in ``(due, key)`` order, and a slow
        callback delays the ones after it.

        A callback that raises crashes the driver: the exception propagates out of ``run`` (with
        a note naming the timer) for a supervisor to restart it. Calling ``run`` again retries
        the failed timer first: without a loader it stays held; with one, a restart lets go of
        every held timer and rescans the durable index from the beginning, which still has the
        failed timer's row. Errors of ``load`` and ``peek`` propagate too.

        Raises:
            RuntimeError: ``run`` is already running for this wheel.
        """
        if self._running:
            raise RuntimeError("TimerWheel.run() is already running; one driver per wheel")
        self._running = True
        try:
            if self._load is not None:
                # A restart trusts nothing from before the crash: rescan from the start. Held
                # timers go too: one past the first page would fire before earlier stored ones.
                self._clear()
                self._loaded = self._next_stored = self._limit = -math.inf
                self._loaded_key = self._limit_key = None
            await self._drive(task_status)
        finally:
            self._running = False
            self._wake_at = -math.inf
            self._sleep_scope = None

    # --- driver ---------------------------------------------------------------------------

    async def _drive(self, task_status: TaskStatus[None]) -> None:
        clock = self._clock
        started = False
        while True:
            now = clock.now()
            if self._load is not None and now >= self._scan_at():
                # One page, then fire what is due: held timers are all at or before the loaded
                # position, so they may fire before the next page is read.
                await self._refill(now + self._horizon, fire_meanwhile=started)
                now = clock.now()
            if not started:
                task_status.started()
                started = True
            self._advance(now)
            await self._fire_due(now)
            target = self._next_target()
            if target <= now:
                # Due while firing (or exactly now): go round again, but let others run first.
                await anyio.lowlevel.checkpoint()
                continue
            self._wake_at = target
            with anyio.CancelScope() as scope:
                self._sleep_scope = scope
                if target == math.inf:
                    await anyio.sleep_forever()
                else:
                    await clock.sleep_until(target)
            self._sleep_scope = None
            self._wake_at = -math.inf

    def _interrupt(self) -> None:
        """Wake the sleeping driver so it recomputes its target (no task is spawned)."""
        self._wake_at = -math.inf
        if self._sleep_scope is not None:
            self._sleep_scope.cancel()

    def _scan_at(self) -> float:
        """When the next scan is due: half a horizon before the next stored timer, once at most
        half of ``max_held`` are held (inf until then: the driver wakes to fire them anyway)."""
        if len(self._index) > self._low_water:
            return math.inf
        return self._next_stored - self._horizon / 2

    async def _refill(self, until: float, *, fire_meanwhile: bool) -> None:
        """Load the stored timers after the loaded position and due by ``until``, at most
        ``max_held`` minus those held, and learn when to scan next.

        With ``fire_meanwhile``, timers already held that come due while a long scan result is
        being applied fire between chunks of rows, so a scan does not hold them up.
        """
        assert self._load is not None
        after, after_key = self._loaded, self._loaded_key
        limit = max(1, min(self._max_held - len(self._index), _SCAN_PAGE))
        self._loading = True
        # A timer committed after the scan's snapshot is not in its result, so hold timers
        # scheduled directly in the range being scanned; the scan's copy is then a duplicate.
        if until > self._limit:
            self._limit, self._limit_key = until, None
        self._dropped_min = math.inf
        meanwhile: list[_Entry] = []
        try:
            self._meanwhile = meanwhile
            rows = await self._load(after, after_key, until, limit)
            self._meanwhile = None
            tombstones = self._tombstones
            last: float = -math.inf
            last_key: Any = None
            taken = 0  # rows of the range seen: applied, duplicates and tombstoned alike
            cut = False  # the page ends before `until`: loaded only through (last, last_key)
            for n, (due, key, payload) in enumerate(rows, 1):
                if not due >= last or (due == last and n > 1 and key < last_key):
                    raise ValueError(
                        f"timer loader returned {key!r} due {due!r} after {last_key!r} due "
                        f"{last!r}: return the rows of the range in (due, key) order, as a "
                        "scan of the index does"
                    )
                # A row at or before the position (a loader that rounds the bounds to the
                # store's precision returns some) was covered by an earlier scan.
                if not (
                    due > after or (due == after and after_key is not None and after_key < key)
                ):
                    last, last_key = due, key
                    continue
                if due > until:
                    break  # past the range (and so is the rest): it belongs to the next scan
                if taken == limit:
                    cut = True  # more than asked for: the rest is left for the next scan
                    break
                last, last_key = due, key
                taken += 1
                # A key cancelled during the scan may be in a snapshot taken before its deletion.
                if key not in tombstones:
                    self.schedule(due, key, payload)
                if fire_meanwhile and n % _ROWS_PER_FIRE == 0:
                    now = self._clock.now()
                    if last > now:  # the rows still to come are later still: order holds
                        self._advance(now)
                        self._meanwhile = meanwhile
                        await self._fire_due(now)
                        self._meanwhile = None
            else:
                cut = taken >= limit  # a full page: there may be more
            self._tombstones.clear()
            if cut:
                self._loaded, self._loaded_key = last, last_key
                self._let_go_beyond(meanwhile, last, last_key)
                # The next stored timer is at `last` or later: scan again once there is room.
                self._next_stored = last
                return
            self._loaded, self._loaded_key = until, None
            if self._peek is None:
                nxt = until
            else:
                peeked = await self._peek(until)
                nxt = math.inf if peeked is None else peeked
                if not nxt > until:
                    raise ValueError(
                        f"timer peek({until!r}) returned {peeked!r}: it must return the "
                        "earliest due time strictly after its argument, or None"
                    )
            # A timer scheduled beyond the range during the scan is in the index but maybe not
            # in the peek's snapshot.
            self._next_stored = min(nxt, self._dropped_min)
        finally:
            self._meanwhile = None
            self._loading = False
            self._tombstones.clear()
            self._limit, self._limit_key = self._loaded, self._loaded_key

    def _let_go_beyond(self, entries: list[_Entry], due: float, key: Any) -> None:
        """Stop holding the entries (scheduled during a scan) past the position (due, key).

        The scan was cut short before them; their rows are in the index, and the next scan,
        which starts at that position, loads them.
        """
        index = self._index
        for entry in entries:
            d, k = entry[0], entry[1]
            if (d > due or (d == due and key < k)) and index.get(k) is entry:
                del index[k]
                entry[3] = _CANCELLED

    def _clear(self) -> None:
        """Let go of every held timer (a restart with a loader reloads them from the index)."""
        for row in self._levels:
            for i, slot in enumerate(row):
                if slot:
                    row[i] = []
        self._ready.clear()
        self._index.clear()
        self._removed = self._seq

    def _schedule_beyond(self, due: float, key: K, payload: P) -> bool:
        """The slow path of :meth:`schedule`: past the loaded position (or an invalid due)."""
        if not -math.inf < due < math.inf:
            raise ValueError(f"timer {key!r}: due time must be finite, got {due!r}")
        if self._load is None:
            raise ValueError(
                f"timer {key!r}: due time {due!r} is past year 9999; pick an earlier one"
            )
        if key in self._index:
            return False
        if self._loading:
            self._dropped_min = min(self._dropped_min, due)
            return False
        nxt = self._next_stored
        if due < nxt:
            # Nothing is stored in (loaded, nxt) but this timer: advance the loaded range up to
            # the horizon without a scan and hold it (a peek keeps an idle wheel from rescanning).
            frontier = min(self._clock.now() + self._horizon, math.nextafter(nxt, -math.inf))
            if frontier > self._loaded:
                self._loaded = self._limit = frontier
                self._loaded_key = self._limit_key = None
            if due <= self._limit and self._limit_key is None:
                return self.schedule(due, key, payload)
            self._next_stored = due
            if due - self._horizon / 2 < self._wake_at:
                self._interrupt()
        return False

    def _advance(self, now: float) -> None:
        """Cascade and drain every slot whose time has come, so due timers are in _ready."""
        now_tick = int(now * self._inv)
        while (found := self._next_slot()) is not None:
            level, index, start = found
            if start > now_tick:
                break
            if level == 0:
                # Drain every due slot of this level-0 rotation in one pass. Each slot is one
                # tick, and everything already in the heap has an earlier tick, hence an
                # earlier due time: sorted runs appended in tick order keep it a heap.
                row = self._levels[0]
                ready = self._ready
                last = min(_MASK, index + now_tick - start)
                for i in compress(range(index, last + 1), row[index : last + 1]):  # non-empty
                    entries, row[i] = row[i], []
                    entries.sort()
                    ready.extend(entries)
                self._move_to(start - index + last + 1)
            else:
                self._move_to(start)  # cascades the slot found
        if self._cur <= now_tick:
            self._move_to(now_tick + 1)

    def _next_slot(self) -> tuple[int, int, int] | None:
        """The earliest non-empty slot: (level, slot index, first tick it covers).

        Every timer at a level is later than every timer at the levels below it (they differ
        from the current tick in a higher digit), so the lowest non-empty level has it.
        """
        cur = self._cur
        shift = 0
        for level, row in enumerate(self._levels):
            # Slot `digit` of levels 1 and up is always empty (see _move_to).
            first = (cur >> shift) & _MASK if level == 0 else ((cur >> shift) & _MASK) + 1
            # The first non-empty slot from `first` on, searched at C speed.
            index = next(compress(range(first, _SLOTS), row[first:]), None)
            if index is not None:
                base = (cur >> shift >> _BITS) << _BITS
                return level, index, (base | index) << shift
            shift += _BITS
        return None

    def _move_to(self, tick: int) -> None:
        """Make ``tick`` the current tick. No timer in the wheel may be due before it.

        Keeps the invariant that at levels 1 and up the slot of the current digit is empty, by
        cascading it: otherwise a level-1 timer could sit in the same 256-tick span as (and
        before) level-0 timers, and firing the lowest level first would break due order.
        """
        changed = (self._cur ^ tick).bit_length()  # digits from here up are as they were
        self._cur = tick
        shift = _BITS
        by_bits = self._by_bits
        for row in self._levels[1:]:
            if shift >= changed:
                break  # this digit, and the ones above, did not change: slots still empty
            digit = (tick >> shift) & _MASK
            if row[digit]:
                entries, row[digit] = row[digit], []
                for entry in entries:
                    if entry[3] is _CANCELLED:
                        self._removed += 1  # dropped on the way: no sweep needed for it
                        continue
                    t = entry[4]
                    # A timer differs from `tick` only below this level, so it lands lower.
                    lower_shift, lower_row = by_bits[(t ^ tick).bit_length()]
                    lower_row[(t >> lower_shift) & _MASK].append(entry)
            shift += _BITS

    async def _fire_due(self, now: float) -> None:
        """Fire every held timer due at or before ``now``, earliest first."""
        heap = self._ready
        index = self._index
        fired = 0
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            self._removed += 1
            due, key, _, payload, _ = entry
            if payload is _CANCELLED:
                continue
            try:
                await self._fire(Timer(due, key, payload))
            except BaseException as exc:
                if entry[3] is not _CANCELLED:  # not cancelled meanwhile: still pending
                    heapq.heappush(heap, entry)
                    self._removed -= 1
                if isinstance(exc, Exception):
                    exc.add_note(
                        f"raised by the timer wheel's fire callback for timer {key!r} due "
                        f"{due!r}; the timer is still pending and fires again on restart"
                    )
                raise
            if entry[3] is not _CANCELLED:
                del index[key]
            fired += 1
            if fired % _FIRES_PER_CHECKPOINT == 0:
                await anyio.lowlevel.checkpoint()

    def _next_target(self) -> float:
        """When the driver must wake next: the next due timer or slot, or the next scan."""
        heap = self._ready
        while heap and heap[0][3] is _CANCELLED:
            heapq.heappop(heap)  # cancelled: do not wake for it
            self._removed += 1
        target = heap[0][0] if heap else math.inf
        while not heap and (found := self._next_slot()) is not None:
            level, index, start = found
            slot = self._levels[level][index]
            if len(slot) > _SMALL_SLOT:
                # Wake at the slot's first tick to cascade or drain it.
                target = start * self._res
                while int(target * self._inv) < start:  # not before the slot's tick
                    target = math.nextafter(target, math.inf)
                break
            # A few timers (the usual case when the wheel is sparse): wake once, exactly when
            # the earliest is due, rather than at each level it would cascade through.
            live = [entry[0] for entry in slot if entry[3] is not _CANCELLED]
            if live:
                target = min(live)
                break
            self._levels[level][index] = []  # all cancelled: drop them, look further
            self._removed += len(slot)
        if self._load is not None:
            target = min(target, self._scan_at())
        return target

    def _maybe_compact(self) -> None:
        """Drop cancelled entries once they outnumber live ones (amortised O(1) per cancel)."""
        self._compact_at = self._seq + _COMPACT_EVERY
        live = len(self._index)
        if self._seq - self._removed - live <= max(live, _COMPACT_MIN_DEAD):
            return
        stored = 0
        for row in self._levels:
            for i, slot in enumerate(row):
                if slot:
                    row[i] = kept = [e for e in slot if e[3] is not _CANCELLED]
                    stored += len(kept)
        self._ready[:] = [e for e in self._ready if e[3] is not _CANCELLED]
        heapq.heapify(self._ready)
        stored += len(self._ready)
        self._removed = self._seq - stored
