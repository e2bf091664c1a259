"""``python -m aion``: the ``aion`` command."""

from __future__ import annotations

import sys

from aion.cli import main

sys.exit(main())
