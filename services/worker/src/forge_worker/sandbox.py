"""The step sandbox: every step (and every command another job type runs on a repository's
behalf) runs in its own user, PID, mount, IPC and UTS namespaces (and network namespace with
``network = false``), with a root file system of its own, a clean environment and limits.

Two tools build it, both maintained and found on ordinary Linux machines:

- ``bwrap`` (bubblewrap, what Flatpak uses): preferred; a few milliseconds per step;
- ``unshare`` from util-linux (present on every Linux userland) plus ``mount``, ``pivot_root``
  and ``setpriv`` from the same package: the fallback when bubblewrap is not installed.

What a sandboxed command sees: ``/usr``, ``/etc`` and the ``/bin``/``/lib`` links read-only (plus
``FORGE_STEP_READONLY_PATHS``; ``FORGE_STEP_WRITABLE_PATHS`` read-write, e.g. a shared cache), a fresh ``/proc`` of its own PID namespace, a private ``/tmp``
and ``/dev/shm``, ``$HOME`` (``/home/forge``) on a tmpfs, and ``/workspace``: the job's own
writable copy of the checkout. The git cache, the data directory, other jobs' workspaces and
the worker's environment are not there. When the worker runs as root, commands run as
``FORGE_STEP_USER`` (``nobody``), never as root.

Limits (:class:`Limits`): ``processes`` is ``RLIMIT_NPROC`` set inside the sandbox's own user
namespace (the kernel counts it per namespace, so a fork bomb stops there); ``memory`` is the
resident memory of all the sandbox's processes, watched by the worker every
``FORGE_STEP_WATCH_INTERVAL``; ``timeout`` is wall-clock time. Reaching a limit kills the whole
sandbox (its PID namespace goes with its first process) and the log's last line names the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import pwd
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

__all__ = [
    "ENVIRONMENT_ALLOW_LIST",
    "Limits",
    "LogSink",
    "Sandbox",
    "SandboxOutcome",
    "SandboxUnavailable",
    "Workspace",
    "format_bytes",
    "run_sandboxed",
]

log = structlog.get_logger(__name__)

SandboxKind = Literal["bwrap", "unshare", "none"]
# Takes the command's output as it comes; a sink that returns an awaitable is awaited before the
# next read (back-pressure: the command waits on its full pipe meanwhile, nothing piles up).
LogSink = Callable[[bytes], Awaitable[None] | None]

# Everything a step's environment may hold, besides the step's own variables.
ENVIRONMENT_ALLOW_LIST = (
    "PATH",
    "HOME",
    "CI",
    "FORGE_RUN_ID",
    "FORGE_TASK_ID",
    "FORGE_REPOSITORY",
    "FORGE_COMMIT_SHA",
    "FORGE_BRANCH",
    "FORGE_PHASE",
    "FORGE_PROJECT",
    "FORGE_STEP",
    # Artifact builds (artifacts.py): the tag of a tag run, what is built and where it is left.
    "FORGE_TAG",
    "FORGE_ARTIFACT",
    "FORGE_ARTIFACT_TYPE",
    "FORGE_ARTIFACT_PATH",
    # The step's trace context (OpenTelemetry's environment carrier), when tracing is on.
    "TRACEPARENT",
    "TRACESTATE",
)
HOME = "/home/forge"
WORKSPACE = "/workspace"
_SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_PAGE = os.sysconf("SC_PAGE_SIZE")

# Run by ``sh`` as the first process of the new namespaces (unshare backend): build a root on a
# tmpfs, pivot into it, set RLIMIT_NPROC (counted in this user namespace alone), drop every
# capability, then exec the command. Arguments: the empty
# directory to mount the root on, the workspace, the working directory inside it, the nproc
# limit, the read-only and the writable extra paths (colon-separated), then the command.
_UNSHARE_SETUP = r"""
set -e
step_path=$PATH; PATH=/usr/sbin:/usr/bin:/sbin:/bin
root=$1; workspace=$2; cwd=$3; nproc=$4; readonly_paths=$5; writable_paths=$6; shift 6
mount -t tmpfs -o mode=0755 forge-root "$root"
cd "$root"
mkdir -p usr etc proc dev tmp home/forge workspace .old
for d in bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$d"
  elif [ -d "/$d" ]; then mkdir "$d"; mount --rbind -o ro "/$d" "$d"; fi
done
mount --rbind -o ro /usr usr
mount --rbind -o ro /etc etc
mount --rbind /dev dev
mount -t tmpfs -o mode=1777 forge-shm dev/shm
mount -t tmpfs -o mode=1777 forge-tmp tmp
IFS=:
for p in $readonly_paths; do
  if [ -e "$p" ]; then mkdir -p ".$p"; mount --rbind -o ro "$p" ".$p"; fi
done
for p in $writable_paths; do
  if [ -e "$p" ]; then mkdir -p ".$p"; mount --rbind "$p" ".$p"; fi
done
unset IFS
mount --bind "$workspace" workspace
mount -t proc proc proc
pivot_root . .old
umount -l /.old
rmdir /.old
cd "/workspace/$cwd"
PATH=$step_path; unset OLDPWD
exec prlimit --nproc="$nproc" setpriv --no-new-privs --inh-caps=-all --bounding-set=-all \
  --securebits=+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked -- "$@"
"""


class SandboxUnavailable(Exception):
    """The sandbox cannot run on this machine; the message says why and what to do."""


@dataclass(frozen=True)
class Limits:
    """What one sandboxed command may use (``memory`` in bytes, ``timeout`` in seconds)."""

    memory: int
    processes: int
    timeout: float | None
    network: bool = True


@dataclass
class SandboxOutcome:
    exit_code: int
    # "timeout", "memory" or "processes" when a limit ended the command
    limit: str | None = None
    cancelled: bool = False
    duration: float = 0.0

    @property
    def timed_out(self) -> bool:
        return self.limit == "timeout"


def format_bytes(value: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            number = value / size
            return f"{number:.0f} {unit}" if number == int(number) else f"{number:.1f} {unit}"
    return f"{value} B"


def _step_user(name: str) -> tuple[int, int] | None:
    """Who commands run as: ``name`` when the worker is root (never root itself), else the
    worker's own user (a user namespace maps nothing else)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        if name.isdigit():
            return int(name), int(name)
        raise SandboxUnavailable(f"FORGE_STEP_USER {name!r} is not a user on this machine") from None


class Workspace:
    """A job's writable copy of the checkout, in a directory only the step user can enter.

    ``path`` is mounted at ``/workspace``; ``root`` is the empty directory the unshare backend
    mounts the sandbox's root on. Both are removed by :meth:`remove`.
    """

    def __init__(self, base: Path, owner: tuple[int, int] | None, path: Path | None = None) -> None:
        self.base = base
        self.path = path or base / "workspace"
        self.root = base / "root"
        self.owner = owner
        self.owned = path is None

    @classmethod
    def shared(cls, checkout: Path) -> Workspace:
        """The shared checkout itself, for ``FORGE_STEP_SANDBOX=none`` (no isolation anyway)."""
        return cls(checkout, None, path=checkout)

    @classmethod
    async def for_sandbox(cls, sandbox: Sandbox, checkout: Path) -> Workspace:
        """What a job's commands run in: a private copy of ``checkout``, or without a sandbox
        the checkout itself (as before sandboxing: no copy)."""
        if sandbox.kind == "none":
            return cls.shared(checkout)
        return await cls.copy_of(checkout, sandbox.work_dir, sandbox.user)

    @classmethod
    async def copy_of(cls, source: Path, parent: Path, owner: tuple[int, int] | None) -> Workspace:
        base = Path(tempfile.mkdtemp(prefix="job-", dir=parent))
        workspace = cls(base, owner)
        try:
            workspace.root.mkdir()
            # cp -a: the tree as it is (modes, links, timestamps); reflinks where the file
            # system has them. The checkout's .git file points into the git cache: left out.
            proc = await asyncio.create_subprocess_exec(
                "cp",
                "-a",
                "--reflink=auto",
                f"{source}/.",
                str(workspace.path),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise OSError(f"cannot copy the checkout: {err.decode(errors='replace').strip()[:300]}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(workspace.path / ".git")
            if owner is not None:
                await asyncio.to_thread(_chown_tree, base, owner)
            else:
                os.chmod(base, 0o700)
        except BaseException:
            workspace.remove()
            raise
        return workspace

    def remove(self) -> None:
        if self.owned:
            shutil.rmtree(self.base, ignore_errors=True)


def _chown_tree(base: Path, owner: tuple[int, int]) -> None:
    uid, gid = owner
    os.chown(base, uid, gid)
    base.chmod(0o700)
    for directory, dirs, files in os.walk(base):
        for name in (*dirs, *files):
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)


def _check_reachable(work_dir: Path) -> None:
    """The step user (not the worker's) must be able to pass through every parent directory."""
    for parent in work_dir.absolute().parents:
        try:
            mode = parent.stat().st_mode
        except OSError:
            continue
        if not mode & 0o001:
            raise SandboxUnavailable(
                f"FORGE_STEP_WORK_DIR {work_dir}: the step user cannot reach it, {parent} is not searchable by "
                "others (chmod o+x it, or choose another directory)"
            )


class Sandbox:
    """How commands are wrapped; pick one with :meth:`create` (which checks it works)."""

    def __init__(
        self,
        kind: SandboxKind,
        *,
        work_dir: Path,
        user: tuple[int, int] | None = None,
        readonly_paths: tuple[str, ...] = (),
        writable_paths: tuple[str, ...] = (),
        watch_interval: float = 0.05,
        kill_grace: float = 1.0,
        tool: str = "",
    ) -> None:
        self.kind = kind
        self.work_dir = work_dir
        self.user = user
        self.readonly_paths = tuple(p for p in readonly_paths if p.startswith("/") and p != "/")
        self.writable_paths = tuple(p for p in writable_paths if p.startswith("/") and p != "/")
        self.watch_interval = watch_interval
        self.kill_grace = kill_grace
        self.tool = tool or kind

    @classmethod
    async def create(
        cls,
        setting: str,
        *,
        work_dir: Path,
        user_name: str = "nobody",
        readonly_paths: tuple[str, ...] = (),
        writable_paths: tuple[str, ...] = (),
        watch_interval: float = 0.05,
        kill_grace: float = 1.0,
    ) -> Sandbox:
        """The sandbox named by ``FORGE_STEP_SANDBOX`` (``auto``: bwrap, else unshare), after a
        trial command in it; :class:`SandboxUnavailable` when the kernel or the tools refuse."""
        user = _step_user(user_name)
        if user is not None and setting != "none":
            _check_reachable(work_dir)
        os.makedirs(work_dir, exist_ok=True)
        os.chmod(work_dir, 0o711)  # noqa: S103 - the step user enters its own workspace, lists nothing
        kinds: list[SandboxKind]
        if setting == "auto":
            kinds = ["bwrap", "unshare"]
        elif setting in ("bwrap", "unshare", "none"):
            kinds = [setting]  # type: ignore[list-item]
        else:
            raise SandboxUnavailable(
                f'FORGE_STEP_SANDBOX must be "auto", "bwrap", "unshare" or "none", got {setting!r}'
            )
        failures: list[str] = []
        for kind in kinds:
            tool = "none" if kind == "none" else (shutil.which(kind) or "")
            if not tool:
                failures.append(f"{kind}: not installed")
                continue
            sandbox = cls(
                kind,
                work_dir=work_dir,
                user=user,
                readonly_paths=readonly_paths,
                writable_paths=writable_paths,
                watch_interval=watch_interval,
                kill_grace=kill_grace,
                tool=tool,
            )
            problem = await sandbox.probe()
            if problem is None:
                return sandbox
            failures.append(f"{kind}: {problem}")
        raise SandboxUnavailable(
            "the step sandbox does not work on this machine ("
            + "; ".join(failures)
            + "). Install bubblewrap (apt-get install bubblewrap) and allow unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 23.10+ also "
            "kernel.apparmor_restrict_unprivileged_userns=0; in a container see the worker README), "
            "or set FORGE_STEP_SANDBOX=none to run steps unsandboxed, with the worker's privileges "
            "(never with untrusted code)"
        )

    async def probe(self) -> str | None:
        """Run ``true`` in the sandbox (network off, as strict as it gets); the error or None."""
        if self.kind == "none":
            return None
        base = Path(tempfile.mkdtemp(prefix="probe-", dir=self.work_dir))
        probe = Workspace(base, self.user)
        try:
            probe.path.mkdir()
            probe.root.mkdir()
            if self.user is not None:
                _chown_tree(base, self.user)
            output = bytearray()
            limits = Limits(memory=1 << 30, processes=64, timeout=30.0, network=False)
            outcome = await run_sandboxed(self, ["true"], probe, ".", {"PATH": _DEFAULT_PATH}, limits, output.extend)
        except OSError as exc:
            return str(exc)
        finally:
            probe.remove()
        if outcome.exit_code != 0:
            text = output.decode(errors="replace").strip().splitlines()
            return (text[-1] if text else f"exit code {outcome.exit_code}")[:300]
        return None

    def warning(self) -> bytes:
        """The first line of every step log when there is no sandbox."""
        if self.kind != "none":
            return b""
        return (
            b"[forge: WARNING: FORGE_STEP_SANDBOX=none: this step runs without a sandbox, with the "
            b"worker's user, files and network; do not run untrusted code on this worker]\n"
        )

    # Over 60 lines on purpose: two command lines (unshare, bubblewrap) spelled out flag by flag,
    # in the order the tools apply them; split, the order would have to be read across functions.
    def wrap(self, argv: list[str], workspace: Workspace, cwd: str, limits: Limits) -> list[str]:
        """The command line that runs ``argv`` in the sandbox (``cwd`` relative to the workspace)."""
        if self.kind == "none":
            return argv
        if self.kind == "unshare":
            return [
                self.tool,
                "--user",
                "--map-root-user",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--propagation",
                "private",
                "--ipc",
                "--uts",
                *([] if limits.network else ["--net"]),
                "--",
                "/bin/sh",
                "-c",
                _UNSHARE_SETUP,
                "forge-sandbox",
                str(workspace.root),
                str(workspace.path),
                cwd,
                str(limits.processes),
                ":".join(self.readonly_paths),
                ":".join(self.writable_paths),
                *argv,
            ]
        command = [
            self.tool,
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            *([] if limits.network else ["--unshare-net"]),
            "--die-with-parent",
            "--ro-bind",
            "/usr",
            "/usr",
            "--ro-bind",
            "/etc",
            "/etc",
        ]
        for name in _SYSTEM_LINKS:
            path = Path("/") / name
            if path.is_symlink():
                command += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                command += ["--ro-bind", str(path), str(path)]
        command += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",  # noqa: S108 - the sandbox's own tmpfs
            "--tmpfs",
            "/home",
            "--dir",
            HOME,
        ]
        # After /tmp and /home: an extra path may be below them.
        for path_text in self.readonly_paths:
            command += ["--ro-bind-try", path_text, path_text]
        for path_text in self.writable_paths:
            command += ["--bind-try", path_text, path_text]
        command += [
            "--bind",
            str(workspace.path),
            WORKSPACE,
            "--chdir",
            f"{WORKSPACE}/{cwd}".rstrip("/.") if cwd not in ("", ".") else WORKSPACE,
            "--hostname",
            "forge-step",
            "--",
            # RLIMIT_NPROC set inside the namespace: counted for this sandbox alone.
            "prlimit",
            f"--nproc={limits.processes}",
            *argv,
        ]
        return command


_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _descendants(pid: int) -> list[int]:
    """``pid``'s descendants (orphans in a PID namespace are re-parented inside it)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    children = [int(c) for c in fh.read().split()]
            except OSError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


def _usage(pids: list[int]) -> tuple[int, int]:
    """Resident bytes and tasks (threads count towards RLIMIT_NPROC) of ``pids``."""
    resident = tasks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                resident += int(fh.read().split()[1]) * _PAGE
            tasks += len(os.listdir(f"/proc/{pid}/task"))
        except (OSError, ValueError, IndexError):
            continue
    return resident, tasks


class _Reader:
    """Copies a command's output to a sink, timing what is not spent in the sink.

    After the command ended, a background process that escaped its group may still hold the
    pipe open: reading stops after ``grace`` seconds of reading. Time in the sink does not count
    (it has its own bound: a log upload waiting for S3 to come back), so nothing the command
    printed before it ended is dropped because the sink was slow.
    """

    def __init__(self, stdout: asyncio.StreamReader, sink: LogSink) -> None:
        self.stdout = stdout
        self.sink = sink
        self._sinking_since: float | None = None
        self._in_sink = 0.0

    async def run(self) -> None:
        while chunk := await self.stdout.read(65536):
            await self.feed(chunk)

    async def feed(self, chunk: bytes) -> None:
        self._sinking_since = time.monotonic()
        try:
            result = self.sink(chunk)
            if inspect.isawaitable(result):
                await result
        finally:
            self._in_sink += time.monotonic() - self._sinking_since
            self._sinking_since = None

    def sink_seconds(self) -> float:
        now = time.monotonic()
        return self._in_sink + (now - self._sinking_since if self._sinking_since is not None else 0.0)

    async def finish(self, task: asyncio.Task[None], grace: float) -> None:
        """Wait for ``task`` (running :meth:`run`) until it has read for ``grace`` seconds more."""
        ended, in_sink = time.monotonic(), self.sink_seconds()
        while not task.done():
            await asyncio.wait({task}, timeout=grace / 4)
            reading = (time.monotonic() - ended) - (self.sink_seconds() - in_sink)
            if not task.done() and reading >= grace:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return
        task.result()


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# Over 60 lines on purpose: the reader, the limit watch and the timeout/cancel wait are closures
# over one process; apart they would pass all of it around.
async def run_sandboxed(
    sandbox: Sandbox,
    command: list[str],
    workspace: Workspace,
    cwd: str,
    env: Mapping[str, str],
    limits: Limits,
    log_sink: LogSink,
    *,
    cancel: asyncio.Event | None = None,
    on_start: Callable[[int], None] | None = None,
    on_end: Callable[[int], None] | None = None,
) -> SandboxOutcome:
    """Run ``command`` in ``sandbox`` with ``workspace`` at ``/workspace`` (working directory
    ``cwd`` inside it) and exactly ``env``; its output (stdout and stderr) goes to ``log_sink``
    as it comes (awaited when it returns an awaitable), followed by a ``[forge: ...]`` line when a limit or ``cancel`` stopped it.

    The whole sandbox is gone when this returns: background processes included.
    ``on_start``/``on_end`` get the process group (for crash clean-up records).
    """
    started = time.monotonic()
    clean_env = dict(env)
    clean_env.setdefault("PATH", _DEFAULT_PATH)
    clean_env.setdefault("HOME", HOME if sandbox.kind != "none" else str(workspace.path))
    workdir = workspace.path / cwd if sandbox.kind == "none" else Path("/")
    argv = sandbox.wrap(command, workspace, cwd, limits)
    if sandbox.user is not None and sandbox.kind != "none":
        # setpriv rather than Popen(user=...): that would make Python fork the whole worker
        # instead of vfork (measured: ~4 ms more per step).
        uid, gid = sandbox.user
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(workdir),
        env=clean_env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    pgid = proc.pid
    if on_start is not None:
        on_start(pgid)
    assert proc.stdout is not None
    output = _Reader(proc.stdout, log_sink)
    stopped: list[bytes] = []

    async def watch() -> str:
        """Poll the sandbox's memory and process count; the limit it reached."""
        while True:
            await asyncio.sleep(sandbox.watch_interval)
            # unshare(1) moves itself into the user namespace it creates (so the kernel counts
            # it); bwrap's first process stays outside.
            inside = _descendants(proc.pid)
            resident, tasks = _usage([proc.pid, *inside] if sandbox.kind == "unshare" else inside)
            if resident > limits.memory:
                stopped.append(
                    b"\n[forge: step killed: memory limit of %s exceeded (it used %s)]\n"
                    % (format_bytes(limits.memory).encode(), format_bytes(resident).encode())
                )
                return "memory"
            if sandbox.kind != "none" and tasks >= limits.processes:
                stopped.append(
                    b"\n[forge: step killed: process limit of %d reached (processes = %d)]\n"
                    % (limits.processes, limits.processes)
                )
                return "processes"

    async def read() -> None:
        if sandbox.kind == "none":
            await output.feed(sandbox.warning())
        await output.run()

    reader = asyncio.create_task(read())
    waiter = asyncio.create_task(proc.wait())
    watcher = asyncio.create_task(watch())
    waits: set[asyncio.Future[object]] = {waiter, watcher}  # type: ignore[arg-type]
    canceller = asyncio.create_task(cancel.wait()) if cancel is not None else None
    if canceller is not None:
        waits.add(canceller)  # type: ignore[arg-type]
    limit: str | None = None
    cancelled = False
    try:
        done, _ = await asyncio.wait(waits, timeout=limits.timeout, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            if watcher in done:
                limit = watcher.result()
                _kill_group(pgid, signal.SIGKILL)
            else:
                if canceller is not None and canceller in done:
                    cancelled = True
                    stopped.append(b"\n[forge: step cancelled]\n")
                else:
                    limit = "timeout"
                    stopped.append(
                        b"\n[forge: step killed: timed out after %ds (its timeout limit)]\n"
                        % round(limits.timeout or 0)
                    )
                _kill_group(pgid, signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), sandbox.kill_grace)
        # Whatever is left of the group (background jobs, a process ignoring SIGTERM) goes; in a
        # sandbox its PID namespace went with its first process already.
        _kill_group(pgid, signal.SIGKILL)
        await waiter
        await output.finish(reader, 2.0)
    finally:
        watcher.cancel()
        if not reader.done():
            reader.cancel()
        if canceller is not None:
            canceller.cancel()
        if not waiter.done():
            _kill_group(pgid, signal.SIGKILL)
        if on_end is not None:
            on_end(pgid)
    for line in stopped:
        await output.feed(line)
    code = proc.returncode if proc.returncode is not None else -9
    if code < 0:
        code = 128 - code
    if limit == "timeout":
        code = 124
    elif limit is not None and code == 0:
        code = 137
    return SandboxOutcome(exit_code=code, limit=limit, cancelled=cancelled, duration=time.monotonic() - started)
