"""A real repository through discovery, phase groups, steps, logs and events."""

from __future__ import annotations

import datetime as dt

import httpx
import psycopg

from .conftest import Cell, steps_of

REPO_TOML = """
forge_version = "1"
[phases.lint]
group = 1
[phases.test]
group = 2
timeout = "60s"
[phases.build]
group = 3
"""


def project_toml(name: str, barrier: str, test_cmd: str) -> str:
    # The test steps of both projects wait for each other: they only pass when the two tasks
    # of the phase really run at the same time.
    return f"""
name = "{name}"
[[phases.lint.steps]]
name = "style"
action = "shell"
run = "echo lint {name}"
[[phases.test.steps]]
name = "barrier"
run = "touch {barrier}/{name}; for i in $(seq 100); do [ $(ls {barrier} | wc -l) -ge 2 ] && exit 0; sleep 0.05; done; exit 9"
timeout = "20s"
[[phases.test.steps]]
name = "unit"
run = '''{test_cmd}'''
[[phases.build.steps]]
name = "package"
run = "echo built {name} at $FORGE_COMMIT_SHA"
"""


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_good_then_bad_commit(cell: Cell, client: httpx.AsyncClient) -> None:
    repo = cell.repo("shop")
    good_barrier = cell.shared_dir("barrier-good")
    bad_barrier = cell.shared_dir("barrier-bad")
    good = repo.commit(
        {
            ".forge/repo.toml": REPO_TOML,
            "services/api/.forge/project.toml": project_toml("api", str(good_barrier), "echo api tests ok"),
            "web/.forge/project.toml": project_toml("web", str(good_barrier), "echo web tests ok; echo to stderr >&2"),
        }
    )
    run_id = await cell.create_run(client, repo, good)
    run = await cell.wait_run(client, run_id, timeout=60)
    assert run["status"] == "success", run
    assert [(p["name"], p["group_number"], p["status"]) for p in run["phases"]] == [
        ("lint", 1, "success"),
        ("test", 2, "success"),
        ("build", 3, "success"),
    ]
    for phase in run["phases"]:
        assert sorted(t["project_name"] for t in phase["tasks"]) == ["api", "web"]
        assert all(t["status"] == "success" for t in phase["tasks"])
    # Groups ran in order.
    by_name = {p["name"]: p for p in run["phases"]}
    assert _ts(by_name["lint"]["completed_at"]) <= _ts(by_name["test"]["started_at"])
    assert _ts(by_name["test"]["completed_at"]) <= _ts(by_name["build"]["started_at"])
    steps = steps_of(run)
    assert len(steps) == 8
    assert all(s["status"] == "success" and s["exit_code"] == 0 for s in steps.values())
    # Each step's logs_url downloads exactly what the step printed.
    expected = {
        ("lint", "api", "style"): "lint api\n",
        ("test", "web", "unit"): "web tests ok\nto stderr\n",
        ("build", "api", "package"): f"built api at {good}\n",
    }
    for key, text in expected.items():
        resp = await client.get(steps[key]["logs_url"])
        assert resp.status_code == 200
        assert resp.text == text
    completed = await cell.wait_event("pipeline.run.completed", run_id)
    assert completed["data"]["status"] == "success"

    # The bad commit: web's unit tests exit 3.
    (good_barrier / "api").unlink()
    bad = repo.commit(
        {
            "services/api/.forge/project.toml": project_toml("api", str(bad_barrier), "echo api tests ok"),
            "web/.forge/project.toml": project_toml("web", str(bad_barrier), "echo failing test; exit 3"),
        }
    )
    run_id = await cell.create_run(client, repo, bad)
    # The run fails at the first failed task; the sibling task still running in that phase is
    # stopped right after (fail fast), which settles the phase.
    run = await cell.wait_run(
        client,
        run_id,
        until=lambda r: (
            r["status"] in ("success", "failed", "cancelled") and all(p["status"] != "running" for p in r["phases"])
        ),
        timeout=60,
    )
    assert run["status"] == "failed", run
    statuses = {p["name"]: p["status"] for p in run["phases"]}
    assert statuses == {"lint": "success", "test": "failed", "build": "skipped"}
    steps = steps_of(run)
    failing = steps[("test", "web", "unit")]
    assert failing["status"] == "failed"
    assert failing["exit_code"] == 3
    assert (await client.get(failing["logs_url"])).text == "failing test\n"
    assert all(s["status"] == "skipped" for k, s in steps.items() if k[0] == "build")
    failed = await cell.wait_event("pipeline.run.failed", run_id)
    assert failed["data"]["failed_phase"] == "test"
    # No FORGE_GITHUB_TOKEN here: GitHub reporting is off, and the runs' commit statuses are
    # not written to the GitHub outbox at all (rows nobody would send).
    async with await psycopg.AsyncConnection.connect(cell.database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM pipeline.github_outbox")
        assert await cur.fetchone() == (0,)
    assert "web" in failed["data"]["error_message"]
    assert "exit code 3" in failed["data"]["error_message"]
    assert len(await cell.events("pipeline.run.failed", run_id)) == 1
