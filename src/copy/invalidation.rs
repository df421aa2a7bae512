//! Keeping a backfill from logging continuous-aggregate invalidations.
//!
//! TimescaleDB logs an invalidation for rows written below a continuous
//! aggregate's threshold. The materialization hypertables are copied from
//! the source as they are, so those invalidations would only force needless
//! re-materialization. How to keep them out depends on the release:
//!
//! * **Before 2.23** a row trigger, `ts_cagg_invalidation_trigger`, on every
//!   chunk logs them. For one task's transaction it is silenced with
//!   `SET LOCAL session_replication_role = replica` when the role may set it
//!   (superuser, or granted `SET` on the parameter): no lock at all, and user
//!   triggers and foreign-key checks do not fire on copied rows either, as
//!   with pg_restore's `--disable-triggers`. Otherwise the trigger is dropped
//!   on that one chunk and re-created from its own definition before commit:
//!   an exclusive lock on that chunk alone, so writes to other chunks of the
//!   hypertable are not blocked.
//! * **From 2.23** TimescaleDB records them in C for every write to a
//!   hypertable or chunk, whatever `session_replication_role` says. Writes
//!   made directly to a chunk or compressed chunk while
//!   `timescaledb.restoring` is on are not recorded, so those writes run with
//!   `SET LOCAL timescaledb.restoring = on`, switched off again around
//!   `compress_chunk`/`decompress_chunk` and around rows sent through the
//!   hypertable (which need TimescaleDB's hooks: the partial flag of a
//!   compressed chunk is set only there; those few rows do log an
//!   invalidation). Setting it needs a superuser or
//!   `GRANT SET ON PARAMETER timescaledb.restoring TO <role>`; without that
//!   the copy logs invalidations and `refresh-caggs` absorbs them.
//! * **From 2.28** `SET LOCAL timescaledb.skip_cagg_invalidation = on`, a
//!   setting TimescaleDB provides for migration tools, turns recording off
//!   for the whole transaction, hooks included. Any role may set it.
//!
//! Which of these exists is in `catalog::compat` ([`Invalidations`]); this
//! module picks the way for the connected role.

use crate::catalog::compat::Invalidations;
use crate::catalog::Features;
use crate::db::Db;
use crate::error::Result;
use crate::ident::QualifiedName;

const TRIGGER: &str = "ts_cagg_invalidation_trigger";

/// Target. Whether this role may set `session_replication_role` and
/// `timescaledb.restoring`.
// language=PostgreSQL
pub const CAPABILITIES: &str = "\
SELECT has_parameter_privilege('session_replication_role', 'SET'),
       has_parameter_privilege('timescaledb.restoring', 'SET')";

/// Target, 2.28+: no invalidations for this transaction.
// language=PostgreSQL
pub(crate) const SET_SKIP: &str = "SET LOCAL timescaledb.skip_cagg_invalidation = on";

/// Target. $1 = quoted relation name. The definition of its invalidation trigger.
// language=PostgreSQL
pub(crate) const TRIGGER_DEF: &str = "\
SELECT pg_get_triggerdef(t.oid)
FROM pg_trigger t
WHERE t.tgrelid = to_regclass($1::text) AND t.tgname = 'ts_cagg_invalidation_trigger'";

/// How this target keeps invalidations out, decided once per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Before 2.23: the trigger; `replica_role` says which way to silence it.
    Trigger { replica_role: bool },
    /// From 2.23: `timescaledb.restoring` around direct chunk writes.
    Restoring,
    /// From 2.23 without the right to set `timescaledb.restoring`.
    Unavoidable,
    /// From 2.28: `timescaledb.skip_cagg_invalidation` for the transaction.
    Skip,
}

/// Decide the strategy for the connected target role.
pub async fn strategy(db: &Db, features: &Features) -> Strategy {
    if features.invalidations == Invalidations::Skip {
        return Strategy::Skip;
    }
    let (replica, restoring) = match db.client.query_one(CAPABILITIES, &[]).await {
        Ok(row) => (row.get(0), row.get(1)),
        Err(_) => (false, false),
    };
    match (features.invalidations, restoring) {
        (Invalidations::Trigger, _) => Strategy::Trigger {
            replica_role: replica,
        },
        (_, true) => Strategy::Restoring,
        (_, false) => {
            tracing::warn!(
                "the target role may not set timescaledb.restoring: copying will log \
                 continuous-aggregate invalidations (refresh-caggs absorbs them). To avoid them: \
                 GRANT SET ON PARAMETER timescaledb.restoring TO <role>"
            );
            Strategy::Unavoidable
        }
    }
}

/// In force for one task's transaction: what to undo before commit, and
/// what to switch around direct chunk writes.
#[must_use]
pub struct Suppressed {
    strategy: Strategy,
    restore: Option<(QualifiedName, String)>,
}

/// Silence invalidations for writes to `chunk` in the open transaction. Call
/// [`Suppressed::restore`] before committing.
pub async fn suppress(db: &Db, chunk: &QualifiedName, strategy: Strategy) -> Result<Suppressed> {
    let mut s = Suppressed {
        strategy,
        restore: None,
    };
    if strategy == Strategy::Skip {
        db.batch(SET_SKIP, "turning off invalidation tracking for the copy")
            .await?;
        return Ok(s);
    }
    let Strategy::Trigger { replica_role } = strategy else {
        return Ok(s);
    };
    let def = db
        .query_opt(
            TRIGGER_DEF,
            &[&chunk.sql()],
            &format!("reading the triggers of {chunk}"),
        )
        .await?
        .map(|r| r.get::<_, String>(0));
    let Some(def) = def else {
        return Ok(s);
    };
    if replica_role {
        db.batch(
            "SET LOCAL session_replication_role = replica",
            "disabling triggers for the copy",
        )
        .await?;
        return Ok(s);
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
    s.restore = Some((chunk.clone(), def));
    Ok(s)
}

impl Suppressed {
    /// Before writing straight into a chunk or compressed chunk table.
    pub async fn direct_writes(&self, db: &Db) -> Result<()> {
        if self.strategy == Strategy::Restoring {
            db.batch(
                "SET LOCAL timescaledb.restoring = on",
                "entering restoring mode for the copy",
            )
            .await?;
        }
        Ok(())
    }

    /// Before anything that needs TimescaleDB's own hooks: compress_chunk,
    /// decompress_chunk, rows sent through the hypertable, the commit.
    pub async fn hooks(&self, db: &Db) -> Result<()> {
        if self.strategy == Strategy::Restoring {
            db.batch(
                "SET LOCAL timescaledb.restoring = off",
                "leaving restoring mode",
            )
            .await?;
        }
        Ok(())
    }

    /// Put back what [`suppress`] removed (in the same transaction).
    pub async fn restore(self, db: &Db) -> Result<()> {
        self.hooks(db).await?;
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
