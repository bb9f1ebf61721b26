"""How many calls one scope has left, from the usage percentages Meta reports (pure logic: time is an
argument).

Meta reports each scope's consumption as integer percentages of its budget (`X-App-Usage` for the app,
`X-Business-Use-Case-Usage` per app + account): on most answers, sometimes only after the first calls,
possibly a few calls late. It never says how large the budget is, nor how long its rolling window. A
`ScopeBudget` learns both from what it sees, and `delay_s` says when the next call of the scope may leave:

- **cost per call** (percent): each rise of the reported percentage, over the calls answered since the last
  change; the upper median of the last `COST_STEPS` rises (one rise can mislead either way: calls ageing out
  of the window make it look cheap, a lagging first report spreads it over several calls, a request the
  transport re-sent unseen doubles it), but never below the average of those within one percent of it (the
  percent they rose by over the calls they took): a cost between whole percents shows as rises of both
  neighbours, 3, 3, 4 for 3.33 %, whose median alone reads the budget of 30 calls as 33; an outlier is left
  out, as it would read the budget low and stall the scope.
- **lag**: reports that repeat the first one before the first rise, or (reports that only start after the
  first answers) our answered calls the first report did not count: how many calls late the reports run
  (`_lead`). A report describes the state of `_lead` reports earlier (`reflected_at`), and is attributed to
  it wherever times matter.
- **calls left** before 100 %: `(100 - used) / cost`, where `used` is the last report plus the calls answered
  since it (and the lag's), up to the next whole percent (the report is an integer: the truth lies below the
  next one).
- **never more in flight than left**: calls in flight plus the one about to leave stay at most the calls left
  minus a margin (`margin_calls`; two where each call moves the percentage, since the lag is then measured;
  one where it was measured exactly, for a request the transport re-sent unseen). The margin is not spent.
- **the window**, once the percentage fell: the ages of our own sends bound it, at the time the report
  describes: from above by a fall (the largest such bound stands) or an exact report (one that counted a
  whole number of calls with nothing in flight: the newest n of our sends were counted, the one before had
  aged), from below by the oldest call an exact report still counted. Where the reports lag, the bounds from
  above are taken at the latest time the report can describe, one report later than the lag says: a request
  the transport re-sent unseen was answered twice, and the reports run one answer less late from then on.
  While the bounds are more than 5 % apart, the last free calls (as many as the reports lag, plus one) leave
  halfway between them.
- **the window known** (and our sends within it kept: budgets up to `SEND_HISTORY` calls): calls left are
  also the budget, less the calls not ours the last report showed, less our sends still within the window's
  upper bound; a scope at its budget resumes the moment its oldest calls age out, without probing and
  without waiting for a (lagging) report to show the fall. Not for a window after a report counted two or
  more calls beyond ours (usage not ours: its calls age out too, and would be taken for ours).
- **the window unknown, near zero**: the last `reserve` calls above the margin leave one at a time, probes
  2 s, 4 s, 8 s ... apart, each asking whether the window rolled — but never further apart than the refill
  rate of the window Meta documents for the scope (`documented_window_s`: 1 h for the app, 24 h for an
  account's BUC budget), so a large budget with a long window (80 % of 8,000 calls an hour) is spent at its
  refill rate instead of crawling at one probe a minute. With nothing to spare, one call once enough
  of our sends are `max_age_s` old for it and the calls that bring its report to fit (assuming the window is
  no longer: the oldest sends count, not the last one; a first burst ages out long before the last probe),
  then one at a time until a report describes a state after that call (a report 3 calls late needs 3
  more). Where the reports lag (counted: each call the same whole percent), a probe's report shows the
  state of the probe `_lead` probes earlier: the last probe the free calls pay for is followed at once by
  `_lead` calls, one at a time, so its own state is seen without waiting for probes the reserve cannot pay
  for; the reserve holds at least `RESERVE_MIN_CALLS` probes with their followers.
- **no report, or reports that stopped**: with no report yet, or the last one older than `max_age_s`, or no
  rise seen yet (cost unknown), calls leave at once; the caller bounds them (an account's own fan-out).

Per call: a few attribute reads, a ring slot and, for small budgets, a deque append and two bisections of at
most `SEND_HISTORY` sorted times; no allocation grows with the calls.

Throttle codes (80002, 4, ...) are not seen here: they pause the scope in `ratelimit.Throttle`, as before.
"""

from __future__ import annotations

import bisect
import collections
import math

COST_STEPS = 4  # rises of the percentage the cost estimate looks back over
PROBE_FIRST_S = 2.0  # while the window is unknown, the reserve's calls leave this far apart, growing ...
PROBE_GROWTH = 2.0  # ... by this factor each ...
PROBE_MAX_S = 60.0  # ... up to this
RESERVE_MIN_CALLS = 2  # the spread reserve: at least this many calls ...
RESERVE_FRACTION = 0.2  # ... or this share of the estimated budget
PROBE_PRECISION = 0.05  # the window's bounds are narrowed by probes until they are this close (share of it)
SEND_HISTORY = 1024  # send times are kept for the window estimate only for budgets up to this many calls
# ... and, while the budget is still unknown, the first this many (the first burst leaves before any rise: the
# first fall bounds the window from its send times; 10,000 large-budget accounts keep at most this many
# each, within the deque's first block, which is allocated anyway).
SEND_HISTORY_UNKNOWN = 32
# Once the window is known, a call is counted out of it this much later than the window's upper bound says:
# our send time is taken when the call is admitted, a little before the server counts it.
WINDOW_SLACK = 0.02
_MIN_WAIT_S = 0.001  # a wait that is due (rounding) is asked again this much later, never granted as 0


class ScopeBudget:
    """Budget accounting of one scope (an app host or an account). Not thread-safe; one event loop."""

    __slots__ = ("_aged_n", "_base_calls", "_base_pct", "_changed", "_cost", "_dropped_n", "_excess",
                 "_fallback", "_fallback_at", "_fallen", "_following", "_lead", "_lead_exact", "_outside",
                 "_probe_free", "_probe_s", "_probe_sent_at",
                 "_pruned", "_reflected_late", "_report_sent_at", "_reports", "_ring", "_ring_flying",
                 "_ring_sent", "_rises", "_sends", "_shared_at", "_silent", "_spreading", "_untracked",
                 "_untracked_at", "_window_lo",
                 "documented_window_s", "in_flight", "last_send_at", "margin_calls", "max_age_s",
                 "max_in_flight", "pct", "reflected_at", "reported_at", "window_s")

    def __init__(self, margin_calls: int, max_age_s: float, max_in_flight: int | None = None, *,
                 documented_window_s: float | None = None) -> None:
        self.margin_calls = margin_calls
        # The rolling window Meta documents for this kind of scope (reference §6.1); the probes' spacing never
        # exceeds its refill rate. None: no such bound.
        self.documented_window_s = documented_window_s
        self.max_in_flight = max_in_flight  # None: unbounded (the app scope: the connector bounds it)
        self.max_age_s = max_age_s
        self.pct: int | None = None  # the last reported percentage
        self.reported_at = 0.0  # when it arrived
        self.reflected_at = 0.0  # when the state it reports was current (earlier when the reports lag)
        # ... and the latest it can have been: one report later, where the reports lag. A request the
        # transport re-sent unseen was answered twice by the server: from then on its reports run one of our
        # answers less late than `_lead` says (the window's upper bounds are taken from this time).
        self._reflected_late = 0.0
        self.in_flight = 0  # admitted and not answered yet
        self.last_send_at = -math.inf
        self.window_s: float | None = None  # upper bound of the rolling window, once a fall was seen
        self._window_lo = 0.0  # lower bound: a call of ours the reports still counted was that old
        self._changed = 0  # calls answered since the reported percentage last changed
        self._cost: float | None = None  # percent per call
        # The last `COST_STEPS` rises of the percentage: (percent risen, calls answered meanwhile).
        self._rises: collections.deque[tuple[int, int]] = collections.deque(maxlen=COST_STEPS)
        # Our send times, oldest first (see `sent` for which are kept); the first `_aged_n` of them are known
        # (from falls) to have aged out of the window.
        self._sends: collections.deque[float] = collections.deque()
        self._aged_n = 0
        # Sends taken off the front of `_sends` so far (a count of sends, less this, is an index there).
        self._dropped_n = 0
        self._pruned = 0  # sends the window bound took out since the percentage last changed (see `_fell`)
        self._untracked = 0  # sends older than `_sends` whose times were not kept ...
        self._untracked_at = -math.inf  # ... the newest of them
        self._outside = 0.0  # calls in the last report that are not ours in the window (once it is known)
        self._excess = 0  # calls an exact report counted beyond our sends not known to have aged
        # When usage not ours was last seen (more than a re-send explains): for a window from then our send
        # times say too little about the window's content; they neither pace nor bound it (the reports alone
        # do, as for a large budget).
        self._shared_at = -math.inf
        self._silent = 0  # answers without a report since the last report
        # Lag: reports that repeat the first one before the first rise. Where each call moves the percentage
        # (cost >= 1 %), that is how many calls late the reports run. A first report of 0 % after our own call
        # was answered did not include that call either: one more (the lag is then exact, `_lead_exact`).
        # Otherwise one call late is indistinguishable from usage before us: hence the margin.
        self._lead = 0
        self._lead_exact = False
        self._base_pct = 0
        self._base_calls = 0  # answers up to the first report (it came with the last of them)
        self._reports = 0  # reports since the first one
        # When the last reports arrived (a ring, newest at `_reports % len`): a report `_lead` calls late
        # describes the state of `_lead` reports earlier.
        self._ring = [0.0] * (margin_calls + 3)
        self._ring_flying = [1] * (margin_calls + 3)  # ... how many calls were in flight then ...
        self._ring_sent = [0] * (margin_calls + 3)  # ... and how many we had sent (`_sends` kept or not)
        self._report_sent_at = -math.inf  # when the call behind the newest report left
        self._fallen = False
        self._probe_s = PROBE_FIRST_S
        self._spreading = False
        # The window unknown and the reports lagging, a probe whose state is to be seen left then (None:
        # none); more calls follow it at once, one at a time (`_following`: the call about to leave is one),
        # until a report describes a state after it. `_probe_free`: the free calls when the probe about to
        # leave was granted.
        self._probe_sent_at: float | None = None
        self._probe_free = 0
        self._following = False
        # The window unknown and nothing to spare, a call left after `max_age_s` on the assumption that the
        # window rolled (`_fallback`: the call about to leave is one); until a report describes a state after
        # it, more leave one at a time on the same assumption (a report `_lead` calls late needs that many).
        self._fallback = False
        self._fallback_at: float | None = None

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
        left = math.floor((100.0 - used) / cost + 1e-9)
        if self.window_s is None:  # (the common case, kept cheap: Meta's large budgets never see it roll)
            return left
        by_log = self._left_by_log(now)
        return left if by_log is None or by_log < left else by_log

    def _left_by_log(self, now: float) -> int | None:
        """Calls left from our own send times, once the window is known and every send within it was kept:
        the budget, less the calls of others the last report showed, less our sends still within the window
        (those in flight added back: the caller counts them). Unlike the report it sees our calls age out
        between reports, so a scope at its budget resumes when its oldest calls leave the window, without a
        probe (and without waiting for a lagging report to show it)."""
        window, cost = self.window_s, self._cost
        if window is None or cost is None or cost < 100.0 / SEND_HISTORY or self._shared(now):
            return None
        window += WINDOW_SLACK * window
        if self._untracked_at > now - window:
            return None
        sends = self._sends  # the first `_aged_n` aged out already, whatever the bound says
        ours = len(sends) - max(self._aged_n, bisect.bisect_right(sends, now - window))
        return math.floor(100.0 / cost + 1e-9) - math.ceil(self._outside - 1e-9) - ours + self.in_flight

    def _margin(self) -> int:
        """Calls kept back for reports that lag. Where every call moves the percentage (cost >= 1 %), the lag
        is measured (`calls_left` counts it) up to one call: two calls of margin are enough (one more for a
        request the transport re-sent unseen); one, when the lag was measured exactly."""
        cost = self._cost
        if cost is None or cost < 1.0:
            return self.margin_calls
        return min(1 if self._lead_exact else 2, self.margin_calls)

    def _probe_calls(self) -> int:
        """Calls one probe costs while the window is unknown: itself, and where the reports lag, the calls
        that bring the report describing it. Only where the lag is counted and each call costs the same whole
        percent (the last `COST_STEPS` rises equal): where it does not (a budget of 30 calls: 3 or 4 % a
        call), the window's bounds read from lagging reports are too rough for the calls a faster first roll
        lets go (measured on the model in tests/test_budget.py); the probes there stay single, as before."""
        if not self._lead or len(self._rises) < COST_STEPS:
            return 1
        steps = self._steps()
        if steps[0] < 1.0 or min(steps) != max(steps):
            return 1
        return 1 + self._lead

    def _steps(self) -> list[float]:
        """The last `COST_STEPS` rises, each as percent per call, oldest first."""
        return [rise / calls for rise, calls in self._rises]

    def reserve_calls(self) -> int:
        budget = self.budget_calls()
        least = RESERVE_MIN_CALLS * self._probe_calls()
        if budget is None:
            return least
        return max(least, round(RESERVE_FRACTION * budget))

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
        self._spreading = self._fallback = self._following = False
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            return None
        left = self.calls_left(now)
        if left is None:
            return 0.0
        free = left - self._margin() - self.in_flight
        if self._cost is None:  # only the first report's bound: one at a time until a rise shows the cost
            return 0.0 if free > 0 or not self.in_flight else None
        ages_at = None if self.window_s is None else self._next_free_at(now, free)
        if ages_at is not None:  # the window is known: no reserve to spread, calls leave as ours age out
            # While the window's bounds are apart, the last free calls (or a probe into the margin, one
            # spare) leave when they best narrow them: calls that would have left anyway, a little later. As
            # many as the reports lag, plus one, one at a time: the last one's report describes the first's.
            probe_at = self._probe_at(now) if free > 0 or (left >= 2 and not self.in_flight) else math.inf
            held = 1 + self._lead if probe_at < math.inf else 0
            if free > held:
                return 0.0
            if free > 0:
                if probe_at > now:
                    return probe_at - now
                return 0.0 if not self.in_flight else None
            if probe_at <= now:
                return 0.0
            return max(_MIN_WAIT_S, min(ages_at, probe_at) - now)  # never 0.0 here: nothing is free yet
        if free > self.reserve_calls():
            return 0.0
        if self.in_flight:  # near the end of the budget: one call at a time, each answer decides
            return None
        self._spreading = True
        self._probe_free = free
        if free > 0 or left >= 2:  # the reserve, or a probe into the margin (one call spare): spread out
            probe_sent_at = self._probe_sent_at
            if free > 0 and probe_sent_at is not None and self.reflected_at < probe_sent_at:
                # The reports lag: the probe's own report described a state before it. Calls that follow it
                # at once, one at a time, bring the report that describes it (a report `_lead` calls late
                # needs that many) — not the next probes, spaced ever further apart.
                self._following = True
                return 0.0
            at = self.last_send_at + self.spacing_s()
        elif self.window_s is not None:  # nothing to spare: one call once every call we made aged out
            at = self.last_send_at + self.window_s
        else:  # nothing to spare, the window unknown: assume it is shorter than max_age_s
            self._fallback = True
            at = self._aged_room_at(left) + self.max_age_s
            fallback_at = self._fallback_at
            if fallback_at is not None and self.reflected_at < fallback_at and self._room_after_max_age(now):
                at = now  # the reports describe a time before the last fallback call: one more, as it did
        return max(0.0, at - now)

    def _aged_room_at(self, left: int) -> float:
        """When the oldest of our sends that must leave the window for a probe (with its followers) to fit
        were sent; the last send when their times were not kept."""
        sends, need = self._sends, self._probe_calls() - (left - self._margin())
        if self._untracked or need <= 0 or need > len(sends):
            return self.last_send_at
        return sends[need - 1]

    def _room_after_max_age(self, now: float) -> bool:
        """Whether one more call fits if every send older than `max_age_s` left the window."""
        cost, sends, since = self._cost, self._sends, now - self.max_age_s
        if cost is None or self._untracked_at > since:
            return False
        ours = len(sends) - bisect.bisect_right(sends, since)
        return math.floor(100.0 / cost + 1e-9) - ours - self._margin() >= 1

    def _next_free_at(self, now: float, free: int) -> float | None:
        """With the window known and our sends within it kept: when enough of them will have aged out for one
        more call (`now` when one may leave already); None otherwise."""
        window = self.window_s
        if window is None or self._left_by_log(now) is None:
            return None
        if free > 0:
            return now
        window += WINDOW_SLACK * window
        sends = self._sends
        # The (1 - free)-th of ours still in the window (the first `_aged_n` left it already).
        index = max(self._aged_n, bisect.bisect_right(sends, now - window)) - free
        return sends[index] + window if index < len(sends) else None

    def _probe_at(self, now: float) -> float:
        """When a probe best narrows the window's bounds: halfway between the earliest and the latest time our
        oldest call still counted can age out (its fall then halves the uncertainty, as does its absence)."""
        window = self.window_s
        sends, index = self._sends, self._aged_n
        if window is None or index >= len(sends) or window - self._window_lo <= PROBE_PRECISION * window:
            return math.inf
        return sends[index] + (self._window_lo + window) / 2

    def sent(self, now: float) -> None:
        """A call was admitted (it leaves now)."""
        self.in_flight += 1
        self.last_send_at = now
        budget = self.budget_calls()
        # Send times are kept for budgets small enough for the window to matter (a large one's window hardly
        # does, and 10,000 accounts' times would cost ~20 MB), and while the budget is unknown the first
        # few: that many calls without a rise make a large budget (the log is dropped until the cost shows).
        sends = self._sends
        if budget is None:
            keep = not self._untracked and len(sends) < SEND_HISTORY_UNKNOWN
            if not keep and sends:
                self._forget_sends()
        else:
            keep = budget <= SEND_HISTORY
            if keep and len(sends) >= SEND_HISTORY:
                sends.popleft()
                self._dropped_n += 1
                self._untracked += 1
                self._aged_n = max(0, self._aged_n - 1)
        if keep:
            sends.append(now)
        else:
            self._untracked += 1
            self._untracked_at = now
        if self._spreading and not self._following:  # a probe (or a fallback call)
            # Where the reports lag, a probe is seen only once as many calls as they lag followed it: those of
            # the next probes (a probe's report shows the state of the one `_lead` probes earlier) or, for the
            # last probe the free calls pay for, calls at once (fewer probes, but the last one seen without
            # waiting for later ones the reserve could not pay for).
            group, free = self._probe_calls(), self._probe_free
            self._probe_sent_at = now if group > 1 and 0 < free <= group else None
            if self.window_s is None:  # the next one waits twice as long
                self._probe_s = min(PROBE_MAX_S, self._probe_s * PROBE_GROWTH)
        if self._fallback and (self._fallback_at is None or self.reflected_at >= self._fallback_at):
            self._fallback_at = now  # a new round of fallback calls
        self._spreading = self._fallback = self._following = False

    def unsent(self) -> None:
        """An admitted call did not leave after all (cancelled before it was sent)."""
        self.in_flight = max(0, self.in_flight - 1)
        if self._sends:
            self._sends.pop()
            self._aged_n = min(self._aged_n, len(self._sends))
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
        ring = self._ring
        count = self._reports + (previous is not None)  # reports before this one
        if self._cost is not None and self._cost < 1.0:  # the lag is not counted, no send time kept: no ring
            self.reflected_at = self._reflected_late = now
        else:
            ring[count % len(ring)] = now
            self._ring_flying[count % len(ring)] = self.in_flight
            self._ring_sent[count % len(ring)] = self._dropped_n + len(self._sends)
            # The state this report describes: `_lead` reports ago (the first one's, for the first reports).
            self._reflect(count)
        if previous is None:  # the first report: a baseline (usage before us may be in it)
            self._base_calls = self._changed + 1
            self._changed = 0
            self._base_pct = pct
            return
        self._reports += 1
        if self._cost is None and not self._fallen:  # before the first rise: how late the reports run
            self._measure_lag(pct, previous, count)
        if self.window_s is not None:
            self._pruned += self._prune()
        if pct < previous:
            self._fallen = True
        if pct > previous:
            calls = self._changed + 1
            first = self._cost is None and self._lead_exact and self._base_pct == 0
            if first and self._lead == self._reports:
                # The first rise after a 0 % baseline that lagged: its repeats were the lag, not calls that
                # left the percentage as it was. The rise describes the state at the baseline's answer, when
                # at least our `_base_calls` answered calls were counted: it is their cost (spread over the
                # repeats too, 3 calls late, 5 % read as 1.7 %: 54 calls left of 20, and an account's first
                # burst went on up to its in-flight cap; issue 9).
                calls = min(calls, self._base_calls)
            cost = self._rose(pct - previous, calls)
            self._changed = self._pruned = 0
            if cost < 100.0 / SEND_HISTORY:  # a large budget: its send times are no longer kept
                self._forget_sends()
        elif pct < previous:
            self._fell(previous - pct, self._pruned)
            self._changed = self._pruned = 0
        else:
            self._changed += 1
        # Exact reports need a settled cost (the first rises can mislead: a lag spreads one over several
        # calls); large budgets have neither.
        if self._cost is not None and self._cost >= 1.0 and len(self._rises) >= 2 and self._settled():
            self._counted(pct, count)
            if self.window_s is not None:
                most, least = self._outside_calls(pct, count)
                self._outside = float(most)
                self._seen_not_ours(least)

    def _settled(self) -> bool:
        """Whether the last two rises (at least two) cost the same per call."""
        (rise, calls), (last_rise, last_calls) = self._rises[-2], self._rises[-1]
        return last_rise / last_calls == rise / calls

    def _rose(self, rise: int, calls: int) -> float:
        """The percentage rose by `rise` over `calls` calls: the cost estimate (see the module docstring)."""
        self._rises.append((rise, calls))
        steps = self._steps()
        median = sorted(steps)[len(steps) // 2]
        # The average bounds the median from below: the rounding of integer reports cancels out in it. Only
        # the rises within one percent of the median are averaged: a cost between whole percents shows as its
        # two neighbours, while an outlier (a re-sent request counted twice, a burst of usage not ours) would
        # lift the average, read the budget low and stall the scope until the window rolls (d50c8ab).
        near = [rose for rose, step in zip(self._rises, steps, strict=True) if abs(step - median) <= 1.0]
        cost = self._cost = max(median, sum(r for r, _ in near) / sum(n for _, n in near))
        return cost

    def _reflect(self, count: int) -> None:
        """`reflected_at` and `_reflected_late` of the newest report (`count` reports before it)."""
        ring, lead = self._ring, self._lead
        self.reflected_at = ring[max(0, count - lead) % len(ring)]
        self._reflected_late = ring[max(0, count - lead + 1) % len(ring)] if lead else self.reflected_at

    def _measure_lag(self, pct: int, previous: int, count: int) -> None:
        """`_lead` (exact or not) from a report before the first rise; `count`: reports before it."""
        if pct == self._base_pct:
            # A repeat of the baseline before the first rise. A baseline of 0 % after our own call was
            # answered did not count that call: the reports were late by one more (and by exactly that much).
            exact = pct == 0
            self._lead = min(self._reports + exact, self.margin_calls + 2)
            self._lead_exact = exact and self._lead == self._reports + exact
            self._reflect(count)
        elif self._base_pct == 0 and not self._lead_exact:
            # The first rise straight after a 0 % baseline (no repeat): the baseline was one call late.
            self._lead_exact = self._lead == 0
            self._lead = max(self._lead, 1)
        elif self._lead == 0 and self._base_pct > 0:
            # The first rise straight after the baseline: what one call costs. Our calls answered until the
            # baseline, less the calls it counted, are how late it was (reports that only start after the
            # first calls show no repeat to count). None late: no usage but ours, reports on time (exactly:
            # a lag of one would need usage not ours of exactly one call).
            step = (pct - previous) / (self._changed + 1)
            late = self._base_calls - self._base_pct / step
            if step >= 1.0 and abs(late - round(late)) < 1e-6 and late > -0.5:
                self._lead = min(round(late), self.margin_calls + 2)
                self._lead_exact = self._lead == 0
                self._reflect(count)

    def _prune(self) -> int:
        """Drops the sends that were out of the window when the newest report's state was current; returns how
        many of them falls had not yet counted as aged."""
        window = self.window_s
        if window is None:
            return 0
        cutoff, sends, pruned = self.reflected_at - window - WINDOW_SLACK * window, self._sends, 0
        while sends and sends[0] <= cutoff:
            sends.popleft()
            pruned += 1
        self._dropped_n += pruned
        extra = max(0, pruned - self._aged_n)
        self._aged_n = max(0, self._aged_n - pruned)
        return extra

    def _outside_calls(self, pct: int, count: int) -> tuple[int, int]:
        """Calls in the newest report that were not ours, (at most, at least): its calls (the integer hides up
        to one percent) less our sends within the window when its state was current, those then in flight
        not counted (at most: the server may not have counted them yet) or counted (at least)."""
        window, cost = self.window_s, self._cost
        if window is None or cost is None or cost < 100.0 / SEND_HISTORY:
            return 0, 0
        sends, at = self._sends, self.reflected_at
        reported = math.ceil((pct + 1) / cost - 1e-9) - 1
        reflected = max(0, count - self._lead) % len(self._ring)
        sent = self._ring_sent[reflected] - self._dropped_n
        ours = max(0, sent - max(self._aged_n, bisect.bisect_right(sends, at - window)))  # as _left_by_log
        flying = min(ours, self._ring_flying[reflected])
        return max(0, reported - ours + flying), max(0, reported - ours)

    def _counted(self, pct: int, count: int) -> None:
        """Bounds of the window from one report that says exactly how many calls it counted: every call costs
        a whole number of percent, none was in flight when the state it describes was current (so each of our
        sends until then had arrived), and no more were counted than we sent. Calls leave the window oldest
        first: the newest n of our sends until then are the n it counted (the oldest of them still in: the
        window is longer than its age), the one before them had left (the window is at most its age). Usage
        not ours, or a lag not measured, would make both look shorter than they are: the upper bound only
        narrows one a fall gave, where it does not contradict the lower ones (see `_bound`)."""
        cost, sends, reflected = self._cost, self._sends, max(0, count - self._lead) % len(self._ring)
        if cost is None or cost < 1.0 or pct >= 100 or self._ring_flying[reflected]:
            return
        counted = pct / cost
        n = round(counted)
        if abs(counted - n) > 1e-6:
            return
        at = self.reflected_at
        sent = self._ring_sent[reflected] - self._dropped_n  # our sends until then, in `_sends`
        if sent < 0:
            return
        self._excess = max(0, n - (sent - self._aged_n))
        self._seen_not_ours(self._excess)
        if self._shared(at):
            return
        if n > sent or (n == sent and self._untracked):  # usage not ours, or our oldest sends' times lost
            return
        if n:
            self._window_lo = max(self._window_lo, at - sends[sent - n])
        if n < sent and self.window_s is not None:  # the first bound comes from a fall (see `_fell`)
            self._aged_n = max(self._aged_n, sent - n)
            # From the latest time the report can describe (a re-send unseen shortens the lag): a state
            # later than `at` counted these n among more of our sends, and the one before them is newer.
            self._bound(self._reflected_late - sends[sent - n - 1])

    def _seen_not_ours(self, calls: int) -> None:
        """A report counted `calls` calls beyond ours: one may be a request the transport re-sent unseen (the
        lag is then not known exactly: two calls of margin); more are usage not ours."""
        if calls >= 1:
            self._lead_exact = False
        if calls >= 2:
            self._shared_at = self.reflected_at

    def _shared(self, now: float) -> bool:
        return now - self._shared_at <= (self.max_age_s if self.window_s is None else self.window_s)

    def _bound(self, bound: float) -> None:
        """An upper bound of the window: the tightest one stands, unless it contradicts a lower bound (then
        something was misread: usage not ours that aged, a lag measured short; the looser bound stays, the
        safe side)."""
        if self.window_s is None:
            self.window_s = max(bound, self._window_lo)
        elif self._window_lo < bound < self.window_s:
            self.window_s = bound

    def _forget_sends(self) -> None:
        if self._sends:
            self._untracked += len(self._sends)
            self._untracked_at = max(self._untracked_at, self._sends[-1])
            self._dropped_n += len(self._sends)
            self._sends.clear()
            self._aged_n = 0

    def _fell(self, drop_pct: int, pruned: int) -> None:
        """The percentage fell: calls aged out of the window since the last report. Counted as our oldest
        sends not yet counted (their ages, at the time the report describes, bound the window from above),
        beyond the `pruned` ones the window bound took out since the last change (each report with the same
        percentage had a call age out too: those count here, once); the probes stop."""
        self._probe_s = PROBE_FIRST_S
        cost = self._cost
        if cost is None:
            return
        aged = round(drop_pct / cost) + self._changed + 1 - pruned
        untracked = min(aged, self._untracked)  # the oldest sends: their times were not kept
        self._untracked -= untracked
        # Calls counted that we did not send as such (a request the transport re-sent unseen, usage not ours)
        # may have been among them: the margin's worth of them is not taken as ours (a later send taken for
        # aged would make the window look shorter and the log count too few).
        aged -= untracked + max(self._margin(), self._excess)
        sends = self._sends
        if aged <= 0 or self._aged_n + aged > len(sends):  # (more aged than we sent: usage not ours)
            return
        self._aged_n += aged
        newest_aged = sends[self._aged_n - 1]
        at = self._reflected_late  # (a re-send unseen shortens the lag: `reflected_at` can bound it short)
        if at > newest_aged:
            # An upper bound of the window; the largest one seen stands (the safe side: a lag not measured,
            # usage not ours that aged, would make it look shorter). `_counted` narrows it, cross-checked.
            bound = at - newest_aged
            self.window_s = bound if self.window_s is None else max(self.window_s, bound)
