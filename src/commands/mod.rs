//! One module per subcommand: orchestration and what the user reads.

pub mod bounds;
pub mod copy;
pub mod left_behind;
pub mod stage;
pub mod verify;

use crate::db::ConnInfo;
use crate::error::Result;
use crate::queue;
use crate::ui;

/// `clean`: drop the queue schema; succeeds when it is already gone.
/// Returns whether there was a queue.
pub async fn clean(target: &ConnInfo) -> Result<bool> {
    let tgt = target.connect().await?;
    let existed = queue::drop(&tgt).await?;
    if existed {
        ui::line("Removed hyperfill's queue (schema __hyperfill) from the target database.");
    } else {
        ui::line("Nothing to clean: the target database has no hyperfill queue.");
    }
    Ok(existed)
}

/// `refresh-caggs`: refresh each target continuous aggregate from its
/// watermark up to the source's, parents before the caggs built on them.
pub async fn refresh_caggs(
    source: &ConnInfo,
    target: &ConnInfo,
    filter: Option<&str>,
    up: bool,
    down: bool,
) -> Result<Vec<crate::caggs::Refresh>> {
    use crate::{caggs, catalog};
    let src = source.connect().await?;
    let tgt = target.connect().await?;
    let source_ext = catalog::extension(&src).await?;
    let target_ext = catalog::extension(&tgt).await?;
    catalog::ensure_compatible(&source_ext, &target_ext)?;
    if let Some(f) = filter {
        catalog::validate_regex(&src, f).await?;
    }
    let source_wm = caggs::source_watermarks(&src, filter, up, down).await?;
    if source_wm.is_empty() {
        ui::line("No continuous aggregates to refresh.");
        return Ok(Vec::new());
    }
    let (plan, missing) = caggs::plan(&source_wm, &caggs::target_caggs(&tgt).await?)?;
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|v| v.to_string()).collect();
        return Err(crate::error::Error::Incompatible(format!(
            "continuous aggregate(s) {} exist on the source but not on the target. Restore the \
             target's schema from a pg_dump of the source, or leave them out with --filter. \
             Nothing was refreshed",
            names.join(", ")
        )));
    }
    if plan.is_empty() {
        ui::line(&format!(
            "All {} continuous aggregate(s) are already materialized as far as on the source.",
            source_wm.len()
        ));
        return Ok(plan);
    }
    for r in &plan {
        let start = r
            .start
            .map(|v| ui::internal_time(r.time_type, v))
            .unwrap_or_else(|| "the beginning".into());
        ui::line(&format!(
            "Refreshing continuous aggregate {} in range [{start}, {})",
            r.view,
            ui::internal_time(r.time_type, r.end)
        ));
        let clock = std::time::Instant::now();
        caggs::refresh(&tgt, &target_ext, r).await?;
        ui::line(&format!("  done in {}", ui::duration(clock.elapsed())));
    }
    ui::line(&format!(
        "Refreshed {} continuous aggregate(s).",
        plan.len()
    ));
    Ok(plan)
}

/// What `status` reports: the queue's figures, and the lists of
/// [`left_behind`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    #[serde(flatten)]
    pub queue: queue::Status,
    #[serde(flatten)]
    pub extras: left_behind::Extras,
}

/// `status`: the queue at a glance (the table only in human mode; with
/// `--output json` the caller prints the returned value).
pub async fn status(target: &ConnInfo, errors: i64) -> Result<StatusReport> {
    let tgt = target.connect().await?;
    queue::require(&tgt).await?;
    let st = queue::status(&tgt, errors.max(0)).await?;
    let extras = left_behind::read(&tgt).await?;
    if !ui::json_mode() {
        ui::print_status(&st);
        left_behind::print(&extras);
    }
    Ok(StatusReport { queue: st, extras })
}
