//! Command-line definitions (clap derive types only). Flags and short forms
//! are compatible with timescaledb-backfill.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "hyperfill",
    version,
    about = "Backfill TimescaleDB hypertables from a source to a target database, chunk by chunk",
    long_about = "Backfill TimescaleDB hypertables (plain, compressed and continuous-aggregate \
materializations) from a source database to a target database, chunk by chunk, in parallel and \
resumably, up to a completion point given with --until.\n\n\
A day of work: stage, copy (interrupt and re-run at will), verify, clean."
)]
pub struct Cli {
    /// Accepted for compatibility with timescaledb-backfill; hyperfill sends no telemetry.
    #[arg(long, global = true, hide = true)]
    pub disable_telemetry: bool,

    /// Result format: human lines, or one JSON document on stdout (progress
    /// and messages then go to stderr)
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,

    /// No progress bars, even on a terminal (one line per chunk instead)
    #[arg(long, global = true)]
    pub no_progress: bool,

    /// Log format on stderr (RUST_LOG sets the level; default warn)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create copy tasks for the chunks of hypertables and continuous aggregates
    Stage(StageArgs),
    /// Copy the staged chunks from the source to the target
    Copy(CopyArgs),
    /// Compare each copied chunk on both sides
    Verify(VerifyArgs),
    /// Refresh the target's continuous aggregates up to the source's watermarks
    RefreshCaggs(RefreshCaggsArgs),
    /// Show the queue: tasks per hypertable and state, rows and bytes, problems
    Status(StatusArgs),
    /// Preflight: check source and target before a backfill; changes nothing
    Check(CheckArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(CompletionsArgs),
    /// Print the man page (roff) for hyperfill
    Man,
    /// Drop hyperfill's queue schema from the target
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

    /// List what would be staged and change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    #[command(flatten)]
    pub conn: ConnArgs,

    /// Number of workers; each holds one source and one target connection
    #[arg(short = 'p', long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=512))]
    pub parallelism: u16,

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

    /// Verify again the chunks that were verified before
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
}
