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

pytestmark = pytest.mark.collector_backends()

AK = "dash-key"
SCREENSHOT = os.path.join(tempfile.gettempdir(), "isstreamer-dashboard.png")


def _chromium() -> Optional[str]:
    for candidate in (
        os.environ.get("ISSTREAMER_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
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
    r = requests.post(
        server.url + "/api/events",
        data=orjson.dumps(body),
        headers={"X-IS-AccessKey": AK, "X-IS-BucketKey": bucket, "Content-Type": "application/json"},
    )
    assert r.status_code == 204, r.text


def test_index_lists_buckets_and_links_to_dashboard(collector: CollectorServer, page: Any) -> None:
    r = requests.post(
        collector.url + "/api/buckets",
        json={"bucketKey": "house", "bucketName": "My House"},
        headers={"X-IS-AccessKey": AK},
    )
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
    post(
        collector,
        "home",
        [
            {"key": "temperature", "value": 99.5},
            {"key": "door", "value": "open"},
            {"key": "armed", "value": False},
            {"key": "pressure", "value": 1013},
        ],
    )
    page.wait_for_selector('.key-card[data-key="temperature"] canvas.chart[data-points="31"]')
    page.wait_for_function(
        "document.querySelector('.key-card[data-key=\"door\"] .latest-value').textContent === 'open'"
    )
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


# --------------------------------------------------------------------------- issue 12, item 10

DEMO_SCREENSHOT = os.path.join(tempfile.gettempdir(), "isstreamer-dashboard-demo.png")

#: Per x of the plot area: is there a pixel of the line's colour (#2a6df4) in that column, and
#: the mean y of those pixels. The area fill (10% of the same blue over white) does not count.
_STROKE_PROFILE_JS = """(canvas) => {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, dpr = w / canvas.clientWidth;
  const data = ctx.getImageData(0, 0, w, h).data;
  const left = Math.round(56 * dpr), right = w - Math.round(14 * dpr);
  const cols = [];
  for (let x = left; x < right; x++) {
    let n = 0, sy = 0;
    for (let y = 0; y < h; y++) {
      const i = (y * w + x) * 4;
      if (data[i + 3] > 200 && data[i] < 110 && data[i + 1] < 160 && data[i + 2] > 200) { n++; sy += y; }
    }
    cols.push(n ? sy / n : -1);
  }
  return { width: right - left, cols };
}"""


def _post_batches(server: CollectorServer, bucket: str, body: list, size: int = 5000) -> None:
    for i in range(0, len(body), size):
        post(server, bucket, body[i : i + size])


def test_demo_readings_draw_a_signal_across_the_chart(collector: CollectorServer, page: Any) -> None:
    from isstreamer.demo import sensor_readings

    readings = sensor_readings(40_000)  # 10,000 ticks of four sensors, one a second
    _post_batches(collector, "demo", [{"key": k, "value": v, "epoch": ep} for k, v, ep in readings])
    api_calls: list = []
    page.on("request", lambda r: api_calls.append(r.url) if "/api/" in r.url else None)
    page.set_viewport_size({"width": 1280, "height": 1400})
    page.goto(collector.url + "/dashboard/demo")
    canvas = page.locator('.key-card[data-key="temperature"] canvas.chart[data-points="10000"]')
    canvas.wait_for()
    t0, t1 = float(canvas.get_attribute("data-t0")), float(canvas.get_attribute("data-t1"))
    assert t1 - t0 == pytest.approx(9999.0, abs=1e-3)  # the data's own time range
    seen = int(page.locator("body").get_attribute("data-refreshes"))
    page.wait_for_function("Number(document.body.dataset.refreshes) >= %d" % (seen + 2))  # at the real width
    columns = int(canvas.get_attribute("data-columns"))
    profile = canvas.evaluate(_STROKE_PROFILE_JS)
    ys = [y for y in profile["cols"] if y >= 0]
    # a curve spanning the chart: the line is drawn in (nearly) every pixel column ...
    assert len(ys) >= 0.9 * profile["width"], (len(ys), profile["width"])
    first = next(i for i, y in enumerate(profile["cols"]) if y >= 0)
    last = max(i for i, y in enumerate(profile["cols"]) if y >= 0)
    assert first <= 0.03 * profile["width"] and last >= 0.97 * profile["width"]
    # ... and it goes up and down (11 periods of a sine), not one vertical line
    assert max(ys) - min(ys) > 0.3 * canvas.evaluate("c => c.height")
    # reduced per pixel: about one column per CSS pixel of the plot, not 10,000 points
    assert 0.5 * profile["width"] / (canvas.evaluate("c => c.width / c.clientWidth")) <= columns <= 4000
    page.screenshot(path=DEMO_SCREENSHOT, full_page=True)
    # one request per refresh, whatever the number of keys
    assert api_calls and all("/api/buckets/demo/dashboard" in u for u in api_calls), api_calls[:5]


def test_one_request_per_refresh_with_many_keys(collector: CollectorServer, page: Any) -> None:
    now = time.time()
    post(
        collector,
        "wide",
        [{"key": "k%03d" % i, "value": i + j, "epoch": now - 100 + j} for i in range(300) for j in range(3)],
    )
    api_calls: list = []
    page.on("request", lambda r: api_calls.append(r.url) if "/api/" in r.url else None)
    page.goto(collector.url + "/dashboard/wide")
    page.wait_for_selector('.key-card[data-key="k299"] canvas.chart[data-points="3"]')
    page.wait_for_function("Number(document.body.dataset.refreshes) >= 3")
    assert page.locator("canvas.chart").count() == 300
    # the old page polled every key every second: 300 requests a refresh
    refreshes = int(page.locator("body").get_attribute("data-refreshes"))
    assert 1 <= len(api_calls) <= refreshes, (len(api_calls), refreshes)
    assert all("/api/buckets/wide/dashboard" in u for u in api_calls)


def test_dashboard_asks_for_a_key_when_keys_are_configured(collector_factory: Any, page: Any) -> None:
    server = collector_factory(access_keys=[AK])
    post(server, "locked", {"key": "t", "value": 1})
    page.goto(server.url + "/dashboard/locked")
    page.wait_for_selector("#key-form:not([hidden])")
    assert page.locator('.key-card[data-key="t"]').count() == 0
    page.fill("#key-input", AK)
    page.click('#key-form button[type="submit"]')
    page.wait_for_selector('.key-card[data-key="t"] canvas.chart[data-points="1"]')
    # a link carrying the key in its fragment works too, and the key leaves the address bar
    page2 = page.context.new_page()
    page2.goto(server.url + "/#key=" + AK)
    page2.wait_for_selector('tr.bucket-row[data-bucket-key="locked"]')
    assert "#" not in page2.url


_ATTACK_PAGE = """<!doctype html><title>attack</title><body><script>
let done = 0;
const finish = () => { if (++done === 2) document.title = "sent"; };
const img = new Image();
img.onload = img.onerror = finish;
img.src = "%(url)s/api/events?accessKey=attacker&bucketKey=victim&t=666";
fetch("%(url)s/api/events?accessKey=attacker&bucketKey=victim",
      {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
       body: '[{"key": "t", "value": 667}]'}).then(finish, finish);
</script></body>"""


class _AttackerSite:
    """A web site on another origin of this machine (http://localhost:PORT, while the collector is
    http://127.0.0.1:PORT) serving one page, in a thread."""

    def __init__(self) -> None:
        import http.server
        import threading

        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                body = site.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.html = ""
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = "http://localhost:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def attacker() -> Iterator[_AttackerSite]:
    """The attacker's site, stopped at teardown."""
    site = _AttackerSite()
    yield site
    site.close()


def _run_attack_page(page: Any, site: _AttackerSite, server: CollectorServer) -> None:
    site.html = _ATTACK_PAGE % {"url": server.url}
    page.goto(site.origin + "/")
    page.wait_for_function("document.title === 'sent'")


def test_a_page_on_another_site_cannot_write(collector_factory: Any, page: Any, attacker: _AttackerSite) -> None:
    victim = collector_factory()
    post(victim, "victim", {"key": "t", "value": 21.5})
    _run_attack_page(page, attacker, victim)
    assert [e["value"] for e in victim.events("victim")] == [21.5]
    assert victim.status_counts().get(403) == 2
    # control: the same page does reach a collector that allows its origin (so the test can fail)
    open_to_it = collector_factory(allowed_origins=[attacker.origin])
    _run_attack_page(page, attacker, open_to_it)
    assert [e["value"] for e in open_to_it.events("victim")] == [667]  # the <img> GET has no Origin
