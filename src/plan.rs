//! Pure staging decisions: which chunks a window selects, the row filter of a
//! chunk cut by a bound, and how a re-stage merges with an existing task.
//! No I/O here.

use std::collections::HashMap;

use crate::catalog::{SourceChunk, TimeType};
use crate::ident::{quote_ident, quote_literal, QualifiedName};

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
    /// 0 for a chunk copied in one task; 1.. for the time sub-ranges of a
    /// huge chunk split by [`split_huge`].
    pub part: i32,
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
            part: 0,
        });
    }
    out
}

/// Chunks smaller than this are never split.
const SPLIT_MIN_BYTES: i64 = 2 * 1024 * 1024;
/// A chunk is split when it is this many times the median chunk.
const SPLIT_FACTOR: i64 = 4;
/// Parts of a split chunk aim at this many times the median chunk.
const PART_FACTOR: i64 = 2;
/// At most this many parts per chunk.
const MAX_PARTS: i64 = 64;

/// Split chunks far larger than the others into time sub-range tasks, so
/// that one huge chunk does not leave a single worker copying it alone at
/// the end of a run. Only whole, uncompressed chunks are split (a compressed
/// chunk is copied as its batches; a chunk cut by `--until`/`--from` keeps
/// its bound). Cuts fall on whole seconds (whole days for `date`), assuming
/// rows spread evenly over the chunk's range; each part deletes and copies
/// only its own range, in its own transaction.
pub fn split_huge(tasks: Vec<NewTask>) -> Vec<NewTask> {
    let mut sizes: Vec<i64> = tasks
        .iter()
        .map(|t| t.chunk.size_bytes)
        .filter(|s| *s > 0)
        .collect();
    if sizes.len() < 2 {
        return tasks;
    }
    sizes.sort_unstable();
    let median = sizes[sizes.len() / 2].max(1);
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let size = t.chunk.size_bytes;
        let splittable = t.chunk.compressed_chunk.is_none()
            && t.lower.is_none()
            && t.upper.is_none()
            && size > SPLIT_MIN_BYTES
            && size > SPLIT_FACTOR * median;
        let parts = (size / (PART_FACTOR * median)).clamp(2, MAX_PARTS);
        let cuts = if splittable {
            cut_points(&t, parts)
        } else {
            Vec::new()
        };
        if cuts.is_empty() {
            out.push(t);
            continue;
        }
        let mut lower: Option<Bound> = None;
        for (i, cut) in cuts.iter().chain(std::iter::once(&None)).enumerate() {
            let mut part = t.clone();
            part.lower = lower.clone();
            part.upper = cut.clone();
            part.part = i as i32 + 1;
            part.chunk.size_bytes = size / (cuts.len() as i64 + 1);
            lower = cut.clone();
            out.push(part);
        }
    }
    out
}

/// Cut points strictly inside the chunk's time range, on whole units.
fn cut_points(t: &NewTask, parts: i64) -> Vec<Option<Bound>> {
    let (start, end) = (t.chunk.time_start, t.chunk.time_end);
    let unit: i64 = match t.time_type {
        TimeType::TimestampTz | TimeType::Timestamp => 1_000_000,
        TimeType::Date => 86_400_000_000,
        _ => 1,
    };
    // Open-ended slices (the first or last chunk of a space) are not split.
    if start == i64::MIN || end == i64::MAX || end <= start {
        return Vec::new();
    }
    let width = (end as i128 - start as i128) / parts as i128;
    let mut cuts = Vec::new();
    let mut last = start;
    for i in 1..parts {
        let raw = start as i128 + width * i as i128;
        let v = (raw.div_euclid(unit as i128) * unit as i128) as i64;
        if v <= last || v >= end {
            continue;
        }
        let Some(literal) = render(t.time_type, v) else {
            return Vec::new();
        };
        cuts.push(Some(Bound {
            internal: v,
            literal,
        }));
        last = v;
    }
    cuts
}

/// Canonical text of an internal time value, readable by any server
/// whatever its DateStyle and TimeZone (ISO, explicit UTC offset). `None`
/// outside years 1..9999, which are never split.
pub fn render(tt: TimeType, v: i64) -> Option<String> {
    if tt.is_integer() {
        return Some(v.to_string());
    }
    const DAY: i64 = 86_400_000_000;
    let days = v.div_euclid(DAY);
    let micros = v.rem_euclid(DAY);
    let (y, m, d) = civil_from_days(days);
    if !(1..=9999).contains(&y) {
        return None;
    }
    let date = format!("{y:04}-{m:02}-{d:02}");
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let time = format!(
        "{:02}:{:02}:{:02}.{frac:06}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    Some(match tt {
        TimeType::Date => date,
        TimeType::TimestampTz => format!("{date} {time}+00"),
        _ => format!("{date} {time}"),
    })
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
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

/// What a stage does with one of its tasks, given the tasks already queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The chunk has no task yet: insert this one.
    New,
    /// The chunk's task is re-queued with `window`, the union of its `old`
    /// window and this stage's. (The parts of a split chunk stand for the
    /// whole chunk; a widened chunk is re-queued as one task.)
    Widen { old: TaskWindow, window: TaskWindow },
    /// The queued task already covers this one: nothing changes.
    Covered,
    /// Another part of a chunk whose first part is [`Action::Widen`].
    Merged,
}

/// Decide, for each task of a stage, what the stage does with it. Pure: the
/// same answer for `--dry-run` and for the real run.
pub fn classify(tasks: &[NewTask], existing: &HashMap<QualifiedName, TaskWindow>) -> Vec<Action> {
    let mut widened = std::collections::HashSet::new();
    tasks
        .iter()
        .map(|t| {
            let Some(old) = existing.get(&t.chunk.chunk) else {
                return Action::New;
            };
            let window = if t.part > 0 {
                TaskWindow {
                    lower: None,
                    upper: None,
                }
            } else {
                TaskWindow {
                    lower: t.lower.clone(),
                    upper: t.upper.clone(),
                }
            };
            match restage(old, &window) {
                Restage::Covered => Action::Covered,
                Restage::Widen(w) => {
                    if widened.insert(t.chunk.chunk.clone()) {
                        Action::Widen {
                            old: old.clone(),
                            window: w,
                        }
                    } else {
                        Action::Merged
                    }
                }
            }
        })
        .collect()
}

/// The time ranges (internal values) a widening adds to a chunk's task:
/// what copy will delete and copy again on the target beyond what it copied
/// before. `chunk` is the chunk's own `[start, end)`.
pub fn added_ranges(old: &TaskWindow, new: &TaskWindow, chunk: (i64, i64)) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    if let Some(l_old) = &old.lower {
        let from = new.lower.as_ref().map(|b| b.internal).unwrap_or(chunk.0);
        if from < l_old.internal {
            out.push((from, l_old.internal));
        }
    }
    if let Some(u_old) = &old.upper {
        let to = new.upper.as_ref().map(|b| b.internal).unwrap_or(chunk.1);
        if u_old.internal < to {
            out.push((u_old.internal, to));
        }
    }
    out
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

    fn sized(mut c: SourceChunk, size: i64) -> SourceChunk {
        c.size_bytes = size;
        c
    }

    fn ts_chunk(start: i64, end: i64, size: i64) -> NewTask {
        let mut c = sized(chunk(start, end), size);
        c.time_type_name = "timestamp with time zone".into();
        NewTask {
            chunk: c,
            time_type: TimeType::TimestampTz,
            lower: None,
            upper: None,
            part: 0,
        }
    }

    #[test]
    fn a_huge_chunk_is_split_into_contiguous_parts_on_whole_seconds() {
        const DAY: i64 = 86_400_000_000;
        let t0 = 1_704_067_200_000_000; // 2024-01-01
        let mut tasks: Vec<NewTask> = (0..10)
            .map(|i| ts_chunk(t0 + i * DAY, t0 + (i + 1) * DAY, 4 << 20))
            .collect();
        tasks.push(ts_chunk(t0 + 10 * DAY, t0 + 11 * DAY, 80 << 20)); // 20x
        let out = split_huge(tasks);
        let parts: Vec<&NewTask> = out.iter().filter(|t| t.part > 0).collect();
        assert_eq!(parts.len(), 10, "80 MiB in parts of ~2x the 4 MiB median");
        assert!(parts[0].lower.is_none() && parts.last().unwrap().upper.is_none());
        for w in parts.windows(2) {
            assert_eq!(w[0].upper, w[1].lower, "parts must be contiguous");
            let cut = w[0].upper.as_ref().unwrap();
            assert_eq!(cut.internal % 1_000_000, 0);
        }
        assert_eq!(
            parts[0].upper.as_ref().unwrap().literal,
            "2024-01-11 02:24:00.000000+00"
        );
        assert_eq!(out.iter().filter(|t| t.part == 0).count(), 10);
    }

    #[test]
    fn compressed_bounded_small_and_open_ended_chunks_are_not_split() {
        let mut tasks: Vec<NewTask> = (0..5)
            .map(|i| ts_chunk(i * 100, (i + 1) * 100, 1 << 20))
            .collect();
        let mut compressed = ts_chunk(500, 600, 100 << 20);
        compressed.chunk.compressed_chunk = Some(QualifiedName::new("s", "c"));
        let mut bounded = ts_chunk(600, 700, 100 << 20);
        bounded.upper = Some(b(650));
        let open = ts_chunk(i64::MIN, 800, 100 << 20);
        tasks.extend([compressed, bounded, open]);
        assert!(split_huge(tasks).iter().all(|t| t.part == 0));
        // Evenly sized chunks: nothing to split.
        let even: Vec<NewTask> = (0..5)
            .map(|i| ts_chunk(i * 100, (i + 1) * 100, 50 << 20))
            .collect();
        assert!(split_huge(even).iter().all(|t| t.part == 0));
    }

    #[test]
    fn render_is_exact_and_iso() {
        assert_eq!(
            render(TimeType::TimestampTz, 1_704_067_200_000_001).unwrap(),
            "2024-01-01 00:00:00.000001+00"
        );
        assert_eq!(
            render(TimeType::Timestamp, -1_000_000).unwrap(),
            "1969-12-31 23:59:59.000000"
        );
        assert_eq!(
            render(TimeType::Date, 86_400_000_000).unwrap(),
            "1970-01-02"
        );
        assert_eq!(render(TimeType::BigInt, -7).unwrap(), "-7");
        assert_eq!(render(TimeType::TimestampTz, i64::MAX), None);
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

    #[test]
    fn classify_tells_new_widened_and_covered_apart() {
        let chunks = vec![chunk(30, 40), chunk(20, 30), chunk(10, 20)];
        let tasks = tasks_for(&chunks, &windows(None, 35));
        let existing = HashMap::from([
            (
                chunks[1].chunk.clone(),
                TaskWindow {
                    lower: None,
                    upper: Some(b(25)),
                },
            ),
            (
                chunks[2].chunk.clone(),
                TaskWindow {
                    lower: None,
                    upper: None,
                },
            ),
        ]);
        let actions = classify(&tasks, &existing);
        assert_eq!(actions[0], Action::New);
        assert_eq!(
            actions[1],
            Action::Widen {
                old: TaskWindow {
                    lower: None,
                    upper: Some(b(25))
                },
                window: TaskWindow {
                    lower: None,
                    upper: None
                }
            }
        );
        assert_eq!(actions[2], Action::Covered);
        let Action::Widen { old, window } = &actions[1] else {
            unreachable!()
        };
        assert_eq!(added_ranges(old, window, (20, 30)), vec![(25, 30)]);
        let later = TaskWindow {
            lower: None,
            upper: Some(b(28)),
        };
        assert_eq!(added_ranges(old, &later, (20, 30)), vec![(25, 28)]);
        let earlier_from = TaskWindow {
            lower: Some(b(22)),
            upper: None,
        };
        let wider = TaskWindow {
            lower: None,
            upper: None,
        };
        assert_eq!(
            added_ranges(&earlier_from, &wider, (20, 30)),
            vec![(20, 22)]
        );
    }

    #[test]
    fn classify_merges_the_parts_of_a_widened_chunk() {
        let mut parts = Vec::new();
        for p in 1..=3 {
            let mut t = tasks_for(&[chunk(0, 30)], &windows(None, 100)).remove(0);
            t.part = p;
            parts.push(t);
        }
        let existing = HashMap::from([(
            parts[0].chunk.chunk.clone(),
            TaskWindow {
                lower: None,
                upper: Some(b(5)),
            },
        )]);
        let actions = classify(&parts, &existing);
        assert!(matches!(actions[0], Action::Widen { .. }));
        assert_eq!(actions[1..], [Action::Merged, Action::Merged]);
    }
}
