//! Every embedded statement that reads TimescaleDB's catalog or sets its
//! settings, prepared against the running release on both servers (our
//! stand-in for compile-time query checking; see src/statements.rs).

use hyperfill::catalog::{Features, Version};
use hyperfill::statements::{for_release, Check};

use crate::harness::Dbs;

/// The statements of `features` that fail on `c`, with the server's error.
async fn failures(c: &tokio_postgres::Client, features: &Features) -> Vec<String> {
    let mut out = Vec::new();
    for (name, sql, check) in for_release(features) {
        let result = match check {
            Check::Prepare => c.prepare(sql).await.map(|_| ()),
            Check::RunAndRollBack => {
                c.batch_execute("BEGIN").await.unwrap();
                let r = c.batch_execute(sql).await;
                c.batch_execute("ROLLBACK").await.unwrap();
                r
            }
        };
        if let Err(e) = result {
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            out.push(format!("{name}: {msg}"));
        }
    }
    out
}

#[tokio::test]
async fn statements_every_embedded_statement_prepares_on_the_running_release() {
    let Some(db) = Dbs::new("statements").await else {
        return;
    };
    for (side, c) in [("source", &db.src), ("target", &db.tgt)] {
        let text: String = c
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let version = Version::parse(&text).expect("a TimescaleDB version");
        let features = Features::for_version(version);
        assert!(for_release(&features).len() >= 20);
        let failed = failures(c, &features).await;
        assert!(
            failed.is_empty(),
            "on the {side} (TimescaleDB {text}):\n  {}",
            failed.join("\n  ")
        );
        // The check can fail: the oldest catalog shape (chunk.dropped, gone
        // in 2.26) does not prepare on a newer release.
        if version >= Version(2, 26, 0) {
            let old = failures(c, &Features::for_version(Version(2, 16, 0))).await;
            assert!(
                old.iter()
                    .any(|f| f.contains("dropped") || f.contains("does not exist")),
                "2.16's statements prepared on {text}: {old:?}"
            );
        }
    }
    db.cleanup().await;
}
