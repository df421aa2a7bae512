//! `copy`: run the queue with N workers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog;
use crate::copy::{Context, CopyStats};
use crate::db::ConnInfo;
use crate::error::{Error, Result};
use crate::ident::QualifiedName;
use crate::queue;
use crate::ui;
use crate::worker::{self, PoolConfig, Shutdown};

mod job;
mod parallelism;

use job::CopyJob;
pub use job::{begin_source, source_begin};
pub use parallelism::auto_workers;
use parallelism::{free_slots, round_trip, DEFAULT_WORKERS, FAR_SOURCE};

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

    let job = Arc::new(CopyJob::new(ctx, cfg.max_attempts, cfg.analyze));
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
}
