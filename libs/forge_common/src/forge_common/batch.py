"""Batch operations: one request, many items, one result per item.

A batch endpoint (``POST /v1/runs/cancel``, ``POST /v1/deployments/promote``,
``POST /v1/approvals/batch``) loops over its items and calls, for each, the very use case the
single-item endpoint calls (its own transaction, its own rules and limits), so an item is
applied whole or not at all and a batch cannot do what single calls would refuse. The answer is
``200`` with, per item, the status the single call would have answered and either its body
(``result``) or its error envelope's ``error``. A batch is bounded by :data:`MAX_BATCH_ITEMS`;
more is refused with ``400`` before anything is applied.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import msgspec
import structlog

from .errors import ForgeError, InvalidRequest, unavailable
from .http import DEPENDENCY_ERRORS
from .openapi import ErrorDetail

__all__ = ["MAX_BATCH_ITEMS", "BatchItem", "BatchResult", "apply", "check_size", "failure", "summarize"]

log = structlog.get_logger(__name__)

# Items per batch request; a larger batch is refused (400) before any item is applied.
MAX_BATCH_ITEMS = 100


class BatchItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One item's outcome: the single operation's status and its body or its error."""

    id: str
    status: int
    result: Any = None
    error: ErrorDetail | None = None


class BatchResult(msgspec.Struct, kw_only=True):
    """``200`` answer of every batch operation: one entry per item, in the request's order."""

    example: ClassVar[dict[str, Any]] = {
        "dry_run": False,
        "succeeded": 1,
        "failed": 1,
        "results": [
            {"id": "2f1c9a4e-8b7d-4c6e-9f0a-1b2c3d4e5f60", "status": 204},
            {
                "id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                "status": 409,
                "error": {
                    "code": "resource_conflict",
                    "message": "pipeline run 9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d is already success "
                    "and cannot be cancelled",
                    "details": {"id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "status": "success"},
                },
            },
        ],
    }

    results: list[BatchItem]
    succeeded: int
    failed: int
    dry_run: bool = False


def check_size(count: int, field: str) -> None:
    """400 for an empty batch or one of more than :data:`MAX_BATCH_ITEMS` items."""
    if count == 0:
        raise InvalidRequest(f"`{field}` must name at least one item", {"field": field})
    if count > MAX_BATCH_ITEMS:
        raise InvalidRequest(
            f"a batch holds at most {MAX_BATCH_ITEMS} items; {count} were given (split it, or narrow the filter)",
            {"field": field, "limit": MAX_BATCH_ITEMS, "count": count},
        )


def failure(item_id: str, exc: ForgeError) -> BatchItem:
    return BatchItem(
        id=item_id, status=exc.status, error=ErrorDetail(code=exc.code, message=exc.message, details=exc.details)
    )


async def apply(item_id: str, status: int, operation: Callable[[], Awaitable[Any]]) -> BatchItem:
    """Run one item's single operation; its error becomes the item's result, not the batch's.

    A dependency outage is the item's ``503`` too: the items before it stay applied, and the
    answer says which.
    """
    try:
        value = await operation()
    except ForgeError as exc:
        return failure(item_id, exc)
    except DEPENDENCY_ERRORS as exc:
        log.warning("batch.item_dependency_unavailable", item=item_id, error=str(exc)[:300])
        return failure(item_id, unavailable("database" if "psycopg" in type(exc).__module__ else "NATS"))
    return BatchItem(id=item_id, status=status, result=value)


def summarize(results: list[BatchItem], dry_run: bool = False) -> BatchResult:
    succeeded = sum(1 for item in results if item.status < 400)
    return BatchResult(results=results, succeeded=succeeded, failed=len(results) - succeeded, dry_run=dry_run)
