//! The streaming COPY pipe: source `COPY ... TO STDOUT` into target
//! `COPY ... FROM STDIN`, with bounded memory.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio_postgres::Statement;

use crate::db::Db;
use crate::error::Result;

/// Rows are re-buffered into messages of about this size: fewer, larger
/// CopyData messages to the target, and at most this much held per worker.
const BUFFER: usize = 512 * 1024;

/// A cap on bytes per second shared by every worker (`copy --max-rate`).
/// Each buffer reserves the next slot of time its size takes at that rate;
/// the worker waits for its slot before sending, and meanwhile does not read,
/// so the source server is held back by its own socket buffers. No burst
/// credit builds up while workers are idle.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: f64,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimiter {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    pub async fn acquire(&self, bytes: usize) {
        let start = {
            let mut next = self.next.lock().await;
            let start = (*next).max(tokio::time::Instant::now());
            *next = start + std::time::Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PipeStats {
    pub rows: u64,
    pub bytes: u64,
}

/// Below [`BUFFER`], what has arrived is still sent once it reaches this
/// much and the source has nothing more ready: the target starts inserting
/// while the source is still sending (a far source sends in bursts).
const EARLY_FLUSH: usize = 64 * 1024;

/// How data may flow through one pipe.
#[derive(Debug, Clone, Copy)]
pub struct Flow<'a> {
    /// `--max-rate`, shared by all workers.
    pub rate: Option<&'a RateLimiter>,
    /// Bytes passed on to the target, all workers together.
    pub moved: Option<&'a AtomicU64>,
}

/// Add bytes passed on to the target to the shared counter, if any.
fn count(moved: Option<&AtomicU64>, n: u64) {
    if let Some(m) = moved {
        m.fetch_add(n, Ordering::Relaxed);
    }
}

/// Run `copy_out` on the source (or its statement prepared ahead, which must
/// be `copy_out`'s) and feed it to `copy_in` on the target. Both statements
/// must use the same format and column list. Both COPYs start in the same
/// round trip. Errors name the side that failed and `what`. `flow.moved`,
/// when given, is increased by the bytes passed on to the target as they go
/// (after `flow.rate` let them through, so a progress figure read from it
/// shows the rate `--max-rate` allows).
///
/// Every wait on either side (the start of each COPY, the next data from the
/// source, a send to the target, the end) goes through [`Db::guard`]: on a
/// worker's connection a server that stops answering, or a network that
/// stops delivering while TCP still acknowledges (a frozen proxy), fails the
/// attempt with `Error::Stalled` (transient) instead of hanging. Waiting for
/// `--max-rate` does not count.
#[allow(clippy::too_many_arguments)]
pub async fn pipe(
    src: &Db,
    tgt: &Db,
    copy_out: &str,
    prepared: Option<&Statement>,
    copy_in: &str,
    what: &str,
    flow: Flow<'_>,
) -> Result<PipeStats> {
    let Flow { rate, moved } = flow;
    let out = async {
        match prepared {
            Some(st) => src.client.copy_out(st).await,
            None => src.client.copy_out(copy_out).await,
        }
    };
    let (starting_in, starting_out) = (
        format!("starting COPY into {what}"),
        format!("starting COPY out of {what}"),
    );
    let (sink, stream) = futures::join!(
        tgt.guard(&starting_in, tgt.client.copy_in::<_, Bytes>(copy_in)),
        src.guard(&starting_out, out),
    );
    let (sink, stream) = (sink?, stream?);
    futures::pin_mut!(sink);
    futures::pin_mut!(stream);

    let reading = format!("reading COPY data of {what}");
    let writing = format!("writing COPY data into {what}");
    let mut buf = BytesMut::with_capacity(BUFFER);
    let mut bytes = 0u64;
    loop {
        let next = match stream.next().now_or_never() {
            Some(next) => next
                .transpose()
                .map_err(|e| src.error(reading.as_str(), e))?,
            None => {
                if buf.len() >= EARLY_FLUSH {
                    if let Some(r) = rate {
                        r.acquire(buf.len()).await;
                    }
                    let n = buf.len() as u64;
                    tgt.guard(&writing, sink.send(buf.split().freeze())).await?;
                    count(moved, n);
                }
                src.guard(&reading, async { stream.next().await.transpose() })
                    .await?
            }
        };
        let Some(data) = next else { break };
        bytes += data.len() as u64;
        buf.extend_from_slice(&data);
        if buf.len() >= BUFFER {
            if let Some(r) = rate {
                r.acquire(buf.len()).await;
            }
            let n = buf.len() as u64;
            tgt.guard(&writing, sink.send(buf.split().freeze())).await?;
            count(moved, n);
        }
    }
    if !buf.is_empty() {
        if let Some(r) = rate {
            r.acquire(buf.len()).await;
        }
        let n = buf.len() as u64;
        tgt.guard(&writing, sink.send(buf.freeze())).await?;
        count(moved, n);
    }
    let rows = tgt
        .guard(&format!("finishing COPY into {what}"), sink.finish())
        .await?;
    Ok(PipeStats { rows, bytes })
}
