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
    /// The servers' PostgreSQL versions (`15.10`, `17.11`).
    pub source_postgres: String,
    pub target_postgres: String,
    pub source_license: String,
    pub target_license: String,
    pub hypertables: usize,
    /// On-disk size of the selected hypertables on the source (chunks,
    /// compressed chunks, indexes): roughly what the target will need.
    pub estimated_bytes: i64,
    /// Where the source stands when it is a hot standby (read replica).
    pub source_standby: Option<Standby>,
    pub findings: Vec<Finding>,
}

/// A hot-standby source: how far it has replayed the primary's changes, and
/// the settings that decide whether it cancels long reads.
#[derive(Debug, Clone, Serialize)]
pub struct Standby {
    /// Commit time of the last transaction replayed (UTC), if any since the
    /// standby started.
    pub last_replayed_commit: Option<String>,
    /// Seconds since then: the replay lag while the primary is busy (it also
    /// grows while the primary commits nothing).
    pub seconds_since_last_replayed_commit: Option<f64>,
    /// WAL received from the primary (NULL when not streaming).
    pub received_lsn: Option<String>,
    pub replayed_lsn: Option<String>,
    /// Received but not yet replayed.
    pub replay_backlog_bytes: Option<i64>,
    pub replay_paused: bool,
    pub hot_standby_feedback: bool,
    /// Milliseconds; -1 waits forever.
    pub max_standby_streaming_delay_ms: i64,
    /// As SHOW prints it (`30s`).
    pub max_standby_streaming_delay: String,
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
pub(crate) const PARTIAL_CAGGS: &str = "\
SELECT format('%I.%I', user_view_schema, user_view_name)
FROM _timescaledb_catalog.continuous_agg WHERE NOT finalized ORDER BY 1";

/// Target. Background jobs (compression, retention, refresh, user jobs) that
/// are still scheduled: id, procedure, what they act on: the continuous
/// aggregate's view for a materialization hypertable (with a leading
/// "continuous aggregate "), else the hypertable, else ''.
// language=PostgreSQL
pub(crate) const SCHEDULED_JOBS: &str = "\
SELECT j.id, j.proc_name::text,
       coalesce((SELECT 'continuous aggregate ' || format('%I.%I', ca.user_view_schema, ca.user_view_name)
                 FROM _timescaledb_catalog.continuous_agg ca WHERE ca.mat_hypertable_id = j.hypertable_id),
                (SELECT format('%I.%I', h.schema_name, h.table_name)
                 FROM _timescaledb_catalog.hypertable h WHERE h.id = j.hypertable_id), '')
FROM _timescaledb_config.bgw_job j
WHERE j.id >= 1000 AND j.scheduled
ORDER BY j.id";

/// Source. Hypertables or chunks in a tablespace other than the default.
// language=PostgreSQL
pub(crate) const TABLESPACES: &str = "\
SELECT DISTINCT t.spcname::text
FROM _timescaledb_catalog.hypertable h
JOIN pg_class c ON c.oid = to_regclass(format('%I.%I', h.schema_name, h.table_name))
JOIN pg_tablespace t ON t.oid = c.reltablespace
UNION
SELECT DISTINCT tablespace_name::text FROM _timescaledb_catalog.tablespace
ORDER BY 1";

/// Either side. The installation's uuid in TimescaleDB's metadata.
// language=PostgreSQL
pub(crate) const METADATA_UUID: &str =
    "SELECT value FROM _timescaledb_catalog.metadata WHERE key = 'uuid'";

/// Either side. $1 = quoted hypertable. Privileges of the session's role:
/// select, insert, delete, and whether it is a member of the owner's role.
// language=PostgreSQL
pub(crate) const TABLE_PRIVILEGES: &str = "\
SELECT has_table_privilege($1::text, 'SELECT'), has_table_privilege($1::text, 'INSERT'),
       has_table_privilege($1::text, 'DELETE'), pg_has_role(c.relowner, 'USAGE')
FROM pg_class c WHERE c.oid = to_regclass($1::text)";

/// Target. May the role create the queue schema (or does the queue exist)?
// language=PostgreSQL
pub(crate) const CAN_CREATE_QUEUE: &str = "\
SELECT has_database_privilege(current_database(), 'CREATE')
    OR to_regnamespace('__hyperfill') IS NOT NULL";

/// Either side. $1 = quoted hypertable. Its total size with every chunk.
// language=PostgreSQL
pub(crate) const HYPERTABLE_SIZE: &str =
    "SELECT coalesce(hypertable_size($1::text::regclass), 0)::bigint";

/// Either side. The PostgreSQL version, for a side without TimescaleDB.
// language=PostgreSQL
const SERVER_VERSION: &str = "SELECT current_setting('server_version')";

/// Source. Whether it is a hot standby; if so, how far it has replayed and
/// the settings that decide recovery conflicts (readable by any role).
/// Columns: in recovery, last replayed commit (text, UTC), seconds since,
/// received LSN, replayed LSN, backlog bytes, replay paused,
/// hot_standby_feedback, max_standby_streaming_delay in ms and as shown.
// language=PostgreSQL
pub(crate) const STANDBY_STATE: &str = "\
SELECT pg_is_in_recovery(),
       pg_last_xact_replay_timestamp()::text,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
       current_setting('hot_standby_feedback')::bool,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'max_standby_streaming_delay'),
       current_setting('max_standby_streaming_delay')";

/// Either side. Whether this session is encrypted.
// language=PostgreSQL
pub(crate) const SESSION_SSL: &str =
    "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)";

/// Either side. Time limits the server, the database or the role set for
/// sessions (`reset_val`: what they are before hyperfill's own SETs),
/// when not 0: name, value with its unit.
// language=PostgreSQL
pub(crate) const SESSION_TIMEOUTS: &str = "\
SELECT name, reset_val || coalesce(unit, '')
FROM pg_settings
WHERE name IN ('statement_timeout', 'idle_in_transaction_session_timeout',
               'transaction_timeout', 'lock_timeout')
  AND reset_val <> '0'
ORDER BY name";

pub async fn run(source: &ConnInfo, target: &ConnInfo, filter: Option<&str>) -> Result<Report> {
    let src = source.connect().await?;
    let tgt = target.connect().await?;
    let mut f = Findings(Vec::new());
    let (s_ext, t_ext) = match (
        catalog::extension_opt(&src).await?,
        catalog::extension_opt(&tgt).await?,
    ) {
        (Some(s), Some(t)) => (s, t),
        (s, t) => {
            let mut postgres = Vec::new();
            for db in [&src, &tgt] {
                postgres.push(
                    db.query_one(SERVER_VERSION, &[], "reading the server version")
                        .await?
                        .get::<_, String>(0),
                );
            }
            let postgres = (postgres[0].clone(), postgres[1].clone());
            return Ok(without_extension(s.as_ref(), t.as_ref(), postgres, f));
        }
    };

    if let Err(e) = catalog::ensure_compatible(&s_ext, &t_ext) {
        f.add(
            Severity::Error,
            "timescaledb-version",
            None,
            e.to_string(),
            Some(catalog::version_fix(&s_ext, &t_ext)),
        );
    }
    if s_ext.postgres_major != t_ext.postgres_major {
        f.add(
            Severity::Note,
            "postgres-majors",
            None,
            format!(
                "the source runs PostgreSQL {} and the target PostgreSQL {}: supported; columns \
                 whose type is read differently by the two servers are copied in text format",
                s_ext.postgres_version, t_ext.postgres_version
            ),
            None,
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
    let uses_licensed =
        check_hypertables(&src, &tgt, &s_ext.features, &hypertables, &mut f).await?;
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
    partial_caggs(&src, &s_ext.features, &mut f).await?;
    scheduled_jobs(&tgt, &mut f).await;
    tablespaces(&src, &mut f).await;
    metadata(&src, &tgt, &mut f).await;
    let source_standby = standby(&src, &mut f).await?;
    // On connections of their own: hyperfill's sessions turn the limits off
    // from their start.
    for (side, conn) in [(Side::Source, source), (Side::Target, target)] {
        match conn.connect_plain().await {
            Ok(db) => timeouts(side, &db, &mut f).await,
            Err(e) => f.add(
                Severity::Warning,
                "timeouts",
                Some(side),
                format!(
                    "the server's time limits could not be read on a connection of their own: {e}"
                ),
                Some(
                    "run check again; if the server is out of connection slots, free some (each \
                     copy worker needs one on each side)"
                        .into(),
                ),
            ),
        }
    }

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
        source_postgres: s_ext.postgres_version.clone(),
        target_postgres: t_ext.postgres_version.clone(),
        source_license: s_ext.license.clone(),
        target_license: t_ext.license.clone(),
        hypertables: hypertables.len(),
        estimated_bytes,
        source_standby,
        findings: f.0,
    })
}

/// The report when one side has no timescaledb extension: nothing else can
/// be checked until it has.
fn without_extension(
    s: Option<&Extension>,
    t: Option<&Extension>,
    postgres: (String, String),
    mut f: Findings,
) -> Report {
    if s.is_none() {
        f.add(
            Severity::Error,
            "extension-missing",
            Some(Side::Source),
            "the timescaledb extension is not installed in this database: it holds no hypertables"
                .into(),
            Some("connect to the database that holds the hypertables (check the database name in --source)".into()),
        );
    }
    if t.is_none() {
        let version = s
            .map(|e| format!(" VERSION '{}'", e.version_text))
            .unwrap_or_default();
        f.add(
            Severity::Error,
            "extension-missing",
            Some(Side::Target),
            "the timescaledb extension is not installed in this database".into(),
            Some(format!(
                "as the first command of a fresh session on the target: CREATE EXTENSION timescaledb{version}; \
                 then restore the source's schema (README: preparing the target)"
            )),
        );
    }
    f.add(
        Severity::Note,
        "not-checked",
        None,
        "nothing else was checked: every other check needs TimescaleDB on both sides".into(),
        None,
    );
    let version = |e: Option<&Extension>| e.map(|e| e.version_text.clone()).unwrap_or_default();
    let license = |e: Option<&Extension>| e.map(|e| e.license.clone()).unwrap_or_default();
    Report {
        source_version: version(s),
        target_version: version(t),
        source_license: license(s),
        target_license: license(t),
        source_postgres: postgres.0,
        target_postgres: postgres.1,
        hypertables: 0,
        estimated_bytes: 0,
        source_standby: None,
        findings: f.0,
    }
}

/// Source. $1 = hypertable schema, $2 = table. Its newest compressed chunk
/// (schema, name), if any, from TimescaleDB's stable view.
// language=PostgreSQL
pub(crate) const NEWEST_COMPRESSED_CHUNK: &str = "\
SELECT chunk_schema::text, chunk_name::text FROM timescaledb_information.chunks
WHERE hypertable_schema = $1 AND hypertable_name = $2 AND is_compressed
ORDER BY range_end DESC NULLS LAST, chunk_name DESC LIMIT 1";

/// Hypertables missing or different on the target, compression settings,
/// privileges. Returns whether the source uses licensed features.
async fn check_hypertables(
    src: &Db,
    tgt: &Db,
    source_features: &catalog::Features,
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
        // The newest compressed chunk's own settings where the release keeps
        // them per chunk (2.19+: the order TimescaleDB chose by default when
        // it compressed, which the hypertable's do not show), then the
        // hypertable's: what `stage` compares with the target's.
        let newest: Option<QualifiedName> =
            if source_features.settings_key == catalog::compat::SettingsKey::Chunk {
                src.query_opt(
                    NEWEST_COMPRESSED_CHUNK,
                    &[&ht.schema, &ht.name],
                    "finding a compressed chunk",
                )
                .await?
                .map(|r| QualifiedName::from_row(&r, 0))
            } else {
                None
            };
        let mut keys: Vec<&QualifiedName> = newest.iter().collect();
        keys.push(ht);
        let s_set = catalog::compression_settings(src, &keys).await?;
        let t_set = catalog::compression_settings(tgt, &[ht]).await?;
        if let Some(s) = &s_set {
            licensed = true;
            if s_set != t_set {
                f.add(
                    Severity::Error,
                    "compression-settings",
                    Some(Side::Target),
                    format!(
                        "{label}: compressed with ({}) on the source, {} on the target{}",
                        s.as_options(),
                        t_set
                            .as_ref()
                            .map(|t| format!("({})", t.as_options()))
                            .unwrap_or_else(|| "not compressed".into()),
                        catalog::default_order_note(t_set.as_ref())
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

async fn partial_caggs(src: &Db, features: &catalog::Features, f: &mut Findings) -> Result<()> {
    if !features.old_format_caggs {
        return Ok(());
    }
    let rows = src
        .query(
            PARTIAL_CAGGS,
            &[],
            "looking for old-format continuous aggregates",
        )
        .await?;
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
    Ok(())
}

async fn scheduled_jobs(tgt: &Db, f: &mut Findings) {
    let Ok(rows) = tgt.try_query(SCHEDULED_JOBS, &[]).await else {
        return;
    };
    for r in rows {
        let (id, proc_name, ht): (i32, String, String) = (r.get(0), r.get(1), r.get(2));
        // `ht` names a continuous aggregate by its view.
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
    let Ok(rows) = src.try_query(TABLESPACES, &[]).await else {
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

/// Server, database or role time limits that would interrupt copies.
async fn timeouts(side: Side, db: &Db, f: &mut Findings) {
    let Ok(rows) = db.try_query(SESSION_TIMEOUTS, &[]).await else {
        return;
    };
    for r in rows {
        let (name, value): (String, String) = (r.get(0), r.get(1));
        if name == "lock_timeout" {
            f.add(
                Severity::Warning,
                "lock-timeout",
                Some(side),
                format!(
                    "lock_timeout = {value}: a copy that waits longer for a lock (creating or \
                     compressing a chunk, behind a DDL or a long transaction) fails its attempt \
                     and is retried, up to --max-attempts"
                ),
                Some("to let copies wait instead, ALTER ROLE <the role hyperfill uses> SET lock_timeout = 0".into()),
            );
        } else {
            f.add(
                Severity::Note,
                "session-timeout",
                Some(side),
                format!(
                    "{name} = {value} would interrupt long copies; hyperfill sets it to 0 in its \
                     own sessions, so copies are not interrupted (other sessions keep it)"
                ),
                None,
            );
        }
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

/// A hot-standby source: how far it lags (so the user knows whether it
/// holds every row below T yet) and whether its settings let it cancel long
/// copies (recovery conflicts).
async fn standby(src: &Db, f: &mut Findings) -> Result<Option<Standby>> {
    let r = src
        .query_one(STANDBY_STATE, &[], "reading the standby's replay state")
        .await?;
    if !r.get::<_, bool>(0) {
        return Ok(None);
    }
    let st = Standby {
        last_replayed_commit: r.get(1),
        seconds_since_last_replayed_commit: r.get(2),
        received_lsn: r.get(3),
        replayed_lsn: r.get(4),
        replay_backlog_bytes: r.get(5),
        replay_paused: r.get(6),
        hot_standby_feedback: r.get(7),
        max_standby_streaming_delay_ms: r.get(8),
        max_standby_streaming_delay: r.get(9),
    };
    standby_findings(&st, f);
    Ok(Some(st))
}

/// The findings for a hot-standby source (pure, unit-tested).
fn standby_findings(st: &Standby, f: &mut Findings) {
    let replayed = match (
        &st.last_replayed_commit,
        st.seconds_since_last_replayed_commit,
    ) {
        (Some(at), Some(secs)) => format!(
            "the last transaction it replayed committed on the primary at {at} ({} ago)",
            ui::duration(std::time::Duration::from_secs_f64(secs.max(0.0)))
        ),
        _ => "it has replayed no transaction since it started".into(),
    };
    let position = match (&st.received_lsn, &st.replayed_lsn) {
        (Some(recv), Some(rep)) => format!(
            "; WAL received up to {recv}, replayed up to {rep} ({} not yet replayed)",
            ui::bytes(st.replay_backlog_bytes.unwrap_or(0).max(0) as u64)
        ),
        (None, Some(rep)) => format!("; WAL replayed up to {rep}"),
        _ => String::new(),
    };
    f.add(
        Severity::Note,
        "standby-lag",
        Some(Side::Source),
        format!(
            "the source is a hot standby (read replica): {replayed}{position}. It holds every row \
             the primary committed before that time, and none committed after"
        ),
        Some(
            "stage and copy with --until T only once the standby has replayed past the primary's \
             last write of a row below T (shortly after T): run check again, or \
             SELECT pg_last_xact_replay_timestamp() on the standby"
                .into(),
        ),
    );
    if st.replay_paused {
        f.add(
            Severity::Warning,
            "standby-paused",
            Some(Side::Source),
            "replay is paused on the standby: it does not receive the primary's new rows".into(),
            Some("on the standby: SELECT pg_wal_replay_resume();".into()),
        );
    }
    if st.received_lsn.is_none() {
        f.add(
            Severity::Warning,
            "standby-not-streaming",
            Some(Side::Source),
            "the standby is not streaming from a primary (disconnected, or replaying from an \
             archive): it may be far behind, and max_standby_archive_delay rather than \
             max_standby_streaming_delay decides when it cancels reads"
                .into(),
            Some("check primary_conninfo and pg_stat_wal_receiver on the standby".into()),
        );
    }
    let delay = &st.max_standby_streaming_delay;
    if st.max_standby_streaming_delay_ms < 0 {
        f.add(
            Severity::Note,
            "recovery-conflicts",
            Some(Side::Source),
            "max_standby_streaming_delay = -1: the standby never cancels hyperfill's reads; it \
             delays replay instead, so it falls behind the primary while long copies run"
                .into(),
            None,
        );
    } else if !st.hot_standby_feedback {
        f.add(
            Severity::Warning,
            "recovery-conflicts",
            Some(Side::Source),
            format!(
                "hot_standby_feedback = off and max_standby_streaming_delay = {delay}: the standby \
                 cancels a copy that holds back replay for longer than {delay} (the primary's \
                 vacuum removing rows the copy still sees, or a lock from drop_chunks or \
                 compression). hyperfill retries the chunk, but a chunk that takes longer than \
                 that to copy can fail again and again"
            ),
            Some(
                "on the standby: ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf(); \
                 (the primary's vacuum then keeps what the copies read), or raise \
                 max_standby_streaming_delay above the time the largest chunk takes to copy"
                    .into(),
            ),
        );
    } else {
        f.add(
            Severity::Note,
            "recovery-conflicts",
            Some(Side::Source),
            format!(
                "hot_standby_feedback = on: the primary's vacuum keeps what hyperfill's copies \
                 read; a lock conflict (drop_chunks, compression or a schema change on the \
                 primary) still cancels a copy after max_standby_streaming_delay = {delay}, and \
                 hyperfill retries it"
            ),
            None,
        );
    }
}

/// The human report.
pub fn print(r: &Report) {
    if ui::json_mode() {
        return;
    }
    let side = |version: &str, license: &str, postgres: &str| {
        if version.is_empty() {
            format!("not installed (PostgreSQL {postgres})")
        } else {
            format!("{version} ({license} license) on PostgreSQL {postgres}")
        }
    };
    ui::line(&format!(
        "TimescaleDB: source {}, target {}; {} hypertable(s) selected.",
        side(&r.source_version, &r.source_license, &r.source_postgres),
        side(&r.target_version, &r.target_license, &r.target_postgres),
        r.hypertables
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

#[cfg(test)]
mod tests {
    use super::*;

    fn standby() -> Standby {
        Standby {
            last_replayed_commit: Some("2026-11-30 19:00:00.5+00".into()),
            seconds_since_last_replayed_commit: Some(2.5),
            received_lsn: Some("0/3000148".into()),
            replayed_lsn: Some("0/3000100".into()),
            replay_backlog_bytes: Some(72),
            replay_paused: false,
            hot_standby_feedback: false,
            max_standby_streaming_delay_ms: 30_000,
            max_standby_streaming_delay: "30s".into(),
        }
    }

    fn findings(st: &Standby) -> Vec<Finding> {
        let mut f = Findings(Vec::new());
        standby_findings(st, &mut f);
        f.0
    }

    fn find<'a>(f: &'a [Finding], code: &str) -> Option<&'a Finding> {
        f.iter().find(|x| x.code == code)
    }

    #[test]
    fn a_standby_with_default_settings_is_warned_about_recovery_conflicts() {
        let f = findings(&standby());
        let lag = find(&f, "standby-lag").expect("lag");
        assert_eq!(lag.severity, Severity::Note);
        assert!(
            lag.message
                .contains("committed on the primary at 2026-11-30 19:00:00.5+00 (2.5s ago)"),
            "{}",
            lag.message
        );
        assert!(
            lag.message.contains(
                "received up to 0/3000148, replayed up to 0/3000100 (72 B not yet replayed)"
            ),
            "{}",
            lag.message
        );
        let c = find(&f, "recovery-conflicts").expect("conflicts");
        assert_eq!(c.severity, Severity::Warning);
        assert!(c
            .message
            .contains("hot_standby_feedback = off and max_standby_streaming_delay = 30s"));
        let fix = c.fix.as_deref().unwrap_or_default();
        assert!(
            fix.contains("hot_standby_feedback = on")
                && fix.contains("max_standby_streaming_delay")
        );
        assert!(find(&f, "standby-paused").is_none());
        assert!(find(&f, "standby-not-streaming").is_none());
    }

    #[test]
    fn feedback_or_an_unbounded_delay_only_notes_what_remains() {
        let f = findings(&Standby {
            hot_standby_feedback: true,
            ..standby()
        });
        let c = find(&f, "recovery-conflicts").expect("conflicts");
        assert_eq!(c.severity, Severity::Note);
        assert!(c.message.contains("lock conflict"), "{}", c.message);
        let f = findings(&Standby {
            max_standby_streaming_delay_ms: -1,
            max_standby_streaming_delay: "-1".into(),
            ..standby()
        });
        let c = find(&f, "recovery-conflicts").expect("conflicts");
        assert_eq!(c.severity, Severity::Note);
        assert!(c.message.contains("falls behind"), "{}", c.message);
    }

    #[test]
    fn a_paused_or_disconnected_standby_is_warned_about() {
        let f = findings(&Standby {
            replay_paused: true,
            received_lsn: None,
            replay_backlog_bytes: None,
            last_replayed_commit: None,
            seconds_since_last_replayed_commit: None,
            ..standby()
        });
        assert_eq!(
            find(&f, "standby-paused").map(|x| x.severity),
            Some(Severity::Warning)
        );
        assert_eq!(
            find(&f, "standby-not-streaming").map(|x| x.severity),
            Some(Severity::Warning)
        );
        let lag = find(&f, "standby-lag").expect("lag");
        assert!(
            lag.message.contains("replayed no transaction"),
            "{}",
            lag.message
        );
        assert!(
            lag.message.contains("WAL replayed up to 0/3000100"),
            "{}",
            lag.message
        );
    }
}
