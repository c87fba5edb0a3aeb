"""The ``forge`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

# The API commands use only the standard library (urllib), and `forge dev token` imports the
# signing code when it runs: the CLI starts in a fraction of the time httpx + pyjwt take to import.

ROLES = ("viewer", "developer", "approver", "admin", "worker")


def _dev_token(args: argparse.Namespace) -> int:
    from .keys import IssuerKeys, default_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    path = data_dir / "issuer" / "keys.json"
    if not path.exists():
        if args.issuer is None:
            print(
                f"no issuer key at {path}: start the platform with `make run` first (or pass --issuer to create one)",
                file=sys.stderr,
            )
            return 1
        IssuerKeys.load_or_create(path, args.issuer)
    keys = IssuerKeys(path)
    roles = args.role or (["worker"] if args.service_account else ["viewer"])
    token = keys.sign(
        args.sub,
        roles,
        service_account=args.service_account,
        client_id=args.client_id or ("forge-worker" if args.service_account else "forge-cli"),
        expires_in=args.expires_in,
    )
    print(token)
    return 0


class ApiError(Exception):
    pass


def _call(
    args: argparse.Namespace, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None
) -> Any:
    token = args.token or os.environ.get("FORGE_TOKEN")
    if not token:
        raise ApiError("no token: pass --token or set FORGE_TOKEN (e.g. FORGE_TOKEN=$(forge dev token ...))")
    clean = {k: v for k, v in (params or {}).items() if v is not None}
    url = args.api.rstrip("/") + path + (f"?{urlencode(clean)}" if clean else "")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - the user's --api
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            status, content = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, content = exc.code, exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError(f"cannot reach {args.api}: {reason}") from None
    text = content.decode("utf-8", "replace")
    if status >= 400:
        try:
            err = json.loads(content)["error"]
            detail = f" {json.dumps(err['details'])}" if err.get("details") else ""
            message = f"{status} {err['code']}: {err['message']}{detail}"
        except (ValueError, KeyError, TypeError):
            message = f"{status}: {text[:500]}"
        raise ApiError(message)
    if not content:
        return {"status": status}
    try:
        return json.loads(content)
    except ValueError:
        raise ApiError(f"{status}: {args.api} answered something that is not JSON: {text[:200]!r}") from None


def _repo(repo: str) -> str:
    return quote(repo, safe="")


def _seg(value: str) -> str:
    """One path segment: whatever the user typed cannot add or remove segments."""
    return quote(value, safe="")


def _api_command(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result = handler(args)
        except ApiError as exc:
            print(f"forge: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result, indent=2))
        return 0

    return run


ENVIRONMENTS = ("dev", "staging", "production")


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, help="page size (the API's default is 20, at most 100)")
    parser.add_argument("--offset", type=int, help="items to skip")


def _add_api_commands(sub: Any) -> None:
    runs = sub.add_parser("runs", help="pipeline runs").add_subparsers(dest="runs_command", required=True)
    p = runs.add_parser("create", help="start a run for a commit")
    p.add_argument("--repository", required=True)
    p.add_argument("--branch", required=True)
    p.add_argument("--commit", required=True, dest="commit_sha")
    p.add_argument("--trigger", default="manual", choices=["push", "pull_request", "manual"])
    p.set_defaults(
        func=_api_command(
            lambda a: _call(
                a,
                "POST",
                "/v1/runs",
                {
                    "repository": a.repository,
                    "branch": a.branch,
                    "commit_sha": a.commit_sha,
                    "trigger_type": a.trigger,
                },
            )
        )
    )
    p = runs.add_parser("list", help="runs of a repository, newest first")
    p.add_argument("--repository", required=True)
    p.add_argument("--branch")
    p.add_argument("--status")
    _paging(p)
    p.set_defaults(
        func=_api_command(
            lambda a: _call(
                a,
                "GET",
                "/v1/runs",
                params={
                    "repository": a.repository,
                    "branch": a.branch,
                    "status": a.status,
                    "limit": a.limit,
                    "offset": a.offset,
                },
            )
        )
    )
    p = runs.add_parser("get", help="a run with its phases, tasks and steps")
    p.add_argument("run_id")
    p.set_defaults(func=_api_command(lambda a: _call(a, "GET", f"/v1/runs/{_seg(a.run_id)}")))
    p = runs.add_parser("cancel", help="cancel a pending or running run")
    p.add_argument("run_id")
    p.set_defaults(func=_api_command(lambda a: _call(a, "DELETE", f"/v1/runs/{_seg(a.run_id)}")))
    p = runs.add_parser("logs", help="print the logs of a run's steps (all, or those matching the filters)")
    p.add_argument("run_id")
    p.add_argument("--phase")
    p.add_argument("--project")
    p.add_argument("--step")
    p.set_defaults(func=_run_logs)

    rel = sub.add_parser("releases", help="releases").add_subparsers(dest="releases_command", required=True)
    p = rel.add_parser("create", help="release a project at a commit")
    p.add_argument("--repository", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--commit", required=True, dest="commit_sha")
    trigger = p.add_mutually_exclusive_group()
    trigger.add_argument("--branch", help="record the release as triggered by a push to BRANCH (adds the branch alias)")
    trigger.add_argument("--tag", help="record the release as triggered by TAG (adds the tag alias)")
    p.add_argument("--pipeline-run", dest="pipeline_run_id", help="the run that produced it")
    p.add_argument(
        "--artifact",
        action="append",
        default=[],
        nargs=4,
        metavar=("NAME", "TYPE", "TRACKING_URI", "PUBLISHED_URI"),
        help="an artifact (four values: OCI references contain ':', so they are separate arguments); "
        "repeat for several; TYPE is container, binary or archive",
    )
    p.set_defaults(func=_api_command(_create_release))
    p = rel.add_parser("get", help="a release by commit SHA, number, tag or alias")
    p.add_argument("repository")
    p.add_argument("project")
    p.add_argument("release_id")
    p.set_defaults(
        func=_api_command(
            lambda a: _call(a, "GET", f"/v1/releases/{_repo(a.repository)}/{_seg(a.project)}/{_seg(a.release_id)}")
        )
    )
    p = rel.add_parser("list", help="releases of a project, newest first")
    p.add_argument("repository")
    p.add_argument("project")
    _paging(p)
    p.set_defaults(
        func=_api_command(
            lambda a: _call(
                a,
                "GET",
                f"/v1/releases/{_repo(a.repository)}/{_seg(a.project)}",
                params={"limit": a.limit, "offset": a.offset},
            )
        )
    )

    dep = sub.add_parser("deployments", help="deployments").add_subparsers(dest="deployments_command", required=True)
    p = dep.add_parser("create", help="deploy a release to an environment")
    p.add_argument("--release", required=True, dest="release_id")
    p.add_argument("--environment", required=True, choices=ENVIRONMENTS)
    p.add_argument("--approval", dest="approval_id")
    p.set_defaults(
        func=_api_command(
            lambda a: _call(
                a,
                "POST",
                "/v1/deployments",
                {
                    "release_id": a.release_id,
                    "environment": a.environment,
                    **({"approval_id": a.approval_id} if a.approval_id else {}),
                },
            )
        )
    )
    p = dep.add_parser("current", help="the active deployment of a project in an environment")
    p.add_argument("environment", choices=ENVIRONMENTS)
    p.add_argument("repository")
    p.add_argument("project")
    p.set_defaults(
        func=_api_command(
            lambda a: _call(a, "GET", f"/v1/deployments/{a.environment}/{_repo(a.repository)}/{_seg(a.project)}")
        )
    )
    p = dep.add_parser("history", help="deployments of a project in an environment, newest first")
    p.add_argument("environment", choices=ENVIRONMENTS)
    p.add_argument("repository")
    p.add_argument("project")
    _paging(p)
    p.set_defaults(
        func=_api_command(
            lambda a: _call(
                a,
                "GET",
                f"/v1/deployments/{a.environment}/{_repo(a.repository)}/{_seg(a.project)}/history",
                params={"limit": a.limit, "offset": a.offset},
            )
        )
    )

    apr = sub.add_parser("approvals", help="approvals").add_subparsers(dest="approvals_command", required=True)
    p = apr.add_parser("create", help="approve a release for an environment")
    p.add_argument("--release", required=True, dest="release_id")
    p.add_argument("--environment", required=True, choices=ENVIRONMENTS)
    p.add_argument("--justification", required=True)
    p.set_defaults(
        func=_api_command(
            lambda a: _call(
                a,
                "POST",
                "/v1/approvals",
                {"release_id": a.release_id, "environment": a.environment, "justification": a.justification},
            )
        )
    )
    p = apr.add_parser(
        "get",
        help="the approval status of a release in an environment (RELEASE_ID ENVIRONMENT), or one approval (APPROVAL_ID)",
    )
    p.add_argument("id", metavar="RELEASE_ID|APPROVAL_ID")
    p.add_argument("environment", nargs="?", choices=ENVIRONMENTS)
    p.set_defaults(
        func=_api_command(
            lambda a: _call(a, "GET", f"/v1/approvals/{_seg(a.id)}" + (f"/{a.environment}" if a.environment else ""))
        )
    )
    p = apr.add_parser("revoke", help="revoke an active approval")
    p.add_argument("approval_id")
    p.add_argument("--reason", help="recorded with the revocation")
    p.set_defaults(
        func=_api_command(
            lambda a: _call(
                a, "DELETE", f"/v1/approvals/{_seg(a.approval_id)}", {"reason": a.reason} if a.reason else None
            )
        )
    )


def _run_logs(args: argparse.Namespace) -> int:
    """Each matching step's log (fetched from its presigned ``logs_url``) under a header line."""
    try:
        run = _call(args, "GET", f"/v1/runs/{_seg(args.run_id)}")
    except ApiError as exc:
        print(f"forge: {exc}", file=sys.stderr)
        return 1
    found = failed = 0
    for phase in run.get("phases", []):
        if args.phase and phase["name"] != args.phase:
            continue
        for task in phase.get("tasks", []):
            if args.project and task["project_name"] != args.project:
                continue
            for step in task.get("steps", []):
                if args.step and step["name"] != args.step:
                    continue
                found += 1
                where = f"{phase['name']}/{task['project_name']}/{step['name']}"
                print(f"==> {where} ({step['status']}, exit code {step.get('exit_code')}) <==", flush=True)
                if not step.get("logs_url"):
                    print("(no log)", flush=True)
                    continue
                try:
                    sys.stdout.write(_fetch_log(step["logs_url"]))
                except ApiError as exc:
                    failed += 1
                    print(f"forge: {where}: {exc}", file=sys.stderr, flush=True)
                sys.stdout.flush()
    if not found:
        what = "matching the filters" if (args.phase or args.project or args.step) else "at all"
        print(f"forge: run {args.run_id} ({run.get('status')}) has no step {what}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _fetch_log(url: str) -> str:
    # A presigned URL carries its own credentials: no Authorization header (S3 refuses two).
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - the API's presigned URL
            data: bytes = resp.read()
    except urllib.error.HTTPError as exc:
        raise ApiError(f"log download failed: {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ApiError(f"log download failed: {getattr(exc, 'reason', exc)}") from None
    text = data.decode("utf-8", "replace")
    return text if text.endswith("\n") or not text else text + "\n"


def _create_release(args: argparse.Namespace) -> Any:
    artifacts = [
        {"name": name, "type": kind, "tracking_oci_uri": tracking, "primary_published_uri": published}
        for name, kind, tracking, published in args.artifact
    ]
    body: dict[str, Any] = {
        "repository": args.repository,
        "project": args.project,
        "commit_sha": args.commit_sha,
        "artifacts": artifacts,
    }
    if args.branch:
        body["trigger"] = {"trigger_type": "branch_push", "branch": args.branch}
    elif args.tag:
        body["trigger"] = {"trigger_type": "tag", "tag": args.tag}
    if args.pipeline_run_id:
        body["pipeline_run_id"] = args.pipeline_run_id
    return _call(args, "POST", "/v1/releases", body)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forge", description="Forge CI/CD platform command line")
    parser.add_argument("--api", default=os.environ.get("FORGE_API_URL", "http://127.0.0.1:8080"), help="gateway URL")
    parser.add_argument("--token", default=None, help="bearer token (default: $FORGE_TOKEN)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_api_commands(sub)
    dev = sub.add_parser("dev", help="local development helpers").add_subparsers(dest="dev_command", required=True)
    tok = dev.add_parser("token", help="print an access token the local dev platform accepts")
    tok.add_argument("--sub", required=True, help="subject (an e-mail for users)")
    tok.add_argument("--role", action="append", choices=ROLES, help="realm role; repeat for several")
    tok.add_argument("--service-account", action="store_true", help="a service-account (worker) token")
    tok.add_argument("--client-id", default=None)
    tok.add_argument("--expires-in", type=int, default=3600, help="lifetime in seconds (default 3600)")
    tok.add_argument("--data-dir", default=None, help="platform state directory (default .forge-data)")
    tok.add_argument(
        "--issuer", default=None, help="issuer URL when creating a new key (e.g. http://127.0.0.1:8180/realms/forge)"
    )
    tok.set_defaults(func=_dev_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
