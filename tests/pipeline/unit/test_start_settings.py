"""``forge-pipeline`` reads every setting at start, in ``__main__``, and passes them to
``create_app``: a bad dispatcher or job setting stops the start with exit status 2 and names
the variable, before anything is connected (no database or NATS needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("name", "value"),
    [("FORGE_DISPATCHER_LEASE_TTL", "0.2s"), ("FORGE_JOB_TIMEOUT_CI", "soon")],
)
def test_a_bad_dispatcher_or_job_setting_stops_the_start(name: str, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env[name] = value
    done = subprocess.run(
        [sys.executable, "-m", "forge_pipeline"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2, done.stderr
    assert name in done.stderr
    assert done.stderr.startswith("forge-pipeline: invalid configuration")
