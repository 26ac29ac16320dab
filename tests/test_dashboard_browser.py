"""The dashboard in a real browser: headless Chromium against a real collector.

The collector (uvicorn on 127.0.0.1, SQLite in ``tmp_path``) holds known data,
stored through the real protocol by real clients behind instrumented apps:
three deployments of two apps, one of them on a release whose item reads are
deliberately three times slower. One report from 40 days ago (stored directly:
the collector stamps reports with its own clock) makes an endpoint "unused".

Chromium loads ``/?token=...``, runs the page's script (which fetches
``api/summary`` with the token as a bearer credential) and prints the rendered
DOM (``--dump-dom``); the test reads the numbers by their ``data-testid``
attributes, and saves a screenshot. With ``REQTELEMETRY_UPDATE_SCREENSHOT=1``
the screenshot is also written to ``docs/dashboard.png``.

When ``chromium`` is missing, the session installs Debian's package (as root,
with apt-get); when it cannot, these tests are skipped and say why.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from collector_stack import (
    BOOM,
    DASHBOARD_TOKEN,
    FLASK_ITEM,
    ITEM,
    ITEMS,
    Canaries,
    Collector,
    Traffic,
    flask_shop,
    isolate_client_environment,
    running_collector,
    sqlite_database,
    starlette_shop,
    start_client,
    store_old_report,
)
from reqtelemetry import ASGIMiddleware, Telemetry, WSGIMiddleware

pytestmark = pytest.mark.e2e

#: Read at import: the client fixtures clear REQTELEMETRY_* from the environment.
UPDATE_SCREENSHOT = os.environ.get("REQTELEMETRY_UPDATE_SCREENSHOT") == "1"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "dashboard.png"
#: Installing a browser can take minutes; the first browser test gets that time.
APT_UPDATE_TIMEOUT = 600
APT_INSTALL_TIMEOUT = 1200
TEST_TIMEOUT = APT_UPDATE_TIMEOUT + APT_INSTALL_TIMEOUT + 300
BROWSER_TIMEOUT = 120
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- the browser ------------------------------------------------------------------------------


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _install_chromium() -> str:
    """Debian's chromium via apt-get; the reason it cannot be done, as a skip."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("chromium is not installed, and installing it needs root (apt-get)")
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip("chromium is not installed, and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv, timeout in (
        ([apt, "update"], APT_UPDATE_TIMEOUT),
        ([apt, "install", "-y", "chromium"], APT_INSTALL_TIMEOUT),
    ):
        try:
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"installing chromium: {' '.join(argv[1:])} took over {timeout} s")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-500:]
            pytest.skip(f"installing chromium failed ({' '.join(argv[1:])}): {tail}")
    found = _find_chromium()
    if found is None:
        pytest.skip("apt-get installed chromium, but no chromium binary was found")
    return found


@pytest.fixture(scope="session")
def chromium() -> str:
    """The chromium binary, installed once per session when missing."""
    return _find_chromium() or _install_chromium()


@dataclass
class Browser:
    binary: str
    scratch: Path

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        profile = self.scratch / f"profile-{uuid.uuid4().hex[:8]}"  # one per run: it is locked
        argv = [
            self.binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            # Virtual time runs out only when the page's fetches are done.
            "--virtual-time-budget=5000",
            *args,
        ]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=BROWSER_TIMEOUT, check=False
        )
        assert done.returncode == 0, f"chromium failed ({done.returncode}):\n{done.stderr[-3000:]}"
        return done

    def dump_dom(self, url: str) -> Node:
        """The page's DOM after its script ran, parsed."""
        return parse_html(self._run("--dump-dom", url).stdout)

    def screenshot(self, url: str, path: Path, width: int = 1400, height: int = 1800) -> None:
        self._run(f"--screenshot={path}", f"--window-size={width},{height}", url)


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Browser:
    return Browser(chromium, tmp_path)


# -- reading the DOM ----------------------------------------------------------------------------

VOID_ELEMENTS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)


@dataclass(eq=False)
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def get(self, name: str) -> str | None:
        return self.attrs.get(name)

    def iter(self) -> Iterator[Node]:
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.iter()

    def all(self, testid: str | None = None, tag: str | None = None) -> list[Node]:
        return [
            node
            for node in self.iter()
            if (testid is None or node.attrs.get("data-testid") == testid)
            and (tag is None or node.tag == tag)
        ]

    def one(self, testid: str) -> Node:
        found = self.all(testid)
        assert len(found) == 1, f"{len(found)} elements with data-testid={testid!r}"
        return found[0]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID_ELEMENTS:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse_html(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# -- the data behind the page ------------------------------------------------------------------


#: The app the Starlette deployments report (start_client's default), and the Flask one's.
SHOP = "e2e-shop"
FLASK_SHOP = "e2e-flask-shop"


@dataclass
class Scenario:
    collector: Collector
    requests: int
    #: Requests per app name.
    by_app: dict[str, int]


@pytest.fixture
def scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scenario]:
    """Three deployments of two apps reporting through the real protocol, and one old report."""
    isolate_client_environment(monkeypatch)
    database = sqlite_database(tmp_path)
    store_old_report(
        database.url, str(uuid.uuid4()), "1.9.0", [("DELETE", ITEM, 204, 0.004)] * 3, 40
    )
    canaries = Canaries.new()
    clients: list[Telemetry] = []
    try:
        with running_collector(database.url) as collector:
            requests = 0
            by_app: dict[str, int] = {}
            # Alpha on 2.0.0 and beta on 2.1.0 serve the same Starlette shop;
            # 2.1.0 reads items three times slower.
            for name, version, delay, exports, items in (
                ("alpha", "2.0.0", 0.010, 3, 120),
                ("beta", "2.1.0", 0.030, 1, 80),
            ):
                directory = tmp_path / name
                directory.mkdir()
                telemetry = start_client(collector.url, directory, version)
                clients.append(telemetry)
                # What the app's maintainer instrumented: sent with the shutdown report.
                for _ in range(exports):
                    telemetry.count("feature.export_pdf")
                telemetry.gauge("catalog.items", lambda items=items: items)
                app = starlette_shop(delay=delay)
                app.add_middleware(ASGIMiddleware, telemetry=telemetry)
                with TestClient(app) as client:  # its lifespan shutdown closes the client
                    traffic = Traffic(client, canaries)
                    traffic.starlette_mix(reads=20)
                requests += sum(traffic.expected.values())
            by_app[SHOP] = requests
            # Gamma: another app, a Flask service, also at 2.1.0.
            directory = tmp_path / "gamma"
            directory.mkdir()
            telemetry = start_client(collector.url, directory, "2.1.0", app_name=FLASK_SHOP)
            clients.append(telemetry)
            telemetry.count("feature.invoice_sent", 5)
            flask_app = flask_shop()
            flask_app.wsgi_app = WSGIMiddleware(flask_app.wsgi_app, telemetry=telemetry)
            with httpx.Client(
                transport=httpx.WSGITransport(app=flask_app), base_url="http://shop.example"
            ) as client:
                traffic = Traffic(client, canaries)
                traffic.call("GET", "/items/7", FLASK_ITEM, 200, times=6)
                traffic.call("POST", ITEMS, ITEMS, 201, times=3, json={"note": canaries.body})
                traffic.call("GET", BOOM, BOOM, 500, times=2)
            assert telemetry.close() is True
            by_app[FLASK_SHOP] = sum(traffic.expected.values())
            requests += by_app[FLASK_SHOP]
            yield Scenario(collector, requests, by_app)
    finally:
        for telemetry in clients:
            telemetry.close(timeout=5.0)


# -- the tests -----------------------------------------------------------------------------------


@pytest.mark.timeout(TEST_TIMEOUT)
def test_the_dashboard_renders_the_collectors_numbers(browser: Browser, scenario: Scenario) -> None:
    collector = scenario.collector
    summary: dict[str, Any] = collector.summary(days=30)
    assert summary["totals"]["requests"] == scenario.requests

    page = browser.dump_dom(f"{collector.url}/?token={DASHBOARD_TOKEN}")

    status = page.one("status")
    assert status.get("data-state") == "ready", f"the page says: {status.text!r}"
    assert page.one("generated").text.startswith("Updated ")

    def number(testid: str) -> tuple[str, str]:
        node = page.one(testid)
        return node.text.strip(), node.get("data-value") or ""

    assert number("total-deployments") == ("3", "3")
    assert number("total-instances") == ("3", "3")
    assert number("total-requests") == (f"{scenario.requests:,}", str(scenario.requests))
    assert number("total-reports") == ("6", "6")  # startup and shutdown, three instances
    errors = summary["totals"]["errors"]
    assert errors == 4  # one failure at alpha and beta each, two at gamma
    assert float(number("total-error-rate")[1]) == pytest.approx(errors / scenario.requests)

    # One row per endpoint of each app, calls as the API counts them; the
    # unused one badged. Both apps serve POST /items: two rows, each labelled.
    rows = page.all("endpoint-row", tag="tr")
    shown = {
        (row.get("data-app"), row.get("data-method"), row.get("data-route")): int(
            row.one("endpoint-calls").get("data-value") or 0
        )
        for row in rows
    }
    assert shown == {
        (e["app_name"], e["method"], e["route"]): e["calls"] for e in summary["endpoints"]
    }
    assert shown[(SHOP, "GET", ITEM)] == 2 * 21
    assert shown[(SHOP, "POST", ITEMS)] == 2 * 2
    assert shown[(FLASK_SHOP, "POST", ITEMS)] == 3
    assert shown[(None, "DELETE", ITEM)] == 0  # stored last month, by a client without a name
    assert page.one("endpoints-app-heading").get("hidden") is None
    assert {row.one("endpoint-app").text for row in rows} == {SHOP, FLASK_SHOP, "(unknown)"}
    badges = page.all("unused-badge")
    assert len(badges) == 1
    badged_row = badges[0].parent.parent  # span in td in tr
    assert badged_row.tag == "tr" and badged_row.get("data-method") == "DELETE"
    assert "unused" in (badged_row.get("class") or "")
    assert rows[-1] is badged_row  # most calls first

    # The slower release stands out against the previous version.
    by_version = {
        (e["method"], e["route"], e["app_name"], e["app_version"]): e
        for e in summary["endpoints_by_version"]
    }
    slower = by_version[("GET", ITEM, SHOP, "2.1.0")]
    assert slower["previous_version"] == "2.0.0"
    assert slower["p95_change"] > 0.5  # 30 ms against 10 ms per read: about +190 %
    version_rows = {
        (r.get("data-method"), r.get("data-route"), r.get("data-app"), r.get("data-version")): r
        for r in page.all("version-endpoint-row", tag="tr")
    }
    change = version_rows[("GET", ITEM, SHOP, "2.1.0")].one("p95-change")
    assert change.get("data-kind") == "worse"
    assert float(change.get("data-value") or "nan") == pytest.approx(slower["p95_change"])
    assert change.text == f"+{slower['p95_change'] * 100:.0f}% vs 2.0.0"
    assert not version_rows[("GET", ITEM, SHOP, "2.0.0")].all("p95-change")  # nothing before it
    # Flask's 2.1.0 is another app's: compared with nothing, and labelled with its app.
    flask_row = version_rows[("GET", FLASK_ITEM, FLASK_SHOP, "2.1.0")]
    assert not flask_row.all("p95-change")
    assert flask_row.one("version-app").text == FLASK_SHOP
    assert "hidden" not in page.one("by-version-app-heading").attrs

    # Two apps: a selector offering each, set to all of them.
    assert "hidden" not in page.one("app-control").attrs
    select = page.one("app-select")
    assert select.get("data-value") == ""
    assert [(o.get("value"), o.text) for o in select.all(tag="option")] == [
        ("", "All apps"),
        (FLASK_SHOP, FLASK_SHOP),  # by name
        (SHOP, SHOP),
    ]

    # The charts were drawn: an activity line, a bar per version and app, platform bars.
    activity = page.one("activity-chart")
    assert activity.all(tag="svg") and len(activity.all(tag="path")) == 2
    bars = {bar.get("data-label"): bar.get("data-value") for bar in page.all("version-bar")}
    assert bars == {f"{SHOP} 2.1.0": "1", f"{SHOP} 2.0.0": "1", f"{FLASK_SHOP} 2.1.0": "1"}
    frameworks = {
        bar.get("data-label"): bar.get("data-value")
        for bar in page.one("platform-framework").all("platform-bar")
    }
    assert frameworks == {"starlette": "2", "flask": "1"}

    # The apps' own metrics: counters added up, the gauge once per deployment.
    assert "hidden" not in page.one("app-metrics").attrs
    counters = {
        (row.get("data-app"), row.get("data-name")): row.one("metric-total").get("data-value")
        for row in page.all("counter-row", tag="tr")
    }
    assert counters == {
        (SHOP, "feature.export_pdf"): "4",
        (FLASK_SHOP, "feature.invoice_sent"): "5",
    }
    (gauge,) = page.all("gauge-row", tag="tr")
    assert gauge.one("metric-name").text == "catalog.items"
    assert [gauge.one(f"metric-{key}").get("data-value") for key in ("sum", "median", "max")] == [
        "200",
        "100",
        "120",
    ]
    assert "hidden" in page.one("dropped").attrs  # nobody reached max_keys


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_link_with_an_app_opens_the_dashboard_on_that_app(
    browser: Browser, scenario: Scenario
) -> None:
    collector = scenario.collector
    page = browser.dump_dom(f"{collector.url}/?token={DASHBOARD_TOKEN}&app={SHOP}")
    status = page.one("status")
    assert status.get("data-state") == "ready", f"the page says: {status.text!r}"
    assert page.one("app-select").get("data-value") == SHOP
    assert "hidden" not in page.one("app-control").attrs

    # Every number is the Starlette app's alone.
    assert page.one("total-deployments").get("data-value") == "2"
    assert page.one("total-instances").get("data-value") == "2"
    assert page.one("total-reports").get("data-value") == "4"
    assert page.one("total-requests").get("data-value") == str(scenario.by_app[SHOP])
    routes = {row.get("data-route") for row in page.all("endpoint-row", tag="tr")}
    assert FLASK_ITEM not in routes and ITEM in routes
    bars = {bar.get("data-label"): bar.get("data-value") for bar in page.all("version-bar")}
    assert bars == {"2.1.0": "1", "2.0.0": "1"}  # one app: versions need no app label
    assert "hidden" in page.one("by-version-app-heading").attrs
    assert not page.all("version-app")
    frameworks = {
        bar.get("data-label"): bar.get("data-value")
        for bar in page.one("platform-framework").all("platform-bar")
    }
    assert frameworks == {"starlette": "2"}
    assert [row.get("data-name") for row in page.all("counter-row", tag="tr")] == [
        "feature.export_pdf"
    ]
    # The CSV link exports the same app.
    assert page.one("csv-link").get("href") == (
        f"export.csv?days=30&app={SHOP}&token={DASHBOARD_TOKEN}"
    )


@pytest.mark.timeout(TEST_TIMEOUT)
def test_without_its_token_the_browser_gets_no_dashboard(
    browser: Browser, scenario: Scenario
) -> None:
    """The page itself is behind the credentials, not only its data."""
    page = browser.dump_dom(f"{scenario.collector.url}/")
    assert not [node for node in page.iter() if "data-testid" in node.attrs]
    assert '"error":"unauthorized"' in page.text.replace(" ", "")
    assert str(scenario.requests) not in page.text
    wrong = browser.dump_dom(f"{scenario.collector.url}/?token=not-{DASHBOARD_TOKEN}")
    assert not wrong.all("total-requests")


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_screenshot_of_the_dashboard(
    browser: Browser, scenario: Scenario, tmp_path: Path
) -> None:
    """Always to ``tmp_path``; to ``docs/dashboard.png`` with REQTELEMETRY_UPDATE_SCREENSHOT=1."""
    shot = tmp_path / "dashboard.png"
    browser.screenshot(f"{scenario.collector.url}/?token={DASHBOARD_TOKEN}", shot)
    data = shot.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    assert (width, height) == (1400, 1800)
    assert len(data) > 10 * 1024, f"a {len(data)}-byte screenshot is too plain to be the page"
    if UPDATE_SCREENSHOT:
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)
