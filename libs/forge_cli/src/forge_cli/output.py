"""``-o table|json|yaml``: a table on a terminal, JSON when piped (scripts get the API's document)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["FORMATS", "Done", "render"]

FORMATS = ("table", "json", "yaml")


@dataclass(frozen=True)
class Done:
    """The result of a command whose answer has no document (204 No Content: a cancel, a
    delete): a sentence on a terminal (``-o table``), ``document`` for ``-o json|yaml``."""

    message: str
    document: dict[str, Any]


def render(result: Any, output: str | None) -> None:
    fmt = output or ("table" if sys.stdout.isatty() else "json")
    if isinstance(result, Done):
        if fmt == "table":
            print(result.message)
            return
        result = result.document
    if fmt == "json":
        print(json.dumps(result, indent=2))
    elif fmt == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(result, sort_keys=False, allow_unicode=True))
    else:
        _table(result)


# Lists whose items have more fields than a terminal shows: the columns that matter (json/yaml
# output has every field).
_COLUMNS = {
    "subscriptions": ["id", "url", "event_types", "repository", "environment", "active", "disabled_reason"],
    "deliveries": ["id", "event_type", "status", "attempt", "response_status", "duration_ms", "next_retry_at"],
}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _items(result: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
    """A page of a list answer: the one key holding a list of objects (runs, releases, ...)."""
    lists = [(k, v) for k, v in result.items() if isinstance(v, list) and all(isinstance(i, dict) for i in v)]
    if len(lists) == 1 and "total" in result:
        return lists[0]
    if len(lists) == 1 and set(result) - {lists[0][0]} <= {"next_cursor"}:
        return lists[0]
    return None


def _table(result: Any) -> None:
    # rich is imported only here: JSON output and piped use never pay for it
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=False)
    if isinstance(result, list):
        result = {"items": result}
    if not isinstance(result, dict):
        console.print(_cell(result), markup=False)
        return
    page = _items(result)
    if page is not None:
        name, items = page
        columns: list[str] = list(_COLUMNS.get(name, []))
        for item in [] if columns else items:
            columns += [k for k, v in item.items() if not isinstance(v, dict | list) and k not in columns]
        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
        for column in columns:
            table.add_column(column.upper().replace("_", " "), overflow="fold")
        for item in items:
            table.add_row(*(_cell(item.get(c)) for c in columns))
        console.print(table)
        if "total" in result:
            shown = f"{result.get('offset', 0) + 1 if items else 0}-{result.get('offset', 0) + len(items)}"
            console.print(f"{name}: {shown} of {result['total']}", markup=False)
        elif result.get("next_cursor"):
            console.print(f"more: --cursor {result['next_cursor']}", markup=False)
        return
    table = Table(box=box.SIMPLE, show_header=False, show_edge=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    nested = {}
    for key, value in result.items():
        if key in ("phases", "artifacts") and isinstance(value, list) and value:
            nested[key] = value
            continue
        table.add_row(key, _cell(value))
    console.print(table)
    if "phases" in nested:
        console.print(_steps_table(nested["phases"]))
    if "artifacts" in nested:
        console.print(_artifacts_table(nested["artifacts"]))


def _artifacts_table(artifacts: list[dict[str, Any]]) -> Any:
    """A release's (or run's) artifacts: name, type, digest, size, where they are."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("ARTIFACT", "TYPE", "DIGEST", "SIZE", "TRACKING", "PUBLISHED"):
        table.add_column(column, overflow="fold")
    for artifact in artifacts:
        table.add_row(
            _cell(artifact.get("name")),
            _cell(artifact.get("type")),
            _cell(artifact.get("digest")),
            _cell(artifact.get("size")),
            _cell(artifact.get("tracking_oci_uri")),
            _cell(artifact.get("primary_published_uri")),
        )
    return table


def _steps_table(phases: list[dict[str, Any]]) -> Any:
    """A run's tree as rows: phase / project / step with status and exit code."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("PHASE", "PROJECT", "STEP", "STATUS", "EXIT CODE", "STARTED", "COMPLETED"):
        table.add_column(column, overflow="fold")
    for phase in phases:
        table.add_row(phase.get("name", "-"), "", "", _cell(phase.get("status")), "", "", "")
        for task in phase.get("tasks", []):
            table.add_row("", _cell(task.get("project_name")), "", _cell(task.get("status")), "", "", "")
            for step in task.get("steps", []):
                table.add_row(
                    "",
                    "",
                    _cell(step.get("name")),
                    _cell(step.get("status")),
                    _cell(step.get("exit_code")),
                    _cell(step.get("started_at")),
                    _cell(step.get("completed_at")),
                )
    return table
