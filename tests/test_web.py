"""The web UI of a real daemon (`python -m collector run` as a subprocess) on the simulator and a real
PostgreSQL: plain HTTP checks of the handlers, then a real headless Chromium (Playwright driving Debian's
`chromium`) loading the three pages, checking what they show against SQL, sorting, filtering, paging and
basic auth, with a screenshot of each page saved under the test's tmp_path.

The daemon runs with day-long job intervals and a one-hour retry: after its first pass nothing changes
while the tests read the pages, so page and SQL are compared without races. One daemon serves the whole
module (the pages are read-only).
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import os
import re
import shutil
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests import fixtures_sim, test_daemon

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
USER = "operator"
PASSWORD = f"web-{uuid.uuid4().hex}"
PASSWORD_ENV = "IGC_TEST_WEB_PASSWORD"
VERIFY_TOKEN = f"verify-{uuid.uuid4().hex}"
WEBHOOK_SECRET = f"hooksecret-{uuid.uuid4().hex}"
JOBS = ("profile", "media", "stories", "account_insights", "demographics")
DAY_S = 86400.0
# Where to copy the screenshots as well (the README's docs/img/overview.png is made this way).
SCREENSHOT_DIR_ENV = "IG_COLLECTOR_SCREENSHOTS"


@dataclass
class Web:
    dir: Path
    dsn: str
    sim: fixtures_sim.RunningSimulator
    port: int
    daemon: test_daemon.DaemonProcess

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def auth(self, password: str = PASSWORD) -> dict[str, str]:
        token = base64.b64encode(f"{USER}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def get(self, path: str, *, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as s, \
                s.get(self.base + path, headers=self.auth() if headers is None else headers,
                      allow_redirects=False) as r:
            return r.status, await r.text(), r.headers

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()


async def _settled(web_: Web, ids: list[str]) -> bool:
    """Every job of every account has run once (succeeded, or failed and waits an hour to retry)."""
    states = await test_daemon.job_states(web_.dsn)
    return all((i, j) in states for i in ids for j in JOBS)


@pytest.fixture(scope="module")
async def web(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Web]:
    directory = tmp_path_factory.mktemp("web")
    name = f"web_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(test_daemon.ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urllib.parse.urlunsplit(urllib.parse.urlsplit(test_daemon.ADMIN_DSN)._replace(path=f"/{name}"))
    sim = await fixtures_sim.start(accounts=8, media_per_account=10, seed=11, refresh_min_age_s=0.0,
                                   world_knobs={"invalid_token_fraction": 0.15, "history_days": 40})
    port = test_daemon.free_port()
    fixtures_sim.write_config(directory, sim, dsn, accounts_csv=True, sections={
        "graph": {"request_timeout_s": 5},
        "rate_limit": {"app_calls_per_s": 0, "account_calls_per_s": 0},
        "collect": {"account_backfill_days": 30, "media_max_age_days": 90, "max_concurrent_accounts": 4},
        "schedule": {"media_discovery_interval_s": DAY_S, "stories_interval_s": DAY_S,
                     "job_retry_base_s": 3600.0, "tick_s": 0.2, "shutdown_grace_s": 3.0},
        "log": {"level": "info", "json": True},
        "http": {"listen": f"127.0.0.1:{port}", "basic_auth_user": USER,
                 "basic_auth_password_env": PASSWORD_ENV},
        # Served by the same server: its path stays open (Meta cannot log in); its secrets never show.
        "webhook": {"verify_token": VERIFY_TOKEN, "app_secret": WEBHOOK_SECRET},
    })
    setup = test_daemon.Setup(directory, dsn, sim, http_port=port)
    daemon = test_daemon.DaemonProcess(setup)
    web_ = Web(directory, dsn, sim, port, daemon)
    os.environ[PASSWORD_ENV] = PASSWORD
    try:
        await daemon.start()
        ids = [a.ig_user_id for a in sim.accounts()]
        await test_daemon.until(lambda: _settled(web_, ids), 90, daemon)
        yield web_
        assert await daemon.stop() == 0
    finally:
        os.environ.pop(PASSWORD_ENV, None)
        daemon.kill()
        await sim.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# ------------------------------------------------------------------------------------ plain HTTP


async def test_basic_auth_guards_pages_and_metrics_not_healthz(web: Web) -> None:
    for path in ("/", "/accounts", "/metrics", "/static/style.css"):
        status, _, headers = await web.get(path, headers={})
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith('Basic realm="ig-collector"')
        assert (await web.get(path, headers=web.auth("wrong")))[0] == 401
        assert (await web.get(path, headers={"Authorization": "Basic !!notbase64"}))[0] == 401
        assert (await web.get(path))[0] == 200, path
    assert (await web.get("/healthz", headers={}))[0] == 200
    challenge = f"/webhooks/instagram?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=42"
    assert (await web.get(challenge, headers={}))[:2] == (200, "42")


async def test_pages_carry_a_strict_csp_and_no_script(web: Web) -> None:
    ids = [a.ig_user_id for a in web.sim.accounts()]
    for path in ("/", "/accounts", f"/accounts/{ids[0]}"):
        status, html, headers = await web.get(path)
        assert status == 200, path
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert "<script" not in html and " style=" not in html and " on" + "click" not in html
        # Nothing to load from elsewhere: every src and every <link> is a path on this server.
        assert all(u.startswith("/") for u in re.findall(r'src="([^"]*)"', html)), path
        assert all(u.startswith("/") for u in re.findall(r'<link [^>]*href="([^"]*)"', html)), path


async def test_budget_panel_says_how_pacing_works_as_configured(web: Web) -> None:
    # The daemon has settled (every job ran, day-long intervals): no scope's budget holds calls back, and with
    # no per-second ceiling (this config, as shipped) slow_down_at_pct lowers nothing, so it is not claimed.
    status, html, _ = await web.get("/")
    assert status == 200
    assert '<span id="held-app">0</span> app, <span id="held-account">0</span> account scope(s)' in html
    assert "ceilings are lowered" not in html and "pacing slows" not in html
    _, exposition, _ = await web.get("/metrics")
    assert 'ig_collector_budget_held_scopes{scope="account"} 0.0' in exposition


async def test_bad_requests_and_unknown_accounts(web: Web) -> None:
    assert (await web.get("/accounts?sort=password"))[0] == 400
    assert (await web.get("/accounts?limit=100000"))[0] == 400
    assert (await web.get("/accounts?offset=-1"))[0] == 400
    status, html, _ = await web.get("/accounts/1234567")
    assert status == 404 and "No account 1234567" in html
    assert (await web.get("/static/../config.toml"))[0] == 404


async def test_sorting_by_job_state_matches_sql(web: Web) -> None:
    ids = [int(a.ig_user_id) for a in web.sim.accounts()]
    for sort, expression in (("oldest_success", "min(s.last_success_at)"),
                             ("failures", "coalesce(max(s.consecutive_failures), 0)")):
        for desc in (False, True):
            direction = "DESC" if desc else "ASC"
            expected = [r["id"] for r in await web.sql(
                f"SELECT c.id::text AS id FROM unnest($1::bigint[]) AS c(id) "
                f"LEFT JOIN collector_job_state s ON s.ig_user_id = c.id GROUP BY c.id "
                f"ORDER BY {expression} {direction} NULLS LAST, c.id {direction}", ids)]
            status, html, _ = await web.get(f"/accounts?sort={sort}" + ("&desc=1" if desc else ""))
            assert status == 200
            assert re.findall(r'<tr data-id="(\d+)"', html) == expected, (sort, desc)


async def test_no_token_or_secret_on_any_page(web: Web) -> None:
    secrets = [a.access_token for a in web.sim.accounts()] + [PASSWORD, VERIFY_TOKEN, WEBHOOK_SECRET]
    refreshed = [r["access_token"] for r in await web.sql(
        "SELECT access_token FROM collector_token WHERE access_token IS NOT NULL")]
    assert refreshed, "the daemon refreshed Instagram tokens (their expiry is on the overview)"
    secrets += refreshed
    pages = ["/", "/accounts?limit=200", "/accounts?sort=status&desc=1"]
    pages += [f"/accounts/{a.ig_user_id}" for a in web.sim.accounts()]
    for path in pages:
        status, html, _ = await web.get(path)
        assert status == 200, path
        for secret in secrets:
            assert secret not in html, f"a secret appears on {path}"


# ------------------------------------------------------------------------------------ the browser


def _browser_available() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (./scripts/test installs Debian's chromium when run as root)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright (a dev dependency) is not installed"
    return None


@dataclass
class Visit:
    """A browser page with everything it asked for and every console error it printed."""

    page: Any
    requests: list[str]
    errors: list[str]
    base: str

    async def open(self, url: str) -> Any:
        response = await self.page.goto(url if url.startswith("http") else self.base + url)
        await self.page.wait_for_load_state("networkidle")
        return response

    def check_clean(self) -> None:
        assert not self.errors, self.errors
        outside = [u for u in self.requests if not u.startswith(self.base + "/")]
        assert not outside, f"requests left 127.0.0.1: {outside}"
        assert self.requests


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    reason = _browser_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests must run in CI: {reason}")
        pytest.skip(reason)
    async_api = importlib.import_module("playwright.async_api")
    async with async_api.async_playwright() as p:
        launched = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def _visit(browser: Any, web: Web, *, password: str = PASSWORD) -> Visit:
    context = await browser.new_context(http_credentials={"username": USER, "password": password},
                                        viewport={"width": 1360, "height": 900})
    page = await context.new_page()
    visit = Visit(page, [], [], web.base)
    page.on("request", lambda request: visit.requests.append(request.url))
    page.on("console", lambda msg: visit.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: visit.errors.append(str(exc)))
    return visit


async def _screenshot(page: Any, path: Path) -> None:
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    copy_to = os.environ.get(SCREENSHOT_DIR_ENV)
    if copy_to:
        shutil.copy(path, Path(copy_to) / path.name)


async def _cells(page: Any, selector: str) -> list[str]:
    return [t.strip() for t in await page.locator(selector).all_inner_texts()]


async def _row_ids(page: Any) -> list[str | None]:
    return [await r.get_attribute("data-id") for r in await page.locator("#accounts tbody tr").all()]


def _n(text: str) -> int:
    return int(text.replace(",", "").strip())


async def test_browser_overview_shows_the_database(browser: Any, web: Web, tmp_path: Path) -> None:
    visit = await _visit(browser, web)
    response = await visit.open("/")
    assert response.status == 200
    ids = [a.ig_user_id for a in web.sim.accounts()]
    assert _n(await visit.page.inner_text("#accounts-total")) == len(ids)
    # Accounts by status, as SQL counts them.
    by_status = {r["status"]: r["n"] for r in await web.sql(
        "SELECT status, count(*) AS n FROM ig_account GROUP BY status")}
    shown = {await el.get_attribute("data-status"): _n(await el.inner_text())
             for el in await visit.page.locator("#status-counts .count").all()}
    assert shown == by_status
    assert "ok" in shown and len(shown) >= 2, "the world has accounts with invalid tokens"
    # Freshness per job: nothing is late here (day-long intervals), so within schedule = succeeded.
    expected = {r["job"]: (r["ok"], r["failing"]) for r in await web.sql(
        "SELECT job, count(*) FILTER (WHERE consecutive_failures = 0 AND last_success_at IS NOT NULL) AS ok, "
        "count(*) FILTER (WHERE consecutive_failures > 0) AS failing FROM collector_job_state GROUP BY job")}
    for job in JOBS:
        row = visit.page.locator(f'#freshness tr[data-job="{job}"]')
        ok = _n(await row.locator('[data-kind="ok"]').inner_text())
        failing = _n(await row.locator('[data-kind="failing"]').inner_text())
        never = _n(await row.locator('[data-kind="never"]').inner_text())
        assert (ok, failing) == expected[job], job
        assert ok + failing + never + _n(await row.locator('[data-kind="late"]').inner_text()) == len(ids)
    # The last errors are the failing job states, newest first.
    errors = await web.sql("SELECT ig_user_id::text AS id, job FROM collector_job_state "
                           "WHERE last_error IS NOT NULL ORDER BY last_attempt_at DESC LIMIT 12")
    assert await visit.page.locator("#errors tbody tr, #errors tr:not(:first-child)").count() >= 1
    shown_jobs = await _cells(visit.page, "#errors tr td:nth-child(3)")
    assert shown_jobs == [r["job"] for r in errors]
    # Token expiry (from the daemon's token store) and the call chart (from its counters) are drawn.
    assert await visit.page.locator("#tokens tr").count() >= 2
    assert await visit.page.locator("svg.chart rect.bar").count() >= 1
    await _screenshot(visit.page, tmp_path / "overview.png")
    visit.check_clean()


async def test_browser_accounts_sort_filter_page(browser: Any, web: Web, tmp_path: Path) -> None:
    visit = await _visit(browser, web)
    await visit.open("/accounts")
    all_ids = await web.sql("SELECT c.id::text AS id FROM unnest($1::bigint[]) AS c(id) "
                            "LEFT JOIN ig_account a ON a.ig_user_id = c.id "
                            "ORDER BY lower(a.username) NULLS LAST, c.id",
                            [int(a.ig_user_id) for a in web.sim.accounts()])
    assert await _row_ids(visit.page) == [r["id"] for r in all_ids]
    await _screenshot(visit.page, tmp_path / "accounts.png")

    # Sort by followers, descending: a click on the header, twice.
    await visit.page.click("#accounts thead a:text('followers')")
    await visit.page.click("#accounts thead a:text('followers')")
    assert "desc=1" in visit.page.url
    followers = [r["followers_count"] for r in await web.sql(
        "SELECT followers_count FROM ig_account ORDER BY followers_count DESC NULLS LAST, ig_user_id DESC")]
    shown = await _cells(visit.page, '#accounts td[data-col="followers"]')
    assert [_n(t) for t in shown if t != "—"] == [f for f in followers if f is not None]

    # Filter by status through the form.
    [bad] = [r["status"] for r in await web.sql(
        "SELECT DISTINCT status FROM ig_account WHERE status <> 'ok'")]
    await visit.page.select_option("#status", bad)
    await visit.page.click("#apply")
    await visit.page.wait_for_load_state("networkidle")
    wanted = {r["id"] for r in await web.sql(
        "SELECT ig_user_id::text AS id FROM ig_account WHERE status = $1", bad)}
    rows = {await r.get_attribute("data-id") for r in await visit.page.locator("#accounts tbody tr").all()}
    assert rows == wanted
    assert _n((await visit.page.inner_text("#matched")).split(" of ")[0]) == len(wanted)

    # Filter by text: part of one username.
    some = (await web.sql("SELECT username, ig_user_id::text AS id FROM ig_account "
                          "WHERE username IS NOT NULL ORDER BY ig_user_id LIMIT 1"))[0]
    await visit.open("/accounts")
    await visit.page.fill("#q", some["username"][1:-1])
    await visit.page.click("#apply")
    await visit.page.wait_for_load_state("networkidle")
    rows = {await r.get_attribute("data-id") for r in await visit.page.locator("#accounts tbody tr").all()}
    assert some["id"] in rows
    matching = {r["id"] for r in await web.sql(
        "SELECT ig_user_id::text AS id FROM ig_account WHERE username ILIKE $1",
        f"%{some['username'][1:-1]}%")}
    assert rows == matching

    # Paging, 3 per page, by following the "next" links to the end.
    await visit.open("/accounts?limit=3")
    seen = []
    ranges = []
    while True:
        seen += await _row_ids(visit.page)
        ranges.append(await visit.page.inner_text("#range"))
        if await visit.page.locator("#next").count() == 0:
            break
        await visit.page.click("#next")
        await visit.page.wait_for_load_state("networkidle")
    assert seen == [r["id"] for r in all_ids]
    assert ranges[0] == f"1–3 of {len(all_ids)}" and len(ranges) == -(-len(all_ids) // 3)
    await visit.page.click("#prev")
    await visit.page.wait_for_load_state("networkidle")
    assert "offset=" in visit.page.url
    visit.check_clean()


async def test_browser_account_page_shows_the_database(browser: Any, web: Web, tmp_path: Path) -> None:
    visit = await _visit(browser, web)
    [account] = await web.sql(
        "SELECT a.ig_user_id::text AS id, a.username, a.followers_count, a.media_count FROM ig_account a "
        "WHERE status = 'ok' AND EXISTS (SELECT 1 FROM ig_unavailable u WHERE u.object_id = a.ig_user_id) "
        "ORDER BY (SELECT count(*) FROM ig_media m WHERE m.ig_user_id = a.ig_user_id) DESC, 1 LIMIT 1")
    await visit.open("/accounts")
    await visit.page.click(f'#accounts tr[data-id="{account["id"]}"] td.name a')
    await visit.page.wait_for_load_state("networkidle")
    assert visit.page.url.endswith(f"/accounts/{account['id']}")
    assert (await visit.page.inner_text("#account-name")).startswith(account["username"])
    assert _n(await visit.page.inner_text("#followers")) == account["followers_count"]
    assert _n(await visit.page.inner_text("#media-count")) == account["media_count"]

    # The latest media and their insights, value by value.
    media = await web.sql("SELECT media_id::text AS id FROM ig_media WHERE ig_user_id = $1 "
                          "ORDER BY posted_at DESC LIMIT 24", int(account["id"]))
    rows = visit.page.locator("#media tr[data-media]")
    assert [await r.get_attribute("data-media") for r in await rows.all()] == [m["id"] for m in media]
    values = {(r["id"], r["metric"]): r["value"] for r in await web.sql(
        "SELECT media_id::text AS id, metric, value FROM ig_media_insight i JOIN ig_media USING (media_id) "
        "WHERE ig_user_id = $1 AND breakdown = '' AND dimension = ''", int(account["id"]))}
    checked = 0
    for row in await rows.all():
        media_id = await row.get_attribute("data-media")
        for cell in await row.locator("td[data-metric]").all():
            metric = await cell.get_attribute("data-metric")
            text = (await cell.inner_text()).strip()
            stored = values.get((media_id, metric))
            assert text == ("—" if stored is None else f"{int(stored):,}"), (media_id, metric)
            checked += stored is not None
    assert checked > 0

    # The daily reach chart: one dot per stored day, each tooltip the stored value.
    reach = await web.sql("SELECT value FROM ig_account_insight WHERE ig_user_id = $1 AND metric = 'reach' "
                          "AND period = 'day' AND breakdown = '' AND end_time > now() - interval '90 days' "
                          "ORDER BY end_time", int(account["id"]))
    chart = visit.page.locator("svg.chart[aria-label='Daily reach']")
    titles = await chart.locator("circle.dot title").all_text_contents()
    assert len(reach) > 0
    assert [re.sub(r"^.*: ", "", t) for t in titles] == [f"{int(r['value']):,}" for r in reach]

    # What is unavailable and why, as the ig_unavailable_current view says.
    expected = {(r["what"], r["metric"], r["reason"]): r["n"] for r in await web.sql(
        "SELECT 'account' AS what, metric, reason, count(*) AS n FROM ig_unavailable_current "
        "WHERE object_type = 'account' AND object_id = $1 GROUP BY 2, 3 UNION ALL "
        "SELECT 'media', u.metric, u.reason, count(*) FROM ig_unavailable_current u "
        "JOIN ig_media m ON u.object_type = 'media' AND m.media_id = u.object_id WHERE m.ig_user_id = $1 "
        "GROUP BY 2, 3", int(account["id"]))}
    shown = {}
    for row in await visit.page.locator("#unavailable tr:has(td)").all():
        cells = [c.strip() for c in await row.locator("td").all_inner_texts()]
        shown[(cells[0], cells[1], cells[2].replace(" ", "_"))] = _n(cells[3])
    assert shown == expected and expected
    await _screenshot(visit.page, tmp_path / "account.png")
    visit.check_clean()


async def test_browser_wrong_password_is_refused(browser: Any, web: Web) -> None:
    visit = await _visit(browser, web, password="not-the-password")
    response = await visit.open("/")
    assert response.status == 401
    assert await visit.page.locator("#accounts-total").count() == 0
