"""The one error tree of the platform.

Every error a client can see is a :class:`ForgeError`; its class says what went wrong, its
message says it to a human, and :func:`error_body` renders the spec's envelope
``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

__all__ = [
    "AuthenticationFailed",
    "AuthorizationFailed",
    "BadGateway",
    "Conflict",
    "ForgeError",
    "GatewayTimeout",
    "InternalError",
    "InvalidRequest",
    "LimitExceeded",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "ServiceUnavailable",
    "error_body",
    "unavailable",
]


class ForgeError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.code, self.message, self.details)


class InvalidRequest(ForgeError):
    status = 400
    code = "invalid_request"


class AuthenticationFailed(ForgeError):
    status = 401
    code = "authentication_failed"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details, {"WWW-Authenticate": 'Bearer realm="forge"'})


class AuthorizationFailed(ForgeError):
    status = 403
    code = "authorization_failed"


class NotFound(ForgeError):
    status = 404
    code = "resource_not_found"


class MethodNotAllowed(ForgeError):
    status = 405
    code = "method_not_allowed"


class Conflict(ForgeError):
    status = 409
    code = "resource_conflict"


class RequestTimeout(ForgeError):
    """The client did not send its request (body) in time."""

    status = 408
    code = "request_timeout"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        # The rest of the body may still be in flight: this connection cannot be reused.
        super().__init__(message, details, {"Connection": "close"})


class PayloadTooLarge(ForgeError):
    status = 413
    code = "payload_too_large"


class RateLimited(ForgeError):
    status = 429
    code = "rate_limited"


class LimitExceeded(ForgeError):
    """A platform quota (concurrent runs, pending deployments) is exhausted."""

    status = 429
    code = "limit_exceeded"


class InternalError(ForgeError):
    status = 500
    code = "internal_error"


class BadGateway(ForgeError):
    status = 502
    code = "bad_gateway"


class ServiceUnavailable(ForgeError):
    status = 503
    code = "service_unavailable"


def unavailable(dependency: str, reason: str = "", retry_after: int = 5) -> ServiceUnavailable:
    """The 503 for a dependency (database, NATS, identity provider, a service) that cannot be
    reached right now: the request did not complete; it may be sent again after ``retry_after``."""
    details: dict[str, Any] = {"dependency": dependency, "retry_after": retry_after}
    if reason:
        details["reason"] = reason
    return ServiceUnavailable(
        f"{dependency} is unavailable; retry in {retry_after} seconds", details, {"Retry-After": str(retry_after)}
    )


class GatewayTimeout(ForgeError):
    status = 504
    code = "gateway_timeout"


_encoder = msgspec.json.Encoder()


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    return _encoder.encode({"error": {"code": code, "message": message, "details": details or {}}})
