"""The event contract as an AsyncAPI 3.0 document, generated from :mod:`forge_common.events`.

One channel per event type (address ``events.<event_type>`` on the JetStream stream
``FORGE_EVENTS``), one message per channel whose payload is the envelope with that event's
``data``; subscribers receive (the platform's services are the only publishers).
"""

from __future__ import annotations

from typing import Any

from .events import EVENT_TYPES, EventData
from .openapi import schema_components

__all__ = ["asyncapi_document"]

_DESCRIPTION = """\
Every lifecycle transition of the Forge platform is published as an event on the NATS JetStream \
stream `FORGE_EVENTS`, subject `events.<event_type>` (a deployment may prefix every subject and \
stream name with `FORGE_NATS_PREFIX`). Events are written to a transactional outbox together \
with the state change and published after commit, so NATS downtime delays events but never \
loses them; the `Nats-Msg-Id` header is the `event_id`, so JetStream drops a re-publish. Delivery \
is at least once: consumers deduplicate by `event_id`. Within one major version events only gain \
fields and event types; consumers must ignore what they do not know."""

# Spec examples of each event's data (the envelope around them is the same for all).
_EXAMPLES: dict[str, dict[str, Any]] = {
    "pipeline.run.created": {
        "run_id": "0b9c7f5e-3d2a-4c1b-9e8f-6a5b4c3d2e1f",
        "repository": "mycompany/myrepo",
        "branch": "main",
        "commit_sha": "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
        "triggered_by": "alice@company.com",
    },
    "pipeline.run.completed": {
        "run_id": "0b9c7f5e-3d2a-4c1b-9e8f-6a5b4c3d2e1f",
        "repository": "mycompany/myrepo",
        "commit_sha": "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
        "status": "success",
        "duration_seconds": 120,
    },
    "pipeline.run.failed": {
        "run_id": "0b9c7f5e-3d2a-4c1b-9e8f-6a5b4c3d2e1f",
        "repository": "mycompany/myrepo",
        "commit_sha": "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
        "failed_phase": "test",
        "error_message": "step unit of project api exited with 1",
    },
    "release.created": {
        "release_id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
        "repository": "mycompany/myrepo",
        "project": "api",
        "commit_sha": "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
        "release_number": 42,
        "trigger_type": "branch_push",
    },
    "deployment.created": {
        "deployment_id": "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a",
        "release_id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
        "environment": "production",
        "deployed_by": "alice@company.com",
        "gitops_commit_sha": "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d",
        "repository": "mycompany/myrepo",
        "project": "api",
    },
    "deployment.completed": {
        "deployment_id": "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a",
        "environment": "production",
        "status": "active",
        "reconciliation_duration_seconds": 45,
        "repository": "mycompany/myrepo",
        "project": "api",
    },
    "deployment.failed": {
        "deployment_id": "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a",
        "environment": "production",
        "status": "failed",
        "error_message": "not reconciled within 10m",
        "repository": "mycompany/myrepo",
        "project": "api",
    },
    "approval.created": {
        "approval_id": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
        "release_id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
        "environment": "production",
        "approver": "bob@company.com",
        "expires_at": "2025-10-06T12:05:00Z",
        "repository": "mycompany/myrepo",
        "project": "api",
    },
    "approval.revoked": {
        "approval_id": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
        "release_id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
        "environment": "production",
        "revoked_by": "bob@company.com",
        "reason": "rollback planned instead",
        "repository": "mycompany/myrepo",
        "project": "api",
    },
}


def _pascal(event_type: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in event_type.replace("_", ".").split("."))


def _envelope_schema(event_type: str, data: type[EventData]) -> dict[str, Any]:
    return {
        "type": "object",
        "title": f"{data.__name__}Event",
        "required": ["event_id", "event_type", "timestamp", "data"],
        "properties": {
            "event_id": {"type": "string", "format": "uuid", "description": "unique; also the `Nats-Msg-Id` header"},
            "event_type": {"const": event_type},
            "timestamp": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC (`Z`)"},
            "data": {"$ref": f"#/components/schemas/{data.__name__}"},
        },
    }


# Over 60 lines on purpose: one AsyncAPI document literal (channels, operations, messages,
# servers), built where it can be read as the document it produces.
def asyncapi_document() -> dict[str, Any]:
    _, schemas = schema_components(list(EVENT_TYPES.values()))
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for event_type, data in sorted(EVENT_TYPES.items()):
        name = _pascal(event_type)
        schemas[f"{data.__name__}Event"] = _envelope_schema(event_type, data)
        description = (data.__doc__ or "").strip()
        messages[name] = {
            "name": event_type,
            "title": event_type,
            **({"summary": description} if description else {}),
            "contentType": "application/json",
            "headers": {"$ref": "#/components/schemas/NatsHeaders"},
            "payload": {"$ref": f"#/components/schemas/{data.__name__}Event"},
            "examples": [
                {
                    "name": "spec",
                    "headers": {"Nats-Msg-Id": "e2f3a4b5-c6d7-4e8f-9a0b-1c2d3e4f5a6b"},
                    "payload": {
                        "event_id": "e2f3a4b5-c6d7-4e8f-9a0b-1c2d3e4f5a6b",
                        "event_type": event_type,
                        "timestamp": "2025-10-05T12:00:00Z",
                        "data": _EXAMPLES.get(event_type, {}),
                    },
                }
            ],
        }
        channels[event_type] = {
            "address": f"events.{event_type}",
            "title": event_type,
            "description": f"`{event_type}` events, stream `FORGE_EVENTS`",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"receive{name}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{event_type}"},
            "summary": f"Subscribe to {event_type}",
            "messages": [{"$ref": f"#/channels/{event_type}/messages/{name}"}],
        }
    schemas["NatsHeaders"] = {
        "type": "object",
        "properties": {
            "Nats-Msg-Id": {"type": "string", "description": "the event_id (JetStream deduplication)"},
        },
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Forge events", "version": "1.0.0", "description": _DESCRIPTION},
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "the platform's NATS with JetStream (`FORGE_NATS_URL`); `make run` starts one here",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }
