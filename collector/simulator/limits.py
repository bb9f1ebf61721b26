"""Rate-limit budgets and the usage headers (graph-api.md §6).

One `Scope` per account (Instagram BUC, keyed by the token's IG user id), one per Facebook user (the user
behind a user token, code 17 "User request limit reached": every account that token reaches shares it)
and one for the app. A budget allows `calls` calls per rolling `window_s`; the call that would exceed it
is rejected and blocks the scope for `block_s`, and every call during the block is rejected too (counted,
but it extends nothing: a simplification of Meta's "more calls extend the block"). The rolling window is
cleared when a block starts.

With a budget off (calls = 0) nothing is ever rejected, and the headers report usage of a nominal
budget (`NOMINAL_CALLS` per hour per account, `NOMINAL_APP_CALLS_PER_USER` x accounts for the app, fixed
windows) so clients always see realistic percentages.

The usage headers report as Meta does: integer percentages per scope, and optionally (`Reporting`) only
from a scope's `after_calls`-th answer on (the headers are absent before), and lagging `lag_calls` answers
behind (each answer reports the usage as it was that many answers of the scope earlier). An answer of a
blocked scope always reports it (100 % and the regain time), whatever the reporting. A user's budget
has no usage header here: its code 17 comes with the headers of the app and the account as they are.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NOMINAL_CALLS = 4800  # an account's nominal budget per hour
NOMINAL_APP_CALLS_PER_USER = 200  # the app's: Meta's platform budget is 200 x users per rolling hour (§6)
NOMINAL_WINDOW_S = 3600.0


@dataclass(frozen=True, slots=True)
class Budget:
    calls: int = 0  # 0: off
    window_s: float = 3600.0
    block_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Reporting:
    after_calls: int = 0  # usage headers only from a scope's (after_calls + 1)-th answer on
    lag_calls: int = 0  # each answer reports the usage as it was this many answers of the scope earlier


class Scope:
    __slots__ = ("answers", "blocked_until", "calls", "nominal_count", "nominal_window", "reported")

    def __init__(self) -> None:
        self.calls: collections.deque[float] = collections.deque()
        self.blocked_until = 0.0
        self.nominal_window = -1
        self.nominal_count = 0
        self.answers = 0
        self.reported: collections.deque[tuple[int, int]] = collections.deque()  # (pct, regain min), lagging


class Limits:
    def __init__(self, account: Budget, app: Budget, overrides: Mapping[str, Budget] | None = None,
                 reporting: Reporting | None = None, *, app_nominal_calls: int = NOMINAL_CALLS,
                 user: Budget | None = None) -> None:
        self.reporting = reporting or Reporting()
        self.app_nominal_calls = app_nominal_calls
        self.account_budget = account
        self.app_budget = app
        self.user_budget = user or Budget()  # per Facebook user, over every call made with its tokens
        # Per-account budgets (ig user id -> Budget): Meta sizes each account's budget by its impressions.
        self.overrides = dict(overrides or {})
        self.app = Scope()
        self.accounts: dict[str, Scope] = {}
        self.users: dict[str, Scope] = {}  # Facebook user id -> its scope

    def budget_of(self, ig_user_id: str) -> Budget:
        return self.overrides.get(ig_user_id, self.account_budget)

    def reset(self) -> None:
        self.app = Scope()
        self.accounts.clear()
        self.users.clear()

    def account_scope(self, ig_user_id: str) -> Scope:
        return _scope(self.accounts, ig_user_id)

    def user_scope(self, user_id: str) -> Scope:
        return _scope(self.users, user_id)

    @staticmethod
    def admit(scope: Scope, budget: Budget, now: float) -> float:
        """Count a call; 0.0 if it may proceed, else the seconds left of the scope's block."""
        if scope.blocked_until > now:
            return scope.blocked_until - now
        if budget.calls <= 0:
            window = int(now // NOMINAL_WINDOW_S)
            if window != scope.nominal_window:
                scope.nominal_window, scope.nominal_count = window, 0
            scope.nominal_count += 1
            return 0.0
        calls = scope.calls
        cutoff = now - budget.window_s
        while calls and calls[0] <= cutoff:
            calls.popleft()
        if len(calls) >= budget.calls:
            scope.blocked_until = now + budget.block_s
            calls.clear()
            return budget.block_s
        calls.append(now)
        return 0.0

    @staticmethod
    def usage(scope: Scope, budget: Budget, now: float,
              nominal_calls: int = NOMINAL_CALLS) -> tuple[int, int]:
        """(percent of the budget used, minutes until access is regained)."""
        if scope.blocked_until > now:
            return 100, math.ceil((scope.blocked_until - now) / 60)
        if budget.calls <= 0:
            used = scope.nominal_count if scope.nominal_window == int(now // NOMINAL_WINDOW_S) else 0
            return min(100, used * 100 // nominal_calls), 0
        calls = scope.calls
        cutoff = now - budget.window_s
        while calls and calls[0] <= cutoff:
            calls.popleft()
        return min(100, len(calls) * 100 // budget.calls), 0

    def reported_usage(self, scope: Scope, budget: Budget, now: float,
                       nominal_calls: int = NOMINAL_CALLS) -> tuple[int, int] | None:
        """What one answer of `scope` reports, as `Reporting` says: None (no header) for the first answers,
        else the usage now or as it was `lag_calls` answers ago."""
        current = self.usage(scope, budget, now, nominal_calls)
        scope.answers += 1
        if scope.blocked_until > now:  # a throttled answer always says so, whatever the reporting
            return current
        lag = self.reporting.lag_calls
        if lag > 0:
            scope.reported.append(current)
            if len(scope.reported) > lag + 1:
                scope.reported.popleft()
            current = scope.reported[0] if len(scope.reported) > lag else (0, 0)
        return None if scope.answers <= self.reporting.after_calls else current

    def app_usage_header(self, now: float) -> dict[str, Any] | None:
        reported = self.reported_usage(self.app, self.app_budget, now, self.app_nominal_calls)
        if reported is None:
            return None
        pct = reported[0]
        return {"call_count": pct, "total_time": pct * 3 // 4, "total_cputime": pct // 2}

    def buc_header(self, ig_user_id: str, now: float) -> dict[str, Any] | None:
        reported = self.reported_usage(self.account_scope(ig_user_id), self.budget_of(ig_user_id), now)
        if reported is None:
            return None
        pct, regain_min = reported
        return {ig_user_id: [{"type": "instagram", "call_count": pct, "total_cputime": pct // 2,
                              "total_time": pct * 3 // 4, "estimated_time_to_regain_access": regain_min}]}


def _scope(scopes: dict[str, Scope], key: str) -> Scope:
    scope = scopes.get(key)
    if scope is None:
        scope = scopes[key] = Scope()
    return scope
