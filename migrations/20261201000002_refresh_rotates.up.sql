-- Whether the provider rotates this login's refresh token: true once a refresh answer carried
-- a new one, false once an answer carried none (Google, Entra ID by default), NULL before the
-- first refresh. A refresh whose answer never arrived may have spent a rotating token, so it
-- is not sent again (a reuse would make the provider revoke the whole grant); a token the
-- provider does not rotate can safely be sent again.
ALTER TABLE oauth_tokens ADD COLUMN refresh_rotates boolean;
