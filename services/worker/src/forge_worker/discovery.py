"""Repository configuration: read ``.forge/repo.toml`` and every ``<project>/.forge/project.toml``.

The result is the run's plan (phases -> tasks -> steps) plus each project's release triggers.
Every problem names the file, the field and what is wrong, e.g.
``services/api/.forge/project.toml: phases.test.steps[0].action: must be "shell" or "earthly"``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

from forge_common.jobs import (
    DiscoveryJob,
    DiscoveryResult,
    JobReply,
    Plan,
    PlannedArtifact,
    PlannedPhase,
    PlannedStep,
    PlannedTask,
    ReleaseRule,
)
from forge_common.settings import parse_duration, parse_size

from .git import GitCache, GitError
from .sandbox import ENVIRONMENT_ALLOW_LIST

__all__ = ["ConfigError", "Plan", "discover", "run_discovery"]

REPO_FILE = ".forge/repo"
PROJECT_FILE = ".forge/project"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_NAME_RULE = "must be 1-100 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
# An artifact's name is a component of its OCI repository path, hence lower-case.
_ARTIFACT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
ARTIFACT_TYPES = ("container", "binary", "archive")
# The phase in which artifacts are built; no repository phase may take its name.
ARTIFACTS_PHASE = "artifacts"


class ConfigError(Exception):
    """Invalid repository configuration; ``problems`` lists every finding, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid repository configuration: " + "; ".join(problems))


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, file: str, field: str, problem: str) -> None:
        self.items.append(f"{file}: {field}: {problem}" if field else f"{file}: {problem}")


def _load(root: Path, stem: str, problems: _Problems) -> tuple[str, dict[str, Any]] | None:
    """Load ``stem``.toml (or ``stem``.cue with the cue CLI); None when neither exists."""
    toml_path = root / f"{stem}.toml"
    cue_path = root / f"{stem}.cue"
    for path in (toml_path, cue_path):
        if not _inside(root, path):
            # A tracked symbolic link (the file's, or a directory's on its way) leading out of the
            # checkout would make the worker read its own files as configuration, and echo
            # their values in the problems below.
            rel = f"{stem}{path.suffix}"
            problems.add(rel, "", "leads out of the repository (a symbolic link); it must be a file in the repository")
            return rel, {}
    if toml_path.is_file():
        rel = f"{stem}.toml"
        try:
            with toml_path.open("rb") as fh:
                return rel, tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            problems.add(rel, "", f"is not valid TOML: {exc}")
        except UnicodeDecodeError:
            problems.add(rel, "", "is not UTF-8 text")
        return rel, {}
    if cue_path.is_file():
        rel = f"{stem}.cue"
        cue = shutil.which("cue")
        if cue is None:
            problems.add(rel, "", "CUE configuration needs the cue CLI, which this worker does not have; use TOML")
            return rel, {}
        proc = subprocess.run(
            [cue, "export", "--out", "json", str(cue_path)], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            problems.add(rel, "", f"cue export failed: {proc.stderr.strip()[:500]}")
            return rel, {}
        try:
            value = json.loads(proc.stdout)
        except ValueError:
            problems.add(rel, "", "cue export did not produce JSON")
            return rel, {}
        if not isinstance(value, dict):
            problems.add(rel, "", "must define a struct at the top level")
            return rel, {}
        return rel, value
    return None


def _inside(root: Path, path: Path) -> bool:
    """Whether ``path``, with every symbolic link on it followed, is in ``root`` (or is absent)."""
    if not path.exists() and not path.is_symlink():
        return True
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _duration(value: Any, file: str, field: str, problems: _Problems) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        problems.add(file, field, f'must be a duration string like "90s", "10m" or "1h30m", got {value!r}')
        return None
    try:
        seconds = float(value) if isinstance(value, int) else parse_duration(value)
    except ValueError as exc:
        problems.add(file, field, f"{exc}")
        return None
    if seconds < 1:
        problems.add(file, field, f"must be at least 1s, got {value!r}")
        return None
    return max(1, round(seconds))


_STEP_KEYS = {"name", "action", "run", "target", "timeout", "memory", "processes", "network", "env"}
MIN_MEMORY = 16 << 20
MIN_PROCESSES = 8
MAX_PROCESSES = 1 << 22


def _limits(step: dict[str, Any], file: str, field: str, problems: _Problems) -> tuple[int | None, int | None, bool]:
    """A step's sandbox limits: ``memory`` (a size), ``processes`` (a count), ``network``."""
    memory = processes = None
    if "memory" in step:
        raw = step["memory"]
        try:
            memory = parse_size(raw) if isinstance(raw, str) else None
        except ValueError as exc:
            problems.add(file, f"{field}.memory", str(exc))
        else:
            if memory is None:
                problems.add(file, f"{field}.memory", f'must be a size string like "512MiB" or "2GiB", got {raw!r}')
            elif memory < MIN_MEMORY:
                problems.add(file, f"{field}.memory", f"must be at least 16MiB, got {raw!r}")
                memory = None
    if "processes" in step:
        raw = step["processes"]
        if isinstance(raw, bool) or not isinstance(raw, int) or not MIN_PROCESSES <= raw <= MAX_PROCESSES:
            problems.add(
                file, f"{field}.processes", f"must be an integer from {MIN_PROCESSES} to {MAX_PROCESSES}, got {raw!r}"
            )
        else:
            processes = raw
    network = step.get("network", True)
    if not isinstance(network, bool):
        problems.add(file, f"{field}.network", f"must be true or false, got {network!r}")
        network = True
    return memory, processes, network


_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENV_VARIABLES = 64
MAX_ENV_KEY = 128
MAX_ENV_VALUE = 4096


def _env(step: dict[str, Any], file: str, field: str, problems: _Problems) -> dict[str, str]:
    """A step's own environment variables (``env``): a table of strings, bounded, none of them
    a name the platform sets (the sandbox's allow-list) or any ``FORGE_`` name."""
    raw = step.get("env", {})
    if not isinstance(raw, dict):
        problems.add(file, f"{field}.env", f'must be a table of strings like {{ GREETING = "hello" }}, got {raw!r}')
        return {}
    if len(raw) > MAX_ENV_VARIABLES:
        problems.add(file, f"{field}.env", f"at most {MAX_ENV_VARIABLES} variables, got {len(raw)}")
        return {}
    env: dict[str, str] = {}
    for key, value in raw.items():
        where = f"{field}.env.{key}"
        if len(key) > MAX_ENV_KEY or not _ENV_KEY.match(key):
            problems.add(
                file,
                f"{field}.env",
                f"variable name {key!r} must match [A-Za-z_][A-Za-z0-9_]* (at most {MAX_ENV_KEY} characters)",
            )
        elif key in ENVIRONMENT_ALLOW_LIST or key.upper().startswith("FORGE_"):
            problems.add(file, where, "is set by the platform and cannot be overridden (FORGE_* names are reserved)")
        elif not isinstance(value, str):
            problems.add(file, where, f"must be a string, got {value!r}")
        elif len(value.encode()) > MAX_ENV_VALUE or "\0" in value:
            problems.add(file, where, f"must be at most {MAX_ENV_VALUE} bytes without NUL characters")
        else:
            env[key] = value
    return env


def _check_keys(table: dict[str, Any], allowed: set[str], file: str, prefix: str, problems: _Problems) -> None:
    for key in table:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else key
            problems.add(file, where, f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _repo_phases(file: str, data: dict[str, Any], problems: _Problems) -> dict[str, PlannedPhase]:
    _check_keys(data, {"forge_version", "phases"}, file, "", problems)
    version = data.get("forge_version")
    if version is not None and str(version) != "1":
        problems.add(file, "forge_version", f'must be "1", got {version!r}')
    phases_raw = data.get("phases")
    if phases_raw is None:
        problems.add(file, "phases", "is required: declare at least one phase, e.g. [phases.test] group = 1")
        return {}
    if not isinstance(phases_raw, dict) or not phases_raw:
        problems.add(file, "phases", "must be a table of phases, e.g. [phases.test] group = 1")
        return {}
    phases: dict[str, PlannedPhase] = {}
    for name, spec in phases_raw.items():
        field = f"phases.{name}"
        if not _NAME.match(name):
            problems.add(file, field, f"phase name {_NAME_RULE}")
            continue
        if name == ARTIFACTS_PHASE:
            problems.add(file, field, f"{name!r} is reserved for the phase that builds [[artifacts]]; rename it")
            continue
        if not isinstance(spec, dict):
            problems.add(file, field, "must be a table with a group number")
            continue
        _check_keys(spec, {"group", "timeout"}, file, field, problems)
        group = spec.get("group")
        if group is None:
            problems.add(file, f"{field}.group", "is required (an integer >= 1)")
            continue
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            problems.add(file, f"{field}.group", f"must be an integer >= 1, got {group!r}")
            continue
        timeout = _duration(spec.get("timeout"), file, f"{field}.timeout", problems)
        phases[name] = PlannedPhase(name=name, group_number=group, timeout_seconds=timeout)
    return phases


def _trigger_rules(file: str, release: Any, problems: _Problems) -> list[ReleaseRule]:
    if not isinstance(release, dict):
        problems.add(file, "release", 'must be a table, e.g. [release] on = [{ branch = "main" }]')
        return []
    _check_keys(release, {"on"}, file, "release", problems)
    rules = release.get("on", [])
    if not isinstance(rules, list):
        problems.add(file, "release.on", 'must be a list of rules like { branch = "main" } or { tag = true }')
        return []
    out: list[ReleaseRule] = []
    for i, rule in enumerate(rules):
        field = f"release.on[{i}]"
        if not isinstance(rule, dict) or len(rule) != 1 or next(iter(rule)) not in ("branch", "tag"):
            problems.add(file, field, 'must be { branch = "<name or glob>" } or { tag = true | "<glob>" }')
            continue
        key, value = next(iter(rule.items()))
        if key == "branch" and not (isinstance(value, str) and value):
            problems.add(file, f"{field}.branch", f"must be a non-empty branch name or glob, got {value!r}")
            continue
        if key == "tag" and not (isinstance(value, bool) or (isinstance(value, str) and value)):
            problems.add(file, f"{field}.tag", f"must be true, false or a tag glob, got {value!r}")
            continue
        out.append({key: value})
    return out


# Over 60 lines on purpose: one project file checked field by field, in the order a reader
# of the error messages expects; each branch is a single check.
def _project(
    file: str, directory: str, data: dict[str, Any], phases: dict[str, PlannedPhase], problems: _Problems
) -> tuple[str, dict[str, list[PlannedStep]], list[ReleaseRule], list[PlannedArtifact]] | None:
    _check_keys(data, {"name", "phases", "release", "artifacts"}, file, "", problems)
    default_name = Path(directory).name if directory != "." else "root"
    name = data.get("name", default_name)
    if not isinstance(name, str) or not _NAME.match(name):
        problems.add(file, "name", f"project name {_NAME_RULE}, got {name!r}")
        return None
    steps_by_phase: dict[str, list[PlannedStep]] = {}
    raw_phases = data.get("phases", {})
    if not isinstance(raw_phases, dict):
        problems.add(file, "phases", "must be a table of phases, e.g. [[phases.test.steps]]")
        raw_phases = {}
    for phase_name, spec in raw_phases.items():
        field = f"phases.{phase_name}"
        if phase_name not in phases:
            declared = ", ".join(sorted(phases)) or "none"
            problems.add(
                file, field, f"phase {phase_name!r} is not declared in .forge/repo.toml (declared: {declared})"
            )
            continue
        if not isinstance(spec, dict):
            problems.add(file, field, "must be a table with a steps list")
            continue
        _check_keys(spec, {"steps"}, file, field, problems)
        steps_raw = spec.get("steps")
        if not isinstance(steps_raw, list) or not steps_raw:
            problems.add(file, f"{field}.steps", "must be a non-empty list of steps ([[" + field + ".steps]])")
            continue
        steps: list[PlannedStep] = []
        seen: set[str] = set()
        for i, step in enumerate(steps_raw):
            sfield = f"{field}.steps[{i}]"
            if not isinstance(step, dict):
                problems.add(file, sfield, "must be a table with name, action and run (or target)")
                continue
            _check_keys(step, _STEP_KEYS, file, sfield, problems)
            sname = step.get("name")
            if not isinstance(sname, str) or not _NAME.match(sname):
                problems.add(file, f"{sfield}.name", f"is required; a step name {_NAME_RULE}, got {sname!r}")
                continue
            if sname in seen:
                problems.add(file, f"{sfield}.name", f"duplicate step name {sname!r} in phase {phase_name!r}")
                continue
            seen.add(sname)
            action = step.get("action", "shell")
            if action not in ("shell", "earthly"):
                problems.add(file, f"{sfield}.action", f'must be "shell" or "earthly", got {action!r}')
                continue
            if action == "shell":
                command = step.get("run")
                if not isinstance(command, str) or not command.strip():
                    problems.add(file, f"{sfield}.run", "is required for a shell step: the command to run")
                    continue
            else:
                command = step.get("target")
                if not isinstance(command, str) or not command.strip():
                    problems.add(file, f"{sfield}.target", 'is required for an earthly step, e.g. "+build"')
                    continue
            timeout = _duration(step.get("timeout"), file, f"{sfield}.timeout", problems)
            memory, processes, network = _limits(step, file, sfield, problems)
            env = _env(step, file, sfield, problems)
            steps.append(
                PlannedStep(
                    name=sname,
                    action=action,
                    command=command,
                    timeout_seconds=timeout,
                    memory_bytes=memory,
                    processes=processes,
                    network=network,
                    env=env,
                )
            )
        if steps:
            steps_by_phase[phase_name] = steps
    rules: list[ReleaseRule] = []
    if "release" in data:
        rules = _trigger_rules(file, data["release"], problems)
    artifacts = _artifacts(file, name, directory, data.get("artifacts", []), problems)
    return name, steps_by_phase, rules, artifacts


def _publish_targets(file: str, field: str, value: Any, problems: _Problems) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.add(file, field, 'must be a list of destinations, e.g. ["oci://registry.example.com/acme/api"]')
        return None
    out: list[str] = []
    for i, target in enumerate(value):
        clean = not any(c.isspace() for c in target)
        oci = target.startswith("oci://") and "/" in target[6:].strip("/")
        s3 = target.startswith("s3://") and bool(target[5:].split("/", 1)[0])
        if target == "github-release" or (clean and (oci or s3)):
            out.append(target.rstrip("/"))
        else:
            problems.add(
                file,
                f"{field}[{i}]",
                f'must be "oci://<registry>/<repository>", "s3://<bucket>[/<prefix>]" or "github-release", got {target!r}',
            )
            return None
    return out


def _artifacts(file: str, project: str, directory: str, raw: Any, problems: _Problems) -> list[PlannedArtifact]:
    """``[[artifacts]]``: what a project builds once every CI phase of its run succeeded."""
    if not isinstance(raw, list):
        problems.add(file, "artifacts", 'must be a list of tables ([[artifacts]] name = "api" ...)')
        return []
    out: list[PlannedArtifact] = []
    seen: set[str] = set()
    allowed = {"name", "type", "build", "path", "publish", "timeout"}
    for i, item in enumerate(raw):
        field = f"artifacts[{i}]"
        if not isinstance(item, dict):
            problems.add(file, field, "must be a table with name, type, build and path")
            continue
        _check_keys(item, allowed, file, field, problems)
        name = item.get("name")
        if not isinstance(name, str) or not _ARTIFACT_NAME.match(name):
            problems.add(
                file,
                f"{field}.name",
                f"is required; 1-100 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit, got {name!r}",
            )
            continue
        if name in seen:
            problems.add(file, f"{field}.name", f"duplicate artifact name {name!r} in project {project!r}")
            continue
        seen.add(name)
        kind = item.get("type")
        if kind not in ARTIFACT_TYPES:
            problems.add(file, f"{field}.type", f'must be "container", "binary" or "archive", got {kind!r}')
            continue
        build = item.get("build")
        if not isinstance(build, str) or not build.strip():
            problems.add(file, f"{field}.build", "is required: the shell command that builds the artifact")
            continue
        path = item.get("path")
        if not isinstance(path, str) or not path.strip() or path.startswith("/") or ".." in Path(path).parts:
            problems.add(
                file, f"{field}.path", f"is required: a relative path inside the project (no '..'), got {path!r}"
            )
            continue
        publish = _publish_targets(file, f"{field}.publish", item.get("publish", []), problems)
        if publish is None:
            continue
        timeout = _duration(item.get("timeout"), file, f"{field}.timeout", problems)
        out.append(
            PlannedArtifact(
                project=project,
                project_path=directory,
                name=name,
                type=kind,
                build=build,
                path=path,
                publish=publish,
                timeout_seconds=timeout,
            )
        )
    return out


def project_dirs(files: list[str]) -> list[str]:
    """Directories holding ``.forge/project.(toml|cue)``, from a list of repository paths."""
    dirs: set[str] = set()
    for path in files:
        for suffix in (f"{PROJECT_FILE}.toml", f"{PROJECT_FILE}.cue"):
            if path == suffix:
                dirs.add(".")
            elif path.endswith("/" + suffix):
                dirs.add(path[: -len(suffix) - 1])
    return sorted(dirs)


def discover(root: Path, files: list[str]) -> Plan:
    """Build the plan from the checkout at ``root`` (``files``: every tracked path)."""
    problems = _Problems()
    repo = _load(root, REPO_FILE, problems)
    if repo is None:
        raise ConfigError([".forge/repo.toml: file not found: the repository has no Forge configuration"])
    repo_file, repo_data = repo
    if problems.items:
        raise ConfigError(problems.items)
    phases = _repo_phases(repo_file, repo_data, problems)
    triggers: dict[str, list[ReleaseRule]] = {}
    artifacts: list[PlannedArtifact] = []
    names: dict[str, str] = {}
    for directory in project_dirs(files):
        stem = PROJECT_FILE if directory == "." else f"{directory}/{PROJECT_FILE}"
        loaded = _load(root, stem, problems)
        if loaded is None:
            continue
        file, data = loaded
        if not data:
            continue
        found = _project(file, directory, data, phases, problems)
        if found is None:
            continue
        name, steps_by_phase, rules, declared = found
        if name in names:
            problems.add(file, "name", f"project name {name!r} is already used by {names[name]}")
            continue
        names[name] = file
        for phase_name, steps in steps_by_phase.items():
            phases[phase_name].tasks.append(PlannedTask(project_name=name, project_path=directory, steps=steps))
        if rules:
            triggers[name] = rules
        artifacts.extend(declared)
    if problems.items:
        raise ConfigError(problems.items)
    ordered = sorted(phases.values(), key=lambda p: (p.group_number, p.name))
    for phase in ordered:
        phase.tasks.sort(key=lambda t: t.project_name)
    artifacts.sort(key=lambda a: (a.project, a.name))
    return Plan(phases=ordered, release_triggers=triggers, artifacts=artifacts)


async def run_discovery(git: GitCache, job: DiscoveryJob) -> JobReply[DiscoveryResult]:
    """A discovery job: the plan at the commit (its full SHA with it), or why there is none."""
    try:
        full, path = await git.checkout(job.repository, job.commit_sha)
        files = await git.list_files(job.repository, full)
        plan = await asyncio.to_thread(discover, path, files)
    except GitError as exc:
        return JobReply(status="failed", error=str(exc))
    except ConfigError as exc:
        return JobReply(status="failed", error="\n".join(exc.problems))
    result = DiscoveryResult(
        commit_sha=full, phases=plan.phases, release_triggers=plan.release_triggers, artifacts=plan.artifacts
    )
    return JobReply(status="success", result=result)
