//! hyperfill: backfill TimescaleDB hypertables from a source database to a
//! target database, chunk by chunk, in parallel, resumably.
//!
//! Layout (see ARCHITECTURE.md for the invariants):
//! `cli` clap types · `error` errors and exit codes · `db` connections ·
//! `ident` quoting · `caggs` continuous aggregates · `catalog` read-only TimescaleDB introspection ·
//! `plan` pure staging decisions · `queue` the work queue in the target ·
//! `copy` the per-chunk copy engine · `verify` the per-chunk comparison ·
//! `worker` the worker pool · `commands` one module per subcommand ·
//! `ui` what the user reads.

pub mod caggs;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod copy;
pub mod db;
pub mod error;
pub mod ident;
pub mod plan;
pub mod queue;
pub mod ui;
pub mod verify;
pub mod worker;

use cli::{Cli, Command};
use db::ConnInfo;
use error::{Result, Side};
pub use worker::Shutdown;

fn conns(c: &cli::ConnArgs) -> Result<(ConnInfo, ConnInfo)> {
    Ok((
        ConnInfo::parse(Side::Source, &c.source)?,
        ConnInfo::parse(Side::Target, &c.target)?,
    ))
}

/// Run one command. `shutdown` carries the two cancellation levels (first
/// and second ctrl-c).
pub async fn run(cli: Cli, shutdown: Shutdown) -> Result<()> {
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
                if report.already_staged > 0 {
                    ui::line(&format!(
                        "Skipping {} chunk(s) that were already staged with the same or a wider range.",
                        report.already_staged
                    ));
                }
                ui::line(&format!(
                    "Staged {} chunk(s) to copy{} from {} hypertable(s), ~{} on the source{}.",
                    report.staged,
                    if report.requeued > 0 {
                        format!(" and re-queued {} with a wider range", report.requeued)
                    } else {
                        String::new()
                    },
                    report.hypertables,
                    ui::bytes(report.estimated_bytes.max(0) as u64),
                    if report.chunks_created > 0 {
                        format!(
                            "; created {} missing target chunk(s)",
                            report.chunks_created
                        )
                    } else {
                        String::new()
                    }
                ));
                ui::line("Execute the 'copy' command to migrate the data.");
            }
            Ok(())
        }
        Command::Copy(a) => {
            let (source, target) = conns(&a.conn)?;
            commands::copy::run(
                commands::copy::CopyConfig {
                    source,
                    target,
                    parallelism: a.parallelism as usize,
                    max_attempts: a.max_attempts,
                    analyze: a.analyze,
                },
                shutdown,
            )
            .await
            .map(|_| ())
        }
        Command::Verify(a) => {
            let (source, target) = conns(&a.conn)?;
            commands::verify::run(
                commands::verify::VerifyConfig {
                    source,
                    target,
                    parallelism: a.parallelism as usize,
                    all: a.all,
                },
                shutdown,
            )
            .await
            .map(|_| ())
        }
        Command::RefreshCaggs(a) => {
            let (source, target) = conns(&a.conn)?;
            commands::refresh_caggs(
                &source,
                &target,
                a.filter.as_deref(),
                a.cascade_up,
                a.cascade_down,
            )
            .await
        }
        Command::Status(a) => {
            let target = ConnInfo::parse(Side::Target, &a.target)?;
            commands::status(&target, a.errors, a.output == cli::Output::Json).await
        }
        Command::Clean(a) => {
            let target = ConnInfo::parse(Side::Target, &a.target)?;
            commands::clean(&target).await
        }
    }
}
