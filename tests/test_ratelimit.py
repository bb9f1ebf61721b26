"""Throttle: usage-header parsing, pacing math and pause bookkeeping with a fake clock; blocking
behaviour (pauses, pacing, limiters) on a virtual-time event loop (tests/virtual_time.py), so every
duration is exact and no assertion depends on how busy the machine is."""

from __future__ import annotations

import asyncio

import pytest

from collector import metrics, ratelimit, settings
from tests import virtual_time

HOST = "https://graph.instagram.com"
OTHER_HOST = "https://graph.facebook.com"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def now() -> float:
    return asyncio.get_running_loop().time()


def make_virtual(**overrides: float) -> tuple[ratelimit.Throttle, metrics.Metrics]:
    """A Throttle on the running loop's clock (the virtual one in the waiting tests: exact durations)."""
    counters = metrics.Metrics()
    rl = settings.RateLimitSettings(**overrides)  # type: ignore[arg-type]
    return ratelimit.Throttle(rl, counters, asyncio.get_running_loop().time), counters


def make(clock: FakeClock | None = None, **overrides: float) -> tuple[ratelimit.Throttle, metrics.Metrics]:
    counters = metrics.Metrics()
    rl = settings.RateLimitSettings(**overrides)  # type: ignore[arg-type]
    if clock is None:
        return ratelimit.Throttle(rl, counters), counters
    return ratelimit.Throttle(rl, counters, clock, rand=lambda: 0.5), counters


# -- pacing math ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("pct", "expected"), [
    (0.0, 1.0), (50.0, 1.0), (75.0, 1.0),
    (87.5, 0.525),  # halfway from 75 to 100: halfway from 1.0 to 0.05
    (100.0, 0.05), (250.0, 0.05),
])
def test_pacing_fraction_linear(pct: float, expected: float) -> None:
    assert ratelimit.pacing_fraction(pct, 75.0, 0.05) == pytest.approx(expected)


def test_pacing_fraction_monotonic() -> None:
    values = [ratelimit.pacing_fraction(p, 60.0, 0.1) for p in range(0, 120)]
    assert values == sorted(values, reverse=True)


# -- header parsing ------------------------------------------------------------------------------------------

def test_parse_app_usage() -> None:
    assert ratelimit.parse_app_usage('{"call_count":28,"total_time":25,"total_cputime":31}') == 31.0
    assert ratelimit.parse_app_usage(None) is None


@pytest.mark.parametrize("garbage", ["", "not json", "[1,2]", '{"call_count":"lots"}', '{"x":1}', "{"])
def test_parse_app_usage_garbage(garbage: str) -> None:
    assert ratelimit.parse_app_usage(garbage) is None


def test_parse_buc_usage_several_ids_minutes_to_seconds() -> None:
    header = ('{"17841400000000001":[{"type":"instagram","call_count":40,"total_cputime":12,"total_time":9,'
              '"estimated_time_to_regain_access":0}],'
              '"1234567890":[{"type":"instagram","call_count":91,"total_cputime":5,"total_time":7,'
              '"estimated_time_to_regain_access":3},{"type":"pages","call_count":2,"total_cputime":1,'
              '"total_time":1,"estimated_time_to_regain_access":0}]}')
    assert ratelimit.parse_buc_usage(header) == (91.0, 180.0)


def test_parse_buc_usage_tolerates_garbage() -> None:
    header = ('{"1":"nonsense","2":[null,3,{"call_count":"55","estimated_time_to_regain_access":"2"}],'
              '"3":{"call_count":-5,"total_time":true},"4":[{"call_count":12}]}')
    assert ratelimit.parse_buc_usage(header) == (55.0, 120.0)


@pytest.mark.parametrize("garbage", [None, "", "{", "[]", '"str"', '{"1":[]}'])
def test_parse_buc_usage_nothing(garbage: str | None) -> None:
    assert ratelimit.parse_buc_usage(garbage) == (None, None)


# -- observe / pause with a fake clock -----------------------------------------------------------------------

def test_observe_app_usage_slows_the_host_only() -> None:
    throttle, _ = make(FakeClock())
    throttle.observe(HOST, "1", {"X-App-Usage": '{"call_count":87.5,"total_time":10,"total_cputime":10}'})
    assert throttle.rate_fraction("app", HOST) == pytest.approx(0.525)
    assert throttle.rate_fraction("app", OTHER_HOST) == 1.0
    assert throttle.rate_fraction("account", "1") == 1.0
    throttle.observe(HOST, "1", {"X-App-Usage": '{"call_count":20,"total_time":10,"total_cputime":10}'})
    assert throttle.rate_fraction("app", HOST) == 1.0


def test_observe_buc_paces_and_pauses_the_account() -> None:
    clock = FakeClock()
    throttle, counters = make(clock)
    header = '{"999":[{"type":"instagram","call_count":100,"total_cputime":4,"total_time":4,' \
             '"estimated_time_to_regain_access":7}]}'
    regain_s = throttle.observe(HOST, "1", {"X-Business-Use-Case-Usage": header})
    assert regain_s == 420.0
    assert throttle.rate_fraction("account", "1") == pytest.approx(0.05)
    assert throttle.paused_for_s("account", "1") == pytest.approx(420.0)
    assert throttle.paused_for_s("account", "2") == 0.0
    assert throttle.paused_for_s("app", HOST) == 0.0
    assert counters.total(counters.pauses, scope="account") == 1.0


def test_observe_without_regain_does_not_pause() -> None:
    throttle, _ = make(FakeClock())
    header = '{"1":[{"type":"instagram","call_count":80,"total_cputime":4,"total_time":4,' \
             '"estimated_time_to_regain_access":0}]}'
    assert throttle.observe(HOST, "1", {"X-Business-Use-Case-Usage": header}) is None
    assert throttle.paused_for_s("account", "1") == 0.0
    assert throttle.rate_fraction("account", "1") == pytest.approx(1 - 0.2 * 0.95)


def test_observe_garbage_headers_change_nothing() -> None:
    throttle, _ = make(FakeClock())
    assert throttle.observe(HOST, "1", {"X-App-Usage": "oops", "X-Business-Use-Case-Usage": "{{"}) is None
    assert throttle.rate_fraction("app", HOST) == 1.0 and throttle.rate_fraction("account", "1") == 1.0


def test_pause_extends_never_shortens_and_is_capped() -> None:
    clock = FakeClock()
    throttle, counters = make(clock, pause_cap_s=600.0)
    throttle.pause("account", "1", 100.0)
    throttle.pause("account", "1", 30.0)  # shorter: ignored
    assert throttle.paused_for_s("account", "1") == pytest.approx(100.0)
    clock.now += 40.0
    throttle.pause("account", "1", 90.0)  # ends later than the running pause: extends
    assert throttle.paused_for_s("account", "1") == pytest.approx(90.0)
    throttle.pause("account", "1", 10_000.0)
    assert throttle.paused_for_s("account", "1") == pytest.approx(600.0)
    assert counters.total(counters.pauses, scope="account") == 1.0  # one pause, extended twice
    clock.now += 601.0
    assert throttle.paused_for_s("account", "1") == 0.0
    throttle.pause("account", "1", 5.0)
    assert counters.total(counters.pauses, scope="account") == 2.0


def test_pause_accounts_pauses_each_until_the_same_moment() -> None:
    """A user throttle (code 17): every account of the token, until one moment; running pauses that end
    later are kept, and only the accounts not paused yet count as new pauses."""
    clock = FakeClock()
    throttle, counters = make(clock, pause_cap_s=600.0)
    throttle.pause("account", "2", 5.0)
    throttle.pause("account", "3", 900.0)  # capped: 600
    assert throttle.pause_accounts(["1", "2", "3"], 60.0) == 3
    assert [throttle.paused_for_s("account", a) for a in ("1", "2", "3", "4")] == pytest.approx(
        [60.0, 60.0, 600.0, 0.0])
    assert counters.total(counters.pauses, scope="account") == 3.0  # 2 and 3 before, 1 now (2 extended)
    assert throttle.pause_accounts(["4"], 10_000.0) == 1
    assert throttle.paused_for_s("account", "4") == pytest.approx(600.0)
    assert throttle.paused_count("account") == 4


def test_paused_scopes_gauge_counts_at_scrape_time() -> None:
    clock = FakeClock()
    throttle, counters = make(clock)
    throttle.pause("account", "1", 10.0)
    throttle.pause("account", "2", 20.0)
    throttle.pause("app", HOST, 5.0)
    text = counters.exposition().decode()
    assert 'ig_collector_paused_scopes{scope="account"} 2.0' in text
    assert 'ig_collector_paused_scopes{scope="app"} 1.0' in text
    clock.now += 15.0
    text = counters.exposition().decode()
    assert 'ig_collector_paused_scopes{scope="account"} 1.0' in text
    assert 'ig_collector_paused_scopes{scope="app"} 0.0' in text


# -- waiting behaviour, on a virtual clock (tests/virtual_time.py) --------------------------------------

@virtual_time.test
async def test_paused_account_waits_others_go() -> None:
    throttle, _ = make_virtual(account_calls_per_s=0, app_calls_per_s=0)
    throttle.pause("account", "paused", 0.3)
    passed: dict[str, float] = {}
    started = now()

    async def call(account_id: str) -> None:
        async with throttle.slot(HOST, account_id):
            passed[account_id] = now() - started

    await asyncio.gather(call("paused"), *(call(str(i)) for i in range(20)))
    assert passed["paused"] >= 0.3
    assert max(v for k, v in passed.items() if k != "paused") < 0.1


@virtual_time.test
async def test_app_pause_holds_every_account_of_that_host_only() -> None:
    throttle, _ = make_virtual(account_calls_per_s=0, app_calls_per_s=0)
    throttle.pause("app", HOST, 0.25)
    started = now()
    async with throttle.slot(OTHER_HOST, "1"):
        assert now() - started < 0.05
    async with throttle.slot(HOST, "1"):
        assert now() - started >= 0.25
    throttle.pause("app", HOST, 0.2)
    started = now()
    async with throttle.slot(HOST, None):  # token calls (no account) obey the app scope too
        assert now() - started >= 0.2


@virtual_time.test
async def test_pause_begun_while_waiting_for_the_limiter_is_honoured() -> None:
    throttle, _ = make_virtual(account_calls_per_s=4.0, account_burst=1, app_calls_per_s=0)
    started = now()
    async with throttle.slot(HOST, "1"):
        pass  # the bucket's one token

    async def pause_soon() -> None:
        await asyncio.sleep(0.05)
        throttle.pause("account", "1", 0.5)

    pauser = asyncio.create_task(pause_soon())
    async with throttle.slot(HOST, "1"):  # the limiter alone would let this go at ~0.25 s
        elapsed = now() - started
    await pauser
    assert elapsed >= 0.55


@virtual_time.test
async def test_waiters_wake_spread_after_the_pause_no_herd() -> None:
    throttle, _ = make_virtual(account_calls_per_s=0, app_calls_per_s=0)
    throttle.pause("app", HOST, 0.4)
    end = now() + 0.4
    woke: list[float] = []

    async def call(i: int) -> None:
        async with throttle.slot(HOST, str(i)):
            woke.append(now())

    await asyncio.gather(*(call(i) for i in range(300)))
    assert min(woke) >= end - 0.002
    assert max(woke) - min(woke) >= 0.015  # spread over up to 10 % of the pause
    assert max(woke) <= end + 0.1


@virtual_time.test
async def test_account_limiter_rate_and_burst() -> None:
    throttle, _ = make_virtual(account_calls_per_s=20.0, account_burst=2, app_calls_per_s=0)
    started = now()
    for _ in range(6):  # 2 from the bucket, then 4 at 20/s
        async with throttle.slot(HOST, "1"):
            pass
    elapsed = now() - started
    assert 0.17 <= elapsed < 0.4
    started = now()
    async with throttle.slot(HOST, "2"):  # another account has its own bucket
        assert now() - started < 0.02


@virtual_time.test
async def test_account_limiter_disabled() -> None:
    throttle, _ = make_virtual(account_calls_per_s=0, app_calls_per_s=0)
    started = now()
    for _ in range(500):
        async with throttle.slot(HOST, "1"):
            pass
    assert now() - started < 0.1


@virtual_time.test
async def test_slowed_account_is_paced() -> None:
    throttle, _ = make_virtual(account_calls_per_s=50.0, account_burst=1, app_calls_per_s=0,
                       slow_down_at_pct=50.0, min_rate_fraction=0.1)
    header = '{"1":[{"type":"instagram","call_count":100,"total_cputime":1,"total_time":1}]}'
    throttle.observe(HOST, "1", {"X-Business-Use-Case-Usage": header})
    assert throttle.rate_fraction("account", "1") == pytest.approx(0.1)  # 5 calls/s
    started = now()
    for _ in range(4):
        async with throttle.slot(HOST, "1"):
            pass
    assert now() - started >= 0.55  # 3 gaps of 0.2 s (first slot is immediate)


@virtual_time.test
async def test_calls_queued_behind_the_limiter_go_at_the_rate_in_force_when_they_leave() -> None:
    throttle, _ = make_virtual(account_calls_per_s=50.0, account_burst=1, app_calls_per_s=0,
                       slow_down_at_pct=50.0, min_rate_fraction=0.1)
    header = '{"1":[{"type":"instagram","call_count":100,"total_cputime":1,"total_time":1}]}'
    left: list[float] = []

    async def call() -> None:
        async with throttle.slot(HOST, "1"):
            left.append(now())
            if len(left) == 1:  # the first answer says the budget is used up: 5 calls/s from now on
                await asyncio.sleep(0.01)  # meanwhile the other four queue behind the limiter
                throttle.observe(HOST, "1", {"X-Business-Use-Case-Usage": header})

    await asyncio.gather(*(call() for _ in range(5)))  # four wait for the limiter meanwhile
    assert left[-1] - left[1] >= 0.55  # 3 gaps of 0.2 s, not 0.02 s as at the ceiling of 50/s


# -- the FIFO gate in front of each limiter ------------------------------------------------------------------

@virtual_time.test
async def test_contended_limiter_admits_in_arrival_order_and_shares_evenly() -> None:
    # 40 tasks of one account call in a loop against the app limiter (400/s, a bucket of 40): each waits its
    # turn, so over ~0.4 s every task gets the same number of calls, give or take the one in progress.
    throttle, _ = make_virtual(app_calls_per_s=400.0, account_calls_per_s=0,
                               account_max_in_flight=1000)  # no account bound: the gate alone
    order: list[int] = []
    stop = now() + 0.4

    async def caller(i: int) -> None:
        while now() < stop:
            async with throttle.slot(HOST, "1"):
                order.append(i)
                await asyncio.sleep(0)  # the call itself (a free token is taken without yielding)

    await asyncio.gather(*(caller(i) for i in range(40)))
    counts = [order.count(i) for i in range(40)]
    assert max(counts) - min(counts) <= 1, counts
    assert order[40:80] == order[:40]  # after the burst: round after round in the same order


@virtual_time.test
async def test_rate_and_first_second_burst_stay_aiolimiters() -> None:
    # 2,000/s per host holds 0.1 s of calls (200): with 50 callers, ~200 + 2,000 * 0.5 calls in 0.5 s.
    throttle, _ = make_virtual(app_calls_per_s=2000.0, account_calls_per_s=0)
    admitted: list[float] = []
    started = now()

    async def caller(i: int) -> None:
        while now() - started < 0.5:
            async with throttle.slot(HOST, str(i)):
                admitted.append(now() - started)
                await asyncio.sleep(0)

    await asyncio.gather(*(caller(i) for i in range(50)))
    assert 180 <= sum(1 for t in admitted if t < 0.01) <= 220  # the bucket, at once
    assert 1100 <= sum(1 for t in admitted if t < 0.5) <= 1230
    assert 1700 <= len([t for t in admitted if 0.1 <= t < 0.5]) / 0.4 <= 2100  # the steady rate


@virtual_time.test
async def test_cancelled_waiters_do_not_leak_the_gate() -> None:
    throttle, _ = make_virtual(account_calls_per_s=20.0, account_burst=1, app_calls_per_s=0)
    async with throttle.slot(HOST, "1"):
        pass  # the bucket's one token: the next caller waits ~50 ms at the head, the others queue behind
    admitted: list[str] = []

    async def call(name: str) -> None:
        async with throttle.slot(HOST, "1"):
            admitted.append(name)
            if name == "head":
                # `handed` was just handed the gate but has not run yet: cancelled now, it must pass it on.
                tasks["handed"].cancel()

    tasks: dict[str, asyncio.Task[None]] = {}
    for name in ("head", "queued", "handed", "last"):
        tasks[name] = asyncio.create_task(call(name))
        await asyncio.sleep(0)
    tasks["queued"].cancel()  # cancelled while waiting in the queue
    await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), 1.0)
    assert admitted == ["head", "last"]
    assert tasks["handed"].cancelled() and tasks["queued"].cancelled()
    # The head itself cancelled while it sleeps for the token: the gate is free for the next caller.
    sleeper = asyncio.create_task(call("sleeper"))
    await asyncio.sleep(0.01)
    sleeper.cancel()
    started = now()
    await asyncio.wait_for(call("after"), 1.0)
    assert admitted[-1] == "after" and now() - started < 0.1


# -- budget admission (collector/budget.py behind a FIFO gate) -----------------------------------------------

def in_flight(throttle: ratelimit.Throttle, account_id: str) -> int:
    return throttle._accounts[account_id].budget.budget.in_flight  # the gate's own count


async def test_cancelled_budget_waiters_keep_the_fifo_and_leak_no_slot() -> None:
    throttle, _ = make(FakeClock(), account_max_in_flight=2)
    await throttle.acquire(HOST, "1")
    await throttle.acquire(HOST, "1")  # the account's bound: the next ones queue
    waiters = [asyncio.create_task(throttle.acquire(HOST, "1")) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()  # cancelled while queued: skipped
    await asyncio.sleep(0)
    throttle.done(HOST, "1", None)  # one call over: one slot, to the first waiter still there
    await asyncio.sleep(0)
    assert waiters[1].done() and not waiters[2].done()
    assert in_flight(throttle, "1") == 2
    throttle.done(HOST, "1", None)  # the next slot is handed to waiters[2] ...
    waiters[2].cancel()  # ... which is cancelled before it runs: the slot goes back
    await asyncio.gather(*waiters, return_exceptions=True)
    assert in_flight(throttle, "1") == 1
    throttle.done(HOST, "1", None)
    assert in_flight(throttle, "1") == 0


async def test_budget_holds_calls_at_the_usage_reported() -> None:
    throttle, _ = make(FakeClock(), budget_margin_calls=3)
    for pct in (45, 50):  # 5 % a call: 10 calls left, 3 of margin, the spread reserve held back
        await throttle.acquire(HOST, "1")
        throttle.done(HOST, "1", {"X-Business-Use-Case-Usage": buc(pct)})
    admitted = 0
    waiter = asyncio.create_task(throttle.acquire(HOST, "1"))
    while True:
        await asyncio.sleep(0)
        if not waiter.done():
            break
        admitted += 1
        waiter = asyncio.create_task(throttle.acquire(HOST, "1"))
    assert 0 < admitted <= 10 - 3
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert in_flight(throttle, "1") == admitted


def buc(pct: int) -> str:
    return ('{"1":[{"type":"instagram","call_count":' + str(pct) + ',"total_cputime":1,"total_time":1,'
            '"estimated_time_to_regain_access":0}]}')
