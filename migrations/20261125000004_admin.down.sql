DROP INDEX users_search_idx;
DROP INDEX oauth_tokens_unhealthy_idx;
DROP INDEX oauth_tokens_expiry_idx;
DROP INDEX sessions_created_idx;
DROP INDEX sessions_last_seen_idx;
DROP TABLE admin_audit;
-- pg_trgm stays: other objects may use it, and dropping an extension is the DBA's call.
