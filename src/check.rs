//! `check`: the preflight. It reads both sides, changes nothing, and reports
//! everything the migration guide warns about, each finding with its fix.
//! Errors block a backfill (exit code 3); warnings and notes do not.

use serde::Serialize;

use crate::catalog::{self, Extension, Selection};
use crate::db::{ConnInfo, Db};
use crate::error::{Result, Side};
use crate::ident::QualifiedName;
use crate::ui;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Note,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier of the kind of finding, for scripts.
    pub code: &'static str,
    pub side: Option<Side>,
    pub message: String,
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub source_version: String,
    pub target_version: String,
    pub source_license: String,
    pub target_license: String,
    pub hypertables: usize,
    /// On-disk size of the selected hypertables on the source (chunks,
    /// compressed chunks, indexes): roughly what the target will need.
    pub estimated_bytes: i64,
    pub findings: Vec<Finding>,
}

impl Report {
    /// How many findings block a backfill.
    pub fn blocking(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }
}

struct Findings(Vec<Finding>);

impl Findings {
    fn add(
        &mut self,
        severity: Severity,
        code: &'static str,
        side: Option<Side>,
        message: String,
        fix: Option<String>,
    ) {
        self.0.push(Finding {
            severity,
            code,
            side,
            message,
            fix,
        });
    }
}

/// Source. Continuous aggregates still in the old, non-finalized format.
// language=PostgreSQL
const PARTIAL_CAGGS: &str = "\
SELECT format('%I.%I', user_view_schema, user_view_name)
FROM _timescaledb_catalog.continuous_agg WHERE NOT finalized ORDER BY 1";

/// Target. Background jobs (compression, retention, refresh, user jobs) that
/// are still scheduled: id, procedure, the hypertable they act on.
// language=PostgreSQL
const SCHEDULED_JOBS: &str = "\
SELECT j.id, j.proc_name::text,
       coalesce((SELECT format('%I.%I', h.schema_name, h.table_name)
                 FROM _timescaledb_catalog.hypertable h WHERE h.id = j.hypertable_id), '')
FROM _timescaledb_config.bgw_job j
WHERE j.id >= 1000 AND j.scheduled
ORDER BY j.id";

/// Source. Hypertables or chunks in a tablespace other than the default.
// language=PostgreSQL
const TABLESPACES: &str = "\
SELECT DISTINCT t.spcname::text
FROM _timescaledb_catalog.hypertable h
JOIN pg_class c ON c.oid = to_regclass(format('%I.%I', h.schema_name, h.table_name))
JOIN pg_tablespace t ON t.oid = c.reltablespace
UNION
SELECT DISTINCT tablespace_name::text FROM _timescaledb_catalog.tablespace
ORDER BY 1";

/// Either side. The installation's uuid in TimescaleDB's metadata.
// language=PostgreSQL
const METADATA_UUID: &str = "SELECT value FROM _timescaledb_catalog.metadata WHERE key = 'uuid'";

/// Either side. $1 = quoted hypertable. Privileges of the session's role:
/// select, insert, delete, and whether it is a member of the owner's role.
// language=PostgreSQL
const TABLE_PRIVILEGES: &str = "\
SELECT has_table_privilege($1::text, 'SELECT'), has_table_privilege($1::text, 'INSERT'),
       has_table_privilege($1::text, 'DELETE'), pg_has_role(c.relowner, 'USAGE')
FROM pg_class c WHERE c.oid = to_regclass($1::text)";

/// Target. May the role create the queue schema (or does the queue exist)?
// language=PostgreSQL
const CAN_CREATE_QUEUE: &str = "\
SELECT has_database_privilege(current_database(), 'CREATE')
    OR to_regnamespace('__hyperfill') IS NOT NULL";

/// Either side. $1 = quoted hypertable. Its total size with every chunk.
// language=PostgreSQL
const HYPERTABLE_SIZE: &str = "SELECT coalesce(hypertable_size($1::text::regclass), 0)::bigint";

/// Either side. Whether this session is encrypted.
// language=PostgreSQL
const SESSION_SSL: &str =
    "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)";

pub async fn run(source: &ConnInfo, target: &ConnInfo, filter: Option<&str>) -> Result<Report> {
    let src = source.connect().await?;
    let tgt = target.connect().await?;
    let s_ext = catalog::extension(&src).await?;
    let t_ext = catalog::extension(&tgt).await?;
    let mut f = Findings(Vec::new());

    if let Err(e) = catalog::ensure_compatible(&s_ext, &t_ext) {
        f.add(
            Severity::Error,
            "timescaledb-version",
            None,
            e.to_string(),
            Some(version_fix(&s_ext, &t_ext)),
        );
    }
    for (side, ext) in [(Side::Source, &s_ext), (Side::Target, &t_ext)] {
        if ext.schema != "public" {
            f.add(
                Severity::Warning,
                "extension-schema",
                Some(side),
                format!(
                    "the timescaledb extension is installed in schema \"{}\", not public",
                    ext.schema
                ),
                Some(
                    "managed services (Timescale Cloud) require the extension in public: edit the \
                     schema dump to refer to public before restoring it on the target"
                        .into(),
                ),
            );
        }
    }
    if let Some(r) = filter {
        catalog::validate_regex(&src, r).await?;
    }
    let selection = Selection {
        filter: filter.map(str::to_string),
        cascade_up: false,
        cascade_down: false,
    };
    let hypertables = catalog::selected_hypertables(&src, &selection).await?;
    mixed_time_types(&hypertables, &mut f);
    let uses_licensed = check_hypertables(&src, &tgt, &hypertables, &mut f).await?;
    if uses_licensed && !t_ext.is_community() {
        f.add(
            Severity::Error,
            "license",
            Some(Side::Target),
            format!(
                "the source uses compression or continuous aggregates, but the target's TimescaleDB \
                 has the '{}' license, which has neither",
                t_ext.license
            ),
            Some("install TimescaleDB with the Timescale (community) license on the target".into()),
        );
    }
    partial_caggs(&src, &mut f).await;
    scheduled_jobs(&tgt, &mut f).await;
    tablespaces(&src, &mut f).await;
    metadata(&src, &tgt, &mut f).await;

    let can_queue = tgt
        .query_one(CAN_CREATE_QUEUE, &[], "checking privileges")
        .await?
        .get::<_, bool>(0);
    if !can_queue {
        f.add(
            Severity::Error,
            "privilege",
            Some(Side::Target),
            "the role cannot create hyperfill's queue schema in this database".into(),
            Some(
                "GRANT CREATE ON DATABASE <db> TO <role>, or connect as the database owner".into(),
            ),
        );
    }

    let mut estimated_bytes = 0i64;
    for h in &hypertables {
        estimated_bytes += src
            .query_one(
                HYPERTABLE_SIZE,
                &[&h.hypertable.sql()],
                "measuring hypertables",
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
    }
    f.add(
        Severity::Note,
        "size",
        Some(Side::Source),
        format!(
            "the {} selected hypertable(s) take {} on the source; the target needs about as much \
             free space (compressed chunks stay compressed)",
            hypertables.len(),
            ui::bytes(estimated_bytes.max(0) as u64)
        ),
        None,
    );
    for (side, db) in [(Side::Source, &src), (Side::Target, &tgt)] {
        let ssl: bool = db
            .query_one(SESSION_SSL, &[], "reading TLS state")
            .await?
            .get(0);
        if !ssl {
            f.add(
                Severity::Note,
                "tls",
                Some(side),
                "the connection is not encrypted".into(),
                Some("add sslmode=verify-full (with sslrootcert) to the connection string when it crosses a network".into()),
            );
        }
    }

    Ok(Report {
        source_version: s_ext.version_text.clone(),
        target_version: t_ext.version_text.clone(),
        source_license: s_ext.license.clone(),
        target_license: t_ext.license.clone(),
        hypertables: hypertables.len(),
        estimated_bytes,
        findings: f.0,
    })
}

fn version_fix(s: &Extension, t: &Extension) -> String {
    let newer = if s.version >= t.version {
        &s.version_text
    } else {
        &t.version_text
    };
    format!(
        "run `ALTER EXTENSION timescaledb UPDATE TO '{newer}';` on the side with the older version \
         (as the first command of a fresh session: psql -X), or install the same version on both"
    )
}

/// Hypertables missing or different on the target, compression settings,
/// privileges. Returns whether the source uses licensed features.
async fn check_hypertables(
    src: &Db,
    tgt: &Db,
    hypertables: &[catalog::SelectedHypertable],
    f: &mut Findings,
) -> Result<bool> {
    let mut licensed = false;
    for h in hypertables {
        let ht = &h.hypertable;
        let label = match &h.cagg {
            Some(v) => format!("{ht} (continuous aggregate {v})"),
            None => ht.to_string(),
        };
        licensed |= h.cagg.is_some();
        let src_cols = catalog::relation_columns(src, ht).await?;
        let Some(tgt_cols) = catalog::hypertable_columns(tgt, ht).await? else {
            f.add(
                Severity::Error,
                "missing-hypertable",
                Some(Side::Target),
                format!("{label} does not exist on the target"),
                Some("restore the target's schema from a pg_dump of the source (README: preparing the target)".into()),
            );
            continue;
        };
        let diffs = catalog::column_differences(&src_cols, &tgt_cols);
        if !diffs.is_empty() {
            f.add(
                Severity::Error,
                "columns",
                Some(Side::Target),
                format!("{label}: {}", diffs.join("; ")),
                Some(
                    "make the target hypertable's columns match the source's (names and types)"
                        .into(),
                ),
            );
        }
        let s_set = catalog::compression_settings(src, &[ht]).await?;
        let t_set = catalog::compression_settings(tgt, &[ht]).await?;
        if let Some(s) = &s_set {
            licensed = true;
            if s_set != t_set {
                f.add(
                    Severity::Error,
                    "compression-settings",
                    Some(Side::Target),
                    format!(
                        "{label}: compressed with ({}) on the source, {} on the target",
                        s.as_options(),
                        t_set
                            .as_ref()
                            .map(|t| format!("({})", t.as_options()))
                            .unwrap_or_else(|| "not compressed".into())
                    ),
                    Some(format!(
                        "on the target: ALTER TABLE {ht} SET (timescaledb.compress, {})",
                        s.as_options()
                    )),
                );
            }
        }
        privileges(src, Side::Source, ht, &label, f).await?;
        privileges(tgt, Side::Target, ht, &label, f).await?;
    }
    Ok(licensed)
}

async fn privileges(
    db: &Db,
    side: Side,
    ht: &QualifiedName,
    label: &str,
    f: &mut Findings,
) -> Result<()> {
    let Some(row) = db
        .query_opt(TABLE_PRIVILEGES, &[&ht.sql()], "checking privileges")
        .await?
    else {
        return Ok(());
    };
    let (select, insert, delete, owner): (bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let missing: Vec<&str> = match side {
        Side::Source => [(select, "SELECT")]
            .iter()
            .filter(|p| !p.0)
            .map(|p| p.1)
            .collect(),
        Side::Target => [(select, "SELECT"), (insert, "INSERT"), (delete, "DELETE")]
            .iter()
            .filter(|p| !p.0)
            .map(|p| p.1)
            .collect(),
    };
    if !missing.is_empty() {
        f.add(
            Severity::Error,
            "privilege",
            Some(side),
            format!("the role lacks {} on {label}", missing.join(", ")),
            Some(format!(
                "GRANT {} ON {ht} TO <role> (chunks inherit it)",
                missing.join(", ")
            )),
        );
    }
    if side == Side::Target && !owner {
        f.add(
            Severity::Warning,
            "ownership",
            Some(side),
            format!("the role does not own {label}: creating chunks, compressing them and silencing continuous-aggregate invalidations need the owner"),
            Some(format!("connect as the owner of {ht}, or GRANT <owner role> TO <role>")),
        );
    }
    Ok(())
}

/// `--until` is read as each hypertable's time type: points in time for
/// timestamptz/timestamp/date, numbers for integer time columns. A
/// selection with both needs one `stage` per kind, and a forgotten one
/// leaves those hypertables behind.
fn mixed_time_types(hypertables: &[catalog::SelectedHypertable], f: &mut Findings) {
    let mut times = Vec::new();
    let mut integers = Vec::new();
    for h in hypertables {
        let name = match &h.cagg {
            Some(v) => v.to_string(),
            None => h.hypertable.to_string(),
        };
        match catalog::TimeType::from_pg(&h.time_type_name) {
            Some(tt) if tt.is_integer() => integers.push(format!("{name} ({})", tt.sql())),
            Some(tt) => times.push(format!("{name} ({})", tt.sql())),
            None => {}
        }
    }
    if times.is_empty() || integers.is_empty() {
        return;
    }
    let show = |v: &[String]| {
        let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        if v.len() > 5 {
            s.push_str(&format!(", ... ({} in all)", v.len()));
        }
        s
    };
    f.add(
        Severity::Warning,
        "mixed-time-types",
        Some(Side::Source),
        format!(
            "the selection mixes time types: {} hypertable(s) with a time column ({}) and {} with \
             an integer time column ({}); one --until cannot serve both",
            times.len(),
            show(&times),
            integers.len(),
            show(&integers)
        ),
        Some(
            "stage each kind separately with --filter and a T in its own unit (README: how \
             bounds are read); `status` lists any hypertable left unstaged"
                .into(),
        ),
    );
}

async fn partial_caggs(src: &Db, f: &mut Findings) {
    // The `finalized` column exists while old-format caggs can exist at all.
    let Ok(rows) = src.client.query(PARTIAL_CAGGS, &[]).await else {
        return;
    };
    for r in rows {
        let view: String = r.get(0);
        f.add(
            Severity::Error,
            "partial-cagg",
            Some(Side::Source),
            format!("continuous aggregate {view} uses the old, non-finalized format"),
            Some(format!("migrate it first: CALL cagg_migrate('{view}');")),
        );
    }
}

async fn scheduled_jobs(tgt: &Db, f: &mut Findings) {
    let Ok(rows) = tgt.client.query(SCHEDULED_JOBS, &[]).await else {
        return;
    };
    for r in rows {
        let (id, proc_name, ht): (i32, String, String) = (r.get(0), r.get(1), r.get(2));
        let on = if ht.is_empty() {
            String::new()
        } else {
            format!(" on {ht}")
        };
        f.add(
            Severity::Warning,
            "scheduled-job",
            Some(Side::Target),
            format!("background job {id} ({proc_name}{on}) is scheduled: it may compress, drop or materialize chunks while they are backfilled"),
            Some(format!("SELECT alter_job({id}, scheduled => false); and re-enable it after refresh-caggs")),
        );
    }
}

async fn tablespaces(src: &Db, f: &mut Findings) {
    let Ok(rows) = src.client.query(TABLESPACES, &[]).await else {
        return;
    };
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if !names.is_empty() {
        f.add(
            Severity::Warning,
            "tablespaces",
            Some(Side::Source),
            format!("hypertables or chunks use custom tablespaces: {}", names.join(", ")),
            Some("dump with --no-tablespaces (target chunks then use the default tablespace), or create the same tablespaces on the target".into()),
        );
    }
}

async fn metadata_uuid(db: &Db) -> Option<String> {
    db.client
        .query_opt(METADATA_UUID, &[])
        .await
        .ok()
        .flatten()
        .map(|r| r.get::<_, String>(0))
}

async fn metadata(src: &Db, tgt: &Db, f: &mut Findings) {
    if let (Some(s), Some(t)) = (metadata_uuid(src).await, metadata_uuid(tgt).await) {
        if s == t {
            f.add(
                Severity::Warning,
                "metadata",
                Some(Side::Target),
                "the target's TimescaleDB metadata (uuid) was copied from the source's dump".into(),
                Some("dump with --exclude-table='_timescaledb_catalog.metadata' (see the troubleshooting guide); telemetry and support would see both as one installation".into()),
            );
        }
    }
}

/// The human report.
pub fn print(r: &Report) {
    if ui::json_mode() {
        return;
    }
    ui::line(&format!(
        "TimescaleDB: source {} ({} license), target {} ({} license); {} hypertable(s) selected.",
        r.source_version, r.source_license, r.target_version, r.target_license, r.hypertables
    ));
    for f in &r.findings {
        let tag = match f.severity {
            Severity::Error => "ERROR  ",
            Severity::Warning => "WARNING",
            Severity::Note => "note   ",
        };
        let side = f.side.map(|s| format!("{s}: ")).unwrap_or_default();
        ui::line(&format!("{tag} [{}] {side}{}", f.code, f.message));
        if let Some(fix) = &f.fix {
            ui::line(&format!("        fix: {fix}"));
        }
    }
    let errors = r.blocking();
    let warnings = r
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    if errors == 0 {
        ui::line(&format!(
            "Ready to stage: no errors, {warnings} warning(s)."
        ));
    } else {
        ui::line(&format!("Not ready: {errors} error(s), {warnings} warning(s). Fix the errors, then run check again."));
    }
}
