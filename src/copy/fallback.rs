//! The way around compressed batches the target refuses.
//!
//! A compressed chunk is normally copied as its batches. Some releases
//! cannot read back a batch they wrote themselves: TimescaleDB 2.19.x stores
//! a column that is NULL in every row of a batch with its "NULL" compression
//! algorithm, and the `compressed_data` receive (and input) function returns
//! NULL for it, so `COPY ... FROM STDIN` fails with `receive function ...
//! returned NULL` (SQLSTATE XX000). Copying again cannot help. When the
//! target refuses the batches for such a data-format reason, the chunk is
//! copied another way in the same transaction: the batch COPY runs under a
//! savepoint, which is rolled back; the source chunk's rows are read
//! decompressed (no `ONLY`: TimescaleDB decompresses them on the source) into
//! the decompressed target chunk, which is then compressed on the target.
//! The target chunk ends compressed, with the source's rows (a partially
//! compressed source chunk ends fully compressed). The caller records the
//! reason in the queue, and `status` shows it.

use crate::catalog;
use crate::db::Db;
use crate::error::{Error, Result, Side};
use crate::ident::QualifiedName;

use super::invalidation::Suppressed;
use super::{compressed, copy_rows, Context, PipeStats};

const SAVEPOINT: &str = "hyperfill_batches";

/// Why the target refused the batches, when it did so for a data-format
/// reason (as opposed to a lost connection, a lock, a full disk...): a data
/// exception (SQLSTATE class 22), or an internal error from a type's receive
/// or input function.
pub fn refused_for_format(e: &Error) -> Option<String> {
    let Error::Db {
        side: Side::Target,
        source,
        ..
    } = e
    else {
        return None;
    };
    let db = source.as_db_error()?;
    let code = db.code().code();
    let msg = db.message();
    let format_error = code.starts_with("22")
        || (code == "XX000"
            && (msg.contains("receive function")
                || msg.contains("input function")
                || msg.contains("returned NULL")));
    format_error.then(|| {
        format!(
            "the target refused the source's compressed batches ({msg}, SQLSTATE {code}): \
             copied as rows and compressed on the target"
        )
    })
}

/// Mark the point to return to if the batches are refused.
pub async fn before_batches(tgt: &Db) -> Result<()> {
    tgt.batch(
        &format!("SAVEPOINT {SAVEPOINT}"),
        "setting a savepoint before the batches",
    )
    .await
}

/// The batches went in: forget the savepoint.
pub async fn batches_accepted(tgt: &Db) -> Result<()> {
    tgt.batch(
        &format!("RELEASE SAVEPOINT {SAVEPOINT}"),
        "releasing the savepoint",
    )
    .await
}

/// The batches were refused: undo them and copy the source chunk's rows
/// decompressed into the target chunk (which the savepoint left compressed
/// and empty), then compress it.
pub async fn copy_as_rows(
    src: &Db,
    tgt: &Db,
    ctx: &Context,
    s_chunk: &QualifiedName,
    t_chunk: &QualifiedName,
    quiet: &Suppressed,
) -> Result<PipeStats> {
    tgt.batch(
        &format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"),
        &format!("undoing the refused batches of {t_chunk}"),
    )
    .await?;
    compressed::decompress(tgt, ctx, t_chunk, quiet).await?;
    let (s_cols, t_cols) = tokio::try_join!(
        catalog::relation_columns(src, s_chunk),
        catalog::relation_columns(tgt, t_chunk),
    )?;
    // Without ONLY, the source returns the chunk's rows decompressed.
    let stats = copy_rows(
        ctx,
        src,
        tgt,
        s_chunk,
        t_chunk,
        (&s_cols, &t_cols),
        "",
        None,
        None,
    )
    .await?;
    compressed::compress(tgt, ctx, t_chunk, quiet).await?;
    Ok(stats)
}
