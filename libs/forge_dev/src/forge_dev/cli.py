"""The ``forge`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .keys import DEFAULT_ISSUER, IssuerKeys, default_data_dir

ROLES = ("viewer", "developer", "approver", "admin", "worker")


def _dev_token(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    path = data_dir / "issuer" / "keys.json"
    if not path.exists():
        if args.issuer is None:
            print(
                f"no issuer key at {path}: start the platform with `make run` first (or pass --issuer to create one)",
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
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forge", description="Forge CI/CD platform command line")
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="local development helpers").add_subparsers(dest="dev_command", required=True)
    tok = dev.add_parser("token", help="print an access token the local dev platform accepts")
    tok.add_argument("--sub", required=True, help="subject (an e-mail for users)")
    tok.add_argument("--role", action="append", choices=ROLES, help="realm role; repeat for several")
    tok.add_argument("--service-account", action="store_true", help="a service-account (worker) token")
    tok.add_argument("--client-id", default=None)
    tok.add_argument("--expires-in", type=int, default=3600, help="lifetime in seconds (default 3600)")
    tok.add_argument("--data-dir", default=None, help="platform state directory (default .forge-data)")
    tok.add_argument("--issuer", default=None, help=f"issuer URL when creating a new key (e.g. {DEFAULT_ISSUER})")
    tok.set_defaults(func=_dev_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
