"""Mechanisms shared by every Forge service (never one service's domain logic)."""

from .auth import Permission, Principal
from .errors import (
    AuthenticationFailed,
    AuthorizationFailed,
    Conflict,
    ForgeError,
    InternalError,
    InvalidRequest,
    LimitExceeded,
    NotFound,
)
from .events import isoformat, utcnow
from .settings import CommonSettings

__all__ = [
    "AuthenticationFailed",
    "AuthorizationFailed",
    "CommonSettings",
    "Conflict",
    "ForgeError",
    "InternalError",
    "InvalidRequest",
    "LimitExceeded",
    "NotFound",
    "Permission",
    "Principal",
    "isoformat",
    "utcnow",
]
