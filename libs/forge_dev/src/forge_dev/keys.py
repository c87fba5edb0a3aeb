"""Signing keys of the local issuer, kept on disk so tokens survive restarts."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["AUDIENCE", "DEFAULT_ISSUER", "IssuerKeys", "default_data_dir", "ensure_workload_key"]

DEFAULT_ISSUER = "http://127.0.0.1:8180/realms/forge"
AUDIENCE = "forge"


def default_data_dir() -> Path:
    env = os.environ.get("FORGE_DATA_DIR")
    if env:
        return Path(env).resolve()
    cwd = Path.cwd() / ".forge-data"
    if cwd.exists():
        return cwd
    # libs/forge_dev/src/forge_dev/keys.py -> repository root
    return Path(__file__).resolve().parents[4] / ".forge-data"


def ensure_workload_key(path: Path) -> Path:
    """The gateway's signing key for exchanged workload tokens (PEM), created once and kept, so
    every gateway process of the dev platform signs with the same key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pem)
        tmp.chmod(0o600)
        tmp.replace(path)
    return path


class IssuerKeys:
    """One RSA key (RS256) with a ``kid``; the issuer URL is stored with it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def load_or_create(cls, path: Path, issuer: str) -> IssuerKeys:
        keys = cls(path)
        if not path.exists():
            keys.rotate(issuer)
        else:
            data = json.loads(path.read_text())
            if data.get("issuer") != issuer:
                data["issuer"] = issuer
                keys._write(data)
        return keys

    def rotate(self, issuer: str) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self._write({"issuer": issuer, "kid": uuid.uuid4().hex[:16], "private_key": pem})

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.chmod(0o600)
        tmp.replace(self.path)

    def _data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.path.read_text())
        return data

    @property
    def issuer(self) -> str:
        return str(self._data()["issuer"])

    def jwks(self) -> dict[str, Any]:
        data = self._data()
        private = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))  # type: ignore[arg-type]
        jwk.update({"kid": data["kid"], "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def sign(
        self,
        subject: str,
        roles: list[str],
        *,
        service_account: bool = False,
        client_id: str = "forge-cli",
        expires_in: int = 3600,
        audience: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        data = self._data()
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": data["issuer"],
            "sub": subject,
            "aud": audience or [AUDIENCE, "account"],
            "azp": client_id,
            "typ": "Bearer",
            "iat": now,
            "exp": now + expires_in,
            "jti": uuid.uuid4().hex,
            "realm_access": {"roles": roles},
            "scope": "openid profile email",
        }
        if service_account:
            claims["preferred_username"] = f"service-account-{client_id}"
            claims["client_id"] = client_id
        else:
            claims["preferred_username"] = subject
            if "@" in subject:
                claims["email"] = subject
        if extra:
            claims.update(extra)
        return jwt.encode(claims, data["private_key"], algorithm="RS256", headers={"kid": data["kid"]})
