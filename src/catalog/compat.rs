//! Everything that differs between TimescaleDB releases, in one place.
//!
//! [`Features`] is built once per side from the extension's version
//! ([`Features::for_version`]) and passed down with the side's
//! [`Extension`](super::Extension); nothing else in the crate compares
//! TimescaleDB versions. Where the SQL differs, each release family has its
//! own statement text, picked by a `match` on a [`Features`] field.
//!
//! | release | what changed in TimescaleDB | what hyperfill does |
//! |---|---|---|
//! | 2.16 | oldest supported. `chunk` has `schema_name`, `table_name`, `compressed_chunk_id` and `dropped`; slices are shared between chunks and reached through the `chunk_constraint` table; compressed chunks are chunks of an internal compressed hypertable (`compression_state = 2`); a row trigger on every chunk logs cagg invalidations; per-chunk compression settings are keyed by the *compressed* chunk | [`ChunkCatalog::V2_16`]; [`SettingsKey::CompressedChunk`]; [`Invalidations::Trigger`]; internal compressed hypertables are never selected |
//! | 2.19 | `compression_settings` keyed by the chunk itself, with `compress_relid` | [`SettingsKey::Chunk`] |
//! | 2.22 | UUIDv7 time dimensions; `timescaledb.enable_direct_compress_copy` (COPY into a hypertable may write compressed batches directly) | stage refuses hypertables partitioned by a uuid (naming them, `commands/bounds.rs`); [`Features::direct_compress_copy_setting`]: set off in every copy transaction |
//! | 2.23 | invalidations recorded in C for every write, no trigger; a COPY into a chunk goes through TimescaleDB's own COPY path (which refuses frozen chunks and may compress directly) | [`Invalidations::Recorded`]: `timescaledb.restoring` around direct writes when the role may set it; a frozen target chunk (status bit 4, carried over by pg_dump from a frozen source chunk) is unfrozen for the task's transaction and frozen again before commit (`copy/mod.rs`, every release) |
//! | 2.25 | `continuous_agg.finalized` removed: old-format (non-finalized) caggs no longer exist | [`Features::old_format_caggs`]: `check` looks for them only before 2.25 |
//! | 2.26 | `chunk.dropped` removed (dropped chunks are deleted from the catalog) | [`ChunkCatalog::V2_26`] |
//! | 2.28 | `dimension_slice` per chunk (`chunk_id` column); `chunk_constraint` becomes a compatibility view; `timescaledb.skip_cagg_invalidation` (a `SET LOCAL` for migration tools) | [`ChunkCatalog::V2_28`]: slices by `dimension_slice.chunk_id`; [`Invalidations::Skip`]: `SET LOCAL timescaledb.skip_cagg_invalidation = on`, no privilege needed |
//! | 2.29 | `chunk` keyed by `relid regclass` (no names, no `compressed_chunk_id`); compressed data in a standalone `<chunk>_compressed` relation found through `compression_settings` (`relid` → `compress_relid`); no internal compressed hypertable; hypertable `status` carries the compression (4) and `direct_compress` (8) bits | [`ChunkCatalog::V2_29`]; [`Features::direct_compress_option`]: COPYs into a hypertable with `direct_compress` run with `timescaledb.enable_optimizations` off (row by row, never compressed on the way in) |
//! | 2.29.1 | hypertable ownership required for `create_compressed_chunk`, `drop_chunk`, `freeze_chunk` and the like | nothing new: the target role must own the hypertables anyway (`create_chunk`, `compress_chunk`, `decompress_chunk`, and `freeze_chunk` for a frozen chunk) |
//!
//! The copy also depends on the PostgreSQL majors of the two sides, not on
//! TimescaleDB: see `catalog::columns` (binary or text COPY per type).

use std::ops::RangeInclusive;

use super::Version;

/// The PostgreSQL majors a TimescaleDB release runs on, as each release's
/// `src/compat/compat.h` accepts them (read for 2.16.1, 2.19.3, 2.22.1,
/// 2.25.2, 2.28.3 and 2.29.2; the releases between are given the narrower
/// of their neighbours' ranges, so a fix we propose always exists).
/// 2.29 also accepts 19, not yet released.
pub fn postgres_majors(v: Version) -> RangeInclusive<u32> {
    if v >= Version(2, 29, 0) {
        16..=18
    } else if v >= Version(2, 22, 0) {
        15..=18
    } else if v >= Version(2, 20, 0) {
        15..=17
    } else {
        14..=17
    }
}

/// The shape of the chunk catalog: how chunks, their names, their
/// compressed relation and their dimension slices are found.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkCatalog {
    /// 2.16 – 2.25: names in `chunk`, `dropped` flag, `chunk_constraint` table.
    V2_16,
    /// 2.26 – 2.27: no `dropped` flag.
    V2_26,
    /// 2.28: slices carry their `chunk_id`.
    V2_28,
    /// 2.29 and later: `chunk.relid`, compressed relation via `compression_settings`.
    V2_29,
}

/// One statement in each chunk-catalog shape. Built with [`chunk_sql!`].
#[allow(non_snake_case)]
#[derive(Debug, Clone, Copy)]
pub struct Variants {
    pub V2_16: &'static str,
    pub V2_26: &'static str,
    pub V2_28: &'static str,
    pub V2_29: &'static str,
}

impl Variants {
    /// Every variant, for the test that prepares each statement.
    pub fn all(&self) -> [&'static str; 4] {
        [self.V2_16, self.V2_26, self.V2_28, self.V2_29]
    }
}

impl ChunkCatalog {
    /// The statement text for this catalog shape.
    pub fn sql(self, v: &Variants) -> &'static str {
        match self {
            ChunkCatalog::V2_16 => v.V2_16,
            ChunkCatalog::V2_26 => v.V2_26,
            ChunkCatalog::V2_28 => v.V2_28,
            ChunkCatalog::V2_29 => v.V2_29,
        }
    }
}

/// Where per-chunk compression settings are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingsKey {
    /// Before 2.19: under the compressed chunk's relid.
    CompressedChunk,
    /// From 2.19: under the chunk's relid.
    Chunk,
}

/// How TimescaleDB records continuous-aggregate invalidations, and which
/// way of keeping a backfill's writes out of them exists (`copy::invalidation`
/// decides per role).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidations {
    /// Before 2.23: the `ts_cagg_invalidation_trigger` row trigger on each chunk.
    Trigger,
    /// 2.23 – 2.27: recorded in C; only `timescaledb.restoring` bypasses it.
    Recorded,
    /// From 2.28: recorded in C; `timescaledb.skip_cagg_invalidation` turns it off.
    Skip,
}

/// What one side's TimescaleDB release needs, decided once from its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub chunk_catalog: ChunkCatalog,
    pub settings_key: SettingsKey,
    pub invalidations: Invalidations,
    /// 2.22+: `timescaledb.enable_direct_compress_copy` exists.
    pub direct_compress_copy_setting: bool,
    /// 2.29+: hypertables may have the `direct_compress` option (status bit 8).
    pub direct_compress_option: bool,
    /// 2.22+: a hypertable may be partitioned by a UUIDv7 column.
    pub uuid_time_dimension: bool,
    /// Before 2.25: continuous aggregates may still be in the old,
    /// non-finalized format (`continuous_agg.finalized`).
    pub old_format_caggs: bool,
}

impl Features {
    pub fn for_version(v: Version) -> Self {
        let at_least = |major, minor| v >= Version(major, minor, 0);
        Features {
            chunk_catalog: if at_least(2, 29) {
                ChunkCatalog::V2_29
            } else if at_least(2, 28) {
                ChunkCatalog::V2_28
            } else if at_least(2, 26) {
                ChunkCatalog::V2_26
            } else {
                ChunkCatalog::V2_16
            },
            settings_key: if at_least(2, 19) {
                SettingsKey::Chunk
            } else {
                SettingsKey::CompressedChunk
            },
            invalidations: if at_least(2, 28) {
                Invalidations::Skip
            } else if at_least(2, 23) {
                Invalidations::Recorded
            } else {
                Invalidations::Trigger
            },
            direct_compress_copy_setting: at_least(2, 22),
            direct_compress_option: at_least(2, 29),
            uuid_time_dimension: at_least(2, 22),
            old_format_caggs: !at_least(2, 25),
        }
    }

    /// The statement for this side's chunk catalog.
    pub fn sql(&self, v: &Variants) -> &'static str {
        self.chunk_catalog.sql(v)
    }

    /// `SET LOCAL` statements every copy transaction runs on the target so
    /// that nothing TimescaleDB does on its own changes what lands or the
    /// chunk's final state.
    pub fn copy_settings(&self) -> Option<&'static str> {
        self.direct_compress_copy_setting
            .then_some(SET_NO_DIRECT_COMPRESS_COPY)
    }
}

/// Target, 2.22+: COPY never writes compressed batches on its own.
// language=PostgreSQL
pub const SET_NO_DIRECT_COMPRESS_COPY: &str =
    "SET LOCAL timescaledb.enable_direct_compress_copy = off";

/// Target, 2.29+. $1 = hypertable schema, $2 = hypertable table. Whether it
/// has the `direct_compress` option (hypertable status bit 8), which makes
/// TimescaleDB's COPY write compressed batches whatever the setting above says.
// language=PostgreSQL
pub const HYPERTABLE_DIRECT_COMPRESS: &str = "\
SELECT coalesce((SELECT h.status & 8 <> 0 FROM _timescaledb_catalog.hypertable h
                 WHERE h.schema_name = $1 AND h.table_name = $2), false)";

/// Target, 2.29+, for a hypertable with `direct_compress`: TimescaleDB's COPY
/// then inserts row by row (its only path that never compresses).
// language=PostgreSQL
pub const SET_NO_COPY_OPTIMIZATIONS: &str = "SET LOCAL timescaledb.enable_optimizations = off";

// The chunk catalog as two views with the same columns in every release,
// inlined by the planner (NOT MATERIALIZED) so lookups by name or id use
// the catalog's own indexes:
//
// * `chunk_v`: `id`, `hypertable_id`, `schema_name`, `table_name` (type
//   `name`), `status`, `osm_chunk`, `compressed_schema`, `compressed_name`
//   (NULL when the chunk is not compressed). Dropped chunks (before 2.26)
//   are left out. Before 2.29 it also lists the chunks of internal
//   compressed hypertables, which no user hypertable owns.
// * `slice_v`: `chunk_id`, `slice_id`, `dimension_id`, `range_start`, `range_end`.
//
// The pieces the four shapes are made of:

/// `chunk_v` before 2.29: chunks by name, the compressed chunk a chunk row
/// of its own. `$filter` is empty, or a WHERE that leaves dropped chunks out.
macro_rules! chunk_v_by_name {
    ($filter:expr) => {
        concat!(
            "\
chunk_v AS NOT MATERIALIZED (
    SELECT c.id, c.hypertable_id, c.schema_name, c.table_name, c.status, c.osm_chunk,
           cc.schema_name AS compressed_schema, cc.table_name AS compressed_name
    FROM _timescaledb_catalog.chunk c
    LEFT JOIN _timescaledb_catalog.chunk cc ON cc.id = c.compressed_chunk_id",
            $filter,
            "
)"
        )
    };
}

/// `chunk_v` from 2.29: chunks by `relid`, the compressed relation found
/// through `compression_settings`.
macro_rules! chunk_v_by_relid {
    () => {
        "\
chunk_v AS NOT MATERIALIZED (
    SELECT c.id, c.hypertable_id, n.nspname AS schema_name, r.relname AS table_name,
           c.status, c.osm_chunk,
           cn.nspname AS compressed_schema, cr.relname AS compressed_name
    FROM _timescaledb_catalog.chunk c
    JOIN pg_class r ON r.oid = c.relid
    JOIN pg_namespace n ON n.oid = r.relnamespace
    LEFT JOIN _timescaledb_catalog.compression_settings s ON s.relid = c.relid
    LEFT JOIN pg_class cr ON cr.oid = s.compress_relid
    LEFT JOIN pg_namespace cn ON cn.oid = cr.relnamespace
)"
    };
}

/// `slice_v` before 2.28: slices shared between chunks, linked by `chunk_constraint`.
macro_rules! slice_v_via_constraint {
    () => {
        "\
slice_v AS NOT MATERIALIZED (
    SELECT x.chunk_id, ds.id AS slice_id, ds.dimension_id, ds.range_start, ds.range_end
    FROM _timescaledb_catalog.chunk_constraint x
    JOIN _timescaledb_catalog.dimension_slice ds ON ds.id = x.dimension_slice_id
)"
    };
}

/// `slice_v` from 2.28: one slice per chunk and dimension, with its `chunk_id`.
macro_rules! slice_v_per_chunk {
    () => {
        "\
slice_v AS NOT MATERIALIZED (
    SELECT ds.chunk_id, ds.id AS slice_id, ds.dimension_id, ds.range_start, ds.range_end
    FROM _timescaledb_catalog.dimension_slice ds
)"
    };
}

// The four shapes: which pieces each release uses.
macro_rules! chunk_views_2_16 {
    () => {
        concat!(
            chunk_v_by_name!("\n    WHERE NOT c.dropped"),
            ",\n",
            slice_v_via_constraint!()
        )
    };
}
macro_rules! chunk_views_2_26 {
    () => {
        concat!(chunk_v_by_name!(""), ",\n", slice_v_via_constraint!())
    };
}
macro_rules! chunk_views_2_28 {
    () => {
        concat!(chunk_v_by_name!(""), ",\n", slice_v_per_chunk!())
    };
}
macro_rules! chunk_views_2_29 {
    () => {
        concat!(chunk_v_by_relid!(), ",\n", slice_v_per_chunk!())
    };
}

/// A statement over `chunk_v` and `slice_v`, in every chunk-catalog shape.
/// `chunk_sql!(body)` for a plain SELECT, `chunk_sql!(ctes: more, body)`
/// when the statement has CTEs of its own (`more` starts with the first
/// CTE's name; the WITH is RECURSIVE so they may refer to themselves).
macro_rules! chunk_sql {
    (ctes: $ctes:expr, $body:expr) => {
        $crate::catalog::compat::Variants {
            V2_16: concat!("WITH RECURSIVE\n", chunk_views_2_16!(), ",\n", $ctes, $body),
            V2_26: concat!("WITH RECURSIVE\n", chunk_views_2_26!(), ",\n", $ctes, $body),
            V2_28: concat!("WITH RECURSIVE\n", chunk_views_2_28!(), ",\n", $ctes, $body),
            V2_29: concat!("WITH RECURSIVE\n", chunk_views_2_29!(), ",\n", $ctes, $body),
        }
    };
    ($body:expr) => {
        $crate::catalog::compat::Variants {
            V2_16: concat!("WITH\n", chunk_views_2_16!(), "\n", $body),
            V2_26: concat!("WITH\n", chunk_views_2_26!(), "\n", $body),
            V2_28: concat!("WITH\n", chunk_views_2_28!(), "\n", $body),
            V2_29: concat!("WITH\n", chunk_views_2_29!(), "\n", $body),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_release_gets_its_catalog() {
        let f = |s: &str| Features::for_version(Version::parse(s).unwrap());
        assert_eq!(f("2.16.1").chunk_catalog, ChunkCatalog::V2_16);
        assert_eq!(f("2.25.2").chunk_catalog, ChunkCatalog::V2_16);
        assert_eq!(f("2.26.0").chunk_catalog, ChunkCatalog::V2_26);
        assert_eq!(f("2.27.1").chunk_catalog, ChunkCatalog::V2_26);
        assert_eq!(f("2.28.3").chunk_catalog, ChunkCatalog::V2_28);
        assert_eq!(f("2.29.0-dev").chunk_catalog, ChunkCatalog::V2_29);
        assert_eq!(f("2.29.2").chunk_catalog, ChunkCatalog::V2_29);
        assert_eq!(f("2.18.2").settings_key, SettingsKey::CompressedChunk);
        assert_eq!(f("2.19.3").settings_key, SettingsKey::Chunk);
        assert_eq!(f("2.22.1").invalidations, Invalidations::Trigger);
        assert_eq!(f("2.23.0").invalidations, Invalidations::Recorded);
        assert_eq!(f("2.28.3").invalidations, Invalidations::Skip);
        assert_eq!(f("2.21.4").copy_settings(), None);
        assert!(f("2.22.1").copy_settings().is_some());
        assert!(!f("2.28.3").direct_compress_option);
        assert!(f("2.29.2").direct_compress_option);
    }

    #[test]
    fn variants_differ_only_in_the_views() {
        let v = chunk_sql!("SELECT count(*) FROM chunk_v");
        assert!(v.V2_16.contains("NOT c.dropped"));
        assert!(!v.V2_26.contains("dropped"));
        assert!(v.V2_26.contains("chunk_constraint"));
        assert!(!v.V2_28.contains("chunk_constraint"));
        assert!(v.V2_29.contains("c.relid") && !v.V2_29.contains("compressed_chunk_id"));
        for s in v.all() {
            assert!(s.ends_with("SELECT count(*) FROM chunk_v"));
        }
    }
}
