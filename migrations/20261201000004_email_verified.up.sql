-- Whether the provider vouches for the user's email (`email_verified`): admin rights by email
-- (`admin.emails`) are granted only when it does, since some providers let users sign up with,
-- or change to, any address.
ALTER TABLE users ADD COLUMN email_verified boolean NOT NULL DEFAULT false;

CREATE OR REPLACE VIEW logins AS
SELECT t.token_id, t.user_id, u.issuer, u.subject, u.email, u.name, u.groups,
       t.provider_sid, t.access_expires_at, t.refresh_status, t.failure_count,
       t.next_attempt_at, t.last_refreshed_at, t.created_at, u.email_verified
FROM oauth_tokens t
JOIN users u USING (user_id);
