"""GitHub webhooks: ``POST /v1/webhooks/github``.

The HMAC-SHA256 signature (``X-Hub-Signature-256``, secret ``FORGE_GITHUB_WEBHOOK_SECRET``) is
checked before anything is parsed or stored; a bad one is a 401 and leaves no trace. Each
``X-GitHub-Delivery`` is processed once: the delivery row is written in the same transaction as
the run it creates, so a redelivery of a processed delivery changes nothing, and a delivery
whose processing failed (rolled back) is processed again when GitHub redelivers it.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgspec
import structlog

from forge_common.errors import AuthenticationFailed, Conflict, InvalidRequest
from forge_common.runtime import Runtime

from . import domain, service, store
from .settings import settings_of
from .store import Conn

__all__ = ["handle", "sign", "verify_signature"]

log = structlog.get_logger(__name__)
_PR_ACTIONS = frozenset({"opened", "synchronize", "reopened"})
_ZERO_SHA = "0" * 40


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> None:
    if not secret:
        raise AuthenticationFailed("GitHub webhooks are not configured (no FORGE_GITHUB_WEBHOOK_SECRET)")
    if not header:
        raise AuthenticationFailed("missing X-Hub-Signature-256 header")
    if not hmac.compare_digest(sign(secret, body).encode(), header.strip().encode()):
        raise AuthenticationFailed("X-Hub-Signature-256 does not match the payload")


def _get(payload: dict[str, Any], *path: str) -> Any:
    value: Any = payload
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _required_str(payload: dict[str, Any], *path: str) -> str:
    value = _get(payload, *path)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"webhook payload lacks {'.'.join(path)}", {"field": ".".join(path)})
    return value


def _actor(payload: dict[str, Any]) -> str:
    for path in (("sender", "login"), ("pusher", "name")):
        value = _get(payload, *path)
        if isinstance(value, str) and value:
            return value[:255]
    return "github"


async def handle(runtime: Runtime, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
    settings = settings_of(runtime)
    lower = {k.lower(): v for k, v in headers.items()}
    verify_signature(settings.github_webhook_secret, body, lower.get("x-hub-signature-256"))
    event = lower.get("x-github-event", "").strip()
    delivery_id = lower.get("x-github-delivery", "").strip()
    if not event:
        raise InvalidRequest("missing X-GitHub-Event header", {"header": "X-GitHub-Event"})
    if not delivery_id or len(delivery_id) > 200:
        raise InvalidRequest("missing or invalid X-GitHub-Delivery header", {"header": "X-GitHub-Delivery"})
    try:
        payload = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise InvalidRequest("webhook payload is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("webhook payload must be a JSON object")

    async with runtime.pool.connection() as conn, conn.transaction():
        if not await store.record_delivery(conn, delivery_id, event, "processing"):
            previous = await store.delivery(conn, delivery_id)
            log.info("github.webhook_redelivery", delivery_id=delivery_id, webhook_event=event)
            return 200, {
                "status": "duplicate",
                "delivery_id": delivery_id,
                "run_id": previous["run_id"] if previous else None,
            }
        status, result = await _process(conn, event, payload, settings.max_active_runs_per_repository)
        await store.set_delivery_outcome(conn, delivery_id, result["status"], result.get("run_id"))
    log.info("github.webhook", delivery_id=delivery_id, webhook_event=event, outcome=result["status"])
    return status, {"delivery_id": delivery_id, **result}


async def _process(conn: Conn, event: str, payload: dict[str, Any], max_active: int) -> tuple[int, dict[str, Any]]:
    if event == "ping":
        return 200, {"status": "pong", "zen": _get(payload, "zen")}
    if event == "push":
        return await _push(conn, payload, max_active)
    if event == "pull_request":
        return await _pull_request(conn, payload, max_active)
    return 202, {"status": "ignored", "reason": f"event {event!r} is not handled"}


async def _create(conn: Conn, max_active: int, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    try:
        run, _ = await service.create_run(conn, max_active=max_active, **kwargs)
    except Conflict as exc:
        existing = exc.details.get("existing_id")
        if existing is None:
            raise
        return 200, {"status": "exists", "run_id": existing}
    return 201, {"status": "created", "run_id": run["id"]}


async def _push(conn: Conn, payload: dict[str, Any], max_active: int) -> tuple[int, dict[str, Any]]:
    ref = _required_str(payload, "ref")
    if payload.get("deleted") is True or payload.get("after") == _ZERO_SHA:
        return 202, {"status": "ignored", "reason": f"{ref} was deleted"}
    repository = domain.validate_repository(_required_str(payload, "repository", "full_name"), "repository.full_name")
    commit_sha = domain.normalize_commit_sha(_required_str(payload, "after"), "after")
    actor = _actor(payload)
    if ref.startswith("refs/heads/"):
        branch = domain.validate_branch(ref.removeprefix("refs/heads/"), "ref")
        return await _create(
            conn,
            max_active,
            repository=repository,
            branch=branch,
            commit_sha=commit_sha,
            trigger_type="push",
            triggered_by=actor,
        )
    if ref.startswith("refs/tags/"):
        return await _tag_push(
            conn,
            payload,
            repository,
            domain.validate_tag(ref.removeprefix("refs/tags/"), "ref"),
            commit_sha,
            actor,
            max_active,
        )
    return 202, {"status": "ignored", "reason": f"ref {ref!r} is neither a branch nor a tag"}


async def _tag_push(
    conn: Conn, payload: dict[str, Any], repository: str, tag: str, commit_sha: str, actor: str, max_active: int
) -> tuple[int, dict[str, Any]]:
    """A tag push is recorded (release triggers ``{ tag = true }``). When the commit already has
    a run, the tag is attached to it (a successful run gets its release triggers evaluated
    again, for the tag); otherwise a run is started for the tagged commit."""
    existing = await store.run_by_commit(conn, repository, commit_sha)
    if existing is not None:
        await store.set_run_tag(conn, existing["id"], tag)
        await store.record_tag_push(conn, repository, tag, commit_sha, actor, existing["id"])
        return 200, {"status": "tag_recorded", "run_id": existing["id"], "tag": tag}
    base_ref = _get(payload, "base_ref")
    branch = (
        base_ref.removeprefix("refs/heads/")
        if isinstance(base_ref, str) and base_ref.startswith("refs/heads/")
        else tag
    )
    status, result = await _create(
        conn,
        max_active,
        repository=repository,
        branch=branch,
        commit_sha=commit_sha,
        trigger_type="push",
        triggered_by=actor,
        tag=tag,
    )
    await store.record_tag_push(conn, repository, tag, commit_sha, actor, result.get("run_id"))
    return status, {**result, "tag": tag}


async def _pull_request(conn: Conn, payload: dict[str, Any], max_active: int) -> tuple[int, dict[str, Any]]:
    action = payload.get("action")
    if action not in _PR_ACTIONS:
        return 202, {"status": "ignored", "reason": f"pull_request action {action!r} is not handled"}
    repository = domain.validate_repository(_required_str(payload, "repository", "full_name"), "repository.full_name")
    number = payload.get("number")
    return await _create(
        conn,
        max_active,
        repository=repository,
        branch=domain.validate_branch(_required_str(payload, "pull_request", "head", "ref"), "pull_request.head.ref"),
        commit_sha=domain.normalize_commit_sha(
            _required_str(payload, "pull_request", "head", "sha"), "pull_request.head.sha"
        ),
        trigger_type="pull_request",
        triggered_by=_actor(payload),
        pull_request_number=number if isinstance(number, int) else None,
    )
