from forge_common.settings import CommonSettings


class Settings(CommonSettings, kw_only=True):
    """Settings of the approval service (FORGE_* environment variables)."""

    # How long an approval stays active unless the approver asks for an earlier expiry
    # (FORGE_APPROVAL_TTL, a Go duration such as "24h" or "90m").
    approval_ttl: float = 24 * 3600.0
    # The release service, asked whether a release exists and who created it.
    release_url: str = "http://127.0.0.1:8082"
    # Upper bound of one call to the release service (a Go duration).
    release_timeout: float = 5.0
    # The access-token claim holding the user's numeric GitHub user id (e.g. a Keycloak user
    # attribute mapped into the token). An approver whose claim equals the GitHub id recorded as a
    # release's trigger (a webhook run's author) may not approve that release. Empty: not used.
    github_id_claim: str = "github_id"

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.approval_ttl <= 0:
            problems.append(f"FORGE_APPROVAL_TTL={self.approval_ttl}: must be a positive duration")
        if not self.release_url.startswith(("http://", "https://")):
            problems.append("FORGE_RELEASE_URL must be an http:// or https:// URL")
        if self.release_timeout <= 0:
            problems.append("FORGE_RELEASE_TIMEOUT must be a positive duration")
        return problems
