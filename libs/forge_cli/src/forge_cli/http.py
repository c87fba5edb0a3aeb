"""HTTP for the CLI, and the exit status of every failure class.

The standard library's urllib does the requests: the CLI starts in a fraction of the time an
HTTP client library takes to import, and needs no connection pool for one request per command.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode, urlsplit

__all__ = [
    "EXIT_AUTH",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_SERVER",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "ApiError",
    "AuthError",
    "CliError",
    "TimeoutFailure",
    "UsageError",
    "json_answer",
    "request",
]

EXIT_OK = 0
EXIT_FAILED = 1  # the API refused the request (4xx), or it could not be sent (no token, unreachable)
EXIT_USAGE = 2  # bad arguments (argparse's own convention)
EXIT_TIMEOUT = 3  # no answer in time
EXIT_AUTH = 4  # the identity provider refused: login failed, or the session could not be refreshed
# (also: a followed stream whose token ran out and could not be renewed, live.py)
EXIT_SERVER = 5  # the platform failed: 5xx, including 503 when a dependency is down


class CliError(Exception):
    """A failure the user is told about in one line on stderr."""

    exit_code = EXIT_FAILED


class ApiError(CliError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        if status is not None and status >= 500:
            self.exit_code = EXIT_SERVER


class UsageError(CliError):
    """Arguments that do not go together (argparse cannot say it)."""

    exit_code = EXIT_USAGE


class AuthError(CliError):
    exit_code = EXIT_AUTH


class TimeoutFailure(CliError):
    exit_code = EXIT_TIMEOUT


def request(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    form: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """(status, body) of any answer, error statuses included; CliError when there is none."""
    clean = {k: v for k, v in (params or {}).items() if v is not None}
    if clean:
        url += f"?{urlencode(clean)}"
    all_headers = {"Accept": "application/json", **(headers or {})}
    data = None
    if json_body is not None:
        data = json.dumps(json_body).encode()
        all_headers["Content-Type"] = "application/json"
    elif form is not None:
        data = urlencode(form).encode()
        all_headers["Content-Type"] = "application/x-www-form-urlencoded"
    base = url.split("?", 1)[0]
    try:
        req = urllib.request.Request(url, data=data, headers=all_headers, method=method)  # noqa: S310 - user's URL
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except TimeoutError:
        raise TimeoutFailure(f"{base} did not answer within {timeout:g} s") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise TimeoutFailure(f"{base} did not answer within {timeout:g} s") from None
        raise ApiError(f"cannot reach {_origin(base)}: {reason}") from None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url


def json_answer(status: int, content: bytes, where: str) -> Any:
    """The JSON document of a successful answer (None when it has none: 204); ApiError in the
    platform's one-line form otherwise."""
    text = content.decode("utf-8", "replace")
    if status >= 400:
        try:
            err = json.loads(content)["error"]
            detail = f" {json.dumps(err['details'])}" if err.get("details") else ""
            message = f"{status} {err['code']}: {err['message']}{detail}"
        except (ValueError, KeyError, TypeError):
            message = f"{status}: {text[:500]}"
        raise ApiError(message, status)
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:
        raise ApiError(f"{status}: {where} answered something that is not JSON: {text[:200]!r}") from None
