"""HTTP routes of the approval service: decode, one call into service.py, encode."""

from typing import Any

ROUTES: list[Any] = []
