"""GraphClient over real HTTP: a small scripted aiohttp.web server in the test (transport faults the
simulator does not need to model), no patching. Asserts backoff timing from request timestamps, pauses
from the server's view, and that tokens never reach exceptions or logs."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp.test_utils
import orjson
import pytest
import structlog.testing
from aiohttp import web

from collector import exceptions, graph, metrics, models, ratelimit, redaction, retry, settings
from collector.simulator import faults as faults_mod
from collector.simulator import limits
from collector.simulator import world as world_mod
from tests.fixtures_sim import StartSimulator

TOKEN_A = "tok-A-0123456789abcdef"
TOKEN_B = "tok-B-0123456789abcdef"
ACCOUNT_A = models.Account("1001", "instagram", models.Secret(TOKEN_A), "test A")
ACCOUNT_B = models.Account("1002", "instagram", models.Secret(TOKEN_B), "test B")
ACCOUNT_FB = models.Account("2001", "facebook", models.Secret(TOKEN_B), "test FB")

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Hit:
    at: float
    path: str
    query: dict[str, str]


@dataclass
class FakeGraph:
    """Scripted answers per path (FIFO), then a default JSON echo; records every request."""

    script: dict[str, list[Behaviour]] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    version_header: str | None = None
    delay_s: float = 0.0

    def on(self, path: str, *behaviours: Behaviour) -> None:
        self.script.setdefault(path, []).extend(behaviours)

    def paths(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(Hit(time.monotonic(), request.path, dict(request.query)))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            queue = self.script.get(request.path)
            if queue:
                return await queue.pop(0)(request)
            response = web.json_response({"id": request.path.rsplit("/", 1)[-1], "path": request.path})
            if self.version_header:
                response.headers["facebook-api-version"] = self.version_header
            return response
        finally:
            self.in_flight -= 1


def graph_error(status: int, message: str, code: int, headers: dict[str, str] | None = None,
                **extra: Any) -> Behaviour:
    async def respond(_request: web.Request) -> web.StreamResponse:
        body = {"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "T",
                          **extra}}
        return web.json_response(body, status=status, headers=headers)
    return respond


def json_ok(body: object, headers: dict[str, str] | None = None) -> Behaviour:
    async def respond(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)
    return respond


def raw(status: int, body: bytes, content_type: str = "text/html") -> Behaviour:
    async def respond(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type=content_type)
    return respond


def slow(seconds: float) -> Behaviour:
    async def respond(_request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response({"late": True})
    return respond


async def drop_connection(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(0.05)
    return web.Response()


async def truncated(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "200"})
    await response.prepare(request)
    await response.write(b'{"data": [{"id": "1"')
    assert request.transport is not None
    request.transport.close()
    return response


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeGraph, str]]:
    graph_ = FakeGraph()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", graph_.handle)
    server = aiohttp.test_utils.TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield graph_, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@dataclass
class Rig:
    client: graph.GraphClient
    throttle: ratelimit.Throttle
    metrics: metrics.Metrics
    server: FakeGraph


def make_rig(server: FakeGraph, base: str, *, max_attempts: int = 3, base_delay_s: float = 0.05,
             throttle_base_delay_s: float = 0.1, pause_cap_s: float = 0.3, timeout_s: float = 2.0,
             max_concurrency: int = 50, account_calls_per_s: float = 0.0, fb_prefix: str = "/fb") -> Rig:
    counters = metrics.Metrics()
    rl = settings.RateLimitSettings(app_calls_per_s=0.0, account_calls_per_s=account_calls_per_s,
                                    pause_cap_s=pause_cap_s)
    throttle = ratelimit.Throttle(rl, counters)
    rs = settings.RetrySettings(max_attempts=max_attempts, base_delay_s=base_delay_s, max_delay_s=5.0,
                                throttle_base_delay_s=throttle_base_delay_s, throttle_max_attempts=4)
    policy = retry.RetryPolicy(rs, pause_cap_s=pause_cap_s)
    gs = settings.GraphSettings(api_version="v24.0", instagram_base_url=base,
                                facebook_base_url=base + fb_prefix, request_timeout_s=timeout_s,
                                max_concurrency=max_concurrency)
    # rand = 1.0: every backoff is its ceiling, so the test knows the exact minimum gap
    client = graph.GraphClient(gs, throttle, policy, counters, rand=lambda: 1.0)
    return Rig(client, throttle, counters, server)


def assert_token_free(*texts: str) -> None:
    for text in texts:
        assert TOKEN_A not in text and TOKEN_B not in text, text


def exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


# -- basics --------------------------------------------------------------------------------------------------

async def test_get_builds_url_and_sends_token(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    rig = make_rig(server, base)
    async with rig.client as client:
        body = await client.get(ACCOUNT_A, "1001/insights", {"metric": "reach", "period": "day"},
                                endpoint="account_insights")
        fb = await client.get(ACCOUNT_FB, "2001", {"fields": "username"}, endpoint="profile")
    assert body["path"] == "/v24.0/1001/insights"
    assert fb["path"] == "/fb/v24.0/2001"
    assert server.hits[0].query == {"metric": "reach", "period": "day", "access_token": TOKEN_A}
    assert rig.metrics.total(rig.metrics.graph_calls, endpoint="account_insights", status="200") == 1.0


async def test_unversioned_token_endpoint(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    server.on("/refresh_access_token", json_ok({"access_token": "NEWTOKEN123456", "token_type": "bearer",
                                                "expires_in": 5183944}))
    rig = make_rig(server, base)
    async with rig.client as client:
        body = await client.get_with_token("instagram", ACCOUNT_A.access_token, "refresh_access_token",
                                           {"grant_type": "ig_refresh_token"}, versioned=False)
    assert body["expires_in"] == 5183944
    assert server.hits[0].query == {"grant_type": "ig_refresh_token", "access_token": TOKEN_A}


async def test_lifecycle_is_explicit(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    rig = make_rig(server, base)
    with pytest.raises(RuntimeError, match="unopened"):
        await rig.client.get(ACCOUNT_A, "1001", endpoint="profile")
    async with rig.client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await rig.client.get(ACCOUNT_A, "1001", endpoint="profile")
    with pytest.raises(RuntimeError):
        await rig.client.open()


async def test_version_mismatch_logged_once_per_host(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    server.version_header = "v26.0"
    rig = make_rig(server, base)
    with structlog.testing.capture_logs() as logs:
        async with rig.client as client:
            for _ in range(3):
                await client.get(ACCOUNT_A, "1001", endpoint="profile")
    mismatches = [e for e in logs if e["event"] == "graph_version_mismatch"]
    assert len(mismatches) == 1 and mismatches[0]["served"] == "v26.0"


async def test_in_flight_bounded_by_connector_limit(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    server.delay_s = 0.02
    rig = make_rig(server, base, max_concurrency=3)
    async with rig.client as client:
        await asyncio.gather(*(client.get(ACCOUNT_A, f"m{i}", endpoint="media") for i in range(20)))
    assert server.max_in_flight <= 3


# -- transient faults ----------------------------------------------------------------------------------------

async def test_server_errors_retried_after_backoff(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    path = "/v24.0/1001/insights"
    server.on(path, graph_error(500, "An unknown error occurred", 1),
              graph_error(500, "An unexpected error has occurred. Please retry your request later.", 2,
                          is_transient=True))
    rig = make_rig(server, base, base_delay_s=0.1)
    with structlog.testing.capture_logs() as logs:
        async with rig.client as client:
            body = await client.get(ACCOUNT_A, "1001/insights", {"metric": "reach"},
                                    endpoint="media_insights")
    assert body["path"] == path
    hits = server.paths(path)
    assert len(hits) == 3
    assert hits[1].at - hits[0].at >= 0.1  # attempt 1: ceiling base * 2^0
    assert hits[2].at - hits[1].at >= 0.2  # attempt 2: ceiling base * 2^1
    retries = [e for e in logs if e["event"] == "graph_retry"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert retries[0]["account"] == "1001" and retries[0]["code"] == 1 and retries[0]["wait_s"] == 0.1
    assert rig.metrics.total(rig.metrics.graph_retries, reason="server") == 2.0
    assert rig.metrics.total(rig.metrics.graph_calls, status="500", code="1") == 1.0


async def test_gives_up_after_max_attempts(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    path = "/v24.0/1001"
    server.on(path, *(raw(502, b"<html>Bad Gateway</html>") for _ in range(5)))
    rig = make_rig(server, base, max_attempts=3, base_delay_s=0.01)
    async with rig.client as client:
        with pytest.raises(exceptions.ServerError) as caught:
            await client.get(ACCOUNT_A, "1001", endpoint="profile")
    assert caught.value.http_status == 502
    assert len(server.paths(path)) == 3


@pytest.mark.parametrize(("name", "behaviour"), [
    ("dropped", drop_connection),
    ("truncated", truncated),
    ("non_json_200", raw(200, b"<html>oops</html>")),
    ("timeout", slow(1.0)),
])
async def test_transport_faults_are_retried(fake: tuple[FakeGraph, str], name: str,
                                            behaviour: Behaviour) -> None:
    server, base = fake
    path = "/v24.0/1001/media"
    server.on(path, behaviour)
    rig = make_rig(server, base, timeout_s=0.3)
    async with rig.client as client:
        body = await client.get(ACCOUNT_A, "1001/media", endpoint="media")
    assert body["path"] == path, name
    hits = server.paths(path)
    assert len(hits) == 2
    # aiohttp itself re-sends an idempotent GET once when the server closes a connection before answering
    expected_retries = 0.0 if name == "dropped" else 1.0
    assert rig.metrics.total(rig.metrics.graph_retries, reason="transport") == expected_retries


async def test_transport_error_after_giving_up_is_chained_and_token_free(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    path = "/v24.0/1001/media"
    server.on(path, truncated, slow(1.0), *(drop_connection for _ in range(4)))
    rig = make_rig(server, base, timeout_s=0.3, base_delay_s=0.01)
    with structlog.testing.capture_logs() as logs:
        async with rig.client as client:
            with pytest.raises(exceptions.GraphTransportError) as caught:
                await client.get(ACCOUNT_A, "1001/media", {"fields": "id"}, endpoint="media")
    error = caught.value
    assert error.__cause__ is not None  # `from exc`: the aiohttp/timeout error is kept, not leaked as such
    assert not isinstance(error, aiohttp.ClientError | TimeoutError)
    assert_token_free(exception_text(error), repr(logs))


async def test_connection_refused_is_transport_error() -> None:
    server = FakeGraph()
    port = aiohttp.test_utils.unused_port()  # nothing listens there
    rig = make_rig(server, f"http://127.0.0.1:{port}", max_attempts=2, base_delay_s=0.01)
    async with rig.client as client:
        with pytest.raises(exceptions.GraphTransportError) as caught:
            await client.get(ACCOUNT_A, "1001", endpoint="profile")
    assert_token_free(exception_text(caught.value))


# -- permanent errors ----------------------------------------------------------------------------------------

async def test_permanent_error_raised_at_once(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    path = "/v24.0/555/insights"
    server.on(path, graph_error(400, "(#100) metric[1] must be one of the following values: reach, saved",
                                100))
    rig = make_rig(server, base)
    async with rig.client as client:
        with pytest.raises(exceptions.UnsupportedMetric) as caught:
            await client.get(ACCOUNT_A, "555/insights", {"metric": "reach,plays"}, endpoint="media_insights")
    assert caught.value.metrics == {"plays"} and caught.value.allowed == {"reach", "saved"}
    assert len(server.paths(path)) == 1
    assert rig.metrics.total(rig.metrics.graph_calls, endpoint="media_insights", status="400",
                             code="100") == 1.0


async def test_token_error_message_never_holds_the_token(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    path = "/v24.0/1001"
    server.on(path, graph_error(400, f"Invalid OAuth access token {TOKEN_A}", 190, error_subcode=467))
    rig = make_rig(server, base)
    async with rig.client as client:
        with pytest.raises(exceptions.TokenInvalid) as caught:
            await client.get(ACCOUNT_A, "1001", endpoint="profile")
    assert caught.value.subcode == 467
    assert_token_free(exception_text(caught.value), caught.value.describe())


# -- throttling ----------------------------------------------------------------------------------------------

BUC_BLOCKED = orjson.dumps({"1001": [{"type": "instagram", "call_count": 100, "total_cputime": 30,
                                      "total_time": 30, "estimated_time_to_regain_access": 1}]}).decode()


async def test_account_throttle_pauses_that_account_only(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    throttled_path = "/v24.0/1001/media"
    server.on(throttled_path, graph_error(
        400, "(#80002) There have been too many calls to this Instagram account. Wait a bit and try again.",
        80002, headers={"X-Business-Use-Case-Usage": BUC_BLOCKED}))
    rig = make_rig(server, base, pause_cap_s=2.0)  # Meta says 1 minute; the cap makes it 2 s
    with structlog.testing.capture_logs() as logs:
        async with rig.client as client:
            first = asyncio.create_task(client.get(ACCOUNT_A, "1001/media", endpoint="media"))
            while not server.paths(throttled_path):  # the throttle answer: account A is paused
                await asyncio.sleep(0.01)
            more_a = [asyncio.create_task(client.get(ACCOUNT_A, f"1001/x{i}", endpoint="media"))
                      for i in range(5)]
            await asyncio.gather(*(client.get(ACCOUNT_B, f"1002/m{i}", endpoint="media") for i in range(10)))
            # The other account went through (10 calls) while A is still paused: by counts, not speed.
            assert rig.throttle.paused_for_s("account", "1001") > 0
            assert not [h for h in server.hits if h.path.startswith("/v24.0/1001/x")]
            await asyncio.gather(first, *more_a)
    throttle_at = server.paths(throttled_path)[0].at
    a_hits = [h for h in server.hits if h.path.startswith("/v24.0/1001") and h.at > throttle_at]
    b_hits = [h for h in server.hits if h.path.startswith("/v24.0/1002")]
    # no call of the paused account left the process until the pause ended
    assert len(a_hits) == 6 and min(h.at for h in a_hits) >= throttle_at + 2.0
    assert len(b_hits) == 10
    events = [e for e in logs if e["event"] == "graph_throttled"]
    assert len(events) == 1
    assert events[0]["scope"] == "account" and events[0]["code"] == 80002 and events[0]["wait_s"] == 2.0
    assert rig.metrics.total(rig.metrics.throttles, scope="account", code="80002") == 1.0
    assert rig.metrics.total(rig.metrics.pauses, scope="account") == 1.0


async def test_app_throttle_pauses_the_whole_host(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    path = "/v24.0/1001"
    server.on(path, graph_error(403, "(#4) Application request limit reached", 4, is_transient=True))
    rig = make_rig(server, base, throttle_base_delay_s=1.0, pause_cap_s=5.0)
    async with rig.client as client:
        first = asyncio.create_task(client.get(ACCOUNT_A, "1001", endpoint="profile"))
        while not server.paths(path):
            await asyncio.sleep(0.01)
        ig_other = asyncio.create_task(client.get(ACCOUNT_B, "1002", endpoint="profile"))
        await client.get(ACCOUNT_FB, "2001", endpoint="profile")  # another host: not paused
        # It went through while the Instagram host is still paused: by order, not speed.
        assert rig.throttle.paused_count("app") == 1
        assert not server.paths("/v24.0/1002")
        await asyncio.gather(first, ig_other)
    throttle_at = server.paths(path)[0].at
    # rand = 1.0 -> wait = 2 * throttle_base = 2 s, for every account of the host
    assert server.paths(path)[1].at >= throttle_at + 2.0
    assert server.paths("/v24.0/1002")[0].at >= throttle_at + 2.0
    assert rig.metrics.total(rig.metrics.throttles, scope="app", code="4") == 1.0


TOKEN_USER = "tok-U-0123456789abcdef"  # a Facebook user token serving three Pages' accounts
TOKEN_USER_NEW = "tok-V-0123456789abcdef"
TOKEN_OWN = "tok-C-0123456789abcdef"
USER_ACCOUNTS = [models.Account(f"300{i}", "facebook", models.Secret(TOKEN_USER), f"user {i}")
                 for i in (1, 2, 3)]
OWN_ACCOUNT = models.Account("3009", "facebook", models.Secret(TOKEN_OWN), "own token")


async def test_user_throttle_pauses_every_account_of_the_token(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    first, second, third = USER_ACCOUNTS
    path = "/fb/v24.0/3001/media"
    server.on(path, graph_error(400, "(#17) User request limit reached", 17))
    rig = make_rig(server, base, throttle_base_delay_s=0.5, pause_cap_s=2.0)  # rand 1.0: a 1-s pause
    with structlog.testing.capture_logs() as logs:
        async with rig.client as client:
            for account in (*USER_ACCOUNTS, OWN_ACCOUNT):  # every account has called with its token
                await client.get(account, account.ig_user_id, endpoint="profile")
            throttled = asyncio.create_task(client.get(first, "3001/media", endpoint="media"))
            while not server.paths(path):  # the 17 answer: every account of the token is paused
                await asyncio.sleep(0.01)
            held = [asyncio.create_task(client.get(account, f"{account.ig_user_id}/x", endpoint="media"))
                    for account in (second, third)]
            await asyncio.gather(*(client.get(OWN_ACCOUNT, f"3009/m{i}", endpoint="media") for i in range(5)))
            # The account with its own token went through while the token's three accounts stay paused.
            assert all(rig.throttle.paused_for_s("account", a.ig_user_id) > 0 for a in USER_ACCOUNTS)
            assert rig.throttle.paused_for_s("account", OWN_ACCOUNT.ig_user_id) == 0
            assert not [h for h in server.hits if h.path.endswith("/x")]
            await asyncio.gather(throttled, *held)
    throttle_at = server.paths(path)[0].at
    later = [h for h in server.hits if h.at > throttle_at and not h.path.startswith("/fb/v24.0/3009")]
    assert sorted(h.path for h in later) == ["/fb/v24.0/3001/media", "/fb/v24.0/3002/x", "/fb/v24.0/3003/x"]
    assert min(h.at for h in later) >= throttle_at + 1.0  # none before the pause ended
    events = [e for e in logs if e["event"] == "graph_throttled"]
    assert len(events) == 1
    assert {k: events[0][k] for k in ("account", "scope", "code", "wait_s", "accounts_paused")} == {
        "account": "3001", "scope": "user", "code": 17, "wait_s": 1.0, "accounts_paused": 3}
    shown = repr(logs) + rig.metrics.exposition().decode()
    assert TOKEN_USER not in shown and TOKEN_OWN not in shown
    assert rig.metrics.total(rig.metrics.throttles, scope="user", code="17") == 1.0
    assert rig.metrics.total(rig.metrics.pauses, scope="account") == 3.0


async def test_user_throttle_leaves_out_an_account_whose_token_changed(fake: tuple[FakeGraph, str]) -> None:
    """An account linked to a token is linked to the token of its latest call only: once its token changed
    (refresh, reload), a 17 on the old token no longer pauses it; a token stays a plain id until a second
    account uses it, and a token no account uses any more is forgotten."""
    server, base = fake
    first, second, third = USER_ACCOUNTS
    moved = dataclasses.replace(second, access_token=models.Secret(TOKEN_USER_NEW))
    server.on("/fb/v24.0/3001", graph_error(400, "(#17) User request limit reached", 17))
    rig = make_rig(server, base, throttle_base_delay_s=0.5, pause_cap_s=2.0)
    async with rig.client as client:
        await client.get(second, "3002", endpoint="profile")
        await client.get(third, "3003", endpoint="profile")
        await client.get(moved, "3002", endpoint="profile")  # its token changed: linked to the new one
        assert client._token_accounts == {TOKEN_USER: "3003", TOKEN_USER_NEW: "3002"}
        await client.get(first, "3001", endpoint="profile")  # answered 17, paused, then answered
        assert rig.throttle.paused_for_s("account", "3002") == 0
        assert rig.metrics.total(rig.metrics.pauses, scope="account") == 2.0  # 3001 and 3003
        assert client._token_accounts == {TOKEN_USER: {"3001", "3003"}, TOKEN_USER_NEW: "3002"}
        await client.get(dataclasses.replace(third, access_token=models.Secret(TOKEN_USER_NEW)), "3003",
                         endpoint="profile")
        await client.get(dataclasses.replace(first, access_token=models.Secret(TOKEN_USER_NEW)), "3001",
                         endpoint="profile")
        assert client._token_accounts == {TOKEN_USER_NEW: {"3001", "3002", "3003"}}


async def test_tokens_only_calls_for_no_account_used_are_not_remembered(fake: tuple[FakeGraph, str]) -> None:
    """Each token refresh is a call for no account carrying the token, and brings a new token that this
    process's account calls may never use (another instance collects the account, or it is refreshed again
    first): however many tokens were refreshed, the links stay bounded by the accounts."""
    server, base = fake
    rig = make_rig(server, base)
    async with rig.client as client:
        token = ACCOUNT_A.access_token
        await client.get(ACCOUNT_A, "1001", endpoint="profile")
        for i in range(200):
            await client.get_with_token("instagram", token, "refresh_access_token",
                                        {"grant_type": "ig_refresh_token"}, versioned=False)
            token = models.Secret(f"tok-R-{i:04d}-0123456789abcdef")  # the answer's new token ...
            redaction.register_secret(token.reveal(), owner="1001")  # ... registered as TokenStore does
            if i % 50 == 49:  # now and then the account's calls move to the newest token
                moved = dataclasses.replace(ACCOUNT_A, access_token=token)
                await client.get(moved, "1001", endpoint="profile")
        assert client._token_accounts == {token.reveal(): "1001"}
        assert client._account_tokens == {"1001": token}
    assert len(server.paths("/refresh_access_token")) == 200


async def test_throttle_gives_up_after_throttle_max_attempts(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    path = "/v24.0/1001"
    server.on(path, *(graph_error(429, "(#17) User request limit reached", 17) for _ in range(5)))
    rig = make_rig(server, base, throttle_base_delay_s=0.01, pause_cap_s=0.02)
    async with rig.client as client:
        with pytest.raises(exceptions.Throttled) as caught:
            await client.get(ACCOUNT_A, "1001", endpoint="profile")
    assert caught.value.code == 17 and caught.value.http_status == 429
    assert len(server.paths(path)) == 4


# -- paging --------------------------------------------------------------------------------------------------

async def test_pages_follow_next_through_an_empty_page(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    path = "/v24.0/1001/media"
    # Meta's next URLs name Meta's host, another version and carry the token: the client must rebuild them
    meta_next = "https://graph.instagram.com/v26.0/1001/media?access_token=" + TOKEN_A + \
        "&fields=id%2Ctimestamp&limit=2&after={cursor}"
    server.on(path,
              json_ok({"data": [{"id": "1"}, {"id": "2"}], "paging": {
                  "cursors": {"before": "b0", "after": "c1"}, "next": meta_next.format(cursor="c1")}}),
              json_ok({"data": [], "paging": {"cursors": {"after": "c2"},
                                              "next": meta_next.format(cursor="c2")}}),
              json_ok({"data": [{"id": "3"}, "junk"], "paging": {"cursors": {"before": "c2"}}}))
    rig = make_rig(server, base)
    pages: list[list[dict[str, Any]]] = []
    with structlog.testing.capture_logs() as logs:
        async with rig.client as client:
            async for page in client.pages(ACCOUNT_A, "1001/media", {"fields": "id,timestamp", "limit": "2"},
                                           endpoint="media"):
                pages.append(page)
    assert pages == [[{"id": "1"}, {"id": "2"}], [], [{"id": "3"}]]
    hits = server.paths(path)
    assert len(hits) == 3
    assert hits[1].query == {"fields": "id,timestamp", "limit": "2", "after": "c1", "access_token": TOKEN_A}
    assert hits[2].query["after"] == "c2"
    assert_token_free(repr(logs))


async def test_pages_refuse_a_repeating_cursor(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    path = "/v24.0/1001/stories"
    loop_page = {"data": [{"id": "9"}], "paging": {"next": f"{base}/v24.0/1001/stories?after=same"}}
    server.on(path, json_ok(loop_page), json_ok(loop_page), json_ok(loop_page))
    rig = make_rig(server, base)
    async with rig.client as client:
        with pytest.raises(exceptions.GraphTransportError, match="repeats"):
            async for _page in client.pages(ACCOUNT_A, "1001/stories", endpoint="stories"):
                pass
    assert len(server.paths(path)) == 2


async def test_registered_tokens_masked_in_any_later_text(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    rig = make_rig(server, base)
    async with rig.client as client:
        await client.get(ACCOUNT_B, "1002", endpoint="profile")
    assert redaction.redact(f"oops {TOKEN_B} leaked") == "oops *** leaked"


# -- against the simulator (tests/fixtures_sim.py) -----------------------------------------------------------

def sim_account(acc: world_mod.SimAccount) -> models.Account:
    return models.Account(acc.ig_user_id, acc.login, models.Secret(acc.access_token), "sim")


async def test_sim_media_walk_through_empty_page(start_simulator: StartSimulator) -> None:
    sim = await start_simulator(accounts=2, media_per_account=57, seed=5,
                                world_knobs={"empty_page_fraction": 1.0, "invalid_token_fraction": 0.0})
    rig = make_rig(FakeGraph(), sim.base_url, fb_prefix="")
    async with rig.client as client:
        for acc in sim.accounts():
            ids: list[str] = []
            pages = 0
            async for page in client.pages(sim_account(acc), f"{acc.ig_user_id}/media",
                                           {"fields": "id,timestamp", "limit": "10"}, endpoint="media"):
                pages += 1
                ids += [item["id"] for item in page]
            assert sorted(ids) == sorted(m.media_id for m in sim.world.media_of(acc.ig_user_id))
            assert len(set(ids)) == len(ids) == 57
            assert pages >= 7  # 6 full pages, the last, and the injected empty page


async def test_sim_tight_budget_no_call_while_blocked(start_simulator: StartSimulator) -> None:
    # 8 calls per rolling second, then a 0.4 s block; Meta's regain estimate (rounded up to 1 minute) is
    # capped at 0.5 s, so every pause outlasts the block.
    sim = await start_simulator(accounts=2, media_per_account=1, seed=7,
                                world_knobs={"invalid_token_fraction": 0.0},
                                account_budget=limits.Budget(calls=8, window_s=1.0, block_s=0.4))
    rig = make_rig(FakeGraph(), sim.base_url, fb_prefix="", pause_cap_s=0.5, account_calls_per_s=20.0)
    accounts = [sim_account(a) for a in sim.accounts()]
    with structlog.testing.capture_logs() as logs:
        async with rig.client as client:
            bodies = await asyncio.gather(*(client.get(acc, acc.ig_user_id, {"fields": "id,username"},
                                                       endpoint="profile")
                                            for acc in accounts for _ in range(14)))
    assert len(bodies) == 28 and all(b["id"] in {a.ig_user_id for a in accounts} for b in bodies)
    # The budget pacing (usage headers) keeps the calls inside the budget; had one tripped a block, the
    # pause would hold the rest: nothing arrives during a block either way.
    assert sum(sim.stats.while_blocked.values()) == 0
    for acc in sim.accounts():
        assert acc.access_token not in repr(logs)


async def test_sim_injected_faults_all_recovered(start_simulator: StartSimulator) -> None:
    rates = faults_mod.FaultRates(http_5xx=0.08, code1=0.08, code2=0.08, drop=0.04, truncate=0.08)
    sim = await start_simulator(accounts=4, media_per_account=3, seed=11, faults=rates,
                                world_knobs={"invalid_token_fraction": 0.0})
    rig = make_rig(FakeGraph(), sim.base_url, fb_prefix="", max_attempts=8, base_delay_s=0.005)
    accounts = [sim_account(a) for a in sim.accounts()]
    with structlog.testing.capture_logs() as logs:
        async with rig.client as client:
            bodies = await asyncio.gather(*(client.get(acc, acc.ig_user_id, {"fields": "id,username"},
                                                       endpoint="profile")
                                            for acc in accounts for _ in range(25)))
    assert len(bodies) == 100
    assert sum(sim.stats.faults.values()) > 0
    assert rig.metrics.total(rig.metrics.graph_retries) >= sum(sim.stats.faults.values()) - \
        sim.stats.faults.get("drop", 0)  # aiohttp itself re-sends some dropped GETs
    for acc in sim.accounts():
        assert acc.access_token not in repr(logs)


async def test_sim_invalid_token_is_token_invalid(start_simulator: StartSimulator) -> None:
    sim = await start_simulator(accounts=3, media_per_account=1, seed=3,
                                world_knobs={"invalid_token_fraction": 1.0})
    rig = make_rig(FakeGraph(), sim.base_url, fb_prefix="")
    async with rig.client as client:
        for acc in sim.accounts():
            with pytest.raises(exceptions.TokenInvalid) as caught:
                await client.get(sim_account(acc), acc.ig_user_id, {"fields": "id"}, endpoint="profile")
            assert caught.value.code == 190 and caught.value.subcode == acc.token_error
            assert acc.access_token not in exception_text(caught.value)


async def test_connection_slots_go_to_openers_first_in_arrival_order() -> None:
    # Two connections, both taken; then leaves and openers (profiles, listings) queue for them.
    slots = graph._Slots(2)
    assert await slots.acquire(False) is False and await slots.acquire(True) is False  # free: no wait
    served: list[str] = []

    async def call(name: str, opener: bool) -> None:
        assert await slots.acquire(opener) is True  # every one of these had to wait
        served.append(name)

    names = [("leaf-1", False), ("opener-1", True), ("leaf-2", False), ("opener-2", True)]
    tasks = [asyncio.create_task(call(name, opener)) for name, opener in names]
    await asyncio.sleep(0)
    for _ in names:
        slots.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert served == ["opener-1", "opener-2", "leaf-1", "leaf-2"]


async def test_connection_slots_never_leak_when_waiters_are_cancelled() -> None:
    slots = graph._Slots(1)
    await slots.acquire(False)
    queued = asyncio.create_task(slots.acquire(False))  # cancelled while waiting
    handed = asyncio.create_task(slots.acquire(True))  # cancelled after the slot was handed to it
    after = asyncio.create_task(slots.acquire(False))
    await asyncio.sleep(0)
    queued.cancel()
    slots.release()  # goes to `handed` (an opener) ...
    handed.cancel()  # ... which is cancelled before it runs: the slot passes on to `after`
    await asyncio.sleep(0)
    assert queued.cancelled() and handed.cancelled()
    assert await after is True
    slots.release()
    assert await slots.acquire(False) is False  # exactly one slot, free again, nobody waiting
