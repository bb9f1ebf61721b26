-- 002_unavailable_current: which ig_unavailable reasons still hold.
-- ig_unavailable keeps every reason ever recorded (with first/last_seen_at); a reason can stop holding, e.g. a
-- story that later had enough viewers, or a day whose account data arrived after Meta's ~48 h lag. This view
-- is what analysts usually want: the reasons true as of the latest collection.
CREATE VIEW ig_unavailable_current AS
SELECT u.*
FROM ig_unavailable u
LEFT JOIN ig_media m ON u.object_type = 'media' AND m.media_id = u.object_id
WHERE CASE
    -- Media: every refresh records the complete set of reasons with last_seen_at = the refresh time.
    WHEN u.object_type = 'media' THEN m.insights_refreshed_at IS NULL OR u.last_seen_at >= m.insights_refreshed_at
    -- Daily account metrics (scope = the day's end_time): gone once a value for that day is stored.
    WHEN u.scope ~ '^\d{4}-\d{2}-\d{2}T' THEN NOT EXISTS (
        SELECT 1 FROM ig_account_insight a
        WHERE a.ig_user_id = u.object_id AND a.metric = u.metric AND a.period = 'day'
          AND a.end_time = u.scope::timestamptz)
    -- Demographics / online_followers (scope = timeframe:breakdown or ''): gone once a later snapshot exists.
    ELSE NOT EXISTS (
        SELECT 1 FROM ig_account_insight a
        WHERE a.ig_user_id = u.object_id AND a.metric = u.metric AND a.collected_at > u.last_seen_at)
END;
COMMENT ON VIEW ig_unavailable_current IS 'The ig_unavailable reasons that still hold as of the latest collection.';
