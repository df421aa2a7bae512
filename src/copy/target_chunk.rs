//! Finding (or creating) the target chunk that matches a source chunk's
//! dimension slices, through TimescaleDB's own `create_chunk`.

use crate::catalog::compat::Variants;
use crate::catalog::{self, slices_json, Extension, Features, Slice};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::ident::QualifiedName;

/// Target. $1 = chunk schema, $2 = chunk table. The chunk's slices, when it
/// exists and is not dropped.
// language=PostgreSQL
pub const CHUNK_SLICES: Variants = chunk_sql!(
    "\
SELECT (SELECT jsonb_object_agg(d.column_name, jsonb_build_array(s.range_start, s.range_end))
        FROM slice_v s
        JOIN _timescaledb_catalog.dimension d ON d.id = s.dimension_id
        WHERE s.chunk_id = c.id)
FROM chunk_v c
WHERE c.schema_name = $1 AND c.table_name = $2
  AND to_regclass(format('%I.%I', c.schema_name, c.table_name)) IS NOT NULL"
);

/// Whether `chunk` exists on this side with exactly these slices.
pub async fn has_slices(
    db: &Db,
    features: &Features,
    chunk: &QualifiedName,
    slices: &[Slice],
) -> Result<bool> {
    let row = db
        .query_opt(
            features.sql(&CHUNK_SLICES),
            &[&chunk.schema, &chunk.name],
            &format!("looking up chunk {chunk}"),
        )
        .await?;
    match row.and_then(|r| r.get::<_, Option<serde_json::Value>>(0)) {
        Some(v) => Ok(catalog::parse_slices(&v)? == slices),
        None => Ok(false),
    }
}

/// Target. $1 = hypertable schema, $2 = hypertable table, $3 = slices as
/// `{"column": [start, end]}`. The chunk of that hypertable with exactly
/// these slices, if any: each slice is found through dimension_slice's
/// (dimension_id, range_start, range_end) index, and the chunk must hold one
/// per dimension given (a chunk has one slice per dimension).
// language=PostgreSQL
pub const CHUNK_BY_SLICES: Variants = chunk_sql!(
    "\
SELECT c.schema_name::text, c.table_name::text
FROM _timescaledb_catalog.hypertable h
JOIN _timescaledb_catalog.dimension d ON d.hypertable_id = h.id
JOIN slice_v s
  ON s.dimension_id = d.id
 AND s.range_start = ($3::jsonb -> d.column_name::text ->> 0)::bigint
 AND s.range_end = ($3::jsonb -> d.column_name::text ->> 1)::bigint
JOIN chunk_v c ON c.id = s.chunk_id
WHERE h.schema_name = $1 AND h.table_name = $2
GROUP BY h.id, c.id, c.schema_name, c.table_name
HAVING count(*) = (SELECT count(*) FROM jsonb_object_keys($3::jsonb))
   AND count(*) = (SELECT count(*) FROM _timescaledb_catalog.dimension d2 WHERE d2.hypertable_id = h.id)
LIMIT 1"
);

/// Create the chunk with these slices in `hypertable` (or return the existing
/// one: `create_chunk` is idempotent for identical slices). `None` when the
/// server does not allow `create_chunk` (the Apache-licensed build): the copy
/// then lets TimescaleDB create the chunk as rows arrive.
pub async fn try_create(
    db: &Db,
    ext: &Extension,
    hypertable: &QualifiedName,
    slices: &[Slice],
) -> Result<Option<QualifiedName>> {
    if !ext.is_community() {
        return Ok(None);
    }
    // The functions schema is one of two fixed names read from the catalog.
    let sql = format!(
        "SELECT schema_name::text, table_name::text FROM {}.create_chunk($1::text::regclass, $2::jsonb)",
        crate::ident::quote_ident(&ext.functions_schema)
    );
    let json = slices_json(slices);
    let result = db.try_query_one(&sql, &[&hypertable.sql(), &json]).await;
    let row = match result {
        Ok(row) => row,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED) => {
            return Ok(None)
        }
        Err(e) => {
            if let Some(db_err) = e.as_db_error() {
                if db_err.message().contains("collision") || db_err.message().contains("overlap") {
                    return Err(Error::Incompatible(format!(
                        "target hypertable {hypertable} has a chunk that overlaps the source's \
                         chunk with slices {json} but does not match it: the target's chunk \
                         interval or space partitioning differs from the source's. Restore the \
                         target's schema from a pg_dump of the source (see README), so both \
                         sides partition time the same way. ({})",
                        crate::error::pg_text(&e)
                    )));
                }
            }
            return Err(Error::db(
                db.side,
                format!("creating the chunk of {hypertable} with slices {json}"),
                e,
            ));
        }
    };
    Ok(Some(QualifiedName::from_row(&row, 0)))
}

/// The target chunk for a task: the recorded one when it still has the same
/// slices, otherwise the hypertable's chunk with those slices, if any.
pub async fn find(
    db: &Db,
    features: &Features,
    hypertable: &QualifiedName,
    recorded: Option<&QualifiedName>,
    slices: &[Slice],
) -> Result<Option<QualifiedName>> {
    if let Some(chunk) = recorded {
        if has_slices(db, features, chunk, slices).await? {
            return Ok(Some(chunk.clone()));
        }
    }
    let row = db
        .query_opt(
            features.sql(&CHUNK_BY_SLICES),
            &[&hypertable.schema, &hypertable.name, &slices_json(slices)],
            &format!("looking up the chunk of {hypertable}"),
        )
        .await?;
    Ok(row.map(|r| QualifiedName::from_row(&r, 0)))
}
