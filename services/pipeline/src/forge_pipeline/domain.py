"""Pure rules of the pipeline domain: input validation, legal status transitions, roll-ups.

Nothing here does I/O. ``service.py`` asks these functions what should happen and ``store.py``
makes it so inside the caller's transaction.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from forge_common.errors import Conflict, InvalidRequest

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "FINISHED",
    "ListQuery",
    "PhasePlan",
    "StepPlan",
    "TaskPlan",
    "Transition",
    "commit_state_for",
    "normalize_commit_sha",
    "phase_outcome",
    "step_transition",
    "task_transition",
    "validate_branch",
    "validate_idempotency_key",
    "validate_identity",
    "validate_list_query",
    "validate_repository",
    "validate_tag",
]

ACTIVE_RUN_STATUSES = ("pending", "running")
FINISHED = frozenset({"success", "failed", "skipped", "cancelled"})
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20

# GitHub's rules: owner 1-39 alphanumerics or single hyphens; repository name 1-100 of [A-Za-z0-9._-].
_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


def _invalid(field: str, message: str, value: Any = None) -> InvalidRequest:
    details: dict[str, Any] = {"field": field}
    if value is not None:
        details["value"] = value if not isinstance(value, str) or len(value) <= 300 else value[:300] + "..."
    return InvalidRequest(message, details)


def validate_repository(value: str, field: str = "repository") -> str:
    owner, sep, name = value.partition("/")
    if not sep or not _OWNER.match(owner) or not _NAME.match(name) or name in (".", ".."):
        raise _invalid(field, f"{field} must be 'owner/name' (GitHub owner and repository name)", value)
    return value


def _validate_ref_name(value: str, field: str, what: str) -> str:
    problem = None
    if not value:
        problem = "must not be empty"
    elif len(value) > 255:
        problem = "must be at most 255 characters"
    elif _BAD_REF_CHARS.search(value):
        problem = "must not contain spaces, control characters or any of ~^:?*[\\"
    elif ".." in value or "@{" in value or "//" in value:
        problem = "must not contain '..', '@{' or '//'"
    elif value.startswith(("-", "/", ".")) or value.endswith(("/", ".", ".lock")):
        problem = "must not start with '-', '/' or '.', nor end with '/', '.' or '.lock'"
    elif value == "@":
        problem = "must not be '@'"
    if problem:
        raise _invalid(field, f"{field} is not a valid git {what} name: it {problem}", value)
    return value


def validate_branch(value: str, field: str = "branch") -> str:
    return _validate_ref_name(value, field, "branch")


def validate_tag(value: str, field: str = "tag") -> str:
    return _validate_ref_name(value, field, "tag")


def normalize_commit_sha(value: str, field: str = "commit_sha") -> str:
    if not _SHA.match(value):
        raise _invalid(field, f"{field} must be 7 to 64 hexadecimal characters", value)
    return value.lower()


def validate_identity(value: str, field: str = "triggered_by") -> str:
    if not value.strip() or len(value) > 255 or any(ord(c) < 0x20 for c in value):
        raise _invalid(field, f"{field} must be 1 to 255 printable characters", value)
    return value


def validate_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not (1 <= len(value) <= 255) or not _PRINTABLE.match(value):
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces",
            {"header": "Idempotency-Key"},
        )
    return value


def _int_param(raw: str | None, name: str, default: int, low: int, high: int | None) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid(name, f"{name} must be an integer", raw) from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise _invalid(name, f"{name} must be {bound}", value)
    return value


RUN_STATUSES = ("pending", "running", "success", "failed", "cancelled")


class ListQuery(msgspec.Struct, kw_only=True):
    repository: str
    branch: str | None
    status: str | None
    limit: int
    offset: int


def validate_list_query(
    repository: str | None, branch: str | None, status: str | None, limit: str | None, offset: str | None
) -> ListQuery:
    if repository is None or repository == "":
        raise _invalid("repository", "query parameter 'repository' is required")
    validate_repository(repository)
    if branch is not None:
        validate_branch(branch)
    if status is not None and status not in RUN_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(RUN_STATUSES)}", {"field": "status", "value": status})
    return ListQuery(
        repository=repository,
        branch=branch,
        status=status,
        limit=_int_param(limit, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT),
        offset=_int_param(offset, "offset", 0, 0, 10_000_000),
    )


# --- status transitions ------------------------------------------------------------------------

Transition = Literal["apply", "noop"]

# What a worker may report over HTTP: pending -> running -> success | failed.
_REPORTED: dict[str, frozenset[str]] = {
    "pending": frozenset({"running"}),
    "running": frozenset({"success", "failed"}),
}
# What the orchestrator may decide in-process on top of that (timeouts, fail-fast, cancellation).
_INTERNAL: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "failed", "skipped", "cancelled"}),
    "running": frozenset({"success", "failed", "cancelled"}),
}


def _transition(kind: str, entity_id: str, current: str, new: str, internal: bool) -> Transition:
    if current == new:
        # A retried report (the worker timed out waiting for our answer) changes nothing.
        return "noop"
    allowed = (_INTERNAL if internal else _REPORTED).get(current, frozenset())
    if new not in allowed:
        raise Conflict(
            f"{kind} {entity_id} cannot go from {current} to {new}",
            {"id": entity_id, "current_status": current, "requested_status": new},
        )
    return "apply"


def task_transition(task_id: str, current: str, new: str, internal: bool = False) -> Transition:
    return _transition("task", task_id, current, new, internal)


def step_transition(step_id: str, current: str, new: str, internal: bool = False) -> Transition:
    return _transition("step", step_id, current, new, internal)


def phase_outcome(task_statuses: list[str]) -> str | None:
    """The phase's final status once every task finished, else ``None``."""
    if any(s not in FINISHED for s in task_statuses):
        return None
    if any(s in ("failed", "cancelled") for s in task_statuses):
        return "failed"
    return "success"


def commit_state_for(run_status: str) -> tuple[str, str]:
    """GitHub commit status state and description for a run status."""
    return {
        "pending": ("pending", "Forge pipeline run is queued"),
        "running": ("pending", "Forge pipeline run is running"),
        "success": ("success", "Forge pipeline run succeeded"),
        "failed": ("failure", "Forge pipeline run failed"),
        "cancelled": ("error", "Forge pipeline run was cancelled"),
    }[run_status]


# --- discovery plan (what the discovery job found) ---------------------------------------------


class StepPlan(msgspec.Struct, kw_only=True):
    name: str
    action: Literal["shell", "earthly"] = "shell"
    command: str = ""
    timeout_seconds: int | None = None
    # Filled by service.store_discovery / load_plan.
    id: str | None = None
    position: int = 0
    status: str = "pending"


class TaskPlan(msgspec.Struct, kw_only=True):
    project_name: str
    project_path: str = "."
    steps: list[StepPlan] = msgspec.field(default_factory=list)
    id: str | None = None
    status: str = "pending"


class PhasePlan(msgspec.Struct, kw_only=True):
    name: str
    group_number: int
    timeout_seconds: int | None = None
    tasks: list[TaskPlan] = msgspec.field(default_factory=list)
    id: str | None = None
    status: str = "pending"
