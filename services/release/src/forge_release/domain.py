"""Pure rules of releases: what is valid, how identifiers resolve, how aliases may change.

Nothing here does I/O. Every rule violation is a :class:`ForgeError` carrying the offending
field in ``details.field`` so a client can point at it. The changes a release goes through are
functions returning the new state and, where something is published, the event:
:func:`create` (numbered, aliased, ``release.created``), :func:`set_alias` and
:func:`remove_alias` (no event).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from forge_common.errors import Conflict, InvalidRequest, NotFound
from forge_common.events import ReleaseCreated

__all__ = [
    "MAX_ARTIFACTS",
    "AliasAction",
    "AliasChange",
    "AliasRef",
    "AliasRow",
    "Artifact",
    "ArtifactFields",
    "CreatedRelease",
    "Identifier",
    "NewRelease",
    "ProjectCounter",
    "Release",
    "ReleaseKey",
    "ReleasePage",
    "ReleaseSummary",
    "SearchHit",
    "SearchPage",
    "SearchQuery",
    "Trigger",
    "classify_identifier",
    "create",
    "creation_aliases",
    "decide_alias",
    "decide_alias_removal",
    "remove_alias",
    "set_alias",
    "subject_id",
    "validate_alias_name",
    "validate_commit_sha",
    "validate_project",
    "validate_repository",
    "validate_stable_id",
]

TriggerType = Literal["branch_push", "tag", "manual"]
ArtifactType = Literal["container", "binary", "archive"]
AliasType = Literal["numeric", "tag", "branch", "custom"]

ARTIFACT_TYPES = ("container", "binary", "archive")
TRIGGER_TYPES = ("branch_push", "tag", "manual")
USER_ALIAS_TYPES = ("tag", "branch", "custom")
MAX_ARTIFACTS = 256

# One path component of an OCI repository name (distribution spec), case-insensitive here
# because GitHub names are; the OCI path uses the lower-cased form.
_OCI_COMPONENT = r"[A-Za-z0-9]+(?:(?:[._]|__|-+)[A-Za-z0-9]+)*"
_COMPONENT = re.compile(rf"^{_OCI_COMPONENT}$")
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_HEX_PREFIX = re.compile(r"^[0-9a-f]{7,64}$")
_DIGITS = re.compile(r"^[0-9]+$")
# Git ref-like names: tags (v1.2.3, api@1.0), branches (feature/login), custom names.
_ALIAS = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/@+-]*$")
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_OCI_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# The embedded platform registry: an OCI image layout on disk (absolute path, then :tag/@digest).
_LAYOUT_REF = re.compile(r"^oci-layout:///[^\s:@]+(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")
_OCI_REF = re.compile(
    r"^(?:oci://)?"
    r"(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|[A-Za-z0-9-]+(?=:[0-9])|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?"
    rf"/{_OCI_PATH_COMPONENT}(?:/{_OCI_PATH_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?"
    r"(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Fa-f0-9]{32,})?$"
)
_URI_SCHEMES = ("https", "http", "oci", "s3", "gs", "file")


def _bad(field_name: str, message: str, **extra: object) -> InvalidRequest:
    return InvalidRequest(message, {"field": field_name, **extra})


def validate_repository(value: str, field_name: str = "repository") -> str:
    parts = value.split("/")
    if len(parts) != 2 or not all(parts):
        raise _bad(field_name, f"{field_name} must be 'owner/name', got {value!r}")
    owner, name = parts
    if len(owner) > 39 or len(name) > 100 or not _COMPONENT.match(owner) or not _COMPONENT.match(name):
        raise _bad(
            field_name,
            f"{field_name} {value!r} is not a valid 'owner/name' (letters, digits and single '.', '_', '-' between them; "
            "owner at most 39 characters, name at most 100)",
        )
    return value


def validate_project(value: str, field_name: str = "project") -> str:
    if not value or len(value) > 100 or not _COMPONENT.match(value):
        raise _bad(
            field_name,
            f"{field_name} {value!r} is not a valid project name (1-100 letters and digits, "
            "separated by single '.', '_' or '-')",
        )
    return value


def validate_commit_sha(value: str) -> str:
    sha = value.lower()
    if not _SHA.match(sha):
        raise _bad("commit_sha", "commit_sha must be a full 40-character (or 64-character) hexadecimal commit SHA")
    return sha


def validate_alias_name(value: str, field_name: str = "alias") -> str:
    """Names of tag, branch and custom aliases.

    All-digit names are the release numbers' own namespace, and hexadecimal names of 7+
    characters would be shadowed by commit-SHA lookup, so both are refused.
    """
    if not value or len(value) > 128 or not _ALIAS.match(value):
        raise _bad(
            field_name,
            f"{field_name} {value!r} is invalid: 1-128 characters, letters, digits and '._/@+-', "
            "starting with a letter, digit or '_'",
        )
    if ".." in value or "//" in value or value.endswith(("/", ".", ".lock")):
        raise _bad(
            field_name,
            f"{field_name} {value!r} is not a valid ref-like name ('..', '//', trailing '/', '.' or '.lock')",
        )
    if _DIGITS.match(value):
        raise _bad(
            field_name, f"{field_name} {value!r} is all digits: numeric aliases are the release numbers themselves"
        )
    if _HEX_PREFIX.match(value):
        raise _bad(
            field_name,
            f"{field_name} {value!r} looks like an abbreviated commit SHA, which lookups resolve first; choose another name",
        )
    return value


def _alias_ok(value: str) -> bool:
    try:
        validate_alias_name(value)
    except InvalidRequest:
        return False
    return True


def validate_oci_reference(value: str, field_name: str) -> str:
    if not _OCI_REF.match(value) and not _LAYOUT_REF.match(value):
        raise _bad(
            field_name,
            f"{field_name} {value!r} is not a fully qualified OCI reference "
            "(registry/repository[:tag][@sha256:digest], registry with a '.' or a port, lower-case path)",
        )
    return value


def validate_published_uri(value: str, field_name: str) -> str:
    if _OCI_REF.match(value) or _LAYOUT_REF.match(value):
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in _URI_SCHEMES or not (parts.netloc or parts.scheme == "file"):
        raise _bad(
            field_name,
            f"{field_name} {value!r} must be a URL ({', '.join(s + '://' for s in _URI_SCHEMES)}) or a fully qualified OCI reference",
        )
    return value


def _clean_text(value: str, field_name: str, limit: int = 2048) -> str:
    if not value or len(value) > limit or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise _bad(field_name, f"{field_name} must be 1-{limit} characters without whitespace or control characters")
    return value


# (name, type, tracking_oci_uri, primary_published_uri, digest, size) as a request gives them.
ArtifactFields = tuple[str, str, str, str, str | None, int | None]
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class Artifact(msgspec.Struct, frozen=True):
    name: str
    type: ArtifactType
    tracking_oci_uri: str
    primary_published_uri: str
    digest: str | None = None
    size: int | None = None

    @property
    def pinned_reference(self) -> str | None:
        """The tracking artifact named by its digest (tag dropped), or None without a digest."""
        if self.digest is None:
            return None
        ref = self.tracking_oci_uri.split("@", 1)[0]
        last = ref.rsplit("/", 1)
        if ":" in last[-1]:
            ref = ref[: ref.rindex(":")]
        return f"{ref}@{self.digest}"

    @classmethod
    def parse(
        cls,
        index: int,
        name: str,
        type_: str,
        tracking: str,
        published: str,
        digest: str | None = None,
        size: int | None = None,
    ) -> Artifact:
        prefix = f"artifacts[{index}]"
        if not name or len(name) > 128 or not _ARTIFACT_NAME.match(name):
            raise _bad(f"{prefix}.name", f"{prefix}.name {name!r} is invalid: 1-128 letters, digits, '.', '_' or '-'")
        if type_ not in ARTIFACT_TYPES:
            raise _bad(f"{prefix}.type", f"{prefix}.type must be one of {', '.join(ARTIFACT_TYPES)}; got {type_!r}")
        _clean_text(tracking, f"{prefix}.tracking_oci_uri")
        validate_oci_reference(tracking, f"{prefix}.tracking_oci_uri")
        _clean_text(published, f"{prefix}.primary_published_uri")
        validate_published_uri(published, f"{prefix}.primary_published_uri")
        if digest is not None and not _DIGEST.match(digest):
            raise _bad(f"{prefix}.digest", f"{prefix}.digest must be 'sha256:' and 64 lower-case hex digits")
        if size is not None and (isinstance(size, bool) or size < 0):
            raise _bad(f"{prefix}.size", f"{prefix}.size must be a byte count >= 0")
        return cls(name, type_, tracking, published, digest, size)  # type: ignore[arg-type]


# A stable identity: "sub:<token subject>" or "github:<numeric GitHub user id>".
_STABLE_ID = re.compile(r"^(?:sub:[^\s\x00-\x1f]{1,255}|github:[0-9]{1,20})$")


def subject_id(subject: str) -> str:
    """The stable identity of a token's subject."""
    return f"sub:{subject}"


def validate_stable_id(value: str, field_name: str = "trigger.triggered_by_id") -> str:
    if not _STABLE_ID.match(value):
        raise _bad(
            field_name,
            f"{field_name} must be 'sub:<token subject>' or 'github:<numeric GitHub user id>', got {value!r}",
        )
    return value


class Trigger(msgspec.Struct, frozen=True):
    trigger_type: TriggerType
    triggered_by: str
    branch: str | None = None
    tag: str | None = None
    # The stable identity of ``triggered_by`` (None when unknown: compared by name then).
    triggered_by_id: str | None = None

    @classmethod
    def parse(
        cls, trigger_type: str, branch: str | None, tag: str | None, triggered_by: str, triggered_by_id: str | None
    ) -> Trigger:
        if trigger_type not in TRIGGER_TYPES:
            raise _bad(
                "trigger.trigger_type",
                f"trigger.trigger_type must be one of {', '.join(TRIGGER_TYPES)}; got {trigger_type!r}",
            )
        for name, value in (("branch", branch), ("tag", tag)):
            if value is not None:
                _clean_text(value, f"trigger.{name}", 255)
                if not _ALIAS.match(value) or ".." in value:
                    raise _bad(f"trigger.{name}", f"trigger.{name} {value!r} is not a valid git ref name")
        if trigger_type == "branch_push" and not branch:
            raise _bad("trigger.branch", "a branch_push trigger needs trigger.branch")
        if trigger_type == "tag" and not tag:
            raise _bad("trigger.tag", "a tag trigger needs trigger.tag")
        return cls(trigger_type, triggered_by, branch, tag, triggered_by_id)  # type: ignore[arg-type]


@dataclass(frozen=True)
class NewRelease:
    """A release about to be created: everything but its number, which the store assigns."""

    id: str
    repository: str
    project: str
    commit_sha: str
    pipeline_run_id: str | None
    created_by: str
    created_at: dt.datetime
    trigger: Trigger
    artifacts: tuple[Artifact, ...] = field(default_factory=tuple)
    created_by_id: str | None = None  # see subject_id

    @property
    def canonical_id(self) -> str:
        return f"{self.repository}/{self.project}/{self.commit_sha}"

    @classmethod
    def parse(
        cls,
        *,
        repository: str,
        project: str,
        commit_sha: str,
        pipeline_run_id: str | None,
        artifacts: list[ArtifactFields],
        trigger: tuple[str, str | None, str | None] | None,
        created_by: str,
        now: dt.datetime,
        triggered_by: str | None = None,
        created_by_id: str | None = None,
        triggered_by_id: str | None = None,
    ) -> NewRelease:
        """``triggered_by``/``triggered_by_id``: the run's author a worker releases for; absent,
        the creator is the trigger."""
        validate_repository(repository)
        validate_project(project)
        sha = validate_commit_sha(commit_sha)
        run_id: str | None = None
        if pipeline_run_id is not None:
            try:
                run_id = str(uuid.UUID(pipeline_run_id))
            except ValueError:
                raise _bad("pipeline_run_id", f"pipeline_run_id {pipeline_run_id!r} is not a UUID") from None
        if len(artifacts) > MAX_ARTIFACTS:
            raise _bad("artifacts", f"at most {MAX_ARTIFACTS} artifacts per release")
        parsed = tuple(Artifact.parse(i, *a) for i, a in enumerate(artifacts))
        seen: set[str] = set()
        for i, art in enumerate(parsed):
            if art.name in seen:
                raise _bad(f"artifacts[{i}].name", f"artifact name {art.name!r} appears twice")
            seen.add(art.name)
        if triggered_by:
            who, who_id = triggered_by, validate_stable_id(triggered_by_id) if triggered_by_id else None
        else:
            who, who_id = created_by, created_by_id
        trig = (
            Trigger.parse(*trigger, who, who_id) if trigger is not None else Trigger("manual", who, None, None, who_id)
        )
        return cls(str(uuid.uuid4()), repository, project, sha, run_id, created_by, now, trig, parsed, created_by_id)


# --- identifiers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Identifier:
    """How a ``{release-id}`` path segment may resolve, in the documented order:
    commit SHA (full or >= 7 hex characters), then release number, then alias (tag or any other;
    one alias name names one release of a project, whatever its type)."""

    raw: str
    sha_prefix: str | None
    number: int | None


def classify_identifier(raw: str) -> Identifier:
    if not raw or len(raw) > 255:
        raise _bad("release-id", "release id must be 1-255 characters")
    lowered = raw.lower()
    sha = lowered if _HEX_PREFIX.match(lowered) else None
    # Canonical decimal only ("2", not "002"), as the numeric alias spells it.
    number = int(raw) if _DIGITS.match(raw) and len(raw) <= 18 and raw == str(int(raw)) else None
    return Identifier(raw, sha, number)


# --- aliases ---------------------------------------------------------------------------------


class AliasRow(msgspec.Struct, frozen=True):
    alias: str
    alias_type: AliasType
    release_id: str
    release_number: int


AliasAction = Literal["create", "noop", "move"]


def decide_alias(existing: AliasRow | None, release_id: str, release_number: int, alias_type: str) -> AliasAction:
    """Whether ``alias`` of ``alias_type`` may point at the release.

    Tag and numeric aliases never move. A branch alias follows the newest release of its
    branch: it moves forward to a newer release, never back. Custom aliases don't move either
    (delete, then add); re-adding the same alias to the same release is a no-op.
    """
    if alias_type not in USER_ALIAS_TYPES:
        raise _bad("alias_type", f"alias_type must be one of {', '.join(USER_ALIAS_TYPES)}; got {alias_type!r}")
    if existing is None:
        return "create"
    if existing.release_id == release_id:
        if existing.alias_type == alias_type:
            return "noop"
        raise Conflict(
            f"alias {existing.alias!r} already names this release as a {existing.alias_type} alias",
            {"alias": existing.alias, "alias_type": existing.alias_type, "release_id": existing.release_id},
        )
    details = {
        "alias": existing.alias,
        "alias_type": existing.alias_type,
        "release_id": existing.release_id,
        "release_number": existing.release_number,
    }
    if existing.alias_type == "branch" and alias_type == "branch":
        if existing.release_number > release_number:
            raise Conflict(
                f"branch alias {existing.alias!r} points to the newer release {existing.release_number}; "
                "a branch alias only moves forward to the newest release of its branch",
                details,
            )
        return "move"
    if existing.alias_type in ("tag", "numeric"):
        raise Conflict(f"{existing.alias_type} alias {existing.alias!r} names another release and never moves", details)
    raise Conflict(f"alias {existing.alias!r} already names another release of this project", details)


def decide_alias_removal(existing: AliasRow | None, release_id: str, alias: str) -> None:
    if existing is None or existing.release_id != release_id:
        raise NotFound(f"release has no alias {alias!r}", {"alias": alias})
    if existing.alias_type in ("numeric", "tag"):
        raise Conflict(
            f"{existing.alias_type} alias {alias!r} is permanent and cannot be removed",
            {"alias": alias, "alias_type": existing.alias_type},
        )


def creation_aliases(trigger: Trigger, release_number: int) -> list[tuple[str, AliasType]]:
    """Aliases a new release gets: its number, its tag, and its branch (as the branch's newest)."""
    aliases: list[tuple[str, AliasType]] = [(str(release_number), "numeric")]
    if trigger.trigger_type == "tag" and trigger.tag and _alias_ok(trigger.tag):
        aliases.append((trigger.tag, "tag"))
    if trigger.trigger_type == "branch_push" and trigger.branch and _alias_ok(trigger.branch):
        aliases.append((trigger.branch, "branch"))
    return aliases


# --- records read from the store -------------------------------------------------------------
# msgspec Structs, like Artifact, Trigger and AliasRow above: every GET builds several per
# release, and a Struct is built several times faster than a frozen dataclass.


class AliasRef(msgspec.Struct, frozen=True):
    alias: str
    alias_type: AliasType


class Release(msgspec.Struct, frozen=True):
    """A stored release, as Get Release shows it."""

    id: str
    repository: str
    project: str
    commit_sha: str
    release_number: int
    pipeline_run_id: str | None
    oci_uri: str
    oci_digest: str
    created_at: dt.datetime
    created_by: str
    created_by_id: str | None
    trigger: Trigger
    artifacts: tuple[Artifact, ...]
    aliases: tuple[AliasRef, ...]


class ReleaseKey(msgspec.Struct, frozen=True):
    """What identifies a stored release to a client that asked for another one."""

    id: str
    release_number: int


class ReleaseSummary(msgspec.Struct, frozen=True):
    id: str
    commit_sha: str
    release_number: int
    created_at: dt.datetime


@dataclass(frozen=True)
class ReleasePage:
    """A page of a project's releases, newest first; ``next_cursor`` continues it."""

    releases: tuple[ReleaseSummary, ...]
    total: int
    limit: int
    offset: int
    next_cursor: str | None


class SearchHit(msgspec.Struct, frozen=True):
    release: ReleaseSummary
    repository: str
    project: str
    created_by: str
    branch: str | None
    tag: str | None
    aliases: tuple[str, ...]
    matched: tuple[str, ...]  # which of commit, branch, tag, alias, author matched


@dataclass(frozen=True)
class SearchPage:
    """One page of search hits, newest first; ``next_cursor`` continues it."""

    hits: tuple[SearchHit, ...]
    next_cursor: str | None


@dataclass(frozen=True)
class SearchQuery:
    """A validated release search; ``prefix`` is a commit-SHA ``LIKE`` pattern or None, and
    ``at``/``after`` continue below the previous page's last (created_at, id)."""

    q: str
    prefix: str | None
    repository: str | None
    at: dt.datetime | None
    after: str | None
    limit: int


@dataclass(frozen=True)
class ProjectCounter:
    """The project's next release number and its names as first given (names are
    case-insensitive; a release uses the first spelling)."""

    number: int
    repository: str
    project: str


# --- creating a release ----------------------------------------------------------------------


@dataclass(frozen=True)
class CreatedRelease:
    """A release numbered and aliased, about to be stored (``oci_digest`` once its OCI content
    is built)."""

    release: NewRelease
    number: int
    oci_uri: str
    aliases: tuple[tuple[str, AliasType], ...]
    # Branch aliases not given because another kind of alias holds the name.
    skipped: tuple[AliasRow, ...] = ()
    oci_digest: str = ""

    @property
    def id(self) -> str:
        return self.release.id


def create(
    release: NewRelease,
    counter: ProjectCounter,
    existing: ReleaseKey | None,
    held: Mapping[str, AliasRow],
    oci_uri: str,
) -> tuple[CreatedRelease, ReleaseCreated]:
    """Number the release and decide its aliases (:func:`creation_aliases`); ``existing`` is
    the release of the same commit, ``held`` who holds the alias names already.

    A second release of a commit is a 409 naming the first; a tag already held is a 409 (tags
    never move); a branch alias held by an older release moves here; a branch name held by
    another kind of alias is skipped.
    """
    release = replace(release, repository=counter.repository, project=counter.project)
    if existing is not None:
        raise Conflict(
            f"a release of {release.repository}/{release.project} at commit {release.commit_sha} already exists",
            {"existing_id": existing.id, "release_number": existing.release_number},
        )
    aliases: list[tuple[str, AliasType]] = []
    skipped: list[AliasRow] = []
    for alias, alias_type in creation_aliases(release.trigger, counter.number):
        holder = held.get(alias)
        if holder is None or (alias_type == "branch" and holder.alias_type == "branch"):
            aliases.append((alias, alias_type))  # a branch's newest release is this one
        elif alias_type == "tag":
            raise Conflict(
                f"tag {alias!r} already names release {holder.release_number} of {release.repository}/{release.project}; "
                "tags never move",
                # Not "existing_id": that names the release of the same commit (a duplicate).
                {
                    "alias": alias,
                    "alias_type": "tag",
                    "release_id": holder.release_id,
                    "release_number": holder.release_number,
                },
            )
        else:
            skipped.append(holder)
    event = ReleaseCreated(
        release_id=release.id,
        repository=release.repository,
        project=release.project,
        commit_sha=release.commit_sha,
        release_number=counter.number,
        trigger_type=release.trigger.trigger_type,
    )
    return CreatedRelease(release, counter.number, oci_uri, tuple(aliases), tuple(skipped)), event


# --- changing aliases by hand ----------------------------------------------------------------


@dataclass(frozen=True)
class AliasChange:
    alias: str
    alias_type: str
    release_id: str
    release_number: int
    action: AliasAction
    moved_from: str | None = None


def set_alias(held: AliasRow | None, target: ReleaseKey, alias: str, alias_type: str) -> AliasChange:
    """``alias`` of ``alias_type`` on ``target``: created, moved here (a branch alias moving
    forward) or already there; otherwise a 409 (:func:`decide_alias`)."""
    validate_alias_name(alias)
    action = decide_alias(held, target.id, target.release_number, alias_type)
    moved_from = held.release_id if action == "move" and held is not None else None
    return AliasChange(alias, alias_type, target.id, target.release_number, action, moved_from)


def remove_alias(held: AliasRow | None, target: ReleaseKey, alias: str) -> AliasRow:
    """The alias to delete: a ``branch`` or ``custom`` alias of ``target`` (404 if it has none
    of that name, 409 for the permanent numeric and tag aliases)."""
    decide_alias_removal(held, target.id, alias)
    assert held is not None
    return held
