-- Every instance keeps sessions and the catalogue in memory; these triggers tell all of them,
-- through NOTIFY (delivered at commit), what changed, so a logout, a revoke, a back-channel
-- logout, a session limit, a refresh outcome or a group change on one instance is seen by
-- every other within a second. An instance that stops hearing them stops using its cache.
--
-- Channel `storefront_sessions`, payload `<hex of key_hash>:<what>`:
--   `<version>`  the session's content changed (an instance holding that version or newer
--                keeps it), `-` the session is gone or expires sooner, `*` its login or user
--                changed (token health, groups, email…).
-- Channel `storefront_products`: the catalogue changed (payload: the product id).
-- Channel `storefront_orders`: a user's orders changed (payload: the user id).

CREATE FUNCTION sessions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('storefront_sessions', encode(OLD.key_hash, 'hex') || ':-');
        RETURN OLD;
    END IF;
    IF NEW.key_hash IS DISTINCT FROM OLD.key_hash
       OR NEW.expires_at < OLD.expires_at
       OR NEW.absolute_expires_at < OLD.absolute_expires_at THEN
        PERFORM pg_notify('storefront_sessions', encode(OLD.key_hash, 'hex') || ':-');
    END IF;
    IF NEW.version IS DISTINCT FROM OLD.version THEN
        PERFORM pg_notify('storefront_sessions',
                          encode(NEW.key_hash, 'hex') || ':' || NEW.version::text);
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER sessions_notify AFTER UPDATE OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessions_notify();

-- A login's health as the session load reads it (the `logins` view's columns).
CREATE FUNCTION oauth_tokens_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.refresh_status IS DISTINCT FROM OLD.refresh_status
       OR NEW.access_expires_at IS DISTINCT FROM OLD.access_expires_at
       OR NEW.auth_time IS DISTINCT FROM OLD.auth_time
       OR NEW.acr IS DISTINCT FROM OLD.acr
       OR NEW.failure_count IS DISTINCT FROM OLD.failure_count
       OR NEW.user_id IS DISTINCT FROM OLD.user_id THEN
        PERFORM pg_notify('storefront_sessions', encode(s.key_hash, 'hex') || ':*')
        FROM sessions s WHERE s.token_id = NEW.token_id;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER oauth_tokens_notify AFTER UPDATE ON oauth_tokens
    FOR EACH ROW EXECUTE FUNCTION oauth_tokens_notify();

CREATE FUNCTION users_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.groups IS DISTINCT FROM OLD.groups
       OR NEW.email IS DISTINCT FROM OLD.email
       OR NEW.email_verified IS DISTINCT FROM OLD.email_verified
       OR NEW.name IS DISTINCT FROM OLD.name THEN
        PERFORM pg_notify('storefront_sessions', encode(s.key_hash, 'hex') || ':*')
        FROM sessions s JOIN oauth_tokens t USING (token_id)
        WHERE t.user_id = NEW.user_id;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER users_notify AFTER UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION users_notify();

CREATE FUNCTION products_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('storefront_products',
                      COALESCE(NEW.product_id, OLD.product_id)::text);
    RETURN NULL;
END;
$$;
CREATE TRIGGER products_notify AFTER INSERT OR UPDATE OR DELETE ON products
    FOR EACH ROW EXECUTE FUNCTION products_notify();

CREATE FUNCTION orders_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('storefront_orders', COALESCE(NEW.user_id, OLD.user_id)::text);
    RETURN NULL;
END;
$$;
CREATE TRIGGER orders_notify AFTER INSERT OR UPDATE OR DELETE ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_notify();
