//! N workers, each with one source and one target connection, running a
//! [`Job`] until it reports no more work. Knows nothing about chunks.
//!
//! Failure handling: after any error the worker drops both connections (so no
//! half-finished COPY or transaction survives). A job records a failed task
//! itself while it still holds the task (see [`StepError::recorded`]); when
//! it could not, the worker reconnects and asks the job to record it.
//! Transient failures are followed by a backoff; connecting is retried.
//!
//! Cancellation: the `graceful` token stops workers between tasks and while
//! they connect or back off; the `hard` token drops the in-flight task's
//! futures at once, which closes its connections so that the servers roll
//! its transactions back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::db::{ConnInfo, Db};
use crate::error::{Error, Result};

/// The two cancellation levels, and how many workers are in the middle of
/// a task (what the first level waits for).
#[derive(Clone, Default)]
pub struct Shutdown {
    pub graceful: CancellationToken,
    pub hard: CancellationToken,
    in_flight: Arc<AtomicUsize>,
}

impl Shutdown {
    /// Workers now claiming or running a task.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// Counts a worker as in flight while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A worker's connections.
pub struct Conns {
    pub src: Db,
    pub tgt: Db,
}

/// What one step of a job did.
pub enum Step<E> {
    /// Nothing left to do.
    Idle,
    /// Did one unit of work; the event is reported.
    Did(E),
}

/// A failed step: the error, and the task it concerns (if one was claimed).
pub struct StepError<E> {
    pub task: Option<i64>,
    pub error: Error,
    /// The job already recorded the failure (while it still held the task)
    /// and this is the event to report; `None`: the worker asks
    /// [`Job::failed`] on fresh connections.
    pub recorded: Option<E>,
}

impl<E> From<Error> for StepError<E> {
    fn from(error: Error) -> Self {
        StepError {
            task: None,
            error,
            recorded: None,
        }
    }
}

pub trait Job: Send + Sync + 'static {
    type Event: Send + 'static;

    /// Claim and run one unit of work.
    #[allow(clippy::type_complexity)]
    fn step<'a>(
        &'a self,
        c: &'a Conns,
    ) -> BoxFuture<'a, Result<Step<Self::Event>, StepError<Self::Event>>>;

    /// Record a failed step on fresh connections; returns the event to report.
    fn failed<'a>(
        &'a self,
        c: &'a Conns,
        task: i64,
        error: &'a Error,
    ) -> BoxFuture<'a, Result<Self::Event>>;
}

/// Implements [`Job`] for `$job` by boxing its inherent
/// `async fn step_inner(&self, &Conns)` and
/// `async fn failed_inner(&self, &Conns, i64, &Error)`.
macro_rules! job_from_inherent {
    ($job:ty, $event:ty) => {
        impl $crate::worker::Job for $job {
            type Event = $event;

            fn step<'a>(
                &'a self,
                c: &'a $crate::worker::Conns,
            ) -> futures::future::BoxFuture<
                'a,
                std::result::Result<
                    $crate::worker::Step<$event>,
                    $crate::worker::StepError<$event>,
                >,
            > {
                futures::FutureExt::boxed(self.step_inner(c))
            }

            fn failed<'a>(
                &'a self,
                c: &'a $crate::worker::Conns,
                task: i64,
                error: &'a $crate::error::Error,
            ) -> futures::future::BoxFuture<'a, $crate::error::Result<$event>> {
                futures::FutureExt::boxed(self.failed_inner(c, task, error))
            }
        }
    };
}
pub(crate) use job_from_inherent;

/// Pool settings.
pub struct PoolConfig {
    pub workers: usize,
    pub source: ConnInfo,
    pub target: ConnInfo,
    /// Consecutive failures without progress after which a worker gives up.
    pub max_attempts: u32,
    /// Connections opened ahead (shared with the caller, who may open more).
    pub warm: Arc<Warm>,
    /// The numbers of workers to grow to, as they become known (workers
    /// are added, never taken away; a pool whose workers all ended stays
    /// ended).
    pub more: Option<mpsc::UnboundedReceiver<usize>>,
}

/// Worker connections opened ahead, while the caller still reads what the
/// pool needs (on a far source, the start-up of a connection is five or
/// more round trips: TCP, TLS, authentication, session settings). A worker
/// takes the first one ready for a connection it needs; one that failed to
/// open is dropped and the worker connects as usual (with its retries and
/// messages). Those never taken are closed when the last holder drops this.
pub struct Warm {
    source: ConnInfo,
    target: ConnInfo,
    tx: mpsc::UnboundedSender<Result<Conns>>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Result<Conns>>>,
    /// Opened or opening, not yet taken.
    outstanding: AtomicUsize,
    /// Ever asked to open.
    opened: AtomicUsize,
}

impl Warm {
    pub fn new(source: &ConnInfo, target: &ConnInfo) -> Warm {
        let (tx, rx) = mpsc::unbounded_channel();
        Warm {
            source: source.clone(),
            target: target.clone(),
            tx,
            rx: tokio::sync::Mutex::new(rx),
            outstanding: AtomicUsize::new(0),
            opened: AtomicUsize::new(0),
        }
    }

    /// Start opening `n` more pairs of connections (source and target at once).
    pub fn open(&self, n: usize) {
        self.outstanding.fetch_add(n, Ordering::SeqCst);
        self.opened.fetch_add(n, Ordering::SeqCst);
        for _ in 0..n {
            let (source, target, tx) = (self.source.clone(), self.target.clone(), self.tx.clone());
            tokio::spawn(async move {
                let r = tokio::try_join!(source.connect(), target.connect())
                    .map(|(src, tgt)| Conns { src, tgt });
                let _ = tx.send(r);
            });
        }
    }

    /// How many pairs were opened or are opening, taken or not.
    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    /// The next opened pair, if any is left and it opened.
    async fn take(&self) -> Option<Conns> {
        let mut rx = self.rx.lock().await;
        while self.outstanding.load(Ordering::SeqCst) > 0 {
            // This holds a sender, so a result comes for each one opening.
            let r = rx.recv().await?;
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
            match r {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "a connection opened ahead failed; connecting again")
                }
            }
        }
        None
    }
}

/// Run the pool until every worker is idle, cancelled or failed. Events are
/// sent to `events` as they happen. Returns the first fatal error, if any.
pub async fn run<J: Job>(
    mut cfg: PoolConfig,
    job: Arc<J>,
    shutdown: Shutdown,
    events: mpsc::UnboundedSender<J::Event>,
) -> Result<()> {
    let mut more = cfg.more.take();
    let cfg = Arc::new(cfg);
    let mut set = tokio::task::JoinSet::new();
    let spawn = |set: &mut tokio::task::JoinSet<Result<()>>, i: usize| {
        let (cfg, job, shutdown, events) =
            (cfg.clone(), job.clone(), shutdown.clone(), events.clone());
        set.spawn(async move {
            let hard = shutdown.hard.clone();
            tokio::select! {
                biased;
                _ = hard.cancelled() => Err(Error::Interrupted { abandoned: true }),
                r = worker(i, &cfg, &*job, &shutdown, &events) => r,
            }
        });
    };
    for i in 0..cfg.workers {
        spawn(&mut set, i);
    }
    let mut started = cfg.workers;
    let mut first_error = None;
    loop {
        let joined = tokio::select! {
            n = async {
                match more.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            }, if more.is_some() => {
                match n {
                    Some(n) => {
                        if !shutdown.graceful.is_cancelled() && !set.is_empty() {
                            for i in started..n {
                                spawn(&mut set, i);
                            }
                            started = started.max(n);
                        }
                    }
                    None => more = None,
                }
                continue;
            }
            joined = set.join_next() => joined,
        };
        let Some(joined) = joined else { break };
        let result =
            joined.unwrap_or_else(|e| Err(Error::Internal(format!("a worker crashed: {e}"))));
        if let Err(e) = result {
            if first_error.is_none() {
                first_error = Some(e);
            }
        }
    }
    drop(events);
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn backoff(attempt: u32) -> Duration {
    let ms = 250u64.saturating_mul(1 << attempt.min(7));
    Duration::from_millis(ms.min(20_000))
}

/// Connect both sides, retrying transient failures with backoff. The first
/// ctrl-c ends the wait, whatever it is waiting on.
async fn connect(cfg: &PoolConfig, shutdown: &Shutdown) -> Result<Conns> {
    let warm = tokio::select! {
        c = cfg.warm.take() => c,
        _ = shutdown.graceful.cancelled() => return Err(Error::Interrupted { abandoned: false }),
    };
    if let Some(c) = warm {
        return Ok(c);
    }
    let mut attempt = 0;
    loop {
        // Both at once: the source may be far away.
        let r = async {
            tokio::try_join!(cfg.source.connect(), cfg.target.connect())
                .map(|(src, tgt)| Conns { src, tgt })
        };
        let r = tokio::select! {
            r = r => r,
            _ = shutdown.graceful.cancelled() => return Err(Error::Interrupted { abandoned: false }),
        };
        match r {
            Ok(c) => return Ok(c),
            // A full server does not empty itself in seconds: the pool
            // runs with the workers that got in (see `worker`).
            Err(e) if attempt + 1 < cfg.max_attempts && retryable(&e) && !server_full(&e) => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "cannot connect; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                    _ = shutdown.graceful.cancelled() => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn server_full(e: &Error) -> bool {
    matches!(e, Error::Connect { source, .. }
        if source.code() == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS))
}

/// Whether an error is worth another try on fresh connections
/// ([`crate::error::Kind::Transient`]).
pub fn retryable(e: &Error) -> bool {
    e.kind() == crate::error::Kind::Transient
}

async fn worker<J: Job>(
    id: usize,
    cfg: &PoolConfig,
    job: &J,
    shutdown: &Shutdown,
    events: &mpsc::UnboundedSender<J::Event>,
) -> Result<()> {
    let first = match connect(cfg, shutdown).await {
        Ok(c) => c,
        // The server is full: run with the workers that did get in.
        Err(Error::Connect { side, source, .. })
            if id > 0
                && source.code()
                    == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS) =>
        {
            tracing::warn!(worker = id, %side, "the {side} server has no connection slot left; continuing with fewer workers");
            return Ok(());
        }
        Err(Error::Interrupted { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut conns = Some(first);
    let mut consecutive_failures = 0u32;
    loop {
        if shutdown.graceful.is_cancelled() {
            return Ok(());
        }
        let c = match conns.take() {
            Some(c) => c,
            None => match connect(cfg, shutdown).await {
                Err(Error::Interrupted { .. }) => return Ok(()),
                r => r?,
            },
        };
        let busy = InFlight::new(&shutdown.in_flight);
        let result = job.step(&c).await;
        match result {
            Ok(Step::Idle) => return Ok(()),
            Ok(Step::Did(ev)) => {
                consecutive_failures = 0;
                let _ = events.send(ev);
                conns = Some(c);
            }
            Err(StepError {
                task,
                error,
                recorded,
            }) => {
                tracing::debug!(worker = id, error = %error, "step failed");
                // Drop both connections: no half-done COPY or transaction survives.
                drop(c);
                consecutive_failures += 1;
                let transient = retryable(&error);
                match (task, recorded) {
                    (_, Some(ev)) => {
                        let _ = events.send(ev);
                    }
                    (Some(task), None) => {
                        let fresh = match connect(cfg, shutdown).await {
                            Err(Error::Interrupted { .. }) => return Ok(()),
                            r => r?,
                        };
                        let ev = job.failed(&fresh, task, &error).await?;
                        let _ = events.send(ev);
                        conns = Some(fresh);
                    }
                    (None, None) if transient && consecutive_failures < cfg.max_attempts => {}
                    (None, None) => return Err(error),
                }
                drop(busy);
                if transient {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(consecutive_failures)) => {}
                        _ = shutdown.graceful.cancelled() => return Ok(()),
                    }
                }
            }
        }
    }
}
