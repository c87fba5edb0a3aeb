"""The rules of outgoing webhooks without I/O: address ranges, globs, filters, the schedule."""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import random

import pytest

from forge_common.errors import InvalidRequest
from forge_pipeline.notify.domain import (
    EventProbe,
    RetryPolicy,
    Subscription,
    matches,
    parse_event_types,
    parse_target,
    refused_address,
)
from forge_pipeline.notify.sender import sign_headers

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),  # carrier-grade NAT: not global
        ("fd12:3456::1", "unique-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - the address under test
        ("::", "unspecified"),
        ("::ffff:10.0.0.1", "private"),  # IPv4-mapped: judged as the IPv4 address
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_ranges(address: str, kind: str | None) -> None:
    assert refused_address(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://hooks.example.com/x?y=1", True),
        ("http://example.com:8080", True),
        ("ftp://example.com/", False),
        ("https:///nohost", False),
        ("https://exa mple.com/", False),
        ("https://example.com/\x00", False),
        ("https://example.com:99999/", False),
        ("https://[::1/", False),
        ("file:///etc/passwd", False),
    ],
)
def test_target_urls(url: str, ok: bool) -> None:
    if ok:
        assert parse_target(url).url == url
    else:
        with pytest.raises(InvalidRequest) as caught:
            parse_target(url)
        assert caught.value.details["field"] == "url"


def test_event_type_globs_must_match_a_known_type() -> None:
    assert parse_event_types(["pipeline.run.*", "*", "pipeline.run.*"]) == ["pipeline.run.*", "*"]
    for bad in ([], ["pipeline.build.*"], ["Pipeline.run.created"], ["pipeline.run.created\n"], ["*"] * 21):
        with pytest.raises(InvalidRequest):
            parse_event_types(bad)


def _subscription(**changes: object) -> Subscription:
    base: dict[str, object] = {
        "id": "s",
        "url": "https://x",
        "event_types": ["release.*"],
        "repository": "Acme/Shop",
        "environment": None,
        "secret": "whsec_AAAA",
        "active": True,
        "disabled_reason": None,
        "failing_since": None,
        "created_by": "me",
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Subscription(**(base | changes))  # type: ignore[arg-type]


def test_filters() -> None:
    event = EventProbe(event_id="e", event_type="release.created", data={"repository": "acme/shop"})
    later = NOW + dt.timedelta(seconds=1)
    assert matches(_subscription(), event, later)
    assert not matches(_subscription(), event, NOW - dt.timedelta(seconds=1))  # before the subscription
    assert not matches(_subscription(active=False), event, later)
    assert not matches(_subscription(repository="acme/other"), event, later)
    assert not matches(_subscription(event_types=["pipeline.*"]), event, later)
    assert not matches(_subscription(environment="dev"), event, later)
    deployed = EventProbe(event_id="d", event_type="deployment.created", data={"environment": "dev"})
    assert matches(_subscription(repository=None, event_types=["*"], environment="dev"), deployed, later)
    # An event without a repository never matches a repository filter.
    assert not matches(_subscription(event_types=["*"]), deployed, later)


def test_the_waits_grow_until_capped_and_stay_within_their_window() -> None:
    policy = RetryPolicy(first=5, longest=3600, retry_for=86400, disable_after=3 * 86400)
    rng = random.Random(7)
    for _ in range(200):
        waits = [policy.delay(n, rng) for n in range(1, 30)]
        doubling = waits[:10]  # 5 s * 2**9 = 2560 s, the last wait below the 3600 s cap
        assert all(b >= a for a, b in itertools.pairwise(doubling))
        assert 2.5 <= waits[0] <= 5
        assert all(1800 <= w <= 3600 for w in waits[10:])
    # With these defaults the retries of one delivery span the whole day.
    assert sum(policy.delay(n, random.Random(0)) for n in range(1, 40)) > 86400


def test_disable_after_the_failing_period() -> None:
    policy = RetryPolicy(first=5, longest=3600, retry_for=86400, disable_after=3 * 86400)
    assert policy.disable_reason(NOW, NOW + dt.timedelta(days=2, hours=23), "HTTP 500") is None
    reason = policy.disable_reason(NOW, NOW + dt.timedelta(days=3), "HTTP 500")
    assert reason is not None
    assert "since 2026-12-01T12:00:00Z" in reason
    assert "3 days" in reason
    assert "HTTP 500" in reason


def test_signature_headers_follow_the_standard() -> None:
    from standardwebhooks.webhooks import Webhook

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"event_id":"e1","event_type":"release.created","timestamp":"x","data":{}}'
    headers = sign_headers(secret, "e1", body, now=NOW.timestamp())
    assert headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    fresh = sign_headers(secret, "e1", body)
    Webhook(secret).verify(body, fresh)


async def test_the_send_time_resolver_refuses_internal_addresses() -> None:
    """What aiohttp connects to is what this resolver returned, so a name re-pointed at an
    internal address after the subscription was checked (DNS rebinding) is refused here."""
    from forge_pipeline.notify.targets import GuardedResolver, RefusedTarget, check_literal

    strict, relaxed = GuardedResolver(allow_private=False), GuardedResolver(allow_private=True)
    try:
        with pytest.raises(RefusedTarget, match=r"localhost resolves to 127\.0\.0\.1, a loopback address"):
            await strict.resolve("localhost", 80)
        assert [r["host"] for r in await relaxed.resolve("localhost", 80)] == ["127.0.0.1"]
    finally:
        await strict.close()
        await relaxed.close()
    with pytest.raises(RefusedTarget, match=r"169\.254\.169\.254 is a link-local address"):
        check_literal(parse_target("http://169.254.169.254/latest"), allow_private=False)
    # Link-local (cloud instance metadata) stays refused even where private targets are allowed.
    with pytest.raises(RefusedTarget, match=r"169\.254\.169\.254 is a link-local address"):
        check_literal(parse_target("http://169.254.169.254/latest"), allow_private=True)
    check_literal(parse_target("http://10.0.0.7/hook"), allow_private=True)
    with pytest.raises(RefusedTarget, match=r"^0\.0\.0\.0 is an unspecified address"):
        check_literal(parse_target("http://0.0.0.0:8080/"), allow_private=False)
