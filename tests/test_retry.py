"""RetryPolicy.decide(): pure, tested without sleeping."""

from __future__ import annotations

import pytest

from collector import exceptions, retry, settings

SETTINGS = settings.RetrySettings(max_attempts=5, base_delay_s=0.5, max_delay_s=30.0,
                                  throttle_base_delay_s=30.0, throttle_max_attempts=8)
POLICY = retry.RetryPolicy(SETTINGS, pause_cap_s=3600.0)


@pytest.mark.parametrize("error", [
    exceptions.ServerError("boom", code=1, http_status=500),
    exceptions.ServerError("boom", code=2, is_transient=True, http_status=500),
    exceptions.ServerError("bad gateway", http_status=502),
    exceptions.GraphTransportError("timeout"),
])
def test_transient_full_jitter_exponential(error: exceptions.GraphError) -> None:
    # ceiling doubles per attempt: 0.5, 1, 2, 4; rand scales it (full jitter, from 0 up to the ceiling)
    assert POLICY.decide(error, 1, 1.0) == pytest.approx(0.5)
    assert POLICY.decide(error, 2, 1.0) == pytest.approx(1.0)
    assert POLICY.decide(error, 4, 0.5) == pytest.approx(2.0)
    assert POLICY.decide(error, 3, 0.0) == 0.0
    # bounded: 5 tries in all, so the 5th failure gives up
    assert POLICY.decide(error, 5, 0.5) is None


def test_transient_delay_capped() -> None:
    policy = retry.RetryPolicy(settings.RetrySettings(max_attempts=50, base_delay_s=1.0, max_delay_s=30.0))
    assert policy.decide(exceptions.GraphTransportError(), 20, 1.0) == pytest.approx(30.0)


def test_throttle_uses_regain_estimate_capped() -> None:
    error = exceptions.Throttled("limit", code=80002, regain_s=600.0)
    assert POLICY.decide(error, 1, 0.3) == 600.0
    long = exceptions.Throttled("limit", code=80002, regain_s=86_400.0)
    assert POLICY.decide(long, 1, 0.3) == 3600.0


def test_throttle_without_estimate_backs_off_from_base() -> None:
    error = exceptions.Throttled("limit", code=4)
    # attempt n waits within [base * 2^(n-1), base * 2^n], never less than the base
    assert POLICY.decide(error, 1, 0.0) == pytest.approx(30.0)
    assert POLICY.decide(error, 1, 1.0) == pytest.approx(60.0)
    assert POLICY.decide(error, 2, 0.5) == pytest.approx(90.0)
    assert POLICY.decide(error, 7, 1.0) == pytest.approx(3600.0)  # capped by pause_cap_s
    assert POLICY.decide(error, 8, 0.5) is None


def test_zero_regain_falls_back_to_backoff() -> None:
    error = exceptions.Throttled("limit", code=17, regain_s=0.0)
    assert POLICY.decide(error, 1, 0.0) == pytest.approx(30.0)


@pytest.mark.parametrize("error", [
    exceptions.TokenInvalid("expired", code=190, subcode=463),
    exceptions.PermissionDenied("no", code=10),
    exceptions.NotEnoughViewers("few", code=10),
    exceptions.PreConversionMedia("old", code=100, subcode=2108006),
    exceptions.UnsupportedMetric("bad", code=100, metrics=frozenset({"plays"})),
    exceptions.MetricTypeRequired("tv", code=100),
    exceptions.RangeTooLong("long", code=100),
    exceptions.InvalidParameter("bad", code=100),
    exceptions.GraphApiError("other", http_status=404),
])
def test_permanent_errors_never_retried(error: exceptions.GraphError) -> None:
    assert POLICY.decide(error, 1, 0.5) is None


def test_default_pause_cap_comes_from_rate_limit_settings() -> None:
    policy = retry.RetryPolicy(settings.RetrySettings(throttle_base_delay_s=3000.0))
    assert policy.decide(exceptions.Throttled(code=4), 3, 1.0) == settings.RateLimitSettings().pause_cap_s


def test_object_not_found_is_retried_once_then_taken_at_its_word() -> None:
    """100/33 is sometimes a disguised throttle (reference §6.3): one more try, then permanent."""
    error = exceptions.ObjectNotFound("gone", code=100, subcode=33)
    assert retry.is_transient(error)
    wait = POLICY.decide(error, 1, 0.5)
    assert wait is not None and wait <= POLICY.max_delay_s
    assert POLICY.decide(error, retry.OBJECT_NOT_FOUND_ATTEMPTS, 0.5) is None
