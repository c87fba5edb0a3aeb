"""Who may do what on NATS: one identity per Forge process kind, with least-privilege permissions.

The permission model is written once here; ``make run`` and the test harness generate their
embedded server's configuration from it (:func:`server_config`), ``deploy/compose/nats.conf``
is checked against it (``deploy/check.py``), and docs/operations.md ("NATS credentials") shows
it for operators who run their own NATS.

=============  ===========================================================================
identity       may
=============  ===========================================================================
pipeline       publish jobs (``pipeline.>``), events, dead-letter replies; manage the job,
               dead-letter and events streams; read job replies (``_INBOX.forge.>``) and,
               for ``GET /v1/events``, FORGE_EVENTS through its own ordered consumers;
               for outgoing webhooks, FORGE_EVENTS through the durable PIPELINE_WEBHOOKS
worker         consume jobs (fetch, ack/nak/in-progress heartbeats), publish replies to job
               inboxes and dead letters; hear cancellations. Nothing else: no events, no jobs
release,       publish events (``events.>``) and keep the events stream
deployment,
approval
events         read ``FORGE_EVENTS``: create, read and delete its own consumers. Nothing else
admin          everything (operators' tools, the test harness); never given to a Forge process
=============  ===========================================================================

Anonymous connections are refused by every configuration generated here. Each identity gets
its own inbox prefix (:func:`inbox_prefix`), so no identity can read another's JetStream
responses (which carry the jobs a worker fetched).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "IDENTITIES",
    "PUBLISHERS",
    "authorization_block",
    "connect_options",
    "inbox_prefix",
    "main",
    "permissions",
    "server_config",
]

# The identities a Forge deployment has; every service's NATS user is its own name.
IDENTITIES = ("pipeline", "release", "deployment", "approval", "worker", "events", "admin")
# Services that publish events through their outbox.
PUBLISHERS = ("pipeline", "release", "deployment", "approval")

_JOBS, _DEAD, _EVENTS = "PIPELINE_JOBS", "PIPELINE_DEAD_LETTERS", "FORGE_EVENTS"


def inbox_prefix(identity: str) -> str:
    """The inbox prefix a Forge process connects with (its JetStream responses land there)."""
    return f"_INBOX_{identity.upper()}"


def _names(prefix: str) -> tuple[str, str]:
    """(subject prefix with its dot, stream-name prefix with its underscore) for ``prefix``."""
    bare = prefix.strip(".")
    if not bare:
        return "", ""
    return f"{bare}.", f"{bare.upper().replace('.', '_')}_"


def _keep_stream(stream: str) -> list[str]:
    """JetStream API subjects to create a stream, or update it to the current configuration."""
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.UPDATE.{stream}"]


def _stream_api(stream: str, manage: bool) -> list[str]:
    """JetStream API subjects to consume (and with ``manage`` keep) ``stream`` and its consumers."""
    read = [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
    ]
    if not manage:
        return read
    return [
        *read,
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
        f"$JS.API.STREAM.PURGE.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.STREAM.MSG.DELETE.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
    ]


# Over 60 lines on purpose: the allow lists of every identity, one after the other, so a reviewer
# sees all of the NATS authorization in one place.
def permissions(identity: str, prefix: str = "") -> dict[str, Any] | None:
    """The NATS ``permissions`` of ``identity`` (None: unrestricted) for a deployment whose
    subjects and streams carry ``prefix`` (``FORGE_NATS_PREFIX``; empty in production)."""
    if identity not in IDENTITIES:
        raise ValueError(f"unknown NATS identity {identity!r}; use one of {', '.join(IDENTITIES)}")
    if identity == "admin":
        return None
    subjects, streams = _names(prefix)
    jobs, dead, events = streams + _JOBS, streams + _DEAD, streams + _EVENTS
    own_inbox = f"{inbox_prefix(identity)}.>"
    replies = f"{subjects}_INBOX.forge.>"
    if identity == "events":
        publish = [
            "$JS.API.INFO",
            "$JS.API.STREAM.NAMES",
            f"$JS.API.STREAM.INFO.{events}",
            f"$JS.API.STREAM.MSG.GET.{events}",
            f"$JS.API.DIRECT.GET.{events}",
            f"$JS.API.DIRECT.GET.{events}.>",
            f"$JS.API.CONSUMER.CREATE.{events}",
            f"$JS.API.CONSUMER.CREATE.{events}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{events}.*",
            f"$JS.API.CONSUMER.INFO.{events}.*",
            f"$JS.API.CONSUMER.DELETE.{events}.*",
            f"$JS.API.CONSUMER.MSG.NEXT.{events}.*",
            f"$JS.API.CONSUMER.NAMES.{events}",
            f"$JS.API.CONSUMER.LIST.{events}",
            f"$JS.ACK.{events}.>",
            f"$JS.FC.{events}.>",
        ]
        # Event subscribers use nats-py's (or any client's) default inboxes for push consumers,
        # never the job replies nor another identity's inbox.
        return {
            "publish": {"allow": publish},
            "subscribe": {"allow": ["_INBOX.>"], "deny": [replies, "_INBOX.forge.>"]},
        }
    if identity == "worker":
        publish = [
            replies,
            f"{subjects}pipeline.deadletter.>",
            "$JS.API.INFO",
            *_stream_api(jobs, manage=False),
            f"$JS.API.STREAM.INFO.{dead}",
        ]
        return {
            "publish": {"allow": publish},
            "subscribe": {"allow": [own_inbox, f"{subjects}pipeline.cancel.*"]},
        }
    publish = [f"{subjects}events.>", "$JS.API.INFO", *_keep_stream(events)]
    subscribe = [own_inbox]
    if identity == "pipeline":
        publish += [
            f"{subjects}pipeline.>",
            replies,
            # GET /v1/events: ordered push consumers on FORGE_EVENTS (forge_common.event_feed)
            f"$JS.API.CONSUMER.CREATE.{events}",
            f"$JS.API.CONSUMER.CREATE.{events}.>",
            f"$JS.API.CONSUMER.INFO.{events}.*",
            f"$JS.API.CONSUMER.DELETE.{events}.*",
            f"$JS.FC.{events}.>",
            # Outgoing webhooks: the durable pull consumer PIPELINE_WEBHOOKS (forge_pipeline.notify)
            f"$JS.API.CONSUMER.DURABLE.CREATE.{events}.*",
            f"$JS.API.CONSUMER.MSG.NEXT.{events}.*",
            f"$JS.ACK.{events}.>",
            *_stream_api(jobs, manage=True),
            *_stream_api(dead, manage=True),
        ]
        subscribe += [
            replies,
            f"{subjects}pipeline.cancel.*",
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{jobs}.*",
        ]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def authorization_block(passwords: dict[str, str] | None, prefix: str = "") -> str:
    """The ``authorization { users: [...] }`` block of a NATS server configuration: one user per
    identity in ``passwords`` (name -> password), each with its permissions. ``None``: every
    identity, each password read by the server from the environment variable
    ``NATS_PASSWORD_<IDENTITY>`` (a Kubernetes Secret mounted as environment)."""
    lines = ["authorization {", "  users: ["]
    for identity in IDENTITIES if passwords is None else passwords:
        user: dict[str, Any] = {"user": identity, "password": "" if passwords is None else passwords[identity]}
        perms = permissions(identity, prefix)
        if perms is not None:
            user["permissions"] = perms
        line = json.dumps(user)
        if passwords is None:  # an unquoted variable reference, resolved by nats-server
            line = line.replace('"password": ""', f'"password": $NATS_PASSWORD_{identity.upper()}', 1)
        lines.append(f"    {line}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def server_config(passwords: dict[str, str], *, host: str, port: int, store_dir: str, prefix: str = "") -> str:
    """A whole NATS server configuration: JetStream on, anonymous connections refused."""
    head = [
        "# Generated by forge (forge_common.nats_auth); edits are overwritten at the next start.",
        f"host: {json.dumps(host)}",
        f"port: {port}",
        f"jetstream {{ store_dir: {json.dumps(store_dir)} }}",
        "",
    ]
    return "\n".join(head) + authorization_block(passwords, prefix)


def connect_options(identity: str, user: str = "", password: str = "", creds: str = "") -> dict[str, Any]:
    """nats-py ``connect`` options for a Forge process of ``identity``: its own inbox prefix and
    the credentials from settings (``FORGE_NATS_USER``/``FORGE_NATS_PASSWORD`` or a
    ``FORGE_NATS_CREDS`` file); credentials in ``FORGE_NATS_URL`` work as they are."""
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(identity)}
    if user:
        options["user"] = user
        options["password"] = password
    if creds:
        options["user_credentials"] = creds
    return options


def main(argv: list[str] | None = None) -> int:
    """``python -m forge_common.nats_auth``: print the authorization block for a NATS server."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m forge_common.nats_auth",
        description="Print the NATS server `authorization` block with every Forge identity's permissions.",
    )
    parser.add_argument("--prefix", default="", help="FORGE_NATS_PREFIX of the deployment (default: none)")
    parser.add_argument(
        "--password-suffix",
        default=None,
        help="literal passwords <identity><suffix> (docker-compose's development passwords use -dev); "
        "default: $NATS_PASSWORD_<IDENTITY> environment references",
    )
    args = parser.parse_args(argv)
    passwords = None if args.password_suffix is None else {i: f"{i}{args.password_suffix}" for i in IDENTITIES}
    sys.stdout.write(authorization_block(passwords, args.prefix))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
