//! The work queue in the target database: the only module that touches the
//! `__hyperfill` schema. Its protocol: claim a row with
//! `FOR NO KEY UPDATE SKIP LOCKED` inside the target transaction that copies
//! the chunk, and complete it in that same transaction.

mod sql;

use std::collections::HashMap;
use std::time::SystemTime;

use serde::Serialize;

use crate::catalog::{parse_slices, Slice, TimeType};
use crate::db::Db;
use crate::error::{Error, Result, Side};
use crate::ident::QualifiedName;
use crate::plan::{Bound, TaskWindow};

pub use sql::SCHEMA;

/// Whether the queue exists in the target.
pub async fn exists(db: &Db) -> Result<bool> {
    let row = db
        .query_one(sql::SCHEMA_EXISTS, &[], "looking for the hyperfill queue")
        .await?;
    Ok(row.get(0))
}

/// Fail with the way out when the queue was never staged.
pub async fn require(db: &Db) -> Result<()> {
    if exists(db).await? {
        Ok(())
    } else {
        Err(Error::Precondition {
            side: Side::Target,
            message: format!(
                "no hyperfill queue (schema {SCHEMA}) in this database. \
                 Run `hyperfill stage --source ... --target ... --until T` first"
            ),
        })
    }
}

/// Create the queue schema or bring it up to date, under the advisory lock.
pub async fn migrate(db: &Db) -> Result<()> {
    let what = "creating the hyperfill queue schema";
    db.batch("BEGIN", what).await?;
    let result = async {
        db.execute(sql::ADVISORY_XACT_LOCK, &[&sql::LOCK_KEY], what)
            .await?;
        db.batch(sql::CREATE_SCHEMA, what).await?;
        let applied: Vec<i32> = db
            .query(sql::APPLIED_MIGRATIONS, &[], what)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (version, body) in sql::MIGRATIONS {
            if !applied.contains(version) {
                db.batch(body, &format!("applying queue migration {version}"))
                    .await?;
                db.execute(sql::RECORD_MIGRATION, &[version], what).await?;
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    finish(db, result, what).await
}

/// Drop the queue. Succeeds when it is already gone. Returns whether it existed.
pub async fn drop(db: &Db) -> Result<bool> {
    let existed = exists(db).await?;
    let what = "dropping the hyperfill queue schema";
    db.batch("BEGIN", what).await?;
    let result = async {
        db.execute(sql::ADVISORY_XACT_LOCK, &[&sql::LOCK_KEY], what)
            .await?;
        db.batch(sql::DROP_SCHEMA, what).await
    }
    .await;
    finish(db, result, what).await?;
    Ok(existed)
}

/// Commit on success, roll back on error.
async fn finish<T>(db: &Db, result: Result<T>, what: &str) -> Result<T> {
    match result {
        Ok(v) => {
            db.batch("COMMIT", what).await?;
            Ok(v)
        }
        Err(e) => {
            let _ = db.client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// A task as `stage` writes it.
#[derive(Debug, Clone, Serialize)]
pub struct StagedTask {
    pub hypertable_schema: String,
    pub hypertable_name: String,
    pub cagg_schema: Option<String>,
    pub cagg_name: Option<String>,
    pub chunk_schema: String,
    pub chunk_name: String,
    pub target_chunk_schema: Option<String>,
    pub target_chunk_name: Option<String>,
    pub slices: serde_json::Value,
    pub time_column: String,
    pub time_type: String,
    pub range_start: i64,
    pub range_end: i64,
    pub lower_internal: Option<i64>,
    pub lower_literal: Option<String>,
    pub upper_internal: Option<i64>,
    pub upper_literal: Option<String>,
    pub snapshot: Option<String>,
    pub estimated_bytes: i64,
    pub part: i32,
    /// The source chunk's compressed relation when stage saw it compressed.
    pub source_compressed_schema: Option<String>,
    pub source_compressed_name: Option<String>,
}

/// The windows of the tasks already in the queue, by source chunk.
pub async fn task_windows(db: &Db) -> Result<HashMap<QualifiedName, TaskWindow>> {
    let rows = db
        .query(sql::TASK_WINDOWS, &[], "reading the staged tasks")
        .await?;
    let bound = |i: Option<i64>, l: Option<String>| match (i, l) {
        (Some(internal), Some(literal)) => Some(Bound { internal, literal }),
        _ => None,
    };
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                QualifiedName::from_row(&r, 0),
                TaskWindow {
                    lower: bound(r.get(2), r.get(3)),
                    upper: bound(r.get(4), r.get(5)),
                },
            )
        })
        .collect())
}

/// Insert new tasks and re-queue widened ones in one transaction, which
/// holds the queue's transaction-scoped advisory lock from reading the
/// staged windows to writing: `decide` gets the windows as they are under
/// the lock and returns (new, widened). Concurrent stages take turns, and
/// none works from windows another is changing. Nothing outlives the
/// transaction, so this works through a transaction-mode pooler too.
/// Returns the number inserted.
pub async fn enqueue<F>(db: &Db, decide: F) -> Result<u64>
where
    F: FnOnce(&HashMap<QualifiedName, TaskWindow>) -> (Vec<StagedTask>, Vec<StagedTask>),
{
    let what = "writing tasks to the queue";
    db.batch("BEGIN", what).await?;
    let result = async {
        db.execute(
            sql::ADVISORY_XACT_LOCK,
            &[&sql::LOCK_KEY],
            "waiting for other stage runs",
        )
        .await?;
        let (new, widened) = decide(&task_windows(db).await?);
        let mut inserted = 0;
        for batch in new.chunks(5000) {
            let json = serde_json::to_value(batch).map_err(|e| Error::Internal(e.to_string()))?;
            inserted += db.query(sql::INSERT_TASKS, &[&json], what).await?.len() as u64;
        }
        for batch in widened.chunks(5000) {
            let json = serde_json::to_value(batch).map_err(|e| Error::Internal(e.to_string()))?;
            db.execute(sql::WIDEN_TASKS, &[&json], what).await?;
        }
        Ok(inserted)
    }
    .await;
    finish(db, result, what).await
}

/// A claimed task, as workers see it.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: i64,
    pub hypertable: QualifiedName,
    pub chunk: QualifiedName,
    pub target_chunk: Option<QualifiedName>,
    pub slices: Vec<Slice>,
    pub time_column: String,
    pub time_type: TimeType,
    pub lower_literal: Option<String>,
    pub upper_literal: Option<String>,
    pub snapshot: Option<String>,
    pub estimated_bytes: i64,
    /// 0: the whole chunk (or its bounded range); 1..: a time sub-range of a split chunk.
    pub part: i32,
    /// The source chunk's compressed relation when stage saw it compressed
    /// (a guess: the chunk's state at copy time decides).
    pub source_compressed: Option<QualifiedName>,
}

impl Task {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self> {
        let tt: String = r.get(9);
        let time_type = TimeType::from_pg(&tt)
            .ok_or_else(|| Error::Internal(format!("queue holds an unknown time type '{tt}'")))?;
        let slices: serde_json::Value = r.get(7);
        let target_chunk = match (r.get::<_, Option<String>>(5), r.get::<_, Option<String>>(6)) {
            (Some(s), Some(n)) => Some(QualifiedName::new(s, n)),
            _ => None,
        };
        Ok(Task {
            id: r.get(0),
            hypertable: QualifiedName::from_row(r, 1),
            chunk: QualifiedName::from_row(r, 3),
            target_chunk,
            slices: parse_slices(&slices)?,
            time_column: r.get(8),
            time_type,
            lower_literal: r.get(10),
            upper_literal: r.get(11),
            snapshot: r.get(12),
            estimated_bytes: r.get(13),
            part: r.get(14),
            source_compressed: match (
                r.get::<_, Option<String>>(15),
                r.get::<_, Option<String>>(16),
            ) {
                (Some(s), Some(n)) => Some(QualifiedName::new(s, n)),
                _ => None,
            },
        })
    }

    /// The chunk, and its part when split: `"s"."c"` or `"s"."c" (part 3)`.
    pub fn label(&self) -> String {
        if self.part > 0 {
            format!("{} (part {})", self.chunk, self.part)
        } else {
            self.chunk.to_string()
        }
    }

    /// The task's row filter, or `None` for the whole chunk.
    pub fn filter(&self) -> Option<String> {
        crate::plan::filter_sql(
            &self.time_column,
            self.time_type,
            self.lower_literal.as_deref(),
            self.upper_literal.as_deref(),
        )
    }
}

/// Claim the next task to copy, inside the caller's open target transaction:
/// a pending task with fewer than `max_attempts` attempts.
pub async fn claim_copy(db: &Db, max_attempts: u32) -> Result<Option<Task>> {
    let max = max_attempts as i32;
    let row = db
        .query_opt(sql::CLAIM_COPY, &[&max], "claiming a copy task")
        .await?;
    row.as_ref().map(Task::from_row).transpose()
}

/// At the start of a `copy` run, give failed tasks a fresh set of attempts.
/// Returns how many.
pub async fn rearm_failed(db: &Db, max_attempts: u32) -> Result<u64> {
    let max = max_attempts as i32;
    Ok(db
        .query(sql::REARM_FAILED, &[&max], "re-queueing failed tasks")
        .await?
        .len() as u64)
}

/// Claim the next task to verify, inside the caller's open target transaction.
pub async fn claim_verify(db: &Db) -> Result<Option<Task>> {
    let row = db
        .query_opt(sql::CLAIM_VERIFY, &[], "claiming a verify task")
        .await?;
    row.as_ref().map(Task::from_row).transpose()
}

/// What one finished copy records.
pub struct CopyDone<'a> {
    /// Logical rows (for compressed batches, the rows they hold).
    pub rows: i64,
    /// Compressed batches copied as they are, when any.
    pub batches: Option<i64>,
    pub bytes: i64,
    pub started: SystemTime,
    pub message: &'a str,
    pub target_chunk: Option<&'a QualifiedName>,
    /// Why the chunk was copied another way than staged.
    pub fallback: Option<&'a str>,
    /// A materialization chunk's continuous-aggregate watermark on the source.
    pub source_watermark: Option<i64>,
}

/// Mark a task done, in the transaction that copied it.
pub async fn complete_copy(db: &Db, id: i64, done: &CopyDone<'_>) -> Result<()> {
    db.execute(
        sql::COMPLETE_COPY,
        &[
            &id,
            &done.rows,
            &done.bytes,
            &done.started,
            &done.message,
            &done.target_chunk.map(|c| c.schema.as_str()),
            &done.target_chunk.map(|c| c.name.as_str()),
            &done.batches,
            &done.fallback,
            &done.source_watermark,
        ],
        "recording a finished copy task",
    )
    .await?;
    Ok(())
}

/// Mark a task skipped (its source chunk is gone), in the claiming transaction.
pub async fn skip_copy(db: &Db, id: i64, message: &str) -> Result<()> {
    db.execute(sql::SKIP_COPY, &[&id, &message], "recording a skipped task")
        .await?;
    Ok(())
}

/// What a failed attempt calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// A transient failure: try again, unless the attempts are used up.
    Retry,
    /// A permanent failure; the next `copy` run tries it again.
    Failed,
    /// The source chunk vanished: nothing to copy.
    Skipped,
}

/// The task after a recorded failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// `pending` (to be tried again), `failed` or `skipped`.
    pub state: TaskState,
    /// Attempts so far, this one included.
    pub attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Failed,
    Skipped,
}

/// Count a failed attempt and set the task's state (see
/// `sql::RECORD_FAILURE`). `None`: another worker holds or finished the
/// task, nothing was recorded.
pub async fn record_failure(
    db: &Db,
    id: i64,
    after: AfterFailure,
    error: &str,
    max_attempts: u32,
) -> Result<Option<Recorded>> {
    let after = match after {
        AfterFailure::Retry => "retry",
        AfterFailure::Failed => "failed",
        AfterFailure::Skipped => "skipped",
    };
    let max = max_attempts as i32;
    let row = db
        .query_opt(
            sql::RECORD_FAILURE,
            &[&id, &after, &error, &max],
            "recording a failed task",
        )
        .await?;
    Ok(row.map(|r| Recorded {
        state: match r.get::<_, &str>(0) {
            "pending" => TaskState::Pending,
            "skipped" => TaskState::Skipped,
            _ => TaskState::Failed,
        },
        attempts: r.get::<_, i32>(1).max(0) as u32,
    }))
}

/// Outcome of verifying one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyState {
    Match,
    Mismatch,
    Skipped,
}

/// Record a verification's outcome; `details` is the structured difference
/// (see migrations/0003), `None` for a match.
pub async fn complete_verify(
    db: &Db,
    id: i64,
    state: VerifyState,
    message: &str,
    details: Option<&serde_json::Value>,
) -> Result<()> {
    let s = match state {
        VerifyState::Match => "match",
        VerifyState::Mismatch => "mismatch",
        VerifyState::Skipped => "skipped",
    };
    db.execute(
        sql::COMPLETE_VERIFY,
        &[&id, &s, &message, &details],
        "recording a verification",
    )
    .await?;
    Ok(())
}

/// A copied task whose last verification found a difference.
#[derive(Debug, Clone, Serialize)]
pub struct MismatchedTask {
    pub hypertable: QualifiedName,
    pub continuous_aggregate: Option<String>,
    pub chunk: QualifiedName,
    /// 0: the whole chunk (or its bounded range); 1..: a part of a split chunk.
    pub part: i32,
    pub message: String,
    /// `{"source_rows", "target_rows", "differences": [...]}`, or null when
    /// the chunk could not be compared at all (the message says why).
    pub details: Option<serde_json::Value>,
}

/// Every task whose last verification found a difference.
pub async fn mismatched_tasks(db: &Db) -> Result<Vec<MismatchedTask>> {
    let rows = db
        .query(sql::MISMATCHED_TASKS, &[], "reading mismatched tasks")
        .await?;
    Ok(rows
        .iter()
        .map(|r| MismatchedTask {
            hypertable: QualifiedName::from_row(r, 0),
            continuous_aggregate: r.get(2),
            chunk: QualifiedName::from_row(r, 3),
            part: r.get(5),
            message: r.get(6),
            details: r.get(7),
        })
        .collect())
}

/// Re-queue for copying the tasks whose verification found a difference.
pub async fn requeue_mismatched(db: &Db) -> Result<u64> {
    Ok(db
        .query(
            sql::REQUEUE_MISMATCHED,
            &[],
            "re-queueing mismatched chunks",
        )
        .await?
        .len() as u64)
}

/// Queue every copied task for verification again.
pub async fn reset_verify(db: &Db) -> Result<u64> {
    db.execute(sql::RESET_VERIFY, &[], "re-queueing verification")
        .await
}

/// Totals over the whole queue.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub pending: u64,
    pub done: u64,
    pub failed: u64,
    pub skipped: u64,
    pub verify_pending: u64,
    pub verified_match: u64,
    pub verified_mismatch: u64,
    pub verify_skipped: u64,
    pub rows_copied: i64,
    pub bytes_copied: i64,
    pub estimated_bytes_pending: i64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.pending + self.done + self.failed + self.skipped
    }
}

pub async fn counts(db: &Db) -> Result<Counts> {
    let rows = db
        .query(sql::COUNTS, &[], "counting the queue's tasks")
        .await?;
    let mut c = Counts::default();
    for r in rows {
        let state: String = r.get(0);
        let verify: Option<String> = r.get(1);
        let n = r.get::<_, i64>(2) as u64;
        match state.as_str() {
            "pending" => {
                c.pending += n;
                c.estimated_bytes_pending += r.get::<_, i64>(5);
            }
            "done" => c.done += n,
            "failed" => {
                c.failed += n;
                c.estimated_bytes_pending += r.get::<_, i64>(5);
            }
            _ => c.skipped += n,
        }
        match verify.as_deref() {
            Some("pending") => c.verify_pending += n,
            Some("match") => c.verified_match += n,
            Some("mismatch") => c.verified_mismatch += n,
            Some("skipped") => c.verify_skipped += n,
            _ => {}
        }
        if state == "done" {
            c.rows_copied += r.get::<_, i64>(3);
            c.bytes_copied += r.get::<_, i64>(4);
        }
    }
    Ok(c)
}

/// How many chunks the tasks left to copy belong to, and how many of those
/// are split into parts.
pub async fn chunks_to_copy(db: &Db) -> Result<(u64, u64)> {
    let r = db
        .query_one(sql::CHUNKS_TO_COPY, &[], "counting the chunks to copy")
        .await?;
    Ok((r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64))
}

/// The COPY bytes still to move, projected from the source's table sizes of
/// the tasks left: scaled by what the done tasks moved per estimated byte,
/// when there are any, so that copied + left adds up to one total in the one
/// measure that is moved (and that `--max-rate` counts).
pub fn projected_bytes_left(estimated_left: i64, estimated_done: i64, bytes_done: i64) -> i64 {
    let left = estimated_left.max(0) as f64;
    if estimated_done > 0 && bytes_done > 0 {
        (left * bytes_done as f64 / estimated_done as f64).round() as i64
    } else {
        left as i64
    }
}

/// The failed tasks: source chunk and last error.
pub async fn failed_tasks(db: &Db) -> Result<Vec<(QualifiedName, String)>> {
    let rows = db
        .query(sql::FAILED_TASKS, &[], "reading failed tasks")
        .await?;
    Ok(rows
        .iter()
        .map(|r| (QualifiedName::from_row(r, 0), r.get(2)))
        .collect())
}

/// One hypertable's line in `status`. Task counts are tasks (a chunk split
/// into parts has one task per part); `chunks` counts source chunks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HypertableStatus {
    pub hypertable: QualifiedName,
    pub continuous_aggregate: Option<String>,
    /// Source chunks staged, and how many of them are split into parts.
    pub chunks: i64,
    pub split_chunks: i64,
    pub pending: i64,
    pub done: i64,
    pub failed: i64,
    pub skipped: i64,
    pub verified: i64,
    pub mismatched: i64,
    /// Logical rows copied (for compressed chunks, the rows their batches hold).
    pub rows_copied: i64,
    /// Compressed batches among what was copied.
    pub batches_copied: i64,
    /// COPY bytes moved by the done tasks.
    pub bytes_copied: i64,
    /// COPY bytes still to move (projected, see [`projected_bytes_left`]).
    pub estimated_bytes_left: i64,
    /// `bytes_copied + estimated_bytes_left`.
    pub estimated_bytes_total: i64,
    /// The source's table sizes (stage's estimate) of the tasks left and of
    /// the done ones, which the projection is made from.
    #[serde(skip)]
    pub source_bytes_left: i64,
    #[serde(skip)]
    pub source_bytes_done: i64,
}

impl HypertableStatus {
    /// Add another line's figures to this one (for totals).
    pub fn add(&mut self, h: &HypertableStatus) {
        self.chunks += h.chunks;
        self.split_chunks += h.split_chunks;
        self.pending += h.pending;
        self.done += h.done;
        self.failed += h.failed;
        self.skipped += h.skipped;
        self.verified += h.verified;
        self.mismatched += h.mismatched;
        self.rows_copied += h.rows_copied;
        self.batches_copied += h.batches_copied;
        self.bytes_copied += h.bytes_copied;
        self.estimated_bytes_left += h.estimated_bytes_left;
        self.estimated_bytes_total += h.estimated_bytes_total;
        self.source_bytes_left += h.source_bytes_left;
        self.source_bytes_done += h.source_bytes_done;
    }
}

/// A task that failed, mismatched, or is being retried.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub chunk: QualifiedName,
    pub state: String,
    pub message: String,
}

/// The queue at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub hypertables: Vec<HypertableStatus>,
    pub problems: Vec<Problem>,
    /// hyperfill connections in a transaction on the target now.
    pub active_sessions: i64,
}

pub async fn status(db: &Db, problems: i64) -> Result<Status> {
    let what = "reading the queue's status";
    let hypertables = db
        .query(sql::STATUS_BY_HYPERTABLE, &[], what)
        .await?
        .iter()
        .map(|r| {
            let bytes_copied: i64 = r.get(10);
            let left = projected_bytes_left(r.get(11), r.get(13), bytes_copied);
            HypertableStatus {
                hypertable: QualifiedName::from_row(r, 0),
                continuous_aggregate: r.get(2),
                chunks: r.get(14),
                split_chunks: r.get(15),
                pending: r.get(3),
                done: r.get(4),
                failed: r.get(5),
                skipped: r.get(6),
                verified: r.get(7),
                mismatched: r.get(8),
                rows_copied: r.get(9),
                batches_copied: r.get(12),
                bytes_copied,
                estimated_bytes_left: left,
                estimated_bytes_total: bytes_copied + left,
                source_bytes_left: r.get(11),
                source_bytes_done: r.get(13),
            }
        })
        .collect();
    let problems = db
        .query(sql::RECENT_PROBLEMS, &[&problems], what)
        .await?
        .iter()
        .map(|r| Problem {
            chunk: QualifiedName::from_row(r, 0),
            state: r.get(2),
            message: r.get(3),
        })
        .collect();
    let active_sessions = db.query_one(sql::ACTIVE_SESSIONS, &[], what).await?.get(0);
    Ok(Status {
        hypertables,
        problems,
        active_sessions,
    })
}

/// A source hypertable (or continuous aggregate) as `stage` recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct LeftBehind {
    pub hypertable: QualifiedName,
    pub continuous_aggregate: Option<QualifiedName>,
    /// `format_type` of its time column.
    pub time_type: String,
    pub chunks: i32,
    /// The name `--filter` matches (`format('%I.%I')` of table or view).
    pub filter_name: String,
}

impl LeftBehind {
    /// One row of a query whose columns are: schema, table, cagg view
    /// schema, cagg view name (both NULL for a plain hypertable), time
    /// type, chunk count, filter name. Both the source's inventory and the
    /// queue's left-behind listing return that shape.
    pub fn from_row(r: &tokio_postgres::Row) -> Self {
        LeftBehind {
            hypertable: QualifiedName::from_row(r, 0),
            continuous_aggregate: match (
                r.get::<_, Option<String>>(2),
                r.get::<_, Option<String>>(3),
            ) {
                (Some(s), Some(n)) => Some(QualifiedName::new(s, n)),
                _ => None,
            },
            time_type: r.get(4),
            chunks: r.get(5),
            filter_name: r.get(6),
        }
    }
}

/// Record the source's hypertables; `staged` marks those this stage selected.
pub async fn record_source_hypertables(
    db: &Db,
    all: &[LeftBehind],
    staged: &std::collections::HashSet<QualifiedName>,
) -> Result<()> {
    let rows: Vec<serde_json::Value> = all
        .iter()
        .map(|h| {
            serde_json::json!({
                "hypertable_schema": h.hypertable.schema,
                "hypertable_name": h.hypertable.name,
                "cagg_schema": h.continuous_aggregate.as_ref().map(|c| &c.schema),
                "cagg_name": h.continuous_aggregate.as_ref().map(|c| &c.name),
                "time_type": h.time_type,
                "filter_name": h.filter_name,
                "chunks": h.chunks,
                "staged": staged.contains(&h.hypertable),
            })
        })
        .collect();
    db.execute(
        sql::RECORD_SOURCE_HYPERTABLES,
        &[&serde_json::Value::Array(rows)],
        "recording the source's hypertables",
    )
    .await?;
    Ok(())
}

/// Source hypertables with chunks that were never staged.
pub async fn left_behind(db: &Db) -> Result<Vec<LeftBehind>> {
    let rows = db
        .query(sql::LEFT_BEHIND, &[], "reading hypertables left behind")
        .await?;
    Ok(rows.iter().map(LeftBehind::from_row).collect())
}

/// Chunks copied another way than staged, with the reason.
pub async fn copied_another_way(db: &Db) -> Result<Vec<(QualifiedName, String)>> {
    let rows = db
        .query(
            sql::COPIED_ANOTHER_WAY,
            &[],
            "reading chunks copied another way",
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (QualifiedName::from_row(r, 0), r.get(2)))
        .collect())
}

/// The newest migration applied (a queue staged by an older hyperfill lacks
/// the later ones until the next `stage`, `copy` or `verify` applies them).
pub async fn schema_version(db: &Db) -> Result<i32> {
    Ok(db
        .query_one(sql::SCHEMA_VERSION, &[], "reading the queue's version")
        .await?
        .get(0))
}

/// What the queue says about each cagg whose materialization was staged.
pub async fn staged_caggs(db: &Db) -> Result<Vec<crate::caggs::Staged>> {
    let rows = db
        .query(
            sql::STAGED_CAGGS,
            &[],
            "reading the staged continuous aggregates",
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| crate::caggs::Staged {
            view: QualifiedName::from_row(r, 0),
            staged_upper: r.get(2),
            copied_watermark: r.get(3),
            not_copied: r.get(4),
        })
        .collect())
}

/// A refresh `refresh-caggs` ran, with what `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct CaggRefresh {
    pub view: QualifiedName,
    pub time_type: String,
    pub start: Option<i64>,
    pub end: i64,
    pub verify_state: Option<String>,
    pub verify_message: Option<String>,
}

/// The last refresh of every cagg.
pub async fn cagg_refreshes(db: &Db) -> Result<Vec<CaggRefresh>> {
    let rows = db
        .query(sql::CAGG_REFRESHES, &[], "reading the recorded refreshes")
        .await?;
    Ok(rows
        .iter()
        .map(|r| CaggRefresh {
            view: QualifiedName::from_row(r, 0),
            time_type: r.get(2),
            start: r.get(3),
            end: r.get(4),
            verify_state: r.get(5),
            verify_message: r.get(6),
        })
        .collect())
}

/// Record a refresh; its view is then to verify.
pub async fn record_cagg_refresh(
    db: &Db,
    view: &QualifiedName,
    time_type: &str,
    start: Option<i64>,
    end: i64,
) -> Result<()> {
    db.execute(
        sql::RECORD_CAGG_REFRESH,
        &[&view.schema, &view.name, &time_type, &start, &end],
        "recording a refresh",
    )
    .await?;
    Ok(())
}

/// Record what verify found in a cagg's refreshed range.
pub async fn complete_cagg_verify(
    db: &Db,
    view: &QualifiedName,
    state: VerifyState,
    message: &str,
) -> Result<()> {
    let s = match state {
        VerifyState::Match => "match",
        VerifyState::Mismatch => "mismatch",
        VerifyState::Skipped => "pending",
    };
    db.execute(
        sql::COMPLETE_CAGG_VERIFY,
        &[&view.schema, &view.name, &s, &message],
        "recording a verification",
    )
    .await?;
    Ok(())
}

/// Verify every recorded refresh again.
pub async fn reset_cagg_verify(db: &Db) -> Result<u64> {
    db.execute(sql::RESET_CAGG_VERIFY, &[], "re-queueing verification")
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_left_are_projected_by_what_done_tasks_moved() {
        // Nothing done yet: the source's table sizes as they are.
        assert_eq!(projected_bytes_left(1000, 0, 0), 1000);
        // Done tasks moved 60 bytes per 100 estimated: the rest likewise.
        assert_eq!(projected_bytes_left(1000, 500, 300), 600);
        assert_eq!(projected_bytes_left(0, 500, 300), 0);
        assert_eq!(projected_bytes_left(-5, 0, 0), 0);
    }
}
