//! Bad input: a clear message naming the object and the fix, a non-zero exit
//! code per failure domain, and no change to either database.

use crate::harness::{bin, Dbs};
use crate::stage::{METRICS, METRICS_DATA};

async fn with_metrics(name: &str) -> Option<Dbs> {
    let db = Dbs::new(name).await?;
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    Some(db)
}

async fn assert_nothing_changed(db: &Dbs) {
    assert!(!db.queue_exists().await, "the queue schema was created");
    assert_eq!(
        db.target_chunk_count().await,
        0,
        "target chunks were created"
    );
    assert_eq!(db.tgt_i64("SELECT count(*) FROM metrics").await, 0);
}

fn version_key(v: &str) -> Vec<u32> {
    v.split(['.', '-'])
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

#[tokio::test]
async fn stage_refuses_different_timescaledb_versions() {
    let Some(db) = with_metrics("err_versions").await else {
        return;
    };
    let source_version: String = db
        .src
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // A real mismatch needs a second TimescaleDB release installed on the
    // target server: use one when there is one.
    let installed: Vec<String> = db
        .tgt
        .query(
            "SELECT substring(f FROM '^timescaledb-([0-9.]+)\\.so$') FROM pg_ls_dir((SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR')) f
             WHERE f ~ '^timescaledb-[0-9.]+\\.so$'",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    let other = installed.into_iter().find(|v| *v != source_version);
    let Some(v) = other else {
        // Not a pass: the refusal itself needs a second release.
        crate::harness::skip(
            "stage_refuses_different_timescaledb_versions",
            &format!(
                "only TimescaleDB {source_version} is installed on the target server, so no \
                 database can run another release (the message is unit-tested in \
                 catalog::tests); checking instead that a target whose extension version has \
                 no library fails cleanly"
            ),
            "HYPERFILL_REQUIRE_VERSION_SWITCH",
        );
        db.tgt
            .batch_execute(
                "UPDATE pg_extension SET extversion = '2.18.0' WHERE extname = 'timescaledb'",
            )
            .await
            .unwrap();
        let r = db.stage(&["--until", "2024-01-05"]).await;
        r.assert_code(5)
            .assert_contains("target database")
            .assert_contains("timescaledb-2.18.0");
        // Every session on that database now fails: nothing can have changed.
        db.cleanup().await;
        return;
    };
    // A session that has loaded one release's library cannot load another's:
    // drop the extension in one fresh session and create the other release
    // in the next, before anything there touches TimescaleDB.
    db.tgt
        .batch_execute("DROP TABLE metrics; DROP EXTENSION timescaledb")
        .await
        .unwrap();
    let fresh = crate::harness::connect(&db.target_url).await.unwrap();
    if let Err(e) = fresh
        .batch_execute(&format!(
            "CREATE EXTENSION timescaledb VERSION '{v}';
             CREATE TABLE metrics (time timestamptz NOT NULL, device int NOT NULL, v double precision);
             SELECT create_hypertable('metrics', 'time');"
        ))
        .await
    {
        crate::harness::skip(
            "stage_refuses_different_timescaledb_versions",
            &format!("TimescaleDB {v} is installed but cannot be created here: {e}"),
            "HYPERFILL_REQUIRE_VERSION_SWITCH",
        );
        db.cleanup().await;
        return;
    }
    drop(fresh);
    let r = db.stage(&["--until", "2024-01-05"]).await;
    r.assert_code(3)
        .assert_contains("TimescaleDB versions differ")
        .assert_contains(&format!("source runs {source_version} (PostgreSQL "))
        .assert_contains(&format!("target runs {v} (PostgreSQL "));
    let source_is_newer = version_key(&source_version) > version_key(&v);
    if source_is_newer {
        r.assert_contains(&format!(
            "ALTER EXTENSION timescaledb UPDATE TO '{source_version}'"
        ));
    } else {
        // The target cannot be downgraded in place.
        r.assert_contains(&format!(
            "CREATE EXTENSION timescaledb VERSION '{source_version}'"
        ));
    }
    assert!(!db.queue_exists().await, "the queue schema was created");
    assert_eq!(
        db.target_chunk_count().await,
        0,
        "target chunks were created"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn stage_refuses_missing_hypertable_and_column_mismatch_listing_all() {
    let Some(db) = with_metrics("err_schema").await else {
        return;
    };
    db.src
        .batch_execute(
            "CREATE TABLE only_src (time timestamptz NOT NULL, v int);
             SELECT create_hypertable('only_src', by_range('time', INTERVAL '1 day'));
             INSERT INTO only_src VALUES ('2024-01-01', 1);",
        )
        .await
        .unwrap();
    db.tgt
        .batch_execute("ALTER TABLE metrics ALTER COLUMN v TYPE real")
        .await
        .unwrap();
    let r = db.stage(&["--until", "2024-01-05"]).await;
    r.assert_code(3)
        .assert_contains("\"public\".\"only_src\" does not exist on the target")
        .assert_contains("column \"v\" is double precision on the source but real on the target")
        .assert_contains("Nothing was changed");
    assert_nothing_changed(&db).await;
    db.cleanup().await;
}

#[tokio::test]
async fn stage_refuses_unparsable_bounds_naming_the_hypertable() {
    let Some(db) = with_metrics("err_bounds").await else {
        return;
    };
    db.both(
        "CREATE TABLE ints (t bigint NOT NULL, v int);
         SELECT create_hypertable('ints', by_range('t', 100));",
    )
    .await
    .unwrap();
    let r = db.stage(&["--until", "not a time"]).await;
    r.assert_code(2)
        .assert_contains("--until 'not a time' cannot be read as timestamptz")
        .assert_contains("\"public\".\"metrics\"");
    // A timestamp bound cannot be read as the bigint time of `ints`: refused, not skipped.
    let r = db.stage(&["--until", "2024-01-05"]).await;
    r.assert_code(2)
        .assert_contains("cannot be read as bigint")
        .assert_contains("\"public\".\"ints\"");
    let r = db
        .stage(&[
            "--until",
            "2024-01-05",
            "--from",
            "yesterdayish",
            "--filter",
            "metrics",
        ])
        .await;
    r.assert_code(2).assert_contains("--from 'yesterdayish'");
    let r = db
        .stage(&[
            "--until",
            "2024-01-05",
            "--from",
            "2024-01-06",
            "--filter",
            "metrics",
        ])
        .await;
    r.assert_code(2).assert_contains("is not before --until");
    let r = db
        .stage(&["--until", "2024-01-05", "--filter", "(unclosed"])
        .await;
    r.assert_code(2)
        .assert_contains("not a valid regular expression");
    assert_nothing_changed(&db).await;
    db.cleanup().await;
}

#[tokio::test]
async fn unreachable_servers_name_the_side_and_never_print_the_password() {
    let Some(db) = with_metrics("err_unreachable").await else {
        return;
    };
    let dead = "postgres://postgres:s3cretPW@127.0.0.1:1/nowhere";
    let r = db
        .run(&[
            "stage",
            "--source",
            dead,
            "--target",
            "{T}",
            "--until",
            "2024-01-05",
        ])
        .await;
    r.assert_code(4)
        .assert_contains("cannot connect to the source database postgres@127.0.0.1:1/nowhere");
    assert!(
        !r.all().contains("s3cretPW"),
        "password printed:\n{}",
        r.all()
    );
    let r = db.run(&["copy", "--source", "{S}", "--target", dead]).await;
    r.assert_code(5)
        .assert_contains("cannot connect to the target database");
    assert!(
        !r.all().contains("s3cretPW"),
        "password printed:\n{}",
        r.all()
    );
    let r = db
        .run(&[
            "stage",
            "--source",
            "host=127.0.0.1 port=notaport",
            "--target",
            "{T}",
            "--until",
            "x",
        ])
        .await;
    r.assert_code(2)
        .assert_contains("--source is not a valid connection string");
    assert_nothing_changed(&db).await;
    db.cleanup().await;
}

#[tokio::test]
async fn copy_and_verify_without_stage_say_to_stage_first_and_clean_is_idempotent() {
    let Some(db) = with_metrics("err_no_queue").await else {
        return;
    };
    db.copy(&[])
        .await
        .assert_code(5)
        .assert_contains("Run `hyperfill stage");
    db.verify(&[])
        .await
        .assert_code(5)
        .assert_contains("Run `hyperfill stage");
    db.run(&["clean", "--target", "{T}"])
        .await
        .assert_ok()
        .assert_contains("Nothing to clean");
    db.stage(&["--until", "2024-01-02"]).await.assert_ok();
    assert!(db.queue_exists().await);
    db.run(&["clean", "--target", "{T}"])
        .await
        .assert_ok()
        .assert_contains("Removed");
    assert!(!db.queue_exists().await);
    db.run(&["clean", "--target", "{T}"]).await.assert_ok();
    db.cleanup().await;
}

#[tokio::test]
async fn usage_errors_exit_2_without_a_backtrace() {
    let out = bin()
        .args(["stage", "--source", "x"])
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--until") && !err.contains("panicked"),
        "{err}"
    );
    let out = bin()
        .args(["copy", "--source", "x", "--target", "y", "-p", "0"])
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn stage_with_a_filter_matching_nothing_is_an_error() {
    let Some(db) = with_metrics("err_filter_none").await else {
        return;
    };
    let r = db
        .stage(&["--until", "2024-01-05", "--filter", "^public\\.metrcs$"])
        .await;
    r.assert_code(2)
        .assert_contains("matches no hypertable or continuous aggregate");
    assert_nothing_changed(&db).await;
    db.cleanup().await;
}
