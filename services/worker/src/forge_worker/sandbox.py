"""The step sandbox: every step (and every command another job type runs on a repository's
behalf) runs in its own user, PID, mount, IPC and UTS namespaces (and network namespace with
``network = false``), with a root file system of its own, a clean environment and limits.

Two tools build it, both maintained and found on ordinary Linux machines:

- ``bwrap`` (bubblewrap, what Flatpak uses): preferred;
- ``unshare`` from util-linux (present on every Linux userland) plus ``mount``, ``pivot_root``
  and ``setpriv`` from the same package: the fallback when bubblewrap is not installed.

What a sandboxed command sees: ``/usr``, ``/etc`` and the ``/bin``/``/lib`` links read-only (plus
``FORGE_STEP_READONLY_PATHS``; ``FORGE_STEP_WRITABLE_PATHS`` read-write, e.g. a shared cache), a fresh ``/proc`` of its own PID namespace, a private ``/tmp``
and ``/dev/shm``, ``$HOME`` (``/home/forge``) on a tmpfs, and ``/workspace``: the job's own
writable view of the checkout (:class:`Workspace`: an overlay over the shared checkout when the
worker runs as root, else a copy). The git cache, the data directory, other jobs' workspaces
and the worker's environment are not there. When the worker runs as root, commands run as
``FORGE_STEP_USER`` (``nobody``), never as root.

With bubblewrap the commands of one job share one sandbox by default (:class:`TaskSandbox`,
``FORGE_STEP_SANDBOX_SCOPE=task``): a new mount namespace costs 15-30 ms of wall time on a
loaded machine (docs/performance.md), a step in an existing sandbox ~3 ms. What a step leaves
running is killed when it ends. A worker keeps ``FORGE_STEP_WARM_SANDBOXES`` task sandboxes
started ahead of their tasks (:class:`WarmPool`), so that a task's first step does not wait for
one either. Job directories are claimed with a lock file (:func:`claim_job_dir`) so that
:func:`sweep_stale` can remove what a killed worker left.

Limits (:class:`Limits`): ``processes`` is ``RLIMIT_NPROC`` set inside the sandbox's own user
namespace (the kernel counts it per namespace, so a fork bomb stops there); ``memory`` is the
resident memory of all the sandbox's processes, watched by the worker every
``FORGE_STEP_WATCH_INTERVAL``; ``timeout`` is wall-clock time. Reaching a limit kills the whole
sandbox (its PID namespace goes with its first process) and the log's last line names the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import inspect
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import stat
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
    "WarmPool",
    "Workspace",
    "format_bytes",
    "run_sandboxed",
]

log = structlog.get_logger(__name__)

SandboxKind = Literal["bwrap", "unshare", "none"]
WorkspaceKind = Literal["overlay", "copy"]
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
    """A job's writable view of the checkout, in a directory only the step user can enter.

    ``path`` is mounted at ``/workspace``; ``root`` is the empty directory the unshare backend
    mounts the sandbox's root on. The job directory ``base`` is claimed with a lock file held
    while the job runs (:func:`claim_job_dir`), so :func:`sweep_stale` can tell a live job's
    directory from one a killed worker left behind. All of it goes in :meth:`remove`.

    Two ways to make it (``Sandbox.workspace``): ``overlay`` (a worker running as root): an
    overlay mount with the shared checkout as its read-only lower layer and an empty upper
    directory of the job's, a constant cost however large the checkout; ``copy``: ``cp -a``.
    """

    def __init__(
        self,
        base: Path,
        owner: tuple[int, int] | None,
        path: Path | None = None,
        lock_fd: int | None = None,
    ) -> None:
        self.base = base
        self.path = path or base / "workspace"
        self.root = base / "root"
        self.owner = owner
        self.owned = path is None
        self.lock_fd = lock_fd
        self.mounted = False
        # ``path`` bound on itself (a warm workspace, :meth:`warmed`): unmounted after the overlay.
        self.bound = False
        # Called when its first step ends (a warm workspace's pool refills then: WarmPool.take).
        self.after_first_step: Callable[[], None] | None = None
        # By network setting: the sandboxes its commands share (FORGE_STEP_SANDBOX_SCOPE=task).
        self.task_sandboxes: dict[bool, TaskSandbox] = {}

    @classmethod
    def shared(cls, checkout: Path) -> Workspace:
        """The shared checkout itself, for ``FORGE_STEP_SANDBOX=none`` (no isolation anyway)."""
        return cls(checkout, None, path=checkout)

    @classmethod
    async def for_sandbox(cls, sandbox: Sandbox, checkout: Path, warm: bool = True) -> Workspace:
        """What a job's commands run in: a private view of ``checkout`` (an overlay where the
        worker may mount one, else a copy), or without a sandbox the checkout itself. ``warm``:
        whether a warm sandbox may be taken (they have the network on: a job whose commands all
        run without it would leave one idle)."""
        if sandbox.kind == "none":
            return cls.shared(checkout)
        if sandbox.warm is not None and warm:
            taken = await sandbox.warm.take(checkout)
            if taken is not None:
                return taken
        if sandbox.workspace == "overlay":
            return await asyncio.to_thread(cls.overlay_of, checkout, sandbox.work_dir, sandbox.user)
        return await cls.copy_of(checkout, sandbox.work_dir, sandbox.user)

    @classmethod
    def claimed(cls, parent: Path, owner: tuple[int, int] | None, prefix: str = "job-") -> Workspace:
        base, lock_fd = claim_job_dir(parent, prefix)
        return cls(base, owner, lock_fd=lock_fd)

    @classmethod
    def overlay_of(cls, source: Path, parent: Path, owner: tuple[int, int] | None) -> Workspace:
        """An overlay of ``source`` (read-only lower layer) and an empty upper directory: what
        steps write lands in the upper directory, ``source`` never changes. ``source`` is
        handed to the step user first (once per checkout), so steps may modify its files as
        they may a copy's; its ``.git`` file (pointing into the git cache) is hidden."""
        workspace = cls._empty(parent, owner, overlay=True)
        try:
            workspace._mount_checkout(source)
        except BaseException:
            workspace.remove()
            raise
        return workspace

    @classmethod
    def _empty(cls, parent: Path, owner: tuple[int, int] | None, *, overlay: bool, bind: bool = False) -> Workspace:
        """A claimed job directory with an empty ``path`` (and an overlay's upper and work
        directories), the step user's; ``bind``: ``path`` made a shared mount of its own."""
        workspace = cls.claimed(parent, owner)
        try:
            upper, work = workspace.base / "upper", workspace.base / "overlay-work"
            for directory in (workspace.root, workspace.path, *((upper, work) if overlay else ())):
                directory.mkdir()
            if owner is not None:
                for directory in (workspace.root, workspace.path, *((upper,) if overlay else ()), workspace.base):
                    os.chown(directory, *owner)
            os.chmod(workspace.base, 0o700)
            if bind:
                _bind_shared(workspace.path)
                workspace.bound = True
        except BaseException:
            workspace.remove()
            raise
        return workspace

    def _mount_checkout(self, source: Path) -> None:
        """The overlay of ``source`` and the empty upper directory, mounted on ``path``."""
        upper, work = self.base / "upper", self.base / "overlay-work"
        if os.path.lexists(source / ".git"):
            os.mknod(upper / ".git", stat.S_IFCHR, os.makedev(0, 0))  # an overlay whiteout
        os.chmod(upper, stat.S_IMODE(os.stat(source).st_mode))
        if self.owner is not None:
            _give_tree(source, self.owner)
        _mount_overlay(source, upper, work, self.path)
        self.mounted = True

    @classmethod
    async def copy_of(cls, source: Path, parent: Path, owner: tuple[int, int] | None) -> Workspace:
        workspace = cls.claimed(parent, owner)
        try:
            workspace.root.mkdir()
            await workspace._copy_checkout(source)
        except BaseException:
            workspace.remove()
            raise
        return workspace

    async def _copy_checkout(self, source: Path) -> None:
        """``source`` copied to ``path`` (made, or into it when it exists), the step user's."""
        # cp -a: the tree as it is (modes, links, timestamps); reflinks where the file
        # system has them. The checkout's .git file points into the git cache: left out.
        proc = await asyncio.create_subprocess_exec(
            "cp",
            "-a",
            "--reflink=auto",
            f"{source}/.",
            str(self.path),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise OSError(f"cannot copy the checkout: {err.decode(errors='replace').strip()[:300]}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / ".git")
        if self.owner is not None:
            await asyncio.to_thread(_chown_tree, self.base, self.owner)
        else:
            os.chmod(self.base, 0o700)

    @classmethod
    async def warmed(cls, sandbox: Sandbox) -> Workspace:
        """An empty workspace whose task sandbox (network on) is already started, for
        :class:`WarmPool`; :meth:`fill` puts the checkout in it when its task comes. For an
        overlay, ``path`` is first bound on itself and marked shared: bubblewrap makes the
        sandbox's mounts slaves of the host's, so the overlay mounted on ``path`` later, on the
        host, appears at the sandbox's ``/workspace``. A copy needs nothing of the kind: it is
        written into the very directory the sandbox has."""
        overlay = sandbox.workspace == "overlay"
        workspace = await asyncio.to_thread(cls._empty, sandbox.work_dir, sandbox.user, overlay=overlay, bind=overlay)
        try:
            workspace.task_sandboxes[True] = await TaskSandbox.start(sandbox, workspace, True)
        except BaseException:
            workspace.remove()  # not in a thread: this may be a cancel, which must not wait
            raise
        return workspace

    async def fill(self, source: Path) -> None:
        """Put ``source`` (the task's checkout) in this warm workspace: the overlay mounted on
        ``path``, else a copy. The mount is a few system calls, made on the event loop (a
        thread hop costs more on a busy machine) unless the checkout is still to be handed to
        the step user (a walk of the whole tree)."""
        if not self.bound:
            await self._copy_checkout(source)
        elif self.owner is None or os.stat(source).st_uid == self.owner[0]:
            self._mount_checkout(source)
        else:
            await asyncio.to_thread(self._mount_checkout, source)

    def warm_alive(self) -> bool:
        """Its warm task sandbox still runs (not even a zombie the event loop has yet to reap)."""
        task = self.task_sandboxes.get(True)
        return task is not None and task.alive and _running(task.proc.pid)

    async def step_in_task_sandbox(
        self, sandbox: Sandbox, argv: list[str], cwd: str, env: Mapping[str, str], limits: Limits
    ) -> _Step | None:
        """``argv`` started in this workspace's task sandbox for ``limits.network`` (started
        first if need be); None when it must run in a sandbox of its own."""
        task = self.task_sandboxes.get(limits.network)
        if task is None or not task.alive:
            try:
                task = await TaskSandbox.start(sandbox, self, limits.network)
            except OSError as exc:
                log.warning("sandbox.task_sandbox_unavailable", error=str(exc), detail="one sandbox per step from now")
                sandbox.scope = "step"
                return None
            self.task_sandboxes[limits.network] = task
        step = await task.step(argv, cwd, env, limits)
        if step is not None and self.after_first_step is not None:
            step.exited.add_done_callback(lambda _: self._first_step_ended())
        return step

    def _first_step_ended(self) -> None:
        callback, self.after_first_step = self.after_first_step, None
        if callback is not None:
            callback()

    async def release(self) -> None:
        """Stop its task sandboxes, then :meth:`remove` it (in a thread)."""
        for task in self.task_sandboxes.values():
            await task.close()
        self.task_sandboxes.clear()
        await asyncio.to_thread(self.remove)

    def remove(self) -> None:
        if not self.owned:
            return
        for task in self.task_sandboxes.values():
            task.kill()
        if self.mounted:
            _unmount(self.path)
            self.mounted = False
        if self.bound:
            _unmount(self.path)
            self.bound = False
        _remove_job_dir(self.base, self.lock_fd)
        self.lock_fd = None


def _chown_tree(base: Path, owner: tuple[int, int]) -> None:
    uid, gid = owner
    os.chown(base, uid, gid)
    base.chmod(0o700)
    for directory, dirs, files in os.walk(base):
        for name in (*dirs, *files):
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)


def _give_tree(checkout: Path, owner: tuple[int, int]) -> None:
    """Hand a shared checkout to the step user, once: the overlay checks a step's writes
    against the lower layer's owners, as a copy's would be. Its top directory last, so that
    its owner says the whole tree is done (concurrent callers do the same work, harmlessly).
    Steps never see the checkout itself, only the overlay over it."""
    uid, gid = owner
    if os.stat(checkout).st_uid == uid:
        return
    for directory, dirs, files in os.walk(checkout):
        for name in (*dirs, *files):
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)
    os.chown(checkout, uid, gid)


# Job directories: claimed with a lock file, swept when no live worker holds the lock.

_JOB_NAME = re.compile(r"(job|probe)-[0-9a-f]{16}")


def claim_job_dir(parent: Path, prefix: str) -> tuple[Path, int]:
    """A new directory ``<parent>/<prefix><random>`` and the open descriptor of its lock
    file ``<name>.lock``, locked (``flock``) for as long as the job runs. The lock exists before
    the directory, so a sweeper never finds the directory unlocked while its job is alive;
    a lock file a sweeper unlinked in between is noticed and a new name taken."""
    while True:
        name = f"{prefix}{secrets.token_hex(8)}"
        lock = parent / f"{name}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _still_linked(lock, fd):
            break
        os.close(fd)
    base = parent / name
    try:
        base.mkdir(mode=0o700)
    except BaseException:
        _remove_job_dir(base, fd)
        raise
    return base, fd


def _still_linked(lock: Path, fd: int) -> bool:
    try:
        return os.stat(lock).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _remove_job_dir(base: Path, lock_fd: int | None, *, unmount: bool = False) -> None:
    if unmount:
        _unmount_below(base)
    shutil.rmtree(base, ignore_errors=True)
    if lock_fd is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{base}.lock")
        os.close(lock_fd)


def sweep_stale(work_dir: Path) -> int:
    """Remove the job directories under ``work_dir`` that no live worker holds (a worker
    killed mid-job leaves its workspace behind), and their lock files; how many went. Safe
    with several workers sharing ``work_dir``: a live job's lock is held by its worker until
    the directory is gone, and the kernel releases it when that worker dies."""
    removed = 0
    try:
        entries = list(os.scandir(work_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        name = entry.name.removesuffix(".lock")
        if not _JOB_NAME.fullmatch(name):
            continue  # not a claimed job directory (nor one an older worker made: left alone)
        if entry.name.endswith(".lock") and os.path.lexists(work_dir / name):
            continue  # swept with its directory
        lock = work_dir / f"{name}.lock"
        try:
            # Never created here: a directory without its lock file is not ours to judge.
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live job
        if not _still_linked(lock, fd):
            os.close(fd)
            continue
        removed += os.path.isdir(work_dir / name)
        _remove_job_dir(work_dir / name, fd, unmount=True)
    return removed


# Overlay mounts (a worker running as root): mount(2) and umount2(2) through libc.

_libc = ctypes.CDLL(None, use_errno=True)
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_SHARED = 0x2, 0x4, 0x1000, 1 << 20
_MNT_DETACH = 0x2
_OCTAL = re.compile(rb"\\([0-7]{3})")


def _overlay_path(path: Path) -> str:
    # overlayfs splits its options at "," and lower directories at ":"; "\\" escapes both.
    return str(path).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    # redirect_dir=on: a step may rename a directory of the checkout, as in a copy.
    options = (
        f"lowerdir={_overlay_path(lower)},upperdir={_overlay_path(upper)},workdir={_overlay_path(work)},redirect_dir=on"
    )
    if _libc.mount(b"forge-workspace", os.fsencode(target), b"overlay", _MS_NOSUID | _MS_NODEV, options.encode()):
        error = ctypes.get_errno()
        raise OSError(error, f"cannot mount the workspace overlay: {os.strerror(error)}")


def _bind_shared(path: Path) -> None:
    """``path`` bound on itself and made a shared mount (``mount --bind P P; mount --make-shared
    P``): what is mounted on it later propagates to the sandboxes that have it (as slaves)."""
    target = os.fsencode(path)
    if _libc.mount(target, target, None, _MS_BIND, None):
        error = ctypes.get_errno()
        raise OSError(error, f"cannot bind {path} on itself: {os.strerror(error)}")
    if _libc.mount(None, target, None, _MS_SHARED, None):
        error = ctypes.get_errno()
        _unmount(path)
        raise OSError(error, f"cannot make {path} a shared mount: {os.strerror(error)}")


def _unmount(target: Path) -> None:
    if _libc.umount2(os.fsencode(target), _MNT_DETACH):
        error = ctypes.get_errno()
        if error not in (errno.EINVAL, errno.ENOENT):  # not mounted, gone
            raise OSError(error, f"cannot unmount {target}: {os.strerror(error)}")


def _unmount_below(base: Path) -> None:
    """Detach whatever is mounted at or below ``base`` (a killed worker's overlays)."""
    prefix = f"{base}/"
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            # The mount point is the fifth field; space, tab, newline and backslash come octal-escaped.
            points = [os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m[1], 8)]), line.split()[4])) for line in fh]
    except OSError:
        return
    inside = [p for p in points if p.startswith(prefix) or p == str(base)]
    for point in sorted(inside, key=len, reverse=True):
        with contextlib.suppress(OSError):
            _unmount(Path(point))


def overlay_works(work_dir: Path, owner: tuple[int, int] | None) -> str | None:
    """Why an overlay workspace cannot be made here (None: it can), after a trial mount."""
    if owner is None or os.geteuid() != 0:
        return "the worker is not root (overlay mounts need it)"
    probe = Workspace.claimed(work_dir, None, "probe-")
    try:
        source = probe.base / "checkout"
        source.mkdir()
        (source / "file").write_text("probe\n")
        workspace = Workspace.overlay_of(source, work_dir, owner)
        try:
            if (workspace.path / "file").read_text() != "probe\n":
                return "the overlay does not show its lower layer"
        finally:
            workspace.remove()
    except OSError as exc:
        return str(exc)
    finally:
        probe.remove()
    return None


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


_SANDBOX_HELP = (
    "Install bubblewrap (apt-get install bubblewrap) and allow unprivileged user namespaces "
    "(sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 23.10+ also "
    "kernel.apparmor_restrict_unprivileged_userns=0; in a container see the worker README), "
    "or set FORGE_STEP_SANDBOX=none to run steps unsandboxed, with the worker's privileges "
    "(never with untrusted code)"
)


def _sandbox_kinds(setting: str) -> list[SandboxKind]:
    """The sandboxes ``FORGE_STEP_SANDBOX`` allows, in the order they are tried."""
    if setting == "auto":
        return ["bwrap", "unshare"]
    if setting in ("bwrap", "unshare", "none"):
        return [setting]  # type: ignore[list-item]
    raise SandboxUnavailable(f'FORGE_STEP_SANDBOX must be "auto", "bwrap", "unshare" or "none", got {setting!r}')


def _workspace_kind(workspace: str, setting: str, work_dir: Path, user: tuple[int, int] | None) -> WorkspaceKind:
    """``FORGE_STEP_WORKSPACE``: an overlay where asked for (or, with ``auto``, where a trial
    mount works), else a copy."""
    if workspace == "copy" or setting == "none":
        return "copy"
    problem = overlay_works(work_dir, user)
    if problem is None:
        return "overlay"
    if workspace == "overlay":
        raise SandboxUnavailable(f"FORGE_STEP_WORKSPACE=overlay: {problem}")
    return "copy"


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
        workspace: WorkspaceKind = "copy",
        scope: str = "task",
    ) -> None:
        self.kind = kind
        self.workspace = workspace
        # "task": the commands of a workspace share one sandbox (bubblewrap); "step": each its own.
        self.scope = scope
        self.work_dir = work_dir
        self.user = user
        self.readonly_paths = tuple(p for p in readonly_paths if p.startswith("/") and p != "/")
        self.writable_paths = tuple(p for p in writable_paths if p.startswith("/") and p != "/")
        self.watch_interval = watch_interval
        self.kill_grace = kill_grace
        self.tool = tool or kind
        # Task sandboxes started ahead of their tasks (FORGE_STEP_WARM_SANDBOXES), when the worker keeps some.
        self.warm: WarmPool | None = None

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
        workspace: str = "auto",
        scope: str = "task",
    ) -> Sandbox:
        """The sandbox named by ``FORGE_STEP_SANDBOX`` (``auto``: bwrap, else unshare), after a
        trial command in it; :class:`SandboxUnavailable` when the kernel or the tools refuse.
        ``workspace`` (``FORGE_STEP_WORKSPACE``): ``auto`` (an overlay where a trial mount
        works, else a copy), ``overlay`` or ``copy``."""
        user = _step_user(user_name)
        if user is not None and setting != "none":
            _check_reachable(work_dir)
        os.makedirs(work_dir, exist_ok=True)
        os.chmod(work_dir, 0o711)  # noqa: S103 - the step user enters its own workspace, lists nothing
        workspace_kind = _workspace_kind(workspace, setting, work_dir, user)
        failures: list[str] = []
        for kind in _sandbox_kinds(setting):
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
                workspace=workspace_kind,
                scope=scope,
            )
            problem = await sandbox.probe()
            if problem is None:
                return sandbox
            failures.append(f"{kind}: {problem}")
        raise SandboxUnavailable(
            "the step sandbox does not work on this machine (" + "; ".join(failures) + "). " + _SANDBOX_HELP
        )

    async def probe(self) -> str | None:
        """Run ``true`` in the sandbox (network off, as strict as it gets); the error or None."""
        if self.kind == "none":
            return None
        probe = Workspace.claimed(self.work_dir, self.user, "probe-")
        try:
            probe.path.mkdir()
            probe.root.mkdir()
            if self.user is not None:
                _chown_tree(probe.base, self.user)
            output = bytearray()
            limits = Limits(memory=1 << 30, processes=64, timeout=30.0, network=False)
            outcome = await run_sandboxed(self, ["true"], probe, ".", {"PATH": _DEFAULT_PATH}, limits, output.extend)
        except OSError as exc:
            return str(exc)
        finally:
            await probe.release()
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
    def wrap(
        self,
        argv: list[str],
        workspace: Workspace,
        cwd: str,
        limits: Limits,
        *,
        nproc: bool = True,
        binds: tuple[tuple[str, str], ...] = (),
        as_pid_1: bool = False,
    ) -> list[str]:
        """The command line that runs ``argv`` in the sandbox (``cwd`` relative to the workspace).

        ``nproc=False`` leaves ``RLIMIT_NPROC`` to ``argv`` (a task sandbox's runner sets it per
        step); ``binds`` (bubblewrap only) adds writable directories."""
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
        for source, target in binds:
            command += ["--bind", source, target]
        command += [
            "--bind",
            str(workspace.path),
            WORKSPACE,
            "--chdir",
            inside_path(cwd),
            "--hostname",
            "forge-step",
            *(["--as-pid-1"] if as_pid_1 else []),
            "--",
        ]
        # RLIMIT_NPROC set inside the namespace: counted for this sandbox alone.
        return [*command, "prlimit", f"--nproc={limits.processes}", *argv] if nproc else [*command, *argv]


def inside_path(cwd: str) -> str:
    """Where ``cwd`` (relative to the workspace) is inside the sandbox."""
    return f"{WORKSPACE}/{cwd}".rstrip("/.") if cwd not in ("", ".") else WORKSPACE


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


def _running(pid: int) -> bool:
    """``pid`` exists and has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b") ", 1)[1][:1] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Step:
    """One running command as :func:`_supervise` sees it: an exit to wait for, its output, the
    processes whose memory and number count, and how to stop them."""

    def __init__(self, output: asyncio.StreamReader, exited: asyncio.Task[int | None], pgid: int) -> None:
        self.output = output
        self.exited = exited
        self.pgid = pgid  # what a crashed worker's successor kills (steps.ProcessTable)

    def counted(self) -> list[int]:
        raise NotImplementedError

    def terminate(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    async def gone(self) -> int | None:
        """After :meth:`kill` (or the exit): until nothing of it is left; its exit code if known."""
        raise NotImplementedError

    def close(self) -> None:
        """Its output is read (or given up on)."""


class _FreshStep(_Step):
    """A command in a sandbox of its own: the sandbox goes with the command's first process."""

    def __init__(self, proc: asyncio.subprocess.Process, kind: SandboxKind) -> None:
        assert proc.stdout is not None
        super().__init__(proc.stdout, asyncio.create_task(proc.wait()), proc.pid)
        self.proc = proc
        self.kind = kind

    def counted(self) -> list[int]:
        # unshare(1) moves itself into the user namespace it creates (so the kernel counts it);
        # bwrap's first process stays outside.
        inside = _descendants(self.proc.pid)
        return [self.proc.pid, *inside] if self.kind == "unshare" else inside

    def terminate(self) -> None:
        _kill_group(self.proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        _kill_group(self.proc.pid, signal.SIGKILL)

    async def gone(self) -> int | None:
        # Whatever is left of the group (background jobs, a process ignoring SIGTERM) goes; in a
        # sandbox its PID namespace went with its first process already.
        self.kill()
        return await self.exited


def _exit_code(code: int | None, limit: str | None) -> int:
    code = code if code is not None else -9
    if code < 0:
        code = 128 - code
    if limit == "timeout":
        return 124
    if limit is not None and code == 0:
        return 137
    return code


def _limit_reached(step: _Step, limits: Limits, kind: SandboxKind) -> bytes | None:
    """The log line naming the limit ``step`` is over, if any."""
    resident, tasks = _usage(step.counted())
    if resident > limits.memory:
        return b"\n[forge: step killed: memory limit of %s exceeded (it used %s)]\n" % (
            format_bytes(limits.memory).encode(),
            format_bytes(resident).encode(),
        )
    if kind != "none" and tasks >= limits.processes:
        return b"\n[forge: step killed: process limit of %d reached (processes = %d)]\n" % (
            limits.processes,
            limits.processes,
        )
    return None


async def _deliver(sink: LogSink, data: bytes) -> None:
    result = sink(data)
    if inspect.isawaitable(result):
        await result


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
            await _deliver(self.sink, chunk)
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


# Over 60 lines on purpose: the limit watch and the timeout/cancel wait are closures over one
# step; apart they would pass all of it around.
async def _supervise(
    sandbox: Sandbox,
    step: _Step,
    limits: Limits,
    log_sink: LogSink,
    cancel: asyncio.Event | None,
) -> tuple[int, str | None, bool]:
    """Until ``step`` ends (or a limit, its timeout or ``cancel`` ends it): its exit code, the
    limit that ended it and whether it was cancelled. Its output goes to ``log_sink``, then the
    ``[forge: ...]`` line saying what stopped it."""
    stopped: list[bytes] = []
    output = _Reader(step.output, log_sink)

    async def watch() -> str:
        """Poll the sandbox's memory and process count; the limit it reached."""
        while True:
            await asyncio.sleep(sandbox.watch_interval)
            line = _limit_reached(step, limits, sandbox.kind)
            if line is not None:
                stopped.append(line)
                return "memory" if b"memory" in line else "processes"

    reader = asyncio.create_task(output.run())
    watcher = asyncio.create_task(watch())
    waits: set[asyncio.Future[object]] = {step.exited, watcher}  # type: ignore[arg-type]
    canceller = asyncio.create_task(cancel.wait()) if cancel is not None else None
    if canceller is not None:
        waits.add(canceller)  # type: ignore[arg-type]
    limit: str | None = None
    cancelled = False
    try:
        done, _ = await asyncio.wait(waits, timeout=limits.timeout, return_when=asyncio.FIRST_COMPLETED)
        if step.exited not in done:
            if watcher in done:
                limit = watcher.result()
                step.kill()
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
                step.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(step.exited), sandbox.kill_grace)
        code = await step.gone()
        await output.finish(reader, 2.0)
    finally:
        watcher.cancel()
        if not reader.done():
            reader.cancel()
        if canceller is not None:
            canceller.cancel()
        if not step.exited.done():
            step.kill()
        step.close()
    for line in stopped:
        await output.feed(line)
    return _exit_code(code, limit), limit, cancelled


def _as_step_user(sandbox: Sandbox, argv: list[str]) -> list[str]:
    if sandbox.user is None or sandbox.kind == "none":
        return argv
    # setpriv rather than Popen(user=...): that would make Python fork the whole worker
    # instead of vfork (measured: ~4 ms more per step).
    uid, gid = sandbox.user
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]


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
    as it comes (awaited when it returns an awaitable), followed by a ``[forge: ...]`` line when
    a limit or ``cancel`` stopped it.

    Nothing of the command is left when this returns: background processes included. With
    ``FORGE_STEP_SANDBOX_SCOPE=task`` (bubblewrap) the commands of one workspace share its
    task sandbox (:class:`TaskSandbox`), else each gets a sandbox of its own.
    ``on_start``/``on_end`` get the process group (for crash clean-up records).
    """
    started = time.monotonic()
    clean_env = dict(env)
    clean_env.setdefault("PATH", _DEFAULT_PATH)
    clean_env.setdefault("HOME", HOME if sandbox.kind != "none" else str(workspace.path))
    step: _Step | None = None
    if sandbox.scope == "task" and sandbox.kind == "bwrap" and workspace.owned:
        step = await workspace.step_in_task_sandbox(sandbox, command, cwd, clean_env, limits)
    if step is None:
        if sandbox.kind == "none":
            await _deliver(log_sink, sandbox.warning())
        proc = await asyncio.create_subprocess_exec(
            *_as_step_user(sandbox, sandbox.wrap(command, workspace, cwd, limits)),
            cwd=str(workspace.path / cwd if sandbox.kind == "none" else "/"),
            env=clean_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        step = _FreshStep(proc, sandbox.kind)
    if on_start is not None:
        on_start(step.pgid)
    try:
        code, limit, cancelled = await _supervise(sandbox, step, limits, log_sink, cancel)
    finally:
        if on_end is not None:
            on_end(step.pgid)
    return SandboxOutcome(exit_code=code, limit=limit, cancelled=cancelled, duration=time.monotonic() - started)


# A task sandbox: one bubblewrap sandbox for the steps of a task (with one network setting).

PIPES = "/run/forge-steps"
# The task sandbox's first command (bash, in its PID namespace behind bwrap's init): runs the
# NUL-terminated snippets the worker writes to its stdin (_step_snippet: every value quoted),
# one at a time; reports on its stdout, which steps never get.
_RUNNER = r"""
exec 2>/dev/null
printf 'ready\n'
while IFS= read -r -d '' snippet; do eval "$snippet"; done
"""
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _step_snippet(fifo: str, argv: list[str], cwd: str, env: Mapping[str, str], processes: int) -> str | None:
    """What the runner evaluates for one step: a subshell with exactly ``env`` (bash adds
    ``_``), ``RLIMIT_NPROC``, the working directory and the step's output on ``fifo``, then
    ``exec`` of the command; None when ``env`` has a name the shell cannot export."""
    if not all(_IDENTIFIER.fullmatch(name) for name in env):
        return None
    q = shlex.quote
    exports = " ".join(f"{name}={q(value)}" for name, value in env.items())
    return (
        f"exec 4>{q(fifo)}\n"
        "(exec 0</dev/null 1>&4 2>&4 4>&-\n"
        " export -n PWD OLDPWD SHLVL; unset PATH HOME\n"
        f" export {exports}\n"
        f" ulimit -u {processes} || exit 125\n"
        f" cd -- {q(cwd)} || exit 126\n"
        f" exec {' '.join(q(a) for a in argv)}) &\n"
        "exec 4>&-\n"
        "printf 'started\\n'\n"
        "wait $!\n"
        "printf 'exit %d\\n' $?\n"
    )


class TaskSandbox:
    """The sandbox the steps of one task share (``FORGE_STEP_SANDBOX_SCOPE=task``): set up once
    (namespaces, mounts, ``/tmp``, ``$HOME``), each step then a child of its runner, with the
    step's own environment, process limit, working directory and log. What a step leaves
    running is killed when it ends; a limit, a timeout or a cancel ends the whole sandbox (the
    next step gets a new one). Steps of one task trust each other as they did sharing the
    workspace; nothing crosses tasks."""

    def __init__(self, sandbox: Sandbox, proc: asyncio.subprocess.Process, pipes: Path) -> None:
        assert proc.stdin is not None
        assert proc.stdout is not None
        self.sandbox = sandbox
        self.proc = proc
        self.pipes = pipes
        self.status = proc.stdout
        self.keep = set(_descendants(proc.pid))  # bwrap's init and the runner

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    @classmethod
    async def start(cls, sandbox: Sandbox, workspace: Workspace, network: bool) -> TaskSandbox:
        pipes = workspace.base / ("pipes" if network else "pipes-offline")
        pipes.mkdir(mode=0o700, exist_ok=True)
        if sandbox.user is not None:
            os.chown(pipes, *sandbox.user)
        limits = Limits(memory=0, processes=0, timeout=None, network=network)
        argv = sandbox.wrap(
            ["bash", "--noprofile", "--norc", "-c", _RUNNER],
            workspace,
            ".",
            limits,
            nproc=False,
            binds=((str(pipes), PIPES),),
            as_pid_1=True,
        )
        proc = await asyncio.create_subprocess_exec(
            *_as_step_user(sandbox, argv),
            cwd="/",
            env={"PATH": _DEFAULT_PATH, "HOME": HOME},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 30.0)
        except TimeoutError:
            line = b"no answer in 30s"
        except BaseException:
            _kill_group(proc.pid, signal.SIGKILL)  # cancelled (a warm-up at the worker's stop)
            raise
        if line != b"ready\n":
            _kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise OSError(f"the task sandbox did not start: {line.decode(errors='replace').strip()[:300]}")
        return cls(sandbox, proc, pipes)

    async def step(self, argv: list[str], cwd: str, env: Mapping[str, str], limits: Limits) -> _Step | None:
        """Start ``argv`` in this sandbox; None when it cannot run here (the caller then gives
        it a sandbox of its own)."""
        fifo = self.pipes / f"step-{secrets.token_hex(6)}"
        snippet = _step_snippet(f"{PIPES}/{fifo.name}", argv, inside_path(cwd), env, limits.processes)
        if snippet is None or not self.alive:
            return None
        os.mkfifo(fifo, 0o600)
        if self.sandbox.user is not None:
            os.chown(fifo, *self.sandbox.user)
        # Our own writer keeps the FIFO from reading as ended until the step holds it.
        read_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        write_fd = os.open(fifo, os.O_WRONLY | os.O_CLOEXEC)
        output = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(output), os.fdopen(read_fd, "rb", 0)
        )
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(snippet.encode() + b"\0")
            await self.proc.stdin.drain()
            # At once, unless an earlier step of the task tampered with its runner.
            started = await asyncio.wait_for(self.status.readline(), 30.0)
        except (ConnectionError, OSError, TimeoutError):
            started = b""
        finally:
            os.close(write_fd)
            os.unlink(fifo)
        if started != b"started\n":
            transport.close()
            await self.close()
            return None
        return _TaskStep(self, output, transport)

    def kill(self) -> None:
        _kill_group(self.proc.pid, signal.SIGKILL)

    async def close(self) -> None:
        self.kill()
        await self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def leftovers(self) -> list[int]:
        """Processes in the sandbox besides bwrap's init and the runner (zombies aside)."""
        return [pid for pid in _descendants(self.proc.pid) if pid not in self.keep and _running(pid)]


class _TaskStep(_Step):
    def __init__(self, task: TaskSandbox, output: asyncio.StreamReader, transport: asyncio.BaseTransport) -> None:
        super().__init__(output, asyncio.create_task(self._exit(task)), task.proc.pid)
        self.task = task
        self.transport = transport

    def close(self) -> None:
        self.transport.close()

    @staticmethod
    async def _exit(task: TaskSandbox) -> int | None:
        line = await task.status.readline()
        if line.startswith(b"exit ") and line[5:].strip().isdigit():
            return int(line[5:])
        task.kill()  # the runner is gone or talks nonsense: so is this sandbox
        return await task.proc.wait()

    def counted(self) -> list[int]:
        return _descendants(self.task.proc.pid)

    def terminate(self) -> None:
        for pid in self.task.leftovers():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)

    def kill(self) -> None:
        self.task.kill()

    async def gone(self) -> int | None:
        if not self.exited.done() or self.task.leftovers():
            # Stopped by a limit, a timeout or a cancel, or it left processes behind: the
            # whole sandbox goes (its PID namespace with them); the next step gets a new one.
            self.task.kill()
            await self.task.proc.wait()
        return await self.exited


# Warm task sandboxes (FORGE_STEP_WARM_SANDBOXES): started while the worker waits for work.

# After a warm-up failed, the next attempt waits this long (and for a task to take from the pool).
_WARM_RETRY = 30.0
# After a take, the refill starts when the task's first step ends, at the latest this much later.
_REFILL_DELAY = 0.05
# At the worker's stop, how long a warm-up under way may take to finish before it is cancelled.
_WARM_CLOSE_WAIT = 5.0


class WarmPool:
    """Task sandboxes started before their tasks arrive, so that a task's first step does not
    wait for bubblewrap's set-up (3.5-5 ms of wall time on an idle machine, 15-30 ms loaded).

    Each is an empty workspace (:meth:`Workspace.warmed`) whose sandbox already has ``path`` at
    ``/workspace``; :meth:`take` puts the task's checkout there (:meth:`Workspace.fill`) and
    hands it to that one task, which releases it as any other: a warm sandbox is never used by
    a second task, so tasks still share nothing (fresh ``/tmp`` and ``$HOME`` each). Only
    bubblewrap task sandboxes with the network on (the default) are kept warm; the rest start on
    demand. The pool refills in the background after every take. Nothing here may fail a job:
    a warm-up that fails is logged and the tasks start their sandboxes on demand meanwhile."""

    def __init__(self, sandbox: Sandbox, size: int) -> None:
        self.sandbox = sandbox
        self.size = size
        self.ready: list[Workspace] = []
        self.closed = False
        self._filling: asyncio.Task[None] | None = None
        self._retry_at = 0.0

    @staticmethod
    def fits(sandbox: Sandbox) -> bool:
        """Whether ``sandbox``'s tasks can use warm sandboxes: bubblewrap, one sandbox per task."""
        return sandbox.kind == "bwrap" and sandbox.scope == "task"

    def refill(self) -> None:
        """Warm sandboxes up to ``size``, in the background (one warm-up at a time)."""
        if self.closed or (self._filling is not None and not self._filling.done()):
            return
        if time.monotonic() < self._retry_at:
            return
        self._filling = asyncio.create_task(self._fill())

    async def _fill(self) -> None:
        while not self.closed and len(self.ready) < self.size and self.fits(self.sandbox):
            try:
                workspace = await Workspace.warmed(self.sandbox)
            except Exception as exc:  # noqa: BLE001 - never a job's failure: tasks start theirs on demand
                log.warning("sandbox.warm_up_failed", error=str(exc), detail="tasks start their sandboxes on demand")
                self._retry_at = time.monotonic() + _WARM_RETRY
                return
            self.ready.append(workspace)

    async def take(self, checkout: Path) -> Workspace | None:
        """A warm workspace showing ``checkout``, for one task; None when none is ready (or the
        one taken could not be used: the task then starts its sandbox on demand, as without
        a pool). A warm sandbox that exited meanwhile is discarded."""
        if self.closed or not self.fits(self.sandbox):
            return None
        while self.ready:
            workspace = self.ready.pop(0)
            if not workspace.warm_alive():
                log.warning("sandbox.warm_sandbox_gone", detail="discarded; the task starts one on demand")
                workspace.remove()  # its sandbox is gone: an unmount and an empty directory
                continue
            try:
                await workspace.fill(checkout)
            except OSError as exc:
                log.warning("sandbox.warm_fill_failed", error=str(exc), detail="the task starts one on demand")
                await workspace.release()
                break
            except BaseException:
                workspace.remove()  # the job was cancelled while its checkout was copied in
                raise
            self._refill_after(workspace)
            return workspace
        self.refill()
        return None

    def _refill_after(self, workspace: Workspace) -> None:
        """Refill once ``workspace``'s first step has ended, or ``_REFILL_DELAY`` after the take
        if that is sooner: a bubblewrap starting beside a quick first step slows it by ~0.5 ms
        (a third of a ``true`` step), beside a long one it costs nothing worth waiting for."""
        timer = asyncio.get_running_loop().call_later(_REFILL_DELAY, self.refill)

        def stepped() -> None:
            timer.cancel()
            self.refill()

        workspace.after_first_step = stepped

    async def close(self) -> None:
        """Stop warming and remove every warm sandbox and its directory (the worker stops)."""
        self.closed = True
        if self._filling is not None:
            # The warm-up under way finishes (into ``ready``, removed below): cancelled in its
            # thread, it would leave its directory. Only a sandbox slow to answer is cancelled.
            done, _ = await asyncio.wait({self._filling}, timeout=_WARM_CLOSE_WAIT)
            if not done:
                self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filling
        ready, self.ready = self.ready, []
        for workspace in ready:
            await workspace.release()
