//! `stage`: choose the chunks to copy and write one task per chunk.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::catalog::{self, Selection, SourceChunk};
use crate::commands::bounds;
use crate::copy::target_chunk;
use crate::db::ConnInfo;
use crate::error::{Error, Result};
use crate::ident::QualifiedName;
use crate::plan::{self, NewTask, Restage, TaskWindow};
use crate::queue::{self, StagedTask};
use crate::ui;

pub struct StageConfig {
    pub source: ConnInfo,
    pub target: ConnInfo,
    pub until: String,
    pub from: Option<String>,
    pub selection: Selection,
    pub snapshot: Option<String>,
    pub dry_run: bool,
}

/// What a stage did.
#[derive(Debug, Default, serde::Serialize)]
pub struct StageReport {
    pub staged: u64,
    pub requeued: u64,
    pub already_staged: u64,
    pub hypertables: usize,
    pub estimated_bytes: i64,
    pub chunks_created: u64,
    /// Bounds far outside a hypertable's data, with what they selected.
    pub warnings: Vec<String>,
}

/// The human summary of a stage that changed or found something.
pub fn print_summary(report: &StageReport) {
    if report.already_staged > 0 {
        ui::line(&format!(
            "Skipping {} chunk(s) that were already staged with the same or a wider range.",
            report.already_staged
        ));
    }
    let requeued = if report.requeued > 0 {
        format!(" and re-queued {} with a wider range", report.requeued)
    } else {
        String::new()
    };
    let created = if report.chunks_created > 0 {
        format!(
            "; created {} missing target chunk(s)",
            report.chunks_created
        )
    } else {
        String::new()
    };
    ui::line(&format!(
        "Staged {} chunk(s) to copy{requeued} from {} hypertable(s), ~{} on the source{created}.",
        report.staged,
        report.hypertables,
        ui::bytes(report.estimated_bytes.max(0) as u64),
    ));
    ui::line("Execute the 'copy' command to migrate the data.");
}

/// An exported snapshot id looks like `00000003-0000001B-1`.
pub fn validate_snapshot(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.split('-').count() >= 2
        && s.split('-')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "--snapshot '{s}' is not a snapshot id; use the value pg_export_snapshot() returns \
             on the source (like 00000003-0000001B-1)"
        )))
    }
}

pub async fn run(cfg: StageConfig) -> Result<StageReport> {
    if let Some(s) = &cfg.snapshot {
        validate_snapshot(s)?;
    }
    // The source connection keeps the server's own settings until the bounds
    // are parsed, so that `--until` means what it would in psql there.
    let src = cfg.source.connect_raw().await?;
    src.batch(
        "SET default_transaction_read_only = on",
        "setting up the session",
    )
    .await?;
    let tgt = cfg.target.connect().await?;
    let source_ext = catalog::extension(&src).await?;
    let target_ext = catalog::extension(&tgt).await?;
    catalog::ensure_compatible(&source_ext, &target_ext)?;
    if let Some(f) = &cfg.selection.filter {
        catalog::validate_regex(&src, f).await?;
    }

    // One snapshot for everything read from the source catalog.
    src.batch(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        "starting a transaction",
    )
    .await?;
    if let Some(s) = &cfg.snapshot {
        let sql = format!(
            "SET TRANSACTION SNAPSHOT {}",
            crate::ident::quote_literal(s)
        );
        src.batch(&sql, "importing --snapshot").await.map_err(|e| {
            Error::InvalidArgument(format!(
                "--snapshot '{s}' cannot be imported on the source ({e}). The transaction that \
                 exported it must stay open during stage and copy"
            ))
        })?;
    }
    let hypertables = catalog::selected_hypertables(&src, &cfg.selection).await?;
    let chunks = catalog::source_chunks(&src, &cfg.selection).await?;
    let inventory = crate::commands::left_behind::source_inventory(&src).await?;
    src.batch("COMMIT", "ending a transaction").await?;
    if hypertables.is_empty() {
        return Err(match &cfg.selection.filter {
            Some(f) => Error::InvalidArgument(format!(
                "--filter '{f}' matches no hypertable or continuous aggregate on the source. \
                 It is a case-insensitive regex on schema.table (schema.view for continuous \
                 aggregates), quoted as format('%I.%I') quotes them, e.g. '^public\\.metrics$'. \
                 Nothing was changed"
            )),
            None => Error::Precondition {
                side: crate::error::Side::Source,
                message:
                    "this database has no hypertables: connect to the database that holds them"
                        .into(),
            },
        });
    }

    let windows = bounds::parse_windows(
        &src,
        &source_ext,
        &hypertables,
        &cfg.until,
        cfg.from.as_deref(),
    )
    .await?;
    let tasks = plan::split_huge(plan::tasks_for(&chunks, &windows));
    let warnings = bound_warnings(&chunks, &windows);
    for w in &warnings {
        ui::line(&format!("WARNING: {w}"));
    }

    // Everything that can refuse the stage is checked before anything is
    // created on the target (the queue schema, chunks).
    check_source_privileges(&src, &tasks).await?;
    check_target_hypertables(&src, &tgt, &tasks).await?;
    check_compression_settings(&src, &tgt, &tasks).await?;
    check_chunk_shapes(&tgt, &tasks).await?;

    let mut report = StageReport {
        hypertables: tasks
            .iter()
            .map(|t| &t.chunk.hypertable)
            .collect::<BTreeSet<_>>()
            .len(),
        estimated_bytes: tasks.iter().map(|t| t.chunk.size_bytes).sum(),
        warnings,
        ..Default::default()
    };

    if cfg.dry_run {
        ui::print_dry_run(&tasks);
        report.staged = tasks.len() as u64;
        return Ok(report);
    }
    if tasks.is_empty() {
        ui::line(&format!(
            "No chunks to stage: {} hypertable(s) matched, none has chunks before --until.",
            hypertables.len()
        ));
        return Ok(report);
    }

    queue::migrate(&tgt).await?;
    // Held until this connection closes: concurrent stages take turns, so
    // none works from windows another is about to change.
    queue::lock(&tgt).await?;
    // What the source has, and what this stage selected: `status`, `copy`
    // and `verify` list what no stage selected.
    let selected: std::collections::HashSet<QualifiedName> =
        hypertables.iter().map(|h| h.hypertable.clone()).collect();
    queue::record_source_hypertables(&tgt, &inventory, &selected).await?;
    let existing = queue::task_windows(&tgt).await?;
    let mut new = Vec::new();
    let mut widened = Vec::new();
    let mut widened_chunks = std::collections::HashSet::new();
    for t in &tasks {
        let window = TaskWindow {
            lower: t.lower.clone(),
            upper: t.upper.clone(),
        };
        match existing.get(&t.chunk.chunk) {
            None => new.push((t, window)),
            Some(old) => {
                // The parts of a split chunk stand for the whole chunk.
                let chunk_window = if t.part > 0 {
                    TaskWindow {
                        lower: None,
                        upper: None,
                    }
                } else {
                    window
                };
                match plan::restage(old, &chunk_window) {
                    Restage::Covered => report.already_staged += 1,
                    Restage::Widen(w) => {
                        if widened_chunks.insert(t.chunk.chunk.clone()) {
                            widened.push((t, w));
                        }
                    }
                }
            }
        }
    }

    // Create missing target chunks now, each in its own short transaction,
    // so copy workers never contend on chunk creation.
    let mut target_of: HashMap<QualifiedName, QualifiedName> = HashMap::new();
    let mut by_ht: BTreeMap<&QualifiedName, Vec<&SourceChunk>> = BTreeMap::new();
    let mut can_create = true;
    for (t, _) in new.iter().chain(widened.iter()) {
        by_ht.entry(&t.chunk.hypertable).or_default().push(&t.chunk);
    }
    for (ht, chunks) in by_ht {
        let known: HashMap<_, _> = catalog::target_chunks_by_slices(&tgt, ht)
            .await?
            .into_iter()
            .collect();
        for c in chunks {
            if target_of.contains_key(&c.chunk) {
                continue; // another part of the same chunk
            }
            let target = match known.get(&c.slices) {
                Some(t) => Some(t.clone()),
                None if can_create => {
                    let created =
                        target_chunk::try_create(&tgt, &target_ext, ht, &c.slices).await?;
                    match created {
                        Some(_) => report.chunks_created += 1,
                        // Not allowed here: copy will create it as rows arrive.
                        None => can_create = false,
                    }
                    created
                }
                None => None,
            };
            if let Some(target) = target {
                target_of.insert(c.chunk.clone(), target);
            }
        }
    }

    // A whole compressed source chunk goes into a compressed target chunk:
    // create that now too (compress_chunk of the still empty chunk).
    for (t, w) in new.iter().chain(widened.iter()) {
        let whole = w.lower.is_none() && w.upper.is_none();
        let Some(target) = target_of.get(&t.chunk.chunk) else {
            continue;
        };
        if whole && t.chunk.compressed_chunk.is_some() && target_ext.is_community() {
            let state = crate::copy::compressed::chunk_state(&tgt, target).await?;
            if matches!(state, Some(s) if s.compressed.is_none()) {
                crate::copy::compressed::precreate(&tgt, &target_ext, target).await?;
            }
        }
    }

    let staged = |t: &NewTask, w: &TaskWindow| -> StagedTask {
        let target = target_of.get(&t.chunk.chunk);
        StagedTask {
            hypertable_schema: t.chunk.hypertable.schema.clone(),
            hypertable_name: t.chunk.hypertable.name.clone(),
            cagg_schema: t.chunk.cagg.as_ref().map(|c| c.schema.clone()),
            cagg_name: t.chunk.cagg.as_ref().map(|c| c.name.clone()),
            chunk_schema: t.chunk.chunk.schema.clone(),
            chunk_name: t.chunk.chunk.name.clone(),
            target_chunk_schema: target.map(|c| c.schema.clone()),
            target_chunk_name: target.map(|c| c.name.clone()),
            slices: catalog::slices_json(&t.chunk.slices),
            time_column: t.chunk.time_column.clone(),
            time_type: t.time_type.sql().to_string(),
            range_start: t.chunk.time_start,
            range_end: t.chunk.time_end,
            lower_internal: w.lower.as_ref().map(|b| b.internal),
            lower_literal: w.lower.as_ref().map(|b| b.literal.clone()),
            upper_internal: w.upper.as_ref().map(|b| b.internal),
            upper_literal: w.upper.as_ref().map(|b| b.literal.clone()),
            snapshot: cfg.snapshot.clone(),
            estimated_bytes: t.chunk.size_bytes,
            // A widened chunk is re-queued as its one task, part 0.
            part: if widened_chunks.contains(&t.chunk.chunk) {
                0
            } else {
                t.part
            },
        }
    };
    report.hypertables = new
        .iter()
        .chain(widened.iter())
        .map(|(t, _)| &t.chunk.hypertable)
        .collect::<BTreeSet<_>>()
        .len();
    report.estimated_bytes = new
        .iter()
        .chain(widened.iter())
        .map(|(t, _)| t.chunk.size_bytes)
        .sum();
    let new_rows: Vec<_> = new.iter().map(|(t, w)| staged(t, w)).collect();
    let widened_rows: Vec<_> = widened.iter().map(|(t, w)| staged(t, w)).collect();
    let inserted = queue::enqueue(&tgt, &new_rows, &widened_rows).await?;
    // A concurrent stage may have inserted some of the same chunks first.
    report.already_staged += new_rows.len() as u64 - inserted;
    report.staged = inserted;
    report.requeued = widened_rows.len() as u64;
    queue::unlock(&tgt).await?;
    Ok(report)
}

/// Bounds that are far outside a hypertable's data, most likely in another
/// unit than its time column (an integer `--until` in milliseconds for a
/// column in seconds selects every chunk; in seconds for a column in
/// milliseconds, none): one sentence per hypertable, saying what was
/// selected. "Far past" means beyond the newest chunk's end by more than
/// the whole span of its chunks.
pub fn bound_warnings(
    chunks: &[SourceChunk],
    windows: &HashMap<catalog::TimeType, plan::Window>,
) -> Vec<String> {
    let mut span: BTreeMap<&QualifiedName, (catalog::TimeType, i64, i64, usize)> = BTreeMap::new();
    for c in chunks {
        let Some(tt) = catalog::TimeType::from_pg(&c.time_type_name) else {
            continue;
        };
        let e = span
            .entry(&c.hypertable)
            .or_insert((tt, c.time_start, c.time_end, 0));
        e.1 = e.1.min(c.time_start);
        e.2 = e.2.max(c.time_end);
        e.3 += 1;
    }
    let mut out = Vec::new();
    for (ht, (tt, start, end, n)) in span {
        let Some(w) = windows.get(&tt) else {
            continue;
        };
        let show = |v: i64| ui::internal_time(tt, v);
        let data = format!(
            "its {n} chunk(s) cover [{}, {}) ({})",
            show(start),
            show(end),
            tt.sql()
        );
        let u = w.until.internal;
        let width = end.saturating_sub(start).max(1);
        if u > end && u.saturating_sub(end) > width {
            out.push(format!(
                "--until {} is far past the data of {ht}: {data}, so every one of them is \
                 selected. If that is not meant, the bound is in another unit than the time \
                 column; stage {ht} again with a value of its own unit",
                w.until.literal
            ));
        } else if u <= start {
            out.push(format!(
                "--until {} is before the data of {ht}: {data}, so none of them is selected. If \
                 that is not meant, the bound is in another unit than the time column",
                w.until.literal
            ));
        }
        if let Some(f) = &w.from {
            if f.internal >= end {
                out.push(format!(
                    "--from {} is past the data of {ht}: {data}, so none of them is selected",
                    f.literal
                ));
            }
        }
    }
    out
}

/// Every hypertable with chunks to stage must exist on the target with the
/// same columns (by name and type). Reports every problem at once.
async fn check_target_hypertables(
    src: &crate::db::Db,
    tgt: &crate::db::Db,
    tasks: &[NewTask],
) -> Result<()> {
    let hts: BTreeMap<&QualifiedName, Option<&QualifiedName>> = tasks
        .iter()
        .map(|t| (&t.chunk.hypertable, t.chunk.cagg.as_ref()))
        .collect();
    let mut problems = Vec::new();
    for (ht, cagg) in hts {
        let label = match cagg {
            Some(v) => format!("{ht} (materialization of continuous aggregate {v})"),
            None => ht.to_string(),
        };
        let src_cols = catalog::relation_columns(src, ht).await?;
        match catalog::hypertable_columns(tgt, ht).await? {
            None => problems.push(format!("{label} does not exist on the target")),
            Some(_) if !is_hypertable(tgt, ht).await? => {
                let time_column = tasks
                    .iter()
                    .find(|t| &t.chunk.hypertable == ht)
                    .map(|t| t.chunk.time_column.as_str())
                    .unwrap_or("time");
                problems.push(format!(
                    "{label} exists on the target but is not a hypertable (it is on the source). \
                     Fix: on the target, SELECT create_hypertable('{}', by_range({}, <the source's \
                     chunk interval>)); while it is empty, or restore the target's schema from a \
                     pg_dump of the source",
                    ht.sql().replace('\'', "''"),
                    crate::ident::quote_literal(time_column)
                ))
            }
            Some(tgt_cols) => {
                for d in catalog::column_differences(&src_cols, &tgt_cols) {
                    problems.push(format!("{label}: {d}"));
                }
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Incompatible(format!(
        "the target does not match the source:\n  - {}\nCreate the target's schema from a \
         pg_dump of the source (see README: preparing the target), or leave these hypertables \
         out with --filter. Nothing was changed.",
        problems.join("\n  - ")
    )))
}

/// Target. $1 = hypertable schema, $2 = table. Whether TimescaleDB knows
/// it as a hypertable.
// language=PostgreSQL
const IS_HYPERTABLE: &str = "\
SELECT EXISTS (SELECT 1 FROM _timescaledb_catalog.hypertable WHERE schema_name = $1 AND table_name = $2)";

async fn is_hypertable(db: &crate::db::Db, ht: &QualifiedName) -> Result<bool> {
    Ok(db
        .query_one(
            IS_HYPERTABLE,
            &[&ht.schema, &ht.name],
            &format!("looking up hypertable {ht}"),
        )
        .await?
        .get(0))
}

/// Source. $1 = quoted relation names. Those the session's role may not
/// SELECT from (relations dropped meanwhile are left out).
// language=PostgreSQL
const NOT_READABLE: &str = "\
SELECT r FROM unnest($1::text[]) AS r
WHERE to_regclass(r) IS NOT NULL AND NOT has_table_privilege(to_regclass(r), 'SELECT')";

/// The copy reads every staged chunk (and its compressed chunk) on the
/// source: the source role must be allowed to SELECT from them.
async fn check_source_privileges(src: &crate::db::Db, tasks: &[NewTask]) -> Result<()> {
    let mut rels: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for t in tasks {
        for rel in [Some(&t.chunk.hypertable), Some(&t.chunk.chunk)]
            .into_iter()
            .chain([t.chunk.compressed_chunk.as_ref()])
            .flatten()
        {
            if seen.insert(rel.clone()) {
                rels.push(rel.sql());
            }
        }
    }
    if rels.is_empty() {
        return Ok(());
    }
    let denied: Vec<String> = src
        .query(
            NOT_READABLE,
            &[&rels],
            "checking the source role's privileges",
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if denied.is_empty() {
        return Ok(());
    }
    let hypertables: BTreeSet<String> = tasks
        .iter()
        .filter(|t| {
            denied.contains(&t.chunk.hypertable.sql())
                || denied.contains(&t.chunk.chunk.sql())
                || t.chunk
                    .compressed_chunk
                    .as_ref()
                    .is_some_and(|c| denied.contains(&c.sql()))
        })
        .map(|t| t.chunk.hypertable.sql())
        .collect();
    let shown: Vec<&str> = denied.iter().take(10).map(String::as_str).collect();
    Err(Error::Precondition {
        side: crate::error::Side::Source,
        message: format!(
            "the source role lacks the SELECT privilege on {} relation(s) the copy reads: {}{}. \
             Fix: on the source, GRANT SELECT ON {} TO <role> (TimescaleDB passes it on to the \
             chunks), or connect as a role that may read them. Nothing was changed",
            denied.len(),
            shown.join(", "),
            if denied.len() > shown.len() {
                ", ..."
            } else {
                ""
            },
            hypertables.into_iter().collect::<Vec<_>>().join(", ")
        ),
    })
}

/// A source chunk with no target chunk of exactly its slices is created on
/// the target; a target chunk that overlaps it with other slices would make
/// that fail half-way through the stage. Refuse before creating anything.
async fn check_chunk_shapes(tgt: &crate::db::Db, tasks: &[NewTask]) -> Result<()> {
    let mut by_ht: BTreeMap<&QualifiedName, Vec<&SourceChunk>> = BTreeMap::new();
    for t in tasks {
        by_ht.entry(&t.chunk.hypertable).or_default().push(&t.chunk);
    }
    let mut problems = Vec::new();
    for (ht, chunks) in by_ht {
        let known = catalog::target_chunks_by_slices(tgt, ht).await?;
        let mut reported = BTreeSet::new();
        for c in chunks {
            if known.iter().any(|(slices, _)| slices == &c.slices) {
                continue;
            }
            if let Some((_, other)) = known.iter().find(|(slices, _)| overlaps(slices, &c.slices)) {
                if reported.insert(other.clone()) {
                    problems.push(format!(
                        "target chunk {other} of {ht} overlaps source chunk {} without the same \
                         slices",
                        c.chunk
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Incompatible(format!(
        "the target partitions time (or space) differently from the source:\n  - {}\nRestore \
         the target's schema from a pg_dump of the source (see README), so both sides have the \
         same chunk interval and space partitioning. Nothing was changed.",
        problems.join("\n  - ")
    )))
}

/// Whether two chunks' slices overlap in every dimension (a dimension only
/// one of them has counts as overlapping).
fn overlaps(a: &[catalog::Slice], b: &[catalog::Slice]) -> bool {
    // (`Option::is_none_or` needs Rust 1.82; the crate supports 1.80.)
    a.iter()
        .all(|x| match b.iter().find(|y| y.column == x.column) {
            Some(y) => x.start < y.end && y.start < x.end,
            None => true,
        })
}

/// A compressed source chunk is copied batch by batch into a target
/// compressed chunk, which only works when both sides compress the same way.
/// Reports every hypertable whose settings differ, with the fix.
async fn check_compression_settings(
    src: &crate::db::Db,
    tgt: &crate::db::Db,
    tasks: &[NewTask],
) -> Result<()> {
    let mut first: BTreeMap<&QualifiedName, &SourceChunk> = BTreeMap::new();
    for t in tasks {
        if t.chunk.compressed_chunk.is_some() && t.lower.is_none() && t.upper.is_none() {
            first.entry(&t.chunk.hypertable).or_insert(&t.chunk);
        }
    }
    let mut problems = Vec::new();
    for (ht, chunk) in first {
        let mut keys = vec![&chunk.chunk];
        keys.extend(chunk.compressed_chunk.as_ref());
        keys.push(ht);
        let source = catalog::compression_settings(src, &keys).await?;
        let target = catalog::compression_settings(tgt, &[ht]).await?;
        match (source, target) {
            (Some(s), Some(t)) if s == t => {}
            (Some(s), t) => problems.push(format!(
                "{ht}: chunk {} is compressed with ({}) on the source, but the target hypertable {}. \
                 Fix: on the target, ALTER TABLE {ht} SET (timescaledb.compress, {})",
                chunk.chunk,
                s.as_options(),
                match t {
                    Some(t) => format!("uses ({})", t.as_options()),
                    None => "has compression off".to_string(),
                },
                s.as_options()
            )),
            (None, _) => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Incompatible(format!(
        "compression settings differ between source and target:\n  - {}\nNothing was changed.",
        problems.join("\n  - ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids() {
        assert!(validate_snapshot("00000003-0000001B-1").is_ok());
        assert!(validate_snapshot("00000003-0000001B").is_ok());
        assert!(validate_snapshot("x'; drop table t; --").is_err());
        assert!(validate_snapshot("").is_err());
    }
}
