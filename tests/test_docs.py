"""The code in README.md and docs/testing.md runs as shown (docs stay true)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_readme_example_runs(tmp_path: Path) -> None:
    (code,) = python_blocks(ROOT / "README.md")
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == "{'charge': 'charge-o-1', 'ship': {'carrier': 'ups'}}"
    assert (tmp_path / "aion-data" / "data.mdb").exists()


def test_testing_guide_example_passes(tmp_path: Path) -> None:
    (code,) = python_blocks(ROOT / "docs" / "testing.md")
    (tmp_path / "test_expense.py").write_text(code)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_expense.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed" in proc.stdout


def test_human_in_the_loop_example_runs(tmp_path: Path) -> None:
    path = ROOT / "docs" / "human-in-the-loop.md"
    code = python_blocks(path)[-1]  # the worked example closes the page
    (printed,) = re.findall(r"It prints:\n\n```\n(.*?)```", path.read_text(), re.S)
    script = tmp_path / "expense.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    assert out == printed
    assert out.splitlines()[-2] == (
        "expense-42: {'status': 'paid', 'approved_by': 'grace', "
        "'payout': {'payout_id': 'po-1', 'amount': 420}}"
    )
