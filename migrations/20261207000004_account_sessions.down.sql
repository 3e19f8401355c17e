DROP INDEX sessions_token_last_seen_idx;
DELETE FROM admin_audit WHERE action IN
    ('sign_out_session', 'sign_out_other_sessions', 'sign_out_everywhere', 'session_limit');
ALTER TABLE admin_audit DROP CONSTRAINT admin_audit_action_check;
ALTER TABLE admin_audit ADD CONSTRAINT admin_audit_action_check
    CHECK (action IN ('revoke_session', 'revoke_user_sessions'));
DROP VIEW logins;
CREATE VIEW logins AS
SELECT t.token_id, t.user_id, u.issuer, u.subject, u.email, u.name, u.groups,
       t.provider_sid, t.access_expires_at, t.refresh_status, t.failure_count,
       t.next_attempt_at, t.last_refreshed_at, t.created_at, u.email_verified
FROM oauth_tokens t
JOIN users u USING (user_id);
ALTER TABLE oauth_tokens DROP COLUMN auth_time, DROP COLUMN acr;
