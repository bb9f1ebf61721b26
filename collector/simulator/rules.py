"""The simulator's metric rules: which metric names exist, which product types and logins accept them,
which need which parameters, and Meta's error messages (graph-api.md §1.3, §2, §3, §7).

This is the simulator's own truth table, deliberately separate from `collector/catalogue.py`: the
collector's catalogue is what the client *believes*; this is what the fake server *enforces*, including
the observed drift from the docs (e.g. `shares` rejected on IMAGE posts, §3.1 OBS).
"""

from __future__ import annotations

from typing import Any

# --- media insights (§3.1, v24/v25 table) -----------------------------------------------------------

FEED_METRICS = frozenset({
    "comments", "likes", "saved", "shares", "reach", "views", "total_interactions", "reposts",
    "follows", "profile_visits", "profile_activity", "facebook_views",
    "total_likes", "total_comments", "total_views",
})
REELS_METRICS = frozenset({
    "comments", "likes", "saved", "shares", "reach", "views", "total_interactions", "reposts",
    "ig_reels_avg_watch_time", "ig_reels_video_view_total_time", "reels_skip_rate",
    "crossposted_views", "facebook_views", "total_likes", "total_comments", "total_views",
})
STORY_METRICS = frozenset({
    "shares", "reach", "views", "total_interactions", "reposts", "follows", "profile_visits",
    "profile_activity", "navigation", "replies", "facebook_views", "total_views",
})
METRICS_BY_PRODUCT_TYPE: dict[str, frozenset[str]] = {
    "FEED": FEED_METRICS, "REELS": REELS_METRICS, "STORY": STORY_METRICS,
}
FACEBOOK_LOGIN_ONLY = frozenset({"total_likes", "total_comments", "total_views"})
# Only served for media cross-posted to Facebook ("throws if not shared to Facebook").
CROSSPOST_ONLY = frozenset({"crossposted_views", "facebook_views"})

# The order Meta lists valid names in its "metric[0] must be one of" message (fixed, for exact bodies).
MEDIA_METRIC_ORDER: tuple[str, ...] = (
    "comments", "crossposted_views", "facebook_views", "follows", "ig_reels_avg_watch_time",
    "ig_reels_video_view_total_time", "likes", "navigation", "profile_activity", "profile_visits",
    "reach", "reels_skip_rate", "replies", "reposts", "saved", "shares", "total_comments",
    "total_interactions", "total_likes", "total_views", "views",
)

# Media breakdowns (§3.1): the breakdown, the one metric that accepts it, its (lowercase) values.
MEDIA_BREAKDOWNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "action_type": ("profile_activity", ("bio_link_clicked", "call", "direction", "email", "other", "text")),
    "story_navigation_action_type": ("navigation", ("tap_forward", "tap_back", "tap_exit", "swipe_forward")),
}
# Metrics whose plain value is the sum of their breakdown (so both forms agree).
MEDIA_BREAKDOWN_OF: dict[str, str] = {metric: bd for bd, (metric, _) in MEDIA_BREAKDOWNS.items()}

# Values that are not counts: never grow with the world's epoch.
NON_COUNTING = frozenset({"reels_skip_rate", "ig_reels_avg_watch_time"})

# --- account insights (§2.2) -------------------------------------------------------------------------

# Metrics that only accept metric_type=total_value (every non-reach interaction metric, §2.3).
ACCOUNT_TOTAL_VALUE_ONLY = frozenset({
    "accounts_engaged", "comments", "follows_and_unfollows", "likes", "profile_links_taps", "replies",
    "reposts", "saves", "shares", "total_interactions", "views", "profile_views", "website_clicks",
})
ACCOUNT_TIME_SERIES = frozenset({"reach", "follower_count"})  # reach takes either form
DEMOGRAPHICS = frozenset({"follower_demographics", "engaged_audience_demographics"})
ACCOUNT_METRIC_ORDER: tuple[str, ...] = (
    "accounts_engaged", "comments", "engaged_audience_demographics", "follower_count",
    "follower_demographics", "follows_and_unfollows", "likes", "online_followers", "profile_links_taps",
    "profile_views", "reach", "replies", "reposts", "saves", "shares", "total_interactions", "views",
    "website_clicks",
)
ACCOUNT_METRICS = frozenset(ACCOUNT_METRIC_ORDER)
# Metrics not served to accounts under 100 followers (§2.5): omitted from `data`, never zeros.
FOLLOWER_GATED = frozenset({
    "follower_count", "online_followers", "follower_demographics", "follows_and_unfollows",
    "engaged_audience_demographics",
})
# Periods each metric accepts.
LIFETIME_METRICS = DEMOGRAPHICS | {"online_followers"}

MEDIA_PRODUCT_TYPE_STYLES: tuple[tuple[str, ...], ...] = (
    ("FEED", "REELS", "STORY", "AD"),
    ("POST", "CAROUSEL_CONTAINER", "REEL", "STORY"),  # the doc's own example vocabulary (§2.2)
)
ACCOUNT_BREAKDOWN_VALUES: dict[str, tuple[str, ...]] = {
    "follow_type": ("FOLLOWER", "NON_FOLLOWER", "UNKNOWN"),
    "contact_button_type": (
        "BOOK_NOW", "CALL", "DIRECTION", "EMAIL", "INSTANT_EXPERIENCE", "TEXT", "UNDEFINED"),
    # media_product_type: per account, one of MEDIA_PRODUCT_TYPE_STYLES
}
ACCOUNT_BREAKDOWNS: dict[str, frozenset[str]] = {
    "reach": frozenset({"media_product_type", "follow_type"}),
    "views": frozenset({"media_product_type", "follow_type"}),
    "comments": frozenset({"media_product_type"}),
    "likes": frozenset({"media_product_type"}),
    "saves": frozenset({"media_product_type"}),
    "shares": frozenset({"media_product_type"}),
    "total_interactions": frozenset({"media_product_type"}),
    "follows_and_unfollows": frozenset({"follow_type"}),
    "profile_links_taps": frozenset({"contact_button_type"}),
    "follower_demographics": frozenset({"age", "city", "country", "gender"}),
    "engaged_audience_demographics": frozenset({"age", "city", "country", "gender"}),
}
DEMOGRAPHIC_TIMEFRAMES: dict[str, frozenset[str]] = {
    "follower_demographics": frozenset({
        "last_14_days", "last_30_days", "last_90_days", "prev_month", "this_month", "this_week"}),
    "engaged_audience_demographics": frozenset({"this_month", "this_week"}),  # v20+ (§1.3)
}

TITLES: dict[str, str] = {
    "reach": "Accounts reached", "views": "Views", "follower_count": "Follower count",
    "online_followers": "Online followers", "follower_demographics": "Follower demographics",
    "engaged_audience_demographics": "Engaged audience demographics",
    "accounts_engaged": "Accounts engaged", "total_interactions": "Content interactions",
    "profile_activity": "Profile activity", "navigation": "Navigation",
}

# --- error bodies (§1.3, §2.3, §2.4, §3.2, §6.3, §7) -----------------------------------------------

Error = dict[str, Any]


def error(message: str, code: int, *, subcode: int | None = None, kind: str = "OAuthException",
          is_transient: bool | None = None, **extra: Any) -> Error:
    body: Error = {"message": message, "type": kind, "code": code}
    if subcode is not None:
        body["error_subcode"] = subcode
    if is_transient is not None:
        body["is_transient"] = is_transient
    body.update(extra)
    return body


def unknown_metric(index: int, valid: tuple[str, ...]) -> Error:
    return error(f"(#100) metric[{index}] must be one of the following values: {', '.join(valid)}", 100)


def impressions_v22() -> Error:
    return error(
        "(#100) Starting from version 22 and above, the impressions metric is no longer supported for the "
        "queried user. Please refer to the documentation at "
        "https://developers.facebook.com/docs/instagram-api/reference/ig-user/insights for a list of "
        "supported metrics.", 100)


def unsupported_media_metrics(metrics: list[str]) -> Error:
    return error(f"(#100) The Media Insights API does not support the {', '.join(metrics)} metric for this "
                 "media product type.", 100)


def needs_total_value(metrics: list[str]) -> Error:
    return error(f"(#100) The following metrics ({', '.join(metrics)}) should be specified with parameter "
                 "metric_type=total_value", 100)


def incompatible_metric_type(metric: str, metric_type: str) -> Error:
    return error(f"(#100) The following metric ({metric}) is incompatible with the metric type "
                 f"({metric_type})", 100)


def incompatible_period(metrics: list[str], period: str) -> Error:
    # [INF] wording invented by the simulator: the reference quotes no message for this case.
    return error(f"(#100) The following metrics ({', '.join(metrics)}) are incompatible with the period "
                 f"({period})", 100)


def range_too_long() -> Error:
    return error("(#100) There cannot be more than 30 days (2592000 s) between since and until", 100)


def follower_count_window() -> Error:
    return error("(#100) (follower_count) metric only supports querying data for the last 30 days "
                 "excluding the current day", 100)


def unknown_error() -> Error:
    # Breakdown not supported by a metric of the call (§2.1, §3.1): code 1, served with HTTP 500.
    return error("An unknown error has occurred.", 1)


def invalid_parameter(message: str) -> Error:
    return error(f"(#100) {message}", 100)


def object_not_found(object_id: str) -> Error:
    return error(
        f"Unsupported get request. Object with ID '{object_id}' does not exist, cannot be loaded due to "
        "missing permissions, or does not support this operation. Please read the Graph API documentation "
        "at https://developers.facebook.com/docs/graph-api", 100, subcode=33, kind="GraphMethodException")


def nonexisting_field(field: str, node_type: str) -> Error:
    return error(f"(#100) Tried accessing nonexisting field ({field}) on node type ({node_type})", 100)


def pre_conversion() -> Error:
    # Exactly the body of §3.2 (fbtrace_id is added by the server like on every error).
    return error(
        "Invalid parameter", 100, subcode=2108006, is_transient=False,
        error_data={"blame_field_specs": [[""]]},
        error_user_title="Media posted before business account conversion",
        error_user_msg="The media was posted before the most recent time that the user's account was "
                       "converted to a business account from a personal account.")


def not_enough_viewers() -> Error:
    return error("(#10) Not enough viewers for the media to show insights", 10)


def account_throttled() -> Error:
    return error("(#80002) There have been too many calls to this Instagram account. Wait a bit and try "
                 "again. For more info, please refer to "
                 "https://developers.facebook.com/docs/graph-api/overview/rate-limiting.", 80002)


def user_throttled() -> Error:
    """The user behind the access token hit its limit (§6.3, [OBS] wording; no subcode, no is_transient)."""
    return error("(#17) User request limit reached", 17)


def app_throttled() -> Error:
    return error("(#4) Application request limit reached", 4, is_transient=True)


def server_unknown() -> Error:
    return error("An unknown error occurred", 1, is_transient=False)


def server_transient() -> Error:
    return error("An unexpected error has occurred. Please retry your request later.", 2, is_transient=True)


def token_missing() -> Error:
    return error("An access token is required to request this resource.", 104)


def token_unparsable() -> Error:
    return error("Invalid OAuth access token - Cannot parse access token", 190)


TOKEN_MESSAGES: dict[int, str] = {
    460: "Error validating access token: The session has been invalidated because the user changed their "
         "password or Facebook has changed the session for security reasons.",
    # 463: built from the expiry time, see token_expired()
    467: "Error validating access token: The session is invalid because the user logged out.",
}


def token_invalid(subcode: int) -> Error:
    return error(TOKEN_MESSAGES[subcode], 190, subcode=subcode)


def token_expired(expired_at: str, now: str) -> Error:
    return error(f"Error validating access token: Session has expired on {expired_at}. The current time is "
                 f"{now}.", 190, subcode=463)


class ApiError(Exception):
    """An error envelope the simulator answers with (HTTP `status`, body `{"error": error}`)."""

    def __init__(self, error: Error, status: int = 400) -> None:
        super().__init__(error["message"])
        self.error = error
        self.status = status
