"""How many calls one scope has left, from the usage percentages Meta reports (pure logic: time is an
argument).

Meta reports each scope's consumption as integer percentages of its budget (`X-App-Usage` for the app,
`X-Business-Use-Case-Usage` per app + account): on most answers, sometimes only after the first calls,
possibly a few calls late. It never says how large the budget is, nor how long its rolling window. A
`ScopeBudget` learns both from what it sees, and `delay_s` says when the next call of the scope may leave:

- **cost per call** (percent): each rise of the reported percentage, over the calls answered since the last
  change; the upper median of the last `COST_STEPS` rises (one rise can mislead either way: calls ageing out
  of the window make it look cheap, a lagging first report spreads it over several calls, a request the
  transport re-sent unseen doubles it).
- **calls left** before 100 %: `(100 - used) / cost`, where `used` is the last report plus the calls answered
  since it, up to the next whole percent (the report is an integer: the truth lies below the next one).
- **never more in flight than left**: calls in flight plus the one about to leave stay at most the calls left
  minus `margin_calls` (reports can lag a few calls behind: the margin is never spent).
- **spread near zero**: the last `reserve` calls above the margin leave one at a time, `spacing_s` apart: the
  window's refill rate (window / budget) once the window is known, else probes 2 s, 4 s, 8 s ... apart, each
  asking whether the window rolled — but never further apart than the refill rate of the window Meta
  documents for the scope (`documented_window_s`: 1 h for the app, 24 h for an account's BUC budget), so a
  large budget with a long window (80 % of 8,000 calls an hour) is spent at its refill rate instead of
  crawling at one probe a minute. The percentage falling ends the probing: calls aged out of the window,
  and the send times of our own oldest calls bound its length.
- **no report, or reports that stopped**: with no report yet, or the last one older than `max_age_s`, or no
  rise seen yet (cost unknown), calls leave at once; the caller bounds them (an account's own fan-out).

Throttle codes (80002, 4, ...) are not seen here: they pause the scope in `ratelimit.Throttle`, as before.
"""

from __future__ import annotations

import collections
import math

COST_STEPS = 4  # rises of the percentage the cost estimate looks back over
PROBE_FIRST_S = 2.0  # while the window is unknown, the reserve's calls leave this far apart, growing ...
PROBE_GROWTH = 2.0  # ... by this factor each ...
PROBE_MAX_S = 60.0  # ... up to this
RESERVE_MIN_CALLS = 2  # the spread reserve: at least this many calls ...
RESERVE_FRACTION = 0.2  # ... or this share of the estimated budget
SEND_HISTORY = 1024  # send times are kept for the window estimate only for budgets up to this many calls


class ScopeBudget:
    """Budget accounting of one scope (an app host or an account). Not thread-safe; one event loop."""

    __slots__ = ("_base_pct", "_changed", "_cost", "_fallen", "_lead", "_probe_s", "_report_sent_at",
                 "_reports", "_sends", "_silent", "_spreading", "_steps", "_untracked", "documented_window_s",
                 "in_flight", "last_send_at", "margin_calls", "max_age_s", "max_in_flight", "pct",
                 "reported_at", "window_s")

    def __init__(self, margin_calls: int, max_age_s: float, max_in_flight: int | None = None, *,
                 documented_window_s: float | None = None) -> None:
        self.margin_calls = margin_calls
        # The rolling window Meta documents for this kind of scope (reference §6.1); the probes' spacing never
        # exceeds its refill rate. None: no such bound.
        self.documented_window_s = documented_window_s
        self.max_in_flight = max_in_flight  # None: unbounded (the app scope: the connector bounds it)
        self.max_age_s = max_age_s
        self.pct: int | None = None  # the last reported percentage
        self.reported_at = 0.0
        self.in_flight = 0  # admitted and not answered yet
        self.last_send_at = -math.inf
        self.window_s: float | None = None  # upper bound of the rolling window, once a fall was seen
        self._changed = 0  # calls answered since the reported percentage last changed
        self._cost: float | None = None  # percent per call
        self._steps: collections.deque[float] = collections.deque(maxlen=COST_STEPS)
        self._sends: collections.deque[float] = collections.deque()
        self._silent = 0  # answers without a report since the last report
        # Lag: reports that repeat the first one before the first rise. Where each call moves the percentage
        # (cost >= 1 %), that is how many calls late the reports run (one call late is indistinguishable from
        # usage before us: hence the margin, and one spare call before probing into it).
        self._lead = 0
        self._base_pct = 0
        self._reports = 0  # reports since the first one
        self._report_sent_at = -math.inf  # when the call behind the newest report left
        self._fallen = False
        self._untracked = 0  # sends older than `_sends` whose times were not kept
        self._probe_s = PROBE_FIRST_S
        self._spreading = False

    # -- estimates ---------------------------------------------------------------------------------------

    @property
    def cost_pct(self) -> float | None:
        """Percent of the budget one call costs (None until the percentage rose once)."""
        return self._cost

    def budget_calls(self) -> float | None:
        """The estimated size of the budget, in calls."""
        return None if self._cost is None else 100.0 / self._cost

    def calls_left(self, now: float) -> int | None:
        """Calls before 100 %, not counting those in flight; None when nothing is known (no report, an aged
        report, or no rise seen yet). Negative when the scope is over its budget."""
        cost, pct = self._cost, self.pct
        if pct is None or (self._silent and now - self.reported_at > self.max_age_s):
            return None  # nothing known, or answers kept coming without reports: the report aged out
        if cost is None:  # no rise yet: the first report bounds the cost of the calls before it
            if pct == 0:
                return None
            cost = (pct + 1) / max(1, self._reports + 1)
        lag = self._lead if cost >= 1.0 else 0
        # Answers without a report cost a call each; reports that repeat the percentage, at most what the
        # integer hides (with cost >= 1 % a repeat means a call aged out).
        repeats = self._changed - self._silent
        used = pct + cost * (lag + self._silent) + min(cost * repeats, max(0.0, 1.0 - cost))
        return math.floor((100.0 - used) / cost + 1e-9)

    def _margin(self) -> int:
        """Calls kept back for reports that lag. Where every call moves the percentage (cost >= 1 %), the lag
        is measured (`calls_left` counts it) up to one call: two calls of margin are enough (one more for a
        request the transport re-sent unseen)."""
        cost = self._cost
        return min(2, self.margin_calls) if cost is not None and cost >= 1.0 else self.margin_calls

    def reserve_calls(self) -> int:
        budget = self.budget_calls()
        if budget is None:
            return RESERVE_MIN_CALLS
        return max(RESERVE_MIN_CALLS, round(RESERVE_FRACTION * budget))

    def spacing_s(self) -> float:
        """How far apart the reserve's calls leave."""
        budget = self.budget_calls()
        if self.window_s is not None and budget:
            return self.window_s / budget
        if self.documented_window_s is not None and budget:
            return min(self._probe_s, self.documented_window_s / budget)
        return self._probe_s

    # -- admission ---------------------------------------------------------------------------------------

    def delay_s(self, now: float) -> float | None:
        """0.0: one more call may leave now; > 0: ask again after that many seconds; None: wait for a call
        in flight to be answered (its report decides)."""
        self._spreading = False
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            return None
        left = self.calls_left(now)
        if left is None:
            return 0.0
        free = left - self._margin() - self.in_flight
        if self._cost is None:  # only the first report's bound: one at a time until a rise shows the cost
            return 0.0 if free > 0 or not self.in_flight else None
        if free > self.reserve_calls():
            return 0.0
        if self.in_flight:  # near the end of the budget: one call at a time, each answer decides
            return None
        self._spreading = True
        if free > 0 or left >= 2:  # the reserve, or a probe into the margin (one call spare): spread out
            at = self.last_send_at + self.spacing_s()
        else:  # nothing to spare: one call once every call we made can have aged out of the window
            at = self.last_send_at + (self.max_age_s if self.window_s is None else self.window_s)
        return max(0.0, at - now)

    def sent(self, now: float) -> None:
        """A call was admitted (it leaves now)."""
        self.in_flight += 1
        self.last_send_at = now
        budget = self.budget_calls()
        if budget is not None and budget <= SEND_HISTORY:
            self._sends.append(now)
            if len(self._sends) > SEND_HISTORY:
                self._sends.popleft()
                self._untracked += 1
        else:  # a large (or unknown) budget: its window hardly matters, and 10,000 accounts' times would
            self._untracked += 1  # cost ~20 MB
        if self._spreading and self.window_s is None:  # a probe: the next one waits twice as long
            self._probe_s = min(PROBE_MAX_S, self._probe_s * PROBE_GROWTH)
        self._spreading = False

    def unsent(self) -> None:
        """An admitted call did not leave after all (cancelled before it was sent)."""
        self.in_flight = max(0, self.in_flight - 1)
        if self._sends:
            self._sends.pop()
        elif self._untracked:
            self._untracked -= 1

    def answered(self, pct: int | None, now: float, sent_at: float | None = None) -> None:
        """A call in flight came back (or failed without an answer: `pct` None), with this report. `sent_at`:
        when it left; a fall reported by a call older than the one behind the current report is stale (a slow
        answer overtaken by later ones) and only counts as an unreported call."""
        self.in_flight = max(0, self.in_flight - 1)
        if sent_at is not None and pct is not None and self.pct is not None:
            if pct < self.pct and sent_at < self._report_sent_at:
                pct = None
            else:
                self._report_sent_at = max(self._report_sent_at, sent_at)
        self.report(pct, now)

    def report(self, pct: int | None, now: float) -> None:
        """A usage report (the percentage of one answer); None: the answer had none (counted as a call the
        reports have not caught up with yet)."""
        if pct is None:
            self._changed += 1
            self._silent += 1
            return
        self._silent = 0
        previous = self.pct
        self.pct = pct
        self.reported_at = now
        pruned = 0
        if self.window_s is not None:  # sends older than the window are out of this report already
            cutoff, sends = now - self.window_s, self._sends
            while sends and sends[0] <= cutoff:
                sends.popleft()
                pruned += 1
        if previous is None:  # the first report: a baseline (usage before us may be in it)
            self._changed = 0
            self._base_pct = pct
            return
        self._reports += 1
        if pct == self._base_pct and self._cost is None and not self._fallen:
            self._lead = min(self._reports, self.margin_calls + 2)
        if pct < previous:
            self._fallen = True
        if pct > previous:
            self._steps.append((pct - previous) / (self._changed + 1))
            self._cost = sorted(self._steps)[len(self._steps) // 2]
            self._changed = 0
        elif pct < previous:
            self._fell(previous - pct, pruned, now)
            self._changed = 0
        else:
            self._changed += 1

    def _fell(self, drop_pct: int, pruned: int, now: float) -> None:
        """The percentage fell: calls aged out of the window since the last report. Counted as our oldest
        sends (their ages bound the window from above), beyond the `pruned` ones the window estimate already
        took out; the probes stop."""
        self._probe_s = PROBE_FIRST_S
        cost = self._cost
        if cost is None:
            return
        aged = round(drop_pct / cost) + self._changed + 1 - pruned
        untracked = min(aged, self._untracked)  # the oldest sends: their times were not kept
        self._untracked -= untracked
        aged -= untracked
        sends = self._sends
        if aged <= 0:
            return
        if aged > len(sends):  # more aged than we sent (usage not ours): no estimate
            sends.clear()
            return
        newest_aged = sends[0]
        for _ in range(aged):
            newest_aged = sends.popleft()
        if now > newest_aged:  # an upper bound of the window; the largest one seen stands (the safe side)
            bound = now - newest_aged
            self.window_s = bound if self.window_s is None else max(self.window_s, bound)
