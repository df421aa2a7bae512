//! `stage`: choose the chunks to copy and write one task per chunk.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::catalog::{self, Selection, SourceChunk};
use crate::commands::bounds;
use crate::copy::target_chunk;
use crate::db::ConnInfo;
use crate::error::{Error, Result};
use crate::ident::QualifiedName;
use crate::plan::{self, Action, NewTask, TaskWindow};
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

/// What a stage did (or, with `--dry-run`, would do). Figures count tasks
/// unless named chunks: a chunk far larger than the others is split into
/// several tasks ("parts").
#[derive(Debug, Default, serde::Serialize)]
pub struct StageReport {
    pub dry_run: bool,
    /// New tasks inserted (would be, in a dry run).
    pub staged: u64,
    /// The chunks the new tasks belong to, and how many are split into parts.
    pub chunks: u64,
    pub split_chunks: u64,
    /// Chunks whose queued task is re-queued with a wider range.
    pub requeued: u64,
    /// Tasks already queued with the same or a wider range.
    pub already_staged: u64,
    pub hypertables: usize,
    /// The source's table sizes (heap and TOAST, no indexes) of what is
    /// staged: the basis of every estimate of bytes to move.
    pub estimated_bytes: i64,
    pub chunks_created: u64,
    /// Every task of this stage and what it does (dry run only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<ListedTask>,
    /// How a bound was read (a timestamptz without UTC offset).
    pub notes: Vec<String>,
    /// What widening replaces on the target.
    pub warnings: Vec<String>,
}

/// One task of a dry run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListedTask {
    /// `new`, `widen` or `already staged` (`part of widened`: another part
    /// of a split chunk re-queued as one task).
    pub action: &'static str,
    pub hypertable: QualifiedName,
    pub continuous_aggregate: Option<QualifiedName>,
    pub chunk: QualifiedName,
    pub part: i32,
    /// The chunk's time range, as text of its time type.
    pub range: [String; 2],
    pub estimated_bytes: i64,
    /// The row filter this task copies with (`None`: the whole chunk).
    pub filter: Option<String>,
    /// For `widen`: the ranges copied again beyond the queued task's.
    pub added_ranges: Vec<[String; 2]>,
}

/// The human summary of a stage that changed or found something.
pub fn print_summary(report: &StageReport) {
    if report.already_staged > 0 {
        ui::line(&format!(
            "Skipping {} task(s) already staged with the same or a wider range.",
            report.already_staged
        ));
    }
    let requeued = if report.requeued > 0 {
        format!(
            " and re-queued {} chunk(s) with a wider range",
            report.requeued
        )
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
        "Staged {}{requeued} from {} hypertable(s), ~{} of table data on the source{created}.",
        crate::commands::copy::tasks_text(report.staged, report.chunks, report.split_chunks),
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
    let chunks = catalog::source_chunks(&src, &source_ext.features, &cfg.selection).await?;
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

    let (windows, bound_notes) = bounds::parse_windows(
        &src,
        &source_ext,
        &hypertables,
        &cfg.until,
        cfg.from.as_deref(),
    )
    .await?;
    let tasks = plan::split_huge(plan::tasks_for(&chunks, &windows));
    let mut warnings = bound_warnings(&chunks, &windows);
    warnings.extend(standby_behind_until(&src, &windows).await?);

    // Everything that can refuse the stage is checked before anything is
    // created on the target (the queue schema, chunks).
    check_source_privileges(&src, &tasks).await?;
    check_target_hypertables(&src, &tgt, &tasks).await?;
    check_compression_settings(&src, &tgt, &source_ext.features, &tasks).await?;
    check_chunk_shapes(&tgt, &target_ext.features, &tasks).await?;
    check_target_ownership(&tgt, &tasks).await?;

    for n in &bound_notes {
        ui::line(&format!("Note: {n}"));
    }
    let mut report = StageReport {
        dry_run: cfg.dry_run,
        notes: bound_notes,
        warnings,
        ..Default::default()
    };
    if tasks.is_empty() {
        for w in &report.warnings {
            ui::line(&format!("Warning: {w}"));
        }
        ui::line(&format!(
            "No chunks to stage: {} hypertable(s) matched, none has chunks before --until.",
            hypertables.len()
        ));
        return Ok(report);
    }

    // What is queued already, a first look without the lock: the dry run's
    // answer, and which target chunks to create. A dry run reads it without
    // creating the queue. The real run decides again inside the enqueue
    // transaction, under the queue's transaction-scoped lock (below).
    let existing = if cfg.dry_run {
        if queue::exists(&tgt).await? {
            queue::task_windows(&tgt).await?
        } else {
            HashMap::new()
        }
    } else {
        queue::migrate(&tgt).await?;
        // What the source has, and what this stage selected: `status`,
        // `copy` and `verify` list what no stage selected.
        let selected: HashSet<QualifiedName> =
            hypertables.iter().map(|h| h.hypertable.clone()).collect();
        queue::record_source_hypertables(&tgt, &inventory, &selected).await?;
        queue::task_windows(&tgt).await?
    };
    let first = classify(&tasks, &existing);
    let (new, widened) = (&first.new, &first.widened);
    report
        .warnings
        .extend(widening_warnings(&tasks, &first.actions, &windows));
    count_new(&mut report, new, widened);
    report.already_staged = first.already_staged;

    if cfg.dry_run {
        report.staged = new.len() as u64;
        report.tasks = listing(&tasks, &first.actions);
        if !ui::json_mode() {
            ui::print_dry_run(&report);
        } else {
            for w in &report.warnings {
                ui::line(&format!("Warning: {w}"));
            }
        }
        return Ok(report);
    }
    for w in &report.warnings {
        ui::line(&format!("Warning: {w}"));
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
        let known: HashMap<_, _> = catalog::target_chunks_by_slices(&tgt, &target_ext.features, ht)
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
            let state =
                crate::copy::compressed::chunk_state(&tgt, &target_ext.features, target).await?;
            if matches!(state, Some(s) if s.compressed.is_none()) {
                crate::copy::compressed::precreate(&tgt, &target_ext, target).await?;
            }
        }
    }

    let staged = |t: &NewTask,
                  w: &TaskWindow,
                  widened_chunks: &HashSet<QualifiedName>|
     -> StagedTask {
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
            source_compressed_schema: t.chunk.compressed_chunk.as_ref().map(|c| c.schema.clone()),
            source_compressed_name: t.chunk.compressed_chunk.as_ref().map(|c| c.name.clone()),
        }
    };
    // Decided again inside the enqueue transaction, under the queue's
    // transaction-scoped lock: concurrent stages take turns from reading
    // the windows to writing, and none works from windows another changed.
    let mut last = None;
    let inserted = queue::enqueue(&tgt, |existing| {
        let c = classify(&tasks, existing);
        let new_rows: Vec<_> = c
            .new
            .iter()
            .map(|(t, w)| staged(t, w, &c.widened_chunks))
            .collect();
        let widened_rows: Vec<_> = c
            .widened
            .iter()
            .map(|(t, w)| staged(t, w, &c.widened_chunks))
            .collect();
        last = Some(c);
        (new_rows, widened_rows)
    })
    .await?;
    let Some(c) = last else {
        return Err(Error::Internal("the queue was not read".into()));
    };
    // A concurrent stage may have inserted some of the same chunks first.
    count_new(&mut report, &c.new, &c.widened);
    report.already_staged = c.already_staged + c.new.len() as u64 - inserted;
    report.staged = inserted;
    report.requeued = c.widened.len() as u64;
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

/// Count what the stage adds: tasks, chunks, split chunks, hypertables and
/// the estimated size (new and widened).
fn count_new(
    report: &mut StageReport,
    new: &[(&NewTask, TaskWindow)],
    widened: &[(&NewTask, TaskWindow)],
) {
    let chunks: BTreeSet<_> = new.iter().map(|(t, _)| &t.chunk.chunk).collect();
    let split: BTreeSet<_> = new
        .iter()
        .filter(|(t, _)| t.part > 0)
        .map(|(t, _)| &t.chunk.chunk)
        .collect();
    report.chunks = chunks.len() as u64;
    report.split_chunks = split.len() as u64;
    report.staged = new.len() as u64;
    report.requeued = widened.len() as u64;
    report.hypertables = new
        .iter()
        .chain(widened)
        .map(|(t, _)| &t.chunk.hypertable)
        .collect::<BTreeSet<_>>()
        .len();
    report.estimated_bytes = new
        .iter()
        .chain(widened)
        .map(|(t, _)| t.chunk.size_bytes)
        .sum();
}

/// The dry run's listing: every task and what the stage does with it.
fn listing(tasks: &[NewTask], actions: &[Action]) -> Vec<ListedTask> {
    tasks
        .iter()
        .zip(actions)
        .map(|(t, a)| {
            let render = |v: i64| ui::internal_time(t.time_type, v);
            let (action, added) = match a {
                Action::New => ("new", Vec::new()),
                Action::Widen { old, window } => (
                    "widen",
                    plan::added_ranges(old, window, (t.chunk.time_start, t.chunk.time_end))
                        .into_iter()
                        .map(|(a, b)| [render(a), render(b)])
                        .collect(),
                ),
                Action::Covered => ("already staged", Vec::new()),
                Action::Merged => ("part of widened", Vec::new()),
            };
            let (lower, upper) = match a {
                Action::Widen { window, .. } => (window.lower.clone(), window.upper.clone()),
                _ => (t.lower.clone(), t.upper.clone()),
            };
            ListedTask {
                action,
                hypertable: t.chunk.hypertable.clone(),
                continuous_aggregate: t.chunk.cagg.clone(),
                chunk: t.chunk.chunk.clone(),
                part: if matches!(a, Action::Widen { .. }) {
                    0
                } else {
                    t.part
                },
                range: [render(t.chunk.time_start), render(t.chunk.time_end)],
                estimated_bytes: t.chunk.size_bytes,
                filter: plan::filter_sql(
                    &t.chunk.time_column,
                    t.time_type,
                    lower.as_ref().map(|b| b.literal.as_str()),
                    upper.as_ref().map(|b| b.literal.as_str()),
                ),
                added_ranges: added,
            }
        })
        .collect()
}

/// What widening replaces on the target. A chunk staged before with an
/// earlier --until (or a later --from) is copied again over the range
/// between the old and the new bound, and so are the new chunks in that
/// range: copy deletes the target's rows there, dual-written ones included,
/// and puts the source's in their place. One warning per old bound.
fn widening_warnings(
    tasks: &[NewTask],
    actions: &[Action],
    windows: &HashMap<catalog::TimeType, plan::Window>,
) -> Vec<String> {
    // A continuous aggregate's materialization is named by its view.
    let label = |t: &NewTask| match &t.chunk.cagg {
        Some(v) => format!("continuous aggregate {v}"),
        None => t.chunk.hypertable.to_string(),
    };
    // (time type, moved side, old bound) -> (hypertables, widened chunks, old internal)
    type Key = (catalog::TimeType, &'static str, String);
    let mut groups: BTreeMap<Key, (BTreeSet<String>, u64, i64)> = BTreeMap::new();
    for (t, a) in tasks.iter().zip(actions) {
        let Action::Widen { old, window } = a else {
            continue;
        };
        if let Some(u) = &old.upper {
            if !matches!(&window.upper, Some(n) if n.internal <= u.internal) {
                let g = groups
                    .entry((t.time_type, "until", u.literal.clone()))
                    .or_insert_with(|| (BTreeSet::new(), 0, u.internal));
                g.0.insert(label(t));
                g.1 += 1;
            }
        }
        if let Some(l) = &old.lower {
            if !matches!(&window.lower, Some(n) if n.internal >= l.internal) {
                let g = groups
                    .entry((t.time_type, "from", l.literal.clone()))
                    .or_insert_with(|| (BTreeSet::new(), 0, l.internal));
                g.0.insert(label(t));
                g.1 += 1;
            }
        }
    }
    let mut out = Vec::new();
    for ((tt, side, old), (hts, widened, old_internal)) in groups {
        let Some(w) = windows.get(&tt) else { continue };
        // New chunks of the same hypertables inside the moved range.
        let in_range = |t: &NewTask| match side {
            "until" => t.chunk.time_end > old_internal && t.chunk.time_start < w.until.internal,
            _ => t.chunk.time_start < old_internal,
        };
        let new_chunks: BTreeSet<_> = tasks
            .iter()
            .zip(actions)
            .filter(|(t, a)| **a == Action::New && hts.contains(&label(t)) && in_range(t))
            .map(|(t, _)| &t.chunk.chunk)
            .collect();
        let range = match side {
            "until" => format!("[{old}, {})", w.until.literal),
            _ => format!(
                "[{}, {old})",
                w.from
                    .as_ref()
                    .map(|f| f.literal.clone())
                    .unwrap_or_else(|| "the beginning".into())
            ),
        };
        let names: Vec<_> = hts.into_iter().collect();
        out.push(format!(
            "{} {} staged before with --{side} {old}. This stage widens {widened} chunk(s){}: \
             copy will delete the target's rows in {range}, including what dual-writes put \
             there, and copy the source's instead. Only do this if that range no longer \
             receives writes on the target alone.",
            names.join(", "),
            if names.len() == 1 { "was" } else { "were" },
            if new_chunks.is_empty() {
                String::new()
            } else {
                format!(" and adds {} new chunk(s) in that range", new_chunks.len())
            },
        ));
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

/// Source. Whether it is a hot standby; the commit time (on the primary) of
/// the last transaction it replayed, in microseconds since the Unix epoch
/// and as text; NULL when not a standby or nothing was replayed yet.
// language=PostgreSQL
pub(crate) const STANDBY_REPLAYED: &str = "\
SELECT pg_is_in_recovery(),
       (extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000000)::int8,
       pg_last_xact_replay_timestamp()::text";

/// A hot-standby source holds only what it has replayed: when the last
/// commit it replayed is older than a timestamptz `--until`, rows the
/// primary committed since then (below `--until`) are not there yet. A
/// warning, not a refusal: a primary with no writes since then leaves the
/// standby complete with an old replay time.
async fn standby_behind_until(
    src: &crate::db::Db,
    windows: &HashMap<catalog::TimeType, plan::Window>,
) -> Result<Option<String>> {
    let r = src
        .query_one(STANDBY_REPLAYED, &[], "reading the standby's replay state")
        .await?;
    if !r.get::<_, bool>(0) {
        return Ok(None);
    }
    let Some(w) = windows.get(&catalog::TimeType::TimestampTz) else {
        return Ok(None);
    };
    let replayed: Option<i64> = r.get(1);
    let shown: Option<String> = r.get(2);
    Ok(match (replayed, shown) {
        (Some(at), Some(shown)) if at < w.until.internal => Some(format!(
            "source: the source is a hot standby, and the last transaction it replayed committed \
             on the primary at {shown}, before --until {}: rows the primary committed since \
             then are not on the standby yet, and neither this stage nor the copy would see \
             them. Unless the primary has had no writes since, wait until the standby has \
             replayed past --until (`hyperfill check` shows how far it is) and stage again, or \
             stage and copy from the primary",
            w.until.literal
        )),
        (None, _) | (_, None) => Some(format!(
            "source: the source is a hot standby that has replayed no transaction since it \
             started, so it cannot tell whether it holds every row below --until {}. Make \
             sure it has caught up with the primary (`hyperfill check` shows its lag) before \
             copying, or stage and copy from the primary",
            w.until.literal
        )),
        _ => None,
    })
}

/// Target. $1 = hypertable schema, $2 = table. Whether TimescaleDB knows
/// it as a hypertable.
// language=PostgreSQL
pub(crate) const IS_HYPERTABLE: &str = "\
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

/// Target. $1 = quoted relation names. Those the session's role does not
/// own (directly or through a role it is a member of).
// language=PostgreSQL
pub(crate) const NOT_OWNED: &str = "\
SELECT r FROM unnest($1::text[]) AS r
WHERE to_regclass(r) IS NOT NULL
  AND NOT pg_has_role((SELECT c.relowner FROM pg_class c WHERE c.oid = to_regclass(r)), 'USAGE')";

/// A compressed chunk is created and filled on the target with functions
/// TimescaleDB allows the hypertable's owner only (`compress_chunk`, and from
/// 2.29.1 `create_compressed_chunk`): refuse before anything is created,
/// rather than fail half-way through creating the target chunks.
async fn check_target_ownership(tgt: &crate::db::Db, tasks: &[NewTask]) -> Result<()> {
    let compressed: Vec<String> = tasks
        .iter()
        .filter(|t| t.chunk.compressed_chunk.is_some())
        .map(|t| t.chunk.hypertable.sql())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if compressed.is_empty() {
        return Ok(());
    }
    let rows = tgt
        .query(
            NOT_OWNED,
            &[&compressed],
            "checking who owns the target hypertables",
        )
        .await?;
    let not_owned: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if not_owned.is_empty() {
        return Ok(());
    }
    Err(Error::Precondition {
        side: crate::error::Side::Target,
        message: format!(
            "the target role does not own {}, whose staged chunks are compressed on the source: \
             TimescaleDB lets only a hypertable's owner create and fill compressed chunks. \
             Connect to the target as the owner, or GRANT <owner role> TO <role>. Nothing was \
             changed",
            not_owned.join(", ")
        ),
    })
}

/// Source. $1 = quoted relation names. Those the session's role may not
/// SELECT from (relations dropped meanwhile are left out).
// language=PostgreSQL
pub(crate) const NOT_READABLE: &str = "\
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
async fn check_chunk_shapes(
    tgt: &crate::db::Db,
    features: &catalog::Features,
    tasks: &[NewTask],
) -> Result<()> {
    let mut by_ht: BTreeMap<&QualifiedName, Vec<&SourceChunk>> = BTreeMap::new();
    for t in tasks {
        by_ht.entry(&t.chunk.hypertable).or_default().push(&t.chunk);
    }
    let mut problems = Vec::new();
    for (ht, chunks) in by_ht {
        let known = catalog::target_chunks_by_slices(tgt, features, ht).await?;
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
    source_features: &catalog::Features,
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
        // The chunk's own settings first (recorded at compression), then
        // the hypertable's.
        let mut keys = Vec::new();
        match source_features.settings_key {
            catalog::compat::SettingsKey::Chunk => keys.push(&chunk.chunk),
            catalog::compat::SettingsKey::CompressedChunk => {
                keys.extend(chunk.compressed_chunk.as_ref())
            }
        }
        keys.push(ht);
        let source = catalog::compression_settings(src, &keys).await?;
        let target = catalog::compression_settings(tgt, &[ht]).await?;
        match (source, target) {
            (Some(s), Some(t)) if s == t => {}
            (Some(s), t) => {
                let why = catalog::default_order_note(t.as_ref());
                problems.push(format!(
                    "{ht}: chunk {} is compressed with ({}) on the source, but the target hypertable \
                     {}{why}. Fix: on the target, ALTER TABLE {ht} SET (timescaledb.compress, {})",
                    chunk.chunk,
                    s.as_options(),
                    match t {
                        Some(t) => format!("uses ({})", t.as_options()),
                        None => "has compression off".to_string(),
                    },
                    s.as_options()
                ))
            }
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

/// The staged tasks against what the queue holds: new ones, widened ones
/// (one per chunk), and how many are already covered.
struct Classified<'a> {
    new: Vec<(&'a NewTask, TaskWindow)>,
    widened: Vec<(&'a NewTask, TaskWindow)>,
    widened_chunks: HashSet<QualifiedName>,
    already_staged: u64,
    /// What the stage does with each task, in `tasks`' order.
    actions: Vec<Action>,
}

fn classify<'a>(
    tasks: &'a [NewTask],
    existing: &HashMap<QualifiedName, TaskWindow>,
) -> Classified<'a> {
    let actions = plan::classify(tasks, existing);
    let mut c = Classified {
        new: Vec::new(),
        widened: Vec::new(),
        widened_chunks: HashSet::new(),
        already_staged: 0,
        actions: Vec::new(),
    };
    for (t, a) in tasks.iter().zip(&actions) {
        match a {
            Action::New => c.new.push((
                t,
                TaskWindow {
                    lower: t.lower.clone(),
                    upper: t.upper.clone(),
                },
            )),
            Action::Widen { window, .. } => {
                c.widened_chunks.insert(t.chunk.chunk.clone());
                c.widened.push((t, window.clone()));
            }
            Action::Covered => c.already_staged += 1,
            Action::Merged => {}
        }
    }
    c.actions = actions;
    c
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
