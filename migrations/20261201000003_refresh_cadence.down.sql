CREATE INDEX oauth_tokens_due_idx ON oauth_tokens (access_expires_at)
    WHERE refresh_token IS NOT NULL AND refresh_status <> 'needs_login';
DROP INDEX oauth_tokens_refresh_due_idx;
DROP TRIGGER oauth_tokens_default_due ON oauth_tokens;
DROP FUNCTION oauth_tokens_default_due();
ALTER TABLE oauth_tokens DROP COLUMN refresh_due_at;
