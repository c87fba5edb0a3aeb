"""Server-side request forgery guard: where a webhook may be sent.

A target's host is resolved and every address it resolves to is judged by
:func:`domain.refused_address` (loopback, link-local, private, unique-local, multicast,
unspecified, reserved are refused unless ``FORGE_WEBHOOK_ALLOW_PRIVATE=true``; link-local, where
cloud instance metadata lives, is refused even then: :func:`domain.judge_address`). It is judged
twice: when the subscription is created or its URL changed (a 400 naming ``url``), and when each
attempt connects. The second check is what defeats DNS rebinding: :class:`GuardedResolver` is
the resolver of the sender's aiohttp connector, so the addresses it checked are the very
addresses the connection is opened to; no second lookup happens between check and connect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from forge_common.errors import InvalidRequest

from .domain import Target, judge_address

__all__ = ["GuardedResolver", "RefusedTarget", "check_literal", "check_target"]


class RefusedTarget(OSError):
    """The target resolves to an address webhooks may not be sent to."""


def check_literal(target: Target, allow_private: bool) -> None:
    """Refuse a URL whose host is a literal address (aiohttp connects to those unresolved)."""
    if target.literal is not None:
        kind = judge_address(target.literal, allow_private)
        if kind is not None:
            raise RefusedTarget(f"{target.literal} is {_a(kind)} address; webhooks are not sent to internal addresses")


def _a(kind: str) -> str:
    """``a loopback``, ``a unique-local``, but ``an unspecified``."""
    return f"an {kind}" if kind == "unspecified" else f"a {kind}"


class GuardedResolver(ThreadedResolver):
    def __init__(self, allow_private: bool) -> None:
        super().__init__()
        self.allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await super().resolve(host, port, family)
        for result in found:
            address = result["host"].split("%", 1)[0]
            kind = judge_address(ipaddress.ip_address(address), self.allow_private)
            if kind is not None:
                raise RefusedTarget(
                    f"{host} resolves to {address}, {_a(kind)} address; webhooks are not sent to internal addresses"
                )
        return found


async def check_target(target: Target, allow_private: bool, timeout: float = 5.0) -> None:
    """At subscription time: 400 (``details.field = "url"``) for a host that does not resolve
    or resolves to an internal address. With ``allow_private`` only a literal link-local address
    is refused here (names are judged when each attempt connects)."""
    try:
        check_literal(target, allow_private)
        if target.literal is None and not allow_private:
            resolver = GuardedResolver(allow_private)
            try:
                await asyncio.wait_for(resolver.resolve(target.host, target.port, socket.AF_UNSPEC), timeout)
            finally:
                await resolver.close()
    except RefusedTarget as exc:
        raise InvalidRequest(str(exc), {"field": "url", "value": target.url[:200]}) from None
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a name IDNA cannot encode
        raise InvalidRequest(
            f"the host of url ({target.host[:100]}) does not resolve: {exc}",
            {"field": "url", "value": target.url[:200]},
        ) from None
