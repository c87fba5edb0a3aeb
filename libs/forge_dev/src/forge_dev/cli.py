"""``forge dev``: the local platform's helpers, added to the ``forge`` command of forge-cli.

forge-cli finds this through the ``forge_cli.commands`` entry point; without forge-dev
installed, ``forge dev`` says which package brings it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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
