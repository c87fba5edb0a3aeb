"""HTTP between services: one pooled aiohttp session per target, errors mapped to the tree.

Calls forward the caller's bearer token, the request id and the W3C trace context. Workers and
background jobs authenticate with a service-account token from :class:`ClientCredentials`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import msgspec
import structlog

from .errors import BadGateway, ForgeError, GatewayTimeout
from .tracing import inject

__all__ = ["ClientCredentials", "ServiceClient", "ServiceResponse"]

log = structlog.get_logger(__name__)


class ServiceResponse(msgspec.Struct):
    status: int
    body: Any  # decoded JSON, or None for empty bodies

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = self.body["error"].get("code")
            return str(code) if code else None
        return None


class ServiceClient:
    def __init__(self, base_url: str, name: str, timeout: float = 10.0, limit: int = 100) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.timeout = aiohttp.ClientTimeout(total=timeout, connect=3)
        self.limit = limit
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.limit, keepalive_timeout=30),
                timeout=self.timeout,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> ServiceResponse:
        hdrs: dict[str, str] = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        rid = structlog.contextvars.get_contextvars().get("request_id")
        if rid:
            hdrs.setdefault("X-Request-Id", str(rid))
        inject(hdrs)
        data = None
        if json is not None:
            data = msgspec.json.encode(json)
            hdrs["Content-Type"] = "application/json"
        try:
            async with self.session().request(
                method, self.base_url + path, data=data, params=params, headers=hdrs
            ) as resp:
                raw = await resp.read()
                body = msgspec.json.decode(raw) if raw else None
                return ServiceResponse(resp.status, body)
        except TimeoutError as exc:
            raise GatewayTimeout(f"the {self.name} service did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise BadGateway(f"the {self.name} service is unavailable", {"reason": type(exc).__name__}) from exc
        except msgspec.DecodeError as exc:
            raise BadGateway(f"the {self.name} service sent an unreadable answer") from exc

    async def get(self, path: str, **kwargs: Any) -> ServiceResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> ServiceResponse:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> ServiceResponse:
        return await self.request("PUT", path, **kwargs)


class ClientCredentials:
    """Service-account tokens by the OAuth2 client-credentials grant, renewed before expiry."""

    def __init__(self, issuer: str, client_id: str, client_secret: str) -> None:
        self.token_url = f"{issuer.rstrip('/')}/protocol/openid-connect/token"
        self.client_id = client_id
        self.client_secret = client_secret
        self._token = ""
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Forget the cached token (e.g. after a 401) so the next call fetches a new one."""
        self._expires = 0.0

    async def token(self) -> str:
        if self._token and time.monotonic() < self._expires - 60:
            return self._token
        async with self._lock:
            if self._token and time.monotonic() < self._expires - 60:
                return self._token
            form = {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
            }
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                    async with session.post(self.token_url, data=form) as resp:
                        body = await resp.json(content_type=None)
                        if resp.status != 200:
                            raise ForgeError(f"token endpoint refused the client: {body}")
            except aiohttp.ClientError as exc:
                raise BadGateway("identity provider is unreachable") from exc
            self._token = str(body["access_token"])
            self._expires = time.monotonic() + float(body.get("expires_in", 300))
            return self._token
