"""``forge webhooks ...`` as a user runs it, against the webhook tests' gateway."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

from forge_common.events import PipelineRunCompleted

from .conftest import DEVELOPER, Instance, Receiver


def forge(hooks: Instance, *args: str, roles: tuple[str, ...] = ("developer",)) -> subprocess.CompletedProcess[str]:
    token = hooks.platform.token(DEVELOPER, *roles)
    return subprocess.run(
        [sys.executable, "-m", "forge_cli", "--api", hooks.url, "--token", token, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


async def test_the_whole_life_of_a_subscription_from_the_command_line(hooks: Instance, receiver: Receiver) -> None:
    repository = f"acme/cli-{uuid.uuid4().hex[:8]}"
    url = receiver.path()
    created = ok(
        forge(
            hooks,
            "webhooks",
            "create",
            "--url",
            url,
            "--event-type",
            "pipeline.run.*",
            "--repository",
            repository,
            "-o",
            "json",
        )
    )
    assert created["secret"].startswith("whsec_")
    sid = created["id"]
    listed = ok(forge(hooks, "webhooks", "list", "--repository", repository, "-o", "json"))
    assert [s["id"] for s in listed["subscriptions"]] == [sid]
    table = forge(hooks, "webhooks", "list", "--repository", repository, "-o", "table")
    assert table.returncode == 0
    assert sid[:8] in table.stdout

    event = await hooks.publish(
        PipelineRunCompleted(
            run_id=str(uuid.uuid4()), repository=repository, commit_sha="e" * 40, status="success", duration_seconds=2
        )
    )
    await receiver.wait(url, 1)
    for _ in range(100):
        (delivery,) = ok(forge(hooks, "webhooks", "deliveries", sid, "-o", "json"))["deliveries"]
        if delivery["status"] == "succeeded":
            break
    assert (delivery["event_id"], delivery["status"]) == (event["event_id"], "succeeded")
    again = ok(forge(hooks, "webhooks", "redeliver", sid, delivery["id"], "-o", "json"))
    assert again["status"] == "pending"
    await receiver.wait(url, 2)

    updated = ok(forge(hooks, "webhooks", "update", sid, "--disable", "--environment", "staging", "-o", "json"))
    assert (updated["active"], updated["environment"]) == (False, "staging")
    assert updated["disabled_reason"] == f"disabled by {DEVELOPER}"
    assert ok(forge(hooks, "webhooks", "get", sid, "-o", "json"))["active"] is False
    refused = forge(hooks, "webhooks", "update", sid, "--repository", "")
    assert refused.returncode != 0
    assert "admin" in refused.stderr
    deleted = forge(hooks, "webhooks", "delete", sid, "-o", "table")
    assert (deleted.returncode, deleted.stdout) == (0, f"deleted webhook subscription {sid}\n"), deleted.stderr
    gone = forge(hooks, "webhooks", "get", sid)
    assert gone.returncode != 0
    assert "not found" in gone.stderr
