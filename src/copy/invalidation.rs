//! Keeping a backfill from logging continuous-aggregate invalidations.
//!
//! TimescaleDB logs an invalidation for rows written below a continuous
//! aggregate's threshold, through the row trigger `ts_cagg_invalidation_trigger`
//! on every chunk. The materialization hypertables are copied from the source
//! as they are, so those invalidations would only force needless
//! re-materialization. Two ways to silence the trigger for one task's
//! transaction, in order of preference:
//!
//! 1. `SET LOCAL session_replication_role = replica`, when the role may set it
//!    (superuser, or granted `SET` on the parameter): no lock at all. It also
//!    keeps user triggers and foreign-key checks from firing on copied rows,
//!    as pg_restore's `--disable-triggers` does.
//! 2. Otherwise drop the trigger on that one chunk and re-create it from its
//!    own definition before commit. That takes an exclusive lock on the chunk
//!    alone: writes to other chunks of the hypertable are not blocked.

use crate::db::Db;
use crate::error::Result;
use crate::ident::QualifiedName;

const TRIGGER: &str = "ts_cagg_invalidation_trigger";

/// Target. Whether this session may set `session_replication_role`.
// language=PostgreSQL
const CAN_SET_REPLICA: &str = "SELECT has_parameter_privilege('session_replication_role', 'SET')";

/// Target. $1 = quoted relation name. The definition of its invalidation trigger.
// language=PostgreSQL
const TRIGGER_DEF: &str = "\
SELECT pg_get_triggerdef(t.oid)
FROM pg_trigger t
WHERE t.tgrelid = to_regclass($1::text) AND t.tgname = 'ts_cagg_invalidation_trigger'";

/// Whether the connected role may use `session_replication_role = replica`.
pub async fn can_use_replica_role(db: &Db) -> bool {
    match db.client.query_one(CAN_SET_REPLICA, &[]).await {
        Ok(row) => row.get(0),
        Err(_) => false,
    }
}

/// What to undo before commit.
#[must_use]
pub struct Suppressed {
    restore: Option<(QualifiedName, String)>,
}

/// Silence the invalidation trigger of `chunk` for the rest of the open
/// transaction. Call [`Suppressed::restore`] before committing.
pub async fn suppress(db: &Db, chunk: &QualifiedName, replica_role: bool) -> Result<Suppressed> {
    let def = db
        .query_opt(
            TRIGGER_DEF,
            &[&chunk.sql()],
            &format!("reading the triggers of {chunk}"),
        )
        .await?
        .map(|r| r.get::<_, String>(0));
    let Some(def) = def else {
        return Ok(Suppressed { restore: None });
    };
    if replica_role {
        db.batch(
            "SET LOCAL session_replication_role = replica",
            "disabling triggers for the copy",
        )
        .await?;
        return Ok(Suppressed { restore: None });
    }
    db.batch(
        &format!(
            "DROP TRIGGER {} ON {}",
            crate::ident::quote_ident(TRIGGER),
            chunk.sql()
        ),
        &format!("dropping the invalidation trigger of {chunk} for the copy"),
    )
    .await?;
    Ok(Suppressed {
        restore: Some((chunk.clone(), def)),
    })
}

impl Suppressed {
    /// Put back what [`suppress`] removed (in the same transaction).
    pub async fn restore(self, db: &Db) -> Result<()> {
        if let Some((chunk, def)) = self.restore {
            db.batch(
                &def,
                &format!("re-creating the invalidation trigger of {chunk}"),
            )
            .await?;
        }
        Ok(())
    }
}
