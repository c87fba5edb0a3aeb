"""The ``forge`` command line, run as a user runs it: a subprocess against the platform's gateway.

What is asserted is what the user sees: the JSON printed on stdout, the exit code, and for
refused requests a one-line ``forge: <status> <code>: <message>`` on stderr and nothing on stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from forge_dev.testing import Platform

DEVELOPER = "cli.dev@acme.io"
APPROVER = "cli.approver@acme.io"
VIEWER = "cli.viewer@acme.io"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def forge(*args: str, api: str | None = None, token: str | None = None, env: dict[str, str] | None = None) -> Result:
    cmd = [sys.executable, "-m", "forge_cli"]
    if api is not None:
        cmd += ["--api", api]
    if token is not None:
        cmd += ["--token", token]
    proc = subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(platform: Platform) -> Any:
    def run(*args: str, sub: str = DEVELOPER, roles: tuple[str, ...] = ("developer",)) -> Result:
        return forge(*args, api=platform.gateway_url, token=platform.token(sub, *roles))

    return run


def _repo() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}/shop"


def _sha() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


def _refused(res: Result, status: int, code: str) -> str:
    assert res.code == 1, res
    assert res.stdout == "", res
    line = res.stderr.strip()
    assert line.startswith(f"forge: {status} {code}: "), res
    assert "\n" not in line
    assert "Traceback" not in res.stderr
    return line


# ---------------------------------------------------------------------------------------------
# forge dev token


def test_dev_token_is_accepted_by_the_platform(platform: Platform) -> None:
    res = forge("dev", "token", "--sub", VIEWER, "--role", "viewer", "--data-dir", str(platform.data_dir))
    assert res.code == 0, res
    token = res.stdout.strip()
    assert token.count(".") == 2
    assert "\n" not in token

    listed = forge("runs", "list", "--repository", _repo(), api=platform.gateway_url, token=token)
    assert listed.code == 0, listed
    assert listed.json == {"runs": [], "total": 0, "limit": 20, "offset": 0, "next_cursor": None}


def test_dev_token_roles_and_expiry_are_what_the_gateway_enforces(platform: Platform) -> None:
    data = ["--data-dir", str(platform.data_dir)]
    viewer = forge("dev", "token", "--sub", VIEWER, *data).stdout.strip()  # no --role: viewer
    res = forge(
        "runs", "create", "--repository", _repo(), "--branch", "main", "--commit", _sha(),
        api=platform.gateway_url, token=viewer,
    )  # fmt: skip
    _refused(res, 403, "authorization_failed")

    expired = forge("dev", "token", "--sub", VIEWER, "--expires-in", "-60", *data)
    assert expired.code == 0, expired
    res = forge("runs", "list", "--repository", _repo(), api=platform.gateway_url, token=expired.stdout.strip())
    _refused(res, 401, "authentication_failed")

    worker = forge("dev", "token", "--sub", "svc-worker", "--service-account", *data).stdout.strip()
    res = forge(
        "runs", "create", "--repository", _repo(), "--branch", "main", "--commit", _sha(),
        api=platform.gateway_url, token=worker,
    )  # fmt: skip
    _refused(res, 403, "authorization_failed")


def test_dev_token_without_a_platform_says_how_to_get_one(tmp_path: Any) -> None:
    res = forge("dev", "token", "--sub", VIEWER, "--data-dir", str(tmp_path / "none"))
    assert res.code == 1
    assert res.stdout == ""
    assert "make run" in res.stderr
    assert "Traceback" not in res.stderr


def test_dev_token_rejects_an_unknown_role(platform: Platform) -> None:
    res = forge("dev", "token", "--sub", VIEWER, "--role", "root", "--data-dir", str(platform.data_dir))
    assert res.code == 2
    assert "invalid choice: 'root'" in res.stderr


# ---------------------------------------------------------------------------------------------
# forge runs


def test_runs_create_list_get_cancel(cli: Any) -> None:
    repo, sha = _repo(), _sha()
    created = cli("runs", "create", "--repository", repo, "--branch", "main", "--commit", sha, "--trigger", "push")
    assert created.code == 0, created
    run = created.json
    assert set(run) == {"id", "status", "started_at"}
    assert run["status"] == "pending"
    uuid.UUID(run["id"])

    listed = cli("runs", "list", "--repository", repo, sub=VIEWER, roles=("viewer",))
    assert listed.code == 0, listed
    page = listed.json
    assert page["total"] == 1
    assert page["limit"] == 20
    assert page["offset"] == 0
    assert page["runs"][0]["id"] == run["id"]
    assert page["runs"][0]["commit_sha"] == sha
    assert page["runs"][0]["repository"] == repo

    other_branch = cli("runs", "list", "--repository", repo, "--branch", "develop", "--limit", "5")
    assert other_branch.code == 0, other_branch
    assert other_branch.json["runs"] == []
    assert other_branch.json["limit"] == 5

    got = cli("runs", "get", run["id"], sub=VIEWER, roles=("viewer",))
    assert got.code == 0, got
    detail = got.json
    assert detail["id"] == run["id"]
    assert detail["repository"] == repo
    assert detail["branch"] == "main"
    assert detail["commit_sha"] == sha
    assert detail["trigger_type"] == "push"
    assert detail["triggered_by"] == DEVELOPER
    assert isinstance(detail["phases"], list)

    cancelled = cli("runs", "cancel", run["id"])
    # the run may already have failed (nobody serves this repository): both are what a user sees
    if cancelled.code == 0:
        assert cancelled.json == {"id": run["id"], "status": "cancelled"}
        assert cli("runs", "get", run["id"]).json["status"] == "cancelled"
    else:
        _refused(cancelled, 409, "resource_conflict")

    again = cli("runs", "cancel", run["id"])
    _refused(again, 409, "resource_conflict")


def test_runs_errors_reach_the_user_as_one_line(cli: Any) -> None:
    missing = str(uuid.uuid4())
    _refused(cli("runs", "get", missing), 404, "resource_not_found")
    _refused(cli("runs", "cancel", missing), 404, "resource_not_found")

    line = _refused(
        cli("runs", "create", "--repository", "not a repo", "--branch", "main", "--commit", _sha()),
        400,
        "invalid_request",
    )
    assert "repository" in line

    _refused(cli("runs", "list", "--repository", _repo(), "--limit", "0"), 400, "invalid_request")

    _refused(cli("runs", "logs", missing), 404, "resource_not_found")
    # nobody serves this repository: the run never gets steps, and `logs` says so
    run = cli("runs", "create", "--repository", _repo(), "--branch", "main", "--commit", _sha()).json
    res = cli("runs", "logs", run["id"])
    assert res.code == 1, res
    assert res.stdout == ""
    assert "has no step at all" in res.stderr


def test_runs_list_pages(cli: Any) -> None:
    repo = _repo()
    ids = []
    for _ in range(3):
        res = cli("runs", "create", "--repository", repo, "--branch", "main", "--commit", _sha())
        assert res.code == 0, res
        ids.append(res.json["id"])
    first = cli("runs", "list", "--repository", repo, "--limit", "2").json
    second = cli("runs", "list", "--repository", repo, "--limit", "2", "--offset", "2").json
    assert first["total"] == second["total"] == 3
    assert [r["id"] for r in first["runs"] + second["runs"]] == list(reversed(ids))


def test_cli_arguments_are_checked_before_any_request() -> None:
    res = forge("runs", "create", "--repository", "a/b", "--branch", "main")
    assert res.code == 2
    assert "--commit" in res.stderr

    res = forge("runs", "create", "--repository", "a/b", "--branch", "main", "--commit", "x", "--trigger", "tag")
    assert res.code == 2
    assert "invalid choice: 'tag'" in res.stderr


def test_without_a_token_or_a_gateway_the_user_is_told_what_to_do(platform: Platform) -> None:
    res = forge("runs", "list", "--repository", "a/b", api=platform.gateway_url)
    assert res.code == 1
    assert res.stdout == ""
    assert "no token" in res.stderr
    assert "FORGE_TOKEN" in res.stderr

    token = platform.token(VIEWER, "viewer")
    via_env = forge(
        "runs", "list", "--repository", _repo(), env={"FORGE_TOKEN": token, "FORGE_API_URL": platform.gateway_url}
    )
    assert via_env.code == 0, via_env
    assert via_env.json["total"] == 0

    # a port nobody listens on
    res = forge("runs", "list", "--repository", "a/b", api="http://127.0.0.1:9", token=token)
    assert res.code == 1
    assert res.stdout == ""
    assert res.stderr.startswith("forge: cannot reach http://127.0.0.1:9")
    assert "Traceback" not in res.stderr


def test_bad_token_is_401(platform: Platform) -> None:
    res = forge("runs", "list", "--repository", "a/b", api=platform.gateway_url, token="not-a-jwt")
    _refused(res, 401, "authentication_failed")


# ---------------------------------------------------------------------------------------------
# releases, approvals, deployments: the release lifecycle from the command line


def _create_release(cli: Any, repo: str, project: str, sha: str, *extra: str) -> dict[str, Any]:
    res = cli("releases", "create", "--repository", repo, "--project", project, "--commit", sha, *extra)
    assert res.code == 0, res
    out: dict[str, Any] = res.json
    return out


def test_releases_create_get_list(cli: Any) -> None:
    repo, sha1, sha2 = _repo(), _sha(), _sha()
    first = _create_release(
        cli,
        repo,
        "api",
        sha1,
        "--artifact",
        "api-image",
        "container",
        "registry.example.com/acme/api:build-1",
        "ghcr.io/acme/api:1.0.0",
    )
    assert first["release_number"] == 1
    assert first["canonical_id"] == f"{repo}/api/{sha1}"
    assert first["oci_uri"]
    second = _create_release(cli, repo, "api", sha2, "--tag", "v2.0.0")
    assert second["release_number"] == 2
    by_tag = cli("releases", "get", repo, "api", "v2.0.0")
    assert by_tag.code == 0, by_tag
    assert by_tag.json["id"] == second["id"]
    assert {"alias": "v2.0.0", "alias_type": "tag"} in by_tag.json["aliases"]
    assert by_tag.json["trigger"]["trigger_type"] == "tag"
    assert by_tag.json["trigger"]["triggered_by"] == DEVELOPER

    for ident in ("1", sha1, sha1[:12]):
        got = cli("releases", "get", repo, "api", ident, sub=VIEWER, roles=("viewer",))
        assert got.code == 0, (ident, got)
        rel = got.json
        assert rel["id"] == first["id"]
        assert rel["commit_sha"] == sha1
        assert rel["release_number"] == 1
        assert rel["created_by"] == DEVELOPER
        assert rel["artifacts"] == [
            {
                "name": "api-image",
                "type": "container",
                "tracking_oci_uri": "registry.example.com/acme/api:build-1",
                "primary_published_uri": "ghcr.io/acme/api:1.0.0",
                "digest": None,
                "size": None,
            }
        ]
        assert {"alias": "1", "alias_type": "numeric"} in rel["aliases"]
        assert rel["trigger"]["trigger_type"] == "manual"

    listed = cli("releases", "list", repo, "api", sub=VIEWER, roles=("viewer",))
    assert listed.code == 0, listed
    page = listed.json
    assert page["total"] == 2
    assert page["limit"] == 20
    assert page["offset"] == 0
    assert [r["release_number"] for r in page["releases"]] == [2, 1]

    paged = cli("releases", "list", repo, "api", "--limit", "1", "--offset", "1").json
    assert [r["id"] for r in paged["releases"]] == [first["id"]]


def test_release_errors(cli: Any) -> None:
    repo, sha = _repo(), _sha()
    first = _create_release(cli, repo, "api", sha)
    dup = cli("releases", "create", "--repository", repo, "--project", "api", "--commit", sha)
    line = _refused(dup, 409, "resource_conflict")
    assert first["id"] in line  # details.existing_id is shown

    _refused(cli("releases", "get", repo, "api", "99"), 404, "resource_not_found")

    viewer = cli(
        "releases", "create", "--repository", repo, "--project", "api", "--commit", _sha(),
        sub=VIEWER, roles=("viewer",),
    )  # fmt: skip
    _refused(viewer, 403, "authorization_failed")

    bad = cli("releases", "create", "--repository", repo, "--project", "api", "--commit", _sha(), "--artifact", "x")
    assert bad.code == 2
    assert bad.stdout == ""
    assert "--artifact: expected 4 arguments" in bad.stderr

    wrong_type = cli(
        "releases", "create", "--repository", repo, "--project", "api", "--commit", _sha(),
        "--artifact", "a", "tarball", "registry.example.com/a:1", "ghcr.io/a:1",
    )  # fmt: skip
    line = _refused(wrong_type, 400, "invalid_request")
    assert "artifacts[0].type" in line


def _wait_active(
    platform: Platform, cli: Any, environment: str, repo: str, project: str, deployment_id: str
) -> dict[str, Any]:
    """Poll (in-process, cheaply) until the reconciler activated the deployment; then ask the CLI."""
    url = f"{platform.gateway_url}/v1/deployments/{environment}/{repo}/{project}"
    deadline = time.monotonic() + 60
    with httpx.Client(headers=platform.headers(VIEWER, "viewer"), timeout=10) as http:
        while True:
            body = http.get(url).json()
            if body.get("deployment_id") == deployment_id and body.get("status") == "active":
                break
            assert time.monotonic() < deadline, f"deployment {deployment_id} never became active: {body}"
            time.sleep(0.1)
    res = cli("deployments", "current", environment, repo, project, sub=VIEWER, roles=("viewer",))
    assert res.code == 0, res
    out: dict[str, Any] = res.json
    assert out["deployment_id"] == deployment_id
    assert out["status"] == "active"
    return out


def test_release_approve_deploy_from_the_command_line(platform: Platform, cli: Any) -> None:
    repo, sha = _repo(), _sha()
    release = _create_release(cli, repo, "web", sha)

    none_yet = cli("deployments", "current", "dev", repo, "web")
    _refused(none_yet, 404, "resource_not_found")

    dev = cli("deployments", "create", "--release", release["id"], "--environment", "dev")
    assert dev.code == 0, dev
    assert dev.json["status"] == "pending"
    assert dev.json["gitops_commit_sha"]
    current = _wait_active(platform, cli, "dev", repo, "web", dev.json["id"])
    assert current["release_id"] == release["id"]
    assert current["release_number"] == 1
    assert current["environment"] == "dev"
    assert current["deployed_by"] == DEVELOPER

    # production without an approval is refused, and says why
    no_approval = cli("deployments", "create", "--release", release["id"], "--environment", "production")
    assert no_approval.code == 1
    assert no_approval.stdout == ""
    assert no_approval.stderr.startswith("forge: 4")
    assert "approval" in no_approval.stderr

    _refused(cli("approvals", "get", release["id"], "production"), 404, "resource_not_found")

    # the creator may not approve their own release, a developer may not approve at all
    own = cli(
        "approvals", "create", "--release", release["id"], "--environment", "production",
        "--justification", "mine", sub=DEVELOPER, roles=("approver", "developer"),
    )  # fmt: skip
    assert "self_approval" in _refused(own, 403, "authorization_failed")
    dev_only = cli(
        "approvals", "create", "--release", release["id"], "--environment", "production", "--justification", "x"
    )
    _refused(dev_only, 403, "authorization_failed")

    approved = cli(
        "approvals", "create", "--release", release["id"], "--environment", "production",
        "--justification", "CAB-1234 signed off", sub=APPROVER, roles=("approver",),
    )  # fmt: skip
    assert approved.code == 0, approved
    approval = approved.json
    assert approval["approver"] == APPROVER
    assert approval["status"] == "active"
    assert approval["expires_at"] > approval["approved_at"]

    status = cli("approvals", "get", release["id"], "production", sub=VIEWER, roles=("viewer",))
    assert status.code == 0, status
    assert status.json["approval_id"] == approval["approval_id"]
    assert status.json["justification"] == "CAB-1234 signed off"
    assert status.json["status"] == "active"

    prod = cli(
        "deployments", "create", "--release", release["id"], "--environment", "production",
        "--approval", approval["approval_id"],
    )  # fmt: skip
    assert prod.code == 0, prod
    _wait_active(platform, cli, "production", repo, "web", prod.json["id"])

    # a second release to dev supersedes the first in history
    second = _create_release(cli, repo, "web", _sha())
    dev2 = cli("deployments", "create", "--release", second["id"], "--environment", "dev")
    assert dev2.code == 0, dev2
    _wait_active(platform, cli, "dev", repo, "web", dev2.json["id"])
    history = cli("deployments", "history", "dev", repo, "web", sub=VIEWER, roles=("viewer",))
    assert history.code == 0, history
    page = history.json
    assert page["total"] == 2
    assert [(d["release_number"], d["status"]) for d in page["deployments"]] == [(2, "active"), (1, "superseded")]

    paged = cli("deployments", "history", "dev", repo, "web", "--limit", "1", "--offset", "1")
    assert paged.code == 0, paged
    assert paged.json["limit"] == 1
    assert paged.json["offset"] == 1
    assert [d["release_number"] for d in paged.json["deployments"]] == [1]

    # revoke: the approval is no longer usable
    revoked = cli("approvals", "revoke", approval["approval_id"], sub=APPROVER, roles=("approver",))
    assert revoked.code == 0, revoked
    assert revoked.json["status"] == "revoked"
    assert cli("approvals", "get", release["id"], "production").json["status"] == "revoked"
    again = cli(
        "deployments", "create", "--release", release["id"], "--environment", "production",
        "--approval", approval["approval_id"],
    )  # fmt: skip
    assert again.code == 1, again
    assert again.stdout == ""
    assert again.stderr.startswith("forge: 4"), again


def test_approval_errors(cli: Any) -> None:
    _refused(
        cli("approvals", "revoke", str(uuid.uuid4()), sub=APPROVER, roles=("approver",)), 404, "resource_not_found"
    )
    _refused(
        cli(
            "approvals", "create", "--release", str(uuid.uuid4()), "--environment", "production",
            "--justification", "x", sub=APPROVER, roles=("approver",),
        ),
        404,
        "resource_not_found",
    )  # fmt: skip
    bad = cli(
        "approvals", "create", "--release", "not-a-uuid", "--environment", "production",
        "--justification", "x", sub=APPROVER, roles=("approver",),
    )  # fmt: skip
    assert "release_id" in _refused(bad, 400, "invalid_request")


def test_an_answer_that_is_not_forge_json_is_reported_not_crashed_on(platform: Platform) -> None:
    # the S3 server is no Forge gateway: it answers XML
    res = forge("runs", "list", "--repository", "a/b", api=platform.s3_url, token=platform.token(VIEWER))
    assert res.code == 1, res
    assert res.stdout == ""
    assert res.stderr.startswith("forge: "), res
    assert "Traceback" not in res.stderr
