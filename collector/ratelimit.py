"""Budget pacing from Meta's usage headers, optional rate ceilings, and pauses of throttled scopes.

Two kinds of scope, each with its own state:
- `app`: one per Graph host (the app's platform budget is app-wide; each host has its own limiter);
- `account`: one per Instagram account (Meta's Instagram BUC budget is per app + account pair).
A user throttle (code 17: the user behind a token) has no state of its own: the Graph client pauses every
account whose calls use that token (`pause_accounts`), each until the same moment.

A call passes `Throttle.slot(host, account_id)` before it leaves the process. The slot
1. waits while the app scope or the account is paused (Meta: "stop calling, every call extends the block"),
   waking at the pause end plus a small random spread, so that thousands of tasks paused together do not
   all fire in the same millisecond;
2. acquires the account limiter, then waits for the pacing slot of a scope that usage headers slowed down
   (see `pacing_fraction`; reserved after the limiter, so at the rate in force when the call leaves);
3. acquires the app limiter (last: a task that still has to wait for its account must not hold an app
   token meanwhile), and re-checks the pauses, since one may have begun while it waited;
4. enters the account's, then the app's budget (`_BudgetGate` around a `budget.ScopeBudget`: the calls in
   flight never exceed what the usage percentages say is left, minus a margin). From there the call counts
   as in flight until `Throttle.done`, which the Graph client calls whatever happened (answer, transport
   error, cancellation): a slot can never leak.

The limiters of steps 2-3 are optional hard ceilings, off by default (rate 0): the budgets of step 4 pace
the calls.

Bucket sizes are chosen on purpose (limits.md): an `AsyncLimiter(n, t)` lets a full bucket through at
once. The account bucket is `account_burst` (Meta counts calls over hours; a few back-to-back calls are
harmless); the app bucket holds 0.1 s of calls, so the first second of a pass does not run at twice the rate.

Slowing down is not done by resizing the limiters (aiolimiter has no public way to change a rate); a slowed
scope instead hands out reservations spaced `1 / (rate * fraction)` apart (a virtual-time scheduler: each
waiter sleeps once, in arrival order, no polling). An unslowed scope skips that step entirely, so the hot
path is a few attribute reads plus the aiolimiter acquires (2.5-5 µs per slot measured, when nothing waits).
A scope whose ceiling is disabled (rate 0) has no rate to slow: usage headers can only pause it.

aiolimiter stays the rate source (its bucket level decides), but callers never wait inside it: a FIFO
`_Gate` per limiter lets only the head of the queue look for a token (see `_Gate` for why: aiolimiter
alone is unfair and re-wakes its waiters under contention, and spins on uvloop).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import random
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import orjson

from collector import budget, metrics, settings

if TYPE_CHECKING:
    # Imported where a hard ceiling is made (`_limiter`): the shipped defaults have none, and importing
    # aiolimiter costs ~15 ms of a pass's start (it reads its own version through importlib.metadata).
    import aiolimiter

Scope = Literal["app", "account"]

APP_USAGE_HEADER = "X-App-Usage"
BUC_USAGE_HEADER = "X-Business-Use-Case-Usage"
# The rolling windows Meta documents (reference §6.1): the platform (app) budget per hour, the Instagram BUC
# budget per app + account per 24 h. The budget pacing spends a nearly spent scope no slower than their
# refill rate while it has not measured the real window.
APP_WINDOW_S = 3600.0
BUC_WINDOW_S = 86400.0

_APP_BUCKET_S = 0.1  # the app limiter's bucket holds this many seconds of calls
_WAKE_SPREAD_FRACTION = 0.1  # waiters wake within 10 % of the pause length after it ends ...
_WAKE_SPREAD_MAX_S = 2.0  # ... and at most this late
_MIN_SLEEP_S = 0.001  # uvloop runs shorter timers at once (whole milliseconds): never sleep less
_USAGE_FIELDS = ("call_count", "total_cputime", "total_time")
_NO_HEADERS: Mapping[str, str] = {}


def pacing_fraction(usage_pct: float, slow_down_at_pct: float, min_rate_fraction: float) -> float:
    """The share of its ceiling a scope may use at `usage_pct` percent of Meta's budget.

    1.0 up to `slow_down_at_pct`, then falling linearly to `min_rate_fraction` at 100 % (and beyond).
    """
    if usage_pct <= slow_down_at_pct:
        return 1.0
    if usage_pct >= 100.0 or slow_down_at_pct >= 100.0:
        return min_rate_fraction
    progress = (usage_pct - slow_down_at_pct) / (100.0 - slow_down_at_pct)
    return 1.0 - progress * (1.0 - min_rate_fraction)


# Meta repeats the same usage header value call after call (percentages move slowly): parsing is cached
# by the header text, which cut observe() from ~17 µs to ~2 µs per call (docs/benchmarks.md).
_HEADER_CACHE_SIZE = 16384


@functools.lru_cache(maxsize=_HEADER_CACHE_SIZE)
def parse_app_usage(value: str | None) -> float | None:
    """The highest percentage in an `X-App-Usage` header (`{"call_count":28,"total_time":25,...}`)."""
    if not value:
        return None
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return _max_pct(decoded) if isinstance(decoded, dict) else None


@functools.lru_cache(maxsize=_HEADER_CACHE_SIZE)
def parse_buc_usage(value: str | None) -> tuple[float | None, float | None]:
    """(highest percentage, longest regain time in SECONDS) over every object and type of an
    `X-Business-Use-Case-Usage` header.

    The header is keyed by object id (business id and IG account id may both be listed for the same
    budget), each holding a list of `{"type", "call_count", "total_cputime", "total_time",
    "estimated_time_to_regain_access"}` with percentages and the regain time in MINUTES. Garbage is
    ignored: a header we cannot read must never fail a call that Meta answered.
    """
    if not value:
        return None, None
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(decoded, dict):
        return None, None
    pct: float | None = None
    regain_min: float | None = None
    for entries in decoded.values():
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, dict):
                continue
            entry_pct = _max_pct(entry)
            if entry_pct is not None:
                pct = entry_pct if pct is None else max(pct, entry_pct)
            minutes = _number(entry.get("estimated_time_to_regain_access"))
            if minutes is not None:
                regain_min = minutes if regain_min is None else max(regain_min, minutes)
    return pct, (None if regain_min is None else regain_min * 60.0)


def _max_pct(entry: dict[str, object]) -> float | None:
    values = [v for v in (_number(entry.get(name)) for name in _USAGE_FIELDS) if v is not None]
    return max(values) if values else None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if number >= 0 else None
    return None


class _Gate:
    """FIFO admission through one `AsyncLimiter`: only the task at the head of the queue looks for a token.

    aiolimiter alone is costly and unfair under contention (docs/benchmarks.md, limits.md): it wakes a
    waiter with no token reserved for it, a task arriving meanwhile takes the token, and the woken one
    re-queues at the back; with hundreds of waiters each token cost ~200 µs of wake-ups and some waiters
    starved for seconds. And on uvloop its timer spins: uvloop runs a delay under 0.5 ms at once (it
    rounds to whole milliseconds) while the next token is often that close.

    Here the others wait on a future each and are handed the gate in arrival order (the gate stays taken
    across a hand-over, so no newcomer slips in between). The head takes a token when the limiter has one
    (`acquire()` then does not suspend) and otherwise sleeps one token interval, at least 1 ms: with the
    level at most the bucket size, one interval always frees a token, and while callers are queued the
    bucket keeps draining, so the steady rate stays aiolimiter's (a rate above 1,000/s is served a few
    tokens per wake-up).
    """

    __slots__ = ("_busy", "_interval_s", "_limiter", "_queue")

    def __init__(self, limiter: aiolimiter.AsyncLimiter) -> None:
        self._limiter = limiter
        self._interval_s = max(_MIN_SLEEP_S, limiter.time_period / limiter.max_rate)
        self._busy = False
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        limiter = self._limiter
        if not self._busy:
            if limiter.has_capacity():  # the hot path: nobody queued, a token free
                await limiter.acquire()
                return
            self._busy = True
        else:
            turn = asyncio.get_running_loop().create_future()
            self._queue.append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                # Cancelled after being handed the gate but before running: pass it on, or it leaks.
                if turn.done() and not turn.cancelled():
                    self._hand_over()
                raise
        try:
            # Polling on purpose (not an Event): nothing signals a token; it appears as time passes.
            while not limiter.has_capacity():  # noqa: ASYNC110
                await asyncio.sleep(self._interval_s)
            await limiter.acquire()
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        queue = self._queue
        while queue:
            turn = queue.popleft()
            if not turn.done():  # skip the waiters cancelled while queued
                turn.set_result(None)
                return
        self._busy = False


class _BudgetGate:
    """FIFO admission of one scope's calls by its `budget.ScopeBudget`: a call leaves when the budget says so;
    the others wait on a future each, in arrival order, woken when an answer or a timer changes the picture.

    Cancellation-safe: a waiter cancelled while queued is skipped; one cancelled after it was admitted (its
    future resolved, its slot counted in flight) gives the slot back and passes the turn on.
    """

    __slots__ = ("_clock", "_queue", "_timer", "budget")

    def __init__(self, scope_budget: budget.ScopeBudget, clock: Callable[[], float]) -> None:
        self.budget = scope_budget
        self._clock = clock
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    async def enter(self) -> bool:
        """Wait until one more call of this scope may leave; it is then counted in flight. True when the
        caller had to wait (it yielded to the loop)."""
        if not self._queue:
            now = self._clock()
            if self.budget.delay_s(now) == 0.0:  # the hot path: nobody queued, budget left
                self.budget.sent(now)
                return False
        turn = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        self.pump()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # admitted, then cancelled before it left
                self.budget.unsent()
                self.pump()
            raise
        return True

    def leave(self) -> None:
        """An admitted call did not leave after all (a pause began while it waited for another scope)."""
        self.budget.unsent()
        self.pump()

    def answered(self, pct: int | None, sent_at: float | None) -> None:
        self.budget.answered(pct, self._clock(), sent_at)
        self.pump()

    def pump(self) -> None:
        """Admit queued callers while the budget allows; otherwise wake up when it may."""
        queue = self._queue
        while queue:
            turn = queue[0]
            if turn.done():  # cancelled while queued
                queue.popleft()
                continue
            now = self._clock()
            delay_s = self.budget.delay_s(now)
            if delay_s == 0.0:
                queue.popleft()
                self.budget.sent(now)
                turn.set_result(None)
                continue
            if self._timer is not None:  # (an answer decides now, or a new time does)
                self._timer.cancel()
                self._timer = None
            if delay_s is not None:
                self._timer = asyncio.get_running_loop().call_later(max(_MIN_SLEEP_S, delay_s), self._wake)
            return

    @property
    def holding(self) -> bool:
        """Whether the budget holds queued calls back until a time (the last calls spread out, or the window
        awaited), as opposed to waiting for answers or for nothing."""
        return self._timer is not None and any(not turn.done() for turn in self._queue)

    def _wake(self) -> None:
        self._timer = None
        self.pump()


class _ScopeState:
    """Limiter, pause, pacing and budget of one app host or one account."""

    __slots__ = ("budget", "fraction", "gate", "next_slot_at", "paused_until", "rate_per_s", "usage_pct")

    def __init__(self, limiter: aiolimiter.AsyncLimiter | None, rate_per_s: float,
                 budget_gate: _BudgetGate) -> None:
        self.budget = budget_gate
        self.gate = None if limiter is None else _Gate(limiter)
        self.rate_per_s = rate_per_s
        self.paused_until = 0.0
        self.fraction = 1.0
        self.next_slot_at = 0.0
        self.usage_pct: float | None = None  # the last usage Meta reported for this scope

    def reserve(self, now: float) -> float:
        """Seconds until this caller's pacing slot (0 when the scope is not slowed)."""
        if self.fraction >= 1.0 or self.rate_per_s <= 0:
            return 0.0
        start = max(self.next_slot_at, now)
        self.next_slot_at = start + 1.0 / (self.rate_per_s * self.fraction)
        return start - now


class _Slot:
    __slots__ = ("_account_id", "_host", "_throttle")

    def __init__(self, throttle: Throttle, host: str, account_id: str | None) -> None:
        self._throttle = throttle
        self._host = host
        self._account_id = account_id

    async def __aenter__(self) -> None:
        await self._throttle.acquire(self._host, self._account_id)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._throttle.done(self._host, self._account_id, None)


class Throttle:
    """Rate limits and pauses for every Graph call of the process (one instance per process)."""

    def __init__(self, settings: settings.RateLimitSettings, metrics: metrics.Metrics,
                 clock: Callable[[], float] = time.monotonic, *,
                 rand: Callable[[], float] = random.random) -> None:
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._rand = rand
        self._apps: dict[str, _ScopeState] = {}
        self._accounts: dict[str, _ScopeState] = {}
        # Counted when scraped: no timer has to notice a pause ending.
        metrics.paused_scopes.labels(scope="app").set_function(lambda: float(self.paused_count("app")))
        metrics.paused_scopes.labels(scope="account").set_function(
            lambda: float(self.paused_count("account")))
        metrics.budget_held_scopes.labels(scope="app").set_function(lambda: float(self.held_count("app")))
        metrics.budget_held_scopes.labels(scope="account").set_function(
            lambda: float(self.held_count("account")))

    # -- the call path -----------------------------------------------------------------------------------

    def slot(self, host: str, account_id: str | None) -> _Slot:
        """`async with throttle.slot(host, account_id):` before a call leaves the process.

        `account_id` None: a call made for no account (token endpoints), limited by the app scope only.
        """
        return _Slot(self, host, account_id)

    async def acquire(self, host: str, account_id: str | None) -> float:
        """Wait until a call may leave; returns the clock time it leaves at (for `done`)."""
        app = self._apps.get(host) or self._new_app(host)
        account = None if account_id is None else (
            self._accounts.get(account_id) or self._new_account(account_id))
        while True:
            now = self._clock()
            paused_until = app.paused_until if account is None else max(app.paused_until,
                                                                        account.paused_until)
            if paused_until > now:
                wait_s = paused_until - now
                spread_s = self._rand() * min(_WAKE_SPREAD_MAX_S, _WAKE_SPREAD_FRACTION * wait_s)
                await asyncio.sleep(wait_s + spread_s)
                continue
            # The account limiter before the pacing slot: the slot is then reserved at the rate in force
            # when the call is about to leave. Reserved first, a call that queued behind the limiter while
            # the usage headers climbed would still go at the faster rate of when it started waiting
            # (measured: up to `media_concurrency_per_account` calls past the slow-down, and a block).
            waited = False
            if account is not None and account.gate is not None:
                await account.gate.acquire()
                now = self._clock()
                waited = True
            pacing_s = app.reserve(now)
            if account is not None:
                pacing_s = max(pacing_s, account.reserve(now))
            if pacing_s > 0:
                await asyncio.sleep(pacing_s)
                waited = True
            if app.gate is not None:
                await app.gate.acquire()
                waited = True
            if waited:  # a pause may have begun while this task waited for pacing or limiters
                now = self._clock()
                if app.paused_until > now or (account is not None and account.paused_until > now):
                    continue
            # The budgets last: a slot counts as in flight from here until `done`.
            waited = False
            if account is not None:
                waited = await account.budget.enter()
            try:
                waited = await app.budget.enter() or waited
            except BaseException:
                if account is not None:
                    account.budget.leave()
                raise
            if not waited:  # nothing yielded to the loop since the pause check: no pause can have begun
                return now
            now = self._clock()
            if app.paused_until <= now and (account is None or account.paused_until <= now):
                return now
            app.budget.leave()  # paused meanwhile: give the slots back and wait for the pause
            if account is not None:
                account.budget.leave()

    # -- adaptation --------------------------------------------------------------------------------------

    def observe(self, host: str, account_id: str | None, headers: Mapping[str, str]) -> float | None:
        """Adapt to the usage headers of one response; returns Meta's regain estimate in seconds, if any.

        `X-App-Usage` paces the app scope of `host`; `X-Business-Use-Case-Usage` paces the account the call
        was made for (whatever ids the header is keyed by: they describe that call's budget) and pauses it
        when Meta gives a positive time to regain access. Both feed the scopes' budget estimates.
        """
        return self._observe(host, account_id, headers, finished=False)

    def done(self, host: str, account_id: str | None, headers: Mapping[str, str] | None,
             sent_at: float | None = None) -> float | None:
        """The call `acquire` let through (at `sent_at`, what it returned) is over: answered with `headers`,
        or None when no answer came (transport error, cancelled). Frees its in-flight budget slots; otherwise
        as `observe`."""
        return self._observe(host, account_id, _NO_HEADERS if headers is None else headers, finished=True,
                             sent_at=sent_at)

    def _observe(self, host: str, account_id: str | None, headers: Mapping[str, str], *,
                 finished: bool, sent_at: float | None = None) -> float | None:
        now = self._clock()
        app_value = headers.get(APP_USAGE_HEADER)
        app_pct = None if app_value is None else parse_app_usage(app_value)
        app = self._apps.get(host) or self._new_app(host)
        if app_pct is not None:
            app.fraction = self._fraction(app_pct)
            app.usage_pct = app_pct
        if finished:
            app.budget.answered(None if app_pct is None else int(app_pct), sent_at)
        elif app_pct is not None:
            app.budget.budget.report(int(app_pct), now)
        if account_id is None:
            return None
        buc_value = headers.get(BUC_USAGE_HEADER)
        buc_pct, regain_s = (None, None) if buc_value is None else parse_buc_usage(buc_value)
        if buc_pct is None and not finished:
            return None
        account = self._accounts.get(account_id) or self._new_account(account_id)
        if buc_pct is not None:
            account.fraction = self._fraction(buc_pct)
            account.usage_pct = buc_pct
        if finished:
            account.budget.answered(None if buc_pct is None else int(buc_pct), sent_at)
        elif buc_pct is not None:
            account.budget.budget.report(int(buc_pct), now)
        if regain_s is not None and regain_s > 0:
            self.pause("account", account_id, regain_s)
            return regain_s
        return None

    def pause(self, scope: Scope, key: str, seconds: float) -> float:
        """Pause `scope` `key` (a host for `app`, an account id for `account`) for `seconds`, capped by
        `pause_cap_s`. Extends a running pause, never shortens it. Returns the pause end (clock time)."""
        now = self._clock()
        return self._pause(scope, self._state(scope, key), now, now + self._capped(seconds))

    def pause_accounts(self, account_ids: Iterable[str], seconds: float) -> int:
        """Pause every account of `account_ids` until the same moment, `seconds` (capped) from now: a user
        throttle (code 17) limits every account whose calls use the user's token. Returns how many."""
        now = self._clock()
        until = now + self._capped(seconds)
        paused = 0
        for account_id in account_ids:
            self._pause("account", self._state("account", account_id), now, until)
            paused += 1
        return paused

    def _capped(self, seconds: float) -> float:
        return min(max(seconds, 0.0), self._settings.pause_cap_s)

    def _pause(self, scope: Scope, state: _ScopeState, now: float, until: float) -> float:
        if until > state.paused_until:
            if state.paused_until <= now:
                self._metrics.pauses.labels(scope=scope).inc()
            state.paused_until = until
        return state.paused_until

    # -- inspection (tests, /metrics, logs) ----------------------------------------------------------------

    def unsent(self, host: str, account_id: str | None) -> None:
        """The call `acquire` let through did not leave after all (stopped, or a pause began while it waited
        for a connection): its budget slots go back, uncounted."""
        app = self._apps.get(host)
        if app is not None:
            app.budget.leave()
        account = None if account_id is None else self._accounts.get(account_id)
        if account is not None:
            account.budget.leave()

    def paused_for_s(self, scope: Scope, key: str) -> float:
        """Seconds left in the pause of `scope` `key` (0 when not paused)."""
        states = self._apps if scope == "app" else self._accounts
        state = states.get(key)
        return 0.0 if state is None else max(0.0, state.paused_until - self._clock())

    def rate_fraction(self, scope: Scope, key: str) -> float:
        """The share of its ceiling `scope` `key` currently runs at (1.0 when not slowed)."""
        states = self._apps if scope == "app" else self._accounts
        state = states.get(key)
        return 1.0 if state is None else state.fraction

    def usage(self, scope: Scope) -> dict[str, float]:
        """The last usage percent Meta reported, by key (`app`: host, `account`: account id), for the
        scopes that reported one (the web UI's usage panel)."""
        states = self._apps if scope == "app" else self._accounts
        return {key: state.usage_pct for key, state in states.items() if state.usage_pct is not None}

    def paused_count(self, scope: Scope) -> int:
        now = self._clock()
        states = self._apps if scope == "app" else self._accounts
        return sum(1 for state in states.values() if state.paused_until > now)

    def held_count(self, scope: Scope) -> int:
        """Scopes whose usage budget holds calls back now: why a pass slows down with nothing throttled."""
        states = self._apps if scope == "app" else self._accounts
        return sum(1 for state in states.values() if state.budget.holding)

    # -- internals -----------------------------------------------------------------------------------------

    def _fraction(self, usage_pct: float) -> float:
        return pacing_fraction(usage_pct, self._settings.slow_down_at_pct, self._settings.min_rate_fraction)

    def _state(self, scope: Scope, key: str) -> _ScopeState:
        if scope == "app":
            return self._apps.get(key) or self._new_app(key)
        return self._accounts.get(key) or self._new_account(key)

    def _new_app(self, host: str) -> _ScopeState:
        rate = self._settings.app_calls_per_s
        limiter = _limiter(max(1.0, rate * _APP_BUCKET_S), rate) if rate > 0 else None
        state = self._apps[host] = _ScopeState(limiter, rate, self._new_budget(None, APP_WINDOW_S))
        return state

    def _new_account(self, account_id: str) -> _ScopeState:
        rate = self._settings.account_calls_per_s
        limiter = _limiter(float(max(1, self._settings.account_burst)), rate) if rate > 0 else None
        state = self._accounts[account_id] = _ScopeState(limiter, rate,
                                                         self._new_budget(self._settings.account_max_in_flight,
                                                                          BUC_WINDOW_S))
        return state

    def _new_budget(self, max_in_flight: int | None, documented_window_s: float) -> _BudgetGate:
        rl = self._settings
        return _BudgetGate(budget.ScopeBudget(rl.budget_margin_calls, rl.usage_max_age_s, max_in_flight,
                                              documented_window_s=documented_window_s), self._clock)


def _limiter(bucket: float, rate_per_s: float) -> aiolimiter.AsyncLimiter:
    """A hard ceiling of `rate_per_s` with a bucket of `bucket` calls."""
    import aiolimiter  # noqa: PLC0415  # lazy: see the import at the top

    return aiolimiter.AsyncLimiter(bucket, bucket / rate_per_s)
