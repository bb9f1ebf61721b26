-- 001_init: the collector's tables (docs/architecture.md, "Data model").
-- Ids are bigint so that id::text equals the Graph id string; metric values are numeric (exact).
-- Append-only: never edit an applied migration, add 002_... instead (the checksum is verified).

CREATE TABLE ig_account (
    ig_user_id      bigint PRIMARY KEY,
    username        text,
    login           text NOT NULL CHECK (login IN ('instagram', 'facebook')),
    followers_count bigint,
    media_count     bigint,
    status          text NOT NULL,
    status_detail   text,
    updated_at      timestamptz NOT NULL
);
COMMENT ON TABLE ig_account IS 'One row per configured Instagram professional account: profile and collection status.';
COMMENT ON COLUMN ig_account.ig_user_id IS 'Instagram user id (ig_user_id::text is the Graph id).';
COMMENT ON COLUMN ig_account.login IS 'How the token was issued: instagram (Instagram Login) or facebook (Facebook Login).';
COMMENT ON COLUMN ig_account.username IS 'Last known username; a failed read keeps the stored value.';
COMMENT ON COLUMN ig_account.status IS '''ok'' or the reason collection fails: token_invalid, token_expired, permission_denied, not_found, failed.';
COMMENT ON COLUMN ig_account.status_detail IS 'Meta''s error message for a non-ok status (never contains tokens).';
COMMENT ON COLUMN ig_account.updated_at IS 'When the collector last wrote this row.';

CREATE TABLE ig_media (
    media_id              bigint PRIMARY KEY,
    ig_user_id            bigint NOT NULL,
    media_type            text,
    media_product_type    text,
    posted_at             timestamptz,
    permalink             text,
    like_count            bigint,
    comments_count        bigint,
    first_seen_at         timestamptz NOT NULL,
    last_seen_at          timestamptz NOT NULL,
    insights_refreshed_at timestamptz
);
CREATE INDEX ig_media_ig_user_id_idx ON ig_media (ig_user_id, posted_at);
COMMENT ON TABLE ig_media IS 'Media (posts, reels, stories) discovered per account. Descriptive columns are never erased by a partial read.';
COMMENT ON COLUMN ig_media.media_type IS 'IMAGE, VIDEO or CAROUSEL_ALBUM.';
COMMENT ON COLUMN ig_media.media_product_type IS 'FEED, REELS, STORY or AD (may be NULL on Instagram Login).';
COMMENT ON COLUMN ig_media.like_count IS 'NULL when unknown or hidden by the owner.';
COMMENT ON COLUMN ig_media.first_seen_at IS 'When the collector first saw this media.';
COMMENT ON COLUMN ig_media.last_seen_at IS 'When the collector last saw this media in a listing or webhook.';
COMMENT ON COLUMN ig_media.insights_refreshed_at IS 'When the media''s insights were last fetched (drives the refresh tiers).';

CREATE TABLE ig_media_insight (
    media_id     bigint NOT NULL,
    metric       text NOT NULL,
    breakdown    text NOT NULL DEFAULT '',
    dimension    text NOT NULL DEFAULT '',
    value        numeric NOT NULL,
    collected_at timestamptz NOT NULL,
    PRIMARY KEY (media_id, metric, breakdown, dimension)
);
COMMENT ON TABLE ig_media_insight IS 'Current value of each media metric. Unchanged values are not rewritten; see ig_media_insight_history for the series.';
COMMENT ON COLUMN ig_media_insight.breakdown IS 'Breakdown name (e.g. action_type), '''' for the plain total.';
COMMENT ON COLUMN ig_media_insight.dimension IS 'Breakdown value (e.g. PROFILE_VISIT), '''' for the plain total.';
COMMENT ON COLUMN ig_media_insight.collected_at IS 'When the current value was first seen.';

CREATE TABLE ig_media_insight_history (
    media_id     bigint NOT NULL,
    metric       text NOT NULL,
    breakdown    text NOT NULL DEFAULT '',
    dimension    text NOT NULL DEFAULT '',
    value        numeric NOT NULL,
    collected_at timestamptz NOT NULL
);
CREATE INDEX ig_media_insight_history_media_idx ON ig_media_insight_history (media_id, collected_at);
COMMENT ON TABLE ig_media_insight_history IS 'Append-only: one row each time a media metric value was first stored or changed.';
COMMENT ON COLUMN ig_media_insight_history.collected_at IS 'When this value was first seen.';

CREATE TABLE ig_account_insight (
    ig_user_id   bigint NOT NULL,
    metric       text NOT NULL,
    period       text NOT NULL,
    end_time     timestamptz NOT NULL,
    breakdown    text NOT NULL DEFAULT '',
    dimension    text NOT NULL DEFAULT '',
    value        numeric NOT NULL,
    collected_at timestamptz NOT NULL,
    PRIMARY KEY (ig_user_id, metric, period, end_time, breakdown, dimension)
);
COMMENT ON TABLE ig_account_insight IS 'Account metrics per Pacific day (period day) or timeframe (demographics).';
COMMENT ON COLUMN ig_account_insight.period IS 'day, lifetime, or the demographics timeframe (e.g. this_month).';
COMMENT ON COLUMN ig_account_insight.end_time IS 'End of the Pacific day in UTC, as Meta reports it.';
COMMENT ON COLUMN ig_account_insight.collected_at IS 'When the current value was first seen (Meta revises recent days for up to ~48 h).';

CREATE TABLE ig_unavailable (
    object_type   text NOT NULL CHECK (object_type IN ('account', 'media')),
    object_id     bigint NOT NULL,
    metric        text NOT NULL,
    scope         text NOT NULL DEFAULT '',
    reason        text NOT NULL,
    detail        text,
    first_seen_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    PRIMARY KEY (object_type, object_id, metric, scope)
);
COMMENT ON TABLE ig_unavailable IS 'Data Meta did not give, and why (absent data is recorded here, never stored as 0). A row may remain after a value was later stored: compare last_seen_at with the insight''s collected_at.';
COMMENT ON COLUMN ig_unavailable.metric IS 'Metric name, or * when nothing of the object is available.';
COMMENT ON COLUMN ig_unavailable.scope IS ''''' for media; the day''s end_time (ISO) or timeframe/breakdown for account metrics.';
COMMENT ON COLUMN ig_unavailable.reason IS 'unsupported_for_product_type, fewer_than_100_followers, not_enough_viewers, posted_before_business_conversion, story_expired, no_data, deprecated_metric.';

CREATE TABLE collector_job_state (
    ig_user_id           bigint NOT NULL,
    job                  text NOT NULL,
    last_success_at      timestamptz,
    last_attempt_at      timestamptz NOT NULL,
    last_error           text,
    consecutive_failures integer NOT NULL DEFAULT 0,
    PRIMARY KEY (ig_user_id, job)
);
COMMENT ON TABLE collector_job_state IS 'Per account and job (profile, media, stories, account_insights, demographics): last attempt and success. Committed after the data it vouches for.';
COMMENT ON COLUMN collector_job_state.last_error IS 'Error of the last attempt when it failed; NULL after a success.';
