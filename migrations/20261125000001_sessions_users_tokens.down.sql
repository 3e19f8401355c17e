DROP TABLE sessions;
DROP TABLE oauth_tokens;
DROP TABLE users;
DROP FUNCTION set_updated_at();
