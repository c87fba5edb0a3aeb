"""The release's changes as pure functions, no database: creation (numbering, aliases, the
``release.created`` event) and alias moves by hand, each legal and illegal transition a row."""

from __future__ import annotations

import datetime as dt

import pytest

from forge_common.errors import Conflict, InvalidRequest, NotFound
from forge_release import domain
from forge_release.domain import AliasRow, NewRelease, ProjectCounter, ReleaseKey

SHA = "0123456789abcdef0123456789abcdef01234567"
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
URI = "oci-layout:///layouts/acme/shop/api:" + SHA


def _release(trigger: tuple[str, str | None, str | None] | None = None) -> NewRelease:
    return NewRelease.parse(
        repository="acme/shop",
        project="api",
        commit_sha=SHA,
        pipeline_run_id=None,
        artifacts=[],
        trigger=trigger,
        created_by="alice@example.com",
        now=NOW,
    )


def _held(alias: str, alias_type: str, number: int = 3) -> dict[str, AliasRow]:
    return {alias: AliasRow(alias, alias_type, f"release-{number}", number)}  # type: ignore[arg-type]


BRANCH = ("branch_push", "main", None)
TAG = ("tag", None, "v1.0.0")


# --- creation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "held", "aliases", "skipped"),
    [
        # manual: the number only
        (None, {}, [("7", "numeric")], []),
        # a branch push: the number and the branch, free ...
        (BRANCH, {}, [("7", "numeric"), ("main", "branch")], []),
        # ... or moving forward from the branch's older release
        (BRANCH, _held("main", "branch"), [("7", "numeric"), ("main", "branch")], []),
        # a branch name held as a custom (or tag) alias is left alone, and said so
        (BRANCH, _held("main", "custom"), [("7", "numeric")], ["main"]),
        (BRANCH, _held("main", "tag"), [("7", "numeric")], ["main"]),
        # a tag: the number and the tag
        (TAG, {}, [("7", "numeric"), ("v1.0.0", "tag")], []),
        # a branch or tag name a lookup could not reach (all digits) is not made an alias
        (("branch_push", "1234", None), {}, [("7", "numeric")], []),
    ],
)
def test_create_numbers_and_aliases(
    trigger: tuple[str, str | None, str | None] | None,
    held: dict[str, AliasRow],
    aliases: list[tuple[str, str]],
    skipped: list[str],
) -> None:
    release = _release(trigger)
    created, event = domain.create(release, ProjectCounter(7, "acme/shop", "api"), None, held, URI)
    assert created.number == 7
    assert list(created.aliases) == aliases
    assert [h.alias for h in created.skipped] == skipped
    assert created.oci_uri == URI
    assert (event.release_id, event.release_number, event.commit_sha) == (release.id, 7, SHA)
    assert event.trigger_type == release.trigger.trigger_type


def test_create_uses_the_projects_first_spelling() -> None:
    created, event = domain.create(_release(), ProjectCounter(1, "Acme/Shop", "API"), None, {}, URI)
    assert (created.release.repository, created.release.project) == ("Acme/Shop", "API")
    assert (event.repository, event.project) == ("Acme/Shop", "API")
    assert created.release.canonical_id == f"Acme/Shop/API/{SHA}"


@pytest.mark.parametrize(
    ("trigger", "existing", "held", "details"),
    [
        # a second release of the same commit: 409 naming the first
        (None, ReleaseKey("first", 2), {}, {"existing_id": "first", "release_number": 2}),
        # the same check wins over a taken tag
        (TAG, ReleaseKey("first", 2), _held("v1.0.0", "tag"), {"existing_id": "first", "release_number": 2}),
        # a tag names one release forever, whoever holds it
        (
            TAG,
            None,
            _held("v1.0.0", "tag"),
            {"alias": "v1.0.0", "alias_type": "tag", "release_id": "release-3", "release_number": 3},
        ),
        (
            TAG,
            None,
            _held("v1.0.0", "custom"),
            {"alias": "v1.0.0", "alias_type": "tag", "release_id": "release-3", "release_number": 3},
        ),
    ],
)
def test_create_refuses(
    trigger: tuple[str, str | None, str | None] | None,
    existing: ReleaseKey | None,
    held: dict[str, AliasRow],
    details: dict[str, object],
) -> None:
    with pytest.raises(Conflict) as refused:
        domain.create(_release(trigger), ProjectCounter(7, "acme/shop", "api"), existing, held, URI)
    assert refused.value.details == details


def test_numbers_follow_the_counter() -> None:
    """The store's counter is the sequence; the domain numbers and aliases by it, one by one."""
    numbers = [
        domain.create(_release(), ProjectCounter(n, "acme/shop", "api"), None, {}, URI)[0].aliases[0] for n in (1, 2, 3)
    ]
    assert numbers == [("1", "numeric"), ("2", "numeric"), ("3", "numeric")]


# --- aliases by hand -------------------------------------------------------------------------

TARGET = ReleaseKey("target", 5)


@pytest.mark.parametrize(
    ("held", "alias_type", "action", "moved_from"),
    [
        (None, "custom", "create", None),
        (None, "branch", "create", None),
        (None, "tag", "create", None),
        # already there: a no-op (200)
        (AliasRow("x-alias", "custom", "target", 5), "custom", "noop", None),
        (AliasRow("x-alias", "branch", "target", 5), "branch", "noop", None),
        # a branch alias moves forward (and to the same number's release)
        (AliasRow("x-alias", "branch", "older", 4), "branch", "move", "older"),
    ],
)
def test_set_alias_legal(held: AliasRow | None, alias_type: str, action: str, moved_from: str | None) -> None:
    change = domain.set_alias(held, TARGET, "x-alias", alias_type)
    assert (change.action, change.moved_from) == (action, moved_from)
    assert (change.release_id, change.release_number, change.alias_type) == ("target", 5, alias_type)


@pytest.mark.parametrize(
    ("held", "alias_type", "error"),
    [
        # branch aliases never move back
        (AliasRow("x-alias", "branch", "newer", 6), "branch", Conflict),
        # tag, numeric and custom aliases never move
        (AliasRow("x-alias", "tag", "other", 4), "tag", Conflict),
        (AliasRow("x-alias", "numeric", "other", 4), "custom", Conflict),
        (AliasRow("x-alias", "custom", "other", 4), "custom", Conflict),
        # one name, one type per release
        (AliasRow("x-alias", "custom", "target", 5), "branch", Conflict),
        # only tag, branch and custom aliases are made by hand
        (None, "numeric", InvalidRequest),
        (None, "label", InvalidRequest),
    ],
)
def test_set_alias_illegal(held: AliasRow | None, alias_type: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        domain.set_alias(held, TARGET, "x-alias", alias_type)


def test_set_alias_checks_the_name() -> None:
    with pytest.raises(InvalidRequest):
        domain.set_alias(None, TARGET, "123", "custom")


@pytest.mark.parametrize(
    ("held", "error"),
    [
        (AliasRow("x-alias", "branch", "target", 5), None),
        (AliasRow("x-alias", "custom", "target", 5), None),
        (AliasRow("x-alias", "tag", "target", 5), Conflict),  # permanent
        (AliasRow("x-alias", "numeric", "target", 5), Conflict),  # permanent
        (AliasRow("x-alias", "custom", "other", 4), NotFound),  # not this release's
        (None, NotFound),
    ],
)
def test_remove_alias(held: AliasRow | None, error: type[Exception] | None) -> None:
    if error is None:
        assert domain.remove_alias(held, TARGET, "x-alias") == held
    else:
        with pytest.raises(error):
            domain.remove_alias(held, TARGET, "x-alias")
