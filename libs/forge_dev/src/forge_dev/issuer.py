"""A local Keycloak-compatible token issuer for realm ``forge``.

Serves the realm's discovery document, its JWKS, and the token endpoint with the
client-credentials grant for service accounts (the worker's ``forge-worker`` client).
Users get tokens from ``forge dev token``, signed with the same key.
"""

from __future__ import annotations

import base64
import hmac
import os
from pathlib import Path
from typing import Any

import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body

from .keys import IssuerKeys, default_data_dir

__all__ = ["create_issuer_app", "main"]


def _clients() -> dict[str, tuple[str, list[str]]]:
    """client_id -> (secret, realm roles of its service account)."""
    return {
        "forge-worker": (os.environ.get("FORGE_WORKER_CLIENT_SECRET", "forge-worker-secret"), ["worker"]),
    }


def _oauth_error(status: int, error: str, description: str) -> Response[dict[str, str]]:
    return Response({"error": error, "error_description": description}, status_code=status)


def create_issuer_app(keys: IssuerKeys) -> Litestar:
    realm = "/realms/forge"

    @get(f"{realm}/.well-known/openid-configuration", sync_to_thread=False)
    def discovery() -> dict[str, Any]:
        iss = keys.issuer
        return {
            "issuer": iss,
            "jwks_uri": f"{iss}/protocol/openid-connect/certs",
            "token_endpoint": f"{iss}/protocol/openid-connect/token",
            "grant_types_supported": ["client_credentials"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }

    @get(f"{realm}/protocol/openid-connect/certs", sync_to_thread=False)
    def certs() -> dict[str, Any]:
        return keys.jwks()

    @post(f"{realm}/protocol/openid-connect/token", status_code=200)
    async def token(
        request: Request[Any, Any, Any],
        data: dict[str, str] = Body(media_type=RequestEncodingType.URL_ENCODED),  # noqa: B008
    ) -> Response[dict[str, Any]]:
        client_id = data.get("client_id", "")
        secret = data.get("client_secret", "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return _oauth_error(401, "invalid_client", "malformed basic credentials")
        if data.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
        known = _clients().get(client_id)
        if known is None or not hmac.compare_digest(known[0], secret):
            return _oauth_error(401, "invalid_client", "invalid client credentials")
        expires_in = 3600
        access = keys.sign(client_id, known[1], service_account=True, client_id=client_id, expires_in=expires_in)
        return Response(
            {"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": "profile email"}
        )

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar([discovery, certs, token, healthz], debug=False, logging_config=None)


def main() -> None:
    port = int(os.environ.get("FORGE_ISSUER_PORT", "8180"))
    issuer = os.environ.get("FORGE_OIDC_ISSUER", f"http://127.0.0.1:{port}/realms/forge")
    data_dir = Path(os.environ.get("FORGE_DATA_DIR") or default_data_dir())
    keys = IssuerKeys.load_or_create(data_dir / "issuer" / "keys.json", issuer)
    # FORGE_ISSUER_HOST=0.0.0.0 lets other containers reach it (docker-compose.yml); loopback otherwise.
    host = os.environ.get("FORGE_ISSUER_HOST", "127.0.0.1")
    uvicorn.run(create_issuer_app(keys), host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
