"""HTTP routes of the release service: decode, one call into service.py, encode."""

from typing import Any

ROUTES: list[Any] = []
