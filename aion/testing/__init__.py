"""Helpers for testing code that uses aion: a manual clock, and (later) replay tools."""

from __future__ import annotations

from aion._clock import ManualClock as ManualClock

__all__ = ["ManualClock"]
