"""The sliding window is exact: any span of ``window`` seconds admits at most ``limit`` requests."""

from __future__ import annotations

from forge_gateway.ratelimit import SlidingWindowLimiter


def test_admits_limit_then_refuses_until_the_oldest_request_leaves() -> None:
    limiter = SlidingWindowLimiter(limit=3, window=60.0)
    assert [limiter.hit("u", now=t).remaining for t in (0.0, 10.0, 20.0)] == [2, 1, 0]
    refused = limiter.hit("u", now=30.0)
    assert not refused.allowed
    assert refused.retry_after == 30  # the request at t=0 leaves the window at t=60
    assert not limiter.hit("u", now=59.9).allowed
    again = limiter.hit("u", now=60.0)
    assert again.allowed
    assert again.remaining == 0
    assert again.reset_after == 10.0  # next slot: the request at t=10 leaves at t=70


def test_no_burst_across_a_minute_boundary() -> None:
    # A fixed per-minute counter would admit 2 x limit around the boundary; the window does not.
    limiter = SlidingWindowLimiter(limit=1000, window=60.0)
    admitted = sum(limiter.hit("u", now=59.0 + i / 1000).allowed for i in range(2000))
    assert admitted == 1000


def test_refusals_do_not_count_and_users_are_separate() -> None:
    limiter = SlidingWindowLimiter(limit=2, window=1.0)
    limiter.hit("a", now=0.0)
    limiter.hit("a", now=0.1)
    for t in (0.2, 0.3, 0.4):
        assert not limiter.hit("a", now=t).allowed
    assert limiter.hit("b", now=0.5).remaining == 1
    assert limiter.hit("a", now=1.05).allowed  # only the two admitted requests were counted


def test_idle_users_are_forgotten() -> None:
    limiter = SlidingWindowLimiter(limit=5, window=1.0)
    for i in range(100):
        limiter.hit(f"user-{i}", now=0.0)
    limiter.hit("late", now=5.0)
    assert set(limiter._hits) == {"late"}
