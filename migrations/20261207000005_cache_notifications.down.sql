DROP TRIGGER products_notify ON products;
DROP FUNCTION products_notify();
DROP TRIGGER users_notify ON users;
DROP FUNCTION users_notify();
DROP TRIGGER oauth_tokens_notify ON oauth_tokens;
DROP FUNCTION oauth_tokens_notify();
DROP TRIGGER sessions_notify ON sessions;
DROP FUNCTION sessions_notify();
