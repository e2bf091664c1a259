"""RestartBudget: the sliding restart window (OTP intensity) and the backoff before each restart;
Backoff's ``immediate_first`` option, which run actors use."""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aion._supervision import Backoff, RestartBudget

# What a crashed run actor waited before this class existed (the engine's restart_backoff).
RUN_BACKOFF = Backoff(initial=0.05, maximum=5.0, multiplier=2.0, jitter=0.5, immediate_first=False)


def legacy_run_backoff(restarts: int, rng: random.Random) -> float:
    return float(min(0.05 * 2 ** (restarts - 1), 5.0) * (0.5 + rng.random()))


def legacy_supervisor_window(times: deque[float], now: float, window: float) -> int:
    """The supervisor's window before RestartBudget, verbatim: restarts counted at ``now``."""
    cutoff = now - window
    times.append(now)
    while times[0] < cutoff:
        times.popleft()
    return len(times)


# --- the window ----------------------------------------------------------------------------------


def test_more_than_max_restarts_within_the_window_is_refused() -> None:
    budget = RestartBudget(2, 10.0)
    assert budget.record(0.0)
    assert budget.record(1.0)
    assert not budget.record(2.0)
    assert budget.count == 3
    assert budget.recent == (0.0, 1.0, 2.0)


def test_a_restart_exactly_window_seconds_ago_still_counts() -> None:
    budget = RestartBudget(1, 10.0)
    assert budget.record(5.0)
    assert not budget.record(15.0)  # 5.0 is exactly 10 s old: still inside (OTP)
    assert budget.recent == (5.0, 15.0)
    assert budget.record(25.5)  # both older than 10 s now
    assert budget.count == 1


def test_zero_max_restarts_refuses_the_first_restart() -> None:
    assert not RestartBudget(0, 1.0).record(0.0)


def test_reset_forgets_every_restart() -> None:
    budget = RestartBudget(1, 60.0)
    budget.record(0.0)
    assert not budget.record(1.0)
    budget.reset()
    assert budget.count == 0 and budget.recent == ()
    assert budget.record(2.0)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_restarts"):
        RestartBudget(-1, 1.0)
    for window in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="window"):
            RestartBudget(1, window)
    budget = RestartBudget(3, 5)
    assert (budget.max_restarts, budget.window) == (3, 5.0)
    assert repr(budget) == "<RestartBudget 0 of 3 within 5 s>"


def test_it_is_small() -> None:
    budget = RestartBudget(5, 60.0, RUN_BACKOFF, random.Random(1))
    assert not hasattr(budget, "__dict__")
    budget.record(1.0)
    assert budget.count == 1


nondecreasing = st.lists(st.floats(0, 100, allow_nan=False), max_size=40).map(sorted)
any_order = st.lists(st.floats(-100, 100, allow_nan=False), max_size=40)


@given(
    times=nondecreasing,
    max_restarts=st.integers(0, 6),
    window=st.floats(0.5, 30, allow_nan=False),
)
def test_record_agrees_with_a_model_of_the_window_and_the_old_supervisor(
    times: list[float], max_restarts: int, window: float
) -> None:
    budget = RestartBudget(max_restarts, window)
    old: deque[float] = deque()
    for i, now in enumerate(times):
        in_window = [t for t in times[: i + 1] if t >= now - window]
        allowed = budget.record(now)
        assert budget.count == len(in_window) == legacy_supervisor_window(old, now, window)
        assert budget.recent == tuple(in_window)
        assert allowed == (len(in_window) <= max_restarts)


@given(times=any_order, window=st.floats(0.5, 30, allow_nan=False))
def test_a_clock_stepping_back_keeps_exactly_the_restarts_no_later_cutoff_dropped(
    times: list[float], window: float
) -> None:
    budget = RestartBudget(3, window)
    for i, now in enumerate(times):
        budget.record(now)
        # A restart recorded earlier survives while every record since found it in its window.
        kept = [
            t for j, t in enumerate(times[:i]) if all(t >= n - window for n in times[j + 1 : i + 1])
        ]
        assert budget.recent == (*kept, now)


# --- the delay -----------------------------------------------------------------------------------


def test_without_a_backoff_every_restart_is_immediate() -> None:
    budget = RestartBudget(100, 60.0)
    for now in range(10):
        budget.record(float(now))
        assert budget.delay() == 0.0


def test_the_delay_follows_the_backoff_for_the_earlier_restarts_in_the_window() -> None:
    backoff = Backoff(initial=1.0, maximum=4.0, multiplier=2.0, jitter=0.0)
    budget = RestartBudget(100, 10.0, backoff)
    delays = []
    for now in (0.0, 1.0, 2.0, 3.0, 4.0):
        budget.record(now)
        delays.append(budget.delay())
    assert delays == [0.0, 1.0, 2.0, 4.0, 4.0]  # the first restart is immediate (OTP)
    budget.record(20.0)  # a quiet period: the earlier restarts left the window
    assert budget.delay() == 0.0


@given(seed=st.integers(0, 2**32), counts=st.lists(st.integers(1, 12), min_size=1, max_size=12))
def test_the_delay_draws_jitter_like_backoff_delay(seed: int, counts: list[int]) -> None:
    backoff = Backoff(initial=0.5, maximum=3.0, jitter=0.5)
    expected_rng = random.Random(seed)
    budget = RestartBudget(100, 1e9, backoff, random.Random(seed))
    for n, now in enumerate(sorted(counts)):
        budget.record(float(now))
        assert budget.delay() == backoff.delay(n, expected_rng)


@given(seed=st.integers(0, 2**32), restarts=st.integers(1, 1000))
def test_run_backoff_is_the_engines_old_formula_capped_at_its_maximum(
    seed: int, restarts: int
) -> None:
    rng_old, rng_new = random.Random(seed), random.Random(seed)
    old = legacy_run_backoff(restarts, rng_old)
    new = RUN_BACKOFF.delay(restarts - 1, rng_new)
    assert new == min(5.0, old)
    if restarts <= 7:  # below the cap even at the top of the jitter: bit for bit the same
        assert new == old
    assert rng_old.random() == rng_new.random()  # one draw each


def test_immediate_first_false_waits_before_the_first_restart() -> None:
    rng = random.Random(0)
    no_jitter = Backoff(initial=0.05, maximum=5.0, jitter=0.0, immediate_first=False)
    assert [no_jitter.delay(n, rng) for n in range(8)] == [
        0.05,
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        3.2,
        5.0,
    ]
    assert no_jitter.delay(-1, rng) == 0.05
    assert Backoff(maximum=0.0, initial=0.0, immediate_first=False).delay(3, rng) == 0.0
    budget = RestartBudget(5, 60.0, RUN_BACKOFF, random.Random(3))
    budget.record(0.0)
    assert 0.025 <= budget.delay() <= 0.075


def test_a_long_crash_loop_does_not_overflow_the_backoff() -> None:
    rng = random.Random(0)
    assert Backoff(jitter=0.0).delay(5000, rng) == 1.0
    assert Backoff(initial=0.0, maximum=1.0).delay(5000, rng) == 0.0
    assert 2.5 <= RUN_BACKOFF.delay(10**6, rng) <= 5.0
