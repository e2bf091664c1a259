"""Run one benchmark: ``python -m benchmarks NAME [--json] [--quick]``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from typing import Any

NAMES = (
    "client",
    "http",
    "instructions",
    "recovery",
    "scaling",
    "scaleout",
    "store",
    "timers",
    "workflows",
)


def machine() -> dict[str, Any]:
    """Describe the machine the figures were taken on."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for smoke tests")
    args = parser.parse_args(argv)
    module = importlib.import_module(f"benchmarks.{args.name}")
    figures = module.run(quick=args.quick)
    report = {"benchmark": args.name, "machine": machine(), "figures": figures}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        module.print_report(figures) if hasattr(module, "print_report") else print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
