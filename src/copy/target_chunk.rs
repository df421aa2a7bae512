//! Finding (or creating) the target chunk that matches a source chunk's
//! dimension slices, through TimescaleDB's own `create_chunk`.

use crate::catalog::{self, slices_json, Extension, Slice};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::ident::QualifiedName;

/// Target. $1 = chunk schema, $2 = chunk table. The chunk's slices, when it
/// exists and is not dropped.
// language=PostgreSQL
const CHUNK_SLICES: &str = "\
SELECT (SELECT jsonb_object_agg(d.column_name, jsonb_build_array(ds.range_start, ds.range_end))
        FROM _timescaledb_catalog.chunk_constraint x
        JOIN _timescaledb_catalog.dimension_slice ds ON ds.id = x.dimension_slice_id
        JOIN _timescaledb_catalog.dimension d ON d.id = ds.dimension_id
        WHERE x.chunk_id = c.id)
FROM _timescaledb_catalog.chunk c
WHERE c.schema_name = $1 AND c.table_name = $2 AND NOT c.dropped
  AND to_regclass(format('%I.%I', c.schema_name, c.table_name)) IS NOT NULL";

/// Whether `chunk` exists on this side with exactly these slices.
pub async fn has_slices(db: &Db, chunk: &QualifiedName, slices: &[Slice]) -> Result<bool> {
    let row = db
        .query_opt(
            CHUNK_SLICES,
            &[&chunk.schema, &chunk.name],
            &format!("looking up chunk {chunk}"),
        )
        .await?;
    match row.and_then(|r| r.get::<_, Option<serde_json::Value>>(0)) {
        Some(v) => Ok(catalog::parse_slices(&v)? == slices),
        None => Ok(false),
    }
}

/// Create the chunk with these slices in `hypertable` (or return the existing
/// one: `create_chunk` is idempotent for identical slices).
pub async fn create(
    db: &Db,
    ext: &Extension,
    hypertable: &QualifiedName,
    slices: &[Slice],
) -> Result<QualifiedName> {
    // The functions schema is one of two fixed names read from the catalog.
    let sql = format!(
        "SELECT schema_name::text, table_name::text FROM {}.create_chunk($1::text::regclass, $2::jsonb)",
        crate::ident::quote_ident(&ext.functions_schema)
    );
    let json = slices_json(slices);
    let row = db
        .client
        .query_one(&sql, &[&hypertable.sql(), &json])
        .await
        .map_err(|e| {
            if let Some(db_err) = e.as_db_error() {
                if db_err.message().contains("collision") || db_err.message().contains("overlap") {
                    return Error::Incompatible(format!(
                        "target hypertable {hypertable} has a chunk that overlaps the source's \
                         chunk with slices {json} but does not match it: the target's chunk \
                         interval or space partitioning differs from the source's. Restore the \
                         target's schema from a pg_dump of the source (see README), so both \
                         sides partition time the same way. ({})",
                        crate::error::pg_text(&e)
                    ));
                }
            }
            Error::db(
                db.side,
                format!("creating the chunk of {hypertable} with slices {json}"),
                e,
            )
        })?;
    Ok(QualifiedName::new(
        row.get::<_, String>(0),
        row.get::<_, String>(1),
    ))
}

/// The target chunk for a task: the recorded one when it still has the same
/// slices, otherwise the one TimescaleDB finds or creates for those slices.
pub async fn resolve(
    db: &Db,
    ext: &Extension,
    hypertable: &QualifiedName,
    recorded: Option<&QualifiedName>,
    slices: &[Slice],
) -> Result<QualifiedName> {
    if let Some(chunk) = recorded {
        if has_slices(db, chunk, slices).await? {
            return Ok(chunk.clone());
        }
    }
    create(db, ext, hypertable, slices).await
}
