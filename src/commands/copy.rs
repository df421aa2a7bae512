//! `copy`: run the queue with N workers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_postgres::error::SqlState;

use crate::catalog;
use crate::copy::{self, Context, CopyStats, Outcome};
use crate::db::{ConnInfo, Db};
use crate::error::{Error, Result, Side};
use crate::ident::{quote_literal, QualifiedName};
use crate::queue::{self, AfterFailure, CopyDone, Recorded, Task, TaskState};
use crate::ui;
use crate::worker::{self, Conns, Job, PoolConfig, Shutdown, Step, StepError};

pub struct CopyConfig {
    pub source: ConnInfo,
    pub target: ConnInfo,
    /// `None`: chosen from the source's round-trip time ([`auto_workers`]).
    pub parallelism: Option<usize>,
    pub max_attempts: u32,
    pub stall_timeout: std::time::Duration,
    pub analyze: bool,
    pub max_rate: Option<u64>,
    pub requeue_mismatched: bool,
}

/// What a copy run did. Task counts are tasks (a chunk split into parts has
/// one task per part); `rows` are logical rows (for compressed chunks, the
/// rows their batches hold), `batches` the compressed batches among them,
/// `bytes` the COPY data read from the source.
#[derive(Debug, Default, serde::Serialize)]
pub struct CopyReport {
    pub copied: u64,
    pub skipped: u64,
    pub failed: u64,
    pub rows: u64,
    pub batches: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Tasks still pending in the queue afterwards.
    pub remaining: u64,
    /// Workers started.
    pub workers: usize,
    /// Round-trip time to the source measured at start, in milliseconds.
    pub source_rtt_ms: f64,
    /// Source hypertables with chunks that no stage selected.
    pub left_behind: Vec<queue::LeftBehind>,
    /// Failed attempts that were tried again (each task's final failure is
    /// in `failed`, once).
    pub retries: u64,
    /// The same figures per hypertable, in name order.
    pub hypertables: Vec<HypertableCopy>,
}

/// One hypertable's share of a copy run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct HypertableCopy {
    pub hypertable: QualifiedName,
    /// The view, when the hypertable materializes a continuous aggregate.
    pub continuous_aggregate: Option<String>,
    pub copied: u64,
    pub skipped: u64,
    pub failed: u64,
    pub rows: u64,
    pub batches: u64,
    pub bytes: u64,
}

pub enum Event {
    Copied {
        task: i64,
        hypertable: QualifiedName,
        chunk: String,
        stats: CopyStats,
        elapsed: std::time::Duration,
        estimated: u64,
        /// Why it was copied another way than staged.
        fallback: Option<String>,
    },
    Skipped {
        task: i64,
        hypertable: QualifiedName,
        chunk: String,
        estimated: u64,
    },
    Failed {
        task: i64,
        hypertable: QualifiedName,
        chunk: String,
        error: String,
        /// The task is now `failed`: no more attempts in this run.
        final_attempt: bool,
        attempt: u32,
        estimated: u64,
    },
}

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

struct CopyJob {
    ctx: Context,
    max_attempts: u32,
    analyze: bool,
    /// Every task this process tried, for failure records.
    tried: Mutex<HashMap<i64, Tried>>,
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
        let begin = format!("{}; {BEGIN_COPY}", crate::db::BEGIN_TARGET);
        let (begun, noted, claimed, saved) = futures::join!(
            c.tgt.batch(&begin, "starting a transaction"),
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

impl Job for CopyJob {
    type Event = Event;

    fn step<'a>(&'a self, c: &'a Conns) -> BoxFuture<'a, Result<Step<Event>, StepError<Event>>> {
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

/// Workers on a near source, when `--parallelism` is not given.
const DEFAULT_WORKERS: usize = 8;
/// At most this many workers are chosen for a far source.
const MAX_AUTO_WORKERS: usize = 48;
/// A round trip shorter than this is a near source: the default workers.
/// (A busy machine answers a trivial statement on a LAN in 2 to 4 ms now and
/// then; that is not latency worth more sessions on the source.)
const NEAR_SOURCE: Duration = Duration::from_millis(5);
/// A start-up round trip this long suggests a far source: the connections
/// of more workers start opening at once (each takes five round trips or
/// so), while the round trip is measured again; the pool grows to what that
/// measure decides.
const FAR_SOURCE: Duration = Duration::from_millis(20);

/// Source and target. Connection slots left for clients that are not
/// superusers.
// language=PostgreSQL
const FREE_CONNECTIONS: &str = "\
SELECT current_setting('max_connections')::int
     - current_setting('superuser_reserved_connections')::int
     - coalesce(current_setting('reserved_connections', true)::int, 0)
     - (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'client backend')";

/// The number of workers when `--parallelism` is not given. Each task waits
/// for two round trips to the source, so on a far source a worker is mostly
/// waiting: from 5 ms of round-trip time, one more worker per 2 ms above the
/// default 8, up to 48, and never more than half the connection slots left on either
/// server (the rest is for others). (One per 3 ms was tried: on the
/// benchmark's two cores it saved 5 % on 180 larger chunks at 50 ms, where
/// each worker's session costs the servers CPU, and cost 12 % on 2,160 small
/// ones, where the latency is all; docs/benchmarks.md, WAN.)
pub fn auto_workers(rtt: Duration, free_slots: Option<i64>) -> usize {
    if rtt < NEAR_SOURCE {
        return DEFAULT_WORKERS;
    }
    let wanted = DEFAULT_WORKERS + (rtt.as_secs_f64() * 1000.0 / 2.0) as usize;
    let by_slots = free_slots
        .map(|f| ((f.max(0) / 2) as usize).max(DEFAULT_WORKERS))
        .unwrap_or(DEFAULT_WORKERS);
    wanted.min(MAX_AUTO_WORKERS).min(by_slots)
}

/// Round-trip time to the source: the shortest of `first` (the start-up's
/// catalog read) and two trivial statements on a connection that has already
/// run one (so no first-query start-up is counted, and one slow answer from
/// a busy machine does not count either). Each of the two goes together
/// with the same trivial statement to the near target: they run while the
/// first workers copy, and on a busy machine (two cores, eight workers and
/// both servers) any answer can wait 5 to 15 ms for a CPU. When the source
/// took less than [`NEAR_SOURCE`] more than the target, it is near, and that
/// difference is its round trip; otherwise the source's own time is (the
/// difference would count the target's wait against a far source twice).
async fn round_trip(src: &Db, near: &Db, first: Duration) -> Result<Duration> {
    async fn timed(db: &Db, what: &str) -> Result<Duration> {
        let t0 = Instant::now();
        db.batch("", what).await?;
        Ok(t0.elapsed())
    }
    let (mut best, mut beyond_near) = (first, first);
    for _ in 0..2 {
        let (far, here) = tokio::join!(
            timed(src, "measuring the round trip to the source"),
            timed(near, "measuring the round trip to the target"),
        );
        let far = far?;
        best = best.min(far);
        beyond_near = beyond_near.min(far.saturating_sub(here?));
    }
    Ok(if beyond_near < NEAR_SOURCE {
        beyond_near
    } else {
        best
    })
}

async fn free_slots(db: &Db) -> Option<i64> {
    db.query_one(FREE_CONNECTIONS, &[], "counting free connection slots")
        .await
        .ok()
        .map(|r| r.get::<_, i32>(0) as i64)
}

/// `197,504 rows`, or `197,504 rows (in 214 compressed batches)`.
pub fn rows_text(stats: &CopyStats) -> String {
    if stats.batches > 0 {
        format!(
            "{} rows (in {} compressed batches)",
            ui::count(stats.rows),
            ui::count(stats.batches)
        )
    } else {
        format!("{} rows", ui::count(stats.rows))
    }
}

/// `12 task(s) for 10 chunk(s) (1 split into parts)`; `3 chunk(s)` when
/// every task is a whole chunk.
pub fn tasks_text(tasks: u64, chunks: u64, split: u64) -> String {
    if split == 0 && tasks == chunks {
        format!("{} chunk(s)", ui::count(tasks))
    } else if split == 0 {
        format!(
            "{} task(s) for {} chunk(s)",
            ui::count(tasks),
            ui::count(chunks)
        )
    } else {
        format!(
            "{} task(s) for {} chunk(s) ({} split into parts)",
            ui::count(tasks),
            ui::count(chunks),
            ui::count(split)
        )
    }
}

/// Per hypertable, what is known of the bytes to move: the source's table
/// sizes of the tasks not finished yet, and of the finished ones with the
/// bytes they moved (to project the rest, as `status` does).
#[derive(Default)]
struct Tally {
    estimated_left: i64,
    estimated_done: i64,
    bytes_done: i64,
}

struct Projection {
    tallies: HashMap<QualifiedName, Tally>,
    /// Bytes moved by the tasks this run finished.
    finished: u64,
}

impl Projection {
    fn finish(&mut self, hypertable: &QualifiedName, estimated: u64, moved: Option<u64>) {
        let t = self.tallies.entry(hypertable.clone()).or_default();
        t.estimated_left = (t.estimated_left - estimated as i64).max(0);
        if let Some(b) = moved {
            t.estimated_done += estimated as i64;
            t.bytes_done += b as i64;
            self.finished += b;
        }
    }

    /// The bytes this run moves in all: what it moved for finished tasks
    /// plus the projection of the rest.
    fn total(&self) -> u64 {
        self.finished
            + self
                .tallies
                .values()
                .map(|t| {
                    queue::projected_bytes_left(t.estimated_left, t.estimated_done, t.bytes_done)
                        .max(0) as u64
                })
                .sum::<u64>()
    }
}

pub async fn run(cfg: CopyConfig, shutdown: Shutdown) -> Result<CopyReport> {
    // Workers' connections notice a stuck server (db/watch.rs).
    let pool_source = cfg.source.watched(cfg.stall_timeout);
    let pool_target = cfg.target.watched(cfg.stall_timeout);
    // Both sides at once: the source may be far away. The near target tells
    // first how much is queued; the first workers' connections are opened
    // then, while the source is still being read (worker::Warm).
    let warm = Arc::new(worker::Warm::new(&pool_source, &pool_target));
    let ((tgt, first), (src, source_ext, rtt, src_free)) = tokio::try_join!(
        async {
            let tgt = cfg.target.connect().await?;
            queue::require(&tgt).await?;
            // A queue staged by an older hyperfill gets the newer columns.
            queue::migrate(&tgt).await?;
            let c = queue::counts(&tgt).await?;
            let again = if cfg.requeue_mismatched {
                c.verified_mismatch
            } else {
                0
            };
            let first = cfg
                .parallelism
                .unwrap_or(DEFAULT_WORKERS)
                .min((c.pending + c.failed + again) as usize);
            warm.open(first);
            Ok::<_, Error>((tgt, first))
        },
        async {
            // No session settings: the start-up reads need none, and a far
            // source saves their round trip.
            let src = cfg.source.connect_raw().await?;
            // One round trip for both (pipelined); it is also the first
            // sample of the round-trip time.
            let t0 = Instant::now();
            let (ext, free) = tokio::join!(catalog::extension(&src), async {
                match cfg.parallelism {
                    None => free_slots(&src).await,
                    Some(_) => None,
                }
            });
            Ok::<_, Error>((src, ext?, t0.elapsed(), free))
        },
    )?;
    let target = catalog::extension(&tgt).await?;
    let invalidation = crate::copy::invalidation::strategy(&tgt, &target.features).await;
    let moved = Arc::new(AtomicU64::new(0));
    let ctx = Context {
        source: source_ext,
        target,
        invalidation,
        rate: cfg
            .max_rate
            .map(|r| Arc::new(crate::copy::RateLimiter::new(r))),
        moved: Some(moved.clone()),
    };
    catalog::ensure_compatible(&ctx.source, &ctx.target)?;
    if cfg.requeue_mismatched {
        let n = queue::requeue_mismatched(&tgt).await?;
        ui::line(&format!(
            "Re-queued {n} task(s) that verify found different."
        ));
    }
    // Tasks that failed in earlier runs get a fresh set of attempts.
    queue::rearm_failed(&tgt, cfg.max_attempts).await?;
    let before = queue::counts(&tgt).await?;
    let todo = before.pending + before.failed;
    if todo == 0 {
        ui::line(&format!(
            "Nothing to copy: all {} staged task(s) are done or skipped. Use `stage` to add more.",
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
    let tgt_free = if cfg.parallelism.is_none() {
        free_slots(&tgt).await
    } else {
        None
    };
    let (chunks, split) = queue::chunks_to_copy(&tgt).await?;
    let queued = queue::status(&tgt, 0).await?.hypertables;
    let caggs: HashMap<QualifiedName, String> = queued
        .iter()
        .filter_map(|h| Some((h.hypertable.clone(), h.continuous_aggregate.clone()?)))
        .collect();
    let mut projection = Projection {
        tallies: queued
            .iter()
            .map(|h| {
                (
                    h.hypertable.clone(),
                    Tally {
                        estimated_left: h.source_bytes_left,
                        estimated_done: h.source_bytes_done,
                        bytes_done: h.bytes_copied,
                    },
                )
            })
            .collect(),
        finished: 0,
    };
    // Kept until the round trip is measured: the near side's answer time.
    let near = tgt;

    let job = Arc::new(CopyJob {
        ctx,
        max_attempts: cfg.max_attempts,
        analyze: cfg.analyze,
        tried: Mutex::new(HashMap::new()),
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The first workers start at once (with the connections opened ahead).
    // Without --parallelism, a far source (by the start-up's round trip)
    // gets more connections opening now; two more round trips measure the
    // round trip, and the pool grows to the number that measure gives.
    let first = first.min(todo as usize).max(1);
    let free = match (src_free, tgt_free) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let early = match cfg.parallelism {
        // The first statement of a session also pays for the server's cold
        // caches (10 to 20 ms on a busy machine): not counted in the guess.
        None if rtt >= FAR_SOURCE => auto_workers(rtt - FAR_SOURCE, free)
            .min(todo as usize)
            .max(first),
        _ => first,
    };
    let opened = warm.opened();
    warm.open(early.saturating_sub(opened));
    let (grow, more) = tokio::sync::mpsc::unbounded_channel();
    let pool_cfg = PoolConfig {
        workers: first,
        source: pool_source,
        target: pool_target,
        max_attempts: cfg.max_attempts,
        warm: warm.clone(),
        more: cfg.parallelism.is_none().then_some(more),
    };
    let clock = Instant::now();
    let pool = tokio::spawn(worker::run(pool_cfg, job, shutdown.clone(), tx));

    let rtt = match cfg.parallelism {
        // Only reported: no more round trips for it.
        Some(_) => rtt,
        // Not worth failing for: the first sample stands in (the source's
        // connection is not watched for stalls, hence the limit).
        None => tokio::time::timeout(Duration::from_secs(10), round_trip(&src, &near, rtt))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or(rtt),
    };
    drop(src);
    drop(near);
    let rtt_ms = rtt.as_secs_f64() * 1000.0;
    tracing::info!(rtt_ms, "round trip to the source");
    let (chosen, why) = match cfg.parallelism {
        Some(n) => (n, String::new()),
        None => {
            let n = auto_workers(rtt, free);
            let why = if n.min(todo as usize) > DEFAULT_WORKERS {
                format!(
                    " (the source answers in {rtt_ms:.0} ms, so more than the default \
                     {DEFAULT_WORKERS} keep the link busy; --parallelism sets the number)"
                )
            } else {
                String::new()
            };
            (n, why)
        }
    };
    // The measure decides, not the early guess: connections opened for a
    // guess that was too high stay unused until the pool ends.
    let workers = chosen.min(todo as usize).max(first);
    if workers > early {
        warm.open(workers - early);
    }
    let _ = grow.send(workers);
    drop(grow);
    // Printed before any task's line: the workers' events wait in `rx`.
    ui::line(&format!(
        "Copying {} with {} worker(s){why}: ~{} to move (projected from the source's table sizes)",
        tasks_text(todo, chunks, split),
        workers,
        ui::bytes(projection.total()),
    ));

    let mut report = CopyReport {
        workers,
        source_rtt_ms: rtt_ms,
        ..CopyReport::default()
    };
    let mut per_ht: BTreeMap<QualifiedName, HypertableCopy> = BTreeMap::new();
    let progress = ui::Progress::new("copying", todo, Some(projection.total()));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // Each task counts once towards the total, however many attempts it
    // took; the total grows if tasks are staged during the run.
    let mut finished = std::collections::HashSet::new();
    let mut total = todo;
    let mut count = |task: i64, progress: &ui::Progress| -> (u64, u64) {
        if finished.insert(task) {
            progress.advance();
        }
        let n = finished.len() as u64;
        if n > total {
            total = n;
            progress.set_total(total);
        }
        (n, total)
    };
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
            _ = tick.tick() => {
                progress.bytes(moved.load(Ordering::Relaxed), projection.total());
                continue;
            }
        };
        match ev {
            Event::Copied {
                task,
                hypertable,
                chunk,
                stats,
                elapsed,
                estimated,
                fallback,
            } => {
                report.copied += 1;
                report.rows += stats.rows;
                report.batches += stats.batches;
                report.bytes += stats.bytes;
                let h = share(&mut per_ht, &hypertable);
                h.copied += 1;
                h.rows += stats.rows;
                h.batches += stats.batches;
                h.bytes += stats.bytes;
                projection.finish(&hypertable, estimated, Some(stats.bytes));
                let (n, total) = count(task, &progress);
                progress.line(&format!(
                    "[{n}/{total}] Copied chunk {chunk}: {}, {} in {}{}",
                    rows_text(&stats),
                    ui::bytes(stats.bytes),
                    ui::duration(elapsed),
                    ui::rate(stats.bytes, elapsed)
                ));
                if let Some(why) = fallback {
                    progress.line(&format!("  note: {why}"));
                }
            }
            Event::Skipped {
                task,
                hypertable,
                chunk,
                estimated,
            } => {
                report.skipped += 1;
                share(&mut per_ht, &hypertable).skipped += 1;
                projection.finish(&hypertable, estimated, None);
                let (n, total) = count(task, &progress);
                progress.line(&format!(
                    "[{n}/{total}] Skipped chunk {chunk}: it no longer exists on the source"
                ));
            }
            Event::Failed {
                task,
                hypertable,
                chunk,
                error,
                final_attempt,
                attempt,
                estimated,
            } => {
                if final_attempt {
                    report.failed += 1;
                    share(&mut per_ht, &hypertable).failed += 1;
                    projection.finish(&hypertable, estimated, None);
                    let (n, total) = count(task, &progress);
                    progress.line(&format!(
                        "[{n}/{total}] FAILED chunk {chunk} (attempt {attempt}): {error}"
                    ));
                } else if attempt > 0 {
                    report.retries += 1;
                    progress.line(&format!(
                        "Retrying chunk {chunk} after attempt {attempt} failed: {error}"
                    ));
                } else {
                    report.retries += 1;
                    progress.line(&format!("Retrying chunk {chunk}: {error}"));
                }
            }
        }
        progress.bytes(moved.load(Ordering::Relaxed), projection.total());
    }
    progress.finish();
    let pool_result = pool
        .await
        .unwrap_or_else(|e| Err(Error::Internal(format!("the worker pool crashed: {e}"))));
    report.seconds = clock.elapsed().as_secs_f64();
    report.hypertables = per_ht
        .into_values()
        .map(|mut h| {
            h.continuous_aggregate = caggs.get(&h.hypertable).cloned();
            h
        })
        .collect();
    // Abandoned: the second signal dropped chunks in flight (not merely
    // arrived after they had finished).
    let abandoned = matches!(pool_result, Err(Error::Interrupted { abandoned: true }));
    let stopped = shutdown.graceful.is_cancelled();

    // The queue is the truth (other copy processes may share it). After a
    // signal, do not wait long for it.
    let read_after = async {
        let tgt = cfg.target.connect().await?;
        Ok::<_, Error>((queue::counts(&tgt).await?, queue::failed_tasks(&tgt).await?))
    };
    let after = if stopped {
        tokio::time::timeout(std::time::Duration::from_secs(2), read_after)
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        read_after.await.ok()
    };
    if let Some((c, _)) = &after {
        report.remaining = c.pending;
        if c.pending > 0 && !stopped {
            // Nothing was left for this run to claim: the rest is locked by
            // other copy processes, or by sessions the server has not yet
            // seen close (a killed copy's, for a moment).
            ui::line(&format!(
                "{} task(s) are still being copied by another copy process (see `hyperfill status`); \
                 run copy again if none is running.",
                c.pending
            ));
        }
    }
    if abandoned {
        ui::line("Abandoned the in-flight chunk(s) at the second ctrl-c: their transactions rolled back.");
    } else if stopped {
        ui::line(&format!(
            "Stopped after finishing the in-flight chunk(s){}.",
            match &after {
                Some((c, _)) => format!("; {} task(s) left for the next run", c.pending),
                None => String::new(),
            }
        ));
    }
    print_summary(&report, clock.elapsed());
    match pool_result {
        Err(Error::Interrupted { .. }) => return Err(Error::Interrupted { abandoned }),
        r => r?,
    }
    if stopped && (report.remaining > 0 || after.is_none()) {
        return Err(Error::Interrupted { abandoned });
    }
    if let Some((c, failed)) = after {
        if c.failed > 0 {
            for (chunk, err) in failed.iter().take(20) {
                ui::line(&format!("  failed: {chunk}: {err}"));
            }
            return Err(Error::TasksFailed {
                failed: c.failed,
                report: serde_json::to_value(&report).unwrap_or_default(),
            });
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

/// A hypertable's share of the run, created on first use.
fn share<'a>(
    per_ht: &'a mut BTreeMap<QualifiedName, HypertableCopy>,
    ht: &QualifiedName,
) -> &'a mut HypertableCopy {
    per_ht.entry(ht.clone()).or_insert_with(|| HypertableCopy {
        hypertable: ht.clone(),
        ..Default::default()
    })
}

/// The closing lines: totals, then one line per hypertable when there are
/// several.
fn print_summary(report: &CopyReport, elapsed: Duration) {
    let totals = CopyStats {
        rows: report.rows,
        batches: report.batches,
        bytes: report.bytes,
    };
    ui::line(&format!(
        "Copied {}, {}, in {} task(s) in {}{}; {} skipped, {} failed.",
        rows_text(&totals),
        ui::bytes(report.bytes),
        ui::count(report.copied),
        ui::duration(elapsed),
        ui::rate(report.bytes, elapsed),
        report.skipped,
        report.failed,
    ));
    if report.hypertables.len() > 1 {
        for h in &report.hypertables {
            let stats = CopyStats {
                rows: h.rows,
                batches: h.batches,
                bytes: h.bytes,
            };
            let name = match &h.continuous_aggregate {
                Some(v) => format!("{v} (continuous aggregate)"),
                None => h.hypertable.to_string(),
            };
            let mut line = format!(
                "  {name}: {}, {} in {} task(s)",
                rows_text(&stats),
                ui::bytes(h.bytes),
                ui::count(h.copied)
            );
            if h.skipped > 0 || h.failed > 0 {
                line.push_str(&format!("; {} skipped, {} failed", h.skipped, h.failed));
            }
            ui::line(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_and_chunks_are_told_apart() {
        assert_eq!(tasks_text(10, 10, 0), "10 chunk(s)");
        assert_eq!(
            tasks_text(198, 150, 12),
            "198 task(s) for 150 chunk(s) (12 split into parts)"
        );
        assert_eq!(tasks_text(3, 2, 0), "3 task(s) for 2 chunk(s)");
        let stats = CopyStats {
            rows: 197_504,
            batches: 214,
            bytes: 1,
        };
        assert_eq!(
            rows_text(&stats),
            "197,504 rows (in 214 compressed batches)"
        );
    }

    #[test]
    fn the_projected_total_follows_what_tasks_move() {
        let ht = QualifiedName::new("public", "m");
        let mut p = Projection {
            tallies: HashMap::from([(
                ht.clone(),
                Tally {
                    estimated_left: 1000,
                    estimated_done: 0,
                    bytes_done: 0,
                },
            )]),
            finished: 0,
        };
        assert_eq!(p.total(), 1000);
        // A task estimated at 500 moved 250: the other 500 will move ~250.
        p.finish(&ht, 500, Some(250));
        assert_eq!(p.total(), 500);
        // A task that failed for good moves nothing more.
        p.finish(&ht, 500, None);
        assert_eq!(p.total(), 250);
    }

    #[test]
    fn auto_workers_grow_with_the_round_trip_within_the_slots() {
        let ms = Duration::from_millis;
        assert_eq!(auto_workers(Duration::from_micros(200), None), 8);
        assert_eq!(auto_workers(ms(1), Some(500)), 8);
        // a busy LAN's few milliseconds are not a far source
        assert_eq!(auto_workers(ms(4), Some(500)), 8);
        assert_eq!(auto_workers(ms(5), Some(500)), 10);
        assert_eq!(auto_workers(ms(10), Some(500)), 13);
        assert_eq!(auto_workers(ms(25), Some(500)), 20);
        assert_eq!(auto_workers(ms(50), Some(500)), 33);
        assert_eq!(auto_workers(ms(400), Some(500)), 48);
        // half the free slots, but never below the default
        assert_eq!(auto_workers(ms(100), Some(40)), 20);
        assert_eq!(auto_workers(ms(100), Some(500)), 48);
        assert_eq!(auto_workers(ms(100), Some(6)), 8);
        // unknown slots: no more than the default
        assert_eq!(auto_workers(ms(100), None), 8);
    }
}
