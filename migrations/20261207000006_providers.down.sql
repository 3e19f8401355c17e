CREATE OR REPLACE VIEW logins AS
SELECT t.token_id, t.user_id, u.issuer, u.subject, u.email, u.name, u.groups,
       t.provider_sid, t.access_expires_at, t.refresh_status, t.failure_count,
       t.next_attempt_at, t.last_refreshed_at, t.created_at, u.email_verified,
       t.auth_time, t.acr
FROM oauth_tokens t
JOIN users u USING (user_id);
DROP TABLE linked_identities;
ALTER TABLE revocation_outbox DROP COLUMN issuer;
DROP TRIGGER oauth_tokens_identity ON oauth_tokens;
DROP FUNCTION oauth_tokens_identity();
ALTER TABLE oauth_tokens DROP COLUMN issuer, DROP COLUMN subject;
