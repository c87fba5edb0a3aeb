"""Schemathesis hooks of tests/contract (loaded with ``SCHEMATHESIS_HOOKS=<this file>``).

The Server-Sent Events operations answer a stream that lasts as long as there are events; a
request/response fuzzer needs an answer that ends. Their documented ``timeout`` parameter
(seconds) bounds a stream as a real client bounds a watch: a case without one, or with a valid
one, gets ``timeout=1``, so that every stream ends after a second and schemathesis judges its
status, headers and content type. Values the server must refuse are sent as generated (400).
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis

from forge_common.sse import MAX_TIMEOUT
from forge_gateway.contract import OPENAPI_PATH

_STREAM_SECONDS = 1
_DOCUMENT = json.loads(OPENAPI_PATH.read_text())
STREAMS = frozenset(
    (path, method)
    for path, item in _DOCUMENT["paths"].items()
    for method, operation in item.items()
    if isinstance(operation, dict)
    for status, answer in operation.get("responses", {}).items()
    if status.startswith("2") and "text/event-stream" in answer.get("content", {})
)


def _accepted(value: Any) -> bool:
    """Whether the server takes ``value`` as a ``timeout`` (whole seconds, in its range)."""
    text = str(value).strip()
    return text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_TIMEOUT


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if (case.operation.path, case.operation.method.lower()) not in STREAMS:
        return
    query = dict(case.query or {})
    if "timeout" not in query or _accepted(query["timeout"]):
        query["timeout"] = _STREAM_SECONDS
        case.query = query
