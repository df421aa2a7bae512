//! Comparing a continuous aggregate's view on both sides over the range
//! `refresh-caggs` refreshed on the target: per bucket, the number of rows,
//! an exact digest of the non-float columns, and float sums within a
//! tolerance (the two servers may sum the same rows in another order).

use std::collections::BTreeMap;

use crate::caggs::from_internal;
use crate::catalog::{self, Column, Extension, TimeType};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::ident::{quote_ident, QualifiedName};

/// What comparing one view found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewOutcome {
    Match {
        buckets: i64,
    },
    /// Readable description of the differences.
    Mismatch(String),
    /// The view no longer exists on the source.
    Gone,
}

/// Either side. $1 = view schema, $2 = view name. The bucket column: the
/// time column of the aggregate's materialization hypertable, which the view
/// shows under the same name.
// language=PostgreSQL
pub(crate) const BUCKET_COLUMN: &str = "\
SELECT d.column_name::text
FROM _timescaledb_catalog.continuous_agg ca
JOIN _timescaledb_catalog.dimension d
  ON d.hypertable_id = ca.mat_hypertable_id AND d.interval_length IS NOT NULL
WHERE ca.user_view_schema = $1 AND ca.user_view_name = $2
ORDER BY d.id LIMIT 1";

/// How many differing buckets a mismatch message names.
const SHOWN: usize = 5;

fn is_float(c: &Column) -> bool {
    c.type_schema == "pg_catalog" && matches!(c.type_name.as_str(), "real" | "double precision")
}

/// The per-bucket summary query: bucket, row count, digest of the other
/// non-float columns, then per float column its sum and sum of absolute
/// values. `$1`/`$2` are the range (internal values); without a start only `$1`.
fn per_bucket_query(
    ext: &Extension,
    view: &QualifiedName,
    bucket: &str,
    tt: TimeType,
    columns: &[Column],
    has_start: bool,
) -> String {
    let b = quote_ident(bucket);
    let exact: Vec<String> = columns
        .iter()
        .filter(|c| !is_float(c))
        .map(|c| quote_ident(&c.name))
        .collect();
    let tuple = format!("ROW({})::text COLLATE \"C\"", exact.join(", "));
    let mut exprs = vec![
        format!("{b}::text"),
        "count(*)::text".to_string(),
        format!("md5(string_agg({tuple}, ',' ORDER BY {tuple}))"),
    ];
    for c in columns.iter().filter(|c| is_float(c)) {
        let q = quote_ident(&c.name);
        exprs.push(format!("sum({q}::float8)::text"));
        exprs.push(format!("sum(abs({q}::float8))::text"));
    }
    let range = if has_start {
        format!(
            "{b} >= {} AND {b} < {}",
            from_internal(ext, tt, "$1"),
            from_internal(ext, tt, "$2")
        )
    } else {
        format!("{b} < {}", from_internal(ext, tt, "$1"))
    };
    format!(
        "SELECT {} FROM {} WHERE {range} GROUP BY {b} ORDER BY {b}",
        exprs.join(", "),
        view.sql()
    )
}

type Buckets = BTreeMap<String, Vec<Option<String>>>;

async fn buckets(
    db: &Db,
    sql: &str,
    start: Option<i64>,
    end: i64,
    view: &QualifiedName,
) -> Result<Buckets> {
    let what = format!("summarizing continuous aggregate {view} per bucket");
    let rows = match start {
        Some(s) => db.query(sql, &[&s, &end], &what).await?,
        None => db.query(sql, &[&end], &what).await?,
    };
    Ok(rows
        .iter()
        .map(|r| {
            let key: String = r.get(0);
            (key, (1..r.len()).map(|i| r.get(i)).collect())
        })
        .collect())
}

/// Whether two per-bucket summaries agree: count and digest exactly, float
/// sums within 1e-12 of the larger sum of absolute values.
fn same(s: &[Option<String>], t: &[Option<String>]) -> bool {
    if s.len() != t.len() || s[..2] != t[..2] {
        return false;
    }
    let f = |v: &Option<String>| v.as_deref().and_then(|x| x.parse::<f64>().ok());
    s[2..].chunks(2).zip(t[2..].chunks(2)).all(|(a, b)| {
        if a[0] == b[0] {
            return true;
        }
        let (Some(x), Some(y)) = (f(&a[0]), f(&b[0])) else {
            return false;
        };
        let scale = [f(&a[1]), f(&b[1])]
            .into_iter()
            .flatten()
            .fold(x.abs().max(y.abs()), f64::max);
        (x - y).abs() <= scale * 1e-12
    })
}

/// Compare the view of `view` on both sides for buckets in `[start, end)`
/// (internal values of `tt`; no start: from the beginning).
pub async fn verify_view(
    src: &Db,
    tgt: &Db,
    ext: &Extension,
    view: &QualifiedName,
    tt: TimeType,
    start: Option<i64>,
    end: i64,
) -> Result<ViewOutcome> {
    let bucket: Option<String> = tgt
        .query_opt(
            BUCKET_COLUMN,
            &[&view.schema, &view.name],
            &format!("reading the bucket column of {view}"),
        )
        .await?
        .map(|r| r.get(0));
    let Some(bucket) = bucket else {
        return Ok(ViewOutcome::Mismatch(format!(
            "continuous aggregate {view} no longer exists on the target"
        )));
    };
    let columns = catalog::relation_columns(src, view).await?;
    if columns.is_empty() {
        return Ok(ViewOutcome::Gone);
    }
    let sql = per_bucket_query(ext, view, &bucket, tt, &columns, start.is_some());
    let s = buckets(src, &sql, start, end, view).await?;
    let t = match buckets(tgt, &sql, start, end, view).await {
        Ok(t) => t,
        Err(e @ Error::Db { .. }) => {
            return Ok(ViewOutcome::Mismatch(format!(
                "cannot summarize {view} on the target: {e}"
            )))
        }
        Err(e) => return Err(e),
    };
    let mut only_source = Vec::new();
    let mut only_target = Vec::new();
    let mut differ = Vec::new();
    for (k, sv) in &s {
        match t.get(k) {
            None => only_source.push(k.as_str()),
            Some(tv) if !same(sv, tv) => differ.push(k.as_str()),
            Some(_) => {}
        }
    }
    for k in t.keys() {
        if !s.contains_key(k) {
            only_target.push(k.as_str());
        }
    }
    if only_source.is_empty() && only_target.is_empty() && differ.is_empty() {
        return Ok(ViewOutcome::Match {
            buckets: s.len() as i64,
        });
    }
    let list = |v: &[&str]| {
        let mut out = v.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
        if v.len() > SHOWN {
            out.push_str(&format!(", ... ({} in all)", v.len()));
        }
        out
    };
    let mut parts = Vec::new();
    if !only_source.is_empty() {
        parts.push(format!(
            "{} bucket(s) only on the source: {}",
            only_source.len(),
            list(&only_source)
        ));
    }
    if !only_target.is_empty() {
        parts.push(format!(
            "{} bucket(s) only on the target: {}",
            only_target.len(),
            list(&only_target)
        ));
    }
    if !differ.is_empty() {
        parts.push(format!(
            "{} bucket(s) with different rows: {}",
            differ.len(),
            list(&differ)
        ));
    }
    Ok(ViewOutcome::Mismatch(format!(
        "continuous aggregate {view} differs ({} bucket(s) on the source): {}",
        s.len(),
        parts.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<Option<String>> {
        x.iter().map(|s| Some(s.to_string())).collect()
    }

    #[test]
    fn bucket_summaries_tolerate_float_rounding_only() {
        let a = v(&["3", "abc", "1.2000000000000002", "1.2"]);
        assert!(same(&a, &v(&["3", "abc", "1.2", "1.2"])));
        assert!(!same(&a, &v(&["3", "abc", "1.3", "1.3"])));
        assert!(!same(&a, &v(&["2", "abc", "1.2", "1.2"])));
        assert!(!same(&a, &v(&["3", "abd", "1.2", "1.2"])));
    }
}
