"""A step whose log S3 never takes: the step still runs to its end, and the outcome does not
wait on S3 forever. After ``FORGE_LOG_UPLOAD_RETRY_FOR`` the rest of the output is drained (the
step is not blocked on its pipe) and the run fails as an infrastructure error
(``LogUploadFailed``), which the job handling retries by redelivery.

A real sandboxed step and a real S3 client pointed at a port nothing listens on.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forge_common.s3 import S3
from forge_dev.stack import free_port
from forge_worker.logs import MIN_PART
from forge_worker.sandbox import Limits, Sandbox, SandboxUnavailable, Workspace
from forge_worker.steps import LogUploadFailed, ProcessTable, StepRunner


@pytest.fixture
async def base() -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="forge-step-log-"))
    path.chmod(0o711)  # the step user passes through to its workspace
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_s3_that_stays_away_fails_the_step_as_infrastructure_not_forever(base: Path) -> None:
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    try:
        sandbox = await Sandbox.create("auto", work_dir=base / "steps", writable_paths=(str(shared),))
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))
    checkout = base / "checkout"
    checkout.mkdir()
    workspace = await Workspace.for_sandbox(sandbox, checkout)
    s3 = S3(f"http://127.0.0.1:{free_port()}", "forge-logs", "forge", "forge-secret", "us-east-1")
    try:
        async with s3.client() as client:
            runner = StepRunner(
                client,
                "forge-logs",
                ProcessTable(base / "running"),
                0.2,
                256 * 1024 * 1024,
                sandbox,
                upload_retry_for=1.0,
                part_size=MIN_PART,
            )
            # Three parts' worth of output, then a marker: reached only if the step was not
            # left blocked on its pipe once the log was given up.
            command = f"head -c {3 * MIN_PART} /dev/zero; echo done > {shared}/marker"
            with pytest.raises(LogUploadFailed, match="could not be written to S3"):
                await runner.run(
                    run_id="r1",
                    argv=["bash", "-e", "-c", command],
                    workspace=workspace,
                    cwd=".",
                    env={},
                    limits=Limits(memory=1 << 30, processes=64, timeout=120.0),
                    key="pipeline-runs/r1/logs/test/app/loud.log",
                    cancel=asyncio.Event(),
                )
    finally:
        workspace.remove()
    assert (shared / "marker").read_text() == "done\n"
