"""``GET /v1/me``: who the caller is, as its verified token says, answered by the gateway alone.

The proxy answers it (:class:`forge_gateway.proxy.Proxy`) after the steps every ``/v1`` request
goes through (authentication, the user's limits, metrics, access log, trace), and asks no service:
a client can check a token (``forge login --with-token``) and say who it is logged in as
(``forge whoami``) while the services behind the gateway are down.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import get
from litestar.handlers import HTTPRouteHandler

from forge_common.auth import Principal
from forge_common.events import isoformat
from forge_common.openapi import errors, response

__all__ = ["ME_PATH", "Caller", "answer", "caller", "documentation"]

ME_PATH = "/v1/me"
_encoder = msgspec.json.Encoder()


class Caller(msgspec.Struct, kw_only=True):
    """The caller of ``GET /v1/me``: its token's subject, names, roles, repository and expiry."""

    example: ClassVar[dict[str, Any]] = {
        "subject": "3f1c2b4a-5d6e-4f70-8a9b-0c1d2e3f4a5b",
        "identity": "alice@company.com",
        "name": "Alice Smith",
        "email": "alice@company.com",
        "username": "alice",
        "roles": ["developer", "viewer"],
        "service_account": False,
        "repository": None,
        "issuer": "https://keycloak.example.com/realms/forge",
        "expires_at": "2025-10-05T13:00:00Z",
    }

    subject: Annotated[str, msgspec.Meta(description="the token's `sub`")]
    identity: Annotated[
        str,
        msgspec.Meta(
            description="who the platform records as having acted (`triggered_by`, `created_by`, "
            "`approver`, ...): the email, else the user name, else the subject"
        ),
    ]
    name: Annotated[str | None, msgspec.Meta(description="the token's `name` claim (a person's full name)")]
    email: Annotated[str | None, msgspec.Meta(description="the token's `email` claim")]
    username: Annotated[str | None, msgspec.Meta(description="the token's `preferred_username` claim")]
    roles: Annotated[list[str], msgspec.Meta(description="the token's realm roles (`realm_access.roles`), sorted")]
    service_account: Annotated[
        bool, msgspec.Meta(description="a service account (a worker) rather than a user: acts as a worker only")
    ]
    repository: Annotated[
        str | None,
        msgspec.Meta(
            description="the one repository (owner/name) a repository-bound token may act on (its "
            "`forge_repository` claim, e.g. a token from `POST /v1/auth/token`); null: any repository"
        ),
    ]
    issuer: Annotated[str, msgspec.Meta(description="the token's `iss`: the realm, or the gateway's workload issuer")]
    expires_at: Annotated[str, msgspec.Meta(description="when the token expires (its `exp`), RFC 3339 UTC")]


def _text(claims: dict[str, Any], name: str) -> str | None:
    # Claims are whatever JSON the issuer put there: only a non-empty string counts as a name.
    value = claims.get(name)
    return value if isinstance(value, str) and value else None


def caller(principal: Principal) -> Caller:
    claims = principal.claims
    return Caller(
        subject=principal.subject,
        identity=principal.identity,
        name=_text(claims, "name"),
        email=_text(claims, "email"),
        username=_text(claims, "preferred_username"),
        roles=sorted(principal.roles),
        service_account=principal.service_account,
        repository=principal.repository,
        issuer=str(claims.get("iss", "")),
        expires_at=isoformat(dt.datetime.fromtimestamp(principal.expires_at, dt.UTC)),
    )


def answer(principal: Principal) -> bytes:
    """The JSON body of ``GET /v1/me`` for this (authenticated) principal."""
    return _encoder.encode(caller(principal))


def documentation() -> HTTPRouteHandler:
    """The operation as the OpenAPI document shows it (:mod:`forge_gateway.contract`).

    No request reaches this handler: ``/v1/*`` goes to the proxy, which answers ``GET /v1/me``
    with :func:`answer`. It exists so that the document is generated like every other one."""

    @get(
        ME_PATH,
        sync_to_thread=False,
        operation_id="getMe",
        summary="Who the caller is: the token's subject, names, roles, repository and expiry",
        description="Answered by the gateway from the bearer token alone, after the same "
        "authentication and rate limit as every operation: no service is asked, so it answers while "
        "they are down. Any valid access token may call it (no role needed); a missing, invalid or "
        "expired one is the usual `401`.",
        responses={
            200: response(Caller, "who the token says the caller is"),
            **errors(
                {
                    400: "more than one `Authorization` header",
                    503: "the identity provider's key set could not be fetched to verify the token; retry later",
                }
            ),
        },
    )
    def me() -> Caller:
        raise AssertionError("GET /v1/me is answered by forge_gateway.proxy, never by this handler")

    return me
