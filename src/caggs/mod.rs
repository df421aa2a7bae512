//! Continuous aggregates: which ones a filter selects, their watermarks, and
//! the refresh of the target's from its watermark up to the source's.

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
       _timescaledb_functions.cagg_watermark(ca.mat_hypertable_id)
FROM _timescaledb_catalog.continuous_agg ca
JOIN tree ON tree.mat_hypertable_id = ca.mat_hypertable_id";

/// One refresh to run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refresh {
    pub view: QualifiedName,
    pub depth: i32,
    pub time_type: TimeType,
    /// `None`: from the beginning (the target never materialized anything).
    pub start: Option<i64>,
    pub end: i64,
}

/// Plan the refreshes: for every selected cagg whose source watermark is past
/// the target's, the window between the two, shallowest in the hierarchy first.
pub fn plan(
    source: &[(QualifiedName, i64)],
    target: &[(QualifiedName, i32, Option<TimeType>, i64)],
) -> Result<(Vec<Refresh>, Vec<QualifiedName>)> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (view, src_wm) in source {
        let Some((_, depth, tt, tgt_wm)) = target.iter().find(|t| &t.0 == view) else {
            missing.push(view.clone());
            continue;
        };
        let Some(tt) = tt else {
            return Err(Error::Internal(format!(
                "continuous aggregate {view} has no time dimension"
            )));
        };
        if tgt_wm >= src_wm {
            continue;
        }
        out.push(Refresh {
            view: view.clone(),
            depth: *depth,
            time_type: *tt,
            start: (*tgt_wm != i64::MIN).then_some(*tgt_wm),
            end: *src_wm,
        });
    }
    out.sort_by(|a, b| (a.depth, &a.view).cmp(&(b.depth, &b.view)));
    Ok((out, missing))
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

pub async fn target_caggs(db: &Db) -> Result<Vec<(QualifiedName, i32, Option<TimeType>, i64)>> {
    let rows = db
        .query(
            TARGET_CAGGS,
            &[],
            "reading continuous aggregates and their watermarks",
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let tt: Option<String> = r.get(3);
            (
                QualifiedName::from_row(r, 0),
                r.get(2),
                tt.as_deref().and_then(TimeType::from_pg),
                r.get(4),
            )
        })
        .collect())
}

/// The SQL expression turning an internal value (`$n` as bigint) into the type.
fn from_internal(ext: &Extension, tt: TimeType, param: &str) -> String {
    let f = quote_ident(&ext.functions_schema);
    match tt {
        TimeType::TimestampTz => format!("{f}.to_timestamp({param}::bigint)"),
        TimeType::Timestamp => format!("{f}.to_timestamp_without_timezone({param}::bigint)"),
        TimeType::Date => format!("{f}.to_date({param}::bigint)"),
        other => format!("{param}::bigint::{}", other.sql()),
    }
}

/// Run one refresh (autocommit: refresh_continuous_aggregate cannot run in a
/// transaction block).
pub async fn refresh(db: &Db, ext: &Extension, r: &Refresh) -> Result<()> {
    let start = match r.start {
        Some(_) => from_internal(ext, r.time_type, "$2"),
        None => format!("NULL::{}", r.time_type.sql()),
    };
    let end = from_internal(ext, r.time_type, "$3");
    let sql = format!(
        "CALL {}.refresh_continuous_aggregate($1::text::regclass, {start}, {end})",
        quote_ident(&ext.schema)
    );
    let start_v = r.start.unwrap_or(0);
    let what = format!("refreshing continuous aggregate {}", r.view);
    if r.start.is_some() {
        db.execute(&sql, &[&r.view.sql(), &start_v, &r.end], &what)
            .await?;
    } else {
        // $2 unused: keep the parameter list dense.
        let sql = sql.replace("$3", "$2");
        db.execute(&sql, &[&r.view.sql(), &r.end], &what).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: &str) -> QualifiedName {
        QualifiedName::new("public", n)
    }

    #[test]
    fn refreshes_lagging_caggs_parents_first() {
        let source = vec![(q("daily"), 300), (q("hourly"), 200), (q("same"), 50)];
        let target = vec![
            (q("daily"), 1, Some(TimeType::TimestampTz), 100),
            (q("hourly"), 0, Some(TimeType::TimestampTz), i64::MIN),
            (q("same"), 0, Some(TimeType::BigInt), 50),
        ];
        let (plan, missing) = plan(&source, &target).unwrap();
        assert!(missing.is_empty());
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].view, q("hourly"));
        assert_eq!(
            plan[0].start, None,
            "never materialized: from the beginning"
        );
        assert_eq!(
            (plan[1].view.clone(), plan[1].start, plan[1].end),
            (q("daily"), Some(100), 300)
        );
    }

    #[test]
    fn caggs_missing_on_the_target_are_reported() {
        let (plan, missing) = plan(&[(q("x"), 5)], &[]).unwrap();
        assert!(plan.is_empty());
        assert_eq!(missing, vec![q("x")]);
    }
}
