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

/// `refresh-caggs`: refresh each target continuous aggregate from where its
/// copied materialization ends (see [`crate::caggs::plan`]) up to the
/// source's watermark, parents before the caggs built on them, and record
/// each refresh in the queue for `verify`.
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
    // What the copy did, when hyperfill's queue is there to say.
    let queued = queue::exists(&tgt).await?;
    if queued {
        queue::migrate(&tgt).await?;
    }
    let (staged, last) = if queued {
        let last = queue::cagg_refreshes(&tgt)
            .await?
            .into_iter()
            .map(|r| caggs::LastRefresh {
                view: r.view,
                start: r.start,
                end: r.end,
            })
            .collect();
        (queue::staged_caggs(&tgt).await?, last)
    } else {
        (Vec::new(), Vec::new())
    };
    let plan = caggs::plan(
        &source_wm,
        &caggs::target_caggs(&tgt, &target_ext).await?,
        &staged,
        &last,
        ui::internal_time,
    )?;
    if !plan.missing.is_empty() {
        let names: Vec<String> = plan.missing.iter().map(|v| v.to_string()).collect();
        return Err(crate::error::Error::Incompatible(format!(
            "continuous aggregate(s) {} exist on the source but not on the target. Restore the \
             target's schema from a pg_dump of the source, or leave them out with --filter. \
             Nothing was refreshed",
            names.join(", ")
        )));
    }
    for (view, why) in &plan.up_to_date {
        ui::line(&format!("Continuous aggregate {view}: up to date, {why}."));
    }
    for (view, why) in &plan.held_back {
        ui::line(&format!(
            "NOT REFRESHED: continuous aggregate {view}: {why}."
        ));
    }
    for r in &plan.refreshes {
        let start = r
            .start
            .map(|v| ui::internal_time(r.time_type, v))
            .unwrap_or_else(|| "the beginning".into());
        let basis = match r.basis {
            caggs::Basis::Staged => "from where its copied materialization ends",
            caggs::Basis::TargetWatermark => {
                "from the target's own watermark: its materialization was not staged by hyperfill"
            }
        };
        ui::line(&format!(
            "Refreshing continuous aggregate {} in range [{start}, {}) ({basis}, up to the source's watermark)",
            r.view,
            ui::internal_time(r.time_type, r.end)
        ));
        let clock = std::time::Instant::now();
        caggs::refresh(&tgt, &target_ext, r).await?;
        if queued {
            queue::record_cagg_refresh(&tgt, &r.view, r.time_type.sql(), r.start, r.end).await?;
        }
        ui::line(&format!("  done in {}", ui::duration(clock.elapsed())));
    }
    if plan.refreshes.is_empty() && plan.held_back.is_empty() {
        ui::line(&format!(
            "All {} continuous aggregate(s) are already materialized as far as on the source.",
            source_wm.len()
        ));
    } else {
        ui::line(&format!(
            "Refreshed {} continuous aggregate(s){}.{}",
            plan.refreshes.len(),
            if plan.held_back.is_empty() {
                String::new()
            } else {
                format!("; {} not refreshed (see above)", plan.held_back.len())
            },
            if queued && !plan.refreshes.is_empty() {
                " Execute the 'verify' command to compare their views on both sides."
            } else {
                ""
            }
        ));
    }
    Ok(plan.refreshes)
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
    // A queue staged by an older release lacks newer columns.
    queue::migrate(&tgt).await?;
    let st = queue::status(&tgt, errors.max(0)).await?;
    let extras = left_behind::read(&tgt).await?;
    if !ui::json_mode() {
        ui::print_status(&st);
        left_behind::print(&extras);
    }
    Ok(StatusReport { queue: st, extras })
}
