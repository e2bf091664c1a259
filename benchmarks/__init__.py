"""aion benchmarks: ``python -m benchmarks NAME [--json]``.

Each benchmark module defines ``run(quick: bool) -> dict`` that returns its figures together with
a baseline measured in the same run (these machines are shared and noisy: compare ratios and
medians, not absolute numbers across runs).
"""
