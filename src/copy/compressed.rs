//! Compressed chunks: copied as their compressed batches (the rows of the
//! compressed chunk table, never decompressed on the source), and the target
//! chunk's compression state brought in line with the source's, only through
//! TimescaleDB's own functions (`compress_chunk`, `decompress_chunk`).

use crate::catalog::compat::Variants;
use crate::catalog::{self, Extension, Features};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::ident::{quote_ident, QualifiedName};

use super::invalidation::Suppressed;
use super::{copy_rows, Context, CopyStats};

/// chunk.status bit: the chunk has rows outside its compressed batches.
const STATUS_PARTIAL: i32 = 8;
/// chunk.status bit: the chunk is frozen (`freeze_chunk`): TimescaleDB
/// refuses writes to it, from 2.23 also a COPY straight into it.
const STATUS_FROZEN: i32 = 4;

/// Either side. $1 = chunk schema, $2 = chunk table. The compressed chunk
/// (schema, table; NULL when not compressed; from 2.29 the standalone
/// `<chunk>_compressed` relation) and the status bits; no row when the chunk
/// is gone.
// language=PostgreSQL
pub const CHUNK_STATE: Variants = chunk_sql!(
    "\
SELECT c.compressed_schema::text, c.compressed_name::text, c.status
FROM chunk_v c
WHERE c.schema_name = $1 AND c.table_name = $2
  AND to_regclass(format('%I.%I', c.schema_name, c.table_name)) IS NOT NULL"
);

/// Target. The rows the batches of a compressed chunk table hold: each batch
/// (a row of the compressed chunk) records its row count in `_ts_meta_count`,
/// in every supported release.
const BATCH_ROWS: &str = "SELECT coalesce(sum(_ts_meta_count), 0)::bigint FROM ONLY ";

/// A chunk's compression state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkState {
    pub compressed: Option<QualifiedName>,
    pub partial: bool,
    pub frozen: bool,
}

/// The compression state of a chunk, or `None` when it no longer exists.
pub async fn chunk_state(
    db: &Db,
    features: &Features,
    chunk: &QualifiedName,
) -> Result<Option<ChunkState>> {
    let row = db
        .query_opt(
            features.sql(&CHUNK_STATE),
            &[&chunk.schema, &chunk.name],
            &format!("looking up chunk {chunk}"),
        )
        .await?;
    Ok(row.map(|r| ChunkState {
        compressed: match (r.get::<_, Option<String>>(0), r.get::<_, Option<String>>(1)) {
            (Some(s), Some(n)) => Some(QualifiedName::new(s, n)),
            _ => None,
        },
        partial: r.get::<_, i32>(2) & STATUS_PARTIAL != 0,
        frozen: r.get::<_, i32>(2) & STATUS_FROZEN != 0,
    }))
}

async fn call(db: &Db, ext: &Extension, function: &str, chunk: &QualifiedName) -> Result<()> {
    // Public API functions in the extension's schema (read from the catalog).
    let sql = format!(
        "SELECT {}.{function}($1::text::regclass)",
        quote_ident(&ext.schema)
    );
    db.execute(&sql, &[&chunk.sql()], &format!("{function} of {chunk}"))
        .await?;
    Ok(())
}

/// `unfreeze_chunk` (before writing into a frozen target chunk) or
/// `freeze_chunk` (after), inside a task's transaction: the chunk ends as
/// frozen as it was.
pub async fn set_frozen(
    db: &Db,
    ext: &Extension,
    chunk: &QualifiedName,
    frozen: bool,
) -> Result<()> {
    let function = if frozen {
        "freeze_chunk"
    } else {
        "unfreeze_chunk"
    };
    // Internal functions, in the functions schema read from the catalog.
    let sql = format!(
        "SELECT {}.{function}($1::text::regclass)",
        quote_ident(&ext.functions_schema)
    );
    db.execute(&sql, &[&chunk.sql()], &format!("{function} of {chunk}"))
        .await?;
    Ok(())
}

/// `compress_chunk` inside a task's transaction.
pub async fn compress(
    db: &Db,
    ctx: &Context,
    chunk: &QualifiedName,
    quiet: &Suppressed,
) -> Result<()> {
    with_hooks(db, ctx, "compress_chunk", chunk, quiet).await
}

/// `decompress_chunk` inside a task's transaction.
pub async fn decompress(
    db: &Db,
    ctx: &Context,
    chunk: &QualifiedName,
    quiet: &Suppressed,
) -> Result<()> {
    with_hooks(db, ctx, "decompress_chunk", chunk, quiet).await
}

/// Call an API function that needs TimescaleDB's hooks, then go back to
/// direct writes.
async fn with_hooks(
    db: &Db,
    ctx: &Context,
    function: &str,
    chunk: &QualifiedName,
    quiet: &Suppressed,
) -> Result<()> {
    quiet.hooks(db).await?;
    call(db, &ctx.target, function, chunk).await?;
    quiet.direct_writes(db).await
}

/// Give an (empty) target chunk its compressed chunk ahead of the copy, the
/// way TimescaleDB itself would, so that copy workers do not contend on it.
pub async fn precreate(db: &Db, ext: &Extension, chunk: &QualifiedName) -> Result<()> {
    call(db, ext, "compress_chunk", chunk).await
}

async fn delete_all(db: &Db, rel: &QualifiedName) -> Result<u64> {
    db.execute(
        &format!("DELETE FROM ONLY {}", rel.sql()),
        &[],
        &format!("deleting the rows of {rel}"),
    )
    .await
}

/// Empty the target chunk and leave it compressed with an empty compressed
/// chunk and without the partial flag, ready to receive batches. Returns the
/// compressed chunk.
pub async fn reset_to_empty_compressed(
    tgt: &Db,
    ctx: &Context,
    chunk: &QualifiedName,
    state: &ChunkState,
    quiet: &Suppressed,
) -> Result<QualifiedName> {
    if let Some(compressed) = &state.compressed {
        // Batches first: before TimescaleDB 2.23 a DELETE on the chunk
        // itself does not reach its compressed rows.
        delete_all(tgt, compressed).await?;
        delete_all(tgt, chunk).await?;
        if !state.partial {
            return Ok(compressed.clone());
        }
        // Clear the partial flag the only allowed way: decompress and
        // compress again, both cheap on an empty chunk.
        decompress(tgt, ctx, chunk, quiet).await?;
    } else {
        delete_all(tgt, chunk).await?;
    }
    compress(tgt, ctx, chunk, quiet).await?;
    match chunk_state(tgt, &ctx.target.features, chunk).await? {
        Some(ChunkState {
            compressed: Some(c),
            ..
        }) => Ok(c),
        _ => Err(Error::Internal(format!(
            "compress_chunk did not give target chunk {chunk} a compressed chunk"
        ))),
    }
}

/// The source's compressed relation as guessed before its chunk's state was
/// read: its columns and the COPY of its batches, read and prepared in the
/// task's first round trip (see [`super::copy_task`]), and the target's
/// compressed relation with the columns the guess was built from.
pub struct Ahead {
    pub name: QualifiedName,
    pub cols: Result<Vec<crate::catalog::Column>>,
    pub prepared: Option<super::Prepared>,
    pub target: (QualifiedName, Vec<crate::catalog::Column>),
}

/// Copy a whole compressed source chunk: its batches as they are into the
/// target's compressed chunk, then the rows a partially compressed source
/// chunk holds outside its batches, through the hypertable so that
/// TimescaleDB marks the target chunk partial as well. When the target
/// refuses the batches for a data-format reason, the chunk is copied as rows
/// instead ([`super::fallback`]) and the reason is returned.
#[allow(clippy::too_many_arguments)]
pub async fn copy_whole(
    src: &Db,
    tgt: &Db,
    ctx: &Context,
    hypertable: &QualifiedName,
    source: (&QualifiedName, &ChunkState),
    target: (&QualifiedName, &ChunkState),
    quiet: &Suppressed,
    ahead: Option<Ahead>,
) -> Result<(CopyStats, Option<String>)> {
    let (s_chunk, s_state) = source;
    let (t_chunk, t_state) = target;
    let Some(s_compressed) = &s_state.compressed else {
        return Err(Error::Internal(
            "copy_whole needs a compressed source chunk".into(),
        ));
    };
    let t_compressed = reset_to_empty_compressed(tgt, ctx, t_chunk, t_state, quiet).await?;

    // The target's layout first (near; already read for the guess when the
    // reset kept the same compressed relation), then the source's and the
    // COPY prepared ahead from it in one round trip (far).
    let (t_cols, ahead) = match ahead {
        Some(Ahead {
            name,
            cols,
            prepared,
            target: (read, t_cols),
        }) if read == t_compressed => (t_cols, Some((name, cols, prepared))),
        other => (
            catalog::relation_columns(tgt, &t_compressed).await?,
            other.map(|a| (a.name, a.cols, a.prepared)),
        ),
    };
    let (s_cols, prepared) = match ahead {
        // Guessed right: read and prepared in the first round trip.
        Some((name, cols, prepared)) if &name == s_compressed => (cols?, prepared),
        _ => {
            let guess = super::copy_out_sql(s_compressed, (&t_cols, &t_cols), "ONLY ", None);
            let (s_cols, prepared) = futures::join!(
                catalog::relation_columns(src, s_compressed),
                super::prepare_ahead(src, Some(guess)),
            );
            let prepared = prepared
                .transpose()
                .map_err(|e| src.error(format!("preparing the COPY of {s_compressed}"), e))?;
            (s_cols?, prepared)
        }
    };
    let diffs = catalog::column_differences(&s_cols, &t_cols);
    if !diffs.is_empty() {
        return Err(Error::Incompatible(format!(
            "the compressed chunks of {s_chunk} (source {s_compressed}, target {t_compressed}) \
             have different layouts: {}. The hypertable's compression settings differ between \
             source and target: make the target's `timescaledb.compress_segmentby` and \
             `timescaledb.compress_orderby` equal to the source's",
            diffs.join("; ")
        )));
    }
    super::fallback::before_batches(tgt).await?;
    let batches = copy_rows(
        ctx,
        src,
        tgt,
        s_compressed,
        &t_compressed,
        (&s_cols, &t_cols),
        "ONLY ",
        None,
        prepared,
    )
    .await;
    let batches = match batches {
        Ok(batches) => {
            super::fallback::batches_accepted(tgt).await?;
            batches
        }
        Err(e) => {
            let Some(reason) = super::fallback::refused_for_format(&e) else {
                return Err(e);
            };
            tracing::warn!(chunk = %s_chunk, "{reason}");
            let stats =
                super::fallback::copy_as_rows(src, tgt, ctx, s_chunk, t_chunk, quiet).await?;
            return Ok((stats.into(), Some(reason)));
        }
    };
    // Counted on the target, which held no batches before this COPY: the
    // same figure as on the source, without another read there.
    let held: i64 = tgt
        .query_one(
            &format!("{BATCH_ROWS}{}", t_compressed.sql()),
            &[],
            &format!("counting the rows in the batches of {t_compressed}"),
        )
        .await?
        .get(0);
    let mut stats = CopyStats {
        rows: held.max(0) as u64,
        batches: batches.rows,
        bytes: batches.bytes,
    };

    if s_state.partial {
        let (cols, ht_cols) = tokio::try_join!(
            catalog::relation_columns(src, s_chunk),
            catalog::relation_columns(tgt, hypertable),
        )?;
        // Through the hypertable, with TimescaleDB's hooks: only they set
        // the partial flag that makes these rows visible.
        quiet.hooks(tgt).await?;
        let more = copy_rows(
            ctx,
            src,
            tgt,
            s_chunk,
            hypertable,
            (&cols, &ht_cols),
            "ONLY ",
            None,
            None,
        )
        .await?;
        quiet.direct_writes(tgt).await?;
        stats.rows += more.rows;
        stats.bytes += more.bytes;
    }
    Ok((stats, None))
}
