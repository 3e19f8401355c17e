DROP TABLE token_refresh_stats;
ALTER TABLE oauth_tokens DROP COLUMN refresh_claim;
