"""The web UI's routes on the daemon's aiohttp server: `/`, `/accounts`, `/accounts/{ig_user_id}`, static.

Read-only, server-rendered (Jinja2, autoescaped), no script at all: sorting, filtering and paging are links
and a GET form; the overview refreshes itself with `<meta http-equiv="refresh">`. Every HTML response carries
a strict Content-Security-Policy (`default-src 'none'`, styles and images from this origin only), so even a
value that slipped past the escaping could not run or load anything.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

import jinja2
import structlog
from aiohttp import web
from markupsafe import Markup

from collector import exceptions, httpserver
from collector.web import auth, charts, pages, queries, series

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {".css": "text/css", ".svg": "image/svg+xml"}
DEFAULT_PAGE_SIZE = 50
REFRESH_S = 60


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("collector.web", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(
        number=_number, pct=lambda v: f"{v:.0f} %", exact=charts.exact, when=_when,
        age=lambda t, now: "never" if t is None else pages.age(now - t),
        until=pages.until, days=lambda d: "unknown" if d is None else f"{d:.0f} d")
    env.globals.update(accounts_url=_accounts_url, stack_chart=_stack_chart)
    return env


def _accounts_url(chosen: queries.AccountFilter, **changes: object) -> str:
    """/accounts with the current filter, `changes` applied; defaults are left out of the query."""
    values: dict[str, object] = {"q": chosen.text, "status": chosen.status, "sort": chosen.sort,
                                 "desc": chosen.descending, "limit": chosen.limit, "offset": chosen.offset}
    values.update(changes)
    defaults = {"q": "", "status": "", "sort": "username", "desc": False, "limit": DEFAULT_PAGE_SIZE,
                "offset": 0}
    query = {k: ("1" if v is True else str(v)) for k, v in values.items() if v != defaults[k]}
    return "/accounts" + ("?" + urllib.parse.urlencode(query) if query else "")


def _stack_chart(job: str, counts: Mapping[str, int]) -> Markup:
    return charts.stack(job, [("within schedule", counts["ok"], "ok"), ("late", counts["late"], "late"),
                              ("failing", counts["failing"], "failing"), ("never", counts["never"], "never")])


def _number(value: float | int | None) -> str:
    if value is None:
        return "—"
    return charts.exact(float(value))


def _when(t: datetime | None) -> str:
    return "—" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _static_files() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for entry in importlib.resources.files("collector.web").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


class WebUI:
    """The pages of one daemon. `attach(server)` before the server starts."""

    def __init__(self, source: pages.Source, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._source = source
        self._clock = clock
        self._env = _environment()
        self._static = _static_files()
        self.calls = series.CounterSeries(pages.CALL_SERIES, lambda: pages.counter_totals(source.metrics))

    def attach(self, server: httpserver.HttpServer, *, open_paths: tuple[str, ...] = ("/healthz",)) -> None:
        """Add the routes, the sampler of the call series and, when configured, basic auth (which then
        covers every path of the server except `open_paths`)."""
        http = self._source.config.http
        if http.basic_auth_user is not None and http.basic_auth_password is not None:
            server.app.middlewares.append(
                auth.middleware(http.basic_auth_user, http.basic_auth_password, open_paths))
        server.app.cleanup_ctx.append(self._sampler)
        server.add_routes([
            web.get("/", self._overview),
            web.get("/accounts", self._accounts),
            web.get(r"/accounts/{ig_user_id:\d{1,19}}", self._account),
            web.get("/static/{name}", self._static_file),
            web.get("/favicon.ico", self._favicon),
        ])

    async def _sampler(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self.calls.run(), name="web-call-series")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------------ pages

    async def _overview(self, request: web.Request) -> web.Response:
        context = await self._read(pages.overview(self._source, self.calls, self._clock()))
        return self._render("overview.html", context, refresh_s=REFRESH_S)

    async def _accounts(self, request: web.Request) -> web.Response:
        chosen = _filter(request.query)
        if chosen is None:
            raise web.HTTPBadRequest(text="bad sort, status, limit or offset\n")
        context = await self._read(pages.accounts(self._source, chosen, self._clock()))
        return self._render("accounts.html", context)

    async def _account(self, request: web.Request) -> web.Response:
        ig_user_id = request.match_info["ig_user_id"]
        if int(ig_user_id) > 2**63 - 1 or ig_user_id.startswith("0"):
            raise web.HTTPNotFound(text="no such account\n")
        context = await self._read(pages.account(self._source, ig_user_id, self._clock()))
        if context is None:
            return self._render("missing.html", {"ig_user_id": ig_user_id}, status=404)
        return self._render("account.html", context)

    async def _read(self, pending: Awaitable[_T]) -> _T:
        """Await a page's data; a database that cannot answer is a 503 page, not a traceback."""
        try:
            return await pending
        except exceptions.StorageError as exc:
            log.warning("web_database_error", error=str(exc))
            raise web.HTTPServiceUnavailable(text="the database is not answering; retry shortly\n") from exc

    def _render(self, template: str, context: Mapping[str, object], *, status: int = 200,
                refresh_s: int | None = None) -> web.Response:
        values = {"now": self._clock(), "nav": "", **context}
        html = self._env.get_template(template).render(
            **values, refresh_s=refresh_s, accounts_configured=len(self._source.accounts))
        response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
        response.headers.update(SECURITY_HEADERS)
        return response

    # ------------------------------------------------------------------ static files

    async def _static_file(self, request: web.Request) -> web.Response:
        found = self._static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text="no such file\n")
        body, content_type = found
        response = web.Response(body=body, content_type=content_type)
        response.headers.update({"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})
        return response

    async def _favicon(self, request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/static/favicon.svg")


def _filter(query: Mapping[str, str]) -> queries.AccountFilter | None:
    """The /accounts query string (`q`, `status`, `sort`, `desc`, `limit`, `offset`); None when invalid."""
    sort = query.get("sort", "username")
    limit_text = query.get("limit", str(DEFAULT_PAGE_SIZE))
    offset_text = query.get("offset", "0")
    if sort not in queries.SORTS or not limit_text.isdigit() or not offset_text.isdigit():
        return None
    limit = int(limit_text)
    if not 1 <= limit <= pages.MAX_PAGE_SIZE or int(offset_text) > 10**9:
        return None
    status = query.get("status", "")
    if len(status) > 40 or len(query.get("q", "")) > 200:
        return None
    return queries.AccountFilter(text=query.get("q", ""), status=status, sort=sort,
                                 descending=query.get("desc") == "1", limit=limit, offset=int(offset_text))
