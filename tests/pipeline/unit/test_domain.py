"""Domain rules and the presigner, without I/O."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config

from forge_common.errors import AuthenticationFailed, Conflict, InvalidRequest
from forge_common.jobs import PlannedArtifact
from forge_pipeline import domain
from forge_pipeline.presign import Presigner
from forge_pipeline.webhooks import sign, verify_signature


@pytest.mark.parametrize("repo", ["octo/repo", "a/b", "my-org/my.repo_name-2", "A1/" + "x" * 100, "o" * 39 + "/r"])
def test_valid_repositories(repo: str) -> None:
    assert domain.validate_repository(repo) == repo


@pytest.mark.parametrize(
    "repo", ["", "octo", "/repo", "octo/", "-octo/r", "octo-/r", "oc--to/r", "o" * 40 + "/r", "a/b/c", "a/..", "a/b c"]
)
def test_invalid_repositories(repo: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        domain.validate_repository(repo)
    assert err.value.details["field"] == "repository"


@pytest.mark.parametrize(
    "branch", ["main", "feature/x-1", "release/v1.2", "a" * 255, "dependabot/npm_and_yarn/lodash-4.17.21"]
)
def test_valid_branches(branch: str) -> None:
    assert domain.validate_branch(branch) == branch


@pytest.mark.parametrize(
    "branch",
    [
        "",
        "a b",
        "a..b",
        "-x",
        "/x",
        "x/",
        "x.lock",
        "x.",
        "a~b",
        "a^b",
        "a:b",
        "a?b",
        "a*b",
        "a[b",
        "a\\b",
        "@",
        "a@{b",
        "a//b",
        "a" * 256,
        "tab\tx",
    ],
)
def test_invalid_branches(branch: str) -> None:
    with pytest.raises(InvalidRequest):
        domain.validate_branch(branch)


def test_commit_sha_rules() -> None:
    assert domain.normalize_commit_sha("ABCDEF0") == "abcdef0"
    assert domain.normalize_commit_sha("a" * 64) == "a" * 64
    for bad in ("abcdef", "a" * 65, "g" * 40, " abcdef01", ""):
        with pytest.raises(InvalidRequest):
            domain.normalize_commit_sha(bad)


def _list_query(
    repository: str | None, branch: str | None, status: str | None, limit: str | None, offset: str | None
) -> domain.ListQuery:
    filters = domain.ListFilters(repository=repository, branch=branch, status=status, limit=limit, offset=offset)
    return domain.validate_list_query(filters)


def test_list_query_defaults_and_bounds() -> None:
    q = _list_query("a/b", None, None, None, None)
    assert (q.limit, q.offset) == (20, 0)
    assert _list_query("a/b", "main", "failed", "100", "5").limit == 100
    for args in [
        (None, None, None, None, None),
        ("a/b", None, None, "101", None),
        ("a/b", None, None, None, "-1"),
        ("a/b", None, "nope", None, None),
    ]:
        with pytest.raises(InvalidRequest):
            _list_query(*args)


def test_list_cursor_round_trip_and_binding() -> None:
    import datetime as dt
    import uuid

    query = domain.validate_list_query(domain.ListFilters(repository="a/b", status="failed"))
    at = dt.datetime(2026, 12, 1, 9, 0, 0, 123456, tzinfo=dt.UTC)
    run_id = str(uuid.uuid4())
    token = domain.next_cursor(query, at, run_id)
    again = domain.validate_list_query(domain.ListFilters(repository="a/b", status="failed", cursor=token))
    assert again.after == (at, run_id)
    # The same cursor with other filters, with an offset, or mangled: a 400 naming the cursor.
    for filters in (
        domain.ListFilters(repository="a/b", cursor=token),
        domain.ListFilters(repository="a/b", status="failed", cursor=token, offset="20"),
        domain.ListFilters(repository="a/b", status="failed", cursor=token[:-3]),
        domain.ListFilters(repository="a/b", status="failed", cursor="not a cursor"),
    ):
        with pytest.raises(InvalidRequest) as caught:
            domain.validate_list_query(filters)
        assert caught.value.details["field"] == "cursor"


def test_list_time_filters() -> None:
    q = domain.validate_list_query(
        domain.ListFilters(
            repository="a/b", created_after="2026-11-01T00:00:00Z", created_before="2026-12-01T00:00:00+01:00"
        )
    )
    assert q.created_after is not None
    assert q.created_after.isoformat() == "2026-11-01T00:00:00+00:00"
    assert q.created_before is not None
    assert q.created_before.hour == 23
    for bad in ("yesterday", "2026-11-01T00:00:00"):
        with pytest.raises(InvalidRequest) as caught:
            domain.validate_list_query(domain.ListFilters(repository="a/b", created_after=bad))
        assert caught.value.details["field"] == "created_after"


def test_reported_transitions() -> None:
    assert domain.step_transition("s", "pending", "running") == "apply"
    assert domain.step_transition("s", "running", "success") == "apply"
    assert domain.step_transition("s", "running", "failed") == "apply"
    assert domain.step_transition("s", "success", "success") == "noop"
    for current, new in [
        ("pending", "success"),
        ("pending", "failed"),
        ("success", "running"),
        ("failed", "success"),
        ("cancelled", "failed"),
        ("skipped", "running"),
    ]:
        with pytest.raises(Conflict):
            domain.task_transition("t", current, new)
    # The orchestrator may decide more than a worker may report.
    assert domain.task_transition("t", "pending", "skipped", internal=True) == "apply"
    assert domain.task_transition("t", "pending", "failed", internal=True) == "apply"
    with pytest.raises(Conflict):
        domain.task_transition("t", "success", "failed", internal=True)


def test_phase_outcome() -> None:
    assert domain.phase_outcome(["success", "running"]) is None
    assert domain.phase_outcome(["success", "success"]) == "success"
    assert domain.phase_outcome(["success", "skipped"]) == "success"
    assert domain.phase_outcome(["success", "failed"]) == "failed"
    assert domain.phase_outcome(["cancelled", "success"]) == "failed"


def test_commit_states() -> None:
    assert domain.commit_state_for("pending")[0] == "pending"
    assert domain.commit_state_for("success")[0] == "success"
    assert domain.commit_state_for("failed")[0] == "failure"
    assert domain.commit_state_for("cancelled")[0] == "error"


def test_webhook_signature() -> None:
    body = b'{"zen": "hi"}'
    verify_signature("s3cret", body, sign("s3cret", body))
    for header in (None, "", sign("other", body), sign("s3cret", body + b" "), "sha1=abc"):
        with pytest.raises(AuthenticationFailed):
            verify_signature("s3cret", body, header)
    with pytest.raises(AuthenticationFailed, match="not configured"):
        verify_signature("", body, sign("", body))


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000", "https://minio.example.com", None])
@pytest.mark.parametrize("key", ["pipeline-runs/r/logs/build/api/unit.log", "p/my proj+x/step ü~=&.log"])
def test_presigned_urls_match_botocore(endpoint: str | None, key: str) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="AKID",
        aws_secret_access_key="secret/key+x",
        region_name="eu-west-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    expected = client.generate_presigned_url("get_object", Params={"Bucket": "logs-bucket", "Key": key}, ExpiresIn=900)
    stamp = parse_qs(urlsplit(expected).query)["X-Amz-Date"][0]
    now = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    got = Presigner(endpoint, "logs-bucket", "AKID", "secret/key+x", "eu-west-1").url(key, 900, now)
    if endpoint is None:
        # botocore names the regional endpoint differently; the signature covers the host.
        expected_host = urlsplit(expected).netloc
        got = got.replace("s3.eu-west-1.amazonaws.com", expected_host)
        if expected_host != "s3.eu-west-1.amazonaws.com":
            pytest.skip("botocore chose another host name")
    assert got == expected


def test_shared_signer_memoises_within_its_window() -> None:
    p = Presigner("http://127.0.0.1:9000", "b", "AKID", "secret", "us-east-1")
    first = p.shared(3600)
    assert first.url("a/b.log") is first.url("a/b.log")
    assert p.shared(3600) is first
    stamp = parse_qs(urlsplit(first.url("a/b.log")).query)["X-Amz-Date"][0]
    signed_at = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    assert dt.datetime.now(dt.UTC) - signed_at < dt.timedelta(seconds=300)


def test_tree_cache_is_keyed_by_version_and_window_and_bounded() -> None:
    from forge_pipeline.service import TreeCache

    cache = TreeCache(max_bytes=100)
    cache.put("a", 1, 10, b"x" * 20)
    assert cache.get("a", 1, 10) == b"x" * 20
    assert cache.get("a", 2, 10) is None  # the run changed
    assert cache.get("a", 1, 11) is None  # new presigning window
    cache.put("b", 1, 10, b"y" * 20)
    cache.get("a", 1, 10)  # a is now the most recently used
    for name in "cdef":
        cache.put(name, 1, 10, b"z" * 20)
    assert cache.get("b", 1, 10) is None  # least recently used went first
    assert cache.get("a", 1, 10) is not None
    cache.put("huge", 1, 10, b"h" * 30)  # over a quarter of the budget: not kept
    assert cache.get("huge", 1, 10) is None


def test_artifacts_phase_comes_after_the_last_group_one_task_per_project() -> None:
    phases = [domain.PhasePlan(name="test", group_number=1), domain.PhasePlan(name="build", group_number=3)]
    declared = [
        PlannedArtifact(project="api", project_path="svc/api", name="image", type="container", build="b", path="p"),
        PlannedArtifact(project="api", project_path="svc/api", name="cli", type="binary", build="c", path="q"),
        PlannedArtifact(project="web", name="site", type="archive", build="d", path="r", timeout_seconds=60),
    ]
    phase = domain.artifacts_phase(phases, declared)
    assert phase is not None
    assert (phase.name, phase.group_number) == ("artifacts", 4)
    assert [
        (t.project_name, t.project_path, [(s.name, s.command, s.timeout_seconds) for s in t.steps]) for t in phase.tasks
    ] == [
        ("api", "svc/api", [("image", "b", None), ("cli", "c", None)]),
        ("web", ".", [("site", "d", 60)]),
    ]
    assert domain.artifacts_phase(phases, []) is None


def test_presigned_urls_carry_the_session_token_as_botocore_signs_it() -> None:
    """Temporary credentials (FORGE_S3_SESSION_TOKEN): the token is signed into the URL, and the
    URL is for the public address (FORGE_S3_PUBLIC_URL) the pipeline service passes in."""
    client = boto3.client(
        "s3",
        endpoint_url="https://logs.example.com",
        aws_access_key_id="ASIATEMP",
        aws_secret_access_key="secret",
        aws_session_token="token/with+chars=",
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    expected = client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k/x.log"}, ExpiresIn=600)
    stamp = parse_qs(urlsplit(expected).query)["X-Amz-Date"][0]
    now = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    got = Presigner("https://logs.example.com", "b", "ASIATEMP", "secret", "us-east-1", "token/with+chars=").url(
        "k/x.log", 600, now
    )
    assert urlsplit(got).netloc == "logs.example.com"
    assert parse_qs(urlsplit(got).query) == parse_qs(urlsplit(expected).query)
    assert parse_qs(urlsplit(got).query)["X-Amz-Security-Token"] == ["token/with+chars="]
