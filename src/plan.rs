//! Pure staging decisions: which chunks a window selects, the row filter of a
//! chunk cut by a bound, and how a re-stage merges with an existing task.
//! No I/O here.

use std::collections::HashMap;

use crate::catalog::{SourceChunk, TimeType};
use crate::ident::{quote_ident, quote_literal};

/// A bound parsed by the source server as one time type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// TimescaleDB's internal int64 form (microseconds since the Unix epoch
    /// for time types, the value itself for integers).
    pub internal: i64,
    /// Canonical text of the value (ISO, UTC offset for timestamptz), which
    /// any server reads back the same whatever its DateStyle and TimeZone.
    pub literal: String,
}

/// The `[from, until)` window for one time type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub from: Option<Bound>,
    pub until: Bound,
}

/// One task to stage: a chunk and, where a bound cuts through it, that bound.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub chunk: SourceChunk,
    pub time_type: TimeType,
    /// `time >= lower`, when `--from` falls strictly inside the chunk.
    pub lower: Option<Bound>,
    /// `time < upper`, when `--until` falls strictly inside the chunk.
    pub upper: Option<Bound>,
}

/// Choose the chunks that overlap their hypertable's window, newest first (the
/// input order), and attach the bounds that cut them. Chunks whose time type
/// has no window are left out (the caller has already refused those).
pub fn tasks_for(chunks: &[SourceChunk], windows: &HashMap<TimeType, Window>) -> Vec<NewTask> {
    let mut out = Vec::new();
    for c in chunks {
        let Some(tt) = TimeType::from_pg(&c.time_type_name) else {
            continue;
        };
        let Some(w) = windows.get(&tt) else {
            continue;
        };
        if c.time_start >= w.until.internal {
            continue;
        }
        if let Some(from) = &w.from {
            if c.time_end <= from.internal {
                continue;
            }
        }
        let upper = (c.time_start < w.until.internal && w.until.internal < c.time_end)
            .then(|| w.until.clone());
        let lower = w
            .from
            .as_ref()
            .filter(|f| c.time_start < f.internal && f.internal < c.time_end)
            .cloned();
        out.push(NewTask {
            chunk: c.clone(),
            time_type: tt,
            lower,
            upper,
        });
    }
    out
}

/// The SQL predicate for a task's bounds, or `None` for a whole chunk.
/// Literals are spliced (COPY's query cannot take parameters), so they are
/// only ever canonical values produced by the server, and quoted.
pub fn filter_sql(
    column: &str,
    time_type: TimeType,
    lower: Option<&str>,
    upper: Option<&str>,
) -> Option<String> {
    let col = quote_ident(column);
    let ty = time_type.sql();
    let lit = |v: &str| format!("{}::{ty}", quote_literal(v));
    match (lower, upper) {
        (None, None) => None,
        (Some(l), None) => Some(format!("{col} >= {}", lit(l))),
        (None, Some(u)) => Some(format!("{col} < {}", lit(u))),
        (Some(l), Some(u)) => Some(format!("{col} >= {} AND {col} < {}", lit(l), lit(u))),
    }
}

/// A task's window within its chunk: `None` means the chunk's own edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskWindow {
    pub lower: Option<Bound>,
    pub upper: Option<Bound>,
}

/// What re-staging does to a chunk that already has a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restage {
    /// The existing task already covers the new window: nothing to do.
    Covered,
    /// Re-queue the task with this (wider) window, so no rows fall in a gap.
    Widen(TaskWindow),
}

/// Merge a new window into an existing task's: the result covers both.
pub fn restage(existing: &TaskWindow, new: &TaskWindow) -> Restage {
    let lower_covered = match (&existing.lower, &new.lower) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(n)) => e.internal <= n.internal,
    };
    let upper_covered = match (&existing.upper, &new.upper) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(n)) => n.internal <= e.internal,
    };
    if lower_covered && upper_covered {
        return Restage::Covered;
    }
    let lower = match (&existing.lower, &new.lower) {
        (Some(e), Some(n)) => Some(if e.internal <= n.internal { e } else { n }.clone()),
        _ => None,
    };
    let upper = match (&existing.upper, &new.upper) {
        (Some(e), Some(n)) => Some(if e.internal >= n.internal { e } else { n }.clone()),
        _ => None,
    };
    Restage::Widen(TaskWindow { lower, upper })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Slice;
    use crate::ident::QualifiedName;

    fn chunk(start: i64, end: i64) -> SourceChunk {
        SourceChunk {
            hypertable: QualifiedName::new("public", "m"),
            cagg: None,
            chunk: QualifiedName::new("_timescaledb_internal", format!("c{start}")),
            compressed_chunk: None,
            time_column: "time".into(),
            time_type_name: "bigint".into(),
            time_start: start,
            time_end: end,
            slices: vec![Slice {
                column: "time".into(),
                start,
                end,
            }],
            size_bytes: 0,
        }
    }

    fn b(v: i64) -> Bound {
        Bound {
            internal: v,
            literal: v.to_string(),
        }
    }

    fn windows(from: Option<i64>, until: i64) -> HashMap<TimeType, Window> {
        HashMap::from([(
            TimeType::BigInt,
            Window {
                from: from.map(b),
                until: b(until),
            },
        )])
    }

    #[test]
    fn until_selects_chunks_below_and_filters_the_one_it_cuts() {
        let chunks = vec![chunk(30, 40), chunk(20, 30), chunk(10, 20), chunk(0, 10)];
        let t = tasks_for(&chunks, &windows(None, 25));
        let names: Vec<_> = t.iter().map(|t| t.chunk.chunk.name.as_str()).collect();
        assert_eq!(names, ["c20", "c10", "c0"]);
        assert_eq!(t[0].upper, Some(b(25)));
        assert!(t[1].upper.is_none() && t[2].upper.is_none());
    }

    #[test]
    fn until_on_a_chunk_edge_needs_no_filter() {
        let t = tasks_for(&[chunk(20, 30), chunk(10, 20)], &windows(None, 20));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].chunk.chunk.name, "c10");
        assert!(t[0].upper.is_none());
    }

    #[test]
    fn from_excludes_chunk_ending_at_from_and_filters_the_one_it_cuts() {
        let chunks = vec![chunk(20, 30), chunk(10, 20), chunk(0, 10)];
        let t = tasks_for(&chunks, &windows(Some(10), 30));
        assert_eq!(
            t.len(),
            2,
            "chunk [0,10) ends at from and must not be staged"
        );
        assert!(t.iter().all(|t| t.lower.is_none()));

        let t = tasks_for(&chunks, &windows(Some(15), 25));
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].lower.clone(), t[0].upper.clone()),
            (None, Some(b(25)))
        );
        assert_eq!(
            (t[1].lower.clone(), t[1].upper.clone()),
            (Some(b(15)), None)
        );
    }

    #[test]
    fn both_bounds_inside_one_chunk() {
        let t = tasks_for(&[chunk(0, 100)], &windows(Some(-5 + 10), 50));
        assert_eq!(t[0].lower, Some(b(5)));
        assert_eq!(t[0].upper, Some(b(50)));
    }

    #[test]
    fn negative_integer_bounds_work() {
        let chunks = vec![chunk(-10, 0), chunk(-20, -10)];
        let t = tasks_for(&chunks, &windows(Some(-15), -5));
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].upper, Some(b(-5)));
        assert_eq!(t[1].lower, Some(b(-15)));
    }

    #[test]
    fn filters_render_quoted_and_typed() {
        assert_eq!(filter_sql("time", TimeType::BigInt, None, None), None);
        assert_eq!(
            filter_sql(
                "Time \"x\"",
                TimeType::TimestampTz,
                None,
                Some("2024-01-01 00:00:00+00")
            ),
            Some("\"Time \"\"x\"\"\" < '2024-01-01 00:00:00+00'::timestamptz".into())
        );
        assert_eq!(
            filter_sql("t", TimeType::Date, Some("2024-01-01"), Some("2024-02-01")),
            Some("\"t\" >= '2024-01-01'::date AND \"t\" < '2024-02-01'::date".into())
        );
    }

    #[test]
    fn restage_with_later_until_widens_the_boundary_chunk() {
        let old = TaskWindow {
            lower: None,
            upper: Some(b(25)),
        };
        let new = TaskWindow {
            lower: None,
            upper: Some(b(28)),
        };
        assert_eq!(
            restage(&old, &new),
            Restage::Widen(TaskWindow {
                lower: None,
                upper: Some(b(28))
            })
        );
        // later until past the chunk's end: whole chunk
        let new = TaskWindow {
            lower: None,
            upper: None,
        };
        assert_eq!(
            restage(&old, &new),
            Restage::Widen(TaskWindow {
                lower: None,
                upper: None
            })
        );
    }

    #[test]
    fn restage_with_same_or_narrower_window_is_covered() {
        let old = TaskWindow {
            lower: Some(b(5)),
            upper: Some(b(25)),
        };
        assert_eq!(restage(&old, &old.clone()), Restage::Covered);
        let new = TaskWindow {
            lower: Some(b(10)),
            upper: Some(b(20)),
        };
        assert_eq!(restage(&old, &new), Restage::Covered);
        let whole = TaskWindow {
            lower: None,
            upper: None,
        };
        assert_eq!(restage(&whole, &new), Restage::Covered);
    }

    #[test]
    fn restage_with_earlier_from_widens_downwards() {
        let old = TaskWindow {
            lower: Some(b(10)),
            upper: None,
        };
        let new = TaskWindow {
            lower: Some(b(5)),
            upper: Some(b(20)),
        };
        assert_eq!(
            restage(&old, &new),
            Restage::Widen(TaskWindow {
                lower: Some(b(5)),
                upper: None
            })
        );
    }
}
