-- `logins`: the read-only face of `oauth_tokens` for everything but the token store. One row
-- per login with its user and its token health, and none of the encrypted token columns: the
-- session load, the admin dashboard and the session table read this, while only the token
-- store (src/auth/tokens/) writes or reads `oauth_tokens` itself. A plain view: the planner
-- inlines it, so the indexes on `oauth_tokens` and `users` serve queries on it unchanged.
CREATE VIEW logins AS
SELECT t.token_id, t.user_id, u.issuer, u.subject, u.email, u.name, u.groups,
       t.provider_sid, t.access_expires_at, t.refresh_status, t.failure_count,
       t.next_attempt_at, t.last_refreshed_at, t.created_at
FROM oauth_tokens t
JOIN users u USING (user_id);
