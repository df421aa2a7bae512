//! SQL of the catalog module. Every statement is read-only.
//!
//! Statements that read chunks are [`Variants`]: written once over the
//! `chunk_v` and `slice_v` views of `compat.rs` and expanded for each shape
//! of TimescaleDB's chunk catalog; the caller picks one with
//! `Features::sql`.

use super::compat::Variants;

/// Either side. Returns the timescaledb extension's version, its schema, the
/// schema of its internal functions (`_timescaledb_functions` since 2.12),
/// the license (`apache` builds lack compression, continuous aggregates
/// and `create_chunk`), and the server's PostgreSQL version (text, number).
// language=PostgreSQL
pub const EXTENSION: &str = "\
SELECT e.extversion::text,
       n.nspname::text,
       CASE WHEN to_regnamespace('_timescaledb_functions') IS NOT NULL
            THEN '_timescaledb_functions' ELSE '_timescaledb_internal' END,
       coalesce(current_setting('timescaledb.license', true), 'apache'),
       current_setting('server_version'),
       current_setting('server_version_num')::int
FROM pg_extension e
JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'timescaledb'";

/// Source. $1 = a user regex. Errors with SQLSTATE 2201B when it is invalid.
// language=PostgreSQL
pub const VALIDATE_REGEX: &str = "SELECT 'hyperfill' ~* $1";

/// The common head of the selection queries.
/// $1 = filter regex or NULL (case-insensitive, on `schema.table` of
/// hypertables and `schema.view` of continuous aggregates, each part quoted
/// only where needed, as `format('%I.%I')` does); $2 = cascade up; $3 = cascade
/// down. Cascades apply only with a filter (without one everything matches).
/// Compressed internal hypertables (compression_state = 2) are never selected.
macro_rules! selection_ctes {
    () => {
        "\
matched AS (
    SELECT h.id
    FROM _timescaledb_catalog.hypertable h
    WHERE $1::text IS NULL OR format('%I.%I', h.schema_name, h.table_name) ~* $1::text
    UNION
    SELECT ca.mat_hypertable_id
    FROM _timescaledb_catalog.continuous_agg ca
    WHERE $1::text IS NOT NULL
      AND format('%I.%I', ca.user_view_schema, ca.user_view_name) ~* $1::text
),
up AS (
    SELECT id FROM matched WHERE $2::bool AND $1::text IS NOT NULL
    UNION
    SELECT ca.mat_hypertable_id
    FROM _timescaledb_catalog.continuous_agg ca
    JOIN up ON ca.raw_hypertable_id = up.id
),
down AS (
    SELECT id FROM matched WHERE $3::bool AND $1::text IS NOT NULL
    UNION
    SELECT ca.raw_hypertable_id
    FROM _timescaledb_catalog.continuous_agg ca
    JOIN down ON ca.mat_hypertable_id = down.id
),
selected AS (
    SELECT id FROM matched UNION SELECT id FROM up UNION SELECT id FROM down
),
ht AS (
    SELECT h.id, h.schema_name, h.table_name,
           ca.user_view_schema, ca.user_view_name,
           td.id AS time_dimension_id, td.column_name AS time_column,
           format_type(td.column_type, NULL) AS time_type
    FROM selected s
    JOIN _timescaledb_catalog.hypertable h ON h.id = s.id AND h.compression_state <> 2
    LEFT JOIN _timescaledb_catalog.continuous_agg ca ON ca.mat_hypertable_id = h.id
    JOIN LATERAL (
        SELECT d.id, d.column_name, d.column_type
        FROM _timescaledb_catalog.dimension d
        WHERE d.hypertable_id = h.id AND d.interval_length IS NOT NULL
        ORDER BY d.id
        LIMIT 1
    ) td ON true
)
"
    };
}

/// Source. Parameters as in `selection_ctes`. One row per selected hypertable:
/// schema, table, cagg view schema, cagg view name, time column, time type.
// language=PostgreSQL
pub const SELECTED_HYPERTABLES: &str = concat!(
    "WITH RECURSIVE\n",
    selection_ctes!(),
    "\
SELECT schema_name::text, table_name::text, user_view_schema::text, user_view_name::text,
       time_column::text, time_type
FROM ht
ORDER BY schema_name, table_name"
);

/// Source. Parameters as in `selection_ctes`. One row per non-dropped, non-OSM
/// chunk of the selected hypertables, newest first: hypertable schema and
/// table, cagg view schema and name, time column, time type, chunk schema and
/// table, compressed chunk schema and table, time slice start, all slices as
/// `{"column": [start, end]}`, time slice end, size in bytes of the table
/// data (heap and TOAST of the chunk and of its compressed chunk, without
/// indexes: what COPY reads, the basis of every bytes-to-move estimate).
// language=PostgreSQL
pub const SOURCE_CHUNKS: Variants = chunk_sql!(
    ctes: selection_ctes!(),
    "\
SELECT ht.schema_name::text, ht.table_name::text,
       ht.user_view_schema::text, ht.user_view_name::text,
       ht.time_column::text, ht.time_type,
       c.schema_name::text, c.table_name::text,
       c.compressed_schema::text, c.compressed_name::text,
       ts.range_start,
       sl.slices,
       ts.range_end,
       (coalesce(pg_table_size(to_regclass(format('%I.%I', c.schema_name, c.table_name))), 0)
        + CASE WHEN c.compressed_name IS NULL THEN 0
               ELSE coalesce(pg_table_size(to_regclass(format('%I.%I', c.compressed_schema, c.compressed_name))), 0) END)::bigint
FROM ht
JOIN chunk_v c ON c.hypertable_id = ht.id AND NOT c.osm_chunk
JOIN slice_v ts ON ts.chunk_id = c.id AND ts.dimension_id = ht.time_dimension_id
CROSS JOIN LATERAL (
    SELECT jsonb_object_agg(d.column_name, jsonb_build_array(s.range_start, s.range_end)) AS slices
    FROM slice_v s
    JOIN _timescaledb_catalog.dimension d ON d.id = s.dimension_id
    WHERE s.chunk_id = c.id
) sl
ORDER BY ts.range_start DESC, ht.schema_name, ht.table_name, c.id"
);

/// Either side. $1 = hypertable schema, $2 = hypertable table. Its
/// non-dropped chunks: schema, table, slices as `{"column": [start, end]}`.
// language=PostgreSQL
pub const CHUNKS_OF_HYPERTABLE: Variants = chunk_sql!(
    "\
SELECT c.schema_name::text, c.table_name::text,
       (SELECT jsonb_object_agg(d.column_name, jsonb_build_array(s.range_start, s.range_end))
        FROM slice_v s
        JOIN _timescaledb_catalog.dimension d ON d.id = s.dimension_id
        WHERE s.chunk_id = c.id)
FROM chunk_v c
JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id
WHERE h.schema_name = $1 AND h.table_name = $2"
);

/// Either side. $1 = chunk schema, $2 = chunk table. True when the chunk is in
/// the catalog, not dropped, and its table exists.
// language=PostgreSQL
pub const CHUNK_EXISTS: Variants = chunk_sql!(
    "\
SELECT EXISTS (
    SELECT 1 FROM chunk_v c
    WHERE c.schema_name = $1 AND c.table_name = $2
      AND to_regclass(format('%I.%I', c.schema_name, c.table_name)) IS NOT NULL)"
);

/// Either side. $1 = quoted qualified name. True when the relation exists.
// language=PostgreSQL
pub const RELATION_EXISTS: &str = "SELECT to_regclass($1::text) IS NOT NULL";

/// Either side. $1 = quoted qualified relation name. Its live columns in
/// attribute order: name, `format_type` of the type, the type's schema,
/// whether binary COPY cannot carry it between two databases (no send/receive
/// function, a composite, or an array of a composite or of a type created in
/// the database, whose binary form embeds OIDs that differ between databases),
/// the functions that write and read its binary form (of the base type,
/// and of the element type for an array): two servers whose functions differ
/// (say, across PostgreSQL majors) exchange that column as text; and whether
/// it is a generated column (`GENERATED ALWAYS AS (...) STORED`, or VIRTUAL
/// from PostgreSQL 18), which COPY FROM cannot write.
// language=PostgreSQL
pub const RELATION_COLUMNS: &str = "\
SELECT a.attname::text,
       format_type(a.atttypid, a.atttypmod),
       tn.nspname::text,
       (b.typsend = 0 OR b.typreceive = 0 OR b.typtype = 'c'
        OR (b.typcategory = 'A' AND (e.oid >= 16384 OR e.typtype = 'c'))) AS needs_text,
       concat_ws(' ', b.typsend::text, b.typreceive::text, e.typsend::text, e.typreceive::text),
       a.attgenerated <> '' AS generated
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_namespace tn ON tn.oid = t.typnamespace
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type e ON e.oid = b.typelem AND b.typcategory = 'A'
WHERE a.attrelid = to_regclass($1::text) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

/// Either side. $1 = quoted relation name (a hypertable, a chunk, or, before
/// TimescaleDB 2.19, a compressed chunk: the key of per-chunk settings moved).
/// Its compression settings: segmentby, orderby, orderby_desc, orderby_nullsfirst.
// language=PostgreSQL
pub const COMPRESSION_SETTINGS: &str = "\
SELECT coalesce(segmentby, '{}')::text[], coalesce(orderby, '{}')::text[],
       coalesce(orderby_desc, '{}')::bool[], coalesce(orderby_nullsfirst, '{}')::bool[]
FROM _timescaledb_catalog.compression_settings
WHERE relid = to_regclass($1::text)";
