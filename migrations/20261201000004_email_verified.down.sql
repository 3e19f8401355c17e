DROP VIEW logins;
CREATE VIEW logins AS
SELECT t.token_id, t.user_id, u.issuer, u.subject, u.email, u.name, u.groups,
       t.provider_sid, t.access_expires_at, t.refresh_status, t.failure_count,
       t.next_attempt_at, t.last_refreshed_at, t.created_at
FROM oauth_tokens t
JOIN users u USING (user_id);
ALTER TABLE users DROP COLUMN email_verified;
