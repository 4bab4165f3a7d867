"""The operator dashboard in a real browser: Debian's Chromium driven by Playwright
against a real ``fleetup server`` process (SQLite).

Without /usr/bin/chromium these tests skip, except with ``FLEETUP_CI=1`` where they
fail: CI installs chromium (scripts/sysdeps.sh). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from fleetup.repository import ReleaseRequest, add_release
from tests.integration.server.conftest import Fleet, build_fleet
from tests.support.fleet import PLATFORM, ROOT, SimDevice, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, int, int]]:
    """A fleet with an active rollout on stable (devices that installed it, one that
    failed) and another on beta: (fleet, stable rollout id, beta rollout id)."""
    base = tmp_path_factory.mktemp("dashboard")
    fleet = build_fleet(base, f"sqlite:///{base / 'data' / 'fleetup.db'}",
                        env={"FLEETUP_SERVER_ALERT_TICK_SECONDS": "0.3"})
    try:
        assert fleet.push("1.1") == 0
        # Signed for beta too: a rollout on beta needs a release signed for it.
        add_release(fleet.repo, ReleaseRequest(src=_tree(fleet.work, "1.3"), app="hello",
                                               version="1.3", platform=PLATFORM,
                                               channels=("stable", "beta")))
        assert fleet.push("1.3") == 0
        stable = [fleet.device(version="1.0", tags={"site": f"s{i % 2}"}) for i in range(8)]
        beta = [fleet.device(version="1.0", channel="beta") for _ in range(3)]
        ids = [_start(fleet, channel, stages, version) for channel, stages, version in
               (("stable", [100], "1.1"), ("beta", [50, 100], "1.3"))]
        wait_for(lambda: stable[0].checkin()["action"] == "install", what="the offers")
        for number, device in enumerate(stable[:5]):
            # Offered first: only offered devices count towards the rollout's health.
            answer = device.checkin()
            assert answer["action"] == "install"
            device.install(answer, healthy=number != 4)
        for device in stable + beta:
            device.checkin()
        wait_for(lambda: _api(fleet, "GET", "/analytics/versions")["count"] == 11,
                 what="the inventory")
        yield fleet, ids[0], ids[1]
    finally:
        fleet.server.stop()


def _api(fleet: Fleet, method: str, path: str, role: str = "admin", **kwargs: Any) -> Any:
    with fleet.server.client(fleet.tokens[role]) as client:
        response = client.request(method, f"/api/v1{path}", **kwargs)
        assert response.status_code < 300, response.text
        return response.json()


def _tree(work: Path, version: str) -> Path:
    src = work / f"src-hello-{version}"
    src.mkdir(parents=True)
    (src / "VERSION").write_text(f"{version}\n")
    return src


def _start(fleet: Fleet, channel: str, stages: list[float], version: str = "1.1") -> int:
    # Soak and reports high enough that the rollout stays where the test puts it.
    body = {"app": "hello", "version": version, "channel": channel, "stages": stages,
            "soak_seconds": 86400, "min_reports": 1000, "max_failure_rate": 0.9}
    return int(_api(fleet, "POST", "/rollouts", "publisher", json=body)["id"])


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    if not CHROMIUM.exists():
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("FLEETUP_CI") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"fleetup-chromium-{uuid.uuid4().hex}"
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    browser.clear_cookies()  # each test signs in afresh
    tab = browser.new_page()
    tab.on("dialog", lambda dialog: dialog.accept())  # the confirm() before each action
    try:
        yield tab
    finally:
        tab.close()


def sign_in(page: Page, fleet: Fleet, role: str) -> None:
    page.goto(f"{fleet.server.url}/")
    assert page.url.startswith(f"{fleet.server.url}/login")
    page.fill("#token", fleet.tokens[role])
    page.click("#sign-in")
    page.wait_for_selector("#signed-in-as")
    assert role in page.inner_text("#signed-in-as")


@pytest.mark.browser
def test_admin_signs_in_sees_charts_and_pauses_a_rollout(page: Page,
                                                         seeded: tuple[Fleet, int, int]
                                                         ) -> None:
    fleet, rollout_id, _ = seeded
    sign_in(page, fleet, "admin")

    # The overview's charts are inline SVG drawn by the server, rendered by the browser.
    bars = page.locator("svg#versions-chart rect.bar")
    assert bars.count() == 2  # hello 1.1 and hello 1.0
    box = bars.first.bounding_box()
    assert box is not None
    assert box["height"] > 0
    assert page.locator("svg#rates-chart .series.ok circle").count() >= 1
    assert page.locator("svg#rates-chart .series.bad circle").count() >= 1
    assert page.inner_text("#device-count") == "11"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)

    page.click(f"a[href='/rollouts/{rollout_id}']")
    page.wait_for_selector("#rollout-state")
    assert page.inner_text("#rollout-state") == "active"
    stage = page.locator("#stages tbody tr").first.inner_text()
    assert re.search(r"\b8\s+4\s+1\b", stage), stage  # 8 devices, 4 succeeded, 1 failed
    assert "exit 3" in page.inner_text("#reasons")

    page.click("#pause")  # a confirm dialog, accepted; then POST, redirect, new page
    page.wait_for_selector("#rollout-state:text-is('paused')")
    assert "Rollout paused." in page.inner_text(".notice")
    assert page.is_disabled("#pause")
    assert page.is_enabled("#resume")
    page.screenshot(path=str(ARTIFACTS / "dashboard-rollout-paused.png"), full_page=True)
    assert _api(fleet, "GET", f"/rollouts/{rollout_id}")["state"] == "paused"
    audit = _api(fleet, "GET", "/audit")["data"]
    assert any(e["action"] == "rollout.pause" and e["actor"].endswith(":test-admin")
               for e in audit)

    page.click("#resume")
    page.wait_for_selector("#rollout-state:text-is('active')")

    # Friendly HTML errors for the browser; the API keeps its JSON.
    response = page.goto(f"{fleet.server.url}/rollouts/999999")
    assert response is not None
    assert response.status == 404
    assert page.inner_text("#error-message") == "There is no such rollout."
    for junk in (f"/rollouts/{2**64}", "/devices?version=%00"):  # past any id, a NUL
        response = page.goto(f"{fleet.server.url}{junk}")
        assert response is not None
        assert response.status == 422, junk
    page.goto(f"{fleet.server.url}/")
    page.click("#sign-out")
    page.wait_for_url(re.compile(r".*/login.*"))
    page.goto(f"{fleet.server.url}/rollouts")
    assert "/login" in page.url


@pytest.mark.browser
def test_a_viewer_sees_everything_and_cannot_pause(page: Page,
                                                   seeded: tuple[Fleet, int, int]) -> None:
    fleet, _, rollout_id = seeded
    sign_in(page, fleet, "viewer")
    page.goto(f"{fleet.server.url}/rollouts/{rollout_id}")
    assert page.inner_text("#rollout-state") == "active"
    assert page.is_visible("#read-only")
    assert page.is_disabled("#pause")
    assert page.is_disabled("#abort")
    for path, marker in (("/releases", "#releases"), ("/devices", "#devices"),
                         ("/alerts", "#alerts"), ("/audit", "#audit")):
        response = page.goto(f"{fleet.server.url}{path}")
        assert response is not None
        assert response.status == 200, path
        assert page.locator(marker).count() == 1

    # The form is disabled, but a forged POST (with the viewer's own valid CSRF token)
    # is refused by the server all the same.
    csrf = page.get_attribute("input[name=csrf]", "value")
    refused = page.request.post(f"{fleet.server.url}/rollouts/{rollout_id}/pause",
                                form={"csrf": csrf or ""}, max_redirects=0)
    assert refused.status == 403
    assert "needs the publisher role" in refused.text()
    assert _api(fleet, "GET", f"/rollouts/{rollout_id}")["state"] == "active"


def _form_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found[1]


def test_sessions_csrf_and_revocation_without_a_browser(seeded: tuple[Fleet, int, int]
                                                        ) -> None:
    fleet, _, rollout_id = seeded
    token = _api(fleet, "POST", "/tokens", json={"role": "publisher", "name": "temp"})
    with httpx.Client(base_url=fleet.server.url, follow_redirects=False) as browser:
        assert browser.get("/", headers={"accept": "text/html"}).headers["location"] == "/login"
        # Without the sign-in form's token (login CSRF), and with a wrong operator token;
        # each answer is a fresh form with a fresh token.
        refused = browser.post("/login", data={"token": token["token"]})
        assert refused.status_code == 403
        unknown = browser.post("/login", data={"token": "fuo_nope",
                                               "csrf": _form_token(refused.text)})
        assert unknown.status_code == 401
        signed_in = browser.post("/login", data={"token": token["token"],
                                                 "csrf": _form_token(unknown.text),
                                                 "next": "//evil.example.com/"})
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == "/"  # never off-site
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        page = browser.get(f"/rollouts/{rollout_id}")
        assert page.status_code == 200
        assert "no-store" in page.headers["cache-control"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        # A POST without the session's CSRF token is refused, whatever the role.
        no_csrf = browser.post(f"/rollouts/{rollout_id}/pause", data={})
        assert no_csrf.status_code == 403
        assert "text/html" in no_csrf.headers["content-type"]
        assert _api(fleet, "GET", f"/rollouts/{rollout_id}")["state"] == "active"
        # Revoking the operator's token ends its dashboard sessions at once.
        _api(fleet, "DELETE", f"/tokens/{token['id']}")
        assert browser.get(f"/rollouts/{rollout_id}").headers["location"].startswith("/login")
    # API clients keep JSON errors, also for paths that are not there.
    missing = httpx.get(f"{fleet.server.url}/api/v1/rollouts/999999",
                        headers={"Authorization": f"Bearer {fleet.tokens['viewer']}"})
    assert missing.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{fleet.server.url}/nothing-here").json()["error"]["code"] == "not_found"


def test_a_dry_run_in_the_dashboard_matches_the_api(seeded: tuple[Fleet, int, int]) -> None:
    fleet, _, _ = seeded
    body = {"app": "hello", "version": "1.1", "channel": "canary", "stages": [20, 100],
            "soak_seconds": 60, "min_reports": 1, "max_failure_rate": 0.1}
    SimDevice(fleet.server.url, version="1.0", channel="canary").enroll(
        fleet.tokens["enroll"])
    expected = _api(fleet, "POST", "/rollouts/dry-run", "viewer", json=body)
    with httpx.Client(base_url=fleet.server.url, follow_redirects=False) as browser:
        browser.post("/login", data={"token": fleet.tokens["viewer"],
                                     "csrf": _form_token(browser.get("/login").text)})
        form = {"csrf": _form_token(browser.get("/").text), "app": "hello", "version": "1.1",
                "channel": "canary", "stages": "20,100", "soak_seconds": "60",
                "min_reports": "1", "max_failure_percent": "10", "group": ""}
        page = browser.post("/rollouts/new", data={**form, "intent": "dry-run"})
        assert page.status_code == 200
        rows = re.findall(r"<tr><td>(\d)</td><td>(\d+)%</td><td>(\d+)</td><td>(\d+)</td>"
                          r"<td>(\d+)</td></tr>", page.text)
        assert [(int(p), int(r), int(n), int(w)) for _, p, r, n, w in rows] == [
            (s["percent"], s["reached"], s["new"], s["will_install"])
            for s in expected["stages"]]
        assert 'id="start"' not in page.text  # a viewer may dry-run, not start
        refused = browser.post("/rollouts/new", data={**form, "intent": "start"})
        assert refused.status_code == 403
    assert all(r["channel"] != "canary" for r in _api(fleet, "GET", "/rollouts")["data"])


def _seeded_failure(fleet: Fleet) -> str:
    """The stable device whose install of 1.1 failed its health check (seeded)."""
    rows = _api(fleet, "GET", "/devices", params={"limit": 100})["data"]
    for row in rows:
        events = _api(fleet, "GET", f"/devices/{row['id']}/history")["data"]
        if any(e["type"] == "health-failed" for e in events):
            return str(row["id"])
    raise AssertionError("no seeded device failed")


@pytest.mark.browser
def test_operator_pages_pick_chart_summarize_and_filter(page: Page,
                                                        seeded: tuple[Fleet, int, int]
                                                        ) -> None:
    fleet, stable_id, _ = seeded
    ARTIFACTS.mkdir(exist_ok=True)
    digest = "ab" * 32
    rule = _api(fleet, "POST", "/alerts/rules", json={"name": "bytes",
                                                      "kind": "integrity_failure"})
    device = fleet.device(version="1.0", tags={"site": "s9"})
    device.report(device.event("verify-failed", version="1.1",
                               reason=f"sha256 is {digest}, expected {'cd' * 32}"))
    wait_for(lambda: any(a["rule_id"] == rule["id"]
                         for a in _api(fleet, "GET", "/alerts")["data"]), what="the alert")
    sign_in(page, fleet, "admin")

    # Versions by channel, then by a group tag.
    labels = page.locator("svg#versions-by-chart rect.bar title").all_text_contents()
    assert any(t.startswith("stable · hello 1.1") for t in labels), labels
    assert any(t.startswith("beta · hello 1.0") for t in labels), labels
    page.select_option("#versions-by", "tag:site")
    page.click("#versions-by-show")
    page.wait_for_url(re.compile(r".*by=tag%3Asite"))
    labels = page.locator("svg#versions-by-chart rect.bar title").all_text_contents()
    assert any(t.startswith("site=s0 · hello 1.1") for t in labels), labels
    page.screenshot(path=str(ARTIFACTS / "dashboard-versions-by-group.png"), full_page=True)

    # Rollout progress: devices per version over time, from their events.
    page.goto(f"{fleet.server.url}/rollouts/{stable_id}")
    last = page.locator("svg#progress-chart g.series[data-series='1.1'] circle title").last
    assert (last.text_content() or "").endswith(": 4")  # four devices committed 1.1
    page.screenshot(path=str(ARTIFACTS / "dashboard-rollout-progress.png"), full_page=True)

    # A new rollout picks a pushed release from a list.
    page.goto(f"{fleet.server.url}/rollouts/new")
    options = page.locator("#release option").all_inner_texts()
    assert {"hello 1.0", "hello 1.1", "hello 1.3"} <= set(options), options
    assert "hello 1.2" not in options  # added to the repository, never pushed
    page.select_option("#release", "hello 1.3")
    page.select_option("select[name=channel]", "beta")
    page.click("#dry-run")
    page.wait_for_selector("#dry-run-result")
    assert "hello 1.3 on beta" in page.inner_text("#dry-run-result h2")
    page.screenshot(path=str(ARTIFACTS / "dashboard-rollout-new.png"), full_page=True)

    # The device page: releases by fate, one history row per update, events folded.
    page.goto(f"{fleet.server.url}/devices/{_seeded_failure(fleet)}")
    assert page.inner_text("#failed").startswith("1.1")
    assert "exit 3" in page.inner_text("#failed")
    assert "1.3" in page.inner_text("#not-offered")
    assert page.locator("#history tr.update").count() == 1
    row = page.locator("#history tr.update").first
    assert not row.locator("table.events").is_visible()
    row.locator("summary").first.click()
    assert row.locator("table.events tr").count() == 2  # health-failed, rolled-back
    page.screenshot(path=str(ARTIFACTS / "dashboard-device.png"), full_page=True)

    # The audit log by action, actor and day.
    page.goto(f"{fleet.server.url}/audit")
    page.select_option("#audit-filters select[name=action]", "rollout.start")
    page.click("#audit-filter")
    page.wait_for_url(re.compile(r".*action=rollout.start"))
    actions = page.locator("#audit tbody tr td:nth-child(3)").all_inner_texts()
    assert actions == ["rollout.start", "rollout.start"], actions
    page.fill("#audit-filters input[name=actor]", "test-admin")
    page.click("#audit-filter")
    page.wait_for_url(re.compile(r".*actor=test-admin"))
    assert page.locator("#audit tbody tr td.muted").count() == 1  # started by the publisher
    page.goto(f"{fleet.server.url}/audit?since=2999-01-01")
    assert page.inner_text("#audit tbody") == "Nothing yet."
    page.goto(f"{fleet.server.url}/audit?actor=test-publisher&until=2000-01-01")
    assert page.inner_text("#audit tbody") == "Nothing yet."
    page.goto(f"{fleet.server.url}/audit?actor=test-publisher")
    page.screenshot(path=str(ARTIFACTS / "dashboard-audit-filtered.png"), full_page=True)

    # Alert titles show hashes by their first 12 hex digits.
    page.goto(f"{fleet.server.url}/alerts")
    title = page.inner_text("#alerts td.alert-title")
    assert digest not in title
    assert f"sha256 is {digest[:12]}…, expected {'cd' * 6}…" in title
    page.screenshot(path=str(ARTIFACTS / "dashboard-alerts.png"), full_page=True)


@pytest.mark.browser
def test_an_admin_sets_and_unsets_a_flag_a_viewer_only_reads(page: Page,
                                                             seeded: tuple[Fleet, int, int]
                                                             ) -> None:
    fleet, _, _ = seeded
    sign_in(page, fleet, "admin")
    page.click("nav a[href='/flags']")
    page.wait_for_selector("#flag-form")
    assert page.locator("#flag-app select option:checked").inner_text() == "hello"
    page.fill("#flag-form input[name=name]", "new_ui")
    page.fill("#flag-form input[name=value]", "true")
    page.select_option("#flag-form select[name=scope]", "channel")
    page.fill("#flag-form input[name=key]", "beta")
    page.click("#flag-set")
    page.wait_for_selector("#flags-channel tr[data-flag=new_ui]")
    row = page.locator("#flags-channel tr[data-flag=new_ui]")
    assert row.get_attribute("data-key") == "beta"
    assert "true" in row.inner_text()
    assert "Flag value set." in page.inner_text(".notice")
    # The page wrote through the API's own function: the API sees it, the audit has it.
    assert _api(fleet, "GET", "/flags/hello", "viewer")[0]["scope_key"] == "beta"
    audit = _api(fleet, "GET", "/audit", params={"limit": 1000})["data"]
    assert any(e["action"] == "flag.set" and e["target"] == "flag:hello/new_ui"
               and e["details"]["key"] == "beta" for e in audit), audit
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-flags.png"), full_page=True)

    # A bad value is refused with the API's message and stores nothing.
    page.fill("#flag-form input[name=name]", "broken")
    page.fill("#flag-form input[name=value]", "[1, 2]")
    page.click("#flag-set")
    assert "a flag's value is a string" in page.inner_text("main")
    assert len(_api(fleet, "GET", "/flags/hello")) == 1

    page.goto(f"{fleet.server.url}/flags?app=hello")
    page.click("#flags-channel tr[data-flag=new_ui] button")
    page.wait_for_selector("#flags-channel td.muted")
    assert _api(fleet, "GET", "/flags/hello") == []

    # A viewer reads the page but has no form, and a forged POST is refused.
    _api(fleet, "PUT", "/flags/hello/theme", json={"value": "dark"})
    page.context.clear_cookies()
    sign_in(page, fleet, "viewer")
    page.goto(f"{fleet.server.url}/flags?app=hello")
    assert "dark" in page.inner_text("#flags-default tr[data-flag=theme]")
    assert page.locator("#flag-form").count() == 0
    assert page.locator("#flags-default button").count() == 0
    csrf = page.get_attribute("input[name=csrf]", "value")
    refused = page.request.post(f"{fleet.server.url}/flags/hello/unset",
                                form={"csrf": csrf or "", "name": "theme"}, max_redirects=0)
    assert refused.status == 403
    assert len(_api(fleet, "GET", "/flags/hello")) == 1
