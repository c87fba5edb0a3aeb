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

import msgspec
import structlog

from forge_common.errors import AuthenticationFailed, Conflict, InvalidRequest
from forge_common.repositories import RepositoryAllowList

from . import domain, service, store
from .schemas import WebhookResult
from .service import CreateRun
from .store import Conn, UnitOfWork

__all__ = ["HANDLER_KEY", "GitHubEvent", "WebhookHandler", "sign", "verify_signature"]

HANDLER_KEY = "pipeline.webhooks"

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


class _Named(msgspec.Struct):
    login: str | None = None
    name: str | None = None
    id: int | None = None


class _Repository(msgspec.Struct):
    full_name: str | None = None


class _Head(msgspec.Struct):
    ref: str | None = None
    sha: str | None = None


class _PullRequest(msgspec.Struct):
    head: _Head | None = None


class GitHubEvent(msgspec.Struct):
    """The fields Forge reads from GitHub's ``ping``, ``push`` and ``pull_request`` payloads
    (GitHub sends many more; unknown fields are ignored)."""

    zen: str | None = None
    ref: str | None = None
    after: str | None = None
    deleted: bool | None = None
    base_ref: str | None = None
    action: str | None = None
    number: int | None = None
    repository: _Repository | None = None
    pull_request: _PullRequest | None = None
    sender: _Named | None = None
    pusher: _Named | None = None


def _required(value: str | None, path: str) -> str:
    if not value:
        raise InvalidRequest(f"webhook payload lacks {path}", {"field": path})
    return value


def _actor(payload: GitHubEvent) -> str:
    for value in (payload.sender and payload.sender.login, payload.pusher and payload.pusher.name):
        if value:
            return value[:255]
    return "github"


def _actor_id(payload: GitHubEvent) -> str | None:
    """The sender's stable identity, "github:<numeric user id>" (logins can be renamed and reused)."""
    sender_id = payload.sender.id if payload.sender else None
    if isinstance(sender_id, int) and not isinstance(sender_id, bool) and sender_id > 0:
        return f"github:{sender_id}"
    return None


def _decode(event: str, body: bytes) -> GitHubEvent:
    try:
        if event in ("ping", "push", "pull_request"):
            return msgspec.json.decode(body, type=GitHubEvent)
        # Events Forge ignores are only checked for being a JSON object.
        msgspec.json.decode(body, type=dict[str, msgspec.Raw])
        return GitHubEvent()
    except msgspec.ValidationError as exc:
        if body.lstrip()[:1] != b"{":
            raise InvalidRequest("webhook payload must be a JSON object") from None
        raise InvalidRequest(f"webhook payload is not a valid {event} event: {exc}") from None
    except msgspec.DecodeError:
        raise InvalidRequest("webhook payload is not valid JSON") from None
    except RecursionError:
        raise InvalidRequest("webhook payload nests arrays or objects too deeply") from None


class WebhookHandler:
    """Built in ``app.create_app`` with the secret and the run limit; one unit of work per delivery."""

    def __init__(
        self, uow: UnitOfWork, secret: str, max_active_runs: int, repositories: RepositoryAllowList | None = None
    ) -> None:
        self.uow = uow
        self.secret = secret
        self.max_active = max_active_runs
        self.repositories = repositories or RepositoryAllowList()

    async def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, WebhookResult]:
        lower = {k.lower(): v for k, v in headers.items()}
        verify_signature(self.secret, body, lower.get("x-hub-signature-256"))
        event = lower.get("x-github-event", "").strip()
        delivery_id = lower.get("x-github-delivery", "").strip()
        if not event:
            raise InvalidRequest("missing X-GitHub-Event header", {"header": "X-GitHub-Event"})
        if not delivery_id or len(delivery_id) > 200:
            raise InvalidRequest("missing or invalid X-GitHub-Delivery header", {"header": "X-GitHub-Delivery"})
        payload = _decode(event, body)
        if event in ("push", "pull_request") and payload.repository and payload.repository.full_name:
            # Refused before the delivery is recorded: nothing changes.
            self.repositories.check(payload.repository.full_name)
        async with self.uow.begin() as conn:
            if not await store.record_delivery(conn, delivery_id, event, "processing"):
                previous = await store.delivery(conn, delivery_id)
                log.info("github.webhook_redelivery", delivery_id=delivery_id, webhook_event=event)
                run_id = previous.run_id if previous else None
                return 200, WebhookResult(status="duplicate", delivery_id=delivery_id, run_id=run_id)
            status, result = await _process(conn, event, payload, self.max_active)
            run_id = result.run_id if isinstance(result.run_id, str) else None
            await store.set_delivery_outcome(conn, delivery_id, result.status, run_id)
        log.info("github.webhook", delivery_id=delivery_id, webhook_event=event, outcome=result.status)
        result.delivery_id = delivery_id
        return status, result


async def _process(conn: Conn, event: str, payload: GitHubEvent, max_active: int) -> tuple[int, WebhookResult]:
    if event == "ping":
        return 200, WebhookResult(delivery_id="", status="pong", zen=payload.zen)
    if event == "push":
        return await _push(conn, payload, max_active)
    if event == "pull_request":
        return await _pull_request(conn, payload, max_active)
    return 202, WebhookResult(delivery_id="", status="ignored", reason=f"event {event!r} is not handled")


async def _create(conn: Conn, max_active: int, cmd: CreateRun) -> tuple[int, WebhookResult]:
    try:
        run, _ = await service.create_run(conn, cmd, max_active)
    except Conflict as exc:
        existing = exc.details.get("existing_id")
        if existing is None:
            raise
        return 200, WebhookResult(delivery_id="", status="exists", run_id=str(existing))
    return 201, WebhookResult(delivery_id="", status="created", run_id=run.id)


async def _push(conn: Conn, payload: GitHubEvent, max_active: int) -> tuple[int, WebhookResult]:
    ref = _required(payload.ref, "ref")
    if payload.deleted is True or payload.after == _ZERO_SHA:
        return 202, WebhookResult(delivery_id="", status="ignored", reason=f"{ref} was deleted")
    repository = payload.repository.full_name if payload.repository else None
    repository = domain.validate_repository(_required(repository, "repository.full_name"), "repository.full_name")
    commit_sha = domain.normalize_commit_sha(_required(payload.after, "after"), "after")
    actor = _actor(payload)
    if ref.startswith("refs/heads/"):
        branch = domain.validate_branch(ref.removeprefix("refs/heads/"), "ref")
        cmd = CreateRun(
            repository=repository,
            branch=branch,
            commit_sha=commit_sha,
            trigger_type="push",
            triggered_by=actor,
            triggered_by_id=_actor_id(payload),
        )
        return await _create(conn, max_active, cmd)
    if ref.startswith("refs/tags/"):
        tag = domain.validate_tag(ref.removeprefix("refs/tags/"), "ref")
        return await _tag_push(conn, payload, repository, tag, commit_sha, actor, max_active)
    return 202, WebhookResult(delivery_id="", status="ignored", reason=f"ref {ref!r} is neither a branch nor a tag")


async def _tag_push(
    conn: Conn, payload: GitHubEvent, repository: str, tag: str, commit_sha: str, actor: str, max_active: int
) -> tuple[int, WebhookResult]:
    """A tag push is recorded (release triggers ``{ tag = true }``). When the commit already has
    a run, the tag is attached to it: a successful run gets its release triggers evaluated
    again, for the tag, and its built ``github-release`` artifacts planned for the tag's GitHub
    Release (a running run is planned when it succeeds; see ``dispatch/publications.py``);
    otherwise a run is started for the tagged commit."""
    existing = await store.run_by_commit(conn, repository, commit_sha)
    if existing is not None:
        await store.set_run_tag(conn, existing.id, tag)
        await store.record_tag_push(conn, repository, tag, commit_sha, actor, existing.id)
        await store.plan_tag_publications(conn, existing.id, retry_tag=tag)
        return 200, WebhookResult(delivery_id="", status="tag_recorded", run_id=existing.id, tag=tag)
    base_ref = payload.base_ref
    branch = base_ref.removeprefix("refs/heads/") if base_ref and base_ref.startswith("refs/heads/") else tag
    cmd = CreateRun(
        repository=repository,
        branch=branch,
        commit_sha=commit_sha,
        trigger_type="push",
        triggered_by=actor,
        triggered_by_id=_actor_id(payload),
        tag=tag,
    )
    status, result = await _create(conn, max_active, cmd)
    run_id = result.run_id if isinstance(result.run_id, str) else None
    await store.record_tag_push(conn, repository, tag, commit_sha, actor, run_id)
    result.tag = tag
    return status, result


async def _pull_request(conn: Conn, payload: GitHubEvent, max_active: int) -> tuple[int, WebhookResult]:
    if payload.action not in _PR_ACTIONS:
        return 202, WebhookResult(
            delivery_id="", status="ignored", reason=f"pull_request action {payload.action!r} is not handled"
        )
    repository = payload.repository.full_name if payload.repository else None
    head = (payload.pull_request.head if payload.pull_request else None) or _Head()
    cmd = CreateRun(
        repository=domain.validate_repository(_required(repository, "repository.full_name"), "repository.full_name"),
        branch=domain.validate_branch(_required(head.ref, "pull_request.head.ref"), "pull_request.head.ref"),
        commit_sha=domain.normalize_commit_sha(_required(head.sha, "pull_request.head.sha"), "pull_request.head.sha"),
        trigger_type="pull_request",
        triggered_by=_actor(payload),
        triggered_by_id=_actor_id(payload),
        pull_request_number=payload.number,
    )
    return await _create(conn, max_active, cmd)
