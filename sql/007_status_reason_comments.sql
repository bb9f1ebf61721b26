-- 007_status_reason_comments: the values the code writes to ig_account.status and ig_unavailable.reason
-- (001 and 005 listed a 'failed' status never written to ig_account, and 001 missed four reasons added since).
-- 003's header points to docs/operations.md, "Partitioned history": that section is now "History: partitions,
-- retention, size" (the conversion: its "Upgrading to partitioned history (migration 003)").
-- Each column comment starts with "One of: " and the exact values (tests/test_storage.py reads them).

COMMENT ON COLUMN ig_account.status IS 'One of: ok, token_invalid, token_expired, permission_denied, not_found, unlinked. ok: collected; token_invalid, token_expired, permission_denied, not_found: an account-level Graph error stops the account''s collection (Meta''s message in status_detail); unlinked: no [[tokens]] entry reaches the account any more (its data stays). A job that failed for another reason is in collector_job_state, not here.';
COMMENT ON COLUMN ig_unavailable.reason IS 'One of: unsupported_for_product_type, fewer_than_100_followers, not_enough_viewers, posted_before_business_conversion, story_expired, no_data, object_not_found, deprecated_metric, permission_denied, graph_error. permission_denied (the token may not read this media''s insights) and graph_error (an error code the collector does not know; code and message in detail) are retried at the media''s next refresh (docs/errors.md).';
COMMENT ON TABLE ig_media_insight_history IS 'Append-only: one row each time a media metric value was first stored or changed. Range-partitioned by collected_at, one partition per Pacific month (docs/operations.md, "History: partitions, retention, size").';
