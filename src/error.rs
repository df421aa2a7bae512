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
        assert_eq!(Error::Interrupted.exit_code(), 130);
    }
}
