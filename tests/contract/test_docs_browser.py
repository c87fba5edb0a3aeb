"""``/docs`` in a real browser: Swagger UI from the package renders the merged document under the
gateway's Content-Security-Policy, with nothing fetched from outside the gateway."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from forge_dev.testing import Platform
from tests.console.conftest import start_browser

from .test_api import DOCUMENT


def test_docs_page_renders_every_operation_offline_under_its_csp(platform: Platform, tmp_path: Path) -> None:
    operations = sum(
        1 for item in DOCUMENT["paths"].values() for method in item if method in ("get", "put", "post", "delete")
    )
    with start_browser(tmp_path / "profile") as browser:
        browser.get(f"{platform.gateway_url}/docs")
        WebDriverWait(browser, 60).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) >= operations)
        assert "Forge API" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
        assert browser.find_elements(By.CSS_SELECTOR, ".btn.authorize"), "no Authorize button (bearer scheme)"
        # Every resource the page loaded came from the gateway itself.
        origin = urlsplit(platform.gateway_url).netloc
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded
        assert all(urlsplit(url).netloc == origin for url in loaded if not url.startswith("data:")), loaded
        problems = [
            entry["message"]
            for entry in browser.get_log("browser")
            if entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"]
        ]
        assert not problems, problems
