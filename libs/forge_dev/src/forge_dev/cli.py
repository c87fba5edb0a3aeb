"""``forge dev``: the local platform's helpers, added to the ``forge`` command of forge-cli.

forge-cli finds this through the ``forge_cli.commands`` entry point; without forge-dev
installed, ``forge dev`` says which package brings it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from forge_common.nats_auth import IDENTITIES

__all__ = ["ROLES", "register"]

ROLES = ("viewer", "developer", "approver", "admin", "worker")


def _dev_token(args: argparse.Namespace) -> int:
    # imported when it runs: the signing code (pyjwt, cryptography) costs every other command nothing
    from .keys import IssuerKeys, default_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    path = data_dir / "issuer" / "keys.json"
    if not path.exists():
        if args.issuer is None:
            print(
                f"forge: no issuer key at {path}: start the platform with `make run` first (or pass --issuer to create one)",
                file=sys.stderr,
            )
            return 1
        IssuerKeys.load_or_create(path, args.issuer)
    keys = IssuerKeys(path)
    roles = args.role or (["worker"] if args.service_account else ["viewer"])
    token = keys.sign(
        args.sub,
        roles,
        service_account=args.service_account,
        client_id=args.client_id or ("forge-worker" if args.service_account else "forge-cli"),
        expires_in=args.expires_in,
    )
    # a bare token whatever -o says: it is made for FORGE_TOKEN=$(forge dev token ...)
    print(token)
    return 0


def _dev_nats_url(args: argparse.Namespace) -> int:
    from .keys import default_data_dir
    from .nats_auth import NatsCredentials

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    creds = NatsCredentials.load(data_dir)
    if creds is None:
        print(
            f"forge: no NATS credentials in {data_dir}: start the platform with `make run` first "
            "(with FORGE_NATS_URL set, make run uses that server: ask its operator for an events identity)",
            file=sys.stderr,
        )
        return 1
    # Default: the read-only `events` identity (FORGE_EVENTS and its own consumers, nothing else).
    print(creds.url(args.identity))
    return 0


def register(sub: Any) -> None:
    """Adds ``forge dev`` to the top-level subparsers of ``forge``."""
    dev = sub.add_parser("dev", help="local development helpers").add_subparsers(dest="dev_command", required=True)
    tok = dev.add_parser("token", help="print an access token the local dev platform accepts")
    tok.add_argument("--sub", required=True, help="subject (an e-mail for users)")
    tok.add_argument("--role", action="append", choices=ROLES, help="realm role; repeat for several")
    tok.add_argument("--service-account", action="store_true", help="a service-account (worker) token")
    tok.add_argument("--client-id", default=None)
    tok.add_argument("--expires-in", type=int, default=3600, help="lifetime in seconds (default 3600)")
    tok.add_argument("--data-dir", default=None, help="platform state directory (default .forge-data)")
    tok.add_argument(
        "--issuer", default=None, help="issuer URL when creating a new key (e.g. http://127.0.0.1:8180/realms/forge)"
    )
    tok.set_defaults(func=_dev_token)
    url = dev.add_parser(
        "nats-url",
        help="print the local NATS URL, credentials included, of the read-only events identity",
        description=(
            "Prints nats://events:PASSWORD@127.0.0.1:14222 for `make run`'s NATS server: it may read the "
            "FORGE_EVENTS stream (create its own consumers) and nothing else."
        ),
    )
    url.add_argument("--data-dir", default=None, help="platform state directory (default .forge-data)")
    url.add_argument(
        "--identity",
        default="events",
        choices=IDENTITIES,
        help="another identity's URL, e.g. to run one service by hand against make run's NATS (default: events)",
    )
    url.set_defaults(func=_dev_nats_url)
