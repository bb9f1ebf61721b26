"""The daemon's HTTP endpoint: `/healthz` and `/metrics` (and the webhook routes, mounted by the daemon).

`/healthz` answers 200 while the event loop is responsive and the database answers `SELECT 1`, else 503,
with a JSON body that says which check failed and a per-account freshness summary. The loop is measured by
a monitor task that sleeps a fixed step and records how late it woke: a loop blocked by CPU work or a
synchronous call shows up as lag (and a loop blocked for good does not answer at all, which is a failed
probe too). `/metrics` is the Prometheus text format of the process's `metrics.Metrics`.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Protocol, Self

import asyncpg
import orjson
import structlog
from aiohttp import web

from collector import exceptions, metrics

log = structlog.get_logger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LAG_STEP_S = 0.25
LAG_WINDOW = 40  # samples kept: the last 10 s
LOOP_LAG_UNHEALTHY_S = 5.0


class HealthSource(Protocol):
    """What the daemon tells /healthz; both calls must be cheap."""

    async def database_ok(self) -> bool:
        """True when the database answered a trivial query within a short timeout (never raises)."""
        ...

    def freshness(self) -> Mapping[str, object]:
        """A JSON-able summary of how fresh the accounts' data is."""
        ...


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:9464`) -> (host, port); raises ConfigError."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise exceptions.ConfigError(f"listen address {listen!r} is not host:port", source="[http] listen")
    return host.strip("[]"), int(port)


class LoopLagMonitor:
    """Samples event-loop lag; `max_lag_s` is the worst lateness over the last few seconds."""

    def __init__(self, step_s: float = LAG_STEP_S, window: int = LAG_WINDOW) -> None:
        self._step_s = step_s
        self._samples: collections.deque[float] = collections.deque(maxlen=window)

    @property
    def max_lag_s(self) -> float:
        return max(self._samples, default=0.0)

    async def run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(self._step_s)
            self._samples.append(max(0.0, time.monotonic() - start - self._step_s))


class HttpServer:
    """One aiohttp app on one listen address. Add routes (e.g. the webhook's) before `start()`."""

    def __init__(self, listen: str, *, metrics: metrics.Metrics | None = None,
                 health: HealthSource | None = None) -> None:
        self._host, self._port = parse_listen(listen)
        self._metrics = metrics
        self._health = health
        self._lag = LoopLagMonitor()
        self._lag_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.app = web.Application()
        if health is not None:
            self.app.router.add_get("/healthz", self._healthz)
        if metrics is not None:
            self.app.router.add_get("/metrics", self._metrics_handler)

    def add_routes(self, routes: Iterable[web.RouteDef]) -> None:
        if self._runner is not None:
            raise RuntimeError("routes must be added before the server starts")
        self.app.add_routes(list(routes))

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._site is None or self._runner is None:
            raise RuntimeError("server not started")
        for address in self._runner.addresses:
            return int(address[1])
        return self._port

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("server already started")
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await self._site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise exceptions.ConfigError(f"cannot listen on {self._host}:{self._port}: {exc}",
                                         source="[http] listen") from exc
        if self._health is not None:
            self._lag_task = asyncio.create_task(self._lag.run(), name="http-loop-lag")
        log.info("http_listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            await asyncio.gather(self._lag_task, return_exceptions=True)
            self._lag_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def _healthz(self, request: web.Request) -> web.Response:
        assert self._health is not None  # the route exists only with a health source
        db_ok = await self._health.database_ok()
        lag_s = self._lag.max_lag_s
        loop_ok = lag_s < LOOP_LAG_UNHEALTHY_S
        healthy = db_ok and loop_ok
        body = {
            "status": "ok" if healthy else "unhealthy",
            "checks": {
                "event_loop": {"ok": loop_ok, "max_lag_s": round(lag_s, 4)},
                "database": {"ok": db_ok},
            },
            "freshness": dict(self._health.freshness()),
        }
        return web.Response(body=orjson.dumps(body), status=200 if healthy else 503,
                            content_type="application/json")

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        assert self._metrics is not None
        response = web.Response(body=self._metrics.exposition())
        # aiohttp refuses a content type with parameters in the constructor; set the header directly.
        response.headers["Content-Type"] = PROMETHEUS_CONTENT_TYPE
        return response


async def ping_database(pool: asyncpg.Pool, timeout_s: float = 2.0) -> bool:
    """`SELECT 1` through the pool within `timeout_s`: the health probe's database check. Any failure
    (refused, reset, timeout, pool closed) is an unhealthy answer, never an exception."""
    try:
        async with asyncio.timeout(timeout_s), pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT 1") == 1)
    except Exception as exc:  # a probe: whatever asyncpg raises while the server is away means "down"
        log.warning("healthz_database_unreachable", error=type(exc).__name__)
        return False
