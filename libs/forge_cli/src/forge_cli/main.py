"""The ``forge`` command: argument parsing, the account commands, and dispatch.

Packages add command groups through the ``forge_cli.commands`` entry point group: each entry
point is a function taking the top-level subparsers (forge-dev adds ``forge dev``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .commands import add_api_commands
from .config import Config, Context, context_name_for
from .http import EXIT_FAILED, CliError
from .output import FORMATS, render
from .session import call, resolve_api, resolve_context

__all__ = ["build_parser", "main"]

PLUGIN_GROUP = "forge_cli.commands"
# Applied after parsing: the common options' actions are shared by every parser (argparse
# parents), so a default set on one would override a value given before the command name.
_DEFAULTS: dict[str, Any] = {"output": None, "api": None, "token": None, "context": None, "timeout": 30.0}


def _common(with_output: bool = True) -> argparse.ArgumentParser:
    """Options every command takes, before or after its name (defaults: on the top parser).
    Commands that write a file (``artifacts pull -o PATH``) take every option but the format."""
    common = argparse.ArgumentParser(add_help=False)
    if with_output:
        common.add_argument(
            "-o",
            "--output",
            choices=FORMATS,
            default=argparse.SUPPRESS,
            help="output format (default: table on a terminal, json otherwise)",
        )
    common.add_argument(
        "--api", default=argparse.SUPPRESS, help="gateway URL (default: $FORGE_API_URL, the context's, or :8080)"
    )
    common.add_argument(
        "--token", default=argparse.SUPPRESS, help="bearer token (default: $FORGE_TOKEN, then the context's)"
    )
    common.add_argument("--context", default=argparse.SUPPRESS, help="use this saved context, not the current one")
    common.add_argument(
        "--timeout", type=float, default=argparse.SUPPRESS, help="seconds to wait for an answer (default 30)"
    )
    return common


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def _summary(name: str, ctx: Context, current: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "current": name == current,
        "api": ctx.api,
        "user": ctx.user,
        "roles": ctx.roles,
        "expires_at": _iso(ctx.expires_at),
        "refreshable": ctx.refreshable(),
    }


def _login(args: argparse.Namespace) -> Any:
    from .auth import DEFAULT_CLIENT_ID, login_with_browser, login_with_token

    config = Config.load()
    name = args.context or context_name_for(args.api)
    ctx = config.contexts.get(name) or Context(api=args.api)
    ctx.api = args.api
    if args.with_token:
        login_with_token(ctx, sys.stdin.read().strip(), args.timeout)
    else:
        login_with_browser(
            ctx,
            issuer=args.issuer,
            client_id=args.client_id or ctx.client_id or DEFAULT_CLIENT_ID,
            open_browser=not args.no_browser,
            wait=args.wait,
            timeout=args.timeout,
        )
    with config.locked():
        # re-read: another forge process may have refreshed a context during the sign-in
        config = Config.load(config.path)
        config.contexts[name] = ctx
        config.current = name
        config.save()
    return _summary(name, ctx, config.current)


def _logout(args: argparse.Namespace) -> Any:
    from .auth import logout

    config = Config.load()
    found = resolve_context(args, config)
    if found is None:
        raise CliError(f"not logged in to {args.api}")
    logout(found[1], args.timeout)
    config.save()
    return _summary(found[0], found[1], config.current)


def _whoami(args: argparse.Namespace) -> Any:
    """The gateway's word on the token this command sends, not the token's unverified claims
    (what `forge context list` shows): ``GET /v1/me``, answered without any service."""
    return call(args, "GET", "/v1/me")


def _context_list(args: argparse.Namespace) -> Any:
    config = Config.load()
    return {"contexts": [_summary(n, c, config.current) for n, c in sorted(config.contexts.items())]}


def _context_use(args: argparse.Namespace) -> Any:
    config = Config.load()
    if args.name not in config.contexts:
        raise CliError(f"no context {args.name!r}: `forge login --context {args.name}` creates it")
    config.current = args.name
    config.save()
    return _summary(args.name, config.contexts[args.name], config.current)


def _completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def _no_dev(args: argparse.Namespace) -> Any:
    raise CliError(
        "`forge dev` comes with the forge-dev package (the local platform's tooling), which is not "
        "installed: run it from a Forge checkout's .venv (`make install`), or `pip install ./libs/forge_dev`"
    )


def _add_account_commands(sub: Any, leaf: Callable[..., argparse.ArgumentParser]) -> None:
    p = leaf(sub, "login", help="sign in (browser, PKCE) or store a token (--with-token) for a gateway")
    p.add_argument("--with-token", action="store_true", help="read an access token from standard input")
    p.add_argument("--issuer", help="the OpenID issuer URL (default: the one the gateway names at /v1/meta)")
    p.add_argument("--client-id", help="the OAuth client (default: forge-cli)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL to open")
    p.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the sign-in (default 300)")
    p.set_defaults(func=_login)
    p = leaf(sub, "logout", help="forget the context's tokens and end its session at the issuer")
    p.set_defaults(func=_logout)
    p = leaf(
        sub,
        "whoami",
        help="who the gateway takes your token for: subject, name, email, roles, repository, expiry (GET /v1/me)",
    )
    p.set_defaults(func=_whoami)
    ctx = sub.add_parser("context", help="saved gateways and their logins").add_subparsers(
        dest="context_command", required=True
    )
    leaf(ctx, "list", help="the contexts; the current one is marked").set_defaults(func=_context_list)
    p = leaf(ctx, "use", help="make a context the current one")
    p.add_argument("name")
    p.set_defaults(func=_context_use)
    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=_completion)


def _add_plugins(sub: Any) -> None:
    from importlib.metadata import entry_points

    found = False
    for ep in entry_points(group=PLUGIN_GROUP):
        ep.load()(sub)
        found = True
    if not found:
        p = sub.add_parser("dev", help="local development helpers (needs the forge-dev package)")
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=_no_dev)


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    without_output = _common(with_output=False)
    parser = argparse.ArgumentParser(prog="forge", description="Forge CI/CD platform command line", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    def leaf(group: Any, name: str, *, writes_file: bool = False, **kwargs: Any) -> argparse.ArgumentParser:
        parents = [without_output if writes_file else common]
        p: argparse.ArgumentParser = group.add_parser(name, parents=parents, **kwargs)
        return p

    add_api_commands(sub, leaf)
    _add_account_commands(sub, leaf)
    _add_plugins(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `forge runs wait/watch --timeout S`: the whole wait is bounded only when asked.
    args.timeout_explicit = hasattr(args, "timeout")
    for name, value in _DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    try:
        resolve_api(args)
        result = args.func(args)
        if isinstance(result, int):
            return result
        render(result, args.output)
    except CliError as exc:
        print(f"forge: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
