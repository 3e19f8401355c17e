DROP TABLE activity_stats;
ALTER TABLE oauth_tokens DROP COLUMN refresh_claim;
