-- hyperfill queue schema, version 1. Runs on the TARGET, inside one
-- transaction, under the queue's advisory lock (see src/queue/mod.rs).
--
-- One row per staged source chunk. The copy of a chunk and the update of its
-- row commit in the same target transaction, so the row's state is always the
-- truth about the target chunk's contents.
--
-- state:        pending  -> to copy (also the state while a worker copies it:
--                           the worker holds the row lock, FOR NO KEY UPDATE)
--               done     -> copied; rows_copied/bytes_copied set
--               failed   -> the last attempt failed with last_error; the next
--                           `copy` run retries it
--               skipped  -> the source chunk no longer existed
-- verify_state: NULL (not copied yet), pending, match, mismatch, skipped

CREATE TABLE __hyperfill.task (
    id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hypertable_schema        text    NOT NULL,
    hypertable_name          text    NOT NULL,
    cagg_schema              text,
    cagg_name                text,
    chunk_schema             text    NOT NULL,
    chunk_name               text    NOT NULL,
    target_chunk_schema      text,
    target_chunk_name        text,
    -- every dimension's slice, {"column": [start, end]}, internal int64 values
    slices                   jsonb   NOT NULL,
    time_column              text    NOT NULL,
    time_type                text    NOT NULL,
    range_start              bigint  NOT NULL,
    range_end                bigint  NOT NULL,
    -- the bounds that cut this chunk (NULL: the chunk's own edge); the
    -- literal is canonical text of the time type, the internal value is
    -- TimescaleDB's int64 form, used to merge windows on re-stage
    lower_internal           bigint,
    lower_literal            text,
    upper_internal           bigint,
    upper_literal            text,
    snapshot                 text,
    estimated_bytes          bigint  NOT NULL DEFAULT 0,
    state                    text    NOT NULL DEFAULT 'pending'
                             CHECK (state IN ('pending', 'done', 'failed', 'skipped')),
    attempts                 integer NOT NULL DEFAULT 0,
    rows_copied              bigint,
    bytes_copied             bigint,
    started_at               timestamptz,
    finished_at              timestamptz,
    message                  text,
    last_error               text,
    verify_state             text
                             CHECK (verify_state IN ('pending', 'match', 'mismatch', 'skipped')),
    verify_message           text,
    verified_at              timestamptz,
    staged_at                timestamptz NOT NULL DEFAULT now(),
    UNIQUE (chunk_schema, chunk_name)
);

-- Claim order: largest first, so the longest copies start early and the run
-- does not end on one big straggler.
CREATE INDEX task_to_copy ON __hyperfill.task (estimated_bytes DESC, id)
    WHERE state IN ('pending', 'failed');

CREATE INDEX task_to_verify ON __hyperfill.task (estimated_bytes DESC, id)
    WHERE state = 'done' AND verify_state = 'pending';
