//! Noticing a stuck server on a worker's connection.
//!
//! TCP keepalives and `tcp_user_timeout` notice a dead peer, but not a
//! server (or proxy) that is alive at the TCP level and no longer answers:
//! its kernel still acknowledges everything. So every wait on a watched
//! connection is bounded by `--stall-timeout`; when it runs out, a *probe*
//! (a fresh connection, itself bounded by connect_timeout and the stall
//! timeout) asks the server what the session is doing:
//!
//! - `active` and not waiting on its client: the server is working on it (a
//!   long DELETE, a compression, a lock wait): keep waiting, probe again
//!   after another period;
//! - waiting on its client (`ClientRead`/`ClientWrite`) while we wait on it,
//!   idle, or gone: the network or a proxy between us lost the conversation;
//! - no answer to the probe's connection: the server is stuck or
//!   unreachable;
//! - connected, but no answer to its question within the period: a pooler
//!   queueing it behind busy server connections, or a loaded server: keep
//!   waiting and probe again.
//!
//! The last two fail the attempt with [`Error::Stalled`] (transient), so the
//! task is retried on fresh connections instead of hanging.

use std::future::Future;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::Type;

use super::ConnInfo;
use crate::error::{Error, Result, Side};

/// How long an answer may take to arrive after the probe found the session
/// no longer working on it.
const GRACE: Duration = Duration::from_secs(2);

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Liveness {
    Working,
    Stuck(String),
}

/// The session's state in `pg_stat_activity`: state, wait event type, wait
/// event; no row when the session is gone.
// language=PostgreSQL
const SESSION_STATE: &str = "\
SELECT state, wait_event_type, wait_event FROM pg_stat_activity WHERE pid = $1";

/// A watched connection: its server session and where to probe it.
#[derive(Clone)]
pub(super) struct Watch {
    /// The same server, for the probe (not watched itself).
    pub conn: ConnInfo,
    /// The server process serving the connection's current transaction.
    /// Behind a transaction-mode pooler each transaction may run in
    /// another one, so it is read again as each transaction begins
    /// ([`super::Db::note_session`]).
    pub pid: Arc<AtomicI32>,
    pub stall: Duration,
}

impl Watch {
    /// Await `f`, probing the server each time `stall` passes without an
    /// answer. The inner result is the operation's own.
    pub async fn run<T, E>(
        &self,
        side: Side,
        what: &str,
        f: impl Future<Output = std::result::Result<T, E>>,
    ) -> Result<std::result::Result<T, E>> {
        tokio::pin!(f);
        loop {
            if let Ok(r) = tokio::time::timeout(self.stall, &mut f).await {
                return Ok(r);
            }
            // Boxed: the probe's connect is a large future, and every
            // watched wait would otherwise carry it. The answer may still
            // arrive while the probe runs.
            let liveness = tokio::select! {
                r = &mut f => return Ok(r),
                l = Box::pin(self.probe()) => l,
            };
            if let Liveness::Stuck(why) = liveness {
                // An idle session may just have sent its answer (the probe
                // can wait behind a pooler's busy connections while the
                // operation ends): give it a moment to arrive.
                if let Ok(r) = tokio::time::timeout(self.stall.min(GRACE), &mut f).await {
                    return Ok(r);
                }
                return Err(Error::Stalled {
                    side,
                    context: what.to_string(),
                    timeout: self.stall,
                    why,
                });
            }
            tracing::debug!(%side, pid = self.pid(), what, "the server is still working on it");
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::Relaxed)
    }

    pub fn set_pid(&self, pid: i32) {
        self.pid.store(pid, Ordering::Relaxed)
    }

    async fn probe(&self) -> Liveness {
        // A plain connection (no session set-up) for one catalog query.
        let client = match tokio::time::timeout(self.stall, self.conn.open()).await {
            Err(_) => {
                return Liveness::Stuck("the server does not answer a new connection either".into())
            }
            Ok(Err(e)) => return Liveness::Stuck(format!("the server cannot be reached: {e}")),
            Ok(Ok((client, connection))) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
            }
        };
        // Unnamed, typed: works through a transaction-mode pooler too.
        let pid = self.pid();
        let params = [(
            &pid as &(dyn tokio_postgres::types::ToSql + Sync),
            Type::INT4,
        )];
        let asked = client.query_typed_opt(SESSION_STATE, &params);
        match tokio::time::timeout(self.stall, asked).await {
            // Connected, but the question waits: a pooler whose server
            // connections are all busy (with our own long COPYs, say) holds
            // it in its queue, or the server is loaded. Not a verdict: wait
            // another period and ask again. (A pooler whose server is gone
            // ends the wait with an error of its own.)
            Err(_) => Liveness::Working,
            Ok(Err(e)) => Liveness::Stuck(format!(
                "the server cannot be asked: {}",
                Error::db(self.conn.side, "checking a busy session", e)
            )),
            Ok(Ok(None)) => Liveness::Stuck("its server session is gone".into()),
            Ok(Ok(Some(row))) => judge(
                row.get::<_, Option<String>>(0).as_deref(),
                row.get::<_, Option<String>>(1).as_deref(),
                row.get::<_, Option<String>>(2).as_deref(),
            ),
        }
    }
}

/// Whether a session we are waiting on is working, from its state.
fn judge(state: Option<&str>, wait_type: Option<&str>, wait: Option<&str>) -> Liveness {
    match (state, wait_type) {
        (Some("active"), Some("Client")) => Liveness::Stuck(format!(
            "the server waits for the network ({}) while we wait for the server",
            wait.unwrap_or("Client")
        )),
        (Some("active"), _) => Liveness::Working,
        (Some(s), _) => Liveness::Stuck(format!(
            "the server session is {s}: its answer did not arrive"
        )),
        (None, _) => Liveness::Stuck("its server session is gone".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_judged_by_state_and_wait() {
        assert_eq!(judge(Some("active"), None, None), Liveness::Working);
        assert_eq!(
            judge(Some("active"), Some("Lock"), Some("relation")),
            Liveness::Working
        );
        assert_eq!(
            judge(Some("active"), Some("Timeout"), Some("PgSleep")),
            Liveness::Working
        );
        assert!(matches!(
            judge(Some("active"), Some("Client"), Some("ClientWrite")),
            Liveness::Stuck(w) if w.contains("ClientWrite")
        ));
        assert!(matches!(
            judge(Some("idle in transaction"), None, None),
            Liveness::Stuck(_)
        ));
        assert!(matches!(judge(None, None, None), Liveness::Stuck(_)));
    }
}
