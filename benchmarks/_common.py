"""Helpers the benchmark scripts share: memory readings, scratch directories, medians."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["median", "rss", "scratch"]


def rss() -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of this process, in MB (Linux /proc)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "RssAnon", "RssFile"):
                    out[name] = int(value.split()[0]) / 1024
    except OSError:  # not Linux: the peak is the best there is
        import resource

        out["VmRSS"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


@contextmanager
def scratch(name: str) -> Iterator[Path]:
    """A fresh directory for one measurement (under ``AION_BENCH_DIR`` if set), removed after."""
    base = os.environ.get("AION_BENCH_DIR") or None
    path = Path(tempfile.mkdtemp(prefix=f"aion-bench-{name}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def median(values: Sequence[float]) -> float:
    """The median, or 0.0 for no values."""
    return statistics.median(values) if values else 0.0
