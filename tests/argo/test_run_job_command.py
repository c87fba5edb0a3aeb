"""``forge-worker run-job`` refuses a pod environment that holds no job, clearly (exit 2), and
reads the delivery number from Argo's retry count."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from forge_worker.single import JobInputError, read_job


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", ""),
        "FORGE_PIPELINE_URL": "http://127.0.0.1:9",
        "FORGE_LOG_FORMAT": "console",
    }
    return subprocess.run(
        [sys.executable, "-m", "forge_worker", "run-job"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "FORGE_JOB_TYPE must be ci, artifact, release or discovery"),
        ({"FORGE_JOB_TYPE": "ci", "FORGE_JOB": "not base64!"}, "FORGE_JOB is not base64"),
        ({"FORGE_JOB_TYPE": "ci"}, "FORGE_JOB is empty"),
        ({"FORGE_JOB_TYPE": "ci", "FORGE_JOB": base64.b64encode(b"[1, 2]").decode()}, "FORGE_JOB holds no ci job"),
    ],
)
def test_a_pod_without_a_readable_job_exits_2_saying_why(env: dict[str, str], says: str) -> None:
    done = _run(env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stdout + done.stderr


def test_the_delivery_number_is_argos_retry_count_plus_one() -> None:
    job = base64.b64encode(b'{"run_id": "r"}').decode()
    env = {"FORGE_JOB_TYPE": "ci", "FORGE_JOB": job}
    assert read_job(env)[2] == 1
    assert read_job({**env, "FORGE_JOB_DELIVERY": "2"})[2] == 3
    with pytest.raises(JobInputError, match="must be a number"):
        read_job({**env, "FORGE_JOB_DELIVERY": "{{retries}}"})
