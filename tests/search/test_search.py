"""``GET /v1/search/logs`` and ``GET /v1/search`` (runs and releases) through the gateway
(docs/api-search.md)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from typing import Any

import httpx
import psycopg
from live.conftest import DEVELOPER, Lane, project_files

from forge_dev.stack import free_port

from .conftest import finished_run


def _step(run: dict[str, Any], name: str) -> dict[str, Any]:
    for phase in run["phases"]:
        for task in phase["tasks"]:
            for step in task["steps"]:
                if step["name"] == name:
                    return dict(step)
    raise AssertionError(f"no step {name}")


async def _logs(client: httpx.AsyncClient, lane: Lane, **params: str) -> httpx.Response:
    return await client.get(f"{lane.gateway_url}/v1/search/logs", params=params, headers=lane.headers("viewer"))


async def test_a_word_printed_by_one_step_is_found_with_its_line_and_step(
    lane: Lane, client: httpx.AsyncClient
) -> None:
    word = f"zebra{uuid.uuid4().hex[:10]}"
    steps = {"build": f"echo compiling; echo 'found the {word} here'; echo done", "check": "echo nothing to see"}
    repository, sha = lane.push(project_files(steps))
    run = await finished_run(client, lane, repository, sha)
    assert run["status"] == "success"

    resp = await _logs(client, lane, q=word)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["next_cursor"] is None
    [hit] = body["results"]
    build = _step(run, "build")
    assert hit["line"] == f"found the {word} here"
    assert hit["line_number"] == 2
    assert (hit["run_id"], hit["step_id"], hit["step"], hit["project"], hit["phase"]) == (
        run["id"],
        build["id"],
        "build",
        "api",
        "test",
    )
    assert hit["repository"] == repository
    # The links lead to the step's log (which holds the line) and to the run.
    log = await client.get(f"{lane.gateway_url}{hit['step_url']}", headers=lane.headers("viewer"))
    assert log.text.splitlines()[hit["line_number"] - 1] == hit["line"]
    assert (await client.get(f"{lane.gateway_url}{hit['run_url']}", headers=lane.headers("viewer"))).json()[
        "id"
    ] == run["id"]

    # Filters: same repository finds it; another repository or a later `since` does not.
    assert len((await _logs(client, lane, q=word, repository=repository)).json()["results"]) == 1
    assert (await _logs(client, lane, q=word, repository=f"{repository}-other")).json()["results"] == []
    assert (await _logs(client, lane, q=word, since="2999-01-01T00:00:00Z")).json()["results"] == []
    assert len((await _logs(client, lane, q=word, since="2020-01-01T00:00:00Z")).json()["results"]) == 1

    # A token bound to one repository (forge_repository claim) searches that repository only.
    def bound(to: str) -> dict[str, str]:
        token = lane.platform.keys.sign(DEVELOPER, ["viewer"], extra={"forge_repository": to})
        return {"Authorization": f"Bearer {token}"}

    url = f"{lane.gateway_url}/v1/search/logs"
    assert len((await client.get(url, params={"q": word}, headers=bound(repository))).json()["results"]) == 1
    assert (await client.get(url, params={"q": word}, headers=bound(f"{repository}-other"))).json()["results"] == []
    refused = await client.get(url, params={"q": word, "repository": repository}, headers=bound(f"{repository}-other"))
    assert refused.status_code == 403


async def test_log_results_page_by_cursor(lane: Lane, client: httpx.AsyncClient) -> None:
    word = f"okapi{uuid.uuid4().hex[:10]}"
    repository, sha = lane.push(project_files({"many": f"for i in 1 2 3 4 5; do echo $i {word}; done"}))
    await finished_run(client, lane, repository, sha)

    seen: list[int] = []
    params = {"q": word, "limit": "2"}
    pages = 0
    while True:
        resp = await _logs(client, lane, **params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        seen += [hit["line_number"] for hit in body["results"]]
        pages += 1
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert seen == [1, 2, 3, 4, 5]
    assert pages == 3

    first = (await _logs(client, lane, q=word, limit="2")).json()
    other = await _logs(client, lane, q="another", cursor=first["next_cursor"])
    assert other.status_code == 400
    assert other.json()["error"]["details"]["field"] == "cursor"


async def test_pages_are_the_same_whatever_plan_serves_them(lane: Lane, client: httpx.AsyncClient) -> None:
    """A word on every other line (read from the top of the order index), one on every 150th (a
    longer walk), one on three lines (the word index): paged by cursor, each gives exactly its
    lines, newest first, then by step and line, with ties of indexed_at between steps."""
    tag = uuid.uuid4().hex[:8]
    common, sparse, rare = f"alpha{tag}", f"beta{tag}", f"gamma{tag}"
    repository, sha = lane.push(project_files({"a": "echo a", "b": "echo b", "c": "echo c"}))
    run = await finished_run(client, lane, repository, sha)
    steps = [_step(run, name)["id"] for name in ("a", "b", "c")]
    at = [
        dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2029, 1, 1, tzinfo=dt.UTC),
    ]
    rows = []
    for step_id, indexed_at in zip(steps, at, strict=True):
        for number in range(1000, 1600):
            words = ["noise", common if number % 2 == 0 else "", sparse if number % 150 == 0 else ""]
            if number in (1001, 1503) and step_id != steps[1]:
                words.append(rare)
            rows.append((step_id, run["id"], repository, number, " ".join(words), indexed_at))
    async with await psycopg.AsyncConnection.connect(lane.env["FORGE_DATABASE_URL"]) as conn:
        copy_sql = "COPY pipeline.log_lines (step_id, run_id, repository, line_number, line, indexed_at) FROM STDIN"
        async with conn.cursor().copy(copy_sql) as copy:
            for row in rows:
                await copy.write_row(row)
    newest_first = sorted(rows, key=lambda r: (-r[5].timestamp(), r[0], r[3]))

    for word, limit in ((common, "50"), (sparse, "7"), (rare, "7")):
        expected = [(r[0], r[3]) for r in newest_first if word in r[4].split()]
        for extra in ({}, {"repository": repository}):
            seen: list[tuple[str, int]] = []
            params = {"q": word, "limit": limit, **extra}
            while True:
                body = (await _logs(client, lane, **params)).json()
                seen += [(hit["step_id"], hit["line_number"]) for hit in body["results"]]
                if body["next_cursor"] is None or len(seen) > len(expected):
                    break
                params["cursor"] = body["next_cursor"]
            assert seen == expected, (word, extra)


async def test_bad_queries_are_refused(lane: Lane, client: httpx.AsyncClient) -> None:
    cases = [
        ({}, "q"),
        ({"q": "  "}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"q": "x", "limit": "0"}, "limit"),
        ({"q": "x", "limit": "101"}, "limit"),
        ({"q": "x", "since": "yesterday"}, "since"),
        ({"q": "x", "cursor": "not-a-cursor"}, "cursor"),
    ]
    for params, field in cases:
        resp = await _logs(client, lane, **params)
        assert resp.status_code == 400, (params, resp.text)
        assert resp.json()["error"]["details"]["field"] == field
    resp = await client.get(
        f"{lane.gateway_url}/v1/search", params={"q": "main", "type": "deployments"}, headers=lane.headers("viewer")
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["details"]["field"] == "type"
    for path in ("/v1/search/logs", "/v1/search"):
        assert (await client.get(f"{lane.gateway_url}{path}", params={"q": "x"})).status_code == 401


async def test_runs_found_by_commit_prefix_branch_author_and_error(lane: Lane, client: httpx.AsyncClient) -> None:
    branch = f"feature/search-{uuid.uuid4().hex[:8]}"
    # A tree of its own (see test_runs_and_releases_in_one_list): the commit is this test's alone.
    repository, sha = lane.push(project_files({"ok": f"echo fine {uuid.uuid4().hex[:8]}"}), branch=branch)
    passed = await finished_run(client, lane, repository, sha, branch)
    broken, broken_sha = lane.push(project_files({"boom": "echo broken; exit 3"}))
    failed = await finished_run(client, lane, broken, broken_sha)
    assert failed["status"] == "failed"

    async def ids(q: str, **extra: str) -> list[tuple[str, list[str]]]:
        resp = await client.get(
            f"{lane.gateway_url}/v1/search", params={"q": q, **extra}, headers=lane.headers("viewer")
        )
        assert resp.status_code == 200, resp.text
        return [(hit["id"], hit["matched"]) for hit in resp.json()["results"]]

    assert await ids(sha[:10]) == [(passed["id"], ["commit"])]
    assert await ids(sha.upper()) == [(passed["id"], ["commit"])]
    assert await ids(branch) == [(passed["id"], ["branch"])]
    mine = await ids(DEVELOPER, repository=repository)
    assert mine == [(passed["id"], ["author"])]
    error = failed["error"]
    assert error, failed
    word = next(w for w in error.replace(":", " ").split() if w.isalpha() and len(w) > 3)
    assert (failed["id"], ["error"]) in await ids(word, repository=broken)
    # Paging: two runs of the same author, one per page, newest first.
    first = await client.get(
        f"{lane.gateway_url}/v1/search", params={"q": DEVELOPER, "limit": "1"}, headers=lane.headers("viewer")
    )
    body = first.json()
    assert len(body["results"]) == 1
    assert body["next_cursor"] is not None
    second = await client.get(
        f"{lane.gateway_url}/v1/search",
        params={"q": DEVELOPER, "limit": "1", "cursor": body["next_cursor"]},
        headers=lane.headers("viewer"),
    )
    assert second.json()["results"][0]["created_at"] <= body["results"][0]["created_at"]


async def _release(client: httpx.AsyncClient, lane: Lane, repository: str, sha: str) -> dict[str, Any]:
    body = {"repository": repository, "project": "api", "commit_sha": sha}
    created = await client.post(f"{lane.gateway_url}/v1/releases", json=body, headers=lane.headers("developer"))
    assert created.status_code == 201, created.text
    return dict(created.json())


async def test_runs_and_releases_in_one_list(lane: Lane, client: httpx.AsyncClient) -> None:
    # A tree of its own: the same files committed in the same second in another test's repository
    # would be the same commit, and a commit prefix search finds every repository's runs of it.
    repository, sha = lane.push(project_files({"ok": f"echo fine {uuid.uuid4().hex[:8]}"}))
    run = await finished_run(client, lane, repository, sha)
    release = await _release(client, lane, repository, sha)

    async def page(headers: dict[str, str] | None = None, **params: str) -> httpx.Response:
        return await client.get(
            f"{lane.gateway_url}/v1/search", params={"q": sha[:12], **params}, headers=headers or lane.headers("viewer")
        )

    both = (await page()).json()
    assert [(hit["type"], hit["id"], hit["matched"]) for hit in both["results"]] == [
        ("release", release["id"], ["commit"]),
        ("run", run["id"], ["commit"]),
    ]
    assert both["results"][0]["release_number"] == release["release_number"]
    assert both["results"][1]["status"] == "success"
    assert both["next_cursor"] is None

    # One a page, newest first, across the two kinds.
    first = (await page(limit="1")).json()
    assert [hit["id"] for hit in first["results"]] == [release["id"]]
    second = (await page(limit="1", cursor=first["next_cursor"])).json()
    assert [hit["id"] for hit in second["results"]] == [run["id"]]
    assert second["next_cursor"] is None
    # A cursor belongs to its query: another type is a 400.
    other = await page(limit="1", type="runs", cursor=first["next_cursor"])
    assert other.status_code == 400
    assert other.json()["error"]["details"]["field"] == "cursor"

    assert [hit["type"] for hit in (await page(type="runs")).json()["results"]] == ["run"]
    assert [hit["type"] for hit in (await page(type="releases")).json()["results"]] == ["release"]

    # A token bound to one repository finds that repository's runs and releases only.
    def bound(to: str) -> dict[str, str]:
        token = lane.platform.keys.sign(DEVELOPER, ["viewer"], extra={"forge_repository": to})
        return {"Authorization": f"Bearer {token}"}

    assert len((await page(bound(repository))).json()["results"]) == 2
    assert (await page(bound(f"{repository}-other"))).json()["results"] == []
    refused = await page(bound(f"{repository}-other"), repository=repository)
    assert refused.status_code == 403


async def test_search_without_the_release_service_is_a_503(lane: Lane, client: httpx.AsyncClient) -> None:
    """Runs alone still answer; the merged list waits for the release service (no half lists)."""
    pipeline = lane.platform.start_process(
        "pipeline",
        env={**lane.env, "FORGE_DISPATCHER_ENABLED": "false", "FORGE_RELEASE_URL": f"http://127.0.0.1:{free_port()}"},
    )
    try:
        url = f"{pipeline.url}/v1/search"
        down = await client.get(url, params={"q": "main"}, headers=lane.headers("viewer"))
        assert down.status_code == 503, down.text
        assert down.json()["error"]["details"]["dependency"] == "the release service"
        assert down.headers["retry-after"]
        runs = await client.get(url, params={"q": "main", "type": "runs"}, headers=lane.headers("viewer"))
        assert runs.status_code == 200, runs.text
    finally:
        pipeline.stop()


def _forge(lane: Lane, *args: str) -> subprocess.CompletedProcess[str]:
    token = lane.platform.token(DEVELOPER, "viewer")
    return subprocess.run(
        [sys.executable, "-m", "forge_cli", "--api", lane.gateway_url, "--token", token, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )


async def test_forge_search_from_the_command_line(lane: Lane, client: httpx.AsyncClient) -> None:
    word = f"ibex{uuid.uuid4().hex[:10]}"
    repository, sha = lane.push(project_files({"say": f"echo first; echo {word} twice {word}"}))
    run = await finished_run(client, lane, repository, sha)

    logs = _forge(lane, "search", "logs", word, "--repository", repository)
    assert logs.returncode == 0, logs.stderr
    [hit] = json.loads(logs.stdout)["results"]
    assert (hit["run_id"], hit["line_number"], hit["line"]) == (run["id"], 2, f"{word} twice {word}")

    runs = _forge(lane, "search", "runs", sha[:12])
    assert runs.returncode == 0, runs.stderr
    assert [r["id"] for r in json.loads(runs.stdout)["results"]] == [run["id"]]

    release = await _release(client, lane, repository, sha)
    both = _forge(lane, "search", sha[:12])
    assert both.returncode == 0, both.stderr
    found = [(r["type"], r["id"]) for r in json.loads(both.stdout)["results"]]
    assert found == [("release", release["id"]), ("run", run["id"])]
    releases = _forge(lane, "search", "releases", sha[:12], "--repository", repository)
    assert [r["id"] for r in json.loads(releases.stdout)["results"]] == [release["id"]]
    assert _forge(lane, "search", "runs", sha[:12], "--since", "2026-01-01T00:00:00Z").returncode == 2

    bad = _forge(lane, "search", "logs", word, "--limit", "500")
    assert bad.returncode == 1
    assert bad.stderr.startswith("forge: 400 invalid_request: ")
