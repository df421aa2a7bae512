//! Everything the user reads on stdout: progress lines and summaries.
//! Logs go to stderr through tracing; this module is the only place that
//! prints results.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::catalog::TimeType;

/// How results are shown, set once by `main` from the command line. (A
/// process-wide setting on purpose: it describes the terminal, which is
/// process-wide too.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// One JSON document on stdout; human lines go to stderr.
    pub json: bool,
    /// Progress bars when stderr is a terminal.
    pub progress: bool,
}

static MODE: OnceLock<Mode> = OnceLock::new();

pub fn init(mode: Mode) {
    let _ = MODE.set(mode);
}

fn mode() -> Mode {
    MODE.get().copied().unwrap_or(Mode {
        json: false,
        progress: false,
    })
}

pub fn json_mode() -> bool {
    mode().json
}

/// Print one human line: stdout, or stderr when stdout carries JSON.
/// Ignores a closed pipe.
pub fn line(s: &str) {
    if mode().json {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{s}");
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// Print the JSON result document on stdout.
pub fn json(v: &serde_json::Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// The bars being drawn now, so that a notice (ctrl-c) can print above them
/// and `main` can clear them when it exits without the command's help.
static ACTIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// A message for the operator on stderr, above the progress bars if any
/// (what a signal does, for example).
pub fn notice(s: &str) {
    let active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let print = || {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{s}");
    };
    match active {
        Some(mp) => mp.suspend(print),
        None => print(),
    }
}

/// Remove any progress bar from the terminal (before exiting early).
pub fn clear_progress() {
    if let Some(mp) = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = mp.clear();
    }
}

/// Progress of `copy` and `verify`: a bar of tasks and, for `copy`, a bar
/// of the bytes moved (COPY data read from the source, the measure
/// `--max-rate` caps) with throughput and ETA, on a terminal, with each
/// finished task's line printed above them; without a terminal, or with
/// `--no-progress`, just the lines. Byte figures are decimal (kB, MB, GB)
/// like every other figure hyperfill prints.
pub struct Progress {
    bars: Option<(MultiProgress, ProgressBar, Option<ProgressBar>)>,
}

impl Progress {
    /// `bytes`: the projected bytes to move, for a second bar with
    /// throughput and ETA (`None`: tasks only).
    pub fn new(verb: &str, tasks: u64, bytes: Option<u64>) -> Self {
        if !mode().progress || !std::io::stderr().is_terminal() {
            return Progress { bars: None };
        }
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let style = |template: &str| {
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ")
        };
        let task_bar = mp.add(ProgressBar::new(tasks));
        task_bar.set_style(style(
            "{prefix:>9} [{bar:40.cyan/blue}] {pos}/{len} tasks  {elapsed_precise}",
        ));
        task_bar.set_prefix(verb.to_string());
        let byte_bar = bytes.map(|total| {
            let bar = mp.add(ProgressBar::new(total.max(1)));
            bar.set_style(style(
                "{prefix:>9} [{bar:40.green/white}] {decimal_bytes}/~{decimal_total_bytes}  {decimal_bytes_per_sec}  ETA {eta}",
            ));
            bar.set_prefix("moved");
            bar
        });
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(mp.clone());
        Progress {
            bars: Some((mp, task_bar, byte_bar)),
        }
    }

    /// The number of tasks grew (tasks staged during the run).
    pub fn set_total(&self, tasks: u64) {
        if let Some((_, bar, _)) = &self.bars {
            bar.set_length(tasks);
        }
    }

    /// A line above the bars (or a plain line).
    pub fn line(&self, s: &str) {
        match &self.bars {
            Some((mp, ..)) => mp.suspend(|| line(s)),
            None => line(s),
        }
    }

    /// One more task finished.
    pub fn advance(&self) {
        if let Some((_, tasks, _)) = &self.bars {
            tasks.inc(1);
        }
    }

    /// Bytes moved so far, and the projected total (never below them).
    pub fn bytes(&self, moved: u64, total: u64) {
        if let Some((_, _, Some(b))) = &self.bars {
            b.set_length(total.max(moved).max(1));
            b.set_position(moved);
        }
    }

    /// Remove the bars before the summary.
    pub fn finish(&self) {
        ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((mp, tasks, bytes)) = &self.bars {
            tasks.finish_and_clear();
            if let Some(b) = bytes {
                b.finish_and_clear();
            }
            let _ = mp.clear();
        }
    }
}

/// `12.3 MB`, in powers of 1000 as most tools print throughput.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

pub fn rate(bytes_done: u64, d: Duration) -> String {
    let s = d.as_secs_f64();
    if s <= 0.0 || bytes_done == 0 {
        return String::new();
    }
    format!(" ({}/s)", bytes((bytes_done as f64 / s) as u64))
}

/// Thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A time-dimension value in TimescaleDB's internal form, readable.
pub fn internal_time(tt: TimeType, v: i64) -> String {
    if v == i64::MIN {
        return "-infinity".into();
    }
    if v == i64::MAX {
        return "+infinity".into();
    }
    if tt.is_integer() {
        return v.to_string();
    }
    const DAY: i64 = 86_400_000_000;
    let days = v.div_euclid(DAY);
    let micros = v.rem_euclid(DAY);
    let (y, m, d) = crate::plan::civil_from_days(days);
    let secs = micros / 1_000_000;
    let date = format!("{y:04}-{m:02}-{d:02}");
    if tt == TimeType::Date {
        return date;
    }
    let time = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    if tt == TimeType::TimestampTz {
        format!("{date} {time}+00")
    } else {
        format!("{date} {time}")
    }
}

/// How a `status` line names its hypertable: a continuous aggregate's
/// materialization by the view.
fn status_name(h: &crate::queue::HypertableStatus) -> String {
    match &h.continuous_aggregate {
        Some(v) => format!("{v} (continuous aggregate)"),
        None => h.hypertable.to_string(),
    }
}

/// The `status` report: the table, then the sessions at work, then the
/// recent problems (each part its own function, so more can follow).
pub fn print_status(st: &crate::queue::Status) {
    print_status_table(&st.hypertables);
    line(&format!(
        "hyperfill sessions at work on the target: {}",
        st.active_sessions
    ));
    print_problems(&st.problems);
}

/// One line per hypertable and a total. Task columns count tasks (a chunk
/// split into parts has one per part); bytes are COPY bytes, `copied + left
/// = total`.
pub fn print_status_table(hypertables: &[crate::queue::HypertableStatus]) {
    let mut total = crate::queue::HypertableStatus::default();
    let mut names = Vec::with_capacity(hypertables.len());
    for h in hypertables {
        names.push(status_name(h));
        total.add(h);
    }
    let width = names
        .iter()
        .map(|n| n.chars().count())
        .chain(std::iter::once("hypertable".len()))
        .max()
        .unwrap_or(10);
    let row = |name: &str, h: &crate::queue::HypertableStatus| {
        format!(
            "{name:<width$} {:>7}  {:>7} {:>7} {:>6} {:>7}  {:>7} {:>8}  {:>12} {:>9} {:>9} {:>10}",
            h.chunks,
            h.pending,
            h.done,
            h.failed,
            h.skipped,
            h.verified,
            h.mismatched,
            count(h.rows_copied.max(0) as u64),
            bytes(h.bytes_copied.max(0) as u64),
            bytes(h.estimated_bytes_left.max(0) as u64),
            bytes(h.estimated_bytes_total.max(0) as u64),
        )
    };
    line(&format!(
        "{:<width$} {:>7}  {:-^30}  {:-^16}  {:>12} {:-^30}",
        "", "", " tasks ", " verified ", "", " bytes "
    ));
    line(&format!(
        "{:<width$} {:>7}  {:>7} {:>7} {:>6} {:>7}  {:>7} {:>8}  {:>12} {:>9} {:>9} {:>10}",
        "hypertable",
        "chunks",
        "pending",
        "done",
        "failed",
        "skipped",
        "match",
        "mismatch",
        "rows",
        "copied",
        "left(est)",
        "total(est)"
    ));
    for (name, h) in names.iter().zip(hypertables) {
        line(&row(name, h));
    }
    line(&row("total", &total));
    if total.split_chunks > 0 {
        line(&format!(
            "{} chunk(s) are split into parts, one task each (see README: huge chunks).",
            count(total.split_chunks as u64)
        ));
    }
    if total.batches_copied > 0 {
        line(&format!(
            "Rows are logical rows: the compressed chunks among them were copied as {} \
             compressed batches.",
            count(total.batches_copied as u64)
        ));
    }
}

fn print_problems(problems: &[crate::queue::Problem]) {
    if problems.is_empty() {
        return;
    }
    line("Recent problems:");
    for p in problems {
        line(&format!("  [{}] {}: {}", p.state, p.chunk, p.message));
    }
}

/// The dry-run listing of `stage`: what the real run would do with each
/// task, given what is queued already.
pub fn print_dry_run(r: &crate::commands::stage::StageReport) {
    let mut what = vec![format!(
        "stage {}",
        crate::commands::copy::tasks_text(r.staged, r.chunks, r.split_chunks)
    )];
    if r.requeued > 0 {
        what.push(format!(
            "re-queue {} chunk(s) with a wider range",
            r.requeued
        ));
    }
    if r.already_staged > 0 {
        what.push(format!("leave {} task(s) already staged", r.already_staged));
    }
    line(&format!("Would {}:", what.join(", ")));
    // Tasks already staged are counted above, listed only in the JSON.
    for t in r.tasks.iter().filter(|t| t.action != "already staged") {
        let part = if t.part > 0 {
            format!(" part {}", t.part)
        } else {
            String::new()
        };
        let name = match &t.continuous_aggregate {
            Some(v) => format!("{v} (continuous aggregate)"),
            None => t.hypertable.to_string(),
        };
        let added = if t.added_ranges.is_empty() {
            String::new()
        } else {
            let ranges: Vec<String> = t
                .added_ranges
                .iter()
                .map(|[a, b]| format!("[{a}, {b})"))
                .collect();
            format!(" (copies {} again)", ranges.join(" and "))
        };
        line(&format!(
            "  {:<15} {name} chunk {}{part} [{}, {}) ~{}{}{added}",
            t.action,
            t.chunk,
            t.range[0],
            t.range[1],
            bytes(t.estimated_bytes.max(0) as u64),
            t.filter
                .as_ref()
                .map(|f| format!(" where {f}"))
                .unwrap_or_default(),
        ));
    }
    for w in &r.warnings {
        line(&format!("Warning: {w}"));
    }
    line(&format!(
        "Table data to copy on the source (new and widened): ~{}. Nothing was changed (dry run).",
        bytes(r.estimated_bytes.max(0) as u64)
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_numbers() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(12_300_000), "12.3 MB");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration(Duration::from_secs(3725)), "1h02m");
    }

    #[test]
    fn internal_times_render() {
        // 2024-01-01 00:00:00 UTC
        let v = 1_704_067_200_000_000;
        assert_eq!(
            internal_time(TimeType::TimestampTz, v),
            "2024-01-01 00:00:00+00"
        );
        assert_eq!(internal_time(TimeType::Date, v), "2024-01-01");
        assert_eq!(
            internal_time(TimeType::Timestamp, -1),
            "1969-12-31 23:59:59"
        );
        assert_eq!(internal_time(TimeType::BigInt, -5), "-5");
        assert_eq!(internal_time(TimeType::Date, i64::MAX), "+infinity");
    }
}
