//! One module per subcommand: orchestration and what the user reads.

pub mod bounds;
pub mod copy;
pub mod stage;
pub mod verify;

use crate::db::ConnInfo;
use crate::error::Result;
use crate::queue;
use crate::ui;

/// `clean`: drop the queue schema; succeeds when it is already gone.
pub async fn clean(target: &ConnInfo) -> Result<()> {
    let tgt = target.connect().await?;
    if queue::drop(&tgt).await? {
        ui::line("Removed hyperfill's queue (schema __hyperfill) from the target database.");
    } else {
        ui::line("Nothing to clean: the target database has no hyperfill queue.");
    }
    Ok(())
}
