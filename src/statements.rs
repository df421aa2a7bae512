//! The registry of embedded statements that read TimescaleDB's catalog or
//! set its settings, each as the given release runs it. The integration test
//! `statements` prepares every one against the running server (our stand-in
//! for compile-time query checking), so a catalog change in a new release
//! shows up as a failing test naming the statement, not as a user's error.
//!
//! Statements built at run time (with quoted identifiers) and the queue's own
//! statements (which do not depend on the release) are not listed.

use crate::catalog::compat::{self, Invalidations};
use crate::catalog::{sql, Features};
use crate::{caggs, check, commands, copy, verify};

/// How the test checks a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Parse and describe it (`PREPARE`), which resolves every table,
    /// column, function and parameter type.
    Prepare,
    /// Run it inside a transaction that is rolled back (`SET LOCAL`
    /// cannot be prepared).
    RunAndRollBack,
}

/// Every listed statement for a release: name, SQL, how to check it.
pub fn for_release(f: &Features) -> Vec<(&'static str, &'static str, Check)> {
    use Check::*;
    let mut v = vec![
        ("catalog::EXTENSION", sql::EXTENSION, Prepare),
        ("catalog::VALIDATE_REGEX", sql::VALIDATE_REGEX, Prepare),
        (
            "catalog::SELECTED_HYPERTABLES",
            sql::SELECTED_HYPERTABLES,
            Prepare,
        ),
        (
            "catalog::SOURCE_CHUNKS",
            f.sql(&sql::SOURCE_CHUNKS),
            Prepare,
        ),
        (
            "catalog::CHUNKS_OF_HYPERTABLE",
            f.sql(&sql::CHUNKS_OF_HYPERTABLE),
            Prepare,
        ),
        ("catalog::CHUNK_EXISTS", f.sql(&sql::CHUNK_EXISTS), Prepare),
        ("catalog::RELATION_EXISTS", sql::RELATION_EXISTS, Prepare),
        ("catalog::RELATION_COLUMNS", sql::RELATION_COLUMNS, Prepare),
        (
            "catalog::COMPRESSION_SETTINGS",
            sql::COMPRESSION_SETTINGS,
            Prepare,
        ),
        (
            "copy::compressed::CHUNK_STATE",
            f.sql(&copy::compressed::CHUNK_STATE),
            Prepare,
        ),
        (
            "copy::target_chunk::CHUNK_SLICES",
            f.sql(&copy::target_chunk::CHUNK_SLICES),
            Prepare,
        ),
        (
            "copy::target_chunk::CHUNK_BY_SLICES",
            f.sql(&copy::target_chunk::CHUNK_BY_SLICES),
            Prepare,
        ),
        (
            "copy::invalidation::USER_TRIGGERS",
            copy::invalidation::USER_TRIGGERS,
            Prepare,
        ),
        ("caggs::SOURCE_CAGGS", caggs::SOURCE_CAGGS, Prepare),
        ("caggs::TARGET_CAGGS", caggs::TARGET_CAGGS, Prepare),
        ("check::SCHEDULED_JOBS", check::SCHEDULED_JOBS, Prepare),
        ("check::TABLESPACES", check::TABLESPACES, Prepare),
        ("check::METADATA_UUID", check::METADATA_UUID, Prepare),
        ("check::TABLE_PRIVILEGES", check::TABLE_PRIVILEGES, Prepare),
        ("check::CAN_CREATE_QUEUE", check::CAN_CREATE_QUEUE, Prepare),
        ("check::HYPERTABLE_SIZE", check::HYPERTABLE_SIZE, Prepare),
        ("check::SESSION_SSL", check::SESSION_SSL, Prepare),
        ("check::STANDBY_STATE", check::STANDBY_STATE, Prepare),
        (
            "check::NEWEST_COMPRESSED_CHUNK",
            check::NEWEST_COMPRESSED_CHUNK,
            Prepare,
        ),
        ("check::SESSION_TIMEOUTS", check::SESSION_TIMEOUTS, Prepare),
        (
            "commands::left_behind::SOURCE_INVENTORY",
            commands::left_behind::SOURCE_INVENTORY,
            Prepare,
        ),
        (
            "commands::stage::IS_HYPERTABLE",
            commands::stage::IS_HYPERTABLE,
            Prepare,
        ),
        (
            "commands::stage::STANDBY_REPLAYED",
            commands::stage::STANDBY_REPLAYED,
            Prepare,
        ),
        (
            "commands::stage::NOT_OWNED",
            commands::stage::NOT_OWNED,
            Prepare,
        ),
        (
            "commands::stage::NOT_READABLE",
            commands::stage::NOT_READABLE,
            Prepare,
        ),
        ("copy::CAGG_WATERMARK", copy::CAGG_WATERMARK, Prepare),
        (
            "verify::cagg::BUCKET_COLUMN",
            verify::cagg::BUCKET_COLUMN,
            Prepare,
        ),
    ];
    if f.invalidations != Invalidations::Skip {
        v.push((
            "copy::invalidation::CAPABILITIES",
            copy::invalidation::CAPABILITIES,
            Prepare,
        ));
    } else {
        v.push((
            "copy::invalidation::SET_SKIP",
            copy::invalidation::SET_SKIP,
            RunAndRollBack,
        ));
    }
    if f.old_format_caggs {
        v.push(("check::PARTIAL_CAGGS", check::PARTIAL_CAGGS, Prepare));
    }
    if let Some(s) = f.copy_settings() {
        v.push(("compat::copy_settings", s, RunAndRollBack));
    }
    if f.direct_compress_option {
        v.push((
            "compat::HYPERTABLE_DIRECT_COMPRESS",
            compat::HYPERTABLE_DIRECT_COMPRESS,
            Prepare,
        ));
        v.push((
            "compat::SET_NO_COPY_OPTIMIZATIONS",
            compat::SET_NO_COPY_OPTIMIZATIONS,
            RunAndRollBack,
        ));
    }
    v
}
