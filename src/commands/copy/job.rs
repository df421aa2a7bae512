//! One `copy` task, from its claim on the target to its commit: the job
//! each worker runs (`worker::Job`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use tokio_postgres::error::SqlState;

use crate::catalog;
use crate::copy::{self, Context, Outcome};
use crate::db::Db;
use crate::error::{Error, Result, Side};
use crate::ident::{quote_literal, QualifiedName};
use crate::queue::{self, AfterFailure, CopyDone, Recorded, Task, TaskState};
use crate::ui;
use crate::worker::{self, Conns, Step, StepError};

use super::{rows_text, Event};

/// What this process knows of a task it tried.
#[derive(Clone)]
struct Tried {
    hypertable: QualifiedName,
    chunk: QualifiedName,
    label: String,
    estimated: u64,
    /// Failed attempts this process could not record (another worker had
    /// claimed the task again first).
    unrecorded: u32,
}

pub(super) struct CopyJob {
    ctx: Context,
    max_attempts: u32,
    analyze: bool,
    /// Every task this process tried, for failure records.
    tried: Mutex<HashMap<i64, Tried>>,
    /// What starts each task's target transaction (built once).
    begin: String,
}

impl CopyJob {
    pub(super) fn new(ctx: Context, max_attempts: u32, analyze: bool) -> CopyJob {
        CopyJob {
            ctx,
            max_attempts,
            analyze,
            tried: Mutex::new(HashMap::new()),
            begin: format!("{}; {BEGIN_COPY}", crate::db::BEGIN_TARGET),
        }
    }
}

/// The statements that begin the source transaction of a task: read-only,
/// one snapshot, the exported one when staged with `--snapshot`.
/// REPEATABLE READ, never SERIALIZABLE: a hot-standby source refuses
/// serializable transactions.
pub fn source_begin(task: &Task) -> String {
    let mut sql = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    if let Some(s) = &task.snapshot {
        sql.push_str(&format!("; SET TRANSACTION SNAPSHOT {}", quote_literal(s)));
    }
    sql
}

/// Begin the source transaction of a task (one round trip).
pub async fn begin_source(src: &Db, task: &Task) -> Result<()> {
    let what = match &task.snapshot {
        Some(s) => format!(
            "starting the transaction with the staged snapshot {s} (the transaction that \
             exported it must still be open)"
        ),
        None => "starting a transaction".to_string(),
    };
    src.batch(&source_begin(task), &what).await
}

/// Begins a copy task's target transaction.
// language=PostgreSQL
const BEGIN_COPY: &str = "SET LOCAL synchronous_commit = off";

/// Taken right after the claim: a failed attempt rolls back to it, keeping
/// the task's row lock, and records the failure before committing.
// language=PostgreSQL
const SAVEPOINT: &str = "SAVEPOINT hyperfill_claimed";
// language=PostgreSQL
const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT hyperfill_claimed";

impl CopyJob {
    async fn step_inner(&self, c: &Conns) -> Result<Step<Event>, StepError<Event>> {
        // Target: the transaction, the claim and the savepoint after it in
        // one round trip (with no task, the savepoint is rolled back too).
        let (begun, noted, claimed, saved) = futures::join!(
            c.tgt.batch(&self.begin, "starting a transaction"),
            c.tgt.note_session(),
            queue::claim_copy(&c.tgt, self.max_attempts),
            c.tgt.batch(SAVEPOINT, "starting the task"),
        );
        begun?;
        noted?;
        let claimed = claimed?;
        saved?;
        let Some(task) = claimed else {
            c.tgt.batch("ROLLBACK", "ending a transaction").await?;
            return Ok(Step::Idle);
        };
        self.tried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task.id)
            .or_insert_with(|| Tried {
                hypertable: task.hypertable.clone(),
                chunk: task.chunk.clone(),
                label: task.label(),
                estimated: task.estimated_bytes.max(0) as u64,
                unrecorded: 0,
            });
        let result = self.attempt(c, &task).await;
        match result {
            Ok(event) => Ok(Step::Did(event)),
            Err(error) => {
                let recorded = self.record_in_claim(c, &task, &error).await;
                Err(StepError {
                    task: Some(task.id),
                    error,
                    recorded,
                })
            }
        }
    }

    /// Copy one claimed task and commit it.
    async fn attempt(&self, c: &Conns, task: &Task) -> Result<Event> {
        let estimated = task.estimated_bytes.max(0) as u64;
        let started = SystemTime::now();
        let clock = Instant::now();
        let outcome = copy::copy_task(&c.src, &c.tgt, &self.ctx, task, &source_begin(task)).await?;
        let event = match outcome {
            Outcome::Copied {
                stats,
                target_chunk,
                fallback,
                source_watermark,
            } => {
                let elapsed = clock.elapsed();
                let message = format!(
                    "copied {}, {} in {}",
                    rows_text(&stats),
                    ui::bytes(stats.bytes),
                    ui::duration(elapsed)
                );
                let done = CopyDone {
                    rows: stats.rows as i64,
                    batches: (stats.batches > 0).then_some(stats.batches as i64),
                    bytes: stats.bytes as i64,
                    started,
                    message: &message,
                    target_chunk: target_chunk.as_ref(),
                    fallback: fallback.as_deref(),
                    source_watermark,
                };
                // The done mark and the commit in one round trip (a failed
                // mark aborts the transaction, and its COMMIT rolls back).
                // The read-only source transaction ends with the next
                // task's first source round trip.
                let (marked, committed) = futures::join!(
                    queue::complete_copy(&c.tgt, task.id, &done),
                    c.tgt.batch("COMMIT", "committing the copied chunk"),
                );
                marked?;
                committed?;
                if self.analyze {
                    // Not held open through the ANALYZE: an open snapshot
                    // holds back the source's vacuum, and a hot standby
                    // ends a transaction idle past its streaming delay.
                    if let Err(e) = c.src.batch("COMMIT", "ending a transaction").await {
                        tracing::debug!(error = %e, "ending the read-only source transaction");
                    }
                } else {
                    c.src.defer("COMMIT");
                }
                if let (true, Some(target_chunk)) = (self.analyze, &target_chunk) {
                    // The chunk is committed: a failed ANALYZE is not a
                    // failed copy.
                    // In a transaction of its own (BEGIN_TARGET's limits,
                    // the session noted for the stall probe), which a
                    // transaction-mode pooler keeps on one server session.
                    let analyze = format!("ANALYZE {}; COMMIT", target_chunk.sql());
                    let (begun, noted, analyzed) = futures::join!(
                        c.tgt
                            .batch(crate::db::BEGIN_TARGET, "starting a transaction"),
                        c.tgt.note_session(),
                        c.tgt.batch(&analyze, "analyzing the copied chunk"),
                    );
                    if let Err(e) = begun.and(noted).and(analyzed) {
                        tracing::warn!(chunk = %target_chunk, error = %e, "ANALYZE failed");
                        let _ = c.tgt.batch("ROLLBACK", "ending a transaction").await;
                    }
                }
                Event::Copied {
                    task: task.id,
                    hypertable: task.hypertable.clone(),
                    chunk: task.label(),
                    stats,
                    elapsed,
                    estimated,
                    fallback,
                }
            }
            Outcome::SourceGone => {
                let (marked, committed) = futures::join!(
                    queue::skip_copy(&c.tgt, task.id, "the source chunk no longer exists"),
                    c.tgt.batch("COMMIT", "ending a transaction"),
                );
                marked?;
                committed?;
                c.src.defer("COMMIT");
                Event::Skipped {
                    task: task.id,
                    hypertable: task.hypertable.clone(),
                    chunk: task.label(),
                    estimated,
                }
            }
        };
        Ok(event)
    }

    /// Record a failed attempt in the task's own transaction, rolled back to
    /// the savepoint taken after the claim: the row stays locked until the
    /// attempt is counted, so no other worker or process can claim the task
    /// in between (and go past `--max-attempts`). `None` when the target
    /// connection cannot do it (lost, stuck), or when the source chunk may
    /// have vanished; then the worker records on fresh connections.
    async fn record_in_claim(&self, c: &Conns, task: &Task, error: &Error) -> Option<Event> {
        if let Error::Db {
            side: Side::Source,
            source,
            ..
        } = error
        {
            if source.code() == Some(&SqlState::UNDEFINED_TABLE) {
                return None;
            }
        }
        let after = if worker::retryable(error) {
            AfterFailure::Retry
        } else {
            AfterFailure::Failed
        };
        let text = error.to_string();
        let record = async {
            c.tgt
                .batch(ROLLBACK_TO_SAVEPOINT, "recording a failed task")
                .await?;
            let r = queue::record_failure(&c.tgt, task.id, after, &text, self.max_attempts).await?;
            c.tgt.batch("COMMIT", "recording a failed task").await?;
            Ok::<_, Error>(r)
        };
        // A stuck target ends this with Error::Stalled (watched connection).
        match record.await {
            Ok(Some(recorded)) => Some(self.event(task.id, recorded, text)),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot record the failure in the task's transaction");
                None
            }
        }
    }

    /// The event for a recorded failure.
    fn event(&self, task: i64, recorded: Recorded, error: String) -> Event {
        let Tried {
            hypertable,
            label,
            estimated,
            ..
        } = self.tried(task);
        match recorded.state {
            TaskState::Skipped => Event::Skipped {
                task,
                hypertable,
                chunk: label,
                estimated,
            },
            state => Event::Failed {
                task,
                hypertable,
                chunk: label,
                error,
                final_attempt: state == TaskState::Failed,
                attempt: recorded.attempts,
                estimated,
            },
        }
    }

    /// This process's record of a task; `count`: one more unrecorded attempt.
    fn tried_with(&self, task: i64, count: bool) -> Tried {
        let mut tried = self.tried.lock().unwrap_or_else(|e| e.into_inner());
        let entry = tried.entry(task).or_insert_with(|| Tried {
            hypertable: QualifiedName::new("?", "?"),
            chunk: QualifiedName::new("?", "?"),
            label: format!("task {task}"),
            estimated: 0,
            unrecorded: 0,
        });
        if count {
            entry.unrecorded += 1;
        }
        entry.clone()
    }

    fn tried(&self, task: i64) -> Tried {
        self.tried_with(task, false)
    }

    /// Record a failed attempt on fresh connections (the task's connection
    /// was lost): only if no other worker has claimed the task meanwhile.
    async fn failed_inner(&self, c: &Conns, task: i64, error: &Error) -> Result<Event> {
        let chunk = self.tried(task).chunk;
        // A chunk dropped on the source while we copied it is not a failure.
        let (after, text) =
            if !catalog::chunk_exists(&c.src, &self.ctx.source.features, &chunk).await? {
                (
                    AfterFailure::Skipped,
                    "the source chunk no longer exists".to_string(),
                )
            } else if worker::retryable(error) {
                (AfterFailure::Retry, error.to_string())
            } else {
                (AfterFailure::Failed, error.to_string())
            };
        match queue::record_failure(&c.tgt, task, after, &text, self.max_attempts).await? {
            Some(recorded) => Ok(self.event(task, recorded, error.to_string())),
            // Another worker has the task already: it is being tried again.
            None => {
                let t = self.tried_with(task, true);
                Ok(Event::Failed {
                    task,
                    hypertable: t.hypertable,
                    chunk: t.label,
                    error: error.to_string(),
                    final_attempt: false,
                    attempt: t.unrecorded,
                    estimated: t.estimated,
                })
            }
        }
    }
}

worker::job_from_inherent!(CopyJob, Event);
