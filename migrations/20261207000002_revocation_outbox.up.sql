-- Tokens of ended logins waiting to be revoked at the provider (RFC 7009). A login's end and
-- its revocations are written in one statement, so a revocation survives a crash, a restart
-- or a provider outage: any instance sends what is due (`FOR UPDATE SKIP LOCKED` under a short
-- lease), retrying with backoff until the provider answers or `attempts` runs out.
-- The token stays sealed under its login's key (`key_id`), bound to its `token_id` and column.
CREATE TABLE revocation_outbox (
    revocation_id   uuid PRIMARY KEY,
    token_id        uuid NOT NULL,
    key_id          text NOT NULL,
    token_type      text NOT NULL CHECK (token_type IN ('refresh_token', 'access_token')),
    token           bytea NOT NULL,
    -- Why the login ended: logout, admin_revoke, backchannel, expired, replaced, orphaned,
    -- ended_during_refresh (tokens a refresh returned after its login had ended).
    reason          text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revocation_outbox_next_attempt_idx ON revocation_outbox (next_attempt_at);
