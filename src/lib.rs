//! hyperfill: backfill TimescaleDB hypertables from a source database to a
//! target database, chunk by chunk, in parallel, resumably.
//!
//! Layout (see ARCHITECTURE.md for the invariants):
//! `cli` clap types · `error` errors and exit codes · `db` connections ·
//! `ident` quoting · `caggs` continuous aggregates · `catalog` read-only
//! TimescaleDB introspection · `check` the preflight · `plan` pure staging
//! decisions · `queue` the work queue in the target · `copy` the per-chunk
//! copy engine · `verify` the per-chunk comparison · `worker` the worker
//! pool · `commands` one module per subcommand · `ui` what the user reads.

pub mod caggs;
#[macro_use]
pub mod catalog;
pub mod check;
pub mod cli;
pub mod commands;
pub mod copy;
pub mod db;
pub mod error;
pub mod ident;
pub mod plan;
pub mod queue;
pub mod statements;
pub mod ui;
pub mod verify;
pub mod worker;

use cli::{Cli, Command};
use db::ConnInfo;
use error::{Error, Result, Side};
pub use worker::Shutdown;

fn conns(c: &cli::ConnArgs) -> Result<(ConnInfo, ConnInfo)> {
    Ok((
        ConnInfo::parse(Side::Source, &c.source)?,
        ConnInfo::parse(Side::Target, &c.target)?,
    ))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Internal(e.to_string()))
}

/// Run one command. `shutdown` carries the two cancellation levels (first
/// and second ctrl-c). Returns the command's result as JSON, which `main`
/// prints with `--output json`.
pub async fn run(cli: Cli, shutdown: Shutdown) -> Result<serde_json::Value> {
    match cli.command {
        Command::Stage(a) => {
            let (source, target) = conns(&a.conn)?;
            let dry_run = a.dry_run;
            let report = commands::stage::run(commands::stage::StageConfig {
                source,
                target,
                until: a.until,
                from: a.from,
                selection: catalog::Selection {
                    filter: a.filter,
                    cascade_up: a.cascade_up,
                    cascade_down: a.cascade_down,
                },
                snapshot: a.snapshot,
                dry_run,
            })
            .await?;
            if !dry_run && (report.staged > 0 || report.requeued > 0 || report.already_staged > 0) {
                commands::stage::print_summary(&report);
            }
            to_json(&report)
        }
        Command::Copy(a) => {
            let (source, target) = conns(&a.conn)?;
            let report = commands::copy::run(
                commands::copy::CopyConfig {
                    source,
                    target,
                    parallelism: a.parallelism.map(usize::from),
                    max_attempts: a.max_attempts,
                    stall_timeout: std::time::Duration::from_secs(a.stall_timeout),
                    analyze: a.analyze,
                    max_rate: a.max_rate,
                    requeue_mismatched: a.requeue_mismatched,
                },
                shutdown,
            )
            .await?;
            to_json(&report)
        }
        Command::Verify(a) => {
            let (source, target) = conns(&a.conn)?;
            let report = commands::verify::run(
                commands::verify::VerifyConfig {
                    source,
                    target,
                    parallelism: a.parallelism as usize,
                    all: a.all,
                },
                shutdown,
            )
            .await?;
            to_json(&report)
        }
        Command::RefreshCaggs(a) => {
            let (source, target) = conns(&a.conn)?;
            let refreshed = commands::refresh_caggs(
                &source,
                &target,
                a.filter.as_deref(),
                a.cascade_up,
                a.cascade_down,
            )
            .await?;
            Ok(serde_json::json!({ "refreshed": refreshed }))
        }
        Command::Status(a) => {
            let target = ConnInfo::parse(Side::Target, &a.target)?;
            let status = commands::status(&target, a.errors).await?;
            to_json(&status)
        }
        Command::Check(a) => {
            let (source, target) = conns(&a.conn)?;
            let report = check::run(&source, &target, a.filter.as_deref()).await?;
            check::print(&report);
            let value = to_json(&report)?;
            if report.blocking() > 0 {
                return Err(Error::CheckFailed {
                    problems: report.blocking(),
                    report: value,
                });
            }
            Ok(value)
        }
        Command::Clean(a) => {
            let target = ConnInfo::parse(Side::Target, &a.target)?;
            let existed = commands::clean(&target).await?;
            Ok(serde_json::json!({ "removed": existed }))
        }
        Command::Completions(_) | Command::Man => Ok(serde_json::Value::Null),
    }
}
