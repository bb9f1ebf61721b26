"""A deterministic fake Instagram world, computed lazily from hashes of (seed, id, metric, day).

Nothing is built up front: an account, its media, a day's account metrics or a media item's insights
are derived on demand from a keyed BLAKE2b hash and cached in bounded LRU caches, so 10,000 accounts
x 50 media cost nothing until asked for. The same seed always gives the same world.

Expected-value API (what tests assert stored rows against; the server answers from the same functions):

    world = World(seed=1, accounts=10, media_per_account=30, now=None, clock=None, **knobs)
    world.accounts() -> Iterator[SimAccount]                 # all accounts, in id order
    world.account(ig_user_id) -> SimAccount                  # KeyError if unknown
    world.media_of(ig_user_id) -> list[SimMedia]             # newest first, as /media lists them
    world.media(media_id) -> SimMedia                        # media or story by id; KeyError if unknown
    world.stories_of(ig_user_id, at=None) -> list[SimMedia]  # live (posted < 24 h before `at`), newest first
    world.like_count(media) -> int | None                    # None: hidden likes (field omitted)
    world.comments_count(media) -> int
    world.supported_media_metrics(media, login) -> set[str]  # exactly what /insights accepts for it
    world.media_unavailable(media, at=None) -> str | None    # "pre_conversion" | "not_enough_viewers"
                                                              # | "story_expired" | None
    world.media_metric_value(media_id, metric, breakdown='', dimension='') -> int | float
    world.media_breakdown(media_id, metric, breakdown) -> dict[str, int]   # lowercase dims, zeros omitted
    world.account_day_value(ig_user_id, metric, day) -> int | None         # Pacific day; None: no data
    world.follower_count(ig_user_id, day) -> int | None
    world.account_window_total(ig_user_id, metric, since_s, until_s, at=None) -> int | None
    world.account_breakdown_values(ig_user_id, metric, breakdown, total) -> dict[tuple[str, ...], int]
    world.demographics(ig_user_id, metric, breakdown, timeframe="this_month") -> dict[str, int]  # top 45
    world.online_followers(ig_user_id, day) -> dict[str, int]             # "0".."23" -> count
    world.advance(epochs=1)    # media values grow (~5 % of reach per epoch): drives history tests

Day semantics: a "Pacific day" d runs from midnight America/Los_Angeles to the next midnight; Meta
reports it with `end_time = day_end_time(d)` (07:00 or 08:00 UTC of d+1, `+0000`). A since/until window
covers the Pacific days whose START lies in [since, until) and is not in the future (`pacific_days`).
Account data exists from `history_days` before the world's anchor day up to today (today included).
Breakdown results never contain zero values (Meta omits them).
"""

from __future__ import annotations

import functools
import hashlib
import struct
import time
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from collector.simulator import rules

Login = Literal["instagram", "facebook"]

ACCOUNT_ID_BASE = 17841400000000001
MEDIA_PREFIX = "179"  # + 7-digit account index + 7-digit sequence: 17 digits, fits bigint
STORY_PREFIX = "178"  # + 7-digit account index + 7-digit story slot
TOKEN_PREFIX: dict[str, str] = {"instagram": "IGAA", "facebook": "EAA"}
TOKEN_LIFETIME_S = 60 * 86400
STORY_LIFETIME_S = 86400
LA = zoneinfo.ZoneInfo("America/Los_Angeles")
_PHI = 0.6180339887498949
_TOKEN_SUBCODES = (460, 463, 467)
_SIXTEEN_U16 = struct.Struct(">16H")

AGES = ("13-17", "18-24", "25-34", "35-44", "45-54", "55-64", "65+")
GENDERS = ("F", "M", "U")
COUNTRIES: tuple[str, ...] = (
    "US", "BR", "IN", "GB", "DE", "FR", "IT", "ES", "MX", "CA", "AU", "AR", "CO", "CL", "PE", "TR", "ID",
    "PH", "TH", "VN", "JP", "KR", "NG", "EG", "ZA", "MA", "PL", "NL", "BE", "SE", "NO", "DK", "FI", "PT",
    "IE", "AT", "CH", "CZ", "RO", "HU", "GR", "UA", "RU", "IL", "AE", "SA", "PK", "BD", "MY", "SG", "NZ",
)
CITIES = tuple(f"{city}, {region}" for city, region in (
    ("London", "England"), ("Manchester", "England"), ("New York", "New York"), ("Los Angeles", "California"),
    ("Chicago", "Illinois"), ("Houston", "Texas"), ("Toronto", "Ontario"), ("Sydney", "New South Wales"),
    ("Melbourne", "Victoria"), ("Berlin", "Berlin"), ("Hamburg", "Hamburg"), ("Paris", "Île-de-France"),
    ("Madrid", "Comunidad de Madrid"), ("Barcelona", "Catalonia"), ("Rome", "Lazio"), ("Milan", "Lombardy"),
    ("São Paulo", "São Paulo (state)"), ("Rio de Janeiro", "Rio de Janeiro (state)"),
    ("Mexico City", "Distrito Federal"),
    ("Buenos Aires", "Buenos Aires"), ("Bogotá", "Distrito Especial"), ("Lima", "Lima Region"),
    ("Santiago", "Santiago Metropolitan Region"), ("Istanbul", "Istanbul Province"), ("Jakarta", "Jakarta"),
    ("Manila", "Metro Manila"), ("Bangkok", "Bangkok"), ("Tokyo", "Tokyo"), ("Seoul", "Seoul"),
    ("Lagos", "Lagos State"), ("Cairo", "Cairo Governorate"), ("Johannesburg", "Gauteng"),
    ("Warsaw", "Masovian Voivodeship"), ("Amsterdam", "North Holland"), ("Brussels", "Brussels"),
    ("Stockholm", "Stockholm County"), ("Oslo", "Oslo"), ("Copenhagen", "Capital Region of Denmark"),
    ("Helsinki", "Uusimaa"), ("Lisbon", "Lisbon District"), ("Dublin", "Dublin"), ("Vienna", "Vienna"),
    ("Zürich", "Zurich"), ("Prague", "Prague"), ("Bucharest", "Bucharest"), ("Budapest", "Budapest"),
    ("Athens", "Attica"), ("Kyiv", "Kyiv City"), ("Tel Aviv", "Tel Aviv District"), ("Dubai", "Dubai"),
    ("Riyadh", "Riyadh Region"), ("Karachi", "Sindh"), ("Dhaka", "Dhaka Division"),
    ("Kuala Lumpur", "Kuala Lumpur"), ("Singapore", "Singapore"), ("Auckland", "Auckland Region"),
    ("Mumbai", "Maharashtra"), ("Delhi", "Delhi"), ("Bangalore", "Karnataka"),
))
DEMOGRAPHIC_VALUES: dict[str, tuple[str, ...]] = {
    "age": AGES, "gender": GENDERS, "country": COUNTRIES, "city": CITIES,
}
DEMOGRAPHICS_TOP = 45


@dataclass(frozen=True, slots=True)
class Knobs:
    """Shape of the world. Fractions select accounts/media deterministically from the seed."""

    invalid_token_fraction: float = 0.05  # accounts whose token fails every call with 190/460|463|467
    empty_page_fraction: float = 0.1  # accounts whose media walk has one empty page that still has `next`
    low_follower_fraction: float = 1 / 7  # accounts with < 100 followers
    pre_conversion_fraction: float = 0.03  # media posted before business conversion (100/2108006)
    media_count_underreport_fraction: float = 0.2  # profile `media_count` lower than the real number
    hidden_likes_fraction: float = 0.1  # media without `like_count`
    few_viewers_fraction: float = 0.25  # stories with < 5 viewers (code 10)
    crosspost_fraction: float = 0.3  # media shared to Facebook (facebook_views/crossposted_views served)
    omit_media_product_type_on_instagram: bool = False  # §1.1: unknown whether the IG host returns it
    # ... or refuses it outright: "(#100) Tried accessing nonexisting field (media_product_type) ..."
    refuse_media_product_type_on_instagram: bool = False
    views_as_total_value: bool = False  # §3.3 OBS: media `views` items as total_value instead of values
    reject_shares_on_image: bool = True  # §3.1 OBS drift: IMAGE posts reject `shares`
    demographics_timeframe_key: bool = False  # §2.6 doc example: dimension_keys ["timeframe", <bd>]
    history_days: int = 400  # account insights exist this many days back from the anchor day
    media_span_days: float = 135.0  # media timestamps spread over this many days back (1.5 x 90)
    story_slot_s: int = 8 * 3600  # at most one story per account per slot


@dataclass(frozen=True, slots=True)
class SimAccount:
    index: int
    ig_user_id: str
    login: Login
    username: str
    access_token: str  # the configured token (issued `token_issued_at`, 60-day lifetime)
    token_issued_at: int  # Unix seconds
    followers_count: int
    media_count: int  # as the profile field reports it (sometimes lower than real_media_count)
    real_media_count: int
    token_error: int | None  # 190 subcode every call with this account's tokens gets, or None
    empty_page: bool  # the media walk serves one empty page with `next` after the first page
    media_product_type_style: int  # index into rules.MEDIA_PRODUCT_TYPE_STYLES for account breakdowns

    @property
    def low_followers(self) -> bool:
        return self.followers_count < 100


@dataclass(frozen=True, slots=True)
class SimMedia:
    media_id: str
    ig_user_id: str
    account_index: int
    media_type: str  # IMAGE, VIDEO, CAROUSEL_ALBUM
    media_product_type: str  # FEED, REELS, STORY
    timestamp: datetime  # UTC, whole seconds
    permalink: str
    hidden_likes: bool
    pre_conversion: bool
    crossposted: bool
    few_viewers: bool  # stories only

    @property
    def is_story(self) -> bool:
        return self.media_product_type == "STORY"

    @property
    def timestamp_text(self) -> str:
        return self.timestamp.strftime("%Y-%m-%dT%H:%M:%S+0000")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    account: SimAccount
    login: Login
    issued_at: int


# --- Pacific days -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8192)
def day_start_s(day: date) -> int:
    """Unix seconds of midnight America/Los_Angeles starting `day`."""
    return int(datetime(day.year, day.month, day.day, tzinfo=LA).timestamp())


@functools.lru_cache(maxsize=8192)
def day_end_time(day: date) -> str:
    """Meta's `end_time` for the Pacific day `day` (the next Pacific midnight, in UTC, `+0000`)."""
    end = datetime.fromtimestamp(day_start_s(day + timedelta(days=1)), UTC)
    return end.strftime("%Y-%m-%dT%H:%M:%S+0000")


def pacific_date(ts: float) -> date:
    return datetime.fromtimestamp(ts, LA).date()


def pacific_days(since_s: float, until_s: float, now_s: float) -> list[date]:
    """The Pacific days whose start lies in [since, until) and not after `now_s`."""
    day = pacific_date(since_s)
    if day_start_s(day) < since_s:
        day += timedelta(days=1)
    days: list[date] = []
    while True:
        start = day_start_s(day)
        if start >= until_s or start > now_s:
            return days
        days.append(day)
        day += timedelta(days=1)


def split_total(total: int, weights: list[float]) -> list[int]:
    """Split `total` proportionally to `weights` into integers that sum to `total` (largest remainder)."""
    weight_sum = sum(weights) or 1.0
    raw = [total * w / weight_sum for w in weights]
    parts = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (parts[i] - raw[i], i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


class World:
    def __init__(self, seed: int, accounts: int, media_per_account: int, *, now: datetime | None = None,
                 clock: Callable[[], float] | None = None, **knobs: object) -> None:
        if not 0 <= accounts < 10_000_000 or not 0 <= media_per_account < 10_000_000:
            raise ValueError("accounts and media_per_account must be below 10,000,000")
        self.seed = seed
        self.account_total = accounts
        self.media_per_account = media_per_account
        self.knobs = Knobs(**knobs)  # type: ignore[arg-type]
        anchor = now or datetime.now(UTC)
        self.anchor_s = int(anchor.timestamp())  # media timestamps are fixed relative to this
        self.clock: Callable[[], float] = clock or time.time
        self.epoch = 0
        self._key = hashlib.blake2b(str(seed).encode(), digest_size=16).digest()
        self._offsets: dict[str, float] = {}
        self.account = functools.lru_cache(maxsize=65536)(self._build_account)
        self._media_list = functools.lru_cache(maxsize=4096)(self._build_media_list)
        self._media_item = functools.lru_cache(maxsize=262144)(self._build_media)
        self.parse_token = functools.lru_cache(maxsize=65536)(self._parse_token)
        self._media_values = functools.lru_cache(maxsize=65536)(self._build_media_values)
        self._day_values = functools.lru_cache(maxsize=65536)(self._build_day_values)

    # --- hashing ------------------------------------------------------------------------------------

    def _digest(self, *parts: object) -> bytes:
        text = "\x1f".join(str(p) for p in parts)
        return hashlib.blake2b(text.encode(), digest_size=32, key=self._key).digest()

    def _u(self, *parts: object) -> float:
        """A uniform in [0, 1) from the parts."""
        return int.from_bytes(self._digest(*parts)[:8], "big") / 18446744073709551616.0  # 2**64

    def _us(self, *parts: object) -> list[float]:
        """16 uniforms in [0, 1) from one hash."""
        return [x / 65536.0 for x in _SIXTEEN_U16.unpack(self._digest(*parts))]

    def _selected(self, feature: str, index: int, fraction: float) -> bool:
        """Low-discrepancy selection: any prefix of N accounts has ~fraction x N selected."""
        offset = self._offsets.get(feature)
        if offset is None:
            offset = self._offsets[feature] = self._u("offset", feature)
        return (index * _PHI + offset) % 1.0 < fraction

    # --- accounts -----------------------------------------------------------------------------------

    def accounts(self) -> Iterator[SimAccount]:
        for i in range(self.account_total):
            yield self.account(str(ACCOUNT_ID_BASE + i))

    def account_index(self, ig_user_id: str) -> int | None:
        if not ig_user_id.isdigit():
            return None
        index = int(ig_user_id) - ACCOUNT_ID_BASE
        return index if 0 <= index < self.account_total else None

    def _build_account(self, ig_user_id: str) -> SimAccount:
        index = self.account_index(ig_user_id)
        if index is None:
            raise KeyError(ig_user_id)
        u = self._us("account", index)
        k = self.knobs
        login: Login = "instagram" if index % 2 == 0 else "facebook"
        if self._selected("low_followers", index, k.low_follower_fraction):
            followers = 10 + int(u[0] * 89)
        else:
            followers = int(100 * 2000 ** u[0])  # log-uniform 100 .. 200,000
        real = self.media_per_account
        reported = real
        if real and self._selected("media_count", index, k.media_count_underreport_fraction):
            reported = max(0, real - 1 - int(u[1] * max(1, real // 10)))
        token_error = None
        if self._selected("invalid_token", index, k.invalid_token_fraction):
            token_error = _TOKEN_SUBCODES[int(u[2] * len(_TOKEN_SUBCODES))]
        issued = self.anchor_s - 86400 - int(u[3] * 40 * 86400)
        return SimAccount(
            index=index, ig_user_id=ig_user_id, login=login, username=f"sim_{login[:2]}_{index:05d}",
            access_token=self.make_token(index, login, issued), token_issued_at=issued,
            followers_count=followers, media_count=reported, real_media_count=real, token_error=token_error,
            empty_page=self._selected("empty_page", index, k.empty_page_fraction),
            media_product_type_style=int(u[4] * len(rules.MEDIA_PRODUCT_TYPE_STYLES)),
        )

    # --- tokens -------------------------------------------------------------------------------------

    def make_token(self, index: int, login: Login, issued_at: int) -> str:
        mac = self._digest("token", index, login, issued_at)[:10].hex()
        return f"{TOKEN_PREFIX[login]}{index:07d}{issued_at:010d}{mac}"

    def _parse_token(self, token: str) -> TokenInfo | None:
        """The account and issue time a token stands for, or None if it is not one of ours."""
        login: Login
        if token.startswith("IGAA"):
            login, body = "instagram", token[4:]
        elif token.startswith("EAA"):
            login, body = "facebook", token[3:]
        else:
            return None
        if len(body) != 37 or not body[:17].isdigit():
            return None
        index, issued = int(body[:7]), int(body[7:17])
        if index >= self.account_total or self.make_token(index, login, issued) != token:
            return None
        account = self.account(str(ACCOUNT_ID_BASE + index))
        if account.login != login:
            return None
        return TokenInfo(account, login, issued)

    # --- media --------------------------------------------------------------------------------------

    def media_of(self, ig_user_id: str) -> list[SimMedia]:
        return self._media_list(ig_user_id)

    def _build_media_list(self, ig_user_id: str) -> list[SimMedia]:
        account = self.account(ig_user_id)
        return [self._media_item(account.index, seq) for seq in range(account.real_media_count)]

    def _build_media(self, index: int, seq: int) -> SimMedia:
        account = self.account(str(ACCOUNT_ID_BASE + index))
        k = self.knobs
        u = self._us("media", account.index, seq)
        n = max(1, account.real_media_count)
        age_s = k.media_span_days * 86400 * (seq + u[0]) / n
        kind = u[1]
        if kind < 0.4:
            media_type, product = "IMAGE", "FEED"
        elif kind < 0.6:
            media_type, product = "CAROUSEL_ALBUM", "FEED"
        elif kind < 0.9:
            media_type, product = "VIDEO", "REELS"
        else:
            media_type, product = "VIDEO", "FEED"
        media_id = f"{MEDIA_PREFIX}{account.index:07d}{seq:07d}"
        shortcode = self._digest("shortcode", media_id)[:8].hex()
        kind_path = "reel" if product == "REELS" else "p"
        return SimMedia(
            media_id=media_id, ig_user_id=account.ig_user_id, account_index=account.index,
            media_type=media_type, media_product_type=product,
            timestamp=datetime.fromtimestamp(int(self.anchor_s - age_s), UTC),
            permalink=f"https://www.instagram.com/{kind_path}/{shortcode}/",
            hidden_likes=u[2] < k.hidden_likes_fraction, pre_conversion=u[3] < k.pre_conversion_fraction,
            crossposted=u[4] < k.crosspost_fraction, few_viewers=False,
        )

    def stories_of(self, ig_user_id: str, at: float | None = None) -> list[SimMedia]:
        """Live stories (posted within the 24 h before `at`, default the clock), newest first."""
        account = self.account(ig_user_id)
        at_s = self.clock() if at is None else at
        slot_s = self.knobs.story_slot_s
        stories = []
        for slot in range(int((at_s - STORY_LIFETIME_S) // slot_s), int(at_s // slot_s) + 1):
            story = self._build_story(account, slot)
            if story is not None and at_s - STORY_LIFETIME_S < story.timestamp.timestamp() <= at_s:
                stories.append(story)
        stories.reverse()
        return stories

    def _build_story(self, account: SimAccount, slot: int) -> SimMedia | None:
        u = self._us("story", account.index, slot)
        if u[0] >= 0.7:
            return None
        media_id = f"{STORY_PREFIX}{account.index:07d}{slot % 10_000_000:07d}"
        return SimMedia(
            media_id=media_id, ig_user_id=account.ig_user_id, account_index=account.index,
            media_type="VIDEO" if u[1] < 0.4 else "IMAGE", media_product_type="STORY",
            timestamp=datetime.fromtimestamp(int((slot + u[2]) * self.knobs.story_slot_s), UTC),
            permalink=f"https://www.instagram.com/stories/{account.username}/{media_id}/",
            hidden_likes=False, pre_conversion=False, crossposted=u[3] < self.knobs.crosspost_fraction,
            few_viewers=u[4] < self.knobs.few_viewers_fraction,
        )

    def media(self, media_id: str) -> SimMedia:
        """A media item or story by id (expired stories included). KeyError if it does not exist."""
        if len(media_id) != 17 or not media_id.isdigit():
            raise KeyError(media_id)
        index, number = int(media_id[3:10]), int(media_id[10:])
        if index >= self.account_total:
            raise KeyError(media_id)
        account = self.account(str(ACCOUNT_ID_BASE + index))
        if media_id.startswith(MEDIA_PREFIX) and number < account.real_media_count:
            return self._media_item(index, number)
        if media_id.startswith(STORY_PREFIX):
            # The slot's high digits are implied by the current time (ids hold slot mod 10^7).
            now_slot = int(self.clock() // self.knobs.story_slot_s)
            slot = now_slot - (now_slot - number) % 10_000_000
            story = self._build_story(account, slot)
            if story is not None:
                return story
        raise KeyError(media_id)

    def like_count(self, media: SimMedia) -> int | None:
        return None if media.hidden_likes else int(self._media_values(media.media_id, self.epoch)[0]["likes"])

    def comments_count(self, media: SimMedia) -> int:
        return int(self._media_values(media.media_id, self.epoch)[0]["comments"])

    def advance(self, epochs: int = 1) -> None:
        """Let time pass for media metrics: every count grows (reach x (1 + 0.05 x epoch))."""
        self.epoch += epochs

    def supported_media_metrics(self, media: SimMedia, login: Login) -> set[str]:
        metrics = set(rules.METRICS_BY_PRODUCT_TYPE[media.media_product_type])
        if login == "instagram":
            metrics -= rules.FACEBOOK_LOGIN_ONLY
        if not media.crossposted:
            metrics -= rules.CROSSPOST_ONLY
        if self.knobs.reject_shares_on_image and media.media_type == "IMAGE" and not media.is_story:
            metrics.discard("shares")
        return metrics

    def media_unavailable(self, media: SimMedia, at: float | None = None) -> str | None:
        if media.pre_conversion:
            return "pre_conversion"
        if media.is_story:
            at_s = self.clock() if at is None else at
            if at_s - media.timestamp.timestamp() >= STORY_LIFETIME_S:
                return "story_expired"
            if media.few_viewers:
                return "not_enough_viewers"
        return None

    def media_metric_value(self, media_id: str, metric: str, breakdown: str = "",
                           dimension: str = "") -> int | float:
        values, breakdowns = self._media_values(media_id, self.epoch)
        if breakdown:
            return breakdowns[metric][dimension]
        return values[metric]

    def media_breakdown(self, media_id: str, metric: str, breakdown: str) -> dict[str, int]:
        _, breakdowns = self._media_values(media_id, self.epoch)
        if rules.MEDIA_BREAKDOWN_OF.get(metric) != breakdown:
            raise KeyError((metric, breakdown))
        return dict(breakdowns[metric])

    def _build_media_values(self, media_id: str,
                            epoch: int) -> tuple[dict[str, int | float], dict[str, dict[str, int]]]:
        media = self.media(media_id)
        followers = self.account(media.ig_user_id).followers_count
        u = self._us("media-values", media_id)
        w = self._us("media-breakdowns", media_id)
        growth = 1 + 0.05 * epoch
        if media.is_story:
            reach = 1 + int(u[0] * 3) if media.few_viewers else int(followers * (0.01 + 0.2 * u[0]) * growth)
        else:
            reach = int(followers * (0.02 + 0.6 * u[0]) * growth) + 1
        views = int(reach * (1.1 + 2.5 * u[1]))
        likes = int(reach * (0.01 + 0.12 * u[2]))
        comments = int(likes * 0.08 * u[3])
        saved = int(reach * 0.03 * u[4])
        shares = int(reach * 0.02 * u[5])
        replies = int(reach * 0.01 * u[6])
        profile_visits = int(reach * 0.05 * u[7])
        facebook_views = int(views * 0.2 * u[8])
        avg_watch_ms = 1500 + int(28000 * u[9])
        action = {dim: int(profile_visits * 0.3 * w[i]) for i, dim in
                  enumerate(rules.MEDIA_BREAKDOWNS["action_type"][1])}
        nav_scale = (0.3 + 0.5 * w[6], 0.05 * w[7], 0.1 * w[8], 0.05 * w[9])
        navigation = {dim: int(reach * s) for dim, s in
                      zip(rules.MEDIA_BREAKDOWNS["story_navigation_action_type"][1], nav_scale, strict=True)}
        values: dict[str, int | float] = {
            "reach": reach, "views": views, "likes": likes, "comments": comments, "saved": saved,
            "shares": shares, "reposts": int(shares * 0.5 * u[10]), "follows": int(reach * 0.01 * u[11]),
            "profile_visits": profile_visits, "replies": replies,
            "profile_activity": sum(action.values()), "navigation": sum(navigation.values()),
            "total_interactions": replies + shares if media.is_story else likes + comments + saved + shares,
            "ig_reels_avg_watch_time": avg_watch_ms, "ig_reels_video_view_total_time": avg_watch_ms * views,
            "reels_skip_rate": round(0.05 + 0.7 * u[12], 4),
            "facebook_views": facebook_views, "crossposted_views": int(facebook_views * (0.5 + 0.5 * u[13])),
            "total_likes": likes + int(likes * 0.1 * u[14]),
            "total_comments": comments + int(comments * 0.1 * u[15]),
            "total_views": views + facebook_views,
        }
        breakdowns = {
            "profile_activity": {k: v for k, v in action.items() if v},
            "navigation": {k: v for k, v in navigation.items() if v},
        }
        return values, breakdowns

    # --- account insights ---------------------------------------------------------------------------

    def first_data_day(self) -> date:
        return pacific_date(self.anchor_s) - timedelta(days=self.knobs.history_days)

    def account_day_value(self, ig_user_id: str, metric: str, day: date) -> int | None:
        """A day-period account metric for the Pacific day `day`; None when Meta has no data for it
        (before the history horizon, after today, or a follower metric of a < 100-follower account)."""
        account = self.account(ig_user_id)
        if account.low_followers and metric in rules.FOLLOWER_GATED:
            return None
        if day < self.first_data_day() or day > pacific_date(self.clock()):
            return None
        return self._day_values(ig_user_id, day)[metric]

    def follower_count(self, ig_user_id: str, day: date) -> int | None:
        return self.account_day_value(ig_user_id, "follower_count", day)

    def _build_day_values(self, ig_user_id: str, day: date) -> dict[str, int]:
        followers = self.account(ig_user_id).followers_count
        u = self._us("day", ig_user_id, day.toordinal())
        reach = int(followers * (0.03 + 0.4 * u[0]))
        likes = int(reach * 0.08 * u[3])
        comments = int(likes * 0.1 * u[4])
        saves = int(reach * 0.02 * u[5])
        shares = int(reach * 0.015 * u[6])
        replies = int(reach * 0.005 * u[7])
        profile_views = int(reach * 0.05 * u[11])
        return {
            "reach": reach, "views": int(reach * (1.2 + 2 * u[1])),
            "accounts_engaged": int(reach * (0.01 + 0.08 * u[2])), "likes": likes, "comments": comments,
            "saves": saves, "shares": shares, "replies": replies, "reposts": int(shares * 0.4 * u[8]),
            "total_interactions": likes + comments + saves + shares + replies,
            "follows_and_unfollows": int(followers * 0.004 * u[9]),
            "profile_links_taps": int(reach * 0.01 * u[10]), "profile_views": profile_views,
            "website_clicks": int(profile_views * 0.2 * u[12]),
            "follower_count": int(followers * 0.003 * u[13]),
        }

    def account_window_total(self, ig_user_id: str, metric: str, since_s: float, until_s: float,
                             at: float | None = None) -> int | None:
        """What a total_value request over [since, until) answers: the sum of the daily values of the
        Pacific days in the window (`pacific_days`); None when none of them has data."""
        now_s = self.clock() if at is None else at
        days = pacific_days(since_s, until_s, now_s)
        present = [v for d in days if (v := self.account_day_value(ig_user_id, metric, d)) is not None]
        return sum(present) if present else None

    def account_breakdown_values(self, ig_user_id: str, metric: str, breakdown: str,
                                 total: int) -> dict[tuple[str, ...], int]:
        """How a total_value `total` splits over `breakdown` (comma-separated keys, in request order).
        The split depends only on (account, metric, breakdown), so per-day and window totals agree."""
        account = self.account(ig_user_id)
        combos: list[tuple[str, ...]] = [()]
        for key in breakdown.split(","):
            if key == "media_product_type":
                dims = rules.MEDIA_PRODUCT_TYPE_STYLES[account.media_product_type_style]
            else:
                dims = rules.ACCOUNT_BREAKDOWN_VALUES[key]
            combos = [(*c, d) for c in combos for d in dims]
        weights = [self._u("split", ig_user_id, metric, breakdown, *c) ** 2 for c in combos]
        return {c: v for c, v in zip(combos, split_total(total, weights), strict=True) if v}

    def demographics(self, ig_user_id: str, metric: str, breakdown: str,
                     timeframe: str = "this_month") -> dict[str, int]:
        """The top 45 dimension values of a demographics metric (empty for < 100 followers)."""
        account = self.account(ig_user_id)
        if account.low_followers:
            return {}
        base = account.followers_count * (0.9 if metric == "follower_demographics" else 0.2)
        dims = DEMOGRAPHIC_VALUES[breakdown]
        weights = [self._u("demo", ig_user_id, metric, breakdown, timeframe, d) ** 3 for d in dims]
        values = dict(zip(dims, split_total(int(base), weights), strict=True))
        top = sorted((v, d) for d, v in values.items() if v)[::-1][:DEMOGRAPHICS_TOP]
        return {d: v for v, d in top}

    def online_followers(self, ig_user_id: str, day: date) -> dict[str, int]:
        """Followers online per hour of the Pacific day ("0".."23"); empty for < 100 followers."""
        account = self.account(ig_user_id)
        if account.low_followers:
            return {}
        u = self._us("online", ig_user_id, day.toordinal())
        peak = account.followers_count * (0.1 + 0.3 * u[0])
        curve = (0.2, 0.15, 0.1, 0.08, 0.08, 0.1, 0.2, 0.35, 0.5, 0.6, 0.65, 0.7,
                 0.75, 0.72, 0.7, 0.72, 0.8, 0.9, 1.0, 0.98, 0.9, 0.7, 0.5, 0.3)
        return {str(h): int(peak * c * (0.9 + 0.2 * u[1 + h % 15])) for h, c in enumerate(curve)}
