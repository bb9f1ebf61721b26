"""Value types shared by every layer: accounts, secrets and the rows written to PostgreSQL.

Rows are NamedTuples in the column order of their staging tables, so the writer can hand them to
COPY as they are (no per-row conversion on the hot path).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal, NamedTuple

Login = Literal["instagram", "facebook"]
LOGINS: tuple[Login, ...] = ("instagram", "facebook")

# A metric value as stored: integers stay exact, fractions (reels_skip_rate, averages) are kept as given.
Number = int | float | Decimal


class Secret:
    """A string that never shows itself in a repr, a log line or an exception message."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class Account:
    """One Instagram professional account to collect, as configured."""

    ig_user_id: str  # the Graph id string, digits only (validated by config)
    login: Login
    access_token: Secret
    source: str  # where it was configured, e.g. "config.toml [[accounts]] #3" or "accounts.csv line 12"


@dataclass(frozen=True, slots=True)
class TokenSource:
    """A `[[tokens]]` entry: a token the collector asks which accounts it reaches (collector/discovery.py)."""

    position: int  # 1-based among the [[tokens]] tables: how messages name it, never by its value
    login: Login
    access_token: Secret
    key: str  # access_token, access_token_env or access_token_file: how it was given
    reference: str | None  # the environment variable or file named (never the token); None when inline

    @property
    def env_name(self) -> str | None:
        return self.reference if self.key.endswith("_env") else None

    @property
    def label(self) -> str:
        """`[[tokens]] #2 (facebook, access_token_env=FB_TOKEN)`: the token's name in output and logs."""
        how = f"{self.key}={self.reference}" if self.reference else self.key
        return f"[[tokens]] #{self.position} ({self.login}, {how})"


class Job(enum.StrEnum):
    """The units of work the collector does per account; the daemon schedules each on its own clock."""

    PROFILE = "profile"  # /{id}?fields=...
    MEDIA = "media"  # /{id}/media discovery + media insights (by age tier)
    STORIES = "stories"  # /{id}/stories + story insights
    ACCOUNT_INSIGHTS = "account_insights"  # daily reach series, total-value metrics per day, follower_count
    DEMOGRAPHICS = "demographics"  # follower/engaged demographics + online_followers


class Table(enum.StrEnum):
    """Target tables of the writer; flushed in this declaration order (job_state last: it vouches for
    the data written before it)."""

    ACCOUNT = "ig_account"
    MEDIA = "ig_media"
    MEDIA_INSIGHT = "ig_media_insight"
    ACCOUNT_INSIGHT = "ig_account_insight"
    UNAVAILABLE = "ig_unavailable"
    JOB_STATE = "collector_job_state"


class AccountRow(NamedTuple):
    ig_user_id: int
    username: str | None  # None keeps the stored value (a token error does not erase the profile)
    login: str
    followers_count: int | None
    media_count: int | None
    status: str  # "ok" or a reason: token_invalid, token_expired, permission_denied, not_found, failed
    status_detail: str | None
    updated_at: datetime


class MediaRow(NamedTuple):
    media_id: int
    ig_user_id: int
    media_type: str | None  # IMAGE, VIDEO, CAROUSEL_ALBUM
    media_product_type: str | None  # FEED, REELS, STORY, AD (may be absent on Instagram Login)
    posted_at: datetime | None
    permalink: str | None
    like_count: int | None  # None when the owner hides like counts
    comments_count: int | None
    seen_at: datetime  # becomes first_seen_at on insert, last_seen_at always
    # When this pass fetched the media's insights; None keeps the stored value (insights not due).
    insights_refreshed_at: datetime | None = None


class MediaInsightRow(NamedTuple):
    media_id: int
    metric: str
    breakdown: str  # '' for the plain total
    dimension: str  # '' for the plain total
    value: Number
    collected_at: datetime


class AccountInsightRow(NamedTuple):
    ig_user_id: int
    metric: str
    period: str  # 'day', or the demographics timeframe ('this_month'), or 'lifetime'
    end_time: datetime  # end of the Pacific day in UTC, as Meta reports it
    breakdown: str
    dimension: str
    value: Number
    collected_at: datetime


class UnavailableRow(NamedTuple):
    """Data Meta did not give, and why. Absent data is recorded here, never stored as 0."""

    object_type: str  # 'account' or 'media'
    object_id: int
    metric: str  # a metric name, or '*' when nothing of the object is available
    scope: str  # '' for media; the day's end_time (ISO) or timeframe/breakdown for account metrics
    reason: str  # one of UnavailableReason
    detail: str | None  # Meta's message (token-free)
    seen_at: datetime


class UnavailableReason(enum.StrEnum):
    UNSUPPORTED = "unsupported_for_product_type"
    FEW_FOLLOWERS = "fewer_than_100_followers"
    NOT_ENOUGH_VIEWERS = "not_enough_viewers"
    PRE_CONVERSION = "posted_before_business_conversion"
    STORY_EXPIRED = "story_expired"
    NO_DATA = "no_data"  # Meta answered with an empty data set
    OBJECT_GONE = "object_not_found"  # deleted media, or Meta no longer serves it
    DEPRECATED = "deprecated_metric"
    # The token may not read this object's insights (code 10, 3, 200-299 on the object's own call); retried
    # at the object's next refresh.
    PERMISSION_DENIED = "permission_denied"
    # A permanent Graph answer the collector has no meaning for (an unknown code); retried at the next
    # refresh.
    GRAPH_ERROR = "graph_error"


class JobStateRow(NamedTuple):
    ig_user_id: int
    job: str  # a Job value
    succeeded: bool
    attempted_at: datetime
    detail: str | None  # error description when not succeeded


ROW_TYPES: dict[Table, type[tuple[object, ...]]] = {
    Table.ACCOUNT: AccountRow,
    Table.MEDIA: MediaRow,
    Table.MEDIA_INSIGHT: MediaInsightRow,
    Table.ACCOUNT_INSIGHT: AccountInsightRow,
    Table.UNAVAILABLE: UnavailableRow,
    Table.JOB_STATE: JobStateRow,
}
