//! The per-chunk copy engine. It knows nothing about the queue: the worker
//! opens the two transactions, claims the task, calls [`copy_task`], and
//! records the outcome in the same target transaction.

pub mod compressed;
pub mod fallback;
pub mod invalidation;
mod pipe;
pub mod target_chunk;

pub use pipe::{pipe, Flow, PipeStats, RateLimiter};

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::catalog::{self, Column, Extension};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::ident::{quote_ident, QualifiedName};
use crate::queue::Task;
use tokio_postgres::Statement;

/// What the copy needs to know about both sides.
#[derive(Debug, Clone)]
pub struct Context {
    pub source: Extension,
    pub target: Extension,
    /// How continuous-aggregate invalidations are kept out (see [`invalidation`]).
    pub invalidation: invalidation::Strategy,
    /// `--max-rate`, shared by all workers.
    pub rate: Option<Arc<RateLimiter>>,
    /// Bytes read from the source so far, all workers together, counted as
    /// they stream (for a live progress figure); `None`: not counted.
    pub moved: Option<Arc<AtomicU64>>,
}

/// What one task moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Logical rows: for compressed batches, the rows they hold.
    pub rows: u64,
    /// Compressed batches copied as they are (0 when none).
    pub batches: u64,
    /// Bytes of COPY data read from the source.
    pub bytes: u64,
}

impl From<PipeStats> for CopyStats {
    /// Rows streamed one by one: each is a logical row.
    fn from(p: PipeStats) -> Self {
        CopyStats {
            rows: p.rows,
            batches: 0,
            bytes: p.bytes,
        }
    }
}

/// The result of one copy task.
#[derive(Debug, Clone)]
pub enum Outcome {
    Copied {
        stats: CopyStats,
        /// `None` only when nothing was copied into a chunk-less range.
        target_chunk: Option<QualifiedName>,
        /// Why the chunk was copied another way than staged (see [`fallback`]).
        fallback: Option<String>,
        /// For a continuous aggregate's materialization: the aggregate's
        /// watermark on the source in the snapshot the rows came from.
        source_watermark: Option<i64>,
    },
    /// The source chunk no longer exists (dropped by retention, say).
    SourceGone,
}

/// Copy one task's rows. The target transaction is open; the source one is
/// opened here with `src_begin` (statements without parameters), in the same
/// round trip as the first source reads. The caller commits both.
///
/// The target chunk ends with the source's rows in the task's range and, for
/// a whole chunk, the source's compression state: compressed batches are
/// copied as they are. A task whose range cuts through a compressed chunk
/// copies its rows decompressed and leaves the target chunk as compressed as
/// it was.
///
/// Round trips to the source (which is often far away): one for the
/// transaction start, the chunk's state, its columns and the COPY statement
/// prepared ahead (its text built from the target's columns, which must be
/// the same), then the COPY itself. A compressed chunk's compressed relation
/// is guessed from the queue (stage saw it), so its columns and COPY are in
/// the first round trip too; only when that guess is wrong (the chunk was
/// compressed again, or compressed after stage) does it cost one more. The
/// target's reads come first (the target is near).
pub async fn copy_task(
    src: &Db,
    tgt: &Db,
    ctx: &Context,
    task: &Task,
    src_begin: &str,
) -> Result<Outcome> {
    let filter = task.filter();
    let found = target_chunk::find(
        tgt,
        &ctx.target.features,
        &task.hypertable,
        task.target_chunk.as_ref(),
        &task.slices,
    )
    .await?;
    let mut target = match found {
        Some(t_chunk) => Some(target_state(tgt, ctx, t_chunk).await?),
        None => None,
    };
    // A whole chunk staged compressed, whose target is compressed too: the
    // source's compressed relation as stage saw it, and the target's
    // compressed columns (near), for the guess below.
    let compressed_guess = match (&target, &task.source_compressed, &filter) {
        (Some((_, t_state, _)), Some(s_compressed), None) => match &t_state.compressed {
            Some(t_compressed) => Some((
                s_compressed.clone(),
                t_compressed.clone(),
                catalog::relation_columns(tgt, t_compressed).await?,
            )),
            None => None,
        },
        _ => None,
    };
    // The source rows' COPY, prepared ahead on the guess that the source
    // chunk is not compressed (a whole chunk whose target is compressed was
    // staged from a compressed one) and has the target's column types; or,
    // for a chunk staged compressed, its batches' COPY from the compressed
    // relation stage saw. A COPY's relation is looked up when it runs, not
    // when it is prepared, so a wrong guess costs nothing but its round trip.
    let guess = match (&target, &compressed_guess) {
        (Some(_), Some((s_compressed, _, t_ccols))) => Some(copy_out_sql(
            s_compressed,
            (t_ccols, t_ccols),
            "ONLY ",
            None,
        )),
        (Some((_, t_state, tgt_cols)), None)
            if filter.is_some() || t_state.compressed.is_none() =>
        {
            Some(copy_out_sql(
                &task.chunk,
                (tgt_cols, tgt_cols),
                "ONLY ",
                filter.as_deref(),
            ))
        }
        _ => None,
    };
    let begin_what = match &task.snapshot {
        Some(s) => format!(
            "starting the transaction with the staged snapshot {s} (the transaction that \
             exported it must still be open)"
        ),
        None => "starting a transaction".to_string(),
    };
    let (begun, s_state, src_cols, prepared, source_watermark, guessed_cols) = futures::join!(
        src.batch(src_begin, &begin_what),
        compressed::chunk_state(src, &ctx.source.features, &task.chunk),
        catalog::relation_columns(src, &task.chunk),
        prepare_ahead(src, guess),
        cagg_watermark(src, &task.hypertable),
        async {
            match &compressed_guess {
                Some((s_compressed, _, _)) => {
                    Some(catalog::relation_columns(src, s_compressed).await)
                }
                None => None,
            }
        },
    );
    begun?;
    let source_watermark = source_watermark?;
    let Some(s_state) = s_state? else {
        return Ok(Outcome::SourceGone);
    };
    let src_cols = src_cols?;
    plain_copy_settings(tgt, &ctx.target.features, &task.hypertable).await?;
    if target.is_none() {
        // Stage creates the target chunks; a later stage or a dropped chunk
        // leaves this to the copy.
        if let Some(t_chunk) =
            target_chunk::try_create(tgt, &ctx.target, &task.hypertable, &task.slices).await?
        {
            target = Some(target_state(tgt, ctx, t_chunk).await?);
        }
    }
    // Reading rows (not batches): without ONLY, TimescaleDB returns a
    // compressed source chunk's rows decompressed, with its uncompressed ones.
    let only = if s_state.compressed.is_some() {
        ""
    } else {
        "ONLY "
    };

    let Some((t_chunk, t_state, tgt_cols)) = target else {
        // No chunk with these slices, and this server does not let us create
        // one (Apache license): nothing on the target holds this range, and
        // rows sent through the hypertable make TimescaleDB create the chunk.
        // (Compression and continuous aggregates do not exist there.)
        let ht_cols = catalog::relation_columns(tgt, &task.hypertable).await?;
        check_columns(&task.chunk, &task.hypertable, &src_cols, &ht_cols)?;
        let quiet = invalidation::suppress(tgt, None, ctx.invalidation).await?;
        let stats = copy_rows(
            ctx,
            src,
            tgt,
            &task.chunk,
            &task.hypertable,
            (&src_cols, &ht_cols),
            only,
            filter.as_deref(),
            None,
        )
        .await?;
        quiet.restore(tgt).await?;
        let created = target_chunk::find(
            tgt,
            &ctx.target.features,
            &task.hypertable,
            None,
            &task.slices,
        )
        .await?;
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
            stats: stats.into(),
            target_chunk: created,
            fallback: None,
            source_watermark,
        });
    };
    check_columns(&task.chunk, &t_chunk, &src_cols, &tgt_cols)?;
    let prepared = prepared
        .transpose()
        .map_err(|e| src.error(format!("preparing the COPY of chunk {}", task.chunk), e))?;
    let quiet = invalidation::suppress(tgt, Some(&t_chunk), ctx.invalidation).await?;
    if t_state.frozen {
        // Restored from a source whose chunk was frozen: thaw it for this
        // transaction only.
        compressed::set_frozen(tgt, &ctx.target, &t_chunk, false).await?;
    }
    quiet.direct_writes(tgt).await?;

    let mut fallback = None;
    let stats: CopyStats = match (&filter, &s_state.compressed) {
        // A whole compressed chunk: batches as they are.
        (None, Some(_)) => compressed::copy_whole(
            src,
            tgt,
            ctx,
            &task.hypertable,
            (&task.chunk, &s_state),
            (&t_chunk, &t_state),
            &quiet,
            match (compressed_guess, guessed_cols) {
                (Some((name, t_compressed, t_cols)), Some(cols)) => Some(compressed::Ahead {
                    name,
                    cols,
                    prepared,
                    target: (t_compressed, t_cols),
                }),
                _ => None,
            },
        )
        .await
        .map(|(stats, why)| {
            fallback = why;
            stats
        })?,
        // A whole uncompressed chunk: the target ends uncompressed too.
        (None, None) => {
            if let Some(t_compressed) = &t_state.compressed {
                tgt.execute(
                    &format!("DELETE FROM ONLY {}", t_compressed.sql()),
                    &[],
                    &format!("deleting the batches of {t_compressed}"),
                )
                .await?;
                compressed::decompress(tgt, ctx, &t_chunk, &quiet).await?;
            }
            delete_range(tgt, &t_chunk, None).await?;
            copy_rows(
                ctx,
                src,
                tgt,
                &task.chunk,
                &t_chunk,
                (&src_cols, &tgt_cols),
                "ONLY ",
                None,
                prepared,
            )
            .await?
            .into()
        }
        // A range inside the chunk: rows decompressed, and the target chunk
        // left as compressed as it was.
        (Some(f), _) => {
            let was_compressed = t_state.compressed.is_some();
            if was_compressed {
                compressed::decompress(tgt, ctx, &t_chunk, &quiet).await?;
            }
            delete_range(tgt, &t_chunk, Some(f)).await?;
            let stats = copy_rows(
                ctx,
                src,
                tgt,
                &task.chunk,
                &t_chunk,
                (&src_cols, &tgt_cols),
                only,
                Some(f),
                prepared,
            )
            .await?;
            if was_compressed {
                compressed::compress(tgt, ctx, &t_chunk, &quiet).await?;
            }
            stats.into()
        }
    };
    quiet.restore(tgt).await?;
    if t_state.frozen {
        compressed::set_frozen(tgt, &ctx.target, &t_chunk, true).await?;
    }
    Ok(Outcome::Copied {
        stats,
        target_chunk: Some(t_chunk),
        fallback,
        source_watermark,
    })
}

/// A target chunk with its compression state and columns (one round trip).
async fn target_state(
    tgt: &Db,
    ctx: &Context,
    t_chunk: QualifiedName,
) -> Result<(QualifiedName, compressed::ChunkState, Vec<Column>)> {
    let (t_state, tgt_cols) = tokio::try_join!(
        compressed::chunk_state(tgt, &ctx.target.features, &t_chunk),
        catalog::relation_columns(tgt, &t_chunk),
    )?;
    let t_state =
        t_state.ok_or_else(|| Error::Internal(format!("target chunk {t_chunk} vanished")))?;
    Ok((t_chunk, t_state, tgt_cols))
}

/// A source COPY statement prepared ahead, with its text.
pub(crate) type Prepared = (String, Statement);

/// Prepare `sql` on the source, when given: sent in the same round trip as
/// whatever else is in flight on that connection. The caller uses it only
/// if the statement it needs turns out to be this one.
pub(crate) async fn prepare_ahead(
    src: &Db,
    sql: Option<String>,
) -> Option<std::result::Result<Prepared, tokio_postgres::Error>> {
    let sql = sql?;
    Some(src.client.prepare(&sql).await.map(|st| (sql, st)))
}

/// Source. $1 = hypertable schema, $2 = hypertable table. The watermark
/// (internal int64) of the continuous aggregate this hypertable
/// materializes, read in the transaction's snapshot; no row for any other
/// hypertable.
// language=PostgreSQL
pub(crate) const CAGG_WATERMARK: &str = "\
SELECT _timescaledb_functions.cagg_watermark(ca.mat_hypertable_id)
FROM _timescaledb_catalog.continuous_agg ca
JOIN _timescaledb_catalog.hypertable h ON h.id = ca.mat_hypertable_id
WHERE h.schema_name = $1 AND h.table_name = $2";

/// The source watermark of the continuous aggregate `hypertable`
/// materializes, if it materializes one: the copied rows are the source's
/// materialization below it (see `caggs`).
async fn cagg_watermark(src: &Db, hypertable: &QualifiedName) -> Result<Option<i64>> {
    let row = src
        .query_opt(
            CAGG_WATERMARK,
            &[&hypertable.schema, &hypertable.name],
            &format!("reading the continuous-aggregate watermark of {hypertable}"),
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Make TimescaleDB's own COPY path (2.22+) write exactly the rows sent, in
/// the chunk's current state: never compressed on the way in, whether by
/// `timescaledb.enable_direct_compress_copy` or by the hypertable's
/// `direct_compress` option (2.29+). For the task's transaction only.
async fn plain_copy_settings(
    tgt: &Db,
    features: &catalog::Features,
    hypertable: &QualifiedName,
) -> Result<()> {
    use catalog::compat;
    if let Some(sql) = features.copy_settings() {
        tgt.batch(sql, "turning off direct compression for the copy")
            .await?;
    }
    if features.direct_compress_option {
        let row = tgt
            .query_one(
                compat::HYPERTABLE_DIRECT_COMPRESS,
                &[&hypertable.schema, &hypertable.name],
                &format!("reading the options of {hypertable}"),
            )
            .await?;
        if row.get::<_, bool>(0) {
            tgt.batch(
                compat::SET_NO_COPY_OPTIMIZATIONS,
                &format!("turning off direct compression of {hypertable} for the copy"),
            )
            .await?;
        }
    }
    Ok(())
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

/// The columns COPY writes: the source's, except those the target generates
/// itself (`GENERATED ALWAYS AS (...)`), which COPY FROM refuses and which
/// the target computes from the others (verify then compares them).
/// Identity columns are written as they are: COPY FROM takes their values
/// even for `GENERATED ALWAYS AS IDENTITY`, as pg_restore relies on.
pub fn columns_to_write(source: &[Column], target: &[Column]) -> Vec<Column> {
    source
        .iter()
        .filter(|s| !target.iter().any(|t| t.name == s.name && t.generated))
        .cloned()
        .collect()
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

/// The column list and the format for (source's, target's) columns: the
/// source's names (the target's are the same) that COPY writes
/// ([`columns_to_write`]), binary unless a column's type cannot travel in it
/// between these two servers.
fn list_and_format(columns: (&[Column], &[Column])) -> (String, &'static str) {
    let (columns, target_columns) = columns;
    let columns = &columns_to_write(columns, target_columns);
    let list = columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let text = catalog::text_copy_needed(columns, target_columns);
    (list, if text { "text" } else { "binary" })
}

/// `COPY (SELECT columns FROM [ONLY] source [WHERE filter]) TO STDOUT`.
pub(crate) fn copy_out_sql(
    source: &QualifiedName,
    columns: (&[Column], &[Column]),
    only: &str,
    filter: Option<&str>,
) -> String {
    let (list, format) = list_and_format(columns);
    let where_clause = filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
    format!(
        "COPY (SELECT {list} FROM {only}{}{where_clause}) TO STDOUT (FORMAT {format})",
        source.sql()
    )
}

/// Stream the rows of `source` (matching `filter`) into `target`, columns
/// (source's, target's) matched by name. Binary format unless a column's
/// type cannot travel in it between these two servers. `prepared` is used
/// when it is the source statement this needs.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn copy_rows(
    ctx: &Context,
    src: &Db,
    tgt: &Db,
    source: &QualifiedName,
    target: &QualifiedName,
    columns: (&[Column], &[Column]),
    only: &str,
    filter: Option<&str>,
    prepared: Option<Prepared>,
) -> Result<PipeStats> {
    let (list, format) = list_and_format(columns);
    if format == "text" {
        tracing::info!(
            chunk = %source,
            "a column type has no binary form both servers read the same way: using text COPY"
        );
    }
    let out = copy_out_sql(source, columns, only, filter);
    let inp = format!(
        "COPY {} ({list}) FROM STDIN (FORMAT {format})",
        target.sql()
    );
    let ready = prepared.filter(|(sql, _)| *sql == out);
    pipe(
        src,
        tgt,
        &out,
        ready.as_ref().map(|(_, st)| st),
        &inp,
        &format!("chunk {source}"),
        Flow {
            rate: ctx.rate.as_deref(),
            moved: ctx.moved.as_deref(),
        },
    )
    .await
}
