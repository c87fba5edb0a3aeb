"""Repository configuration parsing and validation (no I/O beyond a temporary directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge_worker.discovery import ConfigError, discover

REPO = """
forge_version = "1"
[phases.lint]
group = 1
[phases.test]
group = 1
timeout = "10m"
[phases.build]
group = 2
"""


def _tree(root: Path, files: dict[str, str]) -> list[str]:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return list(files)


def _problems(root: Path, files: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        discover(root, _tree(root, files))
    return info.value.problems


def test_plan_from_the_documented_example(tmp_path: Path) -> None:
    files = _tree(
        tmp_path,
        {
            ".forge/repo.toml": REPO,
            "services/api/.forge/project.toml": """
name = "api"
[[phases.test.steps]]
name = "unit"
action = "shell"
run = "python -m pytest -q"
timeout = "5m"
[[phases.build.steps]]
name = "package"
action = "shell"
run = "make dist"
[release]
on = [{ branch = "main" }, { tag = true }]
""",
            "web/.forge/project.toml": '[[phases.build.steps]]\nname = "image"\naction = "earthly"\ntarget = "+image"\n',
        },
    )
    plan = discover(tmp_path, files)
    assert [(p.name, p.group_number, p.timeout_seconds) for p in plan.phases] == [
        ("lint", 1, None),
        ("test", 1, 600),
        ("build", 2, None),
    ]
    by_phase = {p.name: p for p in plan.phases}
    assert by_phase["lint"].tasks == []
    [api_test] = by_phase["test"].tasks
    assert (api_test.project_name, api_test.project_path) == ("api", "services/api")
    assert [(s.name, s.action, s.command, s.timeout_seconds) for s in api_test.steps] == [
        ("unit", "shell", "python -m pytest -q", 300)
    ]
    assert [t.project_name for t in by_phase["build"].tasks] == ["api", "web"]  # web: the directory name
    assert by_phase["build"].tasks[1].steps[0].command == "+image"
    assert plan.release_triggers == {"api": [{"branch": "main"}, {"tag": True}]}


@pytest.mark.parametrize(
    ("project", "expected"),
    [
        (
            '[[phases.test.steps]]\nname = "u"\naction = "docker"\nrun = "x"\n',
            'app/.forge/project.toml: phases.test.steps[0].action: must be "shell" or "earthly", got \'docker\'',
        ),
        (
            '[[phases.test.steps]]\nname = "u"\n',
            "app/.forge/project.toml: phases.test.steps[0].run: is required for a shell step",
        ),
        (
            '[[phases.test.steps]]\nname = "u"\nrun = "x"\ntimeout = "5 minutes"\n',
            "app/.forge/project.toml: phases.test.steps[0].timeout: invalid duration '5 minutes'",
        ),
        (
            '[[phases.deploy.steps]]\nname = "u"\nrun = "x"\n',
            "app/.forge/project.toml: phases.deploy: phase 'deploy' is not declared in .forge/repo.toml",
        ),
        (
            '[[phases.test.steps]]\nname = "u"\nrun = "x"\n[[phases.test.steps]]\nname = "u"\nrun = "y"\n',
            "app/.forge/project.toml: phases.test.steps[1].name: duplicate step name 'u'",
        ),
        ('nam = "x"\n', "app/.forge/project.toml: nam: unknown field"),
        (
            "[release]\non = [{ branch = 3 }]\n",
            "app/.forge/project.toml: release.on[0].branch: must be a non-empty branch name or glob, got 3",
        ),
        ("[[phases.test.steps]\n", "app/.forge/project.toml: is not valid TOML"),
    ],
)
def test_problems_name_file_and_field(tmp_path: Path, project: str, expected: str) -> None:
    problems = _problems(tmp_path, {".forge/repo.toml": REPO, "app/.forge/project.toml": project})
    assert any(p.startswith(expected) for p in problems), problems


def test_repo_file_problems(tmp_path: Path) -> None:
    problems = _problems(tmp_path, {".forge/repo.toml": '[phases.test]\ngroup = 0\n[phases.x]\ntimeout = "1m"\n'})
    assert ".forge/repo.toml: phases.test.group: must be an integer >= 1, got 0" in problems
    assert ".forge/repo.toml: phases.x.group: is required (an integer >= 1)" in problems


def test_missing_repository_configuration(tmp_path: Path) -> None:
    problems = _problems(tmp_path, {"README.md": "hi"})
    assert problems == [".forge/repo.toml: file not found: the repository has no Forge configuration"]


def test_duplicate_project_names(tmp_path: Path) -> None:
    step = '[[phases.test.steps]]\nname = "u"\nrun = "x"\n'
    problems = _problems(
        tmp_path,
        {
            ".forge/repo.toml": REPO,
            "a/.forge/project.toml": 'name = "same"\n' + step,
            "b/.forge/project.toml": 'name = "same"\n' + step,
        },
    )
    assert problems == ["b/.forge/project.toml: name: project name 'same' is already used by a/.forge/project.toml"]


ARTIFACTS = """
[[phases.build.steps]]
name = "package"
run = "make dist"
[[artifacts]]
name = "api"
type = "container"
build = "make image"
path = "dist/api.oci"
publish = ["oci://registry.example.com/acme/api", "s3://bucket/prefix", "github-release"]
timeout = "30m"
[[artifacts]]
name = "cli"
type = "binary"
build = "make cli"
path = "dist/cli"
"""


def test_artifacts_are_part_of_the_plan(tmp_path: Path) -> None:
    files = _tree(tmp_path, {".forge/repo.toml": REPO, "services/api/.forge/project.toml": ARTIFACTS})
    plan = discover(tmp_path, files)
    assert [(a.project, a.project_path, a.name, a.type, a.path, a.timeout_seconds) for a in plan.artifacts] == [
        ("api", "services/api", "api", "container", "dist/api.oci", 1800),
        ("api", "services/api", "cli", "binary", "dist/cli", None),
    ]
    assert plan.artifacts[0].publish == ["oci://registry.example.com/acme/api", "s3://bucket/prefix", "github-release"]


@pytest.mark.parametrize(
    ("artifact", "expected"),
    [
        ('name = "API"\ntype = "binary"\nbuild = "x"\npath = "a"', "artifacts[0].name: is required; 1-100 lower-case"),
        ('name = "a"\ntype = "docker"\nbuild = "x"\npath = "a"', 'artifacts[0].type: must be "container", "binary"'),
        ('name = "a"\ntype = "binary"\npath = "a"', "artifacts[0].build: is required"),
        ('name = "a"\ntype = "binary"\nbuild = "x"\npath = "../a"', "artifacts[0].path: is required: a relative path"),
        ('name = "a"\ntype = "binary"\nbuild = "x"\npath = "a"\npublish = ["ftp://x/y"]', "artifacts[0].publish[0]"),
        ('name = "a"\ntype = "binary"\nbuild = "x"\npath = "a"\ntimeout = "soon"', "artifacts[0].timeout"),
        (
            'name = "a"\ntype = "binary"\nbuild = "x"\npath = "a"\nregistry = "x"',
            "artifacts[0].registry: unknown field",
        ),
    ],
)
def test_artifact_problems_name_file_and_field(tmp_path: Path, artifact: str, expected: str) -> None:
    problems = _problems(
        tmp_path, {".forge/repo.toml": REPO, "api/.forge/project.toml": f"[[artifacts]]\n{artifact}\n"}
    )
    assert any(p.startswith("api/.forge/project.toml: ") and expected in p for p in problems), problems


def test_artifacts_is_a_reserved_phase_name(tmp_path: Path) -> None:
    problems = _problems(tmp_path, {".forge/repo.toml": "[phases.artifacts]\ngroup = 1\n"})
    assert problems == [
        ".forge/repo.toml: phases.artifacts: 'artifacts' is reserved for the phase that builds [[artifacts]]; rename it"
    ]


def test_step_sandbox_limits_are_read_and_defaults_left_to_the_worker(tmp_path: Path) -> None:
    files = _tree(
        tmp_path,
        {
            ".forge/repo.toml": REPO,
            "api/.forge/project.toml": """
[[phases.test.steps]]
name = "unit"
run = "make test"
memory = "512MiB"
processes = 64
network = false
[[phases.test.steps]]
name = "plain"
run = "true"
""",
        },
    )
    steps = discover(tmp_path, files).phases[1].tasks[0].steps
    assert [(s.memory_bytes, s.processes, s.network) for s in steps] == [(512 << 20, 64, False), (None, None, True)]


def test_bad_step_limits_are_each_named(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        {
            ".forge/repo.toml": REPO,
            "api/.forge/project.toml": """
[[phases.test.steps]]
name = "unit"
run = "make test"
memory = "lots"
processes = 2
network = "no"
[[phases.test.steps]]
name = "tiny"
run = "true"
memory = "1MiB"
processes = true
""",
        },
    )
    assert problems == [
        "api/.forge/project.toml: phases.test.steps[0].memory: invalid size 'lots': unknown unit 'lots' (use KiB, MiB, GiB or TiB)",
        "api/.forge/project.toml: phases.test.steps[0].processes: must be an integer from 8 to 4194304, got 2",
        "api/.forge/project.toml: phases.test.steps[0].network: must be true or false, got 'no'",
        "api/.forge/project.toml: phases.test.steps[1].memory: must be at least 16MiB, got '1MiB'",
        "api/.forge/project.toml: phases.test.steps[1].processes: must be an integer from 8 to 4194304, got True",
    ]


def test_a_steps_own_environment_is_read(tmp_path: Path) -> None:
    files = _tree(
        tmp_path,
        {
            ".forge/repo.toml": REPO,
            "api/.forge/project.toml": """
[[phases.test.steps]]
name = "unit"
run = "echo $GREETING"
env = { GREETING = "hello", _private_1 = "a b=c" }
[[phases.test.steps]]
name = "plain"
run = "true"
""",
        },
    )
    steps = discover(tmp_path, files).phases[1].tasks[0].steps
    assert [s.env for s in steps] == [{"GREETING": "hello", "_private_1": "a b=c"}, {}]


def test_bad_step_environments_are_each_named(tmp_path: Path) -> None:
    many = ", ".join(f"V{i} = 'x'" for i in range(65))
    problems = _problems(
        tmp_path,
        {
            ".forge/repo.toml": REPO,
            "api/.forge/project.toml": f"""
[[phases.test.steps]]
name = "unit"
run = "true"
env = {{ "1BAD" = "x", "with-dash" = "y", PATH = "/evil", FORGE_RUN_ID = "forged", forge_x = "z", N = 1 }}
[[phases.test.steps]]
name = "list"
run = "true"
env = ["GREETING=hello"]
[[phases.test.steps]]
name = "many"
run = "true"
env = {{ {many} }}
[[phases.test.steps]]
name = "long"
run = "true"
env = {{ BIG = "{"x" * 4097}", NUL = "a\\u0000b" }}
""",
        },
    )
    field = "api/.forge/project.toml: phases.test.steps"
    reserved = "is set by the platform and cannot be overridden (FORGE_* names are reserved)"
    assert problems == [
        f"{field}[0].env: variable name '1BAD' must match [A-Za-z_][A-Za-z0-9_]* (at most 128 characters)",
        f"{field}[0].env: variable name 'with-dash' must match [A-Za-z_][A-Za-z0-9_]* (at most 128 characters)",
        f"{field}[0].env.PATH: {reserved}",
        f"{field}[0].env.FORGE_RUN_ID: {reserved}",
        f"{field}[0].env.forge_x: {reserved}",
        f"{field}[0].env.N: must be a string, got 1",
        f"{field}[1].env: must be a table of strings like {{ GREETING = \"hello\" }}, got ['GREETING=hello']",
        f"{field}[2].env: at most 64 variables, got 65",
        f"{field}[3].env.BIG: must be at most 4096 bytes without NUL characters",
        f"{field}[3].env.NUL: must be at most 4096 bytes without NUL characters",
    ]


def test_configuration_linked_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    """A tracked symbolic link must not make the worker read its own files as configuration."""
    outside = tmp_path / "worker-host"
    (outside / ".forge").mkdir(parents=True)
    (outside / "secret.toml").write_text('[phases.leak]\ngroup = "s3cr3t"\n')
    (outside / ".forge" / "project.toml").write_text('name = "s3cr3t"\n')
    (outside / ".forge" / "repo.toml").write_text(REPO)
    root = tmp_path / "checkout"
    step = '[[phases.test.steps]]\nname = "unit"\nrun = "true"\n'
    files = _tree(root, {".forge/repo.toml": REPO, "inside/.forge/project.toml": step})
    (root / "api" / ".forge").mkdir(parents=True)
    (root / "api" / ".forge" / "project.toml").symlink_to(outside / "secret.toml")
    (root / "dir").symlink_to(outside)  # a linked directory on the file's way
    with pytest.raises(ConfigError) as info:
        discover(root, [*files, "api/.forge/project.toml", "dir/.forge/project.toml"])
    problems = info.value.problems
    assert problems == [
        f"{d}/.forge/project.toml: leads out of the repository (a symbolic link); it must be a file in the repository"
        for d in ("api", "dir")
    ]
    assert not any("s3cr3t" in p for p in problems)

    # The repository's own file linked out of it, likewise.
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / ".forge").symlink_to(outside / ".forge")
    with pytest.raises(ConfigError) as info:
        discover(evil, [".forge/repo.toml"])
    assert info.value.problems[0].startswith(".forge/repo.toml: leads out of the repository")

    # A link that stays inside the checkout is an ordinary file.
    (root / "same" / ".forge").mkdir(parents=True)
    (root / "same" / ".forge" / "project.toml").symlink_to(root / "inside" / ".forge" / "project.toml")
    plan = discover(root, [*files, "same/.forge/project.toml"])
    assert sorted(t.project_name for p in plan.phases for t in p.tasks) == ["inside", "same"]
