//! The streaming COPY pipe: source `COPY ... TO STDOUT` into target
//! `COPY ... FROM STDIN`, with bounded memory.

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};

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

/// Run `copy_out` on the source and feed it to `copy_in` on the target. Both
/// statements must use the same format and column list. Errors name the side
/// that failed and `what`.
pub async fn pipe(
    src: &Db,
    tgt: &Db,
    copy_out: &str,
    copy_in: &str,
    what: &str,
    rate: Option<&RateLimiter>,
) -> Result<PipeStats> {
    let sink = tgt
        .client
        .copy_in::<_, Bytes>(copy_in)
        .await
        .map_err(|e| tgt.error(format!("starting COPY into {what}"), e))?;
    let stream = src
        .client
        .copy_out(copy_out)
        .await
        .map_err(|e| src.error(format!("starting COPY out of {what}"), e))?;
    futures::pin_mut!(sink);
    futures::pin_mut!(stream);

    let mut buf = BytesMut::with_capacity(BUFFER);
    let mut bytes = 0u64;
    while let Some(data) = stream.next().await {
        let data = data.map_err(|e| src.error(format!("reading COPY data of {what}"), e))?;
        bytes += data.len() as u64;
        buf.extend_from_slice(&data);
        if buf.len() >= BUFFER {
            if let Some(r) = rate {
                r.acquire(buf.len()).await;
            }
            sink.send(buf.split().freeze())
                .await
                .map_err(|e| tgt.error(format!("writing COPY data into {what}"), e))?;
        }
    }
    if !buf.is_empty() {
        if let Some(r) = rate {
            r.acquire(buf.len()).await;
        }
        sink.send(buf.freeze())
            .await
            .map_err(|e| tgt.error(format!("writing COPY data into {what}"), e))?;
    }
    let rows = sink
        .finish()
        .await
        .map_err(|e| tgt.error(format!("finishing COPY into {what}"), e))?;
    Ok(PipeStats { rows, bytes })
}
