-- 003_history_partitioned: ig_media_insight_history becomes range-partitioned by collected_at (one partition
-- per Pacific month, a default partition for strays), converted without stopping the writers.
--
-- This file only prepares the conversion, in one short transaction; collector.storage.conversion finishes
-- it right after, in the same `migrate` (docs/operations.md, "Partitioned history"):
--   * ig_media_insight_history_next is the new partitioned table, with the current Pacific month and two
--     ahead (the copy adds the months of the old rows as it reaches them);
--   * a statement trigger copies every row inserted into the old table from now on into the new one, in
--     the inserting transaction, and those rows are marked (igc_during_conversion = true, the column
--     default from now on; every earlier row reads false without a rewrite);
--   * the unmarked rows, all in the pages that exist now, are copied in batches of pages (the progress is
--     in collector_history_conversion, committed with each batch, so an interrupted copy resumes);
--   * once the counts of both tables agree under one snapshot, a short transaction drops the old table
--     and renames the new one into its place.

CREATE TABLE ig_media_insight_history_next (
    media_id     bigint NOT NULL,
    metric       text NOT NULL,
    breakdown    text NOT NULL DEFAULT '',
    dimension    text NOT NULL DEFAULT '',
    value        numeric NOT NULL,
    collected_at timestamptz NOT NULL
) PARTITION BY RANGE (collected_at);
CREATE INDEX ig_media_insight_history_next_media_idx ON ig_media_insight_history_next (media_id, collected_at);
CREATE TABLE ig_media_insight_history_default PARTITION OF ig_media_insight_history_next DEFAULT;
COMMENT ON TABLE ig_media_insight_history_default IS
    'Rows of a month without a partition of its own (normally none; the daemon creates months ahead).';
-- The current Pacific month and two ahead exist before any row can arrive (the rows written while the copy
-- runs must not go to the default partition). Same names and bounds as collector.storage.partitions.
DO $$
DECLARE
    first date := date_trunc('month', now() AT TIME ZONE 'America/Los_Angeles')::date;
    month date;
BEGIN
    FOR i IN 0..2 LOOP
        month := first + make_interval(months => i);
        EXECUTE format('CREATE TABLE %I PARTITION OF ig_media_insight_history_next FOR VALUES FROM (%L) TO (%L)',
                       'ig_media_insight_history_p' || to_char(month, 'YYYY_MM'),
                       month::timestamp AT TIME ZONE 'America/Los_Angeles',
                       (month + interval '1 month')::timestamp AT TIME ZONE 'America/Los_Angeles');
    END LOOP;
END
$$;

-- Both instant: existing rows read the first default (false) without being rewritten.
ALTER TABLE ig_media_insight_history ADD COLUMN igc_during_conversion boolean NOT NULL DEFAULT false;
ALTER TABLE ig_media_insight_history ALTER COLUMN igc_during_conversion SET DEFAULT true;

CREATE FUNCTION igc_history_conversion_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ig_media_insight_history_next (media_id, metric, breakdown, dimension, value, collected_at)
    SELECT media_id, metric, breakdown, dimension, value, collected_at FROM igc_new_rows;
    RETURN NULL;
END
$$;
CREATE TRIGGER igc_history_conversion AFTER INSERT ON ig_media_insight_history
    REFERENCING NEW TABLE AS igc_new_rows FOR EACH STATEMENT EXECUTE FUNCTION igc_history_conversion_copy();

-- This transaction holds the old table's lock: no row can be added before the trigger exists, so every
-- unmarked row is in the pages counted here.
CREATE TABLE collector_history_conversion (
    end_page   bigint NOT NULL,
    next_page  bigint NOT NULL,
    copied     bigint NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE collector_history_conversion IS
    'Progress of the conversion of ig_media_insight_history to a partitioned table (dropped when done).';
INSERT INTO collector_history_conversion (end_page, next_page, copied)
SELECT pg_relation_size('ig_media_insight_history') / current_setting('block_size')::bigint, 0, 0;
