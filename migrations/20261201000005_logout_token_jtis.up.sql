-- Back-channel logout tokens already acted on, by issuer and `jti`, kept until the token would
-- have expired: a replayed token is refused. Cleanup deletes the expired entries.
CREATE TABLE logout_token_jtis (
    issuer     text NOT NULL,
    jti        text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX logout_token_jtis_expires_at_idx ON logout_token_jtis (expires_at);
