-- The background refresher's bookkeeping.

-- Who holds the refresh lease on a row: a random id per claim, so a refresher (or a request
-- refreshing inline) stores its result only while the claim is still its own. Together with
-- `refresh_claimed_until` this is a lease: a crashed instance's claims lapse by themselves.
ALTER TABLE oauth_tokens ADD COLUMN refresh_claim uuid;

-- Refresh outcomes per hour, for the dashboard and for operators. Instances add their counts
-- every tick (one upsert per outcome), so the table stays tiny: 24 rows a day per outcome.
CREATE TABLE token_refresh_stats (
    hour    timestamptz NOT NULL,
    outcome text NOT NULL
            CHECK (outcome IN ('ok', 'transient_failure', 'invalid_grant', 'race_recovered')),
    count   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, outcome)
);
