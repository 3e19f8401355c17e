-- The shopper's own sessions: when each login authenticated (step-up before large orders
-- asks for a recent one), and the shopper's own actions in the audit trail.

-- `auth_time` and `acr` of the login's ID token (NULL when the provider sent none).
ALTER TABLE oauth_tokens ADD COLUMN auth_time timestamptz, ADD COLUMN acr text;

-- The logins view gains them at the end (older readers select by name and are unaffected).
CREATE OR REPLACE VIEW logins AS
SELECT t.token_id, t.user_id, u.issuer, u.subject, u.email, u.name, u.groups,
       t.provider_sid, t.access_expires_at, t.refresh_status, t.failure_count,
       t.next_attempt_at, t.last_refreshed_at, t.created_at, u.email_verified,
       t.auth_time, t.acr
FROM oauth_tokens t
JOIN users u USING (user_id);

-- The audit trail records what shoppers do to their own sessions, and the session limit.
-- For these rows the "admin" columns name the shopper who acted.
ALTER TABLE admin_audit DROP CONSTRAINT admin_audit_action_check;
ALTER TABLE admin_audit ADD CONSTRAINT admin_audit_action_check CHECK (action IN (
    'revoke_session', 'revoke_user_sessions',
    'sign_out_session', 'sign_out_other_sessions', 'sign_out_everywhere', 'session_limit'));

-- A user's live sessions, most recently used first (the devices page, the session limit).
CREATE INDEX sessions_token_last_seen_idx ON sessions (token_id, last_seen_at DESC)
    WHERE token_id IS NOT NULL;
