-- The background refresher's bookkeeping, and activity counts for the dashboard.

-- Who holds the refresh lease on a row: a random id per claim, so a refresher (or a request
-- refreshing inline) stores its result only while the claim is still its own. Together with
-- `refresh_claimed_until` this is a lease: a crashed instance's claims lapse by themselves.
ALTER TABLE oauth_tokens ADD COLUMN refresh_claim uuid;

-- Events counted per minute: logins and refresh outcomes. Instances add their counts in
-- batches (one upsert per event kind and minute), so the table stays small; the cleanup task
-- drops rows older than 30 days.
CREATE TABLE activity_stats (
    minute timestamptz NOT NULL,
    event  text NOT NULL CHECK (event IN ('login', 'refresh_ok', 'refresh_transient_failure',
                                          'refresh_invalid_grant', 'refresh_race_recovered')),
    count  bigint NOT NULL DEFAULT 0 CHECK (count >= 0),
    PRIMARY KEY (minute, event)
);
