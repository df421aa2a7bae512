//! `copy`: run the queue with N workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::catalog;
use crate::copy::{self, Context, Outcome};
use crate::db::{ConnInfo, Db};
use crate::error::{Error, Result};
use crate::ident::{quote_literal, QualifiedName};
use crate::queue::{self, AfterFailure, CopyDone, Task};
use crate::ui;
use crate::worker::{self, Conns, Job, PoolConfig, Shutdown, Step, StepError};

pub struct CopyConfig {
    pub source: ConnInfo,
    pub target: ConnInfo,
    pub parallelism: usize,
    pub max_attempts: u32,
    pub analyze: bool,
    pub max_rate: Option<u64>,
    pub requeue_mismatched: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct CopyReport {
    pub copied: u64,
    pub skipped: u64,
    pub failed: u64,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub remaining: u64,
    /// Source hypertables with chunks that no stage selected.
    pub left_behind: Vec<queue::LeftBehind>,
}

pub enum Event {
    Copied {
        chunk: String,
        rows: u64,
        bytes: u64,
        elapsed: std::time::Duration,
        estimated: u64,
        /// Why it was copied another way than staged.
        fallback: Option<String>,
    },
    Skipped {
        chunk: String,
        estimated: u64,
    },
    Failed {
        chunk: String,
        error: String,
        final_attempt: bool,
        attempt: u32,
        estimated: u64,
    },
}

/// What this process knows of a task it tried.
#[derive(Clone)]
struct Tried {
    chunk: QualifiedName,
    label: String,
    estimated: u64,
    attempts: u32,
}

struct CopyJob {
    ctx: Context,
    run_started: SystemTime,
    max_attempts: u32,
    analyze: bool,
    /// Every task this process tried, for failure records.
    tried: Mutex<HashMap<i64, Tried>>,
}

/// Begin the source transaction of a task: read-only, one snapshot, the
/// exported one when staged with `--snapshot`.
pub async fn begin_source(src: &Db, task: &Task) -> Result<()> {
    src.batch(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        "starting a transaction",
    )
    .await?;
    if let Some(s) = &task.snapshot {
        src.batch(
            &format!("SET TRANSACTION SNAPSHOT {}", quote_literal(s)),
            &format!("importing the staged snapshot {s} (the transaction that exported it must still be open)"),
        )
        .await?;
    }
    Ok(())
}

impl CopyJob {
    async fn step_inner(&self, c: &Conns) -> Result<Step<Event>, StepError> {
        c.tgt
            .batch(
                "BEGIN; SET LOCAL synchronous_commit = off",
                "starting a transaction",
            )
            .await?;
        let Some(task) = queue::claim_copy(&c.tgt, self.run_started).await? else {
            c.tgt.batch("ROLLBACK", "ending a transaction").await?;
            return Ok(Step::Idle);
        };
        self.tried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task.id)
            .or_insert_with(|| Tried {
                chunk: task.chunk.clone(),
                label: task.label(),
                estimated: task.estimated_bytes.max(0) as u64,
                attempts: 0,
            });
        let estimated = task.estimated_bytes.max(0) as u64;
        let fail = |error: Error| StepError {
            task: Some(task.id),
            error,
        };
        let started = SystemTime::now();
        let clock = Instant::now();
        begin_source(&c.src, &task).await.map_err(fail)?;
        let outcome = copy::copy_task(&c.src, &c.tgt, &self.ctx, &task)
            .await
            .map_err(fail)?;
        let event = match outcome {
            Outcome::Copied {
                rows,
                bytes,
                target_chunk,
                fallback,
                source_watermark,
            } => {
                let elapsed = clock.elapsed();
                let message = format!(
                    "copied {} rows, {} in {}",
                    rows,
                    ui::bytes(bytes),
                    ui::duration(elapsed)
                );
                let done = CopyDone {
                    rows: rows as i64,
                    bytes: bytes as i64,
                    started,
                    message: &message,
                    target_chunk: target_chunk.as_ref(),
                    fallback: fallback.as_deref(),
                    source_watermark,
                };
                queue::complete_copy(&c.tgt, task.id, &done)
                    .await
                    .map_err(fail)?;
                c.src
                    .batch("COMMIT", "ending a transaction")
                    .await
                    .map_err(fail)?;
                c.tgt
                    .batch("COMMIT", "committing the copied chunk")
                    .await
                    .map_err(fail)?;
                if let (true, Some(target_chunk)) = (self.analyze, &target_chunk) {
                    c.tgt
                        .batch(
                            &format!("ANALYZE {}", target_chunk.sql()),
                            "analyzing the copied chunk",
                        )
                        .await
                        .map_err(fail)?;
                }
                Event::Copied {
                    chunk: task.label(),
                    rows,
                    bytes,
                    elapsed,
                    estimated,
                    fallback,
                }
            }
            Outcome::SourceGone => {
                queue::skip_copy(&c.tgt, task.id, "the source chunk no longer exists")
                    .await
                    .map_err(fail)?;
                c.src
                    .batch("COMMIT", "ending a transaction")
                    .await
                    .map_err(fail)?;
                c.tgt
                    .batch("COMMIT", "ending a transaction")
                    .await
                    .map_err(fail)?;
                Event::Skipped {
                    chunk: task.label(),
                    estimated,
                }
            }
        };
        Ok(Step::Did(event))
    }

    async fn failed_inner(&self, c: &Conns, task: i64, error: &Error) -> Result<Event> {
        let Tried {
            chunk,
            label,
            estimated,
            attempts: attempt,
        } = {
            let mut tried = self.tried.lock().unwrap_or_else(|e| e.into_inner());
            let entry = tried.entry(task).or_insert_with(|| Tried {
                chunk: QualifiedName::new("?", "?"),
                label: format!("task {task}"),
                estimated: 0,
                attempts: 0,
            });
            entry.attempts += 1;
            entry.clone()
        };
        // A chunk dropped on the source while we copied it is not a failure.
        if !catalog::chunk_exists(&c.src, &chunk).await? {
            queue::record_failure(
                &c.tgt,
                task,
                AfterFailure::Skipped,
                "the source chunk no longer exists",
            )
            .await?;
            return Ok(Event::Skipped {
                chunk: label,
                estimated,
            });
        }
        let give_up = !worker::retryable(error) || attempt >= self.max_attempts;
        let text = format!("{error}");
        let after = if give_up {
            AfterFailure::Failed
        } else {
            AfterFailure::Retry
        };
        queue::record_failure(&c.tgt, task, after, &text).await?;
        Ok(Event::Failed {
            chunk: label,
            error: text,
            final_attempt: give_up,
            attempt,
            estimated,
        })
    }
}

impl Job for CopyJob {
    type Event = Event;

    fn step<'a>(&'a self, c: &'a Conns) -> BoxFuture<'a, Result<Step<Event>, StepError>> {
        self.step_inner(c).boxed()
    }

    fn failed<'a>(
        &'a self,
        c: &'a Conns,
        task: i64,
        error: &'a Error,
    ) -> BoxFuture<'a, Result<Event>> {
        self.failed_inner(c, task, error).boxed()
    }
}

pub async fn run(cfg: CopyConfig, shutdown: Shutdown) -> Result<CopyReport> {
    let tgt = cfg.target.connect().await?;
    queue::require(&tgt).await?;
    // A queue staged by an older hyperfill gets the newer columns.
    queue::migrate(&tgt).await?;
    let src = cfg.source.connect().await?;
    let ctx = Context {
        source: catalog::extension(&src).await?,
        target: catalog::extension(&tgt).await?,
        invalidation: crate::copy::invalidation::strategy(&tgt).await,
        rate: cfg
            .max_rate
            .map(|r| Arc::new(crate::copy::RateLimiter::new(r))),
    };
    catalog::ensure_compatible(&ctx.source, &ctx.target)?;
    if cfg.requeue_mismatched {
        let n = queue::requeue_mismatched(&tgt).await?;
        ui::line(&format!(
            "Re-queued {n} chunk(s) that verify found different."
        ));
    }
    let before = queue::counts(&tgt).await?;
    let todo = before.pending + before.failed;
    if todo == 0 {
        ui::line(&format!(
            "Nothing to copy: all {} staged chunk(s) are done or skipped. Use `stage` to add more.",
            before.total()
        ));
        let extras = crate::commands::left_behind::read(&tgt).await?;
        for l in crate::commands::left_behind::left_behind_lines(&extras.left_behind) {
            ui::line(&l);
        }
        return Ok(CopyReport {
            left_behind: extras.left_behind,
            ..Default::default()
        });
    }
    let run_started: SystemTime = tgt
        .query_one("SELECT now()", &[], "reading the clock")
        .await?
        .get(0);
    drop((src, tgt));

    let workers = cfg.parallelism.min(todo as usize).max(1);
    ui::line(&format!(
        "Copying {} chunk(s) (~{} on the source) with {} worker(s)",
        ui::count(todo),
        ui::bytes(before.estimated_bytes_pending.max(0) as u64),
        workers
    ));
    let job = Arc::new(CopyJob {
        ctx,
        run_started,
        max_attempts: cfg.max_attempts,
        analyze: cfg.analyze,
        tried: Mutex::new(HashMap::new()),
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pool_cfg = PoolConfig {
        workers,
        source: cfg.source.clone(),
        target: cfg.target.clone(),
        max_attempts: cfg.max_attempts,
    };
    let clock = Instant::now();
    let pool = tokio::spawn(worker::run(pool_cfg, job, shutdown.clone(), tx));

    let mut report = CopyReport::default();
    let progress = ui::Progress::new(
        "copying",
        todo,
        Some(before.estimated_bytes_pending.max(0) as u64),
    );
    let mut n = 0u64;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Copied {
                chunk,
                rows,
                bytes,
                elapsed,
                estimated,
                fallback,
            } => {
                n += 1;
                report.copied += 1;
                report.rows += rows;
                report.bytes += bytes;
                progress.advance(estimated);
                progress.line(&format!(
                    "[{n}/{todo}] Copied chunk {chunk}: {} rows, {} in {}{}",
                    ui::count(rows),
                    ui::bytes(bytes),
                    ui::duration(elapsed),
                    ui::rate(bytes, elapsed)
                ));
                if let Some(why) = fallback {
                    progress.line(&format!("  note: {why}"));
                }
            }
            Event::Skipped { chunk, estimated } => {
                n += 1;
                report.skipped += 1;
                progress.advance(estimated);
                progress.line(&format!(
                    "[{n}/{todo}] Skipped chunk {chunk}: it no longer exists on the source"
                ));
            }
            Event::Failed {
                chunk,
                error,
                final_attempt,
                attempt,
                estimated,
            } => {
                if final_attempt {
                    n += 1;
                    report.failed += 1;
                    progress.advance(estimated);
                    progress.line(&format!(
                        "[{n}/{todo}] FAILED chunk {chunk} (attempt {attempt}): {error}"
                    ));
                } else {
                    progress.line(&format!(
                        "Retrying chunk {chunk} after attempt {attempt} failed: {error}"
                    ));
                }
            }
        }
    }
    progress.finish();
    let pool_result = pool
        .await
        .unwrap_or_else(|e| Err(Error::Internal(format!("the worker pool crashed: {e}"))));
    report.seconds = clock.elapsed().as_secs_f64();

    // The queue is the truth (other copy processes may share it).
    let after = match cfg.target.connect().await {
        Ok(tgt) => Some((queue::counts(&tgt).await?, queue::failed_tasks(&tgt).await?)),
        Err(_) => None,
    };
    if let Some((c, _)) = &after {
        report.remaining = c.pending;
        if c.pending > 0 && !shutdown.graceful.is_cancelled() {
            // Nothing was left for this run to claim: the rest is locked by
            // other copy processes, or by sessions the server has not yet
            // seen close (a killed copy's, for a moment).
            ui::line(&format!(
                "{} chunk(s) are still being copied by another copy process (see `hyperfill status`); \
                 run copy again if none is running.",
                c.pending
            ));
        }
    }
    ui::line(&format!(
        "Copied {} from {} chunk(s) ({} rows) in {}{}; {} skipped, {} failed.",
        ui::bytes(report.bytes),
        ui::count(report.copied),
        ui::count(report.rows),
        ui::duration(clock.elapsed()),
        ui::rate(report.bytes, clock.elapsed()),
        report.skipped,
        report.failed,
    ));
    pool_result?;
    if shutdown.graceful.is_cancelled() && report.remaining > 0 {
        return Err(Error::Interrupted);
    }
    if let Some((c, failed)) = after {
        if c.failed > 0 {
            for (chunk, err) in failed.iter().take(20) {
                ui::line(&format!("  failed: {chunk}: {err}"));
            }
            return Err(Error::TasksFailed { failed: c.failed });
        }
    }
    if let Ok(tgt) = cfg.target.connect().await {
        let extras = crate::commands::left_behind::read(&tgt).await?;
        for l in crate::commands::left_behind::left_behind_lines(&extras.left_behind) {
            ui::line(&l);
        }
        report.left_behind = extras.left_behind;
    }
    ui::line("Execute the 'verify' command to check the copied data.");
    Ok(report)
}
