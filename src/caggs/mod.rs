//! Continuous aggregates: which ones a filter selects, their watermarks, and
//! the refresh of the target's from where the copied materialization ends
//! up to the source's watermark.

use crate::catalog::{Extension, TimeType};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::ident::{quote_ident, QualifiedName};

/// Source. $1 = filter regex or NULL (case-insensitive, on `schema.view`),
/// $2 = cascade up (caggs built on the matches), $3 = cascade down (the caggs
/// the matches are built on). Cascades apply only with a filter. Returns view
/// schema, view name, watermark (internal int64).
// language=PostgreSQL
pub(crate) const SOURCE_CAGGS: &str = "\
WITH RECURSIVE
matched AS (
    SELECT mat_hypertable_id AS id FROM _timescaledb_catalog.continuous_agg
    WHERE $1::text IS NULL OR format('%I.%I', user_view_schema, user_view_name) ~* $1::text
),
up AS (
    SELECT id FROM matched WHERE $2::bool AND $1::text IS NOT NULL
    UNION
    SELECT ca.mat_hypertable_id FROM _timescaledb_catalog.continuous_agg ca
    JOIN up ON ca.parent_mat_hypertable_id = up.id
),
down AS (
    SELECT id FROM matched WHERE $3::bool AND $1::text IS NOT NULL
    UNION
    SELECT ca.parent_mat_hypertable_id FROM _timescaledb_catalog.continuous_agg ca
    JOIN down ON ca.mat_hypertable_id = down.id
    WHERE ca.parent_mat_hypertable_id IS NOT NULL
),
selected AS (SELECT id FROM matched UNION SELECT id FROM up UNION SELECT id FROM down)
SELECT ca.user_view_schema::text, ca.user_view_name::text,
       _timescaledb_functions.cagg_watermark(ca.mat_hypertable_id)
FROM _timescaledb_catalog.continuous_agg ca
JOIN selected s ON s.id = ca.mat_hypertable_id";

/// Target. Every continuous aggregate: view schema, view name, depth in the
/// hierarchy (0 for one built on a hypertable), time type of its buckets,
/// watermark (internal int64).
// language=PostgreSQL
pub(crate) const TARGET_CAGGS: &str = "\
WITH RECURSIVE tree AS (
    SELECT mat_hypertable_id, 0 AS depth FROM _timescaledb_catalog.continuous_agg
    WHERE parent_mat_hypertable_id IS NULL
    UNION ALL
    SELECT ca.mat_hypertable_id, tree.depth + 1 FROM _timescaledb_catalog.continuous_agg ca
    JOIN tree ON ca.parent_mat_hypertable_id = tree.mat_hypertable_id
)
SELECT ca.user_view_schema::text, ca.user_view_name::text, tree.depth,
       (SELECT format_type(d.column_type, NULL) FROM _timescaledb_catalog.dimension d
        WHERE d.hypertable_id = ca.mat_hypertable_id AND d.interval_length IS NOT NULL
        ORDER BY d.id LIMIT 1),
       _timescaledb_functions.cagg_watermark(ca.mat_hypertable_id),
       h.schema_name::text, h.table_name::text,
       (SELECT d.column_name::text FROM _timescaledb_catalog.dimension d
        WHERE d.hypertable_id = ca.mat_hypertable_id AND d.interval_length IS NOT NULL
        ORDER BY d.id LIMIT 1)
FROM _timescaledb_catalog.continuous_agg ca
JOIN _timescaledb_catalog.hypertable h ON h.id = ca.mat_hypertable_id
JOIN tree ON tree.mat_hypertable_id = ca.mat_hypertable_id";

/// Target. The last bucket of a materialization hypertable, as TimescaleDB's
/// internal int64 (an index scan of its time column). Built per cagg:
/// `{functions}` is TimescaleDB's functions schema, `{column}` the quoted
/// bucket column, `{relation}` the quoted materialization hypertable.
// language=PostgreSQL
const LAST_BUCKET: &str =
    "SELECT {functions}.time_to_internal({column}) FROM {relation} ORDER BY {column} DESC LIMIT 1";

/// A continuous aggregate on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetCagg {
    pub view: QualifiedName,
    /// 0 for one built on a hypertable, parent + 1 for one built on a cagg.
    pub depth: i32,
    pub time_type: Option<TimeType>,
    pub watermark: i64,
    /// Where the last bucket of its materialization starts (internal),
    /// None when it has none.
    pub last_bucket: Option<i64>,
}

/// What the queue says about the copy of one cagg's materialization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub view: QualifiedName,
    /// Where the staged tasks end (internal): the materialized rows below it
    /// were staged for copying, nothing above it was.
    pub staged_upper: i64,
    /// The lowest source watermark a copied chunk was read at: below it the
    /// copied rows are what the source had materialized.
    pub copied_watermark: Option<i64>,
    /// Tasks of the materialization still pending or failed.
    pub not_copied: i64,
}

/// The last refresh `refresh-caggs` ran for a cagg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRefresh {
    pub view: QualifiedName,
    pub start: Option<i64>,
    pub end: i64,
}

/// Where a refresh starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// From where the copied materialization ends (staged bound, or the
    /// source watermark the copy read, whichever is lower).
    Staged,
    /// Its materialization was not staged: from the target's own watermark.
    TargetWatermark,
}

/// One refresh to run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refresh {
    pub view: QualifiedName,
    pub depth: i32,
    pub time_type: TimeType,
    /// `None`: from the beginning (the target never materialized anything).
    pub start: Option<i64>,
    pub end: i64,
    pub basis: Basis,
}

/// The refreshes to run and what needs none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub refreshes: Vec<Refresh>,
    /// On the source, not on the target.
    pub missing: Vec<QualifiedName>,
    /// Needing no refresh, with why.
    pub up_to_date: Vec<(QualifiedName, String)>,
    /// Not refreshed now, with why and what to do.
    pub held_back: Vec<(QualifiedName, String)>,
}

/// Plan the refreshes, shallowest in the hierarchy first. A cagg whose
/// materialization hyperfill copied is refreshed from where the copied rows
/// end (the staged bound, or the source watermark the copy read if lower;
/// or the target's own watermark if that is lower still) up to the source's
/// watermark, even when the target's watermark claims more (a schema
/// restored with pg_dump carries the source's). One that was not
/// staged is refreshed from the target's watermark. A range that the last
/// recorded refresh covered is not refreshed again.
pub fn plan(
    source: &[(QualifiedName, i64)],
    target: &[TargetCagg],
    staged: &[Staged],
    last: &[LastRefresh],
    show: impl Fn(TimeType, i64) -> String,
) -> Result<Plan> {
    let mut p = Plan::default();
    for (view, src_wm) in source {
        let Some(t) = target.iter().find(|t| &t.view == view) else {
            p.missing.push(view.clone());
            continue;
        };
        let Some(tt) = t.time_type else {
            return Err(Error::Internal(format!(
                "continuous aggregate {view} has no time dimension"
            )));
        };
        let (start, basis) = match staged.iter().find(|s| &s.view == view) {
            Some(s) if s.not_copied > 0 => {
                p.held_back.push((
                    view.clone(),
                    format!(
                        "{} chunk(s) of its materialization are not copied yet: run copy, then \
                         refresh-caggs again",
                        s.not_copied
                    ),
                ));
                continue;
            }
            Some(s) => {
                // Below where the copied materialization ends, the buckets
                // are the source's own and stay as copied, whatever the
                // target's watermark says (a target cagg made WITH NO DATA
                // has the lowest one): refreshing them would recompute them
                // from the target's raw rows, which lack every chunk the
                // source's retention dropped, and so delete those buckets.
                // The refresh moves the target's watermark to the last
                // bucket it materializes, the source's watermark.
                let copied_end = s.staged_upper.min(s.copied_watermark.unwrap_or(i64::MAX));
                // Everything the source materialized was copied, but the
                // target's watermark is behind (the copy does not move it):
                // refreshing its last bucket does, to the source's.
                let start = match t.last_bucket {
                    _ if copied_end < *src_wm || t.watermark >= *src_wm => copied_end,
                    Some(b) if b < *src_wm => b,
                    // No bucket below the source's watermark on the target:
                    // from its own watermark, as for one never staged.
                    _ => t.watermark,
                };
                (Some(start), Basis::Staged)
            }
            None => (
                (t.watermark != i64::MIN).then_some(t.watermark),
                Basis::TargetWatermark,
            ),
        };
        if start.is_some_and(|s| s >= *src_wm) {
            let why = match basis {
                Basis::Staged => format!(
                    "its copied materialization reaches the source's watermark ({})",
                    show(tt, *src_wm)
                ),
                Basis::TargetWatermark => "materialized as far as on the source".to_string(),
            };
            p.up_to_date.push((view.clone(), why));
            continue;
        }
        let covered = last.iter().find(|l| &l.view == view).filter(|l| {
            let starts_before = match (l.start, start) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a <= b,
            };
            starts_before && l.end >= *src_wm
        });
        if let Some(l) = covered {
            p.up_to_date.push((
                view.clone(),
                format!(
                    "already refreshed by refresh-caggs in range [{}, {})",
                    l.start
                        .map(|v| show(tt, v))
                        .unwrap_or_else(|| "the beginning".into()),
                    show(tt, l.end)
                ),
            ));
            continue;
        }
        p.refreshes.push(Refresh {
            view: view.clone(),
            depth: t.depth,
            time_type: tt,
            start,
            end: *src_wm,
            basis,
        });
    }
    p.refreshes
        .sort_by(|a, b| (a.depth, &a.view).cmp(&(b.depth, &b.view)));
    Ok(p)
}

pub async fn source_watermarks(
    db: &Db,
    filter: Option<&str>,
    up: bool,
    down: bool,
) -> Result<Vec<(QualifiedName, i64)>> {
    let rows = db
        .query(
            SOURCE_CAGGS,
            &[&filter, &up, &down],
            "reading continuous aggregates and their watermarks",
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (QualifiedName::from_row(r, 0), r.get(2)))
        .collect())
}

pub async fn target_caggs(db: &Db, ext: &Extension) -> Result<Vec<TargetCagg>> {
    let rows = db
        .query(
            TARGET_CAGGS,
            &[],
            "reading continuous aggregates and their watermarks",
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let tt: Option<String> = r.get(3);
        let view = QualifiedName::from_row(r, 0);
        let column: Option<String> = r.get(7);
        let last_bucket = match column {
            Some(column) => {
                let sql = LAST_BUCKET
                    .replace("{functions}", &quote_ident(&ext.functions_schema))
                    .replace("{column}", &quote_ident(&column))
                    .replace("{relation}", &QualifiedName::from_row(r, 5).sql());
                db.query_opt(
                    &sql,
                    &[],
                    &format!("reading the last bucket of continuous aggregate {view}"),
                )
                .await?
                .map(|b| b.get(0))
            }
            None => None,
        };
        out.push(TargetCagg {
            view,
            depth: r.get(2),
            time_type: tt.as_deref().and_then(TimeType::from_pg),
            watermark: r.get(4),
            last_bucket,
        });
    }
    Ok(out)
}

/// The SQL expression turning an internal value (`$n` as bigint) into the type.
pub fn from_internal(ext: &Extension, tt: TimeType, param: &str) -> String {
    let f = quote_ident(&ext.functions_schema);
    match tt {
        TimeType::TimestampTz => format!("{f}.to_timestamp({param}::bigint)"),
        TimeType::Timestamp => format!("{f}.to_timestamp_without_timezone({param}::bigint)"),
        TimeType::Date => format!("{f}.to_date({param}::bigint)"),
        other => format!("{param}::bigint::{}", other.sql()),
    }
}

/// Run one refresh (autocommit: refresh_continuous_aggregate cannot run in a
/// transaction block). Not forced: TimescaleDB materializes the part of the
/// window above the target's invalidation threshold, and below it the
/// ranges the target logged invalidations for (rows dual-written after the
/// schema was restored). (`force => true`, 2.18 and later, also
/// materializes the bucket at the window's end, past the source's
/// watermark.)
pub async fn refresh(db: &Db, ext: &Extension, r: &Refresh) -> Result<()> {
    let start = match r.start {
        Some(_) => from_internal(ext, r.time_type, "$2"),
        None => format!("NULL::{}", r.time_type.sql()),
    };
    let end = from_internal(
        ext,
        r.time_type,
        if r.start.is_some() { "$3" } else { "$2" },
    );
    let sql = format!(
        "CALL {}.refresh_continuous_aggregate($1::text::regclass, {start}, {end})",
        quote_ident(&ext.schema)
    );
    let what = format!("refreshing continuous aggregate {}", r.view);
    match r.start {
        Some(start_v) => {
            db.execute(&sql, &[&r.view.sql(), &start_v, &r.end], &what)
                .await?
        }
        None => db.execute(&sql, &[&r.view.sql(), &r.end], &what).await?,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: &str) -> QualifiedName {
        QualifiedName::new("public", n)
    }

    fn tc(n: &str, depth: i32, wm: i64) -> TargetCagg {
        TargetCagg {
            view: q(n),
            depth,
            time_type: Some(TimeType::TimestampTz),
            watermark: wm,
            last_bucket: None,
        }
    }

    fn show(_: TimeType, v: i64) -> String {
        v.to_string()
    }

    #[test]
    fn unstaged_caggs_refresh_from_the_target_watermark_parents_first() {
        let source = vec![(q("daily"), 300), (q("hourly"), 200), (q("same"), 50)];
        let target = vec![
            tc("daily", 1, 100),
            tc("hourly", 0, i64::MIN),
            tc("same", 0, 50),
        ];
        let p = plan(&source, &target, &[], &[], show).unwrap();
        assert!(p.missing.is_empty());
        assert_eq!(p.refreshes.len(), 2);
        assert_eq!(p.refreshes[0].view, q("hourly"));
        assert_eq!(
            p.refreshes[0].start, None,
            "never materialized: from the beginning"
        );
        assert_eq!(
            (
                p.refreshes[1].view.clone(),
                p.refreshes[1].start,
                p.refreshes[1].end
            ),
            (q("daily"), Some(100), 300)
        );
        assert_eq!(p.refreshes[1].basis, Basis::TargetWatermark);
        assert_eq!(p.up_to_date.len(), 1);
    }

    #[test]
    fn staged_caggs_refresh_from_where_the_copy_ends_not_the_restored_watermark() {
        // pg_dump carried the source's watermark (200) to the target; the
        // copy staged rows below 150, read at source watermark 180.
        let source = vec![(q("hourly"), 200)];
        let target = vec![tc("hourly", 0, 200)];
        let staged = |wm| Staged {
            view: q("hourly"),
            staged_upper: 150,
            copied_watermark: wm,
            not_copied: 0,
        };
        let p = plan(&source, &target, &[staged(Some(180))], &[], show).unwrap();
        assert_eq!(p.refreshes.len(), 1);
        assert_eq!((p.refreshes[0].start, p.refreshes[0].end), (Some(150), 200));
        assert_eq!(p.refreshes[0].basis, Basis::Staged);
        // Copied when the source had materialized less than the staged bound.
        let p = plan(&source, &target, &[staged(Some(120))], &[], show).unwrap();
        assert_eq!(p.refreshes[0].start, Some(120));
        // A target watermark lower still (restored early, or never
        // materialized) does not start it earlier: the copied buckets stay.
        for low in [100, -210_866_803_200_000_000] {
            let mut lagging = target.clone();
            lagging[0].watermark = low;
            let p = plan(&source, &lagging, &[staged(Some(180))], &[], show).unwrap();
            assert_eq!(p.refreshes[0].start, Some(150));
        }
        // Everything copied (T past the source's watermark), but the
        // target's watermark behind: its last bucket is refreshed, which
        // moves the watermark; without a bucket, from its watermark.
        let all = Staged {
            staged_upper: 250,
            ..staged(Some(200))
        };
        let mut behind = target.clone();
        behind[0].watermark = 100;
        behind[0].last_bucket = Some(190);
        let p = plan(&source, &behind, std::slice::from_ref(&all), &[], show).unwrap();
        assert_eq!((p.refreshes[0].start, p.refreshes[0].end), (Some(190), 200));
        behind[0].last_bucket = None;
        let p = plan(&source, &behind, std::slice::from_ref(&all), &[], show).unwrap();
        assert_eq!(p.refreshes[0].start, Some(100));
        // ... and with the target's watermark at the source's: up to date.
        let p = plan(&source, &target, &[all], &[], show).unwrap();
        assert!(p.refreshes.is_empty(), "{p:?}");
        // Refreshed over that range before: nothing to do.
        let last = [LastRefresh {
            view: q("hourly"),
            start: Some(120),
            end: 200,
        }];
        let p = plan(&source, &target, &[staged(Some(120))], &last, show).unwrap();
        assert!(p.refreshes.is_empty());
        assert!(p.up_to_date[0].1.contains("already refreshed"), "{p:?}");
    }

    #[test]
    fn a_cagg_whose_materialization_is_not_copied_yet_is_held_back() {
        let staged = [Staged {
            view: q("hourly"),
            staged_upper: 150,
            copied_watermark: None,
            not_copied: 2,
        }];
        let p = plan(
            &[(q("hourly"), 200)],
            &[tc("hourly", 0, 200)],
            &staged,
            &[],
            show,
        )
        .unwrap();
        assert!(p.refreshes.is_empty());
        assert!(p.held_back[0].1.contains("2 chunk(s)"));
    }

    #[test]
    fn caggs_missing_on_the_target_are_reported() {
        let p = plan(&[(q("x"), 5)], &[], &[], &[], show).unwrap();
        assert!(p.refreshes.is_empty());
        assert_eq!(p.missing, vec![q("x")]);
    }
}
