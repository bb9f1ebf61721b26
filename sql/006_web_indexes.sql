-- 006_web_indexes: bounded reads for the web UI's "last errors" panels (collector/web/queries.py).
-- Both are partial indexes over the few failing rows, so the overview reads the newest ones without
-- scanning collector_job_state or ig_account, whatever the number of accounts.
CREATE INDEX collector_job_state_errors_idx ON collector_job_state (last_attempt_at DESC)
    WHERE last_error IS NOT NULL;
CREATE INDEX ig_account_not_ok_idx ON ig_account (updated_at DESC) WHERE status <> 'ok';
