//! Everything the user reads on stdout: progress lines and summaries.
//! Logs go to stderr through tracing; this module is the only place that
//! prints results.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::catalog::TimeType;
use crate::plan::NewTask;

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

/// Progress of `copy` and `verify`: two bars (chunks; source bytes with
/// throughput and ETA) on a terminal, with each finished chunk's line printed
/// above them; without a terminal, or with `--no-progress`, just the lines.
pub struct Progress {
    bars: Option<(MultiProgress, ProgressBar, Option<ProgressBar>)>,
}

impl Progress {
    /// `estimated_bytes`: the source size of all chunks, for a second bar
    /// with throughput and ETA (`None`: chunks only).
    pub fn new(verb: &str, chunks: u64, estimated_bytes: Option<u64>) -> Self {
        if !mode().progress || !std::io::stderr().is_terminal() {
            return Progress { bars: None };
        }
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let style = |template: &str| {
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ")
        };
        let chunk_bar = mp.add(ProgressBar::new(chunks));
        chunk_bar.set_style(style(
            "{prefix:>9} [{bar:40.cyan/blue}] {pos}/{len} chunks  {elapsed_precise}",
        ));
        chunk_bar.set_prefix(verb.to_string());
        let byte_bar = estimated_bytes.map(|total| {
            let bar = mp.add(ProgressBar::new(total.max(1)));
            bar.set_style(style(
                "{prefix:>9} [{bar:40.green/white}] {bytes}/{total_bytes}  {bytes_per_sec}  ETA {eta}",
            ));
            bar.set_prefix("on source");
            bar
        });
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(mp.clone());
        Progress {
            bars: Some((mp, chunk_bar, byte_bar)),
        }
    }

    /// The number of chunks grew (tasks staged during the run).
    pub fn set_total(&self, chunks: u64) {
        if let Some((_, bar, _)) = &self.bars {
            bar.set_length(chunks);
        }
    }

    /// A line above the bars (or a plain line).
    pub fn line(&self, s: &str) {
        match &self.bars {
            Some((mp, ..)) => mp.suspend(|| line(s)),
            None => line(s),
        }
    }

    /// One more chunk finished, which was `estimated_bytes` on the source.
    pub fn advance(&self, estimated_bytes: u64) {
        if let Some((_, chunks, bytes)) = &self.bars {
            chunks.inc(1);
            if let Some(b) = bytes {
                b.inc(estimated_bytes);
            }
        }
    }

    /// Remove the bars before the summary.
    pub fn finish(&self) {
        ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((mp, chunks, bytes)) = &self.bars {
            chunks.finish_and_clear();
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

/// The `status` table.
pub fn print_status(st: &crate::queue::Status) {
    let header = format!(
        "{:<44} {:>8} {:>8} {:>7} {:>8} {:>9} {:>9} {:>14} {:>10} {:>10}",
        "hypertable",
        "pending",
        "done",
        "failed",
        "skipped",
        "verified",
        "mismatch",
        "rows",
        "copied",
        "left(est)"
    );
    line(&header);
    let mut total = crate::queue::HypertableStatus {
        hypertable: crate::ident::QualifiedName::new("", "total"),
        continuous_aggregate: None,
        pending: 0,
        done: 0,
        failed: 0,
        skipped: 0,
        verified: 0,
        mismatched: 0,
        rows_copied: 0,
        bytes_copied: 0,
        estimated_bytes_left: 0,
    };
    let row = |name: &str, h: &crate::queue::HypertableStatus| {
        format!(
            "{:<44} {:>8} {:>8} {:>7} {:>8} {:>9} {:>9} {:>14} {:>10} {:>10}",
            name,
            h.pending,
            h.done,
            h.failed,
            h.skipped,
            h.verified,
            h.mismatched,
            count(h.rows_copied.max(0) as u64),
            bytes(h.bytes_copied.max(0) as u64),
            bytes(h.estimated_bytes_left.max(0) as u64)
        )
    };
    for h in &st.hypertables {
        let name = match &h.continuous_aggregate {
            Some(v) => format!("{} ({v})", h.hypertable),
            None => h.hypertable.to_string(),
        };
        line(&row(&name, h));
        total.pending += h.pending;
        total.done += h.done;
        total.failed += h.failed;
        total.skipped += h.skipped;
        total.verified += h.verified;
        total.mismatched += h.mismatched;
        total.rows_copied += h.rows_copied;
        total.bytes_copied += h.bytes_copied;
        total.estimated_bytes_left += h.estimated_bytes_left;
    }
    line(&row("total", &total));
    line(&format!(
        "hyperfill sessions at work on the target: {}",
        st.active_sessions
    ));
    if !st.problems.is_empty() {
        line("Recent problems:");
        for p in &st.problems {
            line(&format!("  [{}] {}: {}", p.state, p.chunk, p.message));
        }
    }
}

/// The dry-run listing of `stage`.
pub fn print_dry_run(tasks: &[NewTask]) {
    line(&format!("Would stage {} chunk(s):", tasks.len()));
    let mut total = 0i64;
    for t in tasks {
        total += t.chunk.size_bytes;
        let filter = crate::plan::filter_sql(
            &t.chunk.time_column,
            t.time_type,
            t.lower.as_ref().map(|b| b.literal.as_str()),
            t.upper.as_ref().map(|b| b.literal.as_str()),
        );
        let part = if t.part > 0 {
            format!(" part {}", t.part)
        } else {
            String::new()
        };
        line(&format!(
            "  {} chunk {}{part} [{}, {}) ~{}{}",
            t.chunk.hypertable,
            t.chunk.chunk,
            internal_time(t.time_type, t.chunk.time_start),
            internal_time(t.time_type, t.chunk.time_end),
            bytes(t.chunk.size_bytes.max(0) as u64),
            filter.map(|f| format!(" where {f}")).unwrap_or_default(),
        ));
    }
    line(&format!(
        "Estimated size on the source: {}. Nothing was changed (dry run).",
        bytes(total.max(0) as u64)
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
