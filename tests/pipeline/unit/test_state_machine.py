"""The state machine of runs, phases, tasks and steps, without a database.

The tables below are written out by hand from the spec and the service README (not derived from
``domain``): every pair (current, requested) of every entity is either legal (``apply``), a
repeat (``noop``) or refused with a 409 ``Conflict``.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable

import pytest

from forge_common.errors import Conflict, InvalidRequest
from forge_common.events import PipelineRunCompleted, PipelineRunFailed
from forge_pipeline import domain
from forge_pipeline.domain import Snapshot, StepReport, TaskReport
from forge_pipeline.records import PhaseTally, Run, RunStatus, Task, TaskInPhase, WorkStatus

RUN = ("pending", "running", "success", "failed", "cancelled")
PHASE = ("pending", "running", "success", "failed", "skipped")
WORK = ("pending", "running", "success", "failed", "skipped", "cancelled")

LEGAL_RUN = {
    ("pending", "running"),
    ("pending", "success"),
    ("pending", "failed"),
    ("pending", "cancelled"),
    ("running", "success"),
    ("running", "failed"),
    ("running", "cancelled"),
}
LEGAL_PHASE = {
    ("pending", "running"),
    ("pending", "success"),
    ("pending", "failed"),
    ("pending", "skipped"),
    ("running", "success"),
    ("running", "failed"),
    ("running", "skipped"),
}
# What a worker may report over HTTP.
LEGAL_REPORTED = {("pending", "running"), ("running", "success"), ("running", "failed")}
# What the orchestrator may decide (timeouts, fail fast, cancellation).
LEGAL_INTERNAL = LEGAL_REPORTED | {
    ("pending", "failed"),
    ("pending", "skipped"),
    ("pending", "cancelled"),
    ("running", "cancelled"),
}

Check = Callable[[str, str, str], str]
CASES: list[tuple[str, Check, tuple[str, ...], set[tuple[str, str]]]] = [
    ("run", domain.run_transition, RUN, LEGAL_RUN),
    ("phase", domain.phase_transition, PHASE, LEGAL_PHASE),
    ("task, worker", lambda i, c, n: domain.task_transition(i, c, n, internal=False), WORK, LEGAL_REPORTED),
    ("task, orchestrator", lambda i, c, n: domain.task_transition(i, c, n, internal=True), WORK, LEGAL_INTERNAL),
    ("step, worker", lambda i, c, n: domain.step_transition(i, c, n, internal=False), WORK, LEGAL_REPORTED),
    ("step, orchestrator", lambda i, c, n: domain.step_transition(i, c, n, internal=True), WORK, LEGAL_INTERNAL),
]
TABLE = [
    pytest.param(check, current, new, "noop" if current == new else "apply" if (current, new) in legal else "409",
                 id=f"{entity}: {current} -> {new}")
    for entity, check, statuses, legal in CASES
    for current, new in itertools.product(statuses, statuses)
]  # fmt: skip


@pytest.mark.parametrize(("check", "current", "new", "expected"), TABLE)
def test_every_transition_of_every_entity(check: Check, current: str, new: str, expected: str) -> None:
    if expected == "409":
        with pytest.raises(Conflict) as refused:
            check("x1", current, new)
        assert refused.value.details == {"id": "x1", "current_status": current, "requested_status": new}
        assert f"cannot go from {current} to {new}" in refused.value.message
    else:
        assert check("x1", current, new) == expected


def test_the_table_covers_every_pair() -> None:
    assert len(TABLE) == 5 * 5 + 5 * 5 + 4 * 6 * 6


# --- a report, decided from a snapshot ---------------------------------------------------------

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def run(status: RunStatus = "running", discovered: bool = True) -> Run:
    return Run(
        id="r1",
        repository="acme/app",
        branch="main",
        commit_sha="abc1234",
        tag=None,
        triggered_by="dev@acme.io",
        trigger_type="push",
        status=status,
        error=None,
        failed_phase=None,
        request_fingerprint=None,
        started_at=T0,
        completed_at=None,
        discovered_at=T0 if discovered else None,
        tree_version=1,
    )


def snapshot(
    run_status: RunStatus = "running",
    task: WorkStatus = "pending",
    phase: str = "pending",
    steps: dict[str, WorkStatus] | None = None,
) -> Snapshot:
    return Snapshot(
        run=run(run_status),
        task=TaskInPhase(
            id="t1",
            run_id="r1",
            phase_id="p1",
            project_name="api",
            status=task,
            error=None,
            started_at=None,
            completed_at=None,
            phase_status=phase,  # type: ignore[arg-type]
        ),
        steps=steps if steps is not None else {"s1": "pending", "s2": "pending"},
    )


def test_a_running_step_starts_its_task_phase_and_run() -> None:
    writes = domain.apply_report(
        snapshot(run_status="pending"), TaskReport(task_id="t1", steps=(StepReport(id="s1", status="running"),))
    )
    assert [(w.change, w.id, w.status) for w in writes.steps] == [("update", "s1", "running")]
    assert (writes.start_task, writes.start_phase, writes.start_run) == (True, True, True)
    assert writes.task is None
    assert not writes.task_finished


def test_only_what_is_still_pending_is_started() -> None:
    writes = domain.apply_report(
        snapshot(task="running", phase="running", steps={"s1": "success", "s2": "pending"}),
        TaskReport(task_id="t1", steps=(StepReport(id="s2", status="running"),)),
    )
    assert (writes.start_task, writes.start_phase, writes.start_run) == (False, False, False)


def test_a_worker_may_not_skip_running_on_the_single_step_endpoint() -> None:
    with pytest.raises(Conflict):
        domain.apply_report(snapshot(), TaskReport(task_id="t1", steps=(StepReport(id="s1", status="success"),)))


def test_the_batched_report_takes_a_pending_step_through_running() -> None:
    report = TaskReport(
        task_id="t1",
        steps=(StepReport(id="s1", status="success", exit_code=0), StepReport(id="s2", status="failed", exit_code=2)),
        status="failed",
        error="exit 2",
        through_running=True,
    )
    writes = domain.apply_report(snapshot(), report)
    assert [(w.change, w.status, w.exit_code) for w in writes.steps] == [
        ("start_and_update", "success", 0),
        ("start_and_update", "failed", 2),
    ]
    # The task was started by its steps, so running -> failed is legal and finishes it.
    assert (writes.start_task, writes.task, writes.task_status, writes.task_finished) == (
        True,
        "update",
        "failed",
        True,
    )
    assert not writes.skip_pending_steps


def test_a_finished_task_skips_its_steps_that_never_ran() -> None:
    writes = domain.apply_report(
        snapshot(task="running", steps={"s1": "failed", "s2": "pending"}),
        TaskReport(task_id="t1", status="failed"),
    )
    assert (writes.task, writes.task_finished, writes.skip_pending_steps) == ("update", True, True)


def test_a_repeated_report_changes_nothing_but_may_add_details() -> None:
    snap = snapshot(task="success", steps={"s1": "success", "s2": "success"})
    writes = domain.apply_report(
        snap,
        TaskReport(
            task_id="t1",
            steps=(StepReport(id="s1", status="success"), StepReport(id="s2", status="success", logs_s3_key="k")),
            status="success",
        ),
    )
    assert [w.change for w in writes.steps] == ["read", "details"]
    assert (writes.task, writes.task_finished, writes.start_task) == ("read", False, False)


@pytest.mark.parametrize("run_status", ["success", "failed", "cancelled"])
def test_nothing_starts_in_a_finished_run(run_status: RunStatus) -> None:
    with pytest.raises(Conflict) as refused:
        domain.apply_report(
            snapshot(run_status=run_status), TaskReport(task_id="t1", steps=(StepReport(id="s1", status="running"),))
        )
    assert refused.value.details == {"run_id": "r1", "run_status": run_status}
    with pytest.raises(Conflict):
        domain.apply_report(snapshot(run_status=run_status, task="running"), TaskReport(task_id="t1", status="running"))


def test_running_work_of_a_failed_run_may_still_finish() -> None:
    writes = domain.apply_report(
        snapshot(run_status="failed", task="running", steps={"s1": "running"}),
        TaskReport(task_id="t1", steps=(StepReport(id="s1", status="success"),), status="success"),
    )
    assert [w.change for w in writes.steps] == ["update"]
    assert writes.task_finished


def test_a_step_of_another_task_is_a_bad_request() -> None:
    with pytest.raises(InvalidRequest) as bad:
        domain.apply_report(snapshot(), TaskReport(task_id="t1", steps=(StepReport(id="s9", status="running"),)))
    assert bad.value.details == {"field": "steps", "id": "s9"}


def test_one_refused_step_refuses_the_whole_report() -> None:
    report = TaskReport(
        task_id="t1",
        steps=(StepReport(id="s1", status="running"), StepReport(id="s2", status="success")),
    )
    with pytest.raises(Conflict):
        domain.apply_report(snapshot(), report)


def test_steps_are_decided_in_report_order() -> None:
    report = TaskReport(
        task_id="t1", steps=(StepReport(id="s1", status="running"), StepReport(id="s1", status="success"))
    )
    assert [w.change for w in domain.apply_report(snapshot(), report).steps] == ["update", "update"]


# --- roll-ups -----------------------------------------------------------------------------------


def task(status: WorkStatus, error: str | None = None) -> Task:
    return Task(
        id="t1",
        run_id="r1",
        phase_id="p1",
        project_name="api",
        status=status,
        error=error,
        started_at=T0,
        completed_at=T0,
    )


def tally(*statuses: WorkStatus, status: str = "running") -> PhaseTally:
    return PhaseTally(id="p1", name="test", status=status, task_statuses=list(statuses))  # type: ignore[arg-type]


def test_the_first_failed_task_fails_the_run() -> None:
    decision = domain.roll_up("running", True, task("failed", "exit 1"), tally("failed", "running"))
    assert decision.finish_phase is None
    assert decision.fail_run == "task api of phase test failed: exit 1"
    assert decision.failed_phase == "test"


def test_the_last_successful_task_finishes_its_phase_and_asks_for_the_run() -> None:
    decision = domain.roll_up("running", True, task("success"), tally("success", "skipped"))
    assert (decision.finish_phase, decision.fail_run, decision.check_run_success) == ("success", None, True)


def test_an_undiscovered_run_is_never_completed_by_a_roll_up() -> None:
    assert not domain.roll_up("running", False, task("success"), tally("success")).check_run_success


def test_a_finished_run_only_gets_its_phase_closed() -> None:
    decision = domain.roll_up("failed", True, task("failed"), tally("failed", "skipped"))
    assert decision == domain.RollUp(finish_phase="failed")
    assert domain.roll_up("failed", True, task("success"), tally("success", status="skipped")) == domain.RollUp()


@pytest.mark.parametrize(
    ("phases", "succeeded"),
    [
        ([], False),
        (["success"], True),
        (["success", "skipped"], True),
        (["skipped"], False),
        (["success", "running"], False),
        (["success", "failed"], False),
    ],
)
def test_when_a_run_succeeded(phases: list[str], succeeded: bool) -> None:
    assert domain.run_succeeded(phases) is succeeded


def test_events_of_a_finished_run() -> None:
    done = run("success")
    done.completed_at = T0 + dt.timedelta(seconds=42.4)
    assert domain.run_finished_events(done) == [
        PipelineRunCompleted(
            run_id="r1", repository="acme/app", commit_sha="abc1234", status="success", duration_seconds=42
        )
    ]
    failed = run("failed")
    failed.completed_at, failed.error, failed.failed_phase = T0, "boom", "test"
    assert [type(e) for e in domain.run_finished_events(failed)] == [PipelineRunFailed, PipelineRunCompleted]
    assert domain.run_finished_events(run("cancelled")) == []
