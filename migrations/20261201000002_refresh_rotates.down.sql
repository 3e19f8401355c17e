ALTER TABLE oauth_tokens DROP COLUMN refresh_rotates;
