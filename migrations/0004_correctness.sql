-- hyperfill queue schema, version 4. Runs on the TARGET (see 0001).
--
-- fallback:          why a chunk was copied another way than staged, NULL
--                    when it was not. Today: the target refused the source's
--                    compressed batches for a data-format reason, so the
--                    chunk's rows were copied decompressed and the chunk
--                    compressed on the target.
-- source_watermark:  for a chunk of a continuous aggregate's
--                    materialization hypertable, the aggregate's watermark
--                    on the source (internal int64) in the snapshot the chunk
--                    was copied from: the materialized rows copied are the
--                    source's below it. refresh-caggs starts no later.

ALTER TABLE __hyperfill.task ADD COLUMN fallback text;
ALTER TABLE __hyperfill.task ADD COLUMN source_watermark bigint;

-- Every hypertable and continuous aggregate the source had when `stage`
-- last ran, and whether any stage selected it: what `status`, `copy` and
-- `verify` list as left behind (chunks on the source, never staged).
CREATE TABLE __hyperfill.source_hypertable (
    hypertable_schema  text    NOT NULL,
    hypertable_name    text    NOT NULL,
    cagg_schema        text,
    cagg_name          text,
    time_type          text    NOT NULL,
    -- what --filter matches: format('%I.%I') of the table, or of the view
    filter_name        text    NOT NULL,
    chunks             integer NOT NULL,
    staged             boolean NOT NULL DEFAULT false,
    seen_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hypertable_schema, hypertable_name)
);

-- The last refresh `refresh-caggs` ran for each continuous aggregate, and
-- what `verify` found comparing its view on both sides over that range.
-- start_internal NULL: from the beginning.
CREATE TABLE __hyperfill.cagg_refresh (
    view_schema      text    NOT NULL,
    view_name        text    NOT NULL,
    time_type        text    NOT NULL,
    start_internal   bigint,
    end_internal     bigint  NOT NULL,
    refreshed_at     timestamptz NOT NULL DEFAULT now(),
    verify_state     text    CHECK (verify_state IN ('pending', 'match', 'mismatch')),
    verify_message   text,
    verified_at      timestamptz,
    PRIMARY KEY (view_schema, view_name)
);
