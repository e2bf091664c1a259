"""schemathesis against ``/api/openapi.json``, over real HTTP (bounded example count): no 5xx,
every status code, content type and body as the spec says."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import anyio
import pytest

import aion
from aion._apikeys import ApiKeys
from tests.server._serving import serving

pytest.importorskip("schemathesis", reason="the spec is checked with schemathesis")

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


@aion.workflow
async def greet(ctx: aion.Context, name: str) -> str:
    await ctx.wait_signal("go")
    return f"hello {name}"


@pytest.mark.timeout(600)
async def test_every_route_answers_as_its_spec_says(tmp_path: Path) -> None:
    key, _ = ApiKeys(tmp_path / "api-keys.json").create(
        role="admin", all_tenants=True, label="schemathesis"
    )
    async with aion.Engine(tmp_path, workflows=[greet]) as engine, serving(engine) as base:
        for i in range(3):
            await engine.start(greet, f"n{i}", workflow_id=f"w{i}")
        command = shutil.which("schemathesis") or ""
        argv = [command] if command else [sys.executable, "-m", "schemathesis.cli"]
        result = await anyio.run_process(
            [
                *argv,
                "run",
                f"{base}/api/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                "15",
                "--seed",
                "1",
                "--phases",
                "examples,coverage,fuzzing",
                "--header",
                f"Authorization: Bearer {key}",
                "--workers",
                "1",
                "--no-color",
                "--suppress-health-check",
                "all",
            ],
            check=False,
            cwd=tmp_path,  # its example database and reports stay out of the checkout
        )
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, out[-8000:]
