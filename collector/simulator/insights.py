"""`/{ig-user-id}/insights` and `/{ig-media-id}/insights` (graph-api.md §2, §3), as pure functions of
the world, the parameters and `now`. They return the response body or raise `rules.ApiError`.

Validation order (each step fails the whole call, like Meta):
  account: metric names (impressions → v22 message; unknown → "metric[i] must be one of") → metric_type
  (total_value required / incompatible) → period → breakdown support ("An unknown error has occurred.",
  code 1, HTTP 500) → demographics timeframe/breakdown → since/until (30-day rule) → follower_count window.
  media: metric names for the token's login → object state (2108006; expired story → 100/33
  GraphMethodException; < 5 viewers → code 10) → product-type support (all offenders listed) → breakdown.

Simulator-invented wording, marked [INF] in rules.py: wrong period, missing period/metric/timeframe,
bad demographics breakdown, unparsable since/until.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from collector.simulator import rules
from collector.simulator import world as world_mod

PERIODS = ("day", "week", "days_28", "month", "lifetime", "total_over_range")
MAX_RANGE_S = 2_592_000
# Builds an absolute URL to the same endpoint with some parameters replaced (token included, like Meta).
UrlFor = Callable[[dict[str, str]], str]


def _metric_list(params: dict[str, str]) -> list[str]:
    raw = params.get("metric", "")
    metrics = list(dict.fromkeys(m.strip() for m in raw.split(",") if m.strip()))
    if not metrics:
        raise rules.ApiError(rules.invalid_parameter("The parameter metric is required"))
    return metrics


def _item(object_id: str, metric: str, period: str) -> dict[str, Any]:
    return {"name": metric, "period": period,
            "title": rules.TITLES.get(metric, metric.replace("_", " ").capitalize()),
            "description": f"Simulated {metric}.", "id": f"{object_id}/insights/{metric}/{period}"}


def _timestamp(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(float(raw))
    except ValueError:
        message = f"Param {name} must be a valid unix timestamp"
        raise rules.ApiError(rules.invalid_parameter(message)) from None


def _check_account_request(metrics: list[str], params: dict[str, str]) -> tuple[str, list[str]]:
    """Validate names, metric_type, period and breakdown; return (metric_type, breakdown keys)."""
    for i, metric in enumerate(metrics):
        if metric == "impressions":
            raise rules.ApiError(rules.impressions_v22())
        if metric not in rules.ACCOUNT_METRICS:
            raise rules.ApiError(rules.unknown_metric(i, rules.ACCOUNT_METRIC_ORDER))
    metric_type = params.get("metric_type", "time_series")
    if metric_type not in ("time_series", "total_value"):
        raise rules.ApiError(rules.invalid_parameter(
            "metric_type must be one of the following values: time_series, total_value"))
    if metric_type == "total_value":
        for metric in metrics:
            if metric in ("follower_count", "online_followers"):
                raise rules.ApiError(rules.incompatible_metric_type(metric, "total_value"))
    else:
        needing = [m for m in metrics if m in rules.ACCOUNT_TOTAL_VALUE_ONLY or m in rules.DEMOGRAPHICS]
        if needing:
            raise rules.ApiError(rules.needs_total_value(needing))
    period = params.get("period")
    if not period:
        raise rules.ApiError(rules.invalid_parameter("The parameter period is required"))
    if period not in PERIODS:
        raise rules.ApiError(rules.invalid_parameter(
            f"period must be one of the following values: {', '.join(PERIODS)}"))
    wrong = [m for m in metrics if period != ("lifetime" if m in rules.LIFETIME_METRICS else "day")]
    if wrong:
        raise rules.ApiError(rules.incompatible_period(wrong, period))
    breakdown = params.get("breakdown", "") if metric_type == "total_value" else ""  # ignored for series
    keys = [k.strip() for k in breakdown.split(",") if k.strip()]
    for metric in metrics:
        allowed = rules.ACCOUNT_BREAKDOWNS.get(metric, frozenset())
        if any(k not in allowed for k in keys):
            raise rules.ApiError(rules.unknown_error(), status=500)
    return metric_type, keys


def _window(params: dict[str, str], metrics: list[str], now_s: float) -> tuple[int, int]:
    """since/until (default: the last 24 h), checked against the 30-day and follower_count rules."""
    since_s, until_s = _timestamp(params, "since"), _timestamp(params, "until")
    if until_s is None:
        until_s = int(now_s) if since_s is None else max(int(now_s), since_s)
    if since_s is None:
        since_s = until_s - 86400  # the current doc: "looks back 24 hours"
    if until_s - since_s > MAX_RANGE_S:
        raise rules.ApiError(rules.range_too_long())
    if since_s > until_s:
        raise rules.ApiError(rules.invalid_parameter("The since parameter must be before until"))
    today = world_mod.pacific_date(now_s)
    if "follower_count" in metrics and since_s < world_mod.day_start_s(today - timedelta(days=30)):
        raise rules.ApiError(rules.follower_count_window())
    return since_s, until_s


def account_insights(world: world_mod.World, account: world_mod.SimAccount, params: dict[str, str],
                     now_s: float, url_for: UrlFor) -> dict[str, Any]:
    metrics = _metric_list(params)
    metric_type, keys = _check_account_request(metrics, params)
    if any(m in rules.DEMOGRAPHICS for m in metrics):
        return {"data": _demographics(world, account, metrics, keys, params)}
    since_s, until_s = _window(params, metrics, now_s)
    today = world_mod.pacific_date(now_s)
    days = world_mod.pacific_days(since_s, until_s, now_s)
    first_day = world.first_data_day()
    data: list[dict[str, Any]] = []
    for metric in metrics:
        if account.low_followers and metric in rules.FOLLOWER_GATED:
            continue  # §2.5: omitted, never zeros
        if metric == "online_followers":
            oldest = today - timedelta(days=30)
            values: list[dict[str, Any]] = [
                {"value": world.online_followers(account.ig_user_id, d),
                 "end_time": world_mod.day_end_time(d)}
                for d in days if d >= max(oldest, first_day)]
            if values:
                data.append({**_item(account.ig_user_id, metric, "lifetime"), "values": values})
        elif metric_type == "time_series":
            series = [d for d in days if d < today] if metric == "follower_count" else days
            values = []
            for d in series:
                value = world.account_day_value(account.ig_user_id, metric, d)
                if value is not None:
                    values.append({"value": value, "end_time": world_mod.day_end_time(d)})
            if values:
                data.append({**_item(account.ig_user_id, metric, "day"), "values": values})
        else:
            total = world.account_window_total(account.ig_user_id, metric, since_s, until_s, now_s)
            if total is None:
                continue
            total_value: dict[str, Any] = {"value": total}
            if keys:
                split = world.account_breakdown_values(account.ig_user_id, metric, ",".join(keys), total)
                total_value["breakdowns"] = [{"dimension_keys": keys, "results": [
                    {"dimension_values": list(dims), "value": v} for dims, v in split.items()]}]
            data.append({**_item(account.ig_user_id, metric, "day"), "total_value": total_value})
    span = until_s - since_s
    paging = {"previous": url_for({"since": str(since_s - span), "until": str(since_s)}),
              "next": url_for({"since": str(until_s), "until": str(until_s + span)})}
    return {"data": data, "paging": paging}


def _demographics(world: world_mod.World, account: world_mod.SimAccount, metrics: list[str],
                  keys: list[str], params: dict[str, str]) -> list[dict[str, Any]]:
    if any(m not in rules.DEMOGRAPHICS for m in metrics):
        wrong = [m for m in metrics if m not in rules.DEMOGRAPHICS]
        raise rules.ApiError(rules.incompatible_period(wrong, "lifetime"))
    timeframe = params.get("timeframe", "")
    if not timeframe:
        raise rules.ApiError(rules.invalid_parameter("The parameter timeframe is required for demographics"))
    for metric in metrics:
        allowed = rules.DEMOGRAPHIC_TIMEFRAMES[metric]
        if timeframe not in allowed:
            raise rules.ApiError(rules.invalid_parameter(
                f"timeframe must be one of the following values: {', '.join(sorted(allowed))}"))
    if len(keys) != 1:
        raise rules.ApiError(rules.invalid_parameter(
            "Demographics metrics need exactly one breakdown: age, city, country or gender"))
    breakdown = keys[0]
    with_timeframe = world.knobs.demographics_timeframe_key
    data = []
    for metric in metrics:
        values = world.demographics(account.ig_user_id, metric, breakdown, timeframe)
        if not values:
            continue  # < 100 followers / engagements: not returned
        results = [{"dimension_values": [timeframe.upper(), d] if with_timeframe else [d], "value": v}
                   for d, v in values.items()]
        dimension_keys = ["timeframe", breakdown] if with_timeframe else [breakdown]
        # The doc example carries no total `value` for demographics (§2.6).
        data.append({**_item(account.ig_user_id, metric, "lifetime"),
                     "total_value": {"breakdowns": [{"dimension_keys": dimension_keys, "results": results}]}})
    return data


def media_insights(world: world_mod.World, login: world_mod.Login, media: world_mod.SimMedia,
                   params: dict[str, str], now_s: float) -> dict[str, Any]:
    metrics = _metric_list(params)
    valid = rules.MEDIA_METRIC_ORDER
    if login == "instagram":
        valid = tuple(m for m in valid if m not in rules.FACEBOOK_LOGIN_ONLY)
    for i, metric in enumerate(metrics):
        if metric not in valid:
            raise rules.ApiError(rules.unknown_metric(i, valid))
    reason = world.media_unavailable(media, now_s)
    if reason == "pre_conversion":
        raise rules.ApiError(rules.pre_conversion())
    if reason == "story_expired":
        raise rules.ApiError(rules.object_not_found(media.media_id))
    if reason == "not_enough_viewers":
        raise rules.ApiError(rules.not_enough_viewers())
    supported = world.supported_media_metrics(media, login)
    offenders = [m for m in metrics if m not in supported]
    if offenders:
        raise rules.ApiError(rules.unsupported_media_metrics(offenders))
    breakdown = params.get("breakdown", "")
    if breakdown:
        spec = rules.MEDIA_BREAKDOWNS.get(breakdown)
        if spec is None or any(m != spec[0] for m in metrics):
            raise rules.ApiError(rules.unknown_error(), status=500)
    data = []
    for metric in metrics:
        value = world.media_metric_value(media.media_id, metric)
        item = _item(media.media_id, metric, "lifetime")
        if breakdown:
            results = [{"dimension_values": [d], "value": v}
                       for d, v in world.media_breakdown(media.media_id, metric, breakdown).items()]
            item["values"] = [{"value": value}]
            item["total_value"] = {"value": value, "breakdowns": [
                {"dimension_keys": [breakdown], "results": results}]}
        elif metric == "views" and world.knobs.views_as_total_value:
            item["total_value"] = {"value": value}
        else:
            item["values"] = [{"value": value}]
        data.append(item)
    return {"data": data}
