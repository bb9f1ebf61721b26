-- 004_cluster: several daemons on one database (docs/operations.md, "Several instances").
-- Work is leased per account: an instance claims an account whose jobs are due (FOR UPDATE SKIP LOCKED),
-- runs them, renews the lease while it runs and releases it with the account's next due time. Refreshed
-- Instagram Login tokens live here too, so every instance uses the newest one.

CREATE TABLE collector_lease (
    ig_user_id  bigint PRIMARY KEY,
    next_due_at timestamptz NOT NULL,
    holder      text,
    lease_until timestamptz,
    claimed_at  timestamptz,
    released_at timestamptz,
    CHECK ((holder IS NULL) = (lease_until IS NULL))
);
CREATE INDEX collector_lease_due_idx ON collector_lease (next_due_at);
CREATE INDEX collector_lease_holder_idx ON collector_lease (holder) WHERE holder IS NOT NULL;
COMMENT ON TABLE collector_lease IS 'Per account: when its earliest job is next due and which daemon instance holds it. A lease not renewed by lease_until is taken over by another instance.';
COMMENT ON COLUMN collector_lease.next_due_at IS 'Earliest due time of the account''s jobs, written by the last holder on release (a hint: the claimer re-derives it from collector_job_state).';
COMMENT ON COLUMN collector_lease.holder IS 'instance_id of the daemon running the account''s jobs; NULL when free.';
COMMENT ON COLUMN collector_lease.lease_until IS 'The lease ends here unless renewed (database clock).';

CREATE TABLE collector_instance (
    instance_id  text PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    stopped_at   timestamptz,
    lease_s      double precision NOT NULL,
    claims       bigint NOT NULL DEFAULT 0,
    takeovers    bigint NOT NULL DEFAULT 0,
    renewals     bigint NOT NULL DEFAULT 0,
    releases     bigint NOT NULL DEFAULT 0,
    lost         bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE collector_instance IS 'Each daemon instance that ran against this database: heartbeat (each lease renewal round) and its lease counters since it started.';
COMMENT ON COLUMN collector_instance.takeovers IS 'Claims of an account whose previous holder''s lease had expired (it died or stalled).';
COMMENT ON COLUMN collector_instance.lost IS 'Leases this instance found taken over by another one when renewing.';

CREATE TABLE collector_token (
    ig_user_id         bigint PRIMARY KEY,
    source_fingerprint text NOT NULL,
    first_seen_at      timestamptz NOT NULL,
    access_token       text,
    refreshed_at       timestamptz,
    expires_at         timestamptz,
    last_attempt_at    timestamptz,
    last_error         text
);
-- Only the collector's own role (the owner) reads it; grant reporting roles the other tables only.
REVOKE ALL ON collector_token FROM PUBLIC;
COMMENT ON TABLE collector_token IS 'Refreshed Instagram Login tokens (secret: readable by the collector''s role only). A row is refreshed by one instance at a time, under a row lock.';
COMMENT ON COLUMN collector_token.source_fingerprint IS 'sha256 prefix of the configured token this record descends from; a different configured token wins over the stored one.';
COMMENT ON COLUMN collector_token.last_error IS 'Token-free description of the last failed refresh.';
