"""HTTP routes of the deployment service: decode, one call into service.py, encode."""

from typing import Any

ROUTES: list[Any] = []
