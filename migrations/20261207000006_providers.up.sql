-- Several providers at once. A login belongs to the identity that signed in, (issuer,
-- subject), which is now kept on its token row: a user account may have more than one such
-- identity once an administrator allows linking by verified email
-- (`[[oidc.providers]] link_verified_emails`), and refresh, back-channel logout and
-- revocation must each go to the provider of that login.
--
-- Expand only: a binary that does not know these columns keeps working, since a token row
-- inserted without them takes its user's, and an outbox row without an issuer is sent to the
-- first configured provider.

ALTER TABLE oauth_tokens ADD COLUMN issuer text, ADD COLUMN subject text;
UPDATE oauth_tokens t SET issuer = u.issuer, subject = u.subject FROM users u
WHERE u.user_id = t.user_id;

CREATE FUNCTION oauth_tokens_identity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.issuer IS NULL OR NEW.subject IS NULL THEN
        SELECT u.issuer, u.subject INTO NEW.issuer, NEW.subject
        FROM users u WHERE u.user_id = NEW.user_id;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER oauth_tokens_identity BEFORE INSERT ON oauth_tokens
    FOR EACH ROW EXECUTE FUNCTION oauth_tokens_identity();

ALTER TABLE oauth_tokens ALTER COLUMN issuer SET NOT NULL, ALTER COLUMN subject SET NOT NULL;
-- Back-channel logout: every login of one identity at one provider.
CREATE INDEX oauth_tokens_issuer_subject_idx ON oauth_tokens (issuer, subject);

-- Where a queued revocation goes.
ALTER TABLE revocation_outbox ADD COLUMN issuer text;

-- Identities of another provider signed in as an existing user: only for a provider whose
-- verified emails the configuration trusts, only onto a user whose own email is verified.
CREATE TABLE linked_identities (
    issuer    text NOT NULL,
    subject   text NOT NULL,
    user_id   uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    email     text NOT NULL,
    linked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX linked_identities_user_idx ON linked_identities (user_id);

-- The login's own identity (the user's for a login that is not linked). The account's groups
-- come from its own provider: a linked identity signs in without them (no admin rights by
-- group through another provider).
CREATE OR REPLACE VIEW logins AS
SELECT t.token_id, t.user_id, t.issuer, t.subject, u.email, u.name,
       CASE WHEN t.issuer = u.issuer AND t.subject = u.subject THEN u.groups
            ELSE '{}'::text[] END AS groups,
       t.provider_sid, t.access_expires_at, t.refresh_status, t.failure_count,
       t.next_attempt_at, t.last_refreshed_at, t.created_at, u.email_verified,
       t.auth_time, t.acr
FROM oauth_tokens t
JOIN users u USING (user_id);
