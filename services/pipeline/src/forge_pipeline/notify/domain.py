"""The rules of outgoing webhooks, without I/O.

A subscription says: send every event whose type matches one of ``event_types`` (globs over
:data:`forge_common.events.EVENT_TYPES`), and whose ``data.repository`` / ``data.environment``
match the optional filters, to ``url``, signed with ``secret`` (Standard Webhooks). An event
becomes one delivery per matching subscription; a delivery is attempted until it succeeds, its
retry window closes, or its subscription is disabled for failing too long.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import ipaddress
import random
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, urlsplit

import msgspec

from forge_common.auth import Principal, require_repository
from forge_common.errors import AuthorizationFailed, InvalidRequest
from forge_common.events import EVENT_TYPES

__all__ = [
    "ENVIRONMENTS",
    "MAX_EVENT_TYPES",
    "DeliveryStatus",
    "EventProbe",
    "RetryPolicy",
    "Subscription",
    "Target",
    "can_manage",
    "matches",
    "new_secret",
    "parse_environment",
    "parse_event_types",
    "parse_repository",
    "parse_target",
    "parse_uuid",
    "refused_address",
    "require_manage",
    "require_scope",
]

ENVIRONMENTS = ("dev", "staging", "production")
MAX_EVENT_TYPES = 20
MAX_URL_LENGTH = 2048
_PATTERN = re.compile(r"^[a-z*?.]{1,100}$")
_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")

DeliveryStatus = Literal["pending", "succeeded", "failed"]


@dataclass(frozen=True)
class Subscription:
    id: str
    url: str
    event_types: list[str]
    repository: str | None
    environment: str | None
    secret: str
    active: bool
    disabled_reason: str | None
    failing_since: dt.datetime | None
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime


class EventProbe(msgspec.Struct):
    """The part of an event envelope the fan-out reads; the body is sent as it came."""

    event_id: str
    event_type: str
    timestamp: str = ""
    data: dict[str, object] = {}


def _invalid(field: str, message: str, value: object = None) -> InvalidRequest:
    details: dict[str, object] = {"field": field}
    if value is not None:
        details["value"] = str(value)[:200]
    return InvalidRequest(message, details)


def parse_uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise _invalid("id", f"{what} id must be a UUID", value) from None


def parse_repository(value: str | None) -> str | None:
    if value is None:
        return None
    owner, sep, name = value.partition("/")
    if not sep or not _OWNER.fullmatch(owner) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise _invalid("repository", "repository must be 'owner/name' (GitHub owner and repository name)", value)
    return value


def parse_environment(value: str | None) -> str | None:
    if value is not None and value not in ENVIRONMENTS:
        raise _invalid("environment", f"environment must be one of {', '.join(ENVIRONMENTS)}", value)
    return value


def parse_event_types(patterns: list[str]) -> list[str]:
    """Globs over the platform's event types (``pipeline.run.*``, ``*``); each must match one."""
    if not patterns:
        raise _invalid("event_types", "event_types must name at least one event type or glob ('*': all)")
    if len(patterns) > MAX_EVENT_TYPES:
        raise _invalid("event_types", f"at most {MAX_EVENT_TYPES} event types or globs")
    chosen: list[str] = []
    for pattern in patterns:
        if not _PATTERN.fullmatch(pattern) or not any(fnmatch.fnmatchcase(t, pattern) for t in EVENT_TYPES):
            raise _invalid(
                "event_types",
                f"{pattern[:100]!r} matches no event type; known: {', '.join(sorted(EVENT_TYPES))}",
                pattern,
            )
        if pattern not in chosen:
            chosen.append(pattern)
    return chosen


@dataclass(frozen=True)
class Target:
    """A validated target URL: what the sender connects to (``host`` still to be resolved)."""

    url: str
    host: str
    port: int
    literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None


def parse_target(url: str) -> Target:
    """An http(s) URL with a host; a literal address is checked here, a name when resolved."""
    if len(url) > MAX_URL_LENGTH:
        raise _invalid("url", f"url must be at most {MAX_URL_LENGTH} characters")
    parts: SplitResult
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _invalid("url", f"url is not a valid URL: {exc}", url) from None
    if parts.scheme not in ("http", "https"):
        raise _invalid("url", "url must be an http:// or https:// URL", url)
    host = parts.hostname or ""
    if not host or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise _invalid("url", "url must name a host and contain no spaces or control characters", url)
    try:
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    return Target(url=url, host=host, port=port or (443 if parts.scheme == "https" else 80), literal=literal)


def refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The kind of range (``loopback``, ``private``, ...) that makes ``address`` no place to send
    a webhook to (server-side request forgery), or None.

    IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``) are judged as the IPv4 address they are."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    checks = (
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_unspecified, "unspecified"),
        (address.is_reserved, "reserved"),
        (isinstance(address, ipaddress.IPv6Address) and address in _UNIQUE_LOCAL, "unique-local"),
        (address.is_private or not address.is_global, "private"),
    )
    for hit, name in checks:
        if hit:
            return name
    return None


_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")


def judge_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> str | None:
    """:func:`refused_address`, except that ``allow_private`` lets loopback and private ranges
    through. Link-local addresses stay refused whatever the setting: they hold the cloud
    providers' instance metadata services (169.254.169.254), never a webhook receiver."""
    kind = refused_address(address)
    if allow_private and kind != "link-local":
        return None
    return kind


def matches(subscription: Subscription, event: EventProbe, event_at: dt.datetime | None) -> bool:
    """Does ``event`` go to ``subscription``? Events from before the subscription existed do not
    (a consumer catching up after an outage must not send a new subscription old news)."""
    if not subscription.active:
        return False
    if event_at is not None and event_at < subscription.created_at:
        return False
    if not any(fnmatch.fnmatchcase(event.event_type, p) for p in subscription.event_types):
        return False
    if subscription.repository is not None:
        repository = event.data.get("repository")
        if not isinstance(repository, str) or repository.lower() != subscription.repository.lower():
            return False
    if subscription.environment is not None:
        return event.data.get("environment") == subscription.environment
    return True


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: the n-th retry waits between half of and the whole of
    ``min(first * 2**(n-1), longest)`` (so with ``first`` 5 s: 2.5-5 s, 5-10 s, 10-20 s, ...,
    then 30-60 min each), until ``retry_for`` after the delivery was created. While the wait
    doubles, the windows of consecutive retries do not overlap, so the waits grow; once capped
    they vary between half of and the whole cap (jitter spreads a failed target's retries)."""

    first: float
    longest: float
    retry_for: float
    disable_after: float

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds from failed attempt number ``attempt`` (1-based) to the next one."""
        ceiling = min(self.first * 2.0 ** min(attempt - 1, 60), self.longest)
        return ceiling / 2 + (rng or _RNG).uniform(0, ceiling / 2)

    def disable_reason(self, failing_since: dt.datetime, now: dt.datetime, last_error: str) -> str | None:
        """Why a subscription failing since ``failing_since`` is disabled now, or None."""
        if (now - failing_since).total_seconds() < self.disable_after:
            return None
        return (
            f"every delivery failed since {failing_since.isoformat().replace('+00:00', 'Z')} "
            f"(more than {_human(self.disable_after)}); last error: {last_error}"
        )[:1000]


_RNG = random.SystemRandom()


def _human(seconds: float) -> str:
    for unit, size in (("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} seconds"


def can_manage(principal: Principal, repository: str | None) -> bool:
    """Admins manage every subscription; developers (and repository-bound tokens with the
    permission) only those scoped to a repository."""
    if "admin" in principal.roles and not principal.service_account and principal.repository is None:
        return True
    return repository is not None and (
        principal.repository is None or principal.repository.lower() == repository.lower()
    )


def require_manage(principal: Principal, repository: str | None) -> None:
    if repository is not None:
        require_repository(principal, repository)
    if not can_manage(principal, repository):
        raise AuthorizationFailed(
            "only an admin may manage a webhook subscription without a repository filter; "
            "give `repository` to subscribe to one repository's events",
            {"field": "repository", "roles": sorted(principal.roles)},
        )


def require_scope(principal: Principal, subscriptions: Iterable[Subscription]) -> None:
    for subscription in subscriptions:
        require_manage(principal, subscription.repository)
