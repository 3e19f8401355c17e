DROP TRIGGER sessions_version ON sessions;
DROP FUNCTION sessions_bump_version();
ALTER TABLE sessions DROP COLUMN version;
