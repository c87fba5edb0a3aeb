"""The console's Webhooks page in headless Chromium: the subscriptions listed, a subscription's
deliveries, and the Redeliver button sending a delivery again to a real receiver."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
from console.conftest import start_browser

from forge_common.events import PipelineRunCompleted

from .conftest import ADMIN, Instance, Receiver, deliveries, subscribe


async def test_the_webhooks_page_lists_deliveries_and_redelivers(
    client: httpx.AsyncClient, hooks: Instance, receiver: Receiver, tmp_path: Path
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    repository = f"acme/console-{uuid.uuid4().hex[:8]}"
    url = receiver.path()
    sub = await subscribe(client, hooks, {"url": url, "event_types": ["pipeline.*"], "repository": repository})
    await hooks.publish(
        PipelineRunCompleted(
            run_id=str(uuid.uuid4()), repository=repository, commit_sha="f" * 40, status="success", duration_seconds=1
        )
    )
    await receiver.wait(url, 1)
    for _ in range(200):
        if (await deliveries(client, hooks, sub["id"]))[0]["status"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    token = hooks.platform.token(ADMIN, "admin")

    def browse() -> None:
        with start_browser(tmp_path / "profile") as driver:
            # The page redraws its table after a click: an element read mid-redraw is stale.
            wait = WebDriverWait(driver, 30, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])
            driver.get(f"{hooks.url}/login")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#token-input"))[0].send_keys(token)
            driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
            wait.until(lambda d: "/login" not in d.current_url)
            driver.get(f"{hooks.url}/webhooks?repository={repository}")
            row = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#subscriptions tr[data-id='{sub['id']}']"))[0]
            assert url in row.text
            row.find_element(By.CSS_SELECTOR, "a").click()
            delivered = wait.until(
                lambda d: d.find_elements(By.CSS_SELECTOR, "#deliveries tr[data-status='succeeded']")
            )
            assert "pipeline.run.completed" in delivered[0].text
            assert "HTTP 200" in delivered[0].text
            delivered[0].find_element(By.CSS_SELECTOR, "button.redeliver").click()
            wait.until(lambda d: "is due again" in d.find_element(By.CSS_SELECTOR, "#delivery-status").text)

    await asyncio.to_thread(browse)
    second = (await receiver.wait(url, 2))[1]
    assert second.headers["webhook-id"] == receiver.at(url)[0].headers["webhook-id"]
