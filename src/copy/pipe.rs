//! The streaming COPY pipe: source `COPY ... TO STDOUT` into target
//! `COPY ... FROM STDIN`, with bounded memory.

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};

use crate::db::Db;
use crate::error::{Error, Result};

/// Rows are re-buffered into messages of about this size: fewer, larger
/// CopyData messages to the target, and at most this much held per worker.
const BUFFER: usize = 512 * 1024;

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
) -> Result<PipeStats> {
    let sink = tgt
        .client
        .copy_in::<_, Bytes>(copy_in)
        .await
        .map_err(|e| Error::db(tgt.side, format!("starting COPY into {what}"), e))?;
    let stream = src
        .client
        .copy_out(copy_out)
        .await
        .map_err(|e| Error::db(src.side, format!("starting COPY out of {what}"), e))?;
    futures::pin_mut!(sink);
    futures::pin_mut!(stream);

    let mut buf = BytesMut::with_capacity(BUFFER);
    let mut bytes = 0u64;
    while let Some(data) = stream.next().await {
        let data =
            data.map_err(|e| Error::db(src.side, format!("reading COPY data of {what}"), e))?;
        bytes += data.len() as u64;
        buf.extend_from_slice(&data);
        if buf.len() >= BUFFER {
            sink.send(buf.split().freeze())
                .await
                .map_err(|e| Error::db(tgt.side, format!("writing COPY data into {what}"), e))?;
        }
    }
    if !buf.is_empty() {
        sink.send(buf.freeze())
            .await
            .map_err(|e| Error::db(tgt.side, format!("writing COPY data into {what}"), e))?;
    }
    let rows = sink
        .finish()
        .await
        .map_err(|e| Error::db(tgt.side, format!("finishing COPY into {what}"), e))?;
    Ok(PipeStats { rows, bytes })
}
