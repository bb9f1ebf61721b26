"""The metric catalogue: which metrics to ask for, per API version, product type and login flow.

Data, not code paths: defaults are current for v22+ (verified against the v24/v25 tables of reference §2.2
and §3.1) with no deprecated metric (`impressions`, `plays`, `video_views`, `engagement`, …). Config can
replace any set (`[collect.metrics]`). Meta's reality drifts from its docs per media type, so `Capabilities`
remembers what Meta rejected, per login flow, product type and media type, and later calls leave it out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field

from collector import models

# Metrics only served to Instagram API with Facebook Login (reference §1.1, §3.1).
# How long calls of a kind wait for its first call (Capabilities.first_call) before going on without it.
PROBE_WAIT_S = 5.0

FACEBOOK_LOGIN_ONLY = frozenset({"total_likes", "total_comments", "total_views"})

# Deprecated or removed: never requested by default, and refused in config overrides with a clear message.
DEPRECATED = frozenset({
    "impressions", "plays", "video_views", "engagement", "clips_replays_count",
    "ig_reels_aggregated_all_plays_count", "carousel_album_impressions", "carousel_album_reach",
    "carousel_album_engagement", "carousel_album_saved", "carousel_album_video_views", "taps_forward",
    "taps_back", "exits", "email_contacts", "get_direction_clicks", "text_message_clicks",
    "phone_call_clicks", "audience_gender_age", "audience_locale", "audience_country", "audience_city",
})

MEDIA_METRICS: dict[str, tuple[str, ...]] = {
    "FEED": (
        "reach", "views", "likes", "comments", "saved", "shares", "total_interactions", "reposts",
        "follows", "profile_visits", "profile_activity", "total_likes", "total_comments", "total_views",
    ),
    "REELS": (
        "reach", "views", "likes", "comments", "saved", "shares", "total_interactions", "reposts",
        "ig_reels_avg_watch_time", "ig_reels_video_view_total_time", "reels_skip_rate",
        "total_likes", "total_comments", "total_views",
    ),
    "STORY": (
        "reach", "views", "shares", "total_interactions", "reposts", "follows", "profile_visits",
        "profile_activity", "navigation", "replies", "total_views",
    ),
}

# Extra calls for breakdown rows, per product type: (metric, breakdown). A breakdown applies to the whole
# call and a metric without it fails the call, so each is asked for on its own (reference §3.1).
MEDIA_BREAKDOWNS: dict[str, tuple[tuple[str, str], ...]] = {
    "FEED": (("profile_activity", "action_type"),),
    "REELS": (),
    "STORY": (("profile_activity", "action_type"), ("navigation", "story_navigation_action_type")),
}

# Daily account metrics that Meta only serves with metric_type=total_value: one call per Pacific day.
ACCOUNT_TOTAL_VALUE: tuple[str, ...] = (
    "accounts_engaged", "comments", "follows_and_unfollows", "likes", "profile_links_taps", "replies",
    "reposts", "saves", "shares", "total_interactions", "views",
)
# Daily series fetched in ≤ 30-day windows (reach is unique accounts: never summed, always asked per day).
ACCOUNT_TIME_SERIES: tuple[str, ...] = ("reach",)
# follower_count: time series, only the last 30 days excluding today, rejects metric_type=total_value.
FOLLOWER_COUNT = "follower_count"
# Metrics that Meta withholds for accounts under 100 followers (reference §2.5).
NEEDS_100_FOLLOWERS = frozenset({
    "follower_count", "online_followers", "follower_demographics", "follows_and_unfollows",
})
DEMOGRAPHICS: tuple[str, ...] = ("follower_demographics", "engaged_audience_demographics")
DEMOGRAPHIC_BREAKDOWNS: tuple[str, ...] = ("age", "city", "country", "gender")
ONLINE_FOLLOWERS = "online_followers"

OVERRIDE_KEYS = frozenset({
    "media.FEED", "media.REELS", "media.STORY", "account.total_value", "account.time_series",
    "account.demographics",
})


@dataclass(frozen=True, slots=True)
class MediaPlan:
    """What to ask for one media: its metrics, its breakdown calls, and the key under which Meta's refusals
    are remembered (empty when the media's kind is ambiguous, so nothing is learned from it)."""

    product: str
    metrics: tuple[str, ...]
    breakdowns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]


def product_type_of(media_product_type: str | None, media_type: str | None) -> str:
    """The catalogue key for a media. Instagram Login may omit media_product_type (reference §1.1): then a
    VIDEO is a reel (every video posted since 2022 is) and anything else a feed post."""
    if media_product_type in ("FEED", "REELS", "STORY"):
        return media_product_type
    if media_product_type == "AD":
        return "FEED"
    return "REELS" if media_type == "VIDEO" else "FEED"


@dataclass(slots=True)
class Catalogue:
    """The metric sets in force for one process: defaults with the config's overrides applied."""

    overrides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def media_metrics(self, login: models.Login, product_type: str) -> tuple[str, ...]:
        metrics = self.overrides.get(f"media.{product_type}", MEDIA_METRICS[product_type])
        if login != "facebook":
            metrics = tuple(m for m in metrics if m not in FACEBOOK_LOGIN_ONLY)
        return metrics

    def media_breakdowns(self, product_type: str) -> tuple[tuple[str, str], ...]:
        return MEDIA_BREAKDOWNS[product_type]

    def media_plan(self, login: models.Login, media_product_type: str | None,
                   media_type: str | None) -> MediaPlan:
        """The metrics for one media. When Meta omits media_product_type (Instagram Login, reference
        §1.1) a VIDEO may be a reel or a feed video: ask for the union of both sets and let Meta's
        refusals trim it per media, without learning from it (that would wrongly trim the other kind)."""
        product = product_type_of(media_product_type, media_type)
        if media_product_type is None and media_type == "VIDEO":
            both = (*self.media_metrics(login, "REELS"), *self.media_metrics(login, "FEED"))
            metrics = tuple(dict.fromkeys(both))
            breakdowns = tuple(dict.fromkeys((*MEDIA_BREAKDOWNS["REELS"], *MEDIA_BREAKDOWNS["FEED"])))
            return MediaPlan(product, metrics, breakdowns, ())
        return MediaPlan(product, self.media_metrics(login, product), MEDIA_BREAKDOWNS[product],
                         (login, product, media_type or ""))

    def account_total_value(self) -> tuple[str, ...]:
        return self.overrides.get("account.total_value", ACCOUNT_TOTAL_VALUE)

    def account_time_series(self) -> tuple[str, ...]:
        return self.overrides.get("account.time_series", ACCOUNT_TIME_SERIES)

    def demographics(self) -> tuple[str, ...]:
        return self.overrides.get("account.demographics", DEMOGRAPHICS)


def validate_overrides(overrides: Mapping[str, Iterable[str]]) -> list[str]:
    """Problems with a `[collect.metrics]` table, as messages (empty when it is fine)."""
    problems: list[str] = []
    for key, names in overrides.items():
        if key not in OVERRIDE_KEYS:
            problems.append(f"unknown key {key!r} (expected one of {', '.join(sorted(OVERRIDE_KEYS))})")
            continue
        stale = sorted(set(names) & DEPRECATED)
        if stale:
            problems.append(f"{key}: deprecated metrics Meta rejects: {', '.join(stale)}")
    return problems


class Capabilities:
    """What Meta refused, remembered for the life of the process so the same mistake is made once.

    Keyed by (login, product type, media type): Meta's per-type rules differ from its docs (reference §3.1
    OBS), e.g. `shares` refused on IMAGE posts but served on carousels.
    """

    def __init__(self) -> None:
        self._unsupported: dict[tuple[str, ...], frozenset[str]] = {}
        self._probes: dict[tuple[str, ...], asyncio.Event] = {}

    @contextlib.asynccontextmanager
    async def first_call(self, *key: str) -> AsyncIterator[None]:
        """The first call for a key goes alone; concurrent ones wait for it to finish, so a refusal is
        learned from one call instead of from every call already in flight.

        They wait at most PROBE_WAIT_S: the first call may be held by its own account's throttle pause
        (Meta's regain time, up to an hour), and one paused account must not hold up every other
        account's calls of the kind. Past that they go on; a refusal is then learned from them too."""
        if not key:
            yield
            return
        probe = self._probes.get(key)
        if probe is None:
            probe = self._probes[key] = asyncio.Event()
            try:
                yield
            finally:
                probe.set()
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROBE_WAIT_S):
                    await probe.wait()
            yield

    def unsupported(self, *key: str) -> frozenset[str]:
        return self._unsupported.get(key, frozenset())

    def learn(self, metrics: Iterable[str], *key: str) -> None:
        if not key:  # an ambiguous kind: nothing to learn
            return
        self._unsupported[key] = self._unsupported.get(key, frozenset()) | frozenset(metrics)

    def usable(self, metrics: Iterable[str], *key: str) -> tuple[str, ...]:
        refused = self._unsupported.get(key)
        return tuple(metrics) if not refused else tuple(m for m in metrics if m not in refused)
