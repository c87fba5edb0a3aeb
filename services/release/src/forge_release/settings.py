from forge_common.settings import CommonSettings


class Settings(CommonSettings, kw_only=True):
    """Settings of the release service (FORGE_* environment variables)."""
