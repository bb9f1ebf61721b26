"""The writer's SQL: per-connection staging tables and one upsert statement per target table.

Rows are COPYed into a TEMP staging table (`ON COMMIT DELETE ROWS`, so it is empty at the start of every
transaction and its ctid order is the COPY order) and merged by one statement. Each upsert comes in two
forms: the plain one, and a deduplicating one (`DISTINCT ON key ORDER BY key, ctid DESC`: the last row
added wins) used only when the plain one hits the same key twice in one batch (CardinalityViolation, or
UniqueViolation from the media-insight fast form's plain INSERT), because the sort costs ~20 % of the
throughput and duplicates within a batch are rare.

Metric values are staged as int8 when every value of the batch is an int within int64 (most metrics: counts,
cast with `::numeric`), else as float8 when every value is an int within ±2**53 or a float (what orjson
gives), cast with `::text::numeric`, which is exact: float8 output is the shortest string that
round-trips (extra_float_digits ≥ 1, PostgreSQL ≥ 12), i.e. Python's repr. asyncpg's numeric encoder is
~3x slower than its float8 one (and turns 0.1 into 0.1000000000000000055...). Batches holding Decimals or
larger ints go through a staging table whose value is text (`str(value)`, exact for all three types).

The insight tables' timestamps (collected_at, end_time) are staged as int8 microseconds since the Unix
epoch and converted in SQL (`_ts`): asyncpg's timestamptz encoder costs ~1.4 µs a value (astimezone and
timedelta arithmetic in Python objects), which was 70 % of the client's COPY cost, while a batch holds
only a handful of distinct timestamps that the writer converts once each.
"""

# Every statement here is assembled from this module's constants (table names, key lists), never from
# input, and values travel by COPY: the f-strings are not an injection vector.
# ruff: noqa: S608

from __future__ import annotations

import enum
from typing import NamedTuple

from collector import models


class TableSql(NamedTuple):
    stage: str  # staging table; tables with values have one per ValueKind: f"{stage}_{kind}"
    upsert: str  # format with {stage}, {value}


class ValueKind(enum.StrEnum):
    """How a batch's metric values travel (the cheapest type that carries every value exactly)."""

    INT = "int"  # int8, `::numeric`
    FLOAT = "float"  # float8, `::text::numeric`
    TEXT = "text"  # str(value), `::numeric` (Decimals, ints beyond int64)


VALUE_SQL = {ValueKind.INT: "value::numeric", ValueKind.FLOAT: "value::text::numeric",
             ValueKind.TEXT: "value::numeric"}
_VALUE_TYPE = {ValueKind.INT: "int8", ValueKind.FLOAT: "float8", ValueKind.TEXT: "text"}


def _ts(column: str) -> str:
    """SQL for a timestamp staged as int8 microseconds since the Unix epoch (see the module docstring).

    Exact: the int8 is converted to float8 for the interval product, and every microsecond count below
    2**53 (the year 2255) is a float8 integer; an interval of microseconds only has no day or month part,
    so the sum does not depend on the session time zone.
    """
    return f"(timestamptz '1970-01-01 00:00:00+00' + {column} * interval '1 microsecond')"


_MEDIA_INSIGHT_COLS = "media_id, metric, breakdown, dimension"
_ACCOUNT_INSIGHT_COLS = "ig_user_id, metric, period, end_time, breakdown, dimension"

_STAGE_MEDIA_INSIGHT = """CREATE TEMP TABLE IF NOT EXISTS igc_stage_media_insight_{kind} (
    media_id bigint, metric text, breakdown text, dimension text, value {type},
    collected_at bigint) ON COMMIT DELETE ROWS;"""
_STAGE_ACCOUNT_INSIGHT = """CREATE TEMP TABLE IF NOT EXISTS igc_stage_account_insight_{kind} (
    ig_user_id bigint, metric text, period text, end_time bigint, breakdown text, dimension text,
    value {type}, collected_at bigint) ON COMMIT DELETE ROWS;"""

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
CREATE TEMP TABLE IF NOT EXISTS igc_stage_unavailable (
    object_type text, object_id bigint, metric text, scope text, reason text, detail text,
    seen_at timestamptz) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS igc_stage_job_state (
    ig_user_id bigint, job text, last_success_at timestamptz, last_attempt_at timestamptz,
    last_error text, failures integer) ON COMMIT DELETE ROWS;
""" + "\n".join(
    ddl.format(kind=kind.value, type=_VALUE_TYPE[kind])
    for ddl in (_STAGE_MEDIA_INSIGHT, _STAGE_ACCOUNT_INSIGHT) for kind in ValueKind)

# Staged timestamp columns (int8 microseconds) of the tables that are staged that way.
_MI_AT = _ts("collected_at")
_AI_END, _AI_AT = _ts("end_time"), _ts("collected_at")

# The media-insight merge in one statement. `known`: the batch's media that already have rows (one index
# probe per media, not per row). Rows of the other media are new: a plain INSERT, which costs about half
# of a speculative ON CONFLICT insertion. Rows of known media go through ON CONFLICT, which skips unchanged
# values (no new row version, no history). Both RETURN exactly the inserted and changed rows, which the
# outer INSERT appends to the history in the same statement. A key that appears twice in the batch, or a
# concurrent writer inserting a "new" key first, raises (UniqueViolation / CardinalityViolation): the
# writer then runs MEDIA_INSIGHT_DEDUPE, the all-ON-CONFLICT form over the last row of each key.
MEDIA_INSIGHT_FAST = f"""
WITH known AS MATERIALIZED (
    SELECT d.media_id FROM (SELECT DISTINCT media_id FROM {{stage}}) AS d
    WHERE EXISTS (SELECT FROM ig_media_insight AS t WHERE t.media_id = d.media_id)
), fresh AS (
    INSERT INTO ig_media_insight ({_MEDIA_INSIGHT_COLS}, value, collected_at)
    SELECT {_MEDIA_INSIGHT_COLS}, {{value}}, {_MI_AT}
    FROM {{stage}} WHERE media_id NOT IN (SELECT media_id FROM known)
    RETURNING media_id, metric, breakdown, dimension, value, collected_at
), up AS (
    INSERT INTO ig_media_insight AS t ({_MEDIA_INSIGHT_COLS}, value, collected_at)
    SELECT {_MEDIA_INSIGHT_COLS}, {{value}}, {_MI_AT}
    FROM {{stage}} WHERE media_id IN (SELECT media_id FROM known)
    ON CONFLICT ({_MEDIA_INSIGHT_COLS}) DO UPDATE
        SET value = EXCLUDED.value, collected_at = EXCLUDED.collected_at
        WHERE t.value IS DISTINCT FROM EXCLUDED.value
    RETURNING t.media_id, t.metric, t.breakdown, t.dimension, t.value, t.collected_at
)
INSERT INTO ig_media_insight_history ({_MEDIA_INSIGHT_COLS}, value, collected_at)
SELECT * FROM fresh UNION ALL SELECT * FROM up
"""

TABLES: dict[models.Table, TableSql] = {
    models.Table.ACCOUNT: TableSql("igc_stage_account", """
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
    models.Table.MEDIA: TableSql("igc_stage_media", """
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
    # The robust form (MEDIA_INSIGHT_FAST is tried first): unchanged values are skipped (no new row
    # version, no history); RETURNING yields exactly the inserted and changed rows, which the outer INSERT
    # appends to the history in the same statement.
    models.Table.MEDIA_INSIGHT: TableSql("igc_stage_media_insight", f"""
WITH up AS (
    INSERT INTO ig_media_insight AS t ({_MEDIA_INSIGHT_COLS}, value, collected_at)
    SELECT {_MEDIA_INSIGHT_COLS}, {{value}}, {_MI_AT}
    FROM {{stage}}
    ON CONFLICT ({_MEDIA_INSIGHT_COLS}) DO UPDATE
        SET value = EXCLUDED.value, collected_at = EXCLUDED.collected_at
        WHERE t.value IS DISTINCT FROM EXCLUDED.value
    RETURNING t.media_id, t.metric, t.breakdown, t.dimension, t.value, t.collected_at
)
INSERT INTO ig_media_insight_history ({_MEDIA_INSIGHT_COLS}, value, collected_at)
SELECT {_MEDIA_INSIGHT_COLS}, value, collected_at FROM up
"""),
    models.Table.ACCOUNT_INSIGHT: TableSql("igc_stage_account_insight", f"""
INSERT INTO ig_account_insight AS t ({_ACCOUNT_INSIGHT_COLS}, value, collected_at)
SELECT ig_user_id, metric, period, {_AI_END}, breakdown, dimension, {{value}}, {_AI_AT}
FROM {{stage}}
ON CONFLICT ({_ACCOUNT_INSIGHT_COLS}) DO UPDATE
    SET value = EXCLUDED.value, collected_at = EXCLUDED.collected_at
    WHERE t.value IS DISTINCT FROM EXCLUDED.value
"""),
    models.Table.UNAVAILABLE: TableSql("igc_stage_unavailable", """
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
    models.Table.JOB_STATE: TableSql("igc_stage_job_state", """
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


VALUED = frozenset({models.Table.MEDIA_INSIGHT, models.Table.ACCOUNT_INSIGHT})


def stage_table(table: models.Table, kind: ValueKind | None) -> str:
    """The staging table of `table` (for tables with values: the one for `kind`)."""
    stage = TABLES[table].stage
    return f"{stage}_{kind or ValueKind.FLOAT}" if table in VALUED else stage


def upsert_sql(table: models.Table, kind: ValueKind | None, *, dedupe: bool) -> str:
    """The merge statement for `table` from its staging table for `kind`: the fast form first tried, or
    the deduplicating one (last row of each key; every key through ON CONFLICT)."""
    spec = TABLES[table]
    stage = stage_table(table, kind)
    value = VALUE_SQL[kind or ValueKind.FLOAT]
    if table is models.Table.MEDIA_INSIGHT and not dedupe:
        return MEDIA_INSIGHT_FAST.format(stage=stage, value=value)
    source = stage
    if dedupe:
        key = KEYS[table]
        source = f"(SELECT DISTINCT ON ({key}) * FROM {stage} ORDER BY {key}, ctid DESC) AS s"
    return spec.upsert.format(stage=source, value=value)
