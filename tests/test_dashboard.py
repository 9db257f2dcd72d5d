"""The collector dashboard in headless Chromium (Playwright).

Skipped only when Playwright or Chromium is missing and ISSTREAMER_REQUIRE_BROWSER is unset;
with ISSTREAMER_REQUIRE_BROWSER set (CI) a missing browser fails instead. The Chromium binary
is Debian's (/usr/bin/chromium) or $ISSTREAMER_CHROMIUM; Playwright's own downloads are not used.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any, Iterator, Optional

import orjson
import pytest
import requests

from isstreamer.collector.server import CollectorServer

AK = "dash-key"
SCREENSHOT = os.path.join(tempfile.gettempdir(), "isstreamer-dashboard.png")


def _chromium() -> Optional[str]:
    for candidate in (os.environ.get("ISSTREAMER_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("ISSTREAMER_REQUIRE_BROWSER"):
        pytest.fail("browser test required (ISSTREAMER_REQUIRE_BROWSER) but " + reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (module-scoped: launching costs about a second)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    exe = _chromium()
    if exe is None:
        _unavailable("no chromium binary (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page; browser console errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.set_default_timeout(10_000)
    yield pg
    context.close()
    assert not errors, errors


def post(server: CollectorServer, bucket: str, body: Any) -> None:
    r = requests.post(server.url + "/api/events", data=orjson.dumps(body),
                      headers={"X-IS-AccessKey": AK, "X-IS-BucketKey": bucket, "Content-Type": "application/json"})
    assert r.status_code == 204, r.text


def test_index_lists_buckets_and_links_to_dashboard(collector: CollectorServer, page: Any) -> None:
    r = requests.post(collector.url + "/api/buckets", json={"bucketKey": "house", "bucketName": "My House"},
                      headers={"X-IS-AccessKey": AK})
    assert r.status_code == 201
    post(collector, "house", [{"key": "temperature", "value": 20 + i / 10} for i in range(5)])
    post(collector, "garage", {"key": "door", "value": "open"})
    page.goto(collector.url + "/")
    row = page.locator('tr.bucket-row[data-bucket-key="house"]')
    row.wait_for()
    assert row.locator(".bucket-link").inner_text() == "My House"
    assert row.locator(".event-count").inner_text() == "5"
    assert page.locator('tr.bucket-row[data-bucket-key="garage"] .badge').inner_text() == "auto-created"
    # the list refreshes by itself
    post(collector, "house", {"key": "temperature", "value": 30})
    page.wait_for_selector('tr.bucket-row[data-bucket-key="house"] .event-count[data-count="6"]')
    row.locator(".bucket-link").click()
    page.wait_for_url("**/dashboard/house")
    page.wait_for_selector('.key-card[data-key="temperature"]')


def test_dashboard_shows_keys_and_updates_live(collector: CollectorServer, page: Any) -> None:
    now = time.time()
    body = [{"key": "temperature", "value": round(21 + (i % 7) / 3, 2), "epoch": now - 300 + i * 10} for i in range(30)]
    body += [{"key": "door", "value": "closed"}, {"key": "armed", "value": True}]
    post(collector, "home", body)
    page.goto(collector.url + "/dashboard/home")

    temp = page.locator('.key-card[data-key="temperature"]')
    page.wait_for_selector('.key-card[data-key="temperature"] canvas.chart[data-points="30"]')
    assert temp.get_attribute("data-kind") == "number"
    assert page.locator('.key-card[data-key="door"] .latest-value').inner_text() == "closed"
    assert page.locator('.key-card[data-key="door"]').get_attribute("data-kind") == "string"
    armed = page.locator('.key-card[data-key="armed"]')
    assert armed.get_attribute("data-kind") == "boolean" and armed.locator(".latest-value").inner_text() == "true"
    assert page.locator("#bucket-name").inner_text() == "home"
    assert page.locator("#event-count").inner_text() == "32"
    assert page.locator("body").get_attribute("data-state") == "live"
    # no string/boolean key is drawn as a chart
    assert page.locator('.key-card[data-key="door"] canvas').count() == 0

    # more events arrive: the chart, the values and a brand-new key show up without a reload
    post(collector, "home", [{"key": "temperature", "value": 99.5}, {"key": "door", "value": "open"},
                             {"key": "armed", "value": False}, {"key": "pressure", "value": 1013}])
    page.wait_for_selector('.key-card[data-key="temperature"] canvas.chart[data-points="31"]')
    page.wait_for_function(
        "document.querySelector('.key-card[data-key=\"door\"] .latest-value').textContent === 'open'")
    assert temp.locator(".latest-value").inner_text() == "99.5"
    assert armed.locator(".latest-value").inner_text() == "false"
    page.wait_for_selector('.key-card[data-key="pressure"][data-kind="number"] canvas.chart[data-points="1"]')
    page.wait_for_function("document.querySelector('#event-count').textContent === '36'")
    page.screenshot(path=SCREENSHOT, full_page=True)
    assert os.path.getsize(SCREENSHOT) > 10_000


def test_dashboard_waits_for_a_bucket_that_does_not_exist_yet(collector: CollectorServer, page: Any) -> None:
    page.goto(collector.url + "/dashboard/later")
    page.wait_for_selector('body[data-state="missing"]')
    assert page.locator("#missing").is_visible()
    post(collector, "later", {"key": "hello", "value": "world"})
    page.wait_for_selector('.key-card[data-key="hello"] .latest-value[data-value="\\"world\\""]')
    page.wait_for_selector('body[data-state="live"]')
    assert not page.locator("#missing").is_visible()
