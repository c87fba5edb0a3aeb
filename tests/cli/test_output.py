"""What ``forge`` prints: ``-o json|yaml|table``, a table on a terminal, completion scripts."""

from __future__ import annotations

import os
import pty
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from forge_dev.stack import wait_http
from forge_dev.testing import Platform

from .test_cli import forge

VIEWER = "output.viewer@acme.io"


def _sha() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


def _on_a_terminal(*args: str) -> str:
    """stdout of ``forge`` when it is a terminal (a pseudo-terminal 200 columns wide)."""
    main, child = pty.openpty()
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "LINES": "50", "TERM": "xterm"}
    with subprocess.Popen(
        [sys.executable, "-m", "forge_cli", *args], stdout=child, stderr=subprocess.PIPE, env=env
    ) as proc:
        os.close(child)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait(timeout=60)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    os.close(main)
    return b"".join(chunks).decode()


@pytest.fixture(scope="module")
def run(platform: Platform) -> dict[str, str]:
    repo = f"out-{uuid.uuid4().hex[:8]}/shop"
    token = platform.token("output.dev@acme.io", "developer")
    created = forge(
        "runs", "create", "--repository", repo, "--branch", "main", "--commit", _sha(),
        api=platform.gateway_url, token=token,
    )  # fmt: skip
    assert created.code == 0, created
    return {"id": created.json["id"], "repository": repo}


def test_json_when_piped_and_yaml_or_json_on_request(platform: Platform, run: dict[str, str]) -> None:
    token = platform.token(VIEWER)
    piped = forge("runs", "list", "--repository", run["repository"], api=platform.gateway_url, token=token)
    assert piped.code == 0, piped
    as_json = forge(
        "runs", "list", "--repository", run["repository"], "-o", "json", api=platform.gateway_url, token=token
    )
    assert as_json.json == piped.json
    assert piped.json["runs"][0]["id"] == run["id"]

    # -o before the command name works as well as after it
    as_yaml = forge(
        "-o", "yaml", "runs", "list", "--repository", run["repository"], api=platform.gateway_url, token=token
    )
    assert as_yaml.code == 0, as_yaml
    assert yaml.safe_load(as_yaml.stdout) == piped.json
    assert not as_yaml.stdout.lstrip().startswith("{")

    bad = forge("runs", "list", "--repository", "a/b", "-o", "xml", api=platform.gateway_url, token=token)
    assert bad.code == 2
    assert "invalid choice: 'xml'" in bad.stderr


def test_table_on_request_and_on_a_terminal(platform: Platform, run: dict[str, str]) -> None:
    token = platform.token(VIEWER)
    piped = forge("runs", "list", "--repository", run["repository"], api=platform.gateway_url, token=token).json
    table = forge(
        "runs", "list", "--repository", run["repository"], "-o", "table",
        api=platform.gateway_url, token=token, env={"COLUMNS": "250"},
    )  # fmt: skip
    assert table.code == 0, table
    header = table.stdout.splitlines()[0]
    # one column per field of the API's items, in the API's order
    columns = [key.upper().replace("_", " ") for key in piped["runs"][0]]
    assert header.split() == " ".join(columns).split()
    assert run["id"] in table.stdout
    assert "runs: 1-1 of 1" in table.stdout

    terminal = _on_a_terminal("--api", platform.gateway_url, "--token", token, "runs", "get", run["id"])
    assert run["id"] in terminal
    assert run["repository"] in terminal
    assert "triggered_by" in terminal
    assert not terminal.lstrip().startswith("{")


def test_errors_do_not_depend_on_the_output_format(platform: Platform) -> None:
    for fmt in ("json", "yaml", "table"):
        res = forge("runs", "get", str(uuid.uuid4()), "-o", fmt, api=platform.gateway_url, token=platform.token(VIEWER))
        assert res.code == 1, res
        assert res.stdout == ""
        assert res.stderr.startswith("forge: 404 resource_not_found: ")


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts(shell: str, tmp_path: Path) -> None:
    res = forge("completion", shell)
    assert res.code == 0, res
    script = res.stdout
    for word in ("runs", "releases", "deployments", "approvals", "login", "context", "--output"):
        assert word in script, word
    if shell == "zsh":
        assert script.startswith("#compdef forge")
    else:
        assert "complete " in script
    binary = shutil.which(shell)
    if binary is None:
        pytest.skip(f"{shell} is not installed: the script's syntax is not checked")
    path = tmp_path / f"forge.{shell}"
    path.write_text(script)
    checked = subprocess.run([binary, "-n", str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


def test_bash_completes_subcommands(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    script = tmp_path / "forge.bash"
    script.write_text(forge("completion", "bash").stdout)
    probe = (
        f"source {script}; COMP_WORDS=(forge runs l); COMP_CWORD=2; COMP_LINE='forge runs l'; COMP_POINT=12; "
        '_shtab_forge forge l runs; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    res = subprocess.run([bash, "-c", probe], capture_output=True, text=True, check=False)
    assert res.stdout.split() == ["list", "logs"], res


# ---------------------------------------------------------------------------------------------
# exit status per error class (0 ok, 1 refused/unsent, 2 usage, 3 timeout, 4 auth, 5 server)


def test_a_platform_failure_is_exit_status_5(platform: Platform) -> None:
    # a gateway whose pipeline service is unreachable: the platform answers 502, fast
    gateway = platform.start_process("gateway", env={"FORGE_PIPELINE_URL": "http://127.0.0.1:9"}, wait=False)
    try:
        wait_http(f"{gateway.url}/healthz", 60, gateway.popen, "gateway")
        res = forge("runs", "list", "--repository", "a/b", api=gateway.url, token=platform.token(VIEWER))
        assert res.code == 5, res
        assert res.stdout == ""
        assert res.stderr.startswith("forge: 502 bad_gateway: "), res
    finally:
        gateway.stop()


def test_no_answer_in_time_is_exit_status_3(platform: Platform) -> None:
    # a gateway that accepts the connection and never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        api = f"http://127.0.0.1:{silent.getsockname()[1]}"
        res = forge("--timeout", "0.5", "runs", "list", "--repository", "a/b", api=api, token=platform.token(VIEWER))
    assert res.code == 3, res
    assert res.stdout == ""
    assert "did not answer within 0.5 s" in res.stderr
