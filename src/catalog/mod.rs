//! Read-only TimescaleDB introspection. Nothing in this module writes.

mod columns;
#[macro_use]
pub mod compat;
pub(crate) mod sql;

pub use columns::{
    column_differences, hypertable_columns, relation_columns, text_copy_needed, Column,
};
pub use compat::Features;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::ident::QualifiedName;

/// The oldest TimescaleDB release hyperfill knows the catalog of.
pub const MIN_SUPPORTED: Version = Version(2, 16, 0);

/// A TimescaleDB version, from `pg_extension.extversion` (`2.19.3`, `2.20.0-dev`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(text: &str) -> Option<Self> {
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next().unwrap_or(Some(0))?;
        let patch = parts.next().unwrap_or(Some(0))?;
        Some(Version(major, minor, patch))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// What one side runs: the extension's version text, the schema it lives in,
/// and where its internal functions are.
#[derive(Debug, Clone)]
pub struct Extension {
    pub version_text: String,
    pub version: Version,
    pub schema: String,
    /// `_timescaledb_functions` (2.12 and later).
    pub functions_schema: String,
    /// `timescale` or `apache`.
    pub license: String,
    /// What this release needs (see `compat.rs`).
    pub features: Features,
    /// The server's PostgreSQL version (`17.11`) and major (17).
    pub postgres_version: String,
    pub postgres_major: u32,
}

impl Extension {
    /// Whether TimescaleDB's community features (compression, continuous
    /// aggregates, `create_chunk`) are available.
    pub fn is_community(&self) -> bool {
        self.license == "timescale"
    }
}

/// Read the timescaledb extension of one side.
pub async fn extension(db: &Db) -> Result<Extension> {
    match extension_opt(db).await? {
        Some(e) => Ok(e),
        None => Err(Error::Precondition {
            side: db.side,
            message: "the timescaledb extension is not installed in this database. \
                 Connect to the database that holds the hypertables, or run \
                 `CREATE EXTENSION timescaledb` there (on the target, restore the \
                 source's schema with pg_dump first)"
                .to_string(),
        }),
    }
}

/// Read the timescaledb extension of one side; `None` when the database
/// does not have it.
pub async fn extension_opt(db: &Db) -> Result<Option<Extension>> {
    let row = db
        .query_opt(sql::EXTENSION, &[], "reading the timescaledb extension")
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let version_text: String = row.get(0);
    let schema: String = row.get(1);
    let functions_schema: String = row.get(2);
    let license: String = row.get(3);
    let postgres_version: String = row.get(4);
    let postgres_major = (row.get::<_, i32>(5) / 10000).max(0) as u32;
    let version = Version::parse(&version_text).ok_or_else(|| Error::Precondition {
        side: db.side,
        message: format!("cannot understand the timescaledb version '{version_text}'"),
    })?;
    Ok(Some(Extension {
        version_text,
        version,
        schema,
        functions_schema,
        license,
        features: Features::for_version(version),
        postgres_version,
        postgres_major,
    }))
}

/// Source and target must run exactly the same TimescaleDB release (the
/// PostgreSQL majors may differ).
pub fn ensure_compatible(source: &Extension, target: &Extension) -> Result<()> {
    if source.version_text != target.version_text {
        return Err(Error::Incompatible(format!(
            "TimescaleDB versions differ: source runs {s} (PostgreSQL {sp}), target runs {t} \
             (PostgreSQL {tp}). They must be exactly the same. Fix: {fix}. Nothing was changed.",
            s = source.version_text,
            t = target.version_text,
            sp = source.postgres_version,
            tp = target.postgres_version,
            fix = version_fix(source, target),
        )));
    }
    if source.version < MIN_SUPPORTED {
        return Err(Error::Incompatible(format!(
            "TimescaleDB {} is older than the oldest release hyperfill supports ({}). \
             Update the extension on both sides first. Nothing was changed.",
            source.version_text, MIN_SUPPORTED
        )));
    }
    Ok(())
}

/// A way to put both sides on the same TimescaleDB release that exists:
/// only releases the side's PostgreSQL major can run are proposed
/// ([`compat::postgres_majors`]).
pub fn version_fix(s: &Extension, t: &Extension) -> String {
    let runs = |v: Version, pg: u32| compat::postgres_majors(v).contains(&pg);
    let (sv, tv) = (&s.version_text, &t.version_text);
    let (sp, tp) = (s.postgres_major, t.postgres_major);
    let mut fixes = Vec::new();
    if runs(s.version, tp) {
        fixes.push(if s.version > t.version {
            format!(
                "install TimescaleDB {sv} for PostgreSQL {tp} on the target server and run \
                 `ALTER EXTENSION timescaledb UPDATE TO '{sv}';` in the target database as the \
                 first command of a fresh session (psql -X)"
            )
        } else {
            format!(
                "install TimescaleDB {sv} for PostgreSQL {tp} on the target server, create the \
                 target database again with `CREATE EXTENSION timescaledb VERSION '{sv}';` and \
                 restore the schema into it (an extension cannot be downgraded in place)"
            )
        });
    }
    if t.version > s.version && runs(t.version, sp) {
        fixes.push(format!(
            "or install TimescaleDB {tv} for PostgreSQL {sp} on the source server and run \
             `ALTER EXTENSION timescaledb UPDATE TO '{tv}';` in the source database as the first \
             command of a fresh session (psql -X); the application's dual writes need it too"
        ));
    }
    if fixes.is_empty() {
        let range = |v: Version| {
            let r = compat::postgres_majors(v);
            format!("{}-{}", r.start(), r.end())
        };
        fixes.push(format!(
            "TimescaleDB {sv} runs on PostgreSQL {} only, so the target (PostgreSQL {tp}) cannot \
             run it{}; give the target a PostgreSQL major that runs {sv}, or upgrade the \
             source's PostgreSQL first",
            range(s.version),
            if t.version > s.version {
                format!(
                    ", and {tv} (PostgreSQL {}) cannot run on the source",
                    range(t.version)
                )
            } else {
                String::new()
            }
        ));
    }
    fixes.join("; ")
}

/// The time type of a hypertable's first open (time) dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum TimeType {
    TimestampTz,
    Timestamp,
    Date,
    SmallInt,
    Int,
    BigInt,
}

impl TimeType {
    /// From `format_type()` of the dimension's column type.
    pub fn from_pg(name: &str) -> Option<Self> {
        Some(match name {
            "timestamp with time zone" | "timestamptz" => TimeType::TimestampTz,
            "timestamp without time zone" | "timestamp" => TimeType::Timestamp,
            "date" => TimeType::Date,
            "smallint" | "int2" => TimeType::SmallInt,
            "integer" | "int4" | "int" => TimeType::Int,
            "bigint" | "int8" => TimeType::BigInt,
            _ => return None,
        })
    }

    /// The type's SQL name, safe to splice into a cast.
    pub fn sql(self) -> &'static str {
        match self {
            TimeType::TimestampTz => "timestamptz",
            TimeType::Timestamp => "timestamp",
            TimeType::Date => "date",
            TimeType::SmallInt => "smallint",
            TimeType::Int => "integer",
            TimeType::BigInt => "bigint",
        }
    }

    pub fn is_integer(self) -> bool {
        matches!(self, TimeType::SmallInt | TimeType::Int | TimeType::BigInt)
    }
}

/// One dimension slice of a chunk, in TimescaleDB's internal int64 form.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Slice {
    pub column: String,
    pub start: i64,
    pub end: i64,
}

/// A source chunk as the catalog describes it.
#[derive(Debug, Clone)]
pub struct SourceChunk {
    pub hypertable: QualifiedName,
    /// The continuous aggregate's view, when the hypertable materializes one.
    pub cagg: Option<QualifiedName>,
    pub chunk: QualifiedName,
    pub compressed_chunk: Option<QualifiedName>,
    pub time_column: String,
    /// `format_type()` of the time column's type.
    pub time_type_name: String,
    pub time_start: i64,
    pub time_end: i64,
    /// Every dimension's slice, sorted by column name.
    pub slices: Vec<Slice>,
    /// The table data (heap and TOAST, no indexes) of the chunk and of its
    /// compressed chunk: roughly what COPY reads.
    pub size_bytes: i64,
}

/// A hypertable selected by the filter, whether or not it has chunks.
#[derive(Debug, Clone)]
pub struct SelectedHypertable {
    pub hypertable: QualifiedName,
    pub cagg: Option<QualifiedName>,
    pub time_column: String,
    pub time_type_name: String,
}

/// Filter options of `stage`.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub filter: Option<String>,
    pub cascade_up: bool,
    pub cascade_down: bool,
}

/// Check a user regex on the server that will evaluate it.
pub async fn validate_regex(db: &Db, regex: &str) -> Result<()> {
    match db.try_query_one(sql::VALIDATE_REGEX, &[&regex]).await {
        Ok(_) => Ok(()),
        Err(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_REGULAR_EXPRESSION) =>
        {
            Err(Error::InvalidArgument(format!(
                "--filter '{regex}' is not a valid regular expression: {}",
                crate::error::pg_text(&e)
            )))
        }
        Err(e) => Err(Error::db(
            db.side,
            "checking the --filter regular expression",
            e,
        )),
    }
}

/// The hypertables (and continuous-aggregate materializations) the selection matches.
pub async fn selected_hypertables(db: &Db, sel: &Selection) -> Result<Vec<SelectedHypertable>> {
    let rows = db
        .query(
            sql::SELECTED_HYPERTABLES,
            &[&sel.filter, &sel.cascade_up, &sel.cascade_down],
            "reading hypertables from the TimescaleDB catalog",
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SelectedHypertable {
            hypertable: QualifiedName::from_row(r, 0),
            cagg: opt_name(r.get(2), r.get(3)),
            time_column: r.get(4),
            time_type_name: r.get(5),
        })
        .collect())
}

/// Every non-dropped chunk of the selected hypertables, newest first.
pub async fn source_chunks(
    db: &Db,
    features: &Features,
    sel: &Selection,
) -> Result<Vec<SourceChunk>> {
    let rows = db
        .query(
            features.sql(&sql::SOURCE_CHUNKS),
            &[&sel.filter, &sel.cascade_up, &sel.cascade_down],
            "reading chunks from the TimescaleDB catalog",
        )
        .await?;
    rows.iter()
        .map(|r| {
            let slices_json: serde_json::Value = r.get(11);
            Ok(SourceChunk {
                hypertable: QualifiedName::from_row(r, 0),
                cagg: opt_name(r.get(2), r.get(3)),
                time_column: r.get(4),
                time_type_name: r.get(5),
                chunk: QualifiedName::from_row(r, 6),
                compressed_chunk: opt_name(r.get(8), r.get(9)),
                time_start: r.get::<_, i64>(10),
                time_end: r.get::<_, i64>(12),
                slices: parse_slices(&slices_json)?,
                size_bytes: r.get(13),
            })
        })
        .collect()
}

/// Chunks of one target hypertable, keyed by their slices.
pub async fn target_chunks_by_slices(
    db: &Db,
    features: &Features,
    hypertable: &QualifiedName,
) -> Result<Vec<(Vec<Slice>, QualifiedName)>> {
    let rows = db
        .query(
            features.sql(&sql::CHUNKS_OF_HYPERTABLE),
            &[&hypertable.schema, &hypertable.name],
            &format!("reading the chunks of {hypertable}"),
        )
        .await?;
    rows.iter()
        .map(|r| {
            let slices_json: serde_json::Value = r.get(2);
            Ok((parse_slices(&slices_json)?, QualifiedName::from_row(r, 0)))
        })
        .collect()
}

/// Whether a chunk still exists and is not marked dropped.
pub async fn chunk_exists(db: &Db, features: &Features, chunk: &QualifiedName) -> Result<bool> {
    let row = db
        .query_one(
            features.sql(&sql::CHUNK_EXISTS),
            &[&chunk.schema, &chunk.name],
            &format!("looking up chunk {chunk}"),
        )
        .await?;
    Ok(row.get(0))
}

/// Whether a (regular) relation of that name exists.
pub async fn relation_exists(db: &Db, rel: &QualifiedName) -> Result<bool> {
    let row = db
        .query_one(
            sql::RELATION_EXISTS,
            &[&rel.sql()],
            &format!("looking up {rel}"),
        )
        .await?;
    Ok(row.get(0))
}

/// How a hypertable or chunk is compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionSettings {
    pub segmentby: Vec<String>,
    pub orderby: Vec<String>,
    pub orderby_desc: Vec<bool>,
    pub orderby_nullsfirst: Vec<bool>,
}

impl CompressionSettings {
    /// The settings as `ALTER TABLE ... SET (...)` options.
    pub fn as_options(&self) -> String {
        let orderby: Vec<String> = self
            .orderby
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let desc = self.orderby_desc.get(i).copied().unwrap_or(false);
                let nf = self.orderby_nullsfirst.get(i).copied().unwrap_or(false);
                let mut s = crate::ident::quote_ident(c);
                s.push_str(if desc { " DESC" } else { " ASC" });
                if nf != desc {
                    s.push_str(if nf { " NULLS FIRST" } else { " NULLS LAST" });
                }
                s
            })
            .collect();
        let segmentby: Vec<String> = self
            .segmentby
            .iter()
            .map(|c| crate::ident::quote_ident(c))
            .collect();
        format!(
            "timescaledb.compress_segmentby = '{}', timescaledb.compress_orderby = '{}'",
            segmentby.join(", ").replace('\'', "''"),
            orderby.join(", ").replace('\'', "''")
        )
    }
}

/// Said beside a difference in compression settings when the target
/// hypertable sets no order: the source's chunk got TimescaleDB's default
/// order when it was compressed (pg_dump carries none), which the target's
/// chunks need not get.
pub fn default_order_note(target: Option<&CompressionSettings>) -> &'static str {
    match target {
        Some(t) if t.as_options().contains("compress_orderby = ''") => {
            " (the source's chunk got its order from TimescaleDB's default when it was \
             compressed; the target hypertable has no order set, and its chunks could be \
             compressed in another)"
        }
        _ => "",
    }
}

/// The compression settings recorded for the first of `rels` that has any.
pub async fn compression_settings(
    db: &Db,
    rels: &[&QualifiedName],
) -> Result<Option<CompressionSettings>> {
    for rel in rels {
        let row = db
            .query_opt(
                sql::COMPRESSION_SETTINGS,
                &[&rel.sql()],
                &format!("reading the compression settings of {rel}"),
            )
            .await?;
        if let Some(r) = row {
            return Ok(Some(CompressionSettings {
                segmentby: r.get(0),
                orderby: r.get(1),
                orderby_desc: r.get(2),
                orderby_nullsfirst: r.get(3),
            }));
        }
    }
    Ok(None)
}

fn opt_name(schema: Option<String>, name: Option<String>) -> Option<QualifiedName> {
    match (schema, name) {
        (Some(s), Some(n)) => Some(QualifiedName::new(s, n)),
        _ => None,
    }
}

/// `{"col": [start, end], ...}` into slices sorted by column.
pub fn parse_slices(v: &serde_json::Value) -> Result<Vec<Slice>> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::Internal(format!("unexpected slice description {v}")))?;
    let mut out = Vec::with_capacity(obj.len());
    for (col, range) in obj {
        let start = range.get(0).and_then(|x| x.as_i64());
        let end = range.get(1).and_then(|x| x.as_i64());
        match (start, end) {
            (Some(start), Some(end)) => out.push(Slice {
                column: col.clone(),
                start,
                end,
            }),
            _ => return Err(Error::Internal(format!("unexpected slice description {v}"))),
        }
    }
    out.sort();
    Ok(out)
}

/// Slices as the jsonb object `create_chunk` takes.
pub fn slices_json(slices: &[Slice]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for s in slices {
        m.insert(s.column.clone(), serde_json::json!([s.start, s.end]));
    }
    serde_json::Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(Version::parse("2.19.3"), Some(Version(2, 19, 3)));
        assert_eq!(Version::parse("2.20.0-dev"), Some(Version(2, 20, 0)));
        assert_eq!(Version::parse("2.9"), Some(Version(2, 9, 0)));
        assert!(Version(2, 19, 3) > Version(2, 16, 0));
        assert_eq!(Version::parse("x"), None);
    }

    #[test]
    fn slices_round_trip_sorted() {
        let v = serde_json::json!({"time": [10, 20], "device": [-5, 7]});
        let s = parse_slices(&v).unwrap();
        assert_eq!(s[0].column, "device");
        assert_eq!(slices_json(&s), v);
    }

    #[test]
    fn version_mismatch_names_both_versions_and_the_fix() {
        let mk = |v: &str| Extension {
            version_text: v.into(),
            version: Version::parse(v).unwrap(),
            schema: "public".into(),
            functions_schema: "_timescaledb_functions".into(),
            license: "timescale".into(),
            features: Features::for_version(Version::parse(v).unwrap()),
            postgres_version: "15.10".into(),
            postgres_major: 15,
        };
        let err = ensure_compatible(&mk("2.19.3"), &mk("2.18.0")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("2.19.3") && msg.contains("2.18.0"), "{msg}");
        assert!(
            msg.contains("ALTER EXTENSION timescaledb UPDATE TO '2.19.3'"),
            "{msg}"
        );
        assert_eq!(err.exit_code(), 3);
    }

    #[test]
    fn version_fix_proposes_only_releases_the_postgres_major_can_run() {
        let mk = |v: &str, pg: u32| Extension {
            version_text: v.into(),
            version: Version::parse(v).unwrap(),
            schema: "public".into(),
            functions_schema: "_timescaledb_functions".into(),
            license: "timescale".into(),
            features: Features::for_version(Version::parse(v).unwrap()),
            postgres_version: format!("{pg}.1"),
            postgres_major: pg,
        };
        // Target newer, on a newer major (a fresh managed service): 2.29
        // needs PostgreSQL 16, so updating the PG 15 source is no fix.
        let fix = version_fix(&mk("2.28.3", 15), &mk("2.29.2", 17));
        assert!(
            fix.contains("CREATE EXTENSION timescaledb VERSION '2.28.3'"),
            "{fix}"
        );
        assert!(!fix.contains("UPDATE TO '2.29.2'"), "{fix}");
        // Both majors run both releases: either way is offered.
        let fix = version_fix(&mk("2.25.2", 15), &mk("2.28.3", 17));
        assert!(fix.contains("VERSION '2.25.2'") && fix.contains("UPDATE TO '2.28.3'"));
        // Source newer: update the target, when its major runs the release.
        let fix = version_fix(&mk("2.29.2", 17), &mk("2.28.3", 17));
        assert!(fix.contains("UPDATE TO '2.29.2'"), "{fix}");
        // No release runs on both servers as they are.
        let fix = version_fix(&mk("2.16.1", 14), &mk("2.29.2", 18));
        assert!(!fix.contains("ALTER EXTENSION") && !fix.contains("CREATE EXTENSION"));
        assert!(fix.contains("PostgreSQL 14-17"), "{fix}");
    }

    #[test]
    fn time_types() {
        assert_eq!(
            TimeType::from_pg("timestamp with time zone"),
            Some(TimeType::TimestampTz)
        );
        assert_eq!(TimeType::from_pg("bigint"), Some(TimeType::BigInt));
        assert_eq!(TimeType::from_pg("uuid"), None);
    }
}
