"""The API commands: runs, releases, deployments, approvals, search, webhooks."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from . import live
from .http import EXIT_FAILED, EXIT_OK, UsageError
from .output import Done, render
from .session import call

__all__ = ["ENVIRONMENTS", "add_api_commands"]


def _repo(repo: str) -> str:
    return quote(repo, safe="")


def _seg(value: str) -> str:
    """One path segment: whatever the user typed cannot add or remove segments."""
    return quote(value, safe="")


ENVIRONMENTS = ("dev", "staging", "production")


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, help="page size (the API's default is 20, at most 100)")
    parser.add_argument("--offset", type=int, help="items to skip")
    parser.add_argument("--cursor", help="the next_cursor of the previous page (instead of --offset)")


def add_api_commands(sub: Any, leaf: Any) -> None:
    """``leaf(group, name, help=...)`` adds a command that takes the common options."""
    _runs_commands(sub, leaf)
    _release_commands(sub, leaf)
    _artifact_commands(sub, leaf)
    _deployment_commands(sub, leaf)
    _approval_commands(sub, leaf)
    _search_commands(sub, leaf)
    _webhook_commands(sub, leaf)


def _runs_commands(sub: Any, leaf: Any) -> None:
    runs = sub.add_parser("runs", help="pipeline runs").add_subparsers(dest="runs_command", required=True)
    p = leaf(runs, "create", help="start a run for a commit")
    p.add_argument("--repository", required=True)
    p.add_argument("--branch", required=True)
    p.add_argument("--commit", required=True, dest="commit_sha")
    p.add_argument("--trigger", default="manual", choices=["push", "pull_request", "manual"])
    p.set_defaults(
        func=lambda a: call(
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
    p = leaf(runs, "list", help="runs of a repository, newest first")
    p.add_argument("--repository", required=True)
    p.add_argument("--branch")
    p.add_argument("--status", choices=["pending", "running", "success", "failed", "cancelled"])
    p.add_argument("--triggered-by", help="who started the runs (e.g. an email)")
    p.add_argument("--created-after", help="RFC 3339 time, e.g. 2026-11-30T00:00:00Z")
    p.add_argument("--created-before", help="RFC 3339 time")
    _paging(p)
    p.set_defaults(
        func=lambda a: call(
            a,
            "GET",
            "/v1/runs",
            params={
                "repository": a.repository,
                "branch": a.branch,
                "status": a.status,
                "triggered_by": a.triggered_by,
                "created_after": a.created_after,
                "created_before": a.created_before,
                "cursor": a.cursor,
                "limit": a.limit,
                "offset": a.offset,
            },
        )
    )
    p = leaf(runs, "get", help="a run with its phases, tasks and steps")
    p.add_argument("run_id")
    p.set_defaults(func=lambda a: call(a, "GET", f"/v1/runs/{_seg(a.run_id)}"))
    _run_follow_commands(runs, leaf)


def _run_follow_commands(runs: Any, leaf: Any) -> None:
    """What is done to a started run: cancel it, read its logs, watch it, wait for it."""
    p = leaf(
        runs,
        "cancel",
        help="cancel a run; several (RUN_ID ...), or a repository's active runs (--repository, "
        "optionally --branch, --status); exit status 1 when any was refused",
    )
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    p.add_argument("--repository", help="cancel this repository's pending and running runs")
    p.add_argument("--branch", help="only the runs of this branch (with --repository)")
    p.add_argument("--status", choices=["pending", "running"], help="only runs in this status (with --repository)")
    p.add_argument("--dry-run", action="store_true", help="show what would be cancelled, change nothing")
    p.set_defaults(func=_cancel_runs)
    p = leaf(runs, "logs", help="print the logs of a run's steps (all, or those matching the filters)")
    p.add_argument("run_id")
    p.add_argument("--phase")
    p.add_argument("--project")
    p.add_argument("--step")
    p.add_argument("-f", "--follow", action="store_true", help="follow the logs while the steps run")
    p.set_defaults(func=live.follow_logs)
    p = leaf(
        runs,
        "watch",
        help="a live tree of the run's phases, tasks and steps until it ends (exit status as `wait`)",
    )
    p.add_argument("run_id")
    p.set_defaults(func=live.watch)
    p = leaf(
        runs,
        "wait",
        help="wait for the run to end: exit status 0 success, 1 failed, 2 cancelled, 3 when --timeout passes",
    )
    p.add_argument("run_id")
    p.set_defaults(func=live.wait)


def _release_commands(sub: Any, leaf: Any) -> None:
    rel = sub.add_parser("releases", help="releases").add_subparsers(dest="releases_command", required=True)
    p = leaf(rel, "create", help="release a project at a commit")
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
    p.set_defaults(func=_create_release)
    p = leaf(rel, "get", help="a release by commit SHA, number, tag or alias")
    p.add_argument("repository")
    p.add_argument("project")
    p.add_argument("release_id")
    p.set_defaults(
        func=lambda a: call(a, "GET", f"/v1/releases/{_repo(a.repository)}/{_seg(a.project)}/{_seg(a.release_id)}")
    )
    p = leaf(rel, "list", help="releases of a project, newest first")
    p.add_argument("repository")
    p.add_argument("project")
    _paging(p)
    p.set_defaults(
        func=lambda a: call(
            a,
            "GET",
            f"/v1/releases/{_repo(a.repository)}/{_seg(a.project)}",
            params={"limit": a.limit, "offset": a.offset, "cursor": a.cursor},
        )
    )


def _artifact_commands(sub: Any, leaf: Any) -> None:
    art = sub.add_parser("artifacts", help="artifacts of releases").add_subparsers(
        dest="artifacts_command", required=True
    )
    p = leaf(art, "pull", writes_file=True, help="download a release's artifact, verifying its digest")
    p.add_argument("repository")
    p.add_argument("project")
    p.add_argument("release_id", metavar="release", help="commit SHA, number, tag or alias")
    p.add_argument("artifact", help="the artifact's name")
    p.add_argument(
        "-o",
        "--output",
        dest="path",
        required=True,
        help="where to write it (a file; a container becomes an OCI image layout directory)",
    )

    def pull(args: argparse.Namespace) -> int:
        from .artifacts import pull as run

        return run(args)

    p.set_defaults(func=pull)


def _deployment_commands(sub: Any, leaf: Any) -> None:
    dep = sub.add_parser("deployments", help="deployments").add_subparsers(dest="deployments_command", required=True)
    p = leaf(dep, "create", help="deploy a release to an environment")
    p.add_argument("--release", required=True, dest="release_id")
    p.add_argument("--environment", required=True, choices=ENVIRONMENTS)
    p.add_argument("--approval", dest="approval_id")
    p.set_defaults(
        func=lambda a: call(
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
    p = leaf(
        dep,
        "promote",
        help="deploy the releases active in one environment to another, per project (exit status 1 "
        "when any was refused)",
    )
    p.add_argument("repository")
    p.add_argument("projects", nargs="*", metavar="PROJECT", help="default: every project active in --from")
    p.add_argument("--from", dest="source", required=True, choices=ENVIRONMENTS)
    p.add_argument("--to", dest="target", required=True, choices=ENVIRONMENTS)
    p.add_argument(
        "--approval",
        action="append",
        default=[],
        metavar="RELEASE_ID=APPROVAL_ID",
        help="the approval of one release (production); repeat per release",
    )
    p.set_defaults(func=_promote)
    p = leaf(dep, "current", help="the active deployment of a project in an environment")
    p.add_argument("environment", choices=ENVIRONMENTS)
    p.add_argument("repository")
    p.add_argument("project")
    p.set_defaults(
        func=lambda a: call(a, "GET", f"/v1/deployments/{a.environment}/{_repo(a.repository)}/{_seg(a.project)}")
    )
    p = leaf(dep, "history", help="deployments of a project in an environment, newest first")
    p.add_argument("environment", choices=ENVIRONMENTS)
    p.add_argument("repository")
    p.add_argument("project")
    _paging(p)
    p.set_defaults(
        func=lambda a: call(
            a,
            "GET",
            f"/v1/deployments/{a.environment}/{_repo(a.repository)}/{_seg(a.project)}/history",
            params={"limit": a.limit, "offset": a.offset, "cursor": a.cursor},
        )
    )


def _approval_commands(sub: Any, leaf: Any) -> None:
    apr = sub.add_parser("approvals", help="approvals").add_subparsers(dest="approvals_command", required=True)
    p = leaf(apr, "create", help="approve a release for an environment")
    p.add_argument("--release", required=True, dest="release_id")
    p.add_argument("--environment", required=True, choices=ENVIRONMENTS)
    p.add_argument("--justification", required=True)
    p.set_defaults(
        func=lambda a: call(
            a,
            "POST",
            "/v1/approvals",
            {"release_id": a.release_id, "environment": a.environment, "justification": a.justification},
        )
    )
    p = leaf(
        apr,
        "batch",
        help="approve several releases for an environment with one justification (exit status 1 when any was refused)",
    )
    p.add_argument("release_ids", nargs="+", metavar="RELEASE_ID")
    p.add_argument("--environment", required=True, choices=ENVIRONMENTS)
    p.add_argument("--justification", required=True)
    p.set_defaults(
        func=lambda a: _batch(
            a,
            "/v1/approvals/batch",
            {"release_ids": a.release_ids, "environment": a.environment, "justification": a.justification},
        )
    )
    p = leaf(
        apr,
        "get",
        help="the approval status of a release in an environment (RELEASE_ID ENVIRONMENT), or one approval (APPROVAL_ID)",
    )
    p.add_argument("id", metavar="RELEASE_ID|APPROVAL_ID")
    p.add_argument("environment", nargs="?", choices=ENVIRONMENTS)
    p.set_defaults(
        func=lambda a: call(a, "GET", f"/v1/approvals/{_seg(a.id)}" + (f"/{a.environment}" if a.environment else ""))
    )
    p = leaf(apr, "revoke", help="revoke an active approval")
    p.add_argument("approval_id")
    p.add_argument("--reason", help="recorded with the revocation")
    p.set_defaults(
        func=lambda a: call(
            a, "DELETE", f"/v1/approvals/{_seg(a.approval_id)}", {"reason": a.reason} if a.reason else None
        )
    )


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
    return call(args, "POST", "/v1/releases", body)


_SEARCH_KINDS = ("all", "runs", "releases", "logs")


def _search_commands(sub: Any, leaf: Any) -> None:
    """``forge search [all|runs|releases|logs] QUERY...`` (docs/api-search.md)."""
    p = leaf(
        sub,
        "search",
        help="find runs and releases (by commit prefix, branch, tag, alias, author or error text) or log lines",
        usage="forge search [all|runs|releases|logs] QUERY... [options]",
        description="forge search QUERY finds runs and releases, newest first (GET /v1/search); a first word"
        " runs, releases or logs keeps one kind (logs: lines of finished steps' logs, GET /v1/search/logs);"
        " all QUERY searches both kinds for a query that is itself one of those words.",
    )
    p.add_argument(
        "words",
        nargs="+",
        metavar="QUERY",
        help="[all|runs|releases|logs] then the query (logs: words, a phrase, -word)",
    )
    p.add_argument("--repository", help="only this repository (owner/name)")
    p.add_argument("--since", help="logs only: steps finished since this RFC 3339 time")
    p.add_argument("--limit", type=int, help="page size (default 20, at most 100)")
    p.add_argument("--cursor", help="the next_cursor of the previous page")
    p.set_defaults(func=_search)


def _search(args: argparse.Namespace) -> Any:
    words = list(args.words)
    kind = words.pop(0) if len(words) > 1 and words[0] in _SEARCH_KINDS else "all"
    page = {"repository": args.repository, "limit": args.limit, "cursor": args.cursor}
    if kind == "logs":
        return call(args, "GET", "/v1/search/logs", params={"q": " ".join(words), "since": args.since, **page})
    if args.since is not None:
        raise UsageError("--since applies to forge search logs only")
    if len(words) != 1:
        raise UsageError("runs and releases are found by one query (a commit prefix, branch, tag, alias, author)")
    search_type = None if kind == "all" else kind
    return call(args, "GET", "/v1/search", params={"q": words[0], "type": search_type, **page})


_HOOKS = "/v1/webhook-subscriptions"


def _webhook_commands(sub: Any, leaf: Any) -> None:
    hooks = sub.add_parser("webhooks", help="outgoing webhook subscriptions and their deliveries").add_subparsers(
        dest="webhooks_command", required=True
    )
    _webhook_create(hooks, leaf)
    p = leaf(hooks, "list", help="subscriptions, newest first")
    p.add_argument("--repository", help="only those filtered on this repository")
    p.add_argument("--limit", type=int, help="page size (default 20, at most 100)")
    p.add_argument("--cursor", help="the next_cursor of the previous page")
    p.set_defaults(
        func=lambda a: call(a, "GET", _HOOKS, params={"repository": a.repository, "limit": a.limit, "cursor": a.cursor})
    )
    p = leaf(hooks, "get", help="one subscription (never its secret)")
    p.add_argument("subscription_id")
    p.set_defaults(func=lambda a: call(a, "GET", f"{_HOOKS}/{_seg(a.subscription_id)}"))
    _webhook_update(hooks, leaf)
    p = leaf(hooks, "delete", help="delete a subscription and its deliveries")
    p.add_argument("subscription_id")
    p.set_defaults(
        func=lambda a: call(
            a,
            "DELETE",
            f"{_HOOKS}/{_seg(a.subscription_id)}",
            done=Done(f"deleted webhook subscription {a.subscription_id}", {"id": a.subscription_id, "deleted": True}),
        )
    )
    p = leaf(hooks, "deliveries", help="a subscription's deliveries, newest first: status, attempts, last answer")
    p.add_argument("subscription_id")
    p.add_argument("--limit", type=int, help="page size (default 20, at most 100)")
    p.add_argument("--cursor", help="the next_cursor of the previous page")
    p.set_defaults(
        func=lambda a: call(
            a,
            "GET",
            f"{_HOOKS}/{_seg(a.subscription_id)}/deliveries",
            params={"limit": a.limit, "cursor": a.cursor},
        )
    )
    p = leaf(hooks, "redeliver", help="send a delivery again now (same webhook-id, fresh signature)")
    p.add_argument("subscription_id")
    p.add_argument("delivery_id")
    p.set_defaults(
        func=lambda a: call(a, "POST", f"{_HOOKS}/{_seg(a.subscription_id)}/deliveries/{_seg(a.delivery_id)}/redeliver")
    )


def _webhook_create(hooks: Any, leaf: Any) -> None:
    p = leaf(hooks, "create", help="send events to a URL; prints the signing secret (shown this once)")
    p.add_argument("--url", required=True, help="the http(s) URL to POST each event to")
    p.add_argument(
        "--event-type",
        dest="event_types",
        action="append",
        required=True,
        help="an event type or glob (pipeline.run.*, *); repeat for more",
    )
    p.add_argument("--repository", help="only this repository's events (required for developers)")
    p.add_argument("--environment", choices=ENVIRONMENTS, help="only events of this environment")
    p.add_argument("--inactive", action="store_true", help="create it switched off")
    p.set_defaults(
        func=lambda a: call(
            a,
            "POST",
            _HOOKS,
            {
                "url": a.url,
                "event_types": a.event_types,
                "repository": a.repository,
                "environment": a.environment,
                "active": not a.inactive,
            },
        )
    )


def _webhook_update(hooks: Any, leaf: Any) -> None:
    p = leaf(hooks, "update", help="change a subscription; --enable also re-enables a disabled one")
    p.add_argument("subscription_id")
    p.add_argument("--url")
    p.add_argument("--event-type", dest="event_types", action="append", help="replaces the event types; repeat")
    p.add_argument("--repository", help="filter on this repository; '' removes the filter (admins)")
    p.add_argument("--environment", choices=[*ENVIRONMENTS, ""], help="filter on this environment; '' removes it")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="active", action="store_const", const=True)
    state.add_argument("--disable", dest="active", action="store_const", const=False)
    p.set_defaults(func=_update_webhook)


def _update_webhook(args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {}
    if args.url is not None:
        body["url"] = args.url
    if args.event_types:
        body["event_types"] = args.event_types
    for name in ("repository", "environment"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value or None  # '' clears the filter
    if args.active is not None:
        body["active"] = args.active
    if not body:
        raise UsageError(
            "nothing to change: give --url, --event-type, --repository, --environment, --enable or --disable"
        )
    return call(args, "PATCH", f"{_HOOKS}/{_seg(args.subscription_id)}", body)


def _batch(args: argparse.Namespace, path: str, body: dict[str, Any]) -> int:
    """A batch operation: print the per-item results; exit status 1 when any item was refused."""
    answer = call(args, "POST", path, body)
    render(answer, args.output)
    return EXIT_FAILED if isinstance(answer, dict) and answer.get("failed") else EXIT_OK


def _cancel_runs(args: argparse.Namespace) -> Any:
    filtered = args.repository is not None
    if (args.branch or args.status) and not filtered:
        raise UsageError("--branch and --status filter a repository's runs: give --repository too")
    if filtered == bool(args.run_ids):
        raise UsageError("give RUN_ID(s) or --repository, not both and not neither")
    if len(args.run_ids) == 1 and not args.dry_run:
        run_id = args.run_ids[0]
        done = Done(f"cancelled run {run_id}", {"id": run_id, "status": "cancelled"})
        return call(args, "DELETE", f"/v1/runs/{_seg(run_id)}", done=done)
    body: dict[str, Any] = {"dry_run": args.dry_run}
    if filtered:
        body |= {"repository": args.repository, "branch": args.branch, "status": args.status}
        body = {key: value for key, value in body.items() if value is not None}
    else:
        body["ids"] = args.run_ids
    return _batch(args, "/v1/runs/cancel", body)


def _promote(args: argparse.Namespace) -> int:
    approvals: dict[str, str] = {}
    for pair in args.approval:
        release_id, sep, approval_id = pair.partition("=")
        if not sep or not release_id or not approval_id:
            raise UsageError(f"--approval takes RELEASE_ID=APPROVAL_ID, not {pair!r}")
        approvals[release_id] = approval_id
    body: dict[str, Any] = {
        "repository": args.repository,
        "from_environment": args.source,
        "to_environment": args.target,
        "approvals": approvals,
    }
    if args.projects:
        body["projects"] = args.projects
    return _batch(args, "/v1/deployments/promote", body)
