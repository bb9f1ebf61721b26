"""Counters of what the simulator served, in-process and at `GET /__sim/stats`: tests and benchmarks
count wasted calls (throttled, made while blocked, faulted) from them."""

from __future__ import annotations

import collections
from typing import Any, NamedTuple


class Arrival(NamedTuple):
    """One try of a request as the simulator saw it (recorded only with `Options.record_arrivals`)."""

    at: float  # time.monotonic() when the simulator began serving it
    outcome: str  # "ok", "throttled", an injected fault kind, or "error" (any other Graph error)
    ig_user_id: str  # the account of the call's token ("" when it had none we know)


class AgentCall(NamedTuple):
    """One Graph call and the User-Agent that made it (recorded only with `Options.record_agents`)."""

    at: float  # time.monotonic() when the simulator served it
    user_agent: str
    ig_user_id: str  # the account of the call's token


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0  # HTTP requests (a batch is one)
        self.calls = 0  # Graph calls (each batch operation is one)
        self.by_kind: collections.Counter[str] = collections.Counter()
        self.by_status: collections.Counter[int] = collections.Counter()
        self.by_code: collections.Counter[int] = collections.Counter()  # Graph error codes
        # scope ("app" | "user" | "account") -> throttle answers; while_blocked: those that arrived during
        # a block
        self.throttled: collections.Counter[str] = collections.Counter()
        self.while_blocked: collections.Counter[str] = collections.Counter()
        self.faults: collections.Counter[str] = collections.Counter()
        self.by_account: collections.Counter[str] = collections.Counter()  # calls per ig user id
        # request identity (faults.identity) -> every try of it, in arrival order; empty unless recorded.
        # Lets tests check retry timing from the server's side: when each retry arrived, what it met.
        self.arrivals: dict[str, list[Arrival]] = {}
        self.by_agent: collections.Counter[str] = collections.Counter()  # calls per User-Agent
        self.agent_calls: list[AgentCall] = []  # every call with its User-Agent; empty unless recorded

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "calls": self.calls,
            "by_kind": dict(self.by_kind), "by_status": {str(k): v for k, v in self.by_status.items()},
            "by_code": {str(k): v for k, v in self.by_code.items()},
            "throttled": dict(self.throttled), "throttled_total": sum(self.throttled.values()),
            "while_blocked": dict(self.while_blocked),
            "while_blocked_total": sum(self.while_blocked.values()),
            "faults": dict(self.faults), "accounts_called": len(self.by_account),
            "by_account": dict(self.by_account),
            "by_agent": dict(self.by_agent),
        }
