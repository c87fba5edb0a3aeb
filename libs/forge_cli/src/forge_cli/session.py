"""Which gateway a command talks to, with which token, and the call itself.

The gateway: ``--api``, else ``$FORGE_API_URL``, else the ``--context``'s or the current
context's, else ``http://127.0.0.1:8080``. The token: ``--token``, else ``$FORGE_TOKEN``, else
the context's (refreshed when expired); a context's token is only ever sent to its own gateway.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .config import Config, Context
from .http import CliError, json_answer, request
from .output import Done

__all__ = ["DEFAULT_API", "call", "resolve_api", "resolve_context", "token"]

DEFAULT_API = "http://127.0.0.1:8080"


def resolve_context(args: argparse.Namespace, config: Config) -> tuple[str, Context] | None:
    if args.context is not None:
        if args.context not in config.contexts:
            raise CliError(f"no context {args.context!r}: see `forge context list`")
        ctx = config.contexts[args.context]
        if args.api_explicit and ctx.api.rstrip("/") != args.api.rstrip("/"):
            raise CliError(f"context {args.context!r} is for {ctx.api}, not {args.api}")
        return args.context, ctx
    return config.for_api(args.api)


def resolve_api(args: argparse.Namespace) -> None:
    """Sets ``args.api`` (and ``args.api_explicit``) once, before any command runs."""
    args.api_explicit = args.api is not None or "FORGE_API_URL" in os.environ
    if args.api is None:
        args.api = os.environ.get("FORGE_API_URL")
    if args.api is None:
        config = Config.load()
        name = args.context or config.current
        ctx = config.contexts.get(name) if name else None
        args.api = ctx.api if ctx is not None else DEFAULT_API


def token(args: argparse.Namespace) -> str:
    """The bearer token this command sends (see the module's docstring)."""
    return _token(args)


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    env = os.environ.get("FORGE_TOKEN")
    if env:
        return env
    from .auth import access_token

    config = Config.load()
    found = resolve_context(args, config)
    if found is not None and (found[1].access_token or found[1].refresh_token):
        return access_token(config, found[0], found[1], args.timeout)
    raise CliError(
        "no token: run `forge login`, pass --token or set FORGE_TOKEN (e.g. FORGE_TOKEN=$(forge dev token ...))"
    )


def call(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: Any = None,
    params: dict[str, Any] | None = None,
    done: Done | None = None,
) -> Any:
    """The answer's JSON document; for an answer without one (204), ``done``: what the command
    did, said by the command that knows it (``cancelled run <id>``)."""
    headers = {"Authorization": f"Bearer {_token(args)}"}
    status, content = request(
        method, args.api.rstrip("/") + path, json_body=body, params=params, headers=headers, timeout=args.timeout
    )
    answer = json_answer(status, content, args.api)
    if answer is None:
        return done or Done(f"{method} {path}: done", {})
    return answer
