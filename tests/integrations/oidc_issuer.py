"""A local OIDC issuer standing in for GitHub Actions' (token.actions.githubusercontent.com):
its key set is served over HTTP at ``/.well-known/jwks``, and it mints job tokens with the claims
GitHub puts in them (``repository``, ``ref``, ``sub`` = ``repo:<owner>/<name>:ref:<ref>``...)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from forge_dev.stack import free_port


class LocalIssuer:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        self.url = ""
        self.jwks_requests = 0
        self._runner: web.AppRunner | None = None

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks"

    async def start(self) -> LocalIssuer:
        app = web.Application()
        app.router.add_get("/.well-known/jwks", self._jwks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return web.json_response({"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]})

    def job_token(
        self,
        repository: str,
        ref: str = "refs/heads/main",
        audience: str = "forge",
        expires_in: int = 300,
        issuer: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
        **extra: Any,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": issuer or self.url,
            "aud": audience,
            "sub": f"repo:{repository}:ref:{ref}",
            "repository": repository,
            "repository_owner": repository.split("/")[0],
            "ref": ref,
            "workflow": "release",
            "event_name": "push",
            "iat": now - 5,
            "nbf": now - 5,
            "exp": now + expires_in,
            "jti": uuid.uuid4().hex,
            **extra,
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.kid})
