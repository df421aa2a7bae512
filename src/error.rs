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
    TasksFailed { failed: u64 },

    #[error(
        "verification found {mismatched} chunk(s) whose contents differ between source and target"
    )]
    VerifyMismatch { mismatched: u64 },

    #[error("interrupted; the queue is consistent: run the same command again to carry on")]
    Interrupted,

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

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::InvalidArgument(_) => exit::BAD_ARGUMENTS,
            Error::Incompatible(_) | Error::CheckFailed { .. } => exit::INCOMPATIBLE,
            Error::Connect { side, .. }
            | Error::Db { side, .. }
            | Error::Precondition { side, .. } => match side {
                Side::Source => exit::SOURCE,
                Side::Target => exit::TARGET,
            },
            Error::TasksFailed { .. } => exit::TASKS_FAILED,
            Error::VerifyMismatch { .. } => exit::VERIFY_MISMATCH,
            Error::Interrupted => exit::INTERRUPTED,
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

/// SQLSTATEs worth retrying: serialization failure, deadlock, the whole
/// connection-exception class 08, admin shutdown and crash shutdown.
pub fn is_retryable(err: &tokio_postgres::Error) -> bool {
    match err.code() {
        Some(code) => {
            let c = code.code();
            c == "40001"
                || c == "40P01"
                || c.starts_with("08")
                || c == "57P01"
                || c == "57P02"
                || c == "57P03"
        }
        // No SQLSTATE: an I/O error or a closed connection.
        None => err.is_closed() || err.as_db_error().is_none(),
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
        assert_eq!(Error::TasksFailed { failed: 1 }.exit_code(), 6);
        assert_eq!(Error::VerifyMismatch { mismatched: 1 }.exit_code(), 7);
        assert_eq!(Error::Interrupted.exit_code(), 130);
    }
}
