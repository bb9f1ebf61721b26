"""The Graph API client: one aiohttp session for the process, URL building, paging, retries and throttling.

This is the one boundary where aiohttp and asyncio timeout errors become `exceptions.GraphTransportError`
(chained with `from`); every other failure is classified by `graph_errors.classify`. Access tokens travel
only in the `access_token` query parameter: they are registered with `redaction` on first use, error
messages never contain a query string, and a foreign exception whose text holds the token is replaced by
a redacted copy before it is chained.

Call path: `Throttle.acquire` (pauses, pacing, limiters, budgets) -> a connection slot (`_Slots`: tasks in
flight <= connector limit, limits.md; calls that open more work first) -> HTTP -> `Throttle.done` (usage
headers; frees the budget slot, whatever happened) -> decode or classify -> retry policy.

Stopping: with a `stop` event, every wait of a call that is not on the wire (the throttle's pauses, pacing
and limiters, the connection slot, a retry backoff) is raced against it. Once `stop` is set, those
waits are abandoned at once and the call raises `exceptions.ShutdownRequested`, as does any call (or retry)
that would start; only requests already on the wire run to their answer (the caller bounds them with
`shutdown_grace_s`).

Throttles pause their scope (`Throttled.scope`): the Graph host for an app throttle (4, 341), every
account whose calls use the token for a user throttle (17: the user behind the token, which with
Facebook Login often serves many accounts), else the account. For the user scope the client remembers,
per token, which accounts' calls use it (`_link`): as cheaply as the hot path allows (one dict lookup a
call, the token's first account as a plain string, a set only once a second account uses it), keyed by
the token in memory only, and rebuilt as calls go (an account whose token changed is linked to the new one
only).

Each request's URL is built here once, already percent-encoded, as a `yarl.URL.build(..., encoded=True)`
from parts cached per host: handing aiohttp a base URL plus a `params` dict made yarl parse and re-quote
every URL, ~30 µs a call (docs/benchmarks.md). The built URL holds the token; it is never logged, and error
messages name only the token-free `where` (scheme, host, path).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import random
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, cast

import aiohttp
import orjson
import structlog
import yarl

from collector import exceptions, graph_errors, metrics, models, ratelimit, redaction, retry, settings

# Endpoint kinds, the `endpoint` label of the graph_calls counter (a bounded set: never ids or URLs).
ENDPOINT_KINDS = ("profile", "media", "stories", "media_insights", "account_insights", "token", "discovery")

_log = structlog.get_logger("collector.graph")
_VERSION_HEADER = "facebook-api-version"
_USER_AGENT = "ig-insights-collector/0.1"
_SECRET_PARAMS = ("client_secret", "fb_exchange_token", "input_token")  # token-endpoint params to mask
# Characters sent as they are in a path or query value; anything else is percent-encoded. Ids, metric lists,
# epoch seconds, field lists and Meta's tokens are all made of these, so quoting is almost never needed.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.~,\-]*")
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_.~,\-/]*")


class _Target:
    """Where the requests to one base URL go (versioned or not): its URL parts, parsed once."""

    __slots__ = ("authority", "path_prefix", "scheme", "where_prefix")

    def __init__(self, base_url: str, version: str | None) -> None:
        base_url = base_url.rstrip("/")
        base = yarl.URL(base_url)
        self.scheme = base.scheme
        self.authority = base.raw_authority
        prefix = base.raw_path.rstrip("/")
        self.path_prefix = f"{prefix}/{version}/" if version else f"{prefix}/"
        self.where_prefix = f"{base_url}/{version}/" if version else f"{base_url}/"

    def url(self, path: str, query_string: str) -> yarl.URL:
        """The request URL of `path` with an already encoded query string (`encode_query`)."""
        path = path.lstrip("/")
        if not _PLAIN_PATH.fullmatch(path):
            path = urllib.parse.quote(path, safe="/")
        return yarl.URL.build(scheme=self.scheme, authority=self.authority, path=self.path_prefix + path,
                              query_string=query_string, encoded=True)


def encode_query(query: Mapping[str, str]) -> str:
    """`query` as an encoded query string (`a=1&b=x%20y`); plain values skip quote() altogether."""
    # A list, not a generator: join() builds a list from a generator anyway, at ~1 us more per call.
    return "&".join([f"{_quote(key)}={_quote(value)}" for key, value in query.items()])


@functools.lru_cache(maxsize=65536)
def _quote(text: str) -> str:
    """Cached: metric lists, windows, field lists and tokens repeat call after call (a str hash is cached
    in the str, so a hit costs less than the regex). Holds tokens in memory only, like the session does."""
    return text if _PLAIN_VALUE.fullmatch(text) else urllib.parse.quote(text, safe="")


# Calls whose answers make more work (an account's profile starts its jobs, a listing page its media's
# insights): when every connection is busy, they get the next free one before the calls that only fetch.
_OPENERS = frozenset({"profile", "media", "stories", "token", "discovery"})


class _Slots:
    """`limit` calls on the wire at once. A waiting call gets a slot in arrival order, except that calls that
    open more work (`_OPENERS`) go first: a pass starting 40 accounts at once queues ~500 calls for 200
    connections, and a listing behind 13 leaves of every other account held its 25 media's insights back
    ~0.35 s (docs/benchmarks.md, issue 9). Leaves are never starved for long: openers are a few percent of
    the calls, and each opener's answer brings leaves, not more openers.

    Cancellation-safe: a waiter cancelled while queued is skipped; one cancelled after it was handed a slot
    passes the slot on."""

    __slots__ = ("_free", "_openers", "_others")

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._openers: collections.deque[asyncio.Future[None]] = collections.deque()
        self._others: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, opener: bool) -> bool:
        """Take a slot, waiting for one if none is free; True when the caller waited (yielded)."""
        if self._free > 0 and not self._openers and not self._others:
            self._free -= 1
            return False
        turn = asyncio.get_running_loop().create_future()
        (self._openers if opener else self._others).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed a slot, then cancelled: pass it on
                self.release()
            raise
        return True

    def release(self) -> None:
        for queue in (self._openers, self._others):
            while queue:
                turn = queue.popleft()
                if not turn.done():  # skip the waiters cancelled while queued
                    turn.set_result(None)
                    return
        self._free += 1


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class GraphClient:
    """`async with GraphClient(...) as client:` — see docs/architecture.md, "Graph client contract"."""

    def __init__(self, settings: settings.GraphSettings, throttle: ratelimit.Throttle,
                 retry: retry.RetryPolicy, metrics: metrics.Metrics, *,
                 rand: Callable[[], float] = random.random, stop: asyncio.Event | None = None,
                 instance_id: str | None = None) -> None:
        self._settings = settings
        # The instance id rides in the User-Agent: Meta's and a proxy's logs (and the simulator) can tell
        # the daemons of one deployment apart.
        self._user_agent = f"{_USER_AGENT} (instance {instance_id})" if instance_id else _USER_AGENT
        self._throttle = throttle
        self._retry = retry
        self._metrics = metrics
        self._rand = rand
        self._state = _State.UNOPENED
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: _Slots | None = None
        # Token -> the accounts whose calls use it: the first one's id, a set once a second one does. A token
        # only calls for no account used (token endpoints, discovery) is not kept: every token refresh makes
        # one (the refreshed token), and each would stay for the process. Each token is registered for
        # redaction on first use: as its accounts' own, or without an owner. The token text is a key here
        # only (in memory, never logged) ...
        self._token_accounts: dict[str, str | set[str]] = {}
        # ... and each account's link back is the account's own `Secret` (its repr is `Secret('***')`).
        self._account_tokens: dict[str, models.Secret] = {}  # account id -> the token its calls use now
        self._version_logged: set[str] = set()
        self._ok_calls: dict[str, Any] = {}  # endpoint -> graph_calls child for 200 (hot path)
        self._targets: dict[tuple[str, bool], _Target] = {}  # (base URL, versioned) -> parsed parts
        self._latency = metrics.graph_request_seconds.observe  # bound once: called per request
        self._stop = stop
        self._waiting: set[asyncio.Task[Any]] = set()  # calls in a wait that a stop abandons
        self._abandoned: set[asyncio.Task[Any]] = set()  # calls cancelled by the stop (not by anyone else)
        self._stop_watch: asyncio.Task[None] | None = None

    @property
    def throttle(self) -> ratelimit.Throttle:
        """The pauses, pacing and usage budgets of this client's calls (read by progress and status)."""
        return self._throttle

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"GraphClient cannot be opened: it is {self._state.value}")
        limit = max(1, self._settings.max_concurrency)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit),
            timeout=aiohttp.ClientTimeout(total=self._settings.request_timeout_s),
            headers={"User-Agent": self._user_agent},
            raise_for_status=False,
        )
        # Never more tasks in flight than connections: beyond it, aiohttp's connection queue is unfair.
        self._in_flight = _Slots(limit)
        if self._stop is not None:
            self._stop_watch = asyncio.create_task(self._abandon_waits(self._stop), name="graph-stop-watch")
        self._state = _State.OPENED

    async def close(self) -> None:
        if self._stop_watch is not None:
            self._stop_watch.cancel()
            self._stop_watch = None
        if self._state is _State.OPENED and self._session is not None:
            await self._session.close()
        self._state = _State.CLOSED

    async def __aenter__(self) -> GraphClient:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- public calls ----------------------------------------------------------------------------------------

    def get(self, account: models.Account, path: str, params: Mapping[str, str] | None = None, *,
            endpoint: str) -> Coroutine[Any, Any, dict[str, Any]]:
        """GET `{base_url(login)}/{api_version}/{path}` for `account`; await it for the decoded JSON object.

        Raises the classified `GraphError` once the retry policy gives up. A plain method handing back the
        `_call` coroutine: no coroutine frame of its own to pass through at every resume (the hot path).
        """
        return self._call(login=account.login, token=account.access_token, account_id=account.ig_user_id,
                          path=path, params=params, endpoint=endpoint, versioned=True)

    async def get_with_token(self, login: models.Login, token: models.Secret | None, path: str,
                             params: Mapping[str, str] | None = None, *, endpoint: str = "token",
                             versioned: bool = True) -> dict[str, Any]:
        """GET for no particular account (token endpoints), limited by the app scope only.

        `refresh_access_token` is unversioned on graph.instagram.com:
        `get_with_token("instagram", token, "refresh_access_token", {"grant_type": "ig_refresh_token"},
        versioned=False)`. Token endpoints are all GETs, so there is no `post`. Secrets in `params`
        (`client_secret`, `fb_exchange_token`, `input_token`) are redacted by name in every message.
        """
        for name in _SECRET_PARAMS:
            value = (params or {}).get(name)
            if value:
                redaction.register_secret(value)
        return await self._call(login=login, token=token, account_id=None, path=path, params=params,
                                endpoint=endpoint, versioned=versioned)

    def pages(self, account: models.Account, path: str, params: Mapping[str, str] | None = None, *,
              endpoint: str) -> AsyncIterator[list[dict[str, Any]]]:
        """Every page of a cursor-paged edge, as the list of its `data` items.

        Follows `paging.next` until it is absent; an empty page that has `next` goes on; never stops by
        count. The next request is rebuilt rather than fetched as given: the query of `next` (cursor,
        limit, fields, until...) is sent to OUR base URL, version and path with OUR token. So the token
        goes only to the configured host (never to whatever host a `next` URL names), the pinned version
        stays pinned, and the token-bearing `next` URL is never handled as a URL we might log.
        """
        return self._pages(account.login, account.access_token, account.ig_user_id, path, params=params,
                           endpoint=endpoint)

    def token_pages(self, login: models.Login, token: models.Secret, path: str,
                    params: Mapping[str, str] | None = None, *,
                    endpoint: str = "discovery") -> AsyncIterator[list[dict[str, Any]]]:
        """`pages` for no particular account (`/me/accounts` of a user token), limited by the app scope."""
        return self._pages(login, token, None, path, params=params, endpoint=endpoint)

    async def _pages(self, login: models.Login, token: models.Secret, account_id: str | None, path: str, *,
                     params: Mapping[str, str] | None, endpoint: str) -> AsyncIterator[list[dict[str, Any]]]:
        query: dict[str, str] = dict(params or {})
        seen: set[tuple[tuple[str, str], ...]] = set()
        reduced = False
        while True:
            try:
                body = await self._call(login=login, token=token, account_id=account_id, path=path,
                                        params=query, endpoint=endpoint, versioned=True)
            except (exceptions.ServerError, exceptions.InvalidParameter) as exc:
                # "Please reduce the amount of data you're asking for, then retry your request" (code 1,
                # reference §7.1): the same request keeps failing; the same cursor with half the limit
                # may not. So for a code-100 refusal naming `limit`: its official maximum is unknown (§4).
                limit = query.get("limit", "")
                refused = _REDUCE_DATA if isinstance(exc, exceptions.ServerError) else _LIMIT_REFUSED
                if not refused.search(str(exc)) or not limit.isdigit() or int(limit) <= 1:
                    raise
                query["limit"] = str(int(limit) // 2)
                reduced = True
                _log.warning("graph_page_limit_reduced", account=account_id, path=path,
                             limit=query["limit"], endpoint=endpoint)
                continue
            data = body.get("data")
            if not isinstance(data, list):
                raise exceptions.GraphTransportError(
                    f"GET {self._url(login, path, versioned=True)}: page without a data list")
            yield [item for item in data if isinstance(item, dict)]
            next_query = _next_query(body)
            if next_query is None:
                return
            if reduced:  # Meta's `next` repeats the limit that was too much
                next_query.pop("limit", None)
            query = {**query, **next_query}
            fingerprint = tuple(sorted(query.items()))
            if fingerprint in seen:
                # Meta handing back the same cursor would loop forever; this is the one stop besides
                # the absence of `next`, and it fails loudly rather than pretending the walk completed.
                raise exceptions.GraphTransportError(
                    f"GET {self._url(login, path, versioned=True)}: paging.next repeats a page")
            seen.add(fingerprint)

    # -- the call loop ---------------------------------------------------------------------------------------

    async def _call(self, *, login: models.Login, token: models.Secret | None,  # noqa: PLR0915
                    account_id: str | None, path: str, params: Mapping[str, str] | None, endpoint: str,
                    versioned: bool) -> dict[str, Any]:
        """Throttle, send, classify, retry. The HTTP exchange and the stop-abandonable wait before it are
        inline rather than coroutines of their own: one coroutine frame less per call and per resume
        (docs/benchmarks.md, Fix 3), hence the statement count; the rarer outcomes are plain methods."""
        if self._state is not _State.OPENED:
            raise RuntimeError(f"GraphClient is {self._state.value}; use it inside `async with`")
        session, in_flight = self._session, self._in_flight
        assert session is not None and in_flight is not None  # guaranteed by the OPENED state
        host = self._settings.base_url(login)
        query: Mapping[str, str] = params or {}  # the token is added to the URL only (a caller's is replaced)
        where, url = self._request(host, versioned, path, query, token, account_id=account_id)
        transient_failures = throttle_failures = 0
        stop, waiting = self._stop, self._waiting
        task = asyncio.current_task()
        assert task is not None
        while True:
            if self._state is not _State.OPENED:  # closed while this call waited to (re)try
                raise RuntimeError(f"GraphClient is {self._state.value}; the call was abandoned")
            if stop is not None and stop.is_set():  # stopping: no call (or retry) leaves any more
                raise exceptions.ShutdownRequested()
            # Everything before the request goes on the wire is a wait that a stop abandons.
            waiting.add(task)
            try:
                sent_at = await self._throttle.acquire(host, account_id)
                try:  # from here the call holds a budget slot: given back if it does not leave
                    if await in_flight.acquire(endpoint in _OPENERS) and self._paused(host, account_id):
                        in_flight.release()  # a pause began while this call waited for a connection
                        self._throttle.unsent(host, account_id)
                        continue
                except BaseException:
                    self._throttle.unsent(host, account_id)
                    raise
            except asyncio.CancelledError:
                self._raise_if_abandoned(task)
                raise
            finally:
                waiting.discard(task)
            error: exceptions.GraphError | None = None
            answer: Mapping[str, str] | None = None  # the answer's headers; None: no answer (its budget slot)
            try:
                started = time.perf_counter()
                try:
                    async with session.get(url) as response:
                        raw = await response.read()
                        status = response.status
                        headers = answer = response.headers
                except (aiohttp.ClientError, TimeoutError) as exc:
                    error = self._transport_failure(where, endpoint, exc)
                finally:
                    self._latency(time.perf_counter() - started)
            finally:
                in_flight.release()
                regain_s = self._throttle.done(host, account_id, answer, sent_at)
            if error is None:
                if versioned:
                    self._check_version(host, headers.get(_VERSION_HEADER))
                decoded: Any = None
                if 200 <= status < 300:
                    try:
                        decoded = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        decoded = _UNREADABLE
                    if isinstance(decoded, dict) and not isinstance(decoded.get("error"), dict):
                        (self._ok_calls.get(endpoint) or self._ok_child(endpoint)).inc()
                        return decoded
                error = self._failure(where, endpoint, query=query, status=status, raw=raw, decoded=decoded,
                                      headers=headers, regain_s=regain_s)
            if self._state is not _State.OPENED:  # closed during the call: no retry
                raise error
            if isinstance(error, exceptions.Throttled):
                throttle_failures += 1
                attempt = throttle_failures
            elif retry.is_transient(error):
                transient_failures += 1
                attempt = transient_failures
            else:
                raise error
            await self._wait_before_retry(error, attempt, host=host, account_id=account_id, token=token,
                                          endpoint=endpoint, path=path, query=query)

    def _request(self, host: str, versioned: bool, path: str, query: Mapping[str, str],
                 token: models.Secret | None, *, account_id: str | None) -> tuple[str, yarl.URL]:
        """(where, url): the token-free name of the request, for messages and logs, and its URL with the
        token last in the query. The token is registered for redaction on first use, and linked to
        `account_id` (`_link`)."""
        target = self._targets.get((host, versioned)) or self._target(host, versioned)
        where = target.where_prefix + path.lstrip("/")
        if token is None or not (secret := token.reveal()):
            return where, target.url(path, encode_query(query))
        # The hot path: the token is known and this account is its only one. Anything else (a new token, a
        # new account of it, a shared token, a call for no account) is `_link`'s.
        linked = self._token_accounts.get(secret, _UNSEEN)
        if linked != account_id:
            self._link(token, account_id, linked)
        if "access_token" in query:  # ours replaces a caller's, in its place
            return where, target.url(path, encode_query({**query, "access_token": secret}))
        encoded = encode_query(query)
        tail = f"access_token={_quote(secret)}"
        return where, target.url(path, f"{encoded}&{tail}" if encoded else tail)

    def _link(self, token: models.Secret, account_id: str | None, linked: object) -> None:
        """Remember that `account_id`'s calls use `token` (`linked`: what is remembered for it so far,
        `_UNSEEN` for a token no account's calls use). An account is linked to the token of its latest call
        only: when its token changes (a refresh, a reload, a discovery), its link to the old token goes, and a
        token no account uses any more is forgotten. Accounts removed from the config keep their last link (as
        they keep their `Throttle` state): the links stay bounded by the accounts the process has known."""
        accounts, secret = self._token_accounts, token.reveal()
        if account_id is None:
            # A call for no account: nothing to link. A token no account's calls used is not remembered
            # either (a refresh's token may never be: another instance collects the account, or the account
            # is refreshed again first), so such calls come through here each time; they are few.
            if linked is _UNSEEN and not redaction.is_registered(secret):
                redaction.register_secret(secret)  # a token of no account's calls: for the process
            return
        if linked is _UNSEEN:
            accounts[secret] = account_id
        elif isinstance(linked, set):
            if account_id in linked:
                return
            linked.add(account_id)
        else:  # a second account uses this token: a set from now on
            accounts[secret] = {cast(str, linked), account_id}
        previous = self._account_tokens.get(account_id)
        self._account_tokens[account_id] = token
        if previous != token:
            # The account's own token: redaction keeps each account's latest two, so a daemon's refreshed
            # tokens do not pile up (a configured one stays registered for the process anyway).
            redaction.register_secret(secret, owner=account_id)
            if previous is not None:
                self._unlink(previous.reveal(), account_id)

    def _unlink(self, secret: str, account_id: str) -> None:
        """`account_id`'s calls no longer use the token `secret`."""
        linked = self._token_accounts.get(secret)
        if isinstance(linked, set):
            linked.discard(account_id)
            if len(linked) == 1:
                self._token_accounts[secret] = next(iter(linked))
        elif linked == account_id:
            del self._token_accounts[secret]  # registered for redaction still; linked again if used again

    def _accounts_of(self, token: models.Secret | None, account_id: str | None) -> set[str]:
        """The accounts whose calls use `token` (a user throttle's scope), with `account_id` in any case."""
        linked = self._token_accounts.get(token.reveal()) if token else None
        accounts = set(linked) if isinstance(linked, set) else {linked} if linked is not None else set()
        if account_id is not None:
            accounts.add(account_id)
        return accounts

    def _ok_child(self, endpoint: str) -> Any:
        """The graph_calls child for a 200 of `endpoint`, looked up once (the hot path reuses it)."""
        child = self._ok_calls[endpoint] = self._metrics.graph_calls.labels(endpoint=endpoint, status="200",
                                                                            code="")
        return child

    async def _wait_before_retry(self, error: exceptions.GraphError, attempt: int, *, host: str,
                                 account_id: str | None, token: models.Secret | None, endpoint: str,
                                 path: str, query: Mapping[str, str]) -> None:
        """Wait (or pause the scope) before retry `attempt` of a throttled or transient failure; raises
        `error` when the retry policy gives up."""
        wait_s = self._retry.decide(error, attempt, self._rand())
        if isinstance(error, exceptions.Throttled):
            scope = error.scope
            self._metrics.throttles.labels(scope=scope, code=str(error.code)).inc()
            if wait_s is None:
                raise error
            # The pause, not a sleep here, holds this call: every call of the scope waits with it.
            accounts_paused: int | None = None  # None: the app scope (every account of the host)
            if scope == "app":
                self._throttle.pause("app", host, wait_s)
            elif scope == "user":  # every account whose calls use this token, until the same moment
                accounts_paused = self._throttle.pause_accounts(self._accounts_of(token, account_id), wait_s)
            elif account_id is not None:
                accounts_paused = self._throttle.pause_accounts((account_id,), wait_s)
            else:
                accounts_paused = 0
            self._metrics.graph_retries.labels(reason="throttled").inc()
            _log.warning("graph_throttled", account=account_id, scope=scope, code=error.code,
                         wait_s=round(wait_s, 3), attempt=attempt, endpoint=endpoint,
                         accounts_paused=accounts_paused, regain_s=error.regain_s, path=path,
                         params=_loggable(query))
            if scope != "app" and account_id is None:  # a call for no account: no pause holds it
                await self._sleep(wait_s)
            return
        if wait_s is None:
            raise error
        reason = "transport" if isinstance(error, exceptions.GraphTransportError) else "server"
        self._metrics.graph_retries.labels(reason=reason).inc()
        _log.info("graph_retry", account=account_id, scope="call", code=error.code,
                  http_status=error.http_status, wait_s=round(wait_s, 3), attempt=attempt,
                  endpoint=endpoint, error=error.describe(), path=path, params=_loggable(query))
        await self._sleep(wait_s)

    def _paused(self, host: str, account_id: str | None) -> bool:
        throttle = self._throttle
        return throttle.paused_for_s("app", host) > 0 or (
            account_id is not None and throttle.paused_for_s("account", account_id) > 0)

    # -- stopping --------------------------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """A backoff sleep that a stop abandons (raising ShutdownRequested)."""
        if self._stop is not None and self._stop.is_set():
            raise exceptions.ShutdownRequested()
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self._raise_if_abandoned(task)
            raise
        finally:
            self._waiting.discard(task)

    async def _abandon_waits(self, stop: asyncio.Event) -> None:
        """Once `stop` is set, cancel every call that is waiting (not on the wire); each raises
        ShutdownRequested from its wait (`_raise_if_abandoned`)."""
        await stop.wait()
        waiting = list(self._waiting)
        if waiting:
            _log.info("graph_waits_abandoned", calls=len(waiting))
        for task in waiting:
            self._abandoned.add(task)
            task.cancel()

    def _raise_if_abandoned(self, task: asyncio.Task[Any]) -> None:
        """In a wait's CancelledError handler: ShutdownRequested when the stop cancelled `task`, and nobody
        else did too (then the CancelledError goes on)."""
        if task in self._abandoned:
            self._abandoned.discard(task)
            if task.uncancel() == 0:
                raise exceptions.ShutdownRequested() from None

    def _transport_failure(self, where: str, endpoint: str, exc: BaseException) -> exceptions.GraphError:
        """No HTTP answer (connection, timeout): a token-free GraphTransportError, its cause scrubbed."""
        failure = exceptions.GraphTransportError(f"GET {where}: {_describe(exc)}")
        failure.__cause__ = _scrubbed(exc)
        self._count(endpoint, "transport", None)
        return failure

    def _failure(self, where: str, endpoint: str, *, query: Mapping[str, str], status: int, raw: bytes,
                 decoded: Any, headers: Mapping[str, str], regain_s: float | None) -> exceptions.GraphError:
        """The error of an answer that is not a usable JSON object (`decoded` is None outside 2xx, and
        `_UNREADABLE` when a 2xx body did not parse)."""
        if decoded is _UNREADABLE:
            self._count(endpoint, str(status), None)
            return exceptions.GraphTransportError(
                f"GET {where}: HTTP {status} with an unreadable body (not JSON, or truncated)",
                http_status=status)
        if 200 <= status < 300 and not isinstance(decoded, dict):
            self._count(endpoint, str(status), None)
            return exceptions.GraphTransportError(
                f"GET {where}: HTTP {status} with a JSON {type(decoded).__name__}, not an object",
                http_status=status)
        metric_param = query.get("metric")  # split only here: the metrics a refusal may name
        error = graph_errors.classify(status, decoded if decoded is not None else raw, regain_s=regain_s,
                                      requested_metrics=metric_param.split(",") if metric_param else None,
                                      www_authenticate=headers.get("WWW-Authenticate"))
        self._count(endpoint, str(status), error.code)
        return error

    # -- helpers ---------------------------------------------------------------------------------------------

    def _target(self, host: str, versioned: bool) -> _Target:
        version = self._settings.api_version if versioned else None
        target = self._targets[(host, versioned)] = _Target(host, version)
        return target

    def _url(self, login: models.Login, path: str, *, versioned: bool) -> str:
        base = self._settings.base_url(login).rstrip("/")
        path = path.lstrip("/")
        return f"{base}/{self._settings.api_version}/{path}" if versioned else f"{base}/{path}"

    def _count(self, endpoint: str, status: str, code: int | None) -> None:
        self._metrics.graph_calls.labels(endpoint=endpoint, status=status,
                                         code="" if code is None else str(code)).inc()

    def _check_version(self, host: str, served: str | None) -> None:
        if served and served != self._settings.api_version and host not in self._version_logged:
            self._version_logged.add(host)
            _log.warning("graph_version_mismatch", host=host, requested=self._settings.api_version,
                         served=served)


def client_for(config: settings.Config, counters: metrics.Metrics, *,
               stop: asyncio.Event | None = None) -> GraphClient:
    """The Graph client of a config: its throttle and retry policy from [rate_limit] and [retry]; `stop`
    abandons its waits (see the module docstring)."""
    throttle = ratelimit.Throttle(config.rate_limit, counters)
    policy = retry.RetryPolicy(config.retry, pause_cap_s=config.rate_limit.pause_cap_s)
    return GraphClient(config.graph, throttle, policy, counters, stop=stop)


_UNREADABLE = object()  # a 2xx body that is not JSON (stands in for the decoded value)
_UNSEEN = object()  # a token never used before (`GraphClient._token_accounts` has no entry for it)
_REDUCE_DATA = re.compile(r"reduce the amount of data", re.IGNORECASE)
_LIMIT_REFUSED = re.compile(r"\blimit\b", re.IGNORECASE)


def _next_query(body: Mapping[str, Any]) -> dict[str, str] | None:
    """The query of `paging.next` without its access_token, or None when there is no next page."""
    paging = body.get("paging")
    next_url = paging.get("next") if isinstance(paging, dict) else None
    if not isinstance(next_url, str) or not next_url:
        return None
    try:
        parsed = yarl.URL(next_url)
    except (ValueError, TypeError) as exc:
        raise exceptions.GraphTransportError("paging.next is not a URL") from _scrubbed(exc)
    return {key: value for key, value in parsed.query.items() if key != "access_token"}


def _loggable(query: Mapping[str, str]) -> dict[str, str]:
    """The query of a call without its token and token-endpoint secrets: which request a retry event is
    about (metric list, window, cursor), so an operator can tell one retried call from another."""
    return {k: v for k, v in query.items() if k != "access_token" and k not in _SECRET_PARAMS}


def _describe(exc: BaseException) -> str:
    """`ExceptionType: message`, token-free (asyncio timeouts have an empty message)."""
    text = redaction.redact(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _scrubbed(exc: BaseException) -> BaseException:
    """`exc` itself when its text holds no secret, else a stand-in carrying the redacted text.

    aiohttp puts the request URL (with its access_token) into some messages (ClientResponseError,
    InvalidURL); chaining those as they are would print the token in every traceback.
    """
    text, shown = str(exc), repr(exc)
    if redaction.redact(text) == text and redaction.redact(shown) == shown:
        return exc
    return aiohttp.ClientError(_describe(exc))
