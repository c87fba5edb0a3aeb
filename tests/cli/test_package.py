"""forge-cli installs alone: a fresh virtualenv gets the ``forge`` command and no server stack."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_PACKAGES = {"psycopg", "psycopg-pool", "nats-py", "pgserver", "moto", "litestar", "uvicorn", "aioboto3"}


@pytest.mark.slow
def test_the_cli_package_installs_alone_without_server_dependencies(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # the pip cache is used as by any `pip install`: only the network is saved, not the check
    install = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            str(ROOT / "libs" / "forge_cli"),
            "-c",
            str(ROOT / "constraints.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr

    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    )
    installed = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert "forge-cli" in installed
    assert not installed & SERVER_PACKAGES, installed & SERVER_PACKAGES
    assert not {name for name in installed if name.startswith("forge-") and name != "forge-cli"}

    forge = env_dir / "bin" / "forge"
    helped = subprocess.run([forge, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert helped.returncode == 0, helped.stderr
    for command in ("runs", "releases", "deployments", "approvals", "login", "context", "completion"):
        assert command in helped.stdout

    # `forge dev` belongs to forge-dev, and says so instead of failing obscurely
    dev = subprocess.run([forge, "dev", "token", "--sub", "x"], capture_output=True, text=True, timeout=60, check=False)
    assert dev.returncode == 1
    assert dev.stdout == ""
    assert "forge-dev" in dev.stderr
    assert "Traceback" not in dev.stderr


def test_the_development_venv_forge_has_the_dev_commands() -> None:
    forge = Path(sys.executable).parent / "forge"
    res = subprocess.run([forge, "dev", "token", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert "--sub" in res.stdout
