"""Session-wide harness: one platform (every Forge process, real servers) per test session.

Tests that need other settings start extra processes with ``platform.start_process``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from forge_dev.testing import Platform, session_platform


@pytest.fixture(scope="session")
def platform() -> Iterator[Platform]:
    with session_platform(workers=2) as p:
        yield p


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """``item.rep_<phase>``: a fixture's teardown can tell whether its test failed (and, say,
    print the logs of the processes it started)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
