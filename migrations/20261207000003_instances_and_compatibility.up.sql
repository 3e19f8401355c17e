-- Which binaries may run against this schema, and which are running.
--
-- A binary is named by the newest migration it carries (its "schema version"). An expand
-- migration (new tables, nullable columns, views, triggers) leaves `min_binary_version`
-- alone: binaries that predate it go on working. A contract migration (dropping what older
-- code still reads) raises it, so an older binary refuses to start instead of failing on
-- every request. `storefront migrate status` compares it with `running_instances`.
CREATE TABLE schema_compatibility (
    only_row           boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    min_binary_version bigint NOT NULL
);
-- Binaries older than this migration do not read the table (and refuse any newer schema).
INSERT INTO schema_compatibility (min_binary_version) VALUES (20261207000003);

-- Every `storefront serve`, by a heartbeat every 15 s; removed when it stops cleanly, and by
-- cleanup a day after its last heartbeat if it did not.
CREATE TABLE running_instances (
    instance_id    uuid PRIMARY KEY,
    host           text NOT NULL,
    pid            integer NOT NULL,
    binary_version bigint NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now()
);
