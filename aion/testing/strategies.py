"""Hypothesis strategies for property-testing workflows (needs ``hypothesis`` installed)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from ._harness import SignalAt

__all__ = ["signal_schedules"]


def signal_schedules(
    payloads: dict[str, st.SearchStrategy[Any]],
    *,
    max_signals: int = 5,
    max_after: float = 7 * 86400.0,
) -> st.SearchStrategy[list[SignalAt]]:
    """A Hypothesis strategy of signal schedules: which signals arrive, when, with what payload.

    Args:
        payloads: for each signal name, a strategy of its payloads.
        max_signals: at most this many signals in one schedule.
        max_after: the latest arrival, in seconds after the start.
    """
    if not payloads:
        raise ValueError("name at least one signal")
    one = st.sampled_from(sorted(payloads)).flatmap(
        lambda name: st.builds(
            SignalAt,
            after=st.floats(min_value=0, max_value=max_after, allow_nan=False),
            name=st.just(name),
            payload=payloads[name],
        )
    )
    return st.lists(one, max_size=max_signals).map(lambda xs: sorted(xs, key=lambda s: s.after))
