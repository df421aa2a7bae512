//! `verify`: compare every copied chunk on both sides.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::catalog;
use crate::commands::copy::begin_source;
use crate::db::ConnInfo;
use crate::error::{Error, Result};
use crate::queue::{self, VerifyState};
use crate::ui;
use crate::verify::{self, Mismatch, Outcome};
use crate::worker::{self, Conns, PoolConfig, Shutdown, Step, StepError};

pub struct VerifyConfig {
    pub source: ConnInfo,
    pub target: ConnInfo,
    pub parallelism: usize,
    pub all: bool,
}

/// What a verify run found. `mismatched` counts this run's; `mismatches`
/// lists every task whose last verification found a difference, this run's
/// or an earlier one's (the exit code reflects them all).
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub matched: u64,
    pub mismatched: u64,
    pub skipped: u64,
    pub seconds: f64,
    /// Continuous aggregates whose refreshed range was compared.
    pub caggs_matched: u64,
    pub caggs_mismatched: u64,
    #[serde(flatten)]
    pub extras: crate::commands::left_behind::Extras,
    pub mismatches: Vec<queue::MismatchedTask>,
}

/// Fail with exit code 7, carrying the report (for `--output json`), when
/// any mismatch is on record.
async fn finish(target: &ConnInfo, mut report: VerifyReport) -> Result<VerifyReport> {
    let (recorded, caggs) = match target.connect().await {
        Ok(tgt) => (
            queue::mismatched_tasks(&tgt).await?,
            queue::cagg_refreshes(&tgt)
                .await?
                .iter()
                .filter(|r| r.verify_state.as_deref() == Some("mismatch"))
                .count() as u64,
        ),
        Err(_) => (Vec::new(), report.caggs_mismatched),
    };
    let mismatched = (recorded.len() as u64).max(report.mismatched) + caggs;
    report.mismatches = recorded;
    if mismatched > 0 {
        for m in report.mismatches.iter().take(20) {
            ui::line(&format!("  mismatch: {}: {}", chunk_label(m), m.message));
        }
        return Err(Error::VerifyMismatch {
            mismatched,
            report: serde_json::to_value(&report).unwrap_or_default(),
        });
    }
    Ok(report)
}

fn chunk_label(m: &queue::MismatchedTask) -> String {
    if m.part > 0 {
        format!("{} (part {})", m.chunk, m.part)
    } else {
        m.chunk.to_string()
    }
}

pub enum Event {
    Done { chunk: String, outcome: Outcome },
    Retrying { chunk: String, error: String },
}

struct VerifyJob {
    /// The two sides' TimescaleDB releases.
    source: crate::catalog::Features,
    target: crate::catalog::Features,
    /// Chunk and attempts of every task this process tried.
    tried: Mutex<HashMap<i64, (String, u32)>>,
}

impl VerifyJob {
    async fn step_inner(&self, c: &Conns) -> Result<Step<Event>, StepError<Event>> {
        let (begun, noted) = futures::join!(
            c.tgt
                .batch(crate::db::BEGIN_TARGET, "starting a transaction"),
            c.tgt.note_session(),
        );
        begun?;
        noted?;
        let Some(task) = queue::claim_verify(&c.tgt).await? else {
            c.tgt.batch("ROLLBACK", "ending a transaction").await?;
            return Ok(Step::Idle);
        };
        self.tried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task.id)
            .or_insert_with(|| (task.label(), 0));
        let fail = |error: Error| StepError {
            task: Some(task.id),
            error,
            recorded: None,
        };
        begin_source(&c.src, &task).await.map_err(fail)?;
        let outcome = verify::verify_task(&c.src, &c.tgt, (&self.source, &self.target), &task)
            .await
            .map_err(fail)?;
        let (state, message, details) = match &outcome {
            Outcome::Match { rows } => (VerifyState::Match, format!("{rows} rows match"), None),
            Outcome::Mismatch(m) => (VerifyState::Mismatch, m.message.clone(), Some(m.details())),
            Outcome::SourceGone => (
                VerifyState::Skipped,
                "the source chunk no longer exists".into(),
                None,
            ),
        };
        c.src
            .batch("COMMIT", "ending a transaction")
            .await
            .map_err(fail)?;
        queue::complete_verify(&c.tgt, task.id, state, &message, details.as_ref())
            .await
            .map_err(fail)?;
        c.tgt
            .batch("COMMIT", "recording a verification")
            .await
            .map_err(fail)?;
        Ok(Step::Did(Event::Done {
            chunk: task.label(),
            outcome,
        }))
    }

    /// A verification that cannot run is retried when the error is transient;
    /// otherwise the chunk is recorded as a mismatch with the error, so it is
    /// counted and shown, never silently passed.
    async fn failed_inner(&self, c: &Conns, task: i64, error: &Error) -> Result<Event> {
        let (chunk, attempt) = {
            let mut tried = self.tried.lock().unwrap_or_else(|e| e.into_inner());
            let entry = tried
                .entry(task)
                .or_insert_with(|| (format!("task {task}"), 0));
            entry.1 += 1;
            entry.clone()
        };
        if worker::retryable(error) && attempt < MAX_ATTEMPTS {
            return Ok(Event::Retrying {
                chunk,
                error: error.to_string(),
            });
        }
        let mismatch = Mismatch::unreadable(format!("could not be verified: {error}"));
        queue::complete_verify(
            &c.tgt,
            task,
            VerifyState::Mismatch,
            &mismatch.message,
            Some(&mismatch.details()),
        )
        .await?;
        Ok(Event::Done {
            chunk,
            outcome: Outcome::Mismatch(mismatch),
        })
    }
}

const MAX_ATTEMPTS: u32 = 5;

worker::job_from_inherent!(VerifyJob, Event);

pub async fn run(cfg: VerifyConfig, shutdown: Shutdown) -> Result<VerifyReport> {
    let tgt = cfg.target.connect().await?;
    queue::require(&tgt).await?;
    // A queue staged by an older release lacks newer columns.
    queue::migrate(&tgt).await?;
    let src = cfg.source.connect().await?;
    // Both sides must have TimescaleDB (a clear error otherwise).
    let source_ext = catalog::extension(&src).await?;
    let target_ext = catalog::extension(&tgt).await?;
    if cfg.all {
        queue::reset_verify(&tgt).await?;
        queue::reset_cagg_verify(&tgt).await?;
    }
    let before = queue::counts(&tgt).await?;
    let todo = before.verify_pending;
    if todo == 0 {
        ui::line(&format!(
            "Nothing to verify: {} task(s) verified ({} mismatched), {} not copied yet. \
             Use --all to verify every copied task again.",
            before.verified_match + before.verified_mismatch,
            before.verified_mismatch,
            before.pending + before.failed
        ));
        let mut report = VerifyReport::default();
        views_and_left_behind(&src, &tgt, &target_ext, &mut report).await?;
        drop((src, tgt));
        return finish(&cfg.target, report).await;
    }
    drop((src, tgt));
    let workers = cfg.parallelism.min(todo as usize).max(1);
    ui::line(&format!(
        "Verifying {} task(s) with {} worker(s)",
        ui::count(todo),
        workers
    ));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // A stuck server fails the attempt instead of hanging (db/watch.rs);
    // a long summary query on a busy server is waited for.
    let source = cfg.source.watched(crate::db::DEFAULT_STALL_TIMEOUT);
    let target = cfg.target.watched(crate::db::DEFAULT_STALL_TIMEOUT);
    let pool_cfg = PoolConfig {
        workers,
        warm: Arc::new(worker::Warm::new(&source, &target)),
        source,
        target,
        max_attempts: MAX_ATTEMPTS,
        more: None,
    };
    let clock = Instant::now();
    let pool = tokio::spawn(worker::run(
        pool_cfg,
        Arc::new(VerifyJob {
            source: source_ext.features,
            target: target_ext.features,
            tried: Mutex::new(HashMap::new()),
        }),
        shutdown.clone(),
        tx,
    ));
    let mut report = VerifyReport::default();
    let progress = ui::Progress::new("verifying", todo, None);
    let mut n = 0;
    while let Some(ev) = rx.recv().await {
        let (chunk, outcome) = match ev {
            Event::Done { chunk, outcome } => (chunk, outcome),
            Event::Retrying { chunk, error } => {
                progress.line(&format!("Retrying verification of chunk {chunk}: {error}"));
                continue;
            }
        };
        n += 1;
        progress.advance();
        match outcome {
            Outcome::Match { rows } => {
                report.matched += 1;
                progress.line(&format!(
                    "[{n}/{todo}] Verified chunk {chunk}: {} rows match",
                    ui::count(rows as u64)
                ));
            }
            Outcome::Mismatch(m) => {
                report.mismatched += 1;
                progress.line(&format!(
                    "[{n}/{todo}] MISMATCH in chunk {chunk}: {}",
                    m.message
                ));
            }
            Outcome::SourceGone => {
                report.skipped += 1;
                progress.line(&format!(
                    "[{n}/{todo}] Skipped chunk {chunk}: it no longer exists on the source"
                ));
            }
        }
    }
    let pool_result = pool
        .await
        .unwrap_or_else(|e| Err(Error::Internal(format!("the worker pool crashed: {e}"))));
    progress.finish();
    report.seconds = clock.elapsed().as_secs_f64();
    ui::line(&format!(
        "Verified {} task(s) in {}: {} match, {} mismatch, {} skipped.",
        report.matched + report.mismatched + report.skipped,
        ui::duration(clock.elapsed()),
        report.matched,
        report.mismatched,
        report.skipped
    ));
    pool_result?;
    if !shutdown.graceful.is_cancelled() {
        let src = cfg.source.connect().await?;
        let tgt = cfg.target.connect().await?;
        views_and_left_behind(&src, &tgt, &target_ext, &mut report).await?;
    }
    // The exit code reflects every mismatch on record, this run's or earlier.
    let report = finish(&cfg.target, report).await?;
    if shutdown.graceful.is_cancelled() {
        return Err(Error::Interrupted {
            abandoned: shutdown.hard.is_cancelled(),
        });
    }
    ui::line(
        "Every copied task matches. Next: `hyperfill refresh-caggs` to bring continuous \
         aggregates up to date, re-enable the target's background jobs (README, step 8), \
         then `hyperfill clean` to remove the queue.",
    );
    Ok(report)
}

/// After the chunks: each view `refresh-caggs` refreshed and that is still
/// to verify is compared per bucket over the refreshed range; a cagg whose
/// materialization was copied but not refreshed yet is named; then the
/// hypertables left behind and the chunks copied another way are listed.
async fn views_and_left_behind(
    src: &crate::db::Db,
    tgt: &crate::db::Db,
    ext: &catalog::Extension,
    report: &mut VerifyReport,
) -> Result<()> {
    use crate::verify::cagg::ViewOutcome;
    let refreshes = queue::cagg_refreshes(tgt).await?;
    for r in refreshes
        .iter()
        .filter(|r| r.verify_state.as_deref() == Some("pending"))
    {
        let Some(tt) = catalog::TimeType::from_pg(&r.time_type) else {
            continue;
        };
        let range = format!(
            "[{}, {})",
            r.start
                .map(|v| ui::internal_time(tt, v))
                .unwrap_or_else(|| "the beginning".into()),
            ui::internal_time(tt, r.end)
        );
        let outcome = verify::cagg::verify_view(src, tgt, ext, &r.view, tt, r.start, r.end).await?;
        let (state, tag, message) = match &outcome {
            ViewOutcome::Match { buckets } => {
                report.caggs_matched += 1;
                (
                    VerifyState::Match,
                    "Verified",
                    format!("{buckets} bucket(s) in the refreshed range {range} match"),
                )
            }
            ViewOutcome::Mismatch(m) => {
                report.caggs_mismatched += 1;
                (
                    VerifyState::Mismatch,
                    "MISMATCH in",
                    format!("in the refreshed range {range}: {m}"),
                )
            }
            ViewOutcome::Gone => (
                VerifyState::Skipped,
                "Skipped",
                "the continuous aggregate no longer exists on the source".into(),
            ),
        };
        queue::complete_cagg_verify(tgt, &r.view, state, &message).await?;
        ui::line(&format!("{tag} continuous aggregate {}: {message}", r.view));
    }
    for s in queue::staged_caggs(tgt).await? {
        if s.not_copied == 0 && !refreshes.iter().any(|r| r.view == s.view) {
            ui::line(&format!(
                "Continuous aggregate {}: its view above the copied rows is not verified: run \
                 refresh-caggs, then verify again.",
                s.view
            ));
        }
    }
    report.extras = crate::commands::left_behind::read(tgt).await?;
    crate::commands::left_behind::print(&report.extras);
    Ok(())
}
