"""Retry policy as data, and the pure decision: how long to wait before the next try, or give up.

Only two families are worth another try:
- transient faults (`ServerError`: codes 1, 2, `is_transient`, HTTP 5xx; `GraphTransportError`: timeouts,
  resets, truncated or non-JSON bodies): exponential backoff with full jitter, `max_attempts` tries in all;
- throttles (`Throttled`): Meta's own regain estimate when it gave one (capped), else exponential backoff
  from `throttle_base_delay_s`; `throttle_max_attempts` tries in all.
  Object not found (`ObjectNotFound`, 100/33) counts as transient for `OBJECT_NOT_FOUND_ATTEMPTS` tries in
  all: Meta also sends it as a disguised throttle (reference §6.3, airbyte #4028); after that it is taken at
  its word, the object is gone or not permitted (docs/errors.md);
Everything else (bad parameter, unsupported metric, token, permission, 2108006, not enough viewers) is
permanent: retrying cannot change Meta's answer.

The two families count their attempts separately (the caller keeps one counter per family), so a call that
was throttled twice still gets its full transient budget.
"""

from __future__ import annotations

from collector import exceptions, settings

# Tries in all of a call answered 100/33: one retry tells a passing disguised throttle from a real absence.
OBJECT_NOT_FOUND_ATTEMPTS = 2


class RetryPolicy:
    """The retry rules of Graph calls, built from `[retry]` and `[rate_limit].pause_cap_s`."""

    __slots__ = ("base_delay_s", "max_attempts", "max_delay_s", "pause_cap_s", "throttle_base_delay_s",
                 "throttle_max_attempts")

    def __init__(self, retry: settings.RetrySettings, *,
                 pause_cap_s: float = settings.RateLimitSettings().pause_cap_s) -> None:
        self.max_attempts = retry.max_attempts
        self.base_delay_s = retry.base_delay_s
        self.max_delay_s = retry.max_delay_s
        self.throttle_base_delay_s = retry.throttle_base_delay_s
        self.throttle_max_attempts = retry.throttle_max_attempts
        self.pause_cap_s = pause_cap_s

    def decide(self, error: exceptions.GraphError, attempt: int, rand: float) -> float | None:
        """Seconds to wait before try number `attempt + 1`, or None to give up.

        `attempt` is how many tries of this family have failed so far (1 after the first failure);
        `rand` is a uniform draw from [0, 1) supplied by the caller, so the decision is deterministic.
        """
        if isinstance(error, exceptions.Throttled):
            if attempt >= self.throttle_max_attempts:
                return None
            if error.regain_s is not None and error.regain_s > 0:
                return min(error.regain_s, self.pause_cap_s)
            # Full jitter above a floor: a throttled scope must not be called again at once (every call
            # during a block extends it), so the wait is drawn from [base * 2^(n-1), base * 2^n].
            low = min(self.pause_cap_s, self.throttle_base_delay_s * 2.0 ** (attempt - 1))
            high = min(self.pause_cap_s, low * 2.0)
            return low + rand * (high - low)
        if is_transient(error):
            limit = (OBJECT_NOT_FOUND_ATTEMPTS if isinstance(error, exceptions.ObjectNotFound)
                     else self.max_attempts)
            if attempt >= min(limit, self.max_attempts):
                return None
            # Full jitter (AWS "Exponential Backoff And Jitter"): uniform in [0, min(cap, base * 2^(n-1))].
            ceiling = min(self.max_delay_s, self.base_delay_s * 2.0 ** (attempt - 1))
            return rand * ceiling
        return None


def is_transient(error: exceptions.GraphError) -> bool:
    """True for the faults another identical try may not meet again (100/33 included: see the module doc)."""
    return isinstance(error, exceptions.ServerError | exceptions.GraphTransportError
                      | exceptions.ObjectNotFound)
