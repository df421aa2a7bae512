//! The per-chunk copy engine. It knows nothing about the queue: the worker
//! opens the two transactions, claims the task, calls [`copy_task`], and
//! records the outcome in the same target transaction.

mod pipe;
pub mod target_chunk;

pub use pipe::{pipe, PipeStats};

use crate::catalog::{self, Column, Extension};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::ident::{quote_ident, QualifiedName};
use crate::queue::Task;

/// What the copy needs to know about both sides.
#[derive(Debug, Clone)]
pub struct Context {
    pub source: Extension,
    pub target: Extension,
}

/// The result of one copy task.
#[derive(Debug, Clone)]
pub enum Outcome {
    Copied {
        rows: u64,
        bytes: u64,
        /// `None` only when nothing was copied into a chunk-less range.
        target_chunk: Option<QualifiedName>,
    },
    /// The source chunk no longer exists (dropped by retention, say).
    SourceGone,
}

/// Either side. $1 = chunk schema, $2 = chunk table. Whether the chunk has a
/// compressed chunk; no row when the chunk is gone.
// language=PostgreSQL
const CHUNK_COMPRESSION: &str = "\
SELECT c.compressed_chunk_id IS NOT NULL
FROM _timescaledb_catalog.chunk c
WHERE c.schema_name = $1 AND c.table_name = $2 AND NOT c.dropped
  AND to_regclass(format('%I.%I', c.schema_name, c.table_name)) IS NOT NULL";

async fn compression(db: &Db, chunk: &QualifiedName) -> Result<Option<bool>> {
    let row = db
        .query_opt(
            CHUNK_COMPRESSION,
            &[&chunk.schema, &chunk.name],
            &format!("looking up chunk {chunk}"),
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Copy one task's rows. Both transactions are open; the caller commits.
pub async fn copy_task(src: &Db, tgt: &Db, ctx: &Context, task: &Task) -> Result<Outcome> {
    let Some(source_compressed) = compression(src, &task.chunk).await? else {
        return Ok(Outcome::SourceGone);
    };
    let mut target = target_chunk::find(
        tgt,
        &task.hypertable,
        task.target_chunk.as_ref(),
        &task.slices,
    )
    .await?;
    if target.is_none() {
        target = target_chunk::try_create(tgt, &ctx.target, &task.hypertable, &task.slices).await?;
    }
    if source_compressed {
        tracing::warn!(chunk = %task.chunk, "source chunk is compressed: copying its rows decompressed");
    }
    // A compressed source chunk is read without ONLY: TimescaleDB then returns
    // its compressed rows decompressed, with the uncompressed ones.
    let only = if source_compressed { "" } else { "ONLY " };
    let src_cols = catalog::relation_columns(src, &task.chunk).await?;
    let filter = task.filter();

    let Some(target_chunk) = target else {
        // No chunk with these slices, and this server does not let us create
        // one (Apache license): nothing on the target holds this range, and
        // rows sent through the hypertable make TimescaleDB create the chunk.
        let ht_cols = catalog::relation_columns(tgt, &task.hypertable).await?;
        check_columns(&task.chunk, &task.hypertable, &src_cols, &ht_cols)?;
        let stats = copy_rows(
            src,
            tgt,
            &task.chunk,
            &task.hypertable,
            &src_cols,
            only,
            filter.as_deref(),
        )
        .await?;
        let created = target_chunk::find(tgt, &task.hypertable, None, &task.slices).await?;
        if created.is_none() && stats.rows > 0 {
            return Err(Error::Incompatible(format!(
                "rows of source chunk {} went into target hypertable {} but not into a chunk \
                 with the same slices: the target's chunk interval or space partitioning differs \
                 from the source's. Restore the target's schema from a pg_dump of the source \
                 (see README)",
                task.chunk, task.hypertable
            )));
        }
        return Ok(Outcome::Copied {
            rows: stats.rows,
            bytes: stats.bytes,
            target_chunk: created,
        });
    };

    let target_compressed = compression(tgt, &target_chunk).await?.unwrap_or(false);
    if target_compressed {
        // Rows of a compressed target chunk can only be replaced once it is
        // decompressed; it ends uncompressed.
        tracing::warn!(chunk = %target_chunk, "target chunk is compressed: decompressing it before copying");
        let sql = format!(
            "SELECT {}.decompress_chunk($1::text::regclass, if_compressed => true)",
            quote_ident(&ctx.target.schema)
        );
        tgt.execute(
            &sql,
            &[&target_chunk.sql()],
            &format!("decompressing {target_chunk}"),
        )
        .await?;
    }
    let tgt_cols = catalog::relation_columns(tgt, &target_chunk).await?;
    check_columns(&task.chunk, &target_chunk, &src_cols, &tgt_cols)?;
    delete_range(tgt, &target_chunk, filter.as_deref()).await?;
    let stats = copy_rows(
        src,
        tgt,
        &task.chunk,
        &target_chunk,
        &src_cols,
        only,
        filter.as_deref(),
    )
    .await?;
    Ok(Outcome::Copied {
        rows: stats.rows,
        bytes: stats.bytes,
        target_chunk: Some(target_chunk),
    })
}

/// Every source column must exist on the target chunk with the same type.
fn check_columns(
    source: &QualifiedName,
    target: &QualifiedName,
    src: &[Column],
    tgt: &[Column],
) -> Result<()> {
    let diffs = catalog::column_differences(src, tgt);
    if diffs.is_empty() {
        return Ok(());
    }
    Err(Error::Incompatible(format!(
        "source chunk {source} and target chunk {target} have different columns: {}. \
         Make the target hypertable's columns match the source's, then run `copy` again",
        diffs.join("; ")
    )))
}

/// Remove what the target chunk holds in the task's range, so a re-run never
/// duplicates. DELETE, not TRUNCATE: it takes no lock that blocks readers of
/// the hypertable.
async fn delete_range(tgt: &Db, chunk: &QualifiedName, filter: Option<&str>) -> Result<u64> {
    let what = format!("deleting the target rows of {chunk} in the task's range");
    match filter {
        Some(f) => {
            tgt.execute(
                &format!("DELETE FROM ONLY {} WHERE {f}", chunk.sql()),
                &[],
                &what,
            )
            .await
        }
        None => {
            // Skip the DELETE's scan when the chunk is empty, the common case.
            let any = tgt
                .query_one(
                    &format!("SELECT EXISTS (SELECT 1 FROM ONLY {})", chunk.sql()),
                    &[],
                    &what,
                )
                .await?;
            if any.get::<_, bool>(0) {
                tgt.execute(&format!("DELETE FROM ONLY {}", chunk.sql()), &[], &what)
                    .await
            } else {
                Ok(0)
            }
        }
    }
}

/// Stream the rows of `source` (matching `filter`) into `target`, columns
/// matched by name. Binary format unless a column's type cannot travel in it.
async fn copy_rows(
    src: &Db,
    tgt: &Db,
    source: &QualifiedName,
    target: &QualifiedName,
    columns: &[Column],
    only: &str,
    filter: Option<&str>,
) -> Result<PipeStats> {
    let list = columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let text = columns.iter().any(|c| c.needs_text);
    if text {
        tracing::info!(chunk = %source, "a column type has no portable binary form: using text COPY");
    }
    let format = if text { "text" } else { "binary" };
    let where_clause = filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
    let out = format!(
        "COPY (SELECT {list} FROM {only}{}{where_clause}) TO STDOUT (FORMAT {format})",
        source.sql()
    );
    let inp = format!(
        "COPY {} ({list}) FROM STDIN (FORMAT {format})",
        target.sql()
    );
    pipe(src, tgt, &out, &inp, &format!("chunk {source}")).await
}
