"""The aiohttp application of the simulator: one catch-all route over `api.Simulator`, plus latency,
transport-level faults and the control endpoints.

    app = server.make_app(world, api.Options(...))
    app[server.SIMULATOR]  -> api.Simulator (stats, limits, world)

Control endpoints (never counted, never faulted):
    GET  /__sim/stats                 stats snapshot (JSON)
    POST /__sim/reset                 clear stats, budgets/blocks and fault counters
    POST /__sim/advance?epochs=N      grow media metrics (World.advance)
    POST /__sim/users?ig_user_ids=…   a Facebook user with Pages and its token (accounts_api)
    POST /__sim/pages/{id}/unlink     unlink (or /link: relink) a Page's Instagram account (accounts_api)

Transport faults: "slow" answers after `faults.slow_delay_s`; "drop" closes the connection without an
answer; "truncate" sends valid headers whose Content-Length matches a JSON body cut in half (so the
client sees a complete HTTP answer that is not valid JSON).
"""

from __future__ import annotations

import asyncio
import random

import orjson
from aiohttp import web

from collector.simulator import accounts_api, api
from collector.simulator import world as world_mod

SIMULATOR = web.AppKey("simulator", api.Simulator)


class _Handler:
    def __init__(self, sim: api.Simulator) -> None:
        self.sim = sim
        self.latency_s = sim.options.latency_ms / 1000.0
        self.jitter = sim.options.latency_jitter
        self.random = random.Random(sim.world.seed)  # noqa: S311 -- latency jitter, not cryptography

    async def graph(self, request: web.Request) -> web.StreamResponse:
        params = dict(request.query)
        if request.method == "POST" and request.body_exists:
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        if self.latency_s > 0:
            spread = self.jitter * (2 * self.random.random() - 1)
            await asyncio.sleep(max(0.0, self.latency_s * (1 + spread)))
        base_url = f"{request.scheme}://{request.host}"
        out = self.sim.call(request.method, request.path, params, base_url,
                            request.headers.get("User-Agent", ""))
        body = out.body
        if out.action == "slow":
            await asyncio.sleep(self.sim.options.faults.slow_delay_s)
        elif out.action == "drop":
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError  # aiohttp treats it as the peer being gone: nothing is written
        elif out.action == "truncate":
            body = body[: len(body) // 2]
        return web.Response(status=out.status, body=body, headers=out.headers)

    async def stats(self, request: web.Request) -> web.Response:
        return _json(self.sim.stats.snapshot())

    async def reset(self, request: web.Request) -> web.Response:
        self.sim.reset()
        return _json({"ok": True})

    async def advance(self, request: web.Request) -> web.Response:
        self.sim.world.advance(int(request.query.get("epochs", "1")))
        return _json({"epoch": self.sim.world.epoch})


def _json(body: object) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def make_app(world: world_mod.World, options: api.Options | None = None) -> web.Application:
    sim = api.Simulator(world, options)
    handler = _Handler(sim)
    app = web.Application()
    app[SIMULATOR] = sim
    app.router.add_get("/__sim/stats", handler.stats)
    app.router.add_post("/__sim/reset", handler.reset)
    app.router.add_post("/__sim/advance", handler.advance)
    accounts_api.add_control_routes(app, sim.accounts)
    app.router.add_route("*", "/{tail:.*}", handler.graph)
    return app
