"""The writer's SQL: per-connection staging tables and one upsert statement per target table.

Rows are COPYed into a TEMP staging table (`ON COMMIT DELETE ROWS`, so it is empty at the start of every
transaction and its ctid order is the COPY order) and merged by one statement. Each upsert comes in two
forms: the plain one, and a deduplicating one (`DISTINCT ON key ORDER BY key, ctid DESC`: the last row
added wins) used only when the plain one hits the same key twice in one batch (CardinalityViolation),
because the sort costs ~20 % of the throughput and duplicates within a batch are rare.

Metric values are staged as float8 when every value of the batch is an int within ±2**53 or a float (what
orjson gives), and cast with `::text::numeric`, which is exact: float8 output is the shortest string that
round-trips (extra_float_digits ≥ 1, PostgreSQL ≥ 12), i.e. Python's repr. asyncpg's numeric encoder is
~3x slower than its float8 one (and turns 0.1 into 0.1000000000000000055...). Batches holding Decimals or
larger ints go through a staging table whose value is text (`str(value)`, exact for all three types).
"""

# Every statement here is assembled from this module's constants (table names, key lists), never from
# input, and values travel by COPY: the f-strings are not an injection vector.
# ruff: noqa: S608

from __future__ import annotations

from typing import NamedTuple

from collector import models


class TableSql(NamedTuple):
    stage: str  # staging table (float8 values where the table has values)
    stage_exact: str | None  # text-valued staging table, for values float8 cannot carry
    upsert: str  # format with {stage}, {value},


_MEDIA_INSIGHT_COLS = "media_id, metric, breakdown, dimension"
_ACCOUNT_INSIGHT_COLS = "ig_user_id, metric, period, end_time, breakdown, dimension"

# One simple-query round trip at the start of each writer transaction.
SETUP = """
SET LOCAL client_min_messages = warning;
SET LOCAL extra_float_digits = 1;
SET LOCAL jit = off;
CREATE TEMP TABLE IF NOT EXISTS igc_stage_account (
    ig_user_id bigint, username text, login text, followers_count bigint, media_count bigint,
    status text, status_detail text, updated_at timestamptz) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS igc_stage_media (
    media_id bigint, ig_user_id bigint, media_type text, media_product_type text, posted_at timestamptz,
    permalink text, like_count bigint, comments_count bigint, seen_at timestamptz,
    insights_refreshed_at timestamptz) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS igc_stage_media_insight (
    media_id bigint, metric text, breakdown text, dimension text, value float8,
    collected_at timestamptz) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS igc_stage_media_insight_exact (
    media_id bigint, metric text, breakdown text, dimension text, value text,
    collected_at timestamptz) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS igc_stage_account_insight (
    ig_user_id bigint, metric text, period text, end_time timestamptz, breakdown text, dimension text,
    value float8, collected_at timestamptz) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS igc_stage_account_insight_exact (
    ig_user_id bigint, metric text, period text, end_time timestamptz, breakdown text, dimension text,
    value text, collected_at timestamptz) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS igc_stage_unavailable (
    object_type text, object_id bigint, metric text, scope text, reason text, detail text,
    seen_at timestamptz) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS igc_stage_job_state (
    ig_user_id bigint, job text, last_success_at timestamptz, last_attempt_at timestamptz,
    last_error text, failures integer) ON COMMIT DELETE ROWS;
"""

FLOAT_VALUE = "value::text::numeric"
EXACT_VALUE = "value::numeric"

TABLES: dict[models.Table, TableSql] = {
    models.Table.ACCOUNT: TableSql("igc_stage_account", None, """
INSERT INTO ig_account AS t (ig_user_id, username, login, followers_count, media_count, status, status_detail,
                             updated_at)
SELECT ig_user_id, username, login, followers_count, media_count, status, status_detail, updated_at
FROM {stage}
ON CONFLICT (ig_user_id) DO UPDATE SET
    username = COALESCE(EXCLUDED.username, t.username),
    login = EXCLUDED.login,
    followers_count = COALESCE(EXCLUDED.followers_count, t.followers_count),
    media_count = COALESCE(EXCLUDED.media_count, t.media_count),
    status = EXCLUDED.status,
    status_detail = EXCLUDED.status_detail,
    updated_at = EXCLUDED.updated_at
"""),
    # last_seen_at never moves backwards (a late webhook for an older sighting); insights_refreshed_at
    # NULL means "insights not fetched this time", so it keeps the stored value.
    models.Table.MEDIA: TableSql("igc_stage_media", None, """
INSERT INTO ig_media AS t (media_id, ig_user_id, media_type, media_product_type, posted_at, permalink,
                           like_count, comments_count, first_seen_at, last_seen_at, insights_refreshed_at)
SELECT media_id, ig_user_id, media_type, media_product_type, posted_at, permalink, like_count, comments_count,
       seen_at, seen_at, insights_refreshed_at
FROM {stage}
ON CONFLICT (media_id) DO UPDATE SET
    ig_user_id = EXCLUDED.ig_user_id,
    media_type = COALESCE(EXCLUDED.media_type, t.media_type),
    media_product_type = COALESCE(EXCLUDED.media_product_type, t.media_product_type),
    posted_at = COALESCE(EXCLUDED.posted_at, t.posted_at),
    permalink = COALESCE(EXCLUDED.permalink, t.permalink),
    like_count = COALESCE(EXCLUDED.like_count, t.like_count),
    comments_count = COALESCE(EXCLUDED.comments_count, t.comments_count),
    last_seen_at = GREATEST(EXCLUDED.last_seen_at, t.last_seen_at),
    insights_refreshed_at = COALESCE(EXCLUDED.insights_refreshed_at, t.insights_refreshed_at)
"""),
    # Unchanged values are skipped (no new row version, no history); RETURNING yields exactly the inserted
    # and changed rows, which the outer INSERT appends to the history in the same statement.
    models.Table.MEDIA_INSIGHT: TableSql("igc_stage_media_insight", "igc_stage_media_insight_exact", f"""
WITH up AS (
    INSERT INTO ig_media_insight AS t ({_MEDIA_INSIGHT_COLS}, value, collected_at)
    SELECT {_MEDIA_INSIGHT_COLS}, {{value}}, collected_at
    FROM {{stage}}
    ON CONFLICT ({_MEDIA_INSIGHT_COLS}) DO UPDATE
        SET value = EXCLUDED.value, collected_at = EXCLUDED.collected_at
        WHERE t.value IS DISTINCT FROM EXCLUDED.value
    RETURNING t.media_id, t.metric, t.breakdown, t.dimension, t.value, t.collected_at
)
INSERT INTO ig_media_insight_history ({_MEDIA_INSIGHT_COLS}, value, collected_at)
SELECT {_MEDIA_INSIGHT_COLS}, value, collected_at FROM up
"""),
    models.Table.ACCOUNT_INSIGHT: TableSql(
        "igc_stage_account_insight", "igc_stage_account_insight_exact", f"""
INSERT INTO ig_account_insight AS t ({_ACCOUNT_INSIGHT_COLS}, value, collected_at)
SELECT {_ACCOUNT_INSIGHT_COLS}, {{value}}, collected_at
FROM {{stage}}
ON CONFLICT ({_ACCOUNT_INSIGHT_COLS}) DO UPDATE
    SET value = EXCLUDED.value, collected_at = EXCLUDED.collected_at
    WHERE t.value IS DISTINCT FROM EXCLUDED.value
"""),
    models.Table.UNAVAILABLE: TableSql("igc_stage_unavailable", None, """
INSERT INTO ig_unavailable AS t (object_type, object_id, metric, scope, reason, detail, first_seen_at,
                                 last_seen_at)
SELECT object_type, object_id, metric, scope, reason, detail, seen_at, seen_at
FROM {stage}
ON CONFLICT (object_type, object_id, metric, scope) DO UPDATE SET
    reason = EXCLUDED.reason,
    detail = EXCLUDED.detail,
    last_seen_at = GREATEST(EXCLUDED.last_seen_at, t.last_seen_at)
"""),
    # Staged already folded per key by the writer (several attempts of one job can share a batch):
    # `failures` counts the failed attempts after the batch's last success; a non-NULL last_success_at
    # means the batch holds a success, so the stored count restarts from `failures`.
    models.Table.JOB_STATE: TableSql("igc_stage_job_state", None, """
INSERT INTO collector_job_state AS t (ig_user_id, job, last_success_at, last_attempt_at, last_error,
                                      consecutive_failures)
SELECT ig_user_id, job, last_success_at, last_attempt_at, last_error, failures
FROM {stage}
ON CONFLICT (ig_user_id, job) DO UPDATE SET
    last_success_at = COALESCE(EXCLUDED.last_success_at, t.last_success_at),
    last_attempt_at = GREATEST(EXCLUDED.last_attempt_at, t.last_attempt_at),
    last_error = EXCLUDED.last_error,
    consecutive_failures = EXCLUDED.consecutive_failures
        + CASE WHEN EXCLUDED.last_success_at IS NULL THEN t.consecutive_failures ELSE 0 END
"""),
}

KEYS: dict[models.Table, str] = {
    models.Table.ACCOUNT: "ig_user_id",
    models.Table.MEDIA: "media_id",
    models.Table.MEDIA_INSIGHT: _MEDIA_INSIGHT_COLS,
    models.Table.ACCOUNT_INSIGHT: _ACCOUNT_INSIGHT_COLS,
    models.Table.UNAVAILABLE: "object_type, object_id, metric, scope",
    models.Table.JOB_STATE: "ig_user_id, job",
}


def upsert_sql(table: models.Table, *, exact: bool, dedupe: bool) -> str:
    """The merge statement for `table` from its (float8 or exact) staging table."""
    spec = TABLES[table]
    stage = spec.stage_exact if exact and spec.stage_exact else spec.stage
    source = stage
    if dedupe:
        key = KEYS[table]
        source = f"(SELECT DISTINCT ON ({key}) * FROM {stage} ORDER BY {key}, ctid DESC) AS s"
    return spec.upsert.format(stage=source, value=EXACT_VALUE if exact else FLOAT_VALUE)
