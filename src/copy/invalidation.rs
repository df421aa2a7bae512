//! What fires on copied rows: continuous-aggregate invalidations, user
//! triggers and foreign-key checks.
//!
//! **The rule.** A backfill loads the source's rows the way `pg_restore`
//! loads data: user triggers do not fire on copied rows and foreign keys are
//! not checked, on every path (plain chunk COPY, rows sent through the
//! hypertable, compressed batches, rows copied decompressed), and no
//! continuous-aggregate invalidation is logged. The target ends with the
//! source's rows, not with what its triggers would make of them.
//!
//! * When the target role may set `session_replication_role` (superuser, or
//!   `GRANT SET ON PARAMETER session_replication_role`), each task's
//!   transaction runs with `SET LOCAL session_replication_role = replica`:
//!   no lock, and neither user triggers nor foreign-key triggers fire
//!   (TimescaleDB refuses `ENABLE ALWAYS`/`ENABLE REPLICA` triggers on
//!   hypertables and chunks, so none fires under the replica role).
//! * Otherwise the target chunk's enabled user triggers are dropped for the
//!   transaction and created again from their own definitions
//!   (`pg_get_triggerdef`) before commit: TimescaleDB refuses `ALTER TABLE
//!   ... DISABLE TRIGGER` on chunks. That needs the owner and takes an
//!   exclusive lock on that one chunk, never on the hypertable, so writes to
//!   other chunks go on. Foreign keys
//!   are then checked (their triggers are internal), statement-level
//!   triggers on the hypertable fire for rows sent through it, and on the
//!   Apache build a chunk created by arriving rows gets its triggers as it is
//!   created. `copy` warns about this at its start.
//!
//! Invalidations depend on the release:
//!
//! * **Before 2.23** a row trigger, `ts_cagg_invalidation_trigger`, on every
//!   chunk logs them: the replica role silences it, or it is set aside on
//!   the chunk with the user triggers above (it is not an internal trigger).
//! * **From 2.23** TimescaleDB records them in C for every write to a
//!   hypertable or chunk, whatever `session_replication_role` says. Writes
//!   made directly to a chunk or compressed chunk while
//!   `timescaledb.restoring` is on are not recorded, so those writes run with
//!   `SET LOCAL timescaledb.restoring = on`, switched off again around
//!   `compress_chunk`/`decompress_chunk` and around rows sent through the
//!   hypertable (which need TimescaleDB's hooks: the partial flag of a
//!   compressed chunk is set only there, and with the replica role the
//!   hypertable's insert blocker would not stop rows landing in the root
//!   table while the hooks are off; those few rows do log an invalidation).
//!   Setting it needs a superuser or
//!   `GRANT SET ON PARAMETER timescaledb.restoring TO <role>`; without that
//!   the copy logs invalidations and `refresh-caggs` absorbs them.
//! * **From 2.28** `SET LOCAL timescaledb.skip_cagg_invalidation = on`, a
//!   setting TimescaleDB provides for migration tools, turns recording off
//!   for the whole transaction, hooks included. Any role may set it.
//!
//! Which of these exists is in `catalog::compat` ([`Invalidations`]); this
//! module picks the way for the connected role. The trigger rule above holds
//! on every release.

use crate::catalog::compat::Invalidations;
use crate::catalog::Features;
use crate::db::Db;
use crate::error::Result;
use crate::ident::{quote_ident, QualifiedName};

/// Target. Whether this role may set `session_replication_role` and
/// `timescaledb.restoring`.
// language=PostgreSQL
pub const CAPABILITIES: &str = "\
SELECT has_parameter_privilege('session_replication_role', 'SET'),
       has_parameter_privilege('timescaledb.restoring', 'SET')";

/// Target, 2.28+: no invalidations for this transaction.
// language=PostgreSQL
pub(crate) const SET_SKIP: &str = "SET LOCAL timescaledb.skip_cagg_invalidation = on";

/// Target. $1 = quoted relation name. Its user (non-internal) triggers that
/// fire in the origin role: name and definition. (TimescaleDB refuses
/// `ENABLE ALWAYS`/`ENABLE REPLICA` on hypertables and chunks, so a chunk has
/// no trigger that fires under the replica role.)
// language=PostgreSQL
pub(crate) const USER_TRIGGERS: &str = "\
SELECT t.tgname::text, pg_get_triggerdef(t.oid)
FROM pg_trigger t
WHERE t.tgrelid = to_regclass($1::text) AND NOT t.tgisinternal AND t.tgenabled = 'O'
ORDER BY t.tgname";

/// How this target keeps invalidations out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Before 2.23: the row trigger (silenced with the other triggers).
    Trigger,
    /// 2.23 – 2.27: `timescaledb.restoring` around direct chunk writes.
    Restoring,
    /// 2.23 – 2.27 without the right to set `timescaledb.restoring`.
    Unavoidable,
    /// From 2.28: `timescaledb.skip_cagg_invalidation` for the transaction.
    Skip,
}

/// What this target role can do, decided once per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strategy {
    pub invalidations: Mode,
    /// May set `session_replication_role = replica`.
    pub replica_role: bool,
}

/// Decide the strategy for the connected target role.
pub async fn strategy(db: &Db, features: &Features) -> Strategy {
    let (replica, restoring) = match db.try_query_one(CAPABILITIES, &[]).await {
        Ok(row) => (row.get(0), row.get(1)),
        Err(_) => (false, false),
    };
    if !replica {
        tracing::warn!(
            "the target role may not set session_replication_role: user row triggers are set \
             aside on each target chunk while it is copied, but foreign keys are checked and \
             statement-level triggers on hypertables fire for rows sent through them. To load \
             rows as pg_restore does: GRANT SET ON PARAMETER session_replication_role TO <role>"
        );
    }
    let invalidations = match (features.invalidations, restoring) {
        (Invalidations::Skip, _) => Mode::Skip,
        (Invalidations::Trigger, _) => Mode::Trigger,
        (Invalidations::Recorded, true) => Mode::Restoring,
        (Invalidations::Recorded, false) => {
            tracing::warn!(
                "the target role may not set timescaledb.restoring: copying will log \
                 continuous-aggregate invalidations (refresh-caggs absorbs them). To avoid them: \
                 GRANT SET ON PARAMETER timescaledb.restoring TO <role>"
            );
            Mode::Unavoidable
        }
    };
    Strategy {
        invalidations,
        replica_role: replica,
    }
}

/// In force for one task's transaction: what to undo before commit, and
/// what to switch around direct chunk writes.
#[must_use]
pub struct Suppressed {
    strategy: Strategy,
    /// The chunk whose triggers were set aside: each trigger's name and
    /// definition.
    disabled: Option<(QualifiedName, Vec<(String, String)>)>,
}

/// Keep triggers, foreign-key checks and invalidations from acting on the
/// rows this transaction writes into `chunk` (`None`: rows go through the
/// hypertable into chunks it creates; only the replica role applies). Call
/// [`Suppressed::restore`] before committing.
pub async fn suppress(
    db: &Db,
    chunk: Option<&QualifiedName>,
    strategy: Strategy,
) -> Result<Suppressed> {
    let mut s = Suppressed {
        strategy,
        disabled: None,
    };
    if strategy.invalidations == Mode::Skip {
        db.batch(SET_SKIP, "turning off invalidation tracking for the copy")
            .await?;
    }
    if strategy.replica_role {
        db.batch(
            "SET LOCAL session_replication_role = replica",
            "disabling triggers for the copy",
        )
        .await?;
    }
    let Some(chunk) = chunk else {
        return Ok(s);
    };
    if strategy.replica_role {
        return Ok(s);
    }
    // TimescaleDB refuses ALTER TABLE ... DISABLE TRIGGER on chunks: drop
    // them for this transaction and create them again from their own
    // definitions before commit.
    let triggers: Vec<(String, String)> = db
        .query(
            USER_TRIGGERS,
            &[&chunk.sql()],
            &format!("reading the triggers of {chunk}"),
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if triggers.is_empty() {
        return Ok(s);
    }
    let drops: Vec<String> = triggers
        .iter()
        .map(|(name, _)| format!("DROP TRIGGER {} ON {}", quote_ident(name), chunk.sql()))
        .collect();
    db.batch(
        &drops.join("; "),
        &format!("setting the triggers of {chunk} aside for the copy"),
    )
    .await?;
    s.disabled = Some((chunk.clone(), triggers));
    Ok(s)
}

impl Suppressed {
    /// Before writing straight into a chunk or compressed chunk table.
    pub async fn direct_writes(&self, db: &Db) -> Result<()> {
        if self.strategy.invalidations == Mode::Restoring {
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
        if self.strategy.invalidations == Mode::Restoring {
            db.batch(
                "SET LOCAL timescaledb.restoring = off",
                "leaving restoring mode",
            )
            .await?;
        }
        Ok(())
    }

    /// Create again what [`suppress`] set aside (in the same transaction).
    pub async fn restore(self, db: &Db) -> Result<()> {
        self.hooks(db).await?;
        if let Some((chunk, triggers)) = self.disabled {
            let defs: Vec<&str> = triggers.iter().map(|(_, def)| def.as_str()).collect();
            db.batch(
                &defs.join("; "),
                &format!("re-creating the triggers of {chunk}"),
            )
            .await?;
        }
        Ok(())
    }
}
