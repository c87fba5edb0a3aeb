"""Tokens the platform must refuse, made the way an attacker or a misconfigured client would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from forge_dev.testing import Platform


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(issuer: str, sub: str = "mallory@example.com", roles: tuple[str, ...] = ("admin",)) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": issuer,
        "sub": sub,
        "aud": ["forge", "account"],
        "azp": "forge-cli",
        "typ": "Bearer",  # what Keycloak puts in access tokens
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "email": sub,
        "preferred_username": sub,
        "realm_access": {"roles": list(roles)},
    }


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return jwk


def signed(key: rsa.RSAPrivateKey, kid: str, payload: dict[str, Any]) -> str:
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def platform_kid(platform: Platform) -> str:
    return str(platform.keys.jwks()["keys"][0]["kid"])


def unsigned(platform: Platform) -> str:
    """``alg: none``: a valid-looking token with an empty signature."""
    header = {"alg": "none", "typ": "JWT", "kid": platform_kid(platform)}
    payload = claims(platform.issuer_url)
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}."


def hs256_with_public_key(platform: Platform) -> str:
    """The classic key-confusion attack: HMAC-sign with the issuer's *public* key as the secret."""
    jwk = platform.keys.jwks()["keys"][0]
    public = jwt.PyJWK(jwk).key
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": jwk["kid"]}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims(platform.issuer_url)).encode())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"
