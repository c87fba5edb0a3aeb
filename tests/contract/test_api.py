"""The running platform against its published contract, through the gateway.

* the gateway serves the committed documents and ``/docs`` (no token needed);
* schemathesis (from PyPI) exercises every operation of the merged document with valid tokens
  (user operations with an admin token, the internal ones with a worker token): no server
  error, no status, header, content type or body the document does not describe; the
  Server-Sent Events streams too, bounded by their ``timeout`` parameter (stream_hooks.py);
* a walk through the platform's main flow validates every real success body against the
  document, and the events it caused against the AsyncAPI document;
* every method on every documented path is answered with a documented status or an envelope.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from forge_dev.stack import Process, free_port
from forge_dev.testing import Platform, read_events, wait_for_event
from forge_gateway.contract import ASYNCAPI_PATH, OPENAPI_PATH

from .stream_hooks import STREAMS

DOCUMENT: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())
ASYNCAPI: dict[str, Any] = json.loads(ASYNCAPI_PATH.read_text())
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
HOOKS = Path(__file__).with_name("stream_hooks.py")
# Each run checks what the document promises; not whether random but valid-looking data is
# accepted (a random repository is rightly a 404).
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,unsupported_method"
)


@pytest.fixture(scope="module")
def contract_gateway(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A gateway of its own in front of the session's services, with a rate limit a fuzzer does
    not exhaust (the limit itself is tested in tests/gateway), and workload identity on, so that
    ``POST /v1/auth/token`` judges what the fuzzer sends instead of answering 404: its issuer's
    key set is unreachable (a token naming that issuer gets the documented 503; the exchange
    itself is tested in tests/integrations)."""
    issuers = tmp_path_factory.mktemp("contract-issuers") / "trusted-issuers.toml"
    issuers.write_text(
        f"""
[[issuers]]
issuer = "https://token.actions.githubusercontent.com"
jwks_url = "http://127.0.0.1:{free_port()}/.well-known/jwks"
audience = "forge"
[[issuers.rules]]
claims = {{ repository = "contract/*" }}
role = "developer"
"""
    )
    proc = platform.start_process(
        "gateway",
        {"FORGE_RATE_LIMIT": "10000000", "FORGE_USER_MAX_CONCURRENT": "1024", "FORGE_TRUSTED_ISSUERS": str(issuers)},
    )
    yield proc
    proc.stop()


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        if method in ("get", "put", "post", "delete", "patch")
    ]


def _schemathesis(gateway: str, token: str, tmp_path: Path, *selection: str) -> tuple[int, str, ET.Element]:
    junit = tmp_path / f"junit-{uuid.uuid4().hex[:6]}.xml"
    command = [
        str(SCHEMATHESIS),
        "run",
        str(OPENAPI_PATH),
        "--url",
        gateway,
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        os.environ.get("FORGE_CONTRACT_MAX_EXAMPLES", "15"),
        "--seed",
        "42",
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
        "--warnings",
        "off",
        *selection,
    ]
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": str(HOOKS)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=env, cwd=tmp_path, check=False)
    report = ET.parse(junit).getroot()  # noqa: S314 - the report schemathesis just wrote here
    return done.returncode, done.stdout + done.stderr, report


def _tested(report: ET.Element) -> set[str]:
    return {case.get("name", "") for case in report.iter("testcase")}


def test_the_gateway_serves_the_committed_documents_and_the_docs_page(platform: Platform) -> None:
    with httpx.Client(base_url=platform.gateway_url) as client:
        for path in ("/schema/openapi.json", "/openapi.json"):
            resp = client.get(path)
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("application/json")
            assert resp.json() == DOCUMENT
        events = client.get("/schema/asyncapi.json")
        assert events.status_code == 200
        assert events.json() == ASYNCAPI

        page = client.get("/docs")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "default-src 'none'" in csp
        assets = [part.split('"')[0] for part in page.text.split('="/docs/')[1:]]
        assert len(assets) == 4  # icon, stylesheet, Swagger UI, its start-up script
        for asset in assets:
            resp = client.get(f"/docs/{asset}")
            assert resp.status_code == 200, asset
            assert "immutable" in resp.headers["cache-control"]
        script = next(a for a in assets if a.endswith("swagger-ui-bundle.js"))
        assert client.get(f"/docs/{script}").headers["content-type"].startswith("text/javascript")
        assert client.get("/docs/0000/swagger-ui-bundle.js").json()["error"]["code"] == "resource_not_found"


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(
    platform: Platform, contract_gateway: Process, tmp_path: Path
) -> None:
    assert contract_gateway.url is not None
    admin = platform.token(f"contract-{uuid.uuid4().hex[:8]}@example.com", "admin")
    worker = platform.token("contract-worker", service_account=True)
    rc, output, users = _schemathesis(contract_gateway.url, admin, tmp_path, "--exclude-tag", "internal")
    assert rc == 0, output[-6000:]
    rc, output, internal = _schemathesis(contract_gateway.url, worker, tmp_path, "--include-tag", "internal")
    assert rc == 0, output[-6000:]
    tested = _tested(users) | _tested(internal)
    every = {f"{method.upper()} {path}" for path, method, _ in _operations()}
    assert every <= tested, sorted(every - tested)
    assert STREAMS
    assert {f"{method.upper()} {path}" for path, method in STREAMS} <= tested
    for report in (users, internal):
        assert int(report.get("failures", "0")) == 0
        assert int(report.get("errors", "0")) == 0


def _validate(method: str, template: str, response: httpx.Response) -> Any:
    """The answer is one the document describes: its status, and its body against the schema."""
    operation = DOCUMENT["paths"][template][method.lower()]
    answer = operation["responses"].get(str(response.status_code))
    assert answer is not None, f"{method} {template}: undocumented {response.status_code}: {response.text[:300]}"
    if "$ref" in answer:
        answer = DOCUMENT["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    media = answer.get("content", {}).get("application/json")
    if media is None:
        assert not response.content, f"{method} {template}: a body where the document says none"
        return None
    body = response.json()
    jsonschema.Draft202012Validator({**media["schema"], "components": DOCUMENT["components"]}).validate(body)
    return body


def _validate_events(template: str, text: str) -> set[str]:
    """Every event of an SSE body against the document (its fields, the JSON in ``data:`` by the
    ``contentSchema`` of its event name); the event names seen."""
    schema = DOCUMENT["paths"][template]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    variants = schema.get("oneOf") or schema["allOf"]
    names = set()
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = fields[name] + "\n" + value if name in fields else value
        if "data" not in fields:
            continue
        jsonschema.Draft202012Validator({k: v for k, v in schema.items() if k not in ("oneOf", "allOf")}).validate(
            fields
        )
        [variant] = [
            v for v in variants if v["properties"].get("event", {}).get("const", fields["event"]) == fields["event"]
        ]
        content = {**variant["properties"]["data"]["contentSchema"], "components": DOCUMENT["components"]}
        jsonschema.Draft202012Validator(content).validate(json.loads(fields["data"]))
        names.add(fields["event"])
    return names


async def test_real_answers_of_every_flow_match_the_document(platform: Platform) -> None:
    """One pass through runs, releases, approvals and deployments; every answer validated."""
    suffix = uuid.uuid4().hex[:8]
    repository, project = f"contract/repo-{suffix}", "api"
    owner, name = repository.split("/")
    sha = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    developer = platform.headers(f"dev-{suffix}@example.com", "developer")
    approver = platform.headers(f"approver-{suffix}@example.com", "approver")
    worker = platform.headers("contract-worker", service_account=True)
    statuses: dict[str, int] = {}

    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30) as client:

        async def call(method: str, template: str, url: str, headers: dict[str, str], **kwargs: Any) -> Any:
            response = await client.request(method, url, headers=headers, **kwargs)
            statuses[f"{method} {template}"] = response.status_code
            return _validate(method, template, response)

        run = await call(
            "POST",
            "/v1/runs",
            "/v1/runs",
            developer,
            json={"repository": repository, "branch": "main", "commit_sha": sha, "trigger_type": "manual"},
        )
        await call("GET", "/v1/runs/{run_id}", f"/v1/runs/{run['id']}", developer)
        # Its live status, replayed from its creation, event by event against the document.
        replay = {**developer, "Last-Event-ID": "0"}
        events = await client.get(f"/v1/runs/{run['id']}/events", params={"timeout": "2"}, headers=replay)
        assert events.status_code == 200
        assert events.headers["content-type"].startswith("text/event-stream")
        assert {"run"} <= _validate_events("/v1/runs/{run_id}/events", events.text)
        listed = await call("GET", "/v1/runs", "/v1/runs", developer, params={"repository": repository})
        assert [r["id"] for r in listed["runs"]] == [run["id"]]
        await call("DELETE", "/v1/runs/{run_id}", f"/v1/runs/{run['id']}", developer)
        await call(
            "PUT", "/v1/tasks/{task_id}/status", f"/v1/tasks/{uuid.uuid4()}/status", worker, json={"status": "running"}
        )

        release = await call(
            "POST",
            "/v1/releases",
            "/v1/releases",
            developer,
            json={"repository": repository, "project": project, "commit_sha": sha},
        )
        base = f"/v1/releases/{owner}/{name}/{project}"
        await call("GET", "/v1/releases/{release_uuid}", f"/v1/releases/{release['id']}", developer)
        await call("GET", "/v1/releases/{owner}/{name}/{project}", base, developer)
        # The other encoding of {repo}: one segment, percent-encoded.
        encoded = await client.get(f"/v1/releases/{owner}%2F{name}/{project}/1", headers=developer)
        assert _validate("GET", "/v1/releases/{owner}/{name}/{project}/{release_id}", encoded)["id"] == release["id"]
        aliases = "/v1/releases/{owner}/{name}/{project}/{release_id}/aliases"
        await call("POST", aliases, f"{base}/1/aliases", developer, json={"alias": "candidate", "alias_type": "custom"})
        await call("DELETE", aliases + "/{alias}", f"{base}/1/aliases/candidate", developer)

        approval = await call(
            "POST",
            "/v1/approvals",
            "/v1/approvals",
            approver,
            json={"release_id": release["id"], "environment": "production", "justification": "contract test"},
        )
        await call(
            "GET", "/v1/approvals/{release_id}/{environment}", f"/v1/approvals/{release['id']}/production", developer
        )
        await call("GET", "/v1/approvals/{approval_id}", f"/v1/approvals/{approval['approval_id']}", developer)
        check = {"approval_id": approval["approval_id"], "release_id": release["id"], "environment": "production"}
        await call("GET", "/v1/approvals/check", "/v1/approvals/check", worker, params=check)

        deployment = await call(
            "POST",
            "/v1/deployments",
            "/v1/deployments",
            developer,
            json={"release_id": release["id"], "environment": "production", "approval_id": approval["approval_id"]},
        )
        await wait_for_event(
            platform, "deployment.completed", lambda e: e["data"]["deployment_id"] == deployment["deployment_id"], 60
        )
        target = f"/v1/deployments/production/{owner}/{name}/{project}"
        current = "/v1/deployments/{environment}/{owner}/{name}/{project}"
        assert (await call("GET", current, target, developer))["status"] == "active"
        await call("GET", current + "/history", target + "/history", developer)
        await call("DELETE", "/v1/approvals/{approval_id}", f"/v1/approvals/{approval['approval_id']}", approver)
        await call("GET", "/v1/meta", "/v1/meta", {})

        # Outgoing webhooks: a public literal address (no DNS here), inactive so nothing is sent.
        hooks = "/v1/webhook-subscriptions"
        one = "/v1/webhook-subscriptions/{subscription_id}"
        subscription = await call(
            "POST",
            hooks,
            hooks,
            developer,
            json={
                "url": "https://203.0.114.10/forge",
                "event_types": ["pipeline.run.*"],
                "repository": repository,
                "active": False,
            },
        )
        await call("GET", hooks, hooks, developer, params={"repository": repository})
        await call("GET", one, f"{hooks}/{subscription['id']}", developer)
        await call("PATCH", one, f"{hooks}/{subscription['id']}", developer, json={"environment": "dev"})
        await call("GET", one + "/deliveries", f"{hooks}/{subscription['id']}/deliveries", developer)
        await call("DELETE", one, f"{hooks}/{subscription['id']}", developer)

    assert statuses["PUT /v1/tasks/{task_id}/status"] == 404
    # The run may have failed already (its repository does not exist): then cancelling is a 409.
    assert statuses.pop("DELETE /v1/runs/{run_id}") in (204, 409)
    assert all(code < 300 for key, code in statuses.items() if "tasks" not in key), statuses

    # The events these calls caused, as subscribers receive them, against the AsyncAPI document.
    seen = 0
    for channel in ASYNCAPI["channels"].values():
        event_type = channel["address"].removeprefix("events.")
        message = next(iter(channel["messages"].values()))
        payload = ASYNCAPI["components"]["messages"][message["$ref"].rsplit("/", 1)[1]]["payload"]
        validator = jsonschema.Draft202012Validator(
            {**payload, "components": ASYNCAPI["components"]}, format_checker=jsonschema.FormatChecker()
        )
        for event in await read_events(
            platform, event_type, lambda e: repository in json.dumps(e) or _ours(e, release)
        ):
            validator.validate(event)
            seen += 1
    assert seen >= 5  # run created, release created, approval created and revoked, deployment created/completed


def _ours(event: dict[str, Any], release: dict[str, Any]) -> bool:
    return release["id"] in json.dumps(event)


def test_every_method_on_every_path_gets_an_envelope_not_a_server_error(
    platform: Platform, contract_gateway: Process
) -> None:
    assert contract_gateway.url is not None
    headers = platform.headers("contract-methods@example.com", "admin")
    samples = {"run_id": str(uuid.uuid4()), "environment": "dev", "release_uuid": str(uuid.uuid4())}
    with httpx.Client(base_url=contract_gateway.url, headers=headers, timeout=30) as client:
        for path in DOCUMENT["paths"]:
            url = path
            for part in path.split("/"):
                if part.startswith("{"):
                    url = url.replace(part, samples.get(part[1:-1], "x"), 1)
            for method in ("OPTIONS", "HEAD", "PATCH", "TRACE", "PUT", "DELETE"):
                resp = client.request(method, url)
                assert resp.status_code < 500, f"{method} {url}: {resp.status_code} {resp.text[:200]}"
                documented = method.lower() in DOCUMENT["paths"][path]
                if method == "OPTIONS" and resp.status_code == 204:
                    assert resp.headers["allow"], url
                elif method != "HEAD" and resp.status_code >= 400:
                    assert resp.json()["error"]["code"], f"{method} {url}"
                if not documented and method not in ("OPTIONS", "HEAD"):
                    assert resp.status_code in (401, 403, 404, 405), f"{method} {url}: {resp.status_code}"
