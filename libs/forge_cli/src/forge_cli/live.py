"""``forge runs watch``, ``forge runs wait`` and ``forge runs logs -f``: the live API at a terminal.

All three read ``GET /v1/runs/{id}/events`` (Server-Sent Events) and reconnect with
``Last-Event-ID`` when the connection breaks, so nothing is missed; logs come from
``GET /v1/steps/{id}/logs`` (``?follow=true`` while the step runs, resumed with ``Range``).

A stream also ends before its run or step does: the gateway ends every stream when the token
that opened it expires. So the end of a run's stream means the end of the run only after the
run's final event, and the end of a followed log the end of the log only once an answer that
began after the step had finished brought nothing more; otherwise they reconnect at once, with
a token refreshed where the context can refresh it. A 401 on reconnecting (a ``--token`` or
``FORGE_TOKEN`` that expired, a session that cannot be refreshed) ends the command: exit 4, log
in again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from http.client import HTTPException, HTTPResponse
from typing import Any
from urllib.parse import quote

from .http import ApiError, AuthError, CliError, TimeoutFailure, json_answer
from .session import call, token

__all__ = ["OUTCOME_EXIT", "follow_logs", "wait", "watch"]

TERMINAL = frozenset({"success", "failed", "cancelled"})
STEP_DONE = frozenset({"success", "failed", "skipped", "cancelled"})
# forge runs wait / watch: the run's outcome as the exit status (3: --timeout reached).
OUTCOME_EXIT = {"success": 0, "failed": 1, "cancelled": 2}
# A stream sends a heartbeat at least every 15 s: this much silence means the connection is dead.
_READ_TIMEOUT = 45.0
_RECONNECTS = 5
# A stream that ends this soon without bringing anything counts as a failed connection: a
# server that keeps ending streams at once must not be asked again forever.
_QUICK_END = 2.0


def _seg(value: str) -> str:
    return quote(value, safe="")


def _open(
    args: argparse.Namespace, path: str, headers: dict[str, str], timeout: float, reconnect: bool = False
) -> HTTPResponse:
    """The answer to a GET of ``path``; ``reconnect``: a stream that ended is opened again (a
    401 then says the token ran out while following, AuthError)."""
    url = args.api.rstrip("/") + path
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token(args)}", **headers})  # noqa: S310
    try:
        resp: HTTPResponse = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - the user's gateway
    except urllib.error.HTTPError as exc:
        try:
            json_answer(exc.code, exc.read(), args.api)  # raises the one-line API error
        except ApiError as error:
            if reconnect and error.status == 401:
                raise _token_ran_out(args, error) from None
            raise
        raise
    except TimeoutError:
        raise TimeoutFailure(f"{args.api} did not answer within {timeout:g} s") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ApiError(f"cannot reach {args.api}: {getattr(exc, 'reason', exc)}") from None
    return resp


def _token_ran_out(args: argparse.Namespace, error: ApiError) -> AuthError:
    """The gateway ends a stream when its token expires; this token cannot open the next one."""
    if args.token or os.environ.get("FORGE_TOKEN"):
        how = "pass a fresh token (--token or FORGE_TOKEN)"
    else:
        how = "log in again (`forge login`)"
    return AuthError(f"the gateway no longer accepts the token, so the stream cannot go on ({error}): {how}")


def _events(resp: HTTPResponse) -> Iterator[tuple[str, str, str]]:
    """``(event, data, id)`` of each event of an SSE response until it ends."""
    data: list[str] = []
    name = event_id = ""
    while True:
        raw = resp.readline()
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line == "":
            if data:
                yield name or "message", "\n".join(data), event_id
            data, name = [], ""
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id":
            event_id = value


def _ended_early(opened: float, failures: int, message: str) -> int:
    """A stream that ended empty before what it follows did: the failures so far, one more (and
    a pause growing with them) when it ended soon after it opened, so that a stream that keeps
    ending at once is given up (ApiError ``message``) instead of reopened forever."""
    if time.monotonic() - opened >= _QUICK_END:
        return failures
    failures += 1
    if failures > _RECONNECTS:
        raise ApiError(message)
    time.sleep(min(0.5 * failures, 3.0))
    return failures


def run_events(args: argparse.Namespace, run_id: str, deadline: float | None = None) -> Iterator[tuple[str, Any]]:
    """``(kind, data)`` of every event of the run's stream, reconnecting after breaks and after
    ends before the run's final event (the gateway ends a stream when its token expires), until
    the run is final. The first is ``("run", tree)``. TimeoutFailure at ``deadline``."""
    last: str | None = None
    failures = 0
    reconnect = False
    while True:
        read_timeout = _READ_TIMEOUT
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutFailure(f"run {run_id} did not finish in time")
            read_timeout = min(read_timeout, left)
        headers = {"Accept": "text/event-stream"}
        if last is not None:
            headers["Last-Event-ID"] = last
        opened = time.monotonic()
        received = final = False
        try:
            with _open(args, f"/v1/runs/{_seg(run_id)}/events", headers, read_timeout, reconnect) as resp:
                for kind, data, event_id in _events(resp):
                    failures = 0
                    received = True
                    last = event_id or last
                    change = json.loads(data)
                    final = final or (kind == "run" and change.get("status") in TERMINAL)
                    yield kind, change
        except (TimeoutError, OSError, HTTPException) as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutFailure(f"run {run_id} did not finish in time") from None
            failures += 1
            if failures > _RECONNECTS:
                raise ApiError(f"the event stream of run {run_id} keeps breaking: {exc}") from None
            time.sleep(min(0.5 * failures, 3.0))
            reconnect = True
            continue
        if final:
            return
        # Ended before the run did (its token expired at the gateway): go on after the last event.
        reconnect = True
        if not received:
            failures = _ended_early(
                opened, failures, f"the event stream of run {run_id} keeps ending before the run does"
            )


# --- the tree as the events change it --------------------------------------------------------------


class Tree:
    """The run's tree, patched by the stream's phase, task and step events."""

    def __init__(self, run: dict[str, Any]) -> None:
        self.run = run
        self.index: dict[str, dict[str, Any]] = {}
        self.reindex()

    def reindex(self) -> None:
        self.index = {self.run["id"]: self.run}
        for phase in self.run.get("phases", []):
            self.index[phase["id"]] = phase
            for task in phase.get("tasks", []):
                self.index[task["id"]] = task
                for step in task.get("steps", []):
                    self.index[step["id"]] = step

    def apply(self, kind: str, data: dict[str, Any]) -> bool:
        """Apply one change; False when it names something the tree does not have yet (the
        caller then fetches the whole run again: phases appear with discovery)."""
        if kind == "run" and "phases" in data:
            self.run = data
            self.reindex()
            return True
        node = self.index.get(str(data.get("id")))
        if node is None:
            return False
        for key in ("status", "started_at", "completed_at", "exit_code"):
            if key in data:
                node[key] = data[key]
        return True

    @property
    def status(self) -> str:
        return str(self.run.get("status"))


def _duration(node: dict[str, Any]) -> str:
    start = node.get("started_at")
    if not start or node.get("status") in ("pending", "skipped"):
        return ""
    end = node.get("completed_at")
    begin = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
    finish = datetime.fromisoformat(str(end).replace("Z", "+00:00")) if end else datetime.now(begin.tzinfo)
    seconds = max(0, int((finish - begin).total_seconds()))
    return f" {seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f" {seconds}s"


_STYLE = {"success": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "skipped": "dim"}


def render_tree(tree: Tree) -> Any:
    from rich.text import Text
    from rich.tree import Tree as RichTree

    def label(name: str, node: dict[str, Any]) -> Text:
        status = str(node.get("status"))
        text = Text(f"{name} ")
        text.append(status, style=_STYLE.get(status, ""))
        text.append(_duration(node), style="dim")
        if node.get("exit_code") not in (None, 0):
            text.append(f" (exit code {node['exit_code']})", style="red")
        return text

    run = tree.run
    root = RichTree(label(f"run {run['id']} {run.get('repository', '')}@{str(run.get('commit_sha', ''))[:12]}", run))
    for phase in run.get("phases", []):
        branch = root.add(label(f"phase {phase['name']}", phase))
        for task in phase.get("tasks", []):
            leaf = branch.add(label(task["project_name"], task))
            for step in task.get("steps", []):
                leaf.add(label(step["name"], step))
    return root


class _Drawing:
    """Drawn anew at every refresh, so running durations tick between events."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree

    def __rich__(self) -> Any:
        return render_tree(self.tree)


def _line(kind: str, data: dict[str, Any], tree: Tree) -> str:
    """One line per change, for a watch whose output is not a terminal."""
    name = data.get("name") or data.get("project_name") or data.get("id")
    node = tree.index.get(str(data.get("id")), data)
    extra = f" exit code {data['exit_code']}" if data.get("exit_code") is not None else ""
    return f"{kind} {name} {data.get('status')}{_duration(node)}{extra}"


def _deadline(args: argparse.Namespace) -> float | None:
    return time.monotonic() + args.timeout if getattr(args, "timeout_explicit", False) else None


def watch(args: argparse.Namespace) -> int:
    """A live tree on a terminal (one line per change otherwise); the outcome's exit status."""
    interactive = sys.stdout.isatty()
    tree: Tree | None = None
    live = None
    try:
        for kind, data in run_events(args, args.run_id, _deadline(args)):
            if tree is None:
                tree = Tree(data if "phases" in data else call(args, "GET", f"/v1/runs/{_seg(args.run_id)}"))
                if interactive:
                    from rich.live import Live

                    live = Live(_Drawing(tree), refresh_per_second=4, transient=False)
                    live.start()
                else:
                    print(f"run {tree.run['id']} {tree.status}", flush=True)
                continue
            if not tree.apply(kind, data):
                tree = Tree(call(args, "GET", f"/v1/runs/{_seg(args.run_id)}"))
            if live is not None:
                live.update(_Drawing(tree), refresh=True)
            else:
                print(_line(kind, data, tree), flush=True)
    finally:
        if live is not None:
            live.stop()
    if tree is None:
        raise CliError(f"the event stream of run {args.run_id} ended without a word")
    return OUTCOME_EXIT.get(tree.status, 1)


def wait(args: argparse.Namespace) -> int:
    """Block until the run is final: 0 success, 1 failed, 2 cancelled, 3 at --timeout."""
    status = None
    for kind, data in run_events(args, args.run_id, _deadline(args)):
        if kind == "run" and data.get("id") == args.run_id:
            status = data.get("status")
    if status not in TERMINAL:
        status = call(args, "GET", f"/v1/runs/{_seg(args.run_id)}").get("status")
    print(f"run {args.run_id} {status}", file=sys.stderr)
    return OUTCOME_EXIT.get(str(status), 1)


# --- logs ----------------------------------------------------------------------------------------


def _matching_steps(run: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for phase in run.get("phases", []):
        if args.phase and phase["name"] != args.phase:
            continue
        for task in phase.get("tasks", []):
            if args.project and task["project_name"] != args.project:
                continue
            for step in task.get("steps", []):
                if args.step and step["name"] != args.step:
                    continue
                found.append((f"{phase['name']}/{task['project_name']}/{step['name']}", step))
    return found


def _discovered(args: argparse.Namespace) -> dict[str, Any]:
    """The run once it has steps (or has ended without any)."""
    run: dict[str, Any] = call(args, "GET", f"/v1/runs/{_seg(args.run_id)}")
    if run.get("phases") or run.get("status") in TERMINAL:
        return run
    for kind, _ in run_events(args, args.run_id):
        if kind == "step":
            break
    result: dict[str, Any] = call(args, "GET", f"/v1/runs/{_seg(args.run_id)}")
    return result


def _copy_log(args: argparse.Namespace, step_id: str, follow: bool) -> None:
    """The step's log to stdout; followed until the step ends, resumed by Range after a break.

    A followed log's body also ends when the gateway ends the stream (its token expired), which
    looks the same as its end: it is asked again from the bytes already printed until an answer
    that began with the step finished (``X-Step-Status``) brings nothing more."""
    offset = 0
    failures = 0
    reconnect = False
    while True:
        headers = {"Accept": "text/plain"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        path = f"/v1/steps/{_seg(step_id)}/logs" + ("?follow=true" if follow else "")
        opened = time.monotonic()
        received = 0
        try:
            with _open(args, path, headers, _READ_TIMEOUT if follow else args.timeout, reconnect) as resp:
                finished = resp.headers.get("X-Step-Status") in STEP_DONE
                while chunk := resp.read1(65536):
                    offset += len(chunk)
                    received += len(chunk)
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
        except ApiError as exc:
            if exc.status == 416:  # nothing past what was already printed
                return
            raise
        except (TimeoutError, OSError, HTTPException):
            failures += 1
            if not follow or failures > _RECONNECTS:
                raise ApiError(f"the log of step {step_id} could not be read") from None
            time.sleep(min(0.5 * failures, 3.0))
            reconnect = True
            continue
        if not follow or (finished and not received):
            return
        reconnect = True
        if not received:
            failures = _ended_early(opened, failures, f"the log of step {step_id} keeps ending before the step does")


def follow_logs(args: argparse.Namespace) -> int:
    """``forge runs logs ID [-f]``: each matching step's log, under a header line."""
    run = _discovered(args) if args.follow else call(args, "GET", f"/v1/runs/{_seg(args.run_id)}")
    steps = _matching_steps(run, args)
    if not steps:
        what = "matching the filters" if (args.phase or args.project or args.step) else "at all"
        print(f"forge: run {args.run_id} ({run.get('status')}) has no step {what}", file=sys.stderr)
        return 1
    for where, step in steps:
        print(f"==> {where} <==", flush=True)
        _copy_log(args, step["id"], args.follow and step.get("status") not in STEP_DONE)
    final = call(args, "GET", f"/v1/runs/{_seg(args.run_id)}")
    failed = [w for w, s in _matching_steps(final, args) if s.get("status") == "failed"]
    if failed:
        print(f"forge: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
