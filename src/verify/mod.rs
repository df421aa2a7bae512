//! Per-chunk verification: the same summary query on both sides, compared;
//! and (`cagg`) a continuous aggregate's view compared per bucket over the
//! range `refresh-caggs` refreshed. Knows nothing about the queue.

pub mod cagg;

use crate::catalog::{self, Column};
use crate::copy::target_chunk;
use crate::db::Db;
use crate::error::Result;
use crate::ident::{quote_ident, QualifiedName};
use crate::queue::Task;

/// The result of verifying one task. Expected outcomes are values, not errors.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Match {
        rows: i64,
    },
    Mismatch(Mismatch),
    /// The source chunk no longer exists: nothing to compare.
    SourceGone,
}

/// What differs between the two sides of one task.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Mismatch {
    /// Readable description of every difference.
    #[serde(skip)]
    pub message: String,
    /// Rows in the task's range on each side (`None`: not counted, e.g. the
    /// target chunk is missing or could not be read).
    pub source_rows: Option<i64>,
    pub target_rows: Option<i64>,
    pub differences: Vec<Difference>,
}

impl Mismatch {
    /// A chunk that could not be compared at all: only a message.
    pub fn unreadable(message: String) -> Self {
        Mismatch {
            message,
            source_rows: None,
            target_rows: None,
            differences: Vec::new(),
        }
    }

    /// The structured part, for the queue and JSON.
    pub fn details(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// One aggregate that differs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Difference {
    /// The column, or `None` for the row count.
    pub column: Option<String>,
    /// `row count`, `non-null count`, `min (as text)`, `max (as text)`, `sum`.
    pub aggregate: &'static str,
    pub source: Option<String>,
    pub target: Option<String>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".into());
        if let Some(c) = &self.column {
            write!(f, "column \"{c}\": ")?;
        }
        write!(
            f,
            "{}: source={} target={}",
            self.aggregate,
            show(&self.source),
            show(&self.target)
        )
    }
}

/// One aggregate of the summary.
#[derive(Debug, Clone)]
struct Field {
    column: Option<String>,
    aggregate: &'static str,
    kind: FieldKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FieldKind {
    /// Compared as text, exactly.
    Exact,
    /// A float sum, compared with a tolerance derived from the matching
    /// sum of absolute values (the next field).
    FloatSum,
    /// Sum of absolute values: only feeds the tolerance.
    FloatAbsSum,
}

/// The summary query for these columns: `count(*)`, then per column
/// `count`, `min` and `max` of its text form (in the C collation), and the sum
/// of numeric columns. Every value comes back as text.
fn summary_query(
    rel: &QualifiedName,
    columns: &[Column],
    filter: Option<&str>,
) -> (String, Vec<Field>) {
    let mut exprs = vec!["count(*)::text".to_string()];
    let mut fields = vec![Field {
        column: None,
        aggregate: "row count",
        kind: FieldKind::Exact,
    }];
    for c in columns {
        let q = quote_ident(&c.name);
        let mut push = |e: String, aggregate: &'static str, kind: FieldKind| {
            exprs.push(e);
            fields.push(Field {
                column: Some(c.name.clone()),
                aggregate,
                kind,
            });
        };
        push(
            format!("count({q})::text"),
            "non-null count",
            FieldKind::Exact,
        );
        push(
            format!("min({q}::text COLLATE \"C\")"),
            "min (as text)",
            FieldKind::Exact,
        );
        push(
            format!("max({q}::text COLLATE \"C\")"),
            "max (as text)",
            FieldKind::Exact,
        );
        let ty = c.type_name.as_str();
        if c.type_schema == "pg_catalog" {
            if matches!(ty, "smallint" | "integer" | "bigint") || ty.starts_with("numeric") {
                push(format!("sum({q})::text"), "sum", FieldKind::Exact);
            } else if matches!(ty, "real" | "double precision") {
                push(
                    format!("sum({q}::float8)::text"),
                    "sum",
                    FieldKind::FloatSum,
                );
                push(
                    format!("sum(abs({q}::float8))::text"),
                    "sum of absolute values",
                    FieldKind::FloatAbsSum,
                );
            }
        }
    }
    let where_clause = filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
    // No ONLY: a compressed chunk is then read decompressed, so layouts
    // (compressed or not) never cause a false alarm.
    let sql = format!(
        "SELECT {} FROM {}{where_clause}",
        exprs.join(", "),
        rel.sql()
    );
    (sql, fields)
}

async fn summarize(db: &Db, rel: &QualifiedName, sql: &str) -> Result<Vec<Option<String>>> {
    let row = db
        .query_one(sql, &[], &format!("summarizing chunk {rel}"))
        .await?;
    Ok((0..row.len()).map(|i| row.get(i)).collect())
}

/// Compare the two summaries; returns the list of differences.
fn compare(fields: &[Field], src: &[Option<String>], tgt: &[Option<String>]) -> Vec<Difference> {
    let mut diffs = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let (s, t) = (&src[i], &tgt[i]);
        let equal = match f.kind {
            FieldKind::Exact => s == t,
            FieldKind::FloatAbsSum => true,
            FieldKind::FloatSum => float_close(s, t, src.get(i + 1), tgt.get(i + 1)),
        };
        if !equal {
            diffs.push(Difference {
                column: f.column.clone(),
                aggregate: f.aggregate,
                source: s.clone(),
                target: t.clone(),
            });
        }
    }
    diffs
}

fn row_count(summary: &[Option<String>]) -> Option<i64> {
    summary.first()?.as_deref()?.parse().ok()
}

fn float_close(
    s: &Option<String>,
    t: &Option<String>,
    s_abs: Option<&Option<String>>,
    t_abs: Option<&Option<String>>,
) -> bool {
    if s == t {
        return true;
    }
    let parse = |v: &Option<String>| v.as_deref().and_then(|x| x.parse::<f64>().ok());
    let (Some(a), Some(b)) = (parse(s), parse(t)) else {
        return false;
    };
    let scale = [s_abs, t_abs]
        .into_iter()
        .flatten()
        .filter_map(parse)
        .fold(a.abs().max(b.abs()), f64::max);
    // Summation order differs between sides; allow a few ulps per row's worth
    // of magnitude.
    (a - b).abs() <= scale * 1e-12
}

/// Verify one task. Both transactions are open; the caller records the outcome.
pub async fn verify_task(
    src: &Db,
    tgt: &Db,
    features: (&catalog::Features, &catalog::Features),
    task: &Task,
) -> Result<Outcome> {
    let (s_features, t_features) = features;
    if !catalog::chunk_exists(src, s_features, &task.chunk).await? {
        return Ok(Outcome::SourceGone);
    }
    let src_cols = catalog::relation_columns(src, &task.chunk).await?;
    let filter = task.filter();
    let (sql_src, fields) = summary_query(&task.chunk, &src_cols, filter.as_deref());
    let s = summarize(src, &task.chunk, &sql_src).await?;
    let Some(target) = target_chunk::find(
        tgt,
        t_features,
        &task.hypertable,
        task.target_chunk.as_ref(),
        &task.slices,
    )
    .await?
    else {
        if s[0].as_deref() == Some("0") {
            return Ok(Outcome::Match { rows: 0 });
        }
        return Ok(Outcome::Mismatch(Mismatch {
            message: format!(
                "the target has no chunk for source chunk {} (was it dropped on the target?). \
                 Stage and copy it again",
                task.chunk
            ),
            source_rows: row_count(&s),
            target_rows: Some(0),
            differences: Vec::new(),
        }));
    };
    let (sql_tgt, _) = summary_query(&target, &src_cols, filter.as_deref());
    let t = match summarize(tgt, &target, &sql_tgt).await {
        Ok(t) => t,
        Err(e) => {
            return Ok(Outcome::Mismatch(Mismatch {
                source_rows: row_count(&s),
                ..Mismatch::unreadable(format!("cannot summarize target chunk {target}: {e}"))
            }))
        }
    };
    let diffs = compare(&fields, &s, &t);
    if diffs.is_empty() {
        Ok(Outcome::Match {
            rows: row_count(&s).unwrap_or(0),
        })
    } else {
        Ok(Outcome::Mismatch(Mismatch {
            message: format!(
                "source {} and target {target} differ: {}",
                task.chunk,
                diffs
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            source_rows: row_count(&s),
            target_rows: row_count(&t),
            differences: diffs,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            type_name: ty.into(),
            type_schema: "pg_catalog".into(),
            needs_text: false,
            binary_io: String::new(),
            generated: false,
        }
    }

    #[test]
    fn summary_covers_every_column_and_sums_numbers() {
        let (sql, fields) = summary_query(
            &QualifiedName::new("s", "c"),
            &[
                col("t", "timestamp with time zone"),
                col("v", "double precision"),
                col("n", "bigint"),
            ],
            Some("\"t\" < '2024-01-01'::timestamptz"),
        );
        assert_eq!(fields.len(), 1 + 3 + 5 + 4);
        assert!(sql.contains("sum(\"n\")::text"));
        assert!(sql.ends_with("FROM \"s\".\"c\" WHERE \"t\" < '2024-01-01'::timestamptz"));
    }

    #[test]
    fn float_sums_tolerate_rounding_but_not_real_differences() {
        let (_, fields) = summary_query(
            &QualifiedName::new("s", "c"),
            &[col("v", "double precision")],
            None,
        );
        let mk = |sum: &str| {
            vec![
                Some("3".into()),
                Some("3".into()),
                Some("0.1".into()),
                Some("0.7".into()),
                Some(sum.into()),
                Some("1.2".into()),
            ]
        };
        assert!(compare(&fields, &mk("1.2000000000000002"), &mk("1.2")).is_empty());
        let d = compare(&fields, &mk("1.2"), &mk("1.3"));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].to_string(), "column \"v\": sum: source=1.2 target=1.3");
    }

    #[test]
    fn count_difference_is_reported_with_both_values() {
        let (_, fields) = summary_query(&QualifiedName::new("s", "c"), &[col("x", "text")], None);
        let s = vec![
            Some("10".into()),
            Some("10".into()),
            Some("a".into()),
            Some("z".into()),
        ];
        let t = vec![
            Some("9".into()),
            Some("9".into()),
            Some("a".into()),
            Some("z".into()),
        ];
        let d: Vec<String> = compare(&fields, &s, &t)
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            d,
            vec![
                "row count: source=10 target=9",
                "column \"x\": non-null count: source=10 target=9"
            ]
        );
        assert_eq!(row_count(&s), Some(10));
    }
}
