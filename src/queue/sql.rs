//! SQL of the queue module. Every statement runs on the TARGET.

/// The schema that holds the queue.
pub const SCHEMA: &str = "__hyperfill";

/// Key of the advisory lock taken by schema migrations, stage and clean.
pub const LOCK_KEY: i64 = 0x6879_7065_7266_696c; // "hyperfil"

/// The versioned migrations, in order.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_queue.sql")),
    (2, include_str!("../../migrations/0002_task_parts.sql")),
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
pub const ADVISORY_LOCK: &str = "SELECT pg_advisory_lock($1)";

// language=PostgreSQL
pub const ADVISORY_UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

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
    snapshot, estimated_bytes, part)
SELECT hypertable_schema, hypertable_name, cagg_schema, cagg_name,
       chunk_schema, chunk_name, target_chunk_schema, target_chunk_name,
       slices, time_column, time_type, range_start, range_end,
       lower_internal, lower_literal, upper_internal, upper_literal,
       snapshot, estimated_bytes, part
FROM jsonb_to_recordset($1::jsonb) AS x(
    hypertable_schema text, hypertable_name text, cagg_schema text, cagg_name text,
    chunk_schema text, chunk_name text, target_chunk_schema text, target_chunk_name text,
    slices jsonb, time_column text, time_type text, range_start bigint, range_end bigint,
    lower_internal bigint, lower_literal text, upper_internal bigint, upper_literal text,
    snapshot text, estimated_bytes bigint, part integer)
ON CONFLICT (chunk_schema, chunk_name, part) DO NOTHING
RETURNING id";

/// $1 = jsonb array of {chunk_schema, chunk_name, lower_*, upper_*, snapshot,
/// target_chunk_schema, target_chunk_name}: re-queue those tasks with a wider window.
// language=PostgreSQL
pub const WIDEN_TASKS: &str = "\
UPDATE __hyperfill.task t
SET lower_internal = x.lower_internal, lower_literal = x.lower_literal,
    upper_internal = x.upper_internal, upper_literal = x.upper_literal,
    snapshot = x.snapshot,
    target_chunk_schema = coalesce(x.target_chunk_schema, t.target_chunk_schema),
    target_chunk_name = coalesce(x.target_chunk_name, t.target_chunk_name),
    state = CASE WHEN t.state = 'skipped' THEN 'skipped' ELSE 'pending' END,
    verify_state = NULL, verify_message = NULL, verified_at = NULL,
    staged_at = now()
FROM jsonb_to_recordset($1::jsonb) AS x(
    chunk_schema text, chunk_name text,
    lower_internal bigint, lower_literal text, upper_internal bigint, upper_literal text,
    snapshot text, target_chunk_schema text, target_chunk_name text)
WHERE t.chunk_schema = x.chunk_schema AND t.chunk_name = x.chunk_name AND t.part = 0";

/// Columns every claim returns, in `Task::from_row` order.
macro_rules! task_columns {
    () => {
        "id, hypertable_schema, hypertable_name, chunk_schema, chunk_name, \
         target_chunk_schema, target_chunk_name, slices, time_column, time_type, \
         lower_literal, upper_literal, snapshot, estimated_bytes, part"
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

/// $1 id, $2 rows, $3 bytes, $4 started_at, $5 message, $6/$7 target chunk.
// language=PostgreSQL
pub const COMPLETE_COPY: &str = "\
UPDATE __hyperfill.task
SET state = 'done', rows_copied = $2, bytes_copied = $3, started_at = $4,
    finished_at = clock_timestamp(), message = $5, last_error = NULL,
    attempts = attempts + 1, target_chunk_schema = $6, target_chunk_name = $7,
    verify_state = 'pending', verify_message = NULL, verified_at = NULL
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

/// $1 id, $2 verify state, $3 message.
// language=PostgreSQL
pub const COMPLETE_VERIFY: &str = "\
UPDATE __hyperfill.task
SET verify_state = $2, verify_message = $3, verified_at = clock_timestamp()
WHERE id = $1";

/// Mark every copied task for verification again.
// language=PostgreSQL
pub const RESET_VERIFY: &str = "\
UPDATE __hyperfill.task SET verify_state = 'pending'
WHERE state = 'done' AND verify_state IS DISTINCT FROM 'pending'";

/// Counts per state: state, verify_state, tasks, rows, bytes, estimated bytes.
// language=PostgreSQL
pub const COUNTS: &str = "\
SELECT state, verify_state, count(*), coalesce(sum(rows_copied), 0)::bigint,
       coalesce(sum(bytes_copied), 0)::bigint, coalesce(sum(estimated_bytes), 0)::bigint
FROM __hyperfill.task
GROUP BY state, verify_state";

/// Failed tasks with their errors: chunk schema, chunk name, error.
// language=PostgreSQL
pub const FAILED_TASKS: &str = "\
SELECT chunk_schema, chunk_name, coalesce(last_error, '')
FROM __hyperfill.task WHERE state = 'failed' ORDER BY id";

/// Per hypertable: schema, table, cagg view (or NULL), tasks per state,
/// verification outcomes, rows and bytes copied, estimated bytes left.
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
       coalesce(sum(rows_copied), 0)::bigint,
       coalesce(sum(bytes_copied), 0)::bigint,
       coalesce(sum(estimated_bytes) FILTER (WHERE state IN ('pending', 'failed')), 0)::bigint
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
