from pathlib import Path

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

    @property
    def layout_root(self) -> Path:
        return Path(self.oci_layout_dir or str(Path(self.data_dir) / "oci")).resolve()

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.oci_registry and ("://" in self.oci_registry or self.oci_registry.endswith("/")):
            problems.append(
                f"FORGE_OCI_REGISTRY={self.oci_registry!r}: give host[:port][/namespace] without a scheme or trailing slash"
            )
        if bool(self.oci_username) != bool(self.oci_password):
            problems.append("FORGE_OCI_USERNAME and FORGE_OCI_PASSWORD go together")
        return problems
