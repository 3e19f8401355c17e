-- When a token is due for refresh, decided from its own lifetime when it is written: its
-- expiry minus min(refresh.lead_secs, lifetime × refresh.lead_fraction). A token is then
-- refreshed about once per lifetime whatever the provider's lifetime (Keycloak's 300 s access
-- tokens are no longer due the moment they are issued), and the refresher's claim is a plain
-- range scan on this column.
ALTER TABLE oauth_tokens ADD COLUMN refresh_due_at timestamptz;

-- A writer that does not set it (an older binary during a rolling deploy, a manual UPDATE of
-- the expiry) gets the old rule: due 300 s before expiry.
CREATE FUNCTION oauth_tokens_default_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.refresh_due_at IS NULL
       OR (TG_OP = 'UPDATE' AND NEW.access_expires_at IS DISTINCT FROM OLD.access_expires_at
           AND NEW.refresh_due_at IS NOT DISTINCT FROM OLD.refresh_due_at) THEN
        NEW.refresh_due_at := NEW.access_expires_at - interval '300 seconds';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER oauth_tokens_default_due BEFORE INSERT OR UPDATE ON oauth_tokens
    FOR EACH ROW EXECUTE FUNCTION oauth_tokens_default_due();

UPDATE oauth_tokens SET refresh_due_at = access_expires_at - interval '300 seconds';
ALTER TABLE oauth_tokens ALTER COLUMN refresh_due_at SET NOT NULL;

CREATE INDEX oauth_tokens_refresh_due_idx ON oauth_tokens (refresh_due_at)
    WHERE refresh_token IS NOT NULL AND refresh_status <> 'needs_login';
DROP INDEX oauth_tokens_due_idx;
