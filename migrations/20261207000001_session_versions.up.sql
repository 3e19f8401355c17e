-- Every change of a session's content bumps its `version`, so a request writes its changes
-- back only onto the state it read (compare-and-set): two concurrent requests of one session
-- can no longer overwrite each other's cart lines. The trigger bumps it for any writer,
-- including a binary that predates this column, so old and new binaries can run side by side.
-- Pushing the idle expiry forward (last_seen_at, expires_at) is not a change of content.
ALTER TABLE sessions ADD COLUMN version bigint NOT NULL DEFAULT 0;

CREATE FUNCTION sessions_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IS DISTINCT FROM OLD.state
       OR NEW.token_id IS DISTINCT FROM OLD.token_id
       OR NEW.key_hash IS DISTINCT FROM OLD.key_hash THEN
        NEW.version := OLD.version + 1;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER sessions_version BEFORE UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessions_bump_version();
