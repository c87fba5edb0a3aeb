"""The web console: a static single-page application served by the gateway.

Plain HTML, CSS and ES modules from ``static/`` (no build step, no CDN); the browser talks only
to the public ``/v1`` API with the user's bearer token. See :mod:`.routes`.
"""

from .routes import browser_run_redirect, console_handlers

__all__ = ["browser_run_redirect", "console_handlers"]
