"""Typed settings, one frozen dataclass per config section, with the defaults documented in
config/example.toml. `config.load()` builds them from TOML; every other module only reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from collector import models


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    # None: use $DATABASE_URL, else an embedded PostgreSQL (pgserver) in `embedded_dir`.
    url: str | None = None
    embedded_dir: Path = Path(".state/postgres")
    pool_max_size: int = 4
    connect_timeout_s: float = 10.0
    # Rows fetched but not yet committed that the daemon's writer holds (e.g. while PostgreSQL is down)
    # before collection pauses (backpressure).
    writer_buffer_max_rows: int = 200_000


@dataclass(frozen=True, slots=True)
class GraphSettings:
    api_version: str = "v24.0"
    instagram_base_url: str = "https://graph.instagram.com"
    facebook_base_url: str = "https://graph.facebook.com"
    request_timeout_s: float = 30.0
    # Requests in flight at once over the whole process; also the aiohttp connector limit.
    max_concurrency: int = 400

    def base_url(self, login: models.Login) -> str:
        return self.instagram_base_url if login == "instagram" else self.facebook_base_url


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    # Optional hard ceilings (aiolimiter); 0 disables a limiter (the default: budgets pace the calls).
    app_calls_per_s: float = 0.0  # per Graph host
    account_calls_per_s: float = 0.0
    account_burst: int = 5
    # Budget pacing from the usage headers (collector/budget.py): calls in flight never exceed the calls
    # estimated left before 100 % minus this margin (reports may lag a few calls) ...
    budget_margin_calls: int = 3
    # ... and a scope whose last usage report is older than this is paced as if it had none.
    usage_max_age_s: float = 60.0
    # Calls of one account in flight at once, whatever its budget allows (its jobs run concurrently).
    account_max_in_flight: int = 16
    # Usage (percent, from X-App-Usage / X-Business-Use-Case-Usage) at which pacing starts to slow a scope;
    # the rate falls linearly to `min_rate_fraction` of its ceiling at 100 %.
    slow_down_at_pct: float = 75.0
    min_rate_fraction: float = 0.05
    # Longest pause honoured for a throttled scope, whatever Meta's estimated_time_to_regain_access says.
    pause_cap_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class RetrySettings:
    max_attempts: int = 5  # total tries of one call for transient errors
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    # Throttled calls without a regain estimate back off from here (exponential, full jitter).
    throttle_base_delay_s: float = 30.0
    throttle_max_attempts: int = 8


@dataclass(frozen=True, slots=True)
class CollectSettings:
    account_backfill_days: int = 30  # complete Pacific days of daily account insights
    media_max_age_days: int = 90  # collect insights for media up to this age
    max_concurrent_accounts: int = 100
    # Per-media insights calls of one account in flight at once (the account limiter paces them anyway).
    media_concurrency_per_account: int = 8
    media_breakdowns: bool = True  # extra calls for profile_activity/action_type and story navigation
    demographics_timeframe: str = "this_month"
    # Metric catalogue overrides: key "media.FEED", "media.REELS", "media.STORY", "account.total_value",
    # "account.time_series", "account.demographics" -> list of metric names replacing the default set.
    metrics: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The daemon asks every [[tokens]] entry which accounts it reaches this often (and at start, on SIGHUP).
    discovery_interval_s: float = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    """How often the daemon runs each job per account (seconds unless the name says otherwise)."""

    account_insights_after_midnight_s: float = 1800.0  # delay after each Pacific midnight
    account_insights_trailing_days: int = 3  # Meta's data lags up to 48 h
    media_discovery_interval_s: float = 3600.0
    stories_interval_s: float = 3600.0
    profile_interval_s: float = 86400.0
    demographics_interval_s: float = 86400.0
    # Media insights refresh tiers: (max media age in seconds, refresh interval in seconds).
    media_tiers: tuple[tuple[float, float], ...] = (
        (48 * 3600.0, 3600.0),
        (7 * 86400.0, 6 * 3600.0),
        (30 * 86400.0, 86400.0),
        (float("inf"), 7 * 86400.0),
    )
    jitter_fraction: float = 0.1  # spread of due times, so 10,000 accounts never fire in one second
    tick_s: float = 1.0
    shutdown_grace_s: float = 10.0
    token_refresh_after_days: float = 7.0  # Instagram Login tokens older than this are refreshed
    # A failed job is retried after this, doubling per failure in a row, capped at its interval and 1 h.
    job_retry_base_s: float = 60.0


@dataclass(frozen=True, slots=True)
class HttpSettings:
    listen: str | None = None  # "127.0.0.1:9464" serves /healthz, /metrics and the web UI
    # HTTP basic auth for the web UI and /metrics (not /healthz, not the webhook): both or neither.
    basic_auth_user: str | None = None
    basic_auth_password: models.Secret | None = None


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    verify_token: models.Secret
    app_secret: models.Secret
    listen: str | None = None  # None: share the [http] server
    path: str = "/webhooks/instagram"
    body_max_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    json: bool | None = None  # None: JSON unless stderr is a TTY


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """How long ig_media_insight_history keeps rows (collector.storage.retention); None keeps everything."""

    # Whole Pacific-month partitions whose rows are all older than this many days are dropped.
    history_days: int | None = None
    # Partitions entirely older than this many days keep only each series' last value per Pacific day.
    history_full_days: int | None = None


@dataclass(frozen=True, slots=True)
class AppSettings:
    """The Meta app, for token refresh and debug_token (optional)."""

    app_id: str | None = None
    app_secret: models.Secret | None = None


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Several daemons on one database (collector.leases): who this one is, and how long its claims last."""

    instance_id: str | None = None  # None: "<host name>-<pid>"
    # A claimed account is taken over by another instance this long after its holder's last renewal.
    lease_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Config:
    source: Path  # the TOML file
    accounts: tuple[models.Account, ...]
    accounts_file: Path | None = None
    tokens: tuple[models.TokenSource, ...] = ()  # [[tokens]]: sources of discovered accounts
    state_dir: Path = Path(".state")  # token store, embedded PostgreSQL
    database: DatabaseSettings = DatabaseSettings()
    graph: GraphSettings = GraphSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    retry: RetrySettings = RetrySettings()
    collect: CollectSettings = CollectSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    http: HttpSettings = HttpSettings()
    webhook: WebhookSettings | None = None
    log: LogSettings = LogSettings()
    app: AppSettings = AppSettings()
    cluster: ClusterSettings = ClusterSettings()
    retention: RetentionSettings = RetentionSettings()
