"""Settings of the dispatcher, read once by ``create_app`` and handed down."""

from __future__ import annotations

import msgspec

__all__ = ["DispatcherSettings"]


class DispatcherSettings(msgspec.Struct, kw_only=True):
    """``FORGE_DISPATCHER_*``; whether it runs at all is the service's ``FORGE_DISPATCHER_ENABLED``."""

    dispatcher_lease_ttl: float = 15.0
    dispatcher_poll_interval: float = 1.0
    dispatcher_max_runs: int = 500
    # How often a waiting driver re-reads its tasks' status (replies are the fast path).
    dispatcher_check_interval: float = 5.0
    # How often the watchdog looks for driven runs' jobs the job queue lost (watchdog.py).
    dispatcher_watchdog_interval: float = 20.0

    def validate(self) -> list[str]:
        problems = []
        if self.dispatcher_lease_ttl < 1:
            problems.append("FORGE_DISPATCHER_LEASE_TTL must be at least 1s")
        if self.dispatcher_watchdog_interval <= 0:
            problems.append("FORGE_DISPATCHER_WATCHDOG_INTERVAL must be a positive duration")
        if self.dispatcher_max_runs < 1:
            problems.append("FORGE_DISPATCHER_MAX_RUNS must be >= 1")
        return problems
