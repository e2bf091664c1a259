"""The code in README.md and docs/testing.md runs as shown (docs stay true)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_readme_example_runs_twice_in_one_directory(tmp_path: Path) -> None:
    # A new user runs the quickstart, then runs it again: the second run finds the finished
    # run (start is idempotent) and must print its result, not fail on the signal.
    (code,) = python_blocks(ROOT / "README.md")
    script = tmp_path / "example.py"
    script.write_text(code)
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "{'charge': 'charge-o-1', 'ship': {'carrier': 'ups'}}"
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


def printed_examples(path: Path) -> list[tuple[str, str]]:
    """Each ```python block of ``path`` with what the page says it prints ("It prints:")."""
    return re.findall(r"```python\n(.*?)```\n\nIt prints:\n\n```\n(.*?)```", path.read_text(), re.S)


def test_getting_started_examples_run(tmp_path: Path) -> None:
    path = ROOT / "docs" / "getting-started.md"
    examples = printed_examples(path)
    # Every example on the page is a whole program that shows what it prints.
    assert len(examples) == len(python_blocks(path)) >= 3
    for i, (code, printed) in enumerate(examples):
        script = tmp_path / f"example_{i}.py"
        script.write_text(code)
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"example {i}:\n{code}\n{proc.stderr}"
        assert proc.stdout == printed, f"example {i}"


def test_docs_name_only_what_exists() -> None:
    import aion
    from aion.store import LmdbStore, MemoryStore

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    names: dict[str, object] = {
        "LmdbStore": LmdbStore, "MemoryStore": MemoryStore, "Engine": aion.Engine,
        "ctx": aion.Context, "engine": aion.Engine,
    }  # fmt: skip
    for page in pages:
        text = page.read_text()
        # Files of the repository that the page names exist (nothing outside it, e.g. shared/).
        assert "shared/" not in text, page.name
        for ref in re.findall(r"(?<![\w/.])((?:docs|aion|tests|benchmarks)/[\w/.-]*\w)", text):
            assert (ROOT / ref).exists(), f"{page.name} names {ref}, which does not exist"
        # Methods and attributes the page names (``engine.x(``: ``engine.lock`` is a file).
        named = re.findall(r"`(LmdbStore|MemoryStore|Engine|ctx)\.(\w+)", text)
        named += re.findall(r"`(engine)\.(\w+)\(", text)
        if page.name == "supervision.md":  # its ctx is a supervised child's ChildContext
            named = [(owner, attr) for owner, attr in named if owner != "ctx"]
        for owner, attr in named:
            assert hasattr(names[owner], attr), f"{page.name} names {owner}.{attr}"
    for source in sorted((ROOT / "aion").rglob("*.py")):  # docstrings and messages too
        for attr in re.findall(r"\bLmdbStore\.([a-z]\w*)", source.read_text()):
            assert hasattr(LmdbStore, attr), f"{source.name} names LmdbStore.{attr}"
    layers = (ROOT / "docs" / "design.md").read_text().split("## Layers", 1)[1].split("```")[1]
    for line in layers.strip().splitlines():  # the layers that exist, not the ones planned
        assert "http" not in line.split("  ")[0], line


def test_scale_out_example_runs(tmp_path: Path) -> None:
    from tests import _postgres

    with _postgres.fresh_schema() as schema:
        (code,) = python_blocks(ROOT / "docs" / "scale-out.md")
        shown = "postgresql://postgres@127.0.0.1:5432/test?schema=shop"
        assert shown in code
        script = tmp_path / "shop.py"
        script.write_text(code.replace(shown, f"{_postgres.URL}?schema={schema}"))
        out = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout == "hello ada\n"
