-- 005_discovered_accounts: accounts found through [[tokens]] (collector/discovery.py), and the 'unlinked'
-- status of an account that a later, successful discovery no longer finds (its data stays).

CREATE TABLE collector_discovered_account (
    ig_user_id        bigint PRIMARY KEY,
    login             text NOT NULL CHECK (login IN ('instagram', 'facebook')),
    username          text,
    token_fingerprint text NOT NULL,
    first_seen_at     timestamptz NOT NULL,
    last_seen_at      timestamptz NOT NULL,
    unlinked_at       timestamptz
);
COMMENT ON TABLE collector_discovered_account IS 'Accounts discovered from [[tokens]] entries: which token last reached each one, and since when it is unreachable.';
COMMENT ON COLUMN collector_discovered_account.token_fingerprint IS 'Short one-way hash (sha256 prefix) of the token that last found the account; never the token.';
COMMENT ON COLUMN collector_discovered_account.last_seen_at IS 'The last discovery that found the account.';
COMMENT ON COLUMN collector_discovered_account.unlinked_at IS 'When a successful discovery of its token first missed it; NULL while reachable.';
COMMENT ON COLUMN ig_account.status IS '''ok'' or the reason collection fails: token_invalid, token_expired, permission_denied, not_found, failed; or unlinked (no [[tokens]] entry reaches the account any more; its data stays).';
