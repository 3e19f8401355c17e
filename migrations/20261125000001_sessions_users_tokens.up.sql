-- Users, their provider tokens and the shop's server-side sessions.

-- Keeps `updated_at` honest without every query having to remember it.
CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- A person as vouched for by an identity provider. The provider's (issuer, subject) pair is
-- the only stable identity: emails change and may be reused, so they are data, not keys.
CREATE TABLE users (
    user_id       uuid PRIMARY KEY,
    issuer        text NOT NULL,
    subject       text NOT NULL,
    email         text,
    name          text,
    -- Copied from the `groups` claim at every login; the admin check reads it.
    groups        text[] NOT NULL DEFAULT '{}',
    last_login_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_issuer_subject_key UNIQUE (issuer, subject)
);
CREATE TRIGGER users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE INDEX users_email_idx ON users (lower(email));

-- One row per logged-in session: the provider's tokens, encrypted with AES-256-GCM.
-- Each ciphertext is nonce || ciphertext+tag; `key_id` names the key so keys can rotate.
-- A stolen dump therefore yields no usable token without the key from the environment.
CREATE TABLE oauth_tokens (
    token_id              uuid PRIMARY KEY,
    user_id               uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    -- The provider's session id (`sid` claim): back-channel logout names sessions by it.
    provider_sid          text,
    key_id                text NOT NULL,
    access_token          bytea NOT NULL,
    refresh_token         bytea,
    id_token              bytea,
    access_expires_at     timestamptz NOT NULL,
    -- ok: healthy; retrying: transient provider failure, backing off;
    -- needs_login: the refresh token was refused, the next request goes to /login.
    refresh_status        text NOT NULL DEFAULT 'ok'
                          CHECK (refresh_status IN ('ok', 'retrying', 'needs_login')),
    failure_count         integer NOT NULL DEFAULT 0,
    next_attempt_at       timestamptz,
    -- A refresher instance owns the row until this instant (a lease, so a crash frees it).
    refresh_claimed_until timestamptz,
    last_refreshed_at     timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER oauth_tokens_updated_at BEFORE UPDATE ON oauth_tokens
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
-- The refresher's "what is due" scan: only rows it could act on are in the index.
CREATE INDEX oauth_tokens_due_idx ON oauth_tokens (access_expires_at)
    WHERE refresh_token IS NOT NULL AND refresh_status <> 'needs_login';
CREATE INDEX oauth_tokens_user_id_idx ON oauth_tokens (user_id);
CREATE INDEX oauth_tokens_provider_sid_idx ON oauth_tokens (provider_sid)
    WHERE provider_sid IS NOT NULL;

-- Server-side sessions. The cookie carries a random 256-bit key; only its SHA-256 is stored,
-- so reading this table never yields a cookie that works.
CREATE TABLE sessions (
    session_id          uuid PRIMARY KEY,
    key_hash            bytea NOT NULL,
    -- actix-session state: a flat object of JSON-encoded values (cart, CSRF token, logins).
    state               jsonb NOT NULL DEFAULT '{}',
    -- Set once logged in. Deleting the tokens (logout, revoke, back-channel) ends the session.
    token_id            uuid REFERENCES oauth_tokens ON DELETE CASCADE,
    ip                  inet,
    user_agent          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_seen_at        timestamptz NOT NULL DEFAULT now(),
    -- Idle expiry, pushed forward (throttled) while the session is used; never past
    -- `absolute_expires_at`, so cleanup needs only this column and its index.
    expires_at          timestamptz NOT NULL,
    absolute_expires_at timestamptz NOT NULL,
    CONSTRAINT sessions_key_hash_key UNIQUE (key_hash),
    CONSTRAINT sessions_expiry_order CHECK (expires_at <= absolute_expires_at)
);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
CREATE INDEX sessions_token_id_idx ON sessions (token_id) WHERE token_id IS NOT NULL;
