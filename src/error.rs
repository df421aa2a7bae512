//! The top-level error, its messages and the process exit codes.

use std::fmt;

/// Which database an operation ran against. Every database error names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Source,
    Target,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// Exit codes, one per failure domain. Documented in README.md.
pub mod exit {
    pub const OK: u8 = 0;
    pub const INTERNAL: u8 = 1;
    pub const BAD_ARGUMENTS: u8 = 2;
    pub const INCOMPATIBLE: u8 = 3;
    pub const SOURCE: u8 = 4;
    pub const TARGET: u8 = 5;
    pub const TASKS_FAILED: u8 = 6;
    pub const VERIFY_MISMATCH: u8 = 7;
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is well-formed but a value is not usable.
    #[error("{0}")]
    InvalidArgument(String),

    #[error("cannot connect to the {side} database {addr}: {}", pg_text(.source))]
    Connect {
        side: Side,
        addr: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The server took the TCP connection but did not finish the start-up
    /// (TLS, authentication) in time: `connect_timeout`, per host.
    #[error("cannot connect to the {side} database {addr}: no answer within {} s ({why}). Is it the right host and port, and is the server up?", .timeout.as_secs())]
    ConnectTimeout {
        side: Side,
        addr: String,
        timeout: std::time::Duration,
        /// Where the limit came from, for the message.
        why: &'static str,
    },

    /// No answer for `--stall-timeout`, and a probe found the server not
    /// working on it (see db/watch.rs): the server or the network is stuck.
    /// Transient: the task is tried again.
    #[error("{side} database: {context}: no answer for {} s (--stall-timeout) and {why}", .timeout.as_secs())]
    Stalled {
        side: Side,
        context: String,
        timeout: std::time::Duration,
        why: String,
    },

    #[error("{side} database: {context}: {}", pg_text(.source))]
    Db {
        side: Side,
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// Source and target cannot be backfilled as they are (versions,
    /// missing hypertables, column mismatches, ...). Nothing was changed.
    #[error("{0}")]
    Incompatible(String),

    /// A precondition on one side is not met (extension missing, queue not staged...).
    #[error("{side} database: {message}")]
    Precondition { side: Side, message: String },

    #[error("{failed} task(s) failed; see the messages above or run `hyperfill status`. Fix the cause and run `copy` again: failed tasks are retried")]
    TasksFailed {
        failed: u64,
        /// The copy's report, for `--output json`.
        report: serde_json::Value,
    },

    #[error(
        "verification found {mismatched} task(s) whose contents differ between source and target; \
         `hyperfill copy --requeue-mismatched` copies them again"
    )]
    VerifyMismatch {
        mismatched: u64,
        /// The verify report with every mismatch, for `--output json`.
        report: serde_json::Value,
    },

    /// Stopped by a signal. `abandoned`: a second signal dropped the
    /// in-flight work (its transactions rolled back).
    #[error("{}", if *.abandoned {
        "interrupted: the in-flight chunk(s) were abandoned and their transactions rolled back; the queue is consistent: run the same command again to carry on"
    } else {
        "interrupted; the queue is consistent: run the same command again to carry on"
    })]
    Interrupted { abandoned: bool },

    /// `check` found problems that must be fixed before a backfill.
    #[error("the preflight check found {problems} problem(s) to fix before staging (see above)")]
    CheckFailed {
        problems: usize,
        /// The full report, for `--output json`.
        report: serde_json::Value,
    },

    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn db(side: Side, context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Error::Db {
            side,
            context: context.into(),
            source,
        }
    }

    /// The command's report when it ran to the end but failed on what it
    /// found (`check` findings, failed tasks, mismatches): the `result` of
    /// `--output json`.
    pub fn report(&self) -> Option<&serde_json::Value> {
        match self {
            Error::CheckFailed { report, .. }
            | Error::TasksFailed { report, .. }
            | Error::VerifyMismatch { report, .. } => Some(report),
            _ => None,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::InvalidArgument(_) => exit::BAD_ARGUMENTS,
            Error::Incompatible(_) | Error::CheckFailed { .. } => exit::INCOMPATIBLE,
            Error::Connect { side, .. }
            | Error::ConnectTimeout { side, .. }
            | Error::Stalled { side, .. }
            | Error::Db { side, .. }
            | Error::Precondition { side, .. } => match side {
                Side::Source => exit::SOURCE,
                Side::Target => exit::TARGET,
            },
            Error::TasksFailed { .. } => exit::TASKS_FAILED,
            Error::VerifyMismatch { .. } => exit::VERIFY_MISMATCH,
            Error::Interrupted { .. } => exit::INTERRUPTED,
            Error::Internal(_) => exit::INTERNAL,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A PostgreSQL error as one readable text: message, SQLSTATE, detail, hint.
/// Connection-level errors fall back to their display form.
pub fn pg_text(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            s.push_str("\n  DETAIL: ");
            s.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            s.push_str("\n  HINT: ");
            s.push_str(hint);
        }
        if is_recovery_conflict(db.code().code(), db.message()) {
            s.push_str("\n  ");
            s.push_str(RECOVERY_CONFLICT_HELP);
        }
        return s;
    }
    // tokio-postgres nests the I/O cause; show the innermost useful text.
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

/// What hyperfill adds to a recovery conflict: a hot-standby source cancelled
/// a read (or ended the session of an idle one) because it held back the
/// replay of the primary's changes for longer than the standby allows.
pub const RECOVERY_CONFLICT_HELP: &str = "The source is a hot standby: it cancelled this read \
     to go on replaying the primary's changes (a recovery conflict; hyperfill retries such a \
     chunk up to --max-attempts times). To avoid it, \
     set hot_standby_feedback = on on the standby, or raise its max_standby_streaming_delay \
     above the time the largest chunk takes to copy (`hyperfill check` shows both).";

/// Whether a server error is a hot standby's recovery conflict: SQLSTATE
/// 40001, "canceling statement due to conflict with recovery" (a query ran
/// too long) or "terminating connection due to conflict with recovery" (an
/// idle transaction held a snapshot, or a lock conflict). The same SQLSTATE
/// as a serialization failure, so it is retried as one. A dropped database
/// (57P04, same wording) is not: that conflict does not go away.
pub fn is_recovery_conflict(sqlstate: &str, message: &str) -> bool {
    sqlstate == "40001" && message.contains("due to conflict with recovery")
}

/// Whether a failure may go away by itself if the same work is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Tried again (with backoff) up to `--max-attempts` times in a run.
    Transient,
    /// Fails the task at once; the next `copy` run tries it once more.
    Permanent,
}

/// Classify a SQLSTATE. Transient: the connection, the transaction's luck
/// or the server's state, which change by themselves; everything else
/// (constraints, data, privileges, missing objects, ...) fails the same way
/// every time until someone fixes it, so it is permanent. Unknown codes are
/// permanent: a retry loop hides the message the user needs.
pub fn classify_sqlstate(code: &str) -> Kind {
    let transient = match code {
        // serialization failure, deadlock, statement completion unknown
        "40001" | "40P01" | "40003" => true,
        // admin shutdown, crash shutdown, cannot connect now,
        // idle_session_timeout (not 57P04, database dropped)
        "57P01" | "57P02" | "57P03" | "57P05" => true,
        // query_canceled: a statement_timeout of the server or role (hyperfill
        // sets its own sessions' to 0, so this is a DBA's pg_cancel_backend
        // or a pooler's limit): worth another try, bounded by --max-attempts.
        "57014" => true,
        // lock_not_available: lock_timeout or NOWAIT
        "55P03" => true,
        // idle_in_transaction_session_timeout (the connection is gone)
        "25P03" => true,
        // too many connections, out of memory, configuration limit
        "53300" | "53200" | "53400" => true,
        // the server's own I/O trouble
        "58000" | "58030" => true,
        // hot standby conflicts ask for exactly this
        "40P02" => true,
        // a prepared statement gone: a transaction-mode pooler in front of
        // the source (db/mod.rs then stops preparing source statements)
        "26000" => true,
        _ => code.starts_with("08"),
    };
    if transient {
        Kind::Transient
    } else {
        Kind::Permanent
    }
}

/// Classify a database error. Without a SQLSTATE it is an I/O error or a
/// closed connection: transient.
pub fn classify(err: &tokio_postgres::Error) -> Kind {
    match err.code() {
        Some(code) => classify_sqlstate(code.code()),
        None => Kind::Transient,
    }
}

/// Whether a database error is worth another try (see [`classify`]).
pub fn is_retryable(err: &tokio_postgres::Error) -> bool {
    classify(err) == Kind::Transient
}

impl Error {
    /// Whether this failure is worth another try on fresh connections.
    pub fn kind(&self) -> Kind {
        match self {
            // Authentication failures and missing databases will not heal;
            // a refused or timed-out connection may.
            Error::Connect { source, .. } => match source.code().map(|c| c.code()) {
                Some("28P01" | "28000" | "3D000") => Kind::Permanent,
                Some(c) => classify_sqlstate(c),
                None => Kind::Transient,
            },
            Error::ConnectTimeout { .. } | Error::Stalled { .. } => Kind::Transient,
            Error::Db { source, .. } => classify(source),
            _ => Kind::Permanent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_conflicts_are_told_apart_from_serialization_failures() {
        // What PostgreSQL 15..18 send (postgres.c, recovery conflict handling).
        assert!(is_recovery_conflict(
            "40001",
            "canceling statement due to conflict with recovery"
        ));
        assert!(is_recovery_conflict(
            "40001",
            "terminating connection due to conflict with recovery"
        ));
        assert!(!is_recovery_conflict(
            "40001",
            "could not serialize access due to concurrent update"
        ));
        assert!(!is_recovery_conflict(
            "57P04",
            "terminating connection due to conflict with recovery"
        ));
        for setting in ["hot_standby_feedback", "max_standby_streaming_delay"] {
            assert!(RECOVERY_CONFLICT_HELP.contains(setting));
        }
    }

    #[test]
    fn sqlstates_are_classified() {
        use Kind::*;
        let table = [
            // connection exceptions, the whole class
            ("08000", Transient),
            ("08006", Transient),
            ("08P01", Transient),
            ("40001", Transient), // serialization_failure
            ("40P01", Transient), // deadlock_detected
            ("57P01", Transient), // admin_shutdown
            ("57P02", Transient), // crash_shutdown
            ("57P03", Transient), // cannot_connect_now
            ("55P03", Transient), // lock_not_available
            ("57014", Transient), // query_canceled
            ("25P03", Transient), // idle_in_transaction_session_timeout
            ("53300", Transient), // too_many_connections
            ("23514", Permanent), // check_violation
            ("23505", Permanent), // unique_violation
            ("23502", Permanent), // not_null_violation
            ("22P02", Permanent), // invalid_text_representation
            ("22003", Permanent), // numeric_value_out_of_range
            ("42501", Permanent), // insufficient_privilege
            ("42P01", Permanent), // undefined_table
            ("42703", Permanent), // undefined_column
            ("53100", Permanent), // disk_full
            ("57P04", Permanent), // database_dropped
            ("XX000", Permanent), // internal_error
            ("TS001", Permanent), // TimescaleDB's own
        ];
        for (code, kind) in table {
            assert_eq!(classify_sqlstate(code), kind, "{code}");
        }
    }

    #[test]
    fn our_own_errors_are_classified() {
        let d = std::time::Duration::from_secs(3);
        assert_eq!(
            Error::Stalled {
                side: Side::Source,
                context: "x".into(),
                timeout: d,
                why: "y".into()
            }
            .kind(),
            Kind::Transient
        );
        assert_eq!(
            Error::ConnectTimeout {
                side: Side::Target,
                addr: "a".into(),
                timeout: d,
                why: "connect_timeout"
            }
            .kind(),
            Kind::Transient
        );
        assert_eq!(Error::Incompatible("x".into()).kind(), Kind::Permanent);
        assert_eq!(Error::Internal("x".into()).kind(), Kind::Permanent);
    }

    #[test]
    fn exit_codes_differ_per_domain() {
        assert_eq!(Error::InvalidArgument("x".into()).exit_code(), 2);
        assert_eq!(Error::Incompatible("x".into()).exit_code(), 3);
        assert_eq!(
            Error::Precondition {
                side: Side::Source,
                message: "x".into()
            }
            .exit_code(),
            4
        );
        assert_eq!(
            Error::Precondition {
                side: Side::Target,
                message: "x".into()
            }
            .exit_code(),
            5
        );
        let report = serde_json::Value::Null;
        assert_eq!(
            Error::TasksFailed {
                failed: 1,
                report: report.clone()
            }
            .exit_code(),
            6
        );
        assert_eq!(
            Error::VerifyMismatch {
                mismatched: 1,
                report
            }
            .exit_code(),
            7
        );
        assert_eq!(Error::Interrupted { abandoned: true }.exit_code(), 130);
    }
}
