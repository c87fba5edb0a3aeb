from pathlib import Path

from forge_common.repositories import RepositoryAllowList
from forge_common.settings import CommonSettings


class Settings(CommonSettings, kw_only=True):
    """Settings of the release service (FORGE_* environment variables)."""

    # Where releases are published. Empty: the embedded default, an OCI image layout on disk
    # (one layout per repository/project under ``oci_layout_dir``). Otherwise a registry
    # ``host[:port][/namespace]`` spoken to with oras over the OCI distribution API.
    oci_registry: str = ""
    # Plain HTTP to the registry. Loopback registries (127.0.0.1, localhost) always use HTTP.
    oci_insecure: bool = False
    oci_username: str = ""
    oci_password: str = ""
    # Embedded layout root; default ``<data_dir>/oci``.
    oci_layout_dir: str = ""
    # fsync the layout before the release commits, so a power loss cannot leave a committed
    # release whose artifact is gone. Turning it off keeps process-crash safety only.
    oci_layout_fsync: bool = True
    data_dir: str = ".forge-data"
    # Which repositories this platform builds (and so releases): comma-separated globs over
    # owner/name; POST /v1/releases for others: 400 invalid_request, details.field = "repository".
    repositories: str = "*"
    # Check a create's pipeline_run_id with the pipeline service (GET /v1/runs/{id} with the
    # caller's token): the run exists, built the same repository and commit, and succeeded.
    # Turning it off only checks ids to be UUIDs (a release could then name any run).
    verify_pipeline_runs: bool = True
    pipeline_url: str = "http://127.0.0.1:8081"
    # Upper bound of that call (a Go duration).
    pipeline_timeout: float = 10.0

    @property
    def layout_root(self) -> Path:
        return Path(self.oci_layout_dir or str(Path(self.data_dir) / "oci")).resolve()

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.oci_registry and ("://" in self.oci_registry or self.oci_registry.endswith("/")):
            problems.append(
                f"FORGE_OCI_REGISTRY={self.oci_registry!r}: give host[:port][/namespace] without a scheme or trailing slash"
            )
        if self.verify_pipeline_runs and not self.pipeline_url.startswith(("http://", "https://")):
            problems.append("FORGE_VERIFY_PIPELINE_RUNS needs FORGE_PIPELINE_URL (an http:// or https:// URL)")
        problems.extend(RepositoryAllowList.problems(self.repositories))
        if self.pipeline_timeout <= 0:
            problems.append("FORGE_PIPELINE_TIMEOUT must be a positive duration")
        if bool(self.oci_username) != bool(self.oci_password):
            problems.append("FORGE_OCI_USERNAME and FORGE_OCI_PASSWORD go together")
        return problems
