-- The admin dashboard: the audit trail of admin actions, and the indexes its session table
-- needs to answer in milliseconds with 100,000+ sessions.

CREATE TABLE admin_audit (
    audit_id          uuid PRIMARY KEY,
    at                timestamptz NOT NULL DEFAULT now(),
    -- Who acted. Subject and email are copied so the trail survives the admin's user row.
    admin_user_id     uuid REFERENCES users ON DELETE SET NULL,
    admin_subject     text NOT NULL,
    admin_email       text,
    action            text NOT NULL CHECK (action IN ('revoke_session', 'revoke_user_sessions')),
    -- Whom it was done to, copied likewise.
    target_user_id    uuid REFERENCES users ON DELETE SET NULL,
    target_subject    text,
    target_email      text,
    target_session_id uuid,
    sessions_ended    integer NOT NULL DEFAULT 0,
    ip                inet
);
CREATE INDEX admin_audit_at_idx ON admin_audit (at DESC, audit_id DESC);

-- The session table's sort orders, newest first, for logged-in sessions (the ones listed).
CREATE INDEX sessions_last_seen_idx ON sessions (last_seen_at DESC, session_id DESC)
    WHERE token_id IS NOT NULL;
CREATE INDEX sessions_created_idx ON sessions (created_at DESC, session_id DESC)
    WHERE token_id IS NOT NULL;
-- "Sort by access token expiry" and "filter by refresh status" start from the tokens.
CREATE INDEX oauth_tokens_expiry_idx ON oauth_tokens (access_expires_at, token_id);
CREATE INDEX oauth_tokens_unhealthy_idx ON oauth_tokens (refresh_status)
    WHERE refresh_status <> 'ok';

-- Search by user or email is a substring search: a trigram index serves `ILIKE '%…%'`.
-- pg_trgm is a trusted extension: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX users_search_idx ON users
    USING gin ((coalesce(email, '') || ' ' || coalesce(name, '') || ' ' || subject) gin_trgm_ops);
