//! Command-line definitions (clap derive types only). Flags and short forms
//! are compatible with timescaledb-backfill.

use clap::{Args, Parser, Subcommand};

/// The heading of the options every command takes, listed after the
/// command's own.
const GLOBAL: &str = "Global options";

/// Examples shown at the end of `--help` (the migration day's commands, in
/// the order of the README).
mod examples {
    pub const TOP: &str = "\
The migration day (README: The migration day):
  export SOURCE='postgres://app@source.example:5432/tsdb?sslmode=verify-full'
  export TARGET='postgres://app@target.example:5432/tsdb?sslmode=verify-full'
  hyperfill check  --source \"$SOURCE\" --target \"$TARGET\"
  hyperfill stage  --source \"$SOURCE\" --target \"$TARGET\" --until '2025-01-29 18:30:00+00'
  hyperfill copy   --source \"$SOURCE\" --target \"$TARGET\" --parallelism 8
  hyperfill status --target \"$TARGET\"
  hyperfill verify --source \"$SOURCE\" --target \"$TARGET\"
  hyperfill refresh-caggs --source \"$SOURCE\" --target \"$TARGET\"
  hyperfill clean  --target \"$TARGET\"
HYPERFILL_SOURCE and HYPERFILL_TARGET stand in for --source and --target.";

    pub const STAGE: &str = "\
Examples:
  # Everything below T (a timestamptz bound with its UTC offset)
  hyperfill stage --source \"$SOURCE\" --target \"$TARGET\" --until '2025-01-29 18:30:00+00'
  # First see what it would do, against what is queued already
  hyperfill stage --source \"$SOURCE\" --target \"$TARGET\" --until '2025-01-29 18:30:00+00' --dry-run
  # Mixed time types: one stage per group, each with its bound; one queue, one copy
  hyperfill stage --source \"$SOURCE\" --target \"$TARGET\" --until '2025-01-29 18:30:00+00' \\
      --filter '^public\\.(metrics|events|daily_counts)$'
  hyperfill stage --source \"$SOURCE\" --target \"$TARGET\" --until 1738175400000 --filter '^public\\.ticks$'
  # A filter: one continuous aggregate and everything it is built on
  hyperfill stage --source \"$SOURCE\" --target \"$TARGET\" --until '2025-01-29 18:30:00+00' \\
      --filter '^public\\.metrics_hourly$' --cascade-down";

    pub const COPY: &str = "\
Examples:
  hyperfill copy --source \"$SOURCE\" --target \"$TARGET\" --parallelism 8
  # Resume after ctrl-c, a crash or a lost connection: run the same command again
  hyperfill copy --source \"$SOURCE\" --target \"$TARGET\" --parallelism 8
  # Spare a busy source: fewer workers, at most 20 MB/s read from it
  hyperfill copy --source \"$SOURCE\" --target \"$TARGET\" --parallelism 4 --max-rate 20MB
  # Copy again what verify found different
  hyperfill copy --source \"$SOURCE\" --target \"$TARGET\" --requeue-mismatched";

    pub const VERIFY: &str = "\
Examples:
  hyperfill verify --source \"$SOURCE\" --target \"$TARGET\"
  # Verify every copied task again, with the mismatches as JSON
  hyperfill verify --source \"$SOURCE\" --target \"$TARGET\" --all --output json
Exit code 7 when a task differs; then `hyperfill copy --requeue-mismatched` and verify again.";

    pub const REFRESH: &str = "\
Examples:
  # After copy (and verify), before re-enabling the target's jobs
  hyperfill refresh-caggs --source \"$SOURCE\" --target \"$TARGET\"
  # One continuous aggregate and those built on it
  hyperfill refresh-caggs --source \"$SOURCE\" --target \"$TARGET\" --filter '^public\\.metrics_hourly$' --cascade-up";

    pub const STATUS: &str = "\
Examples:
  hyperfill status --target \"$TARGET\"
  # For a script or a dashboard
  hyperfill status --target \"$TARGET\" --output json --errors 50";

    pub const CHECK: &str = "\
Examples:
  hyperfill check --source \"$SOURCE\" --target \"$TARGET\"
  # Only what you will stage
  hyperfill check --source \"$SOURCE\" --target \"$TARGET\" --filter '^public\\.(metrics|events)$'
Exit code 0: ready (warnings allowed); 3: errors to fix first.";

    pub const CLEAN: &str = "\
Examples:
  # Once copied, verified and refreshed
  hyperfill clean --target \"$TARGET\"";

    pub const COMPLETIONS: &str = "\
Examples:
  hyperfill completions bash > /etc/bash_completion.d/hyperfill
  hyperfill completions zsh > \"${fpath[1]}/_hyperfill\"";

    pub const MAN: &str = "\
Examples:
  hyperfill man > /usr/local/share/man/man1/hyperfill.1";
}

#[derive(Debug, Parser)]
#[command(
    name = "hyperfill",
    version,
    about = "Backfill TimescaleDB hypertables from a source to a target database, chunk by chunk",
    long_about = "Backfill TimescaleDB hypertables (plain, compressed and continuous-aggregate \
materializations) from a source database to a target database, chunk by chunk, in parallel and \
resumably, up to a completion point given with --until.\n\n\
The migration day: check, stage, copy (interrupt and re-run at will), status, verify, \
refresh-caggs, clean.",
    after_help = examples::TOP
)]
pub struct Cli {
    /// Accepted for compatibility with timescaledb-backfill; hyperfill sends no telemetry.
    #[arg(long, global = true, hide = true)]
    pub disable_telemetry: bool,

    /// Result format: human lines, or one JSON document on stdout (progress
    /// and messages then go to stderr)
    #[arg(long, global = true, value_enum, default_value_t = Output::Human, help_heading = GLOBAL, display_order = 1000)]
    pub output: Output,

    /// No progress bars on a terminal (copy and verify then print only their
    /// per-task lines)
    #[arg(long, global = true, help_heading = GLOBAL, display_order = 1001)]
    pub no_progress: bool,

    /// Log format on stderr (RUST_LOG sets the level; default warn)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, help_heading = GLOBAL, display_order = 1002)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create copy tasks for the chunks of hypertables and continuous aggregates
    #[command(after_help = examples::STAGE)]
    Stage(StageArgs),
    /// Copy the staged chunks from the source to the target
    #[command(after_help = examples::COPY)]
    Copy(CopyArgs),
    /// Compare each copied chunk on both sides
    #[command(after_help = examples::VERIFY)]
    Verify(VerifyArgs),
    /// Refresh the target's continuous aggregates up to the source's watermarks
    #[command(after_help = examples::REFRESH)]
    RefreshCaggs(RefreshCaggsArgs),
    /// Show the queue: tasks per hypertable and state, rows and bytes, problems
    #[command(after_help = examples::STATUS)]
    Status(StatusArgs),
    /// Preflight: check source and target before a backfill; changes nothing
    #[command(after_help = examples::CHECK)]
    Check(CheckArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = examples::COMPLETIONS)]
    Completions(CompletionsArgs),
    /// Print the man page (roff) for hyperfill
    #[command(after_help = examples::MAN)]
    Man,
    /// Drop hyperfill's queue schema from the target
    #[command(after_help = examples::CLEAN)]
    Clean(CleanArgs),
}

/// Output format of a command's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Human,
    Json,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Target connection string (libpq URL or key=value)
    #[arg(long, env = "HYPERFILL_TARGET", hide_env_values = true)]
    pub target: String,

    /// How many recent problems (failed, mismatched, retried tasks) to list
    #[arg(long, default_value_t = 10)]
    pub errors: i64,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub conn: ConnArgs,

    /// Check only the hypertables and continuous aggregates matching this
    /// regex (as `stage --filter`)
    #[arg(short = 'f', long)]
    pub filter: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct RefreshCaggsArgs {
    #[command(flatten)]
    pub conn: ConnArgs,

    /// Case-insensitive POSIX regex on schema.view of continuous aggregates
    #[arg(short = 'f', long)]
    pub filter: Option<String>,

    /// With --filter, also refresh the continuous aggregates built on the matches
    #[arg(short = 'U', long)]
    pub cascade_up: bool,

    /// With --filter, also refresh the continuous aggregates the matches are built on
    #[arg(short = 'D', long)]
    pub cascade_down: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ConnArgs {
    /// Source connection string (libpq URL or key=value)
    #[arg(long, env = "HYPERFILL_SOURCE", hide_env_values = true)]
    pub source: String,
    /// Target connection string (libpq URL or key=value)
    #[arg(long, env = "HYPERFILL_TARGET", hide_env_values = true)]
    pub target: String,
}

#[derive(Debug, Args)]
pub struct StageArgs {
    #[command(flatten)]
    pub conn: ConnArgs,

    /// Completion point T (exclusive): rows with time < T are copied. Parsed as
    /// each hypertable's time column type (timestamptz, timestamp, date, integers)
    #[arg(short = 'u', long, allow_hyphen_values = true)]
    pub until: String,

    /// Start point (inclusive): rows with time >= FROM are copied
    #[arg(short = 'F', long, allow_hyphen_values = true)]
    pub from: Option<String>,

    /// Case-insensitive POSIX regex on schema.table of hypertables and
    /// schema.view of continuous aggregates
    #[arg(short = 'f', long)]
    pub filter: Option<String>,

    /// With --filter, also stage the continuous aggregates built on the matches
    #[arg(short = 'U', long)]
    pub cascade_up: bool,

    /// With --filter, also stage what the matched continuous aggregates are built on
    #[arg(short = 'D', long)]
    pub cascade_down: bool,

    /// A snapshot exported from the source (pg_export_snapshot()) to read all chunks in
    #[arg(short = 's', long)]
    pub snapshot: Option<String>,

    /// Show what the stage would do against the queue as it is (new tasks,
    /// widened ones, already staged) and change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    #[command(flatten)]
    pub conn: ConnArgs,

    /// Number of workers; each holds one source and one target connection,
    /// so this also caps the concurrent queries on the source. Default: 8,
    /// or more (up to 48) when the source is far (5 ms or more): one more per 2 ms of
    /// round-trip time, measured at start, within half the free connection
    /// slots of either server
    #[arg(short = 'p', long, value_parser = clap::value_parser!(u16).range(1..=512))]
    pub parallelism: Option<u16>,

    /// How many times a task is tried in one run when it fails with a
    /// transient error (lost connection, serialization failure, a
    /// hot-standby source's recovery conflict, deadlock, shutdown, lock
    /// timeout, stall); a permanent error (constraint, data, privilege,
    /// missing object) fails it at once
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Seconds without an answer after which a worker asks the server (on a
    /// new connection) whether it is still working on the statement; if not
    /// (a stuck server, proxy or network), the attempt fails and the task is
    /// tried again
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub stall_timeout: u64,

    /// Run ANALYZE on each target chunk after it is copied
    #[arg(long)]
    pub analyze: bool,

    /// First put the chunks that verify found different back in the queue,
    /// to copy them again
    #[arg(long)]
    pub requeue_mismatched: bool,

    /// Cap on the data read from the source, all workers together, in bytes
    /// per second (suffixes k, M, G, KiB, MiB, GiB: `--max-rate 20MB`)
    #[arg(long, value_parser = parse_rate)]
    pub max_rate: Option<u64>,
}

/// `20MB`, `512k`, `1GiB`, `1000000` → bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("'{s}' is not a rate; use bytes per second like 20MB, 512k or 1GiB")
    })?;
    let unit = unit.trim().trim_end_matches("/s");
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "'{s}': unknown unit '{unit}'; use k, M, G, KiB, MiB or GiB"
            ))
        }
    };
    let v = (n * mult).round();
    if !(1.0..=1e15).contains(&v) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(v as u64)
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub conn: ConnArgs,

    /// Number of workers
    #[arg(short = 'p', long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=512))]
    pub parallelism: u16,

    /// Verify again the tasks that were verified before
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Target connection string (libpq URL or key=value)
    #[arg(long, env = "HYPERFILL_TARGET", hide_env_values = true)]
    pub target: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert_eq!(parse_rate("20MB"), Ok(20_000_000));
        assert_eq!(parse_rate("1.5M/s"), Ok(1_500_000));
        assert_eq!(parse_rate("512k"), Ok(512_000));
        assert_eq!(parse_rate("1GiB"), Ok(1 << 30));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10 parsecs").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn help(args: &[&str]) -> String {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let mut sub = &mut cmd;
        for a in args {
            sub = sub.find_subcommand_mut(a).expect("a subcommand");
        }
        sub.render_long_help().to_string()
    }

    #[test]
    fn every_command_has_examples_and_global_options_come_last() {
        use clap::CommandFactory;
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        for name in &names {
            let text = help(&[name]);
            assert!(
                text.contains("Examples:"),
                "{name} --help has no example:\n{text}"
            );
            if let (Some(own), Some(global)) = (text.find("Options:"), text.find("Global options:"))
            {
                assert!(
                    own < global,
                    "{name}: global options before the command's own"
                );
                let own_part = &text[own..global];
                for g in ["--output", "--no-progress", "--log-format"] {
                    assert!(
                        !own_part.contains(g),
                        "{name}: {g} among the command's own options"
                    );
                }
            }
        }
        let stage = help(&["stage"]);
        assert!(stage.contains("--until 1738175400000"), "mixed time types");
        assert!(stage.contains("--filter"));
        assert!(
            help(&["copy"]).contains("run the same command again"),
            "resume"
        );
        let top = help(&[]);
        for c in ["check", "refresh-caggs", "status"] {
            assert!(
                top.contains(&format!("hyperfill {c}")),
                "top-level help lacks {c}"
            );
        }
        assert!(!help(&["status"]).contains("one line per chunk"));
    }
}
