//! SQL of the queue module. Every statement runs on the TARGET.

/// The schema that holds the queue.
pub const SCHEMA: &str = "__hyperfill";

/// Key of the transaction-scoped advisory lock taken by schema migrations,
/// stage's enqueue and clean.
pub const LOCK_KEY: i64 = 0x6879_7065_7266_696c; // "hyperfil"

/// The versioned migrations, in order.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_queue.sql")),
    (2, include_str!("../../migrations/0002_task_parts.sql")),
    (3, include_str!("../../migrations/0003_logical_rows.sql")),
    (4, include_str!("../../migrations/0004_correctness.sql")),
    (
        5,
        include_str!("../../migrations/0005_source_compressed.sql"),
    ),
];

// language=PostgreSQL
pub const SCHEMA_EXISTS: &str = "SELECT to_regclass('__hyperfill.task') IS NOT NULL";

// language=PostgreSQL
pub const CREATE_SCHEMA: &str = "\
CREATE SCHEMA IF NOT EXISTS __hyperfill;
CREATE TABLE IF NOT EXISTS __hyperfill.migration (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

// language=PostgreSQL
pub const APPLIED_MIGRATIONS: &str = "SELECT version FROM __hyperfill.migration";

// language=PostgreSQL
pub const RECORD_MIGRATION: &str = "INSERT INTO __hyperfill.migration (version) VALUES ($1)";

// language=PostgreSQL
pub const ADVISORY_XACT_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

// language=PostgreSQL
pub const DROP_SCHEMA: &str = "DROP SCHEMA IF EXISTS __hyperfill CASCADE";

/// The window staged for every chunk: chunk schema, chunk name, lower
/// internal/literal, upper internal/literal. A split chunk (parts 1..n) was
/// staged whole.
// language=PostgreSQL
pub const TASK_WINDOWS: &str = "\
SELECT chunk_schema, chunk_name, lower_internal, lower_literal, upper_internal, upper_literal
FROM __hyperfill.task WHERE part = 0
UNION ALL
SELECT DISTINCT chunk_schema, chunk_name, NULL::bigint, NULL::text, NULL::bigint, NULL::text
FROM __hyperfill.task WHERE part > 0";

/// $1 = jsonb array of task objects (keys = column names). Returns one row per
/// inserted task.
// language=PostgreSQL
pub const INSERT_TASKS: &str = "\
INSERT INTO __hyperfill.task (
    hypertable_schema, hypertable_name, cagg_schema, cagg_name,
    chunk_schema, chunk_name, target_chunk_schema, target_chunk_name,
    slices, time_column, time_type, range_start, range_end,
    lower_internal, lower_literal, upper_internal, upper_literal,
    snapshot, estimated_bytes, part, source_compressed_schema, source_compressed_name)
SELECT hypertable_schema, hypertable_name, cagg_schema, cagg_name,
       chunk_schema, chunk_name, target_chunk_schema, target_chunk_name,
       slices, time_column, time_type, range_start, range_end,
       lower_internal, lower_literal, upper_internal, upper_literal,
       snapshot, estimated_bytes, part, source_compressed_schema, source_compressed_name
FROM jsonb_to_recordset($1::jsonb) AS x(
    hypertable_schema text, hypertable_name text, cagg_schema text, cagg_name text,
    chunk_schema text, chunk_name text, target_chunk_schema text, target_chunk_name text,
    slices jsonb, time_column text, time_type text, range_start bigint, range_end bigint,
    lower_internal bigint, lower_literal text, upper_internal bigint, upper_literal text,
    snapshot text, estimated_bytes bigint, part integer,
    source_compressed_schema text, source_compressed_name text)
ON CONFLICT (chunk_schema, chunk_name, part) DO NOTHING
RETURNING id";

/// $1 = jsonb array of {chunk_schema, chunk_name, lower_*, upper_*, snapshot,
/// target_chunk_schema, target_chunk_name, source_compressed_*}: re-queue
/// those tasks with a wider window.
// language=PostgreSQL
pub const WIDEN_TASKS: &str = "\
UPDATE __hyperfill.task t
SET lower_internal = x.lower_internal, lower_literal = x.lower_literal,
    upper_internal = x.upper_internal, upper_literal = x.upper_literal,
    snapshot = x.snapshot,
    source_compressed_schema = x.source_compressed_schema,
    source_compressed_name = x.source_compressed_name,
    target_chunk_schema = coalesce(x.target_chunk_schema, t.target_chunk_schema),
    target_chunk_name = coalesce(x.target_chunk_name, t.target_chunk_name),
    state = CASE WHEN t.state = 'skipped' THEN 'skipped' ELSE 'pending' END,
    verify_state = NULL, verify_message = NULL, verified_at = NULL,
    staged_at = now()
FROM jsonb_to_recordset($1::jsonb) AS x(
    chunk_schema text, chunk_name text,
    lower_internal bigint, lower_literal text, upper_internal bigint, upper_literal text,
    snapshot text, target_chunk_schema text, target_chunk_name text,
    source_compressed_schema text, source_compressed_name text)
WHERE t.chunk_schema = x.chunk_schema AND t.chunk_name = x.chunk_name AND t.part = 0";

/// Columns every claim returns, in `Task::from_row` order.
macro_rules! task_columns {
    () => {
        "id, hypertable_schema, hypertable_name, chunk_schema, chunk_name, \
         target_chunk_schema, target_chunk_name, slices, time_column, time_type, \
         lower_literal, upper_literal, snapshot, estimated_bytes, part, \
         source_compressed_schema, source_compressed_name"
    };
}

/// $1 = --max-attempts. Claim the next task to copy and lock its row for the
/// rest of the transaction. A task that has used up its attempts is never
/// claimed again in this run, whichever worker or process failed it: every
/// attempt is counted in the row before the row lock is released (see
/// RECORD_FAILURE).
// language=PostgreSQL
pub const CLAIM_COPY: &str = concat!(
    "SELECT ",
    task_columns!(),
    "
FROM __hyperfill.task
WHERE state = 'pending' AND attempts < $1
ORDER BY estimated_bytes DESC, id
LIMIT 1
FOR NO KEY UPDATE SKIP LOCKED"
);

/// $1 = --max-attempts. At the start of a `copy` run: the failed tasks, and
/// pending ones whose attempts a run with a higher limit left at or above
/// ours, get a fresh set of attempts. Returns their ids.
// language=PostgreSQL
pub const REARM_FAILED: &str = "\
UPDATE __hyperfill.task
SET state = 'pending', attempts = 0
WHERE state = 'failed' OR (state = 'pending' AND attempts >= $1)
RETURNING id";

/// Claim the next task to verify.
// language=PostgreSQL
pub const CLAIM_VERIFY: &str = concat!(
    "SELECT ",
    task_columns!(),
    "
FROM __hyperfill.task
WHERE state = 'done' AND verify_state = 'pending'
ORDER BY estimated_bytes DESC, id
LIMIT 1
FOR NO KEY UPDATE SKIP LOCKED"
);

/// $1 id, $2 logical rows, $3 bytes, $4 started_at, $5 message, $6/$7
/// target chunk, $8 compressed batches (NULL: none), $9 why it was copied
/// another way (or NULL), $10 the source watermark of a materialization
/// chunk (or NULL).
// language=PostgreSQL
pub const COMPLETE_COPY: &str = "\
UPDATE __hyperfill.task
SET state = 'done', rows_copied = $2, bytes_copied = $3, started_at = $4, batches_copied = $8,
    finished_at = clock_timestamp(), message = $5, last_error = NULL,
    attempts = attempts + 1, target_chunk_schema = $6, target_chunk_name = $7,
    fallback = $9::text, source_watermark = $10::bigint,
    verify_state = 'pending', verify_message = NULL, verified_at = NULL, verify_details = NULL
WHERE id = $1";

/// $1 id, $2 message.
// language=PostgreSQL
pub const SKIP_COPY: &str = "\
UPDATE __hyperfill.task
SET state = 'skipped', finished_at = clock_timestamp(), message = $2, last_error = NULL,
    verify_state = NULL
WHERE id = $1";

/// $1 id, $2 what the failure calls for ('retry', 'failed' or 'skipped'),
/// $3 error text (the message, for 'skipped'), $4 --max-attempts. Counts the
/// attempt; a retry that has used up its attempts fails. Returns the new
/// state and attempts.
///
/// Runs either in the task's own transaction, rolled back to the savepoint
/// taken right after the claim, so the row lock is never released before
/// the attempt is counted; or, when that connection is lost, in its own
/// transaction on a fresh one, where it does nothing if another worker has
/// meanwhile claimed the task (the row is locked) or finished it.
// language=PostgreSQL
pub const RECORD_FAILURE: &str = "\
UPDATE __hyperfill.task
SET state = CASE WHEN $2::text = 'skipped' THEN 'skipped'
                 WHEN $2::text = 'failed' OR attempts + 1 >= $4::integer THEN 'failed'
                 ELSE 'pending' END,
    last_error = CASE WHEN $2::text = 'skipped' THEN NULL ELSE $3 END,
    message = CASE WHEN $2::text = 'skipped' THEN $3 ELSE message END,
    attempts = attempts + 1, finished_at = clock_timestamp()
WHERE id = (SELECT id FROM __hyperfill.task
            WHERE id = $1 AND state = 'pending'
            FOR UPDATE SKIP LOCKED)
RETURNING state, attempts";

/// $1 id, $2 verify state, $3 message, $4 details (jsonb, NULL on a match).
// language=PostgreSQL
pub const COMPLETE_VERIFY: &str = "\
UPDATE __hyperfill.task
SET verify_state = $2, verify_message = $3, verified_at = clock_timestamp(), verify_details = $4
WHERE id = $1";

/// The tasks whose last verification found a difference: hypertable
/// schema and table, cagg view (or NULL), chunk schema and table, part,
/// message, details.
// language=PostgreSQL
pub const MISMATCHED_TASKS: &str = "\
SELECT hypertable_schema, hypertable_name,
       CASE WHEN cagg_name IS NOT NULL THEN format('%I.%I', cagg_schema, cagg_name) END,
       chunk_schema, chunk_name, part, coalesce(verify_message, ''), verify_details
FROM __hyperfill.task WHERE state = 'done' AND verify_state = 'mismatch'
ORDER BY hypertable_schema, hypertable_name, chunk_schema, chunk_name, part";

/// Mark every copied task for verification again.
// language=PostgreSQL
pub const RESET_VERIFY: &str = "\
UPDATE __hyperfill.task SET verify_state = 'pending'
WHERE state = 'done' AND verify_state IS DISTINCT FROM 'pending'";

/// Counts per state: state, verify_state, tasks, rows, bytes, estimated
/// bytes. (Rows and bytes are the last copy's: a task re-queued by a wider
/// stage carries them until it is copied again, so only `done` tasks' count.)
// language=PostgreSQL
pub const COUNTS: &str = "\
SELECT state, verify_state, count(*), coalesce(sum(rows_copied), 0)::bigint,
       coalesce(sum(bytes_copied), 0)::bigint, coalesce(sum(estimated_bytes), 0)::bigint
FROM __hyperfill.task
GROUP BY state, verify_state";

/// The chunks the tasks left to copy (pending or failed) belong to, and how
/// many of those chunks are split into parts.
// language=PostgreSQL
pub const CHUNKS_TO_COPY: &str = "\
SELECT count(DISTINCT (chunk_schema, chunk_name)),
       count(DISTINCT (chunk_schema, chunk_name)) FILTER (WHERE part > 0)
FROM __hyperfill.task WHERE state IN ('pending', 'failed')";

/// Failed tasks with their errors: chunk schema, chunk name, error.
// language=PostgreSQL
pub const FAILED_TASKS: &str = "\
SELECT chunk_schema, chunk_name, coalesce(last_error, '')
FROM __hyperfill.task WHERE state = 'failed' ORDER BY id";

/// Per hypertable: schema, table, cagg view (or NULL), tasks per state,
/// verification outcomes, logical rows, compressed batches and bytes copied
/// (done tasks), estimated source bytes of the tasks left and of the done
/// ones, chunks, chunks split into parts.
// language=PostgreSQL
pub const STATUS_BY_HYPERTABLE: &str = "\
SELECT hypertable_schema, hypertable_name,
       max(CASE WHEN cagg_name IS NOT NULL THEN format('%I.%I', cagg_schema, cagg_name) END),
       count(*) FILTER (WHERE state = 'pending'),
       count(*) FILTER (WHERE state = 'done'),
       count(*) FILTER (WHERE state = 'failed'),
       count(*) FILTER (WHERE state = 'skipped'),
       count(*) FILTER (WHERE verify_state = 'match'),
       count(*) FILTER (WHERE verify_state = 'mismatch'),
       coalesce(sum(rows_copied) FILTER (WHERE state = 'done'), 0)::bigint,
       coalesce(sum(bytes_copied) FILTER (WHERE state = 'done'), 0)::bigint,
       coalesce(sum(estimated_bytes) FILTER (WHERE state IN ('pending', 'failed')), 0)::bigint,
       coalesce(sum(batches_copied) FILTER (WHERE state = 'done'), 0)::bigint,
       coalesce(sum(estimated_bytes) FILTER (WHERE state = 'done'), 0)::bigint,
       count(DISTINCT (chunk_schema, chunk_name)),
       count(DISTINCT (chunk_schema, chunk_name)) FILTER (WHERE part > 0)
FROM __hyperfill.task
GROUP BY hypertable_schema, hypertable_name
ORDER BY hypertable_schema, hypertable_name";

/// The latest problems: chunk schema, chunk name, state or verify state, text.
// language=PostgreSQL
pub const RECENT_PROBLEMS: &str = "\
SELECT chunk_schema, chunk_name,
       CASE WHEN verify_state = 'mismatch' THEN 'mismatch' ELSE state END,
       coalesce(CASE WHEN verify_state = 'mismatch' THEN verify_message END, last_error, '')
FROM __hyperfill.task
WHERE state = 'failed' OR verify_state = 'mismatch' OR (state = 'pending' AND last_error IS NOT NULL)
ORDER BY coalesce(verified_at, finished_at) DESC NULLS LAST
LIMIT $1";

/// hyperfill sessions now in a transaction on this database (workers at work).
// language=PostgreSQL
pub const ACTIVE_SESSIONS: &str = "\
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'hyperfill'
  AND pid <> pg_backend_pid() AND xact_start IS NOT NULL";

/// Put the tasks verify found different back to pending. Returns their ids.
// language=PostgreSQL
pub const REQUEUE_MISMATCHED: &str = "\
UPDATE __hyperfill.task
SET state = 'pending', verify_state = NULL, verify_message = NULL, verified_at = NULL
WHERE state = 'done' AND verify_state = 'mismatch'
RETURNING id";

/// Chunks copied another way than staged: chunk schema, chunk name, why.
// language=PostgreSQL
pub const COPIED_ANOTHER_WAY: &str = "\
SELECT chunk_schema, chunk_name, fallback
FROM __hyperfill.task WHERE state = 'done' AND fallback IS NOT NULL
ORDER BY chunk_schema, chunk_name, part";

/// $1 = jsonb array of {hypertable_schema, hypertable_name, cagg_schema,
/// cagg_name, time_type, filter_name, chunks, staged}: record the source's
/// hypertables as `stage` saw them; `staged` stays true once set.
// language=PostgreSQL
pub const RECORD_SOURCE_HYPERTABLES: &str = "\
INSERT INTO __hyperfill.source_hypertable AS s (
    hypertable_schema, hypertable_name, cagg_schema, cagg_name, time_type, filter_name, chunks, staged)
SELECT hypertable_schema, hypertable_name, cagg_schema, cagg_name, time_type, filter_name, chunks, staged
FROM jsonb_to_recordset($1::jsonb) AS x(
    hypertable_schema text, hypertable_name text, cagg_schema text, cagg_name text,
    time_type text, filter_name text, chunks integer, staged boolean)
ON CONFLICT (hypertable_schema, hypertable_name) DO UPDATE
SET cagg_schema = excluded.cagg_schema, cagg_name = excluded.cagg_name,
    time_type = excluded.time_type, filter_name = excluded.filter_name,
    chunks = excluded.chunks, staged = s.staged OR excluded.staged, seen_at = now()";

/// Source hypertables with chunks that no stage selected and that have no
/// task: schema, table, cagg view schema and name, time type, chunks,
/// filter name.
// language=PostgreSQL
pub const LEFT_BEHIND: &str = "\
SELECT s.hypertable_schema, s.hypertable_name, s.cagg_schema, s.cagg_name,
       s.time_type, s.chunks, s.filter_name
FROM __hyperfill.source_hypertable s
WHERE NOT s.staged AND s.chunks > 0
  AND NOT EXISTS (SELECT 1 FROM __hyperfill.task t
                  WHERE t.hypertable_schema = s.hypertable_schema
                    AND t.hypertable_name = s.hypertable_name)
ORDER BY s.time_type, s.hypertable_schema, s.hypertable_name";

/// The newest migration applied to the queue.
// language=PostgreSQL
pub const SCHEMA_VERSION: &str = "SELECT coalesce(max(version), 0) FROM __hyperfill.migration";

/// Per continuous aggregate whose materialization was staged: view schema,
/// view name, where its staged tasks end (internal), the lowest source
/// watermark a copied chunk was read at, tasks still to copy.
// language=PostgreSQL
pub const STAGED_CAGGS: &str = "\
SELECT cagg_schema, cagg_name,
       max(coalesce(upper_internal, range_end)),
       min(source_watermark) FILTER (WHERE state = 'done'),
       count(*) FILTER (WHERE state IN ('pending', 'failed'))
FROM __hyperfill.task
WHERE cagg_name IS NOT NULL AND state <> 'skipped'
GROUP BY cagg_schema, cagg_name";

/// The last refresh per continuous aggregate: view schema, view name, time
/// type, start (NULL: the beginning), end, verify state, verify message.
// language=PostgreSQL
pub const CAGG_REFRESHES: &str = "\
SELECT view_schema, view_name, time_type, start_internal, end_internal, verify_state, verify_message
FROM __hyperfill.cagg_refresh ORDER BY view_schema, view_name";

/// $1 view schema, $2 view name, $3 time type, $4 start (or NULL), $5 end:
/// record a refresh; its view is to verify.
// language=PostgreSQL
pub const RECORD_CAGG_REFRESH: &str = "\
INSERT INTO __hyperfill.cagg_refresh AS r (view_schema, view_name, time_type, start_internal, end_internal, verify_state)
VALUES ($1, $2, $3, $4, $5, 'pending')
ON CONFLICT (view_schema, view_name) DO UPDATE
SET time_type = excluded.time_type, start_internal = excluded.start_internal,
    end_internal = excluded.end_internal, refreshed_at = now(),
    verify_state = 'pending', verify_message = NULL, verified_at = NULL";

/// $1 view schema, $2 view name, $3 verify state, $4 message.
// language=PostgreSQL
pub const COMPLETE_CAGG_VERIFY: &str = "\
UPDATE __hyperfill.cagg_refresh
SET verify_state = $3, verify_message = $4, verified_at = clock_timestamp()
WHERE view_schema = $1 AND view_name = $2";

/// Verify every recorded refresh again (`verify --all`).
// language=PostgreSQL
pub const RESET_CAGG_VERIFY: &str = "UPDATE __hyperfill.cagg_refresh SET verify_state = 'pending'";
