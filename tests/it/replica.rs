//! A hot-standby replica as the source: stage, copy and verify read from a
//! streaming replica (made with `pg_basebackup -R`, see
//! harness/replica.rs), `--snapshot` exported on it, `check`'s report of
//! its lag and settings, and recovery conflicts retried and explained.

use std::time::{Duration, Instant};

use crate::harness::fingerprint;
use crate::harness::replica::ReplicaPair;
use crate::harness::{self, Dbs, Run};
use crate::stage::{METRICS, METRICS_DATA};

/// `hyperfill <command> --source <replica> --target <target> <extra>`.
async fn run(db: &Dbs, command: &str, source: &str, extra: &[&str]) -> Run {
    let mut a = vec![command, "--source", source, "--target", "{T}"];
    a.extend_from_slice(extra);
    db.run(&a).await
}

/// Poll `sql` (one boolean) until it is true, or fail after `secs`.
async fn wait_for(
    c: &tokio_postgres::Client,
    sql: &str,
    secs: u64,
    what: &str,
    pair: &ReplicaPair,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let done: bool = c
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .get(0);
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s\n{}",
            pair.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A primary and its hot standby with database `hf`: `schema` run on the
/// primary and on the target, then `data` on the primary, replayed on the
/// standby. None (the test returns, the skip said) when no pair can start.
async fn replica_with(
    db: &Dbs,
    replica_conf: &[&str],
    schema: &str,
    data: &[&str],
) -> Option<(ReplicaPair, tokio_postgres::Client, tokio_postgres::Client)> {
    let pair = ReplicaPair::start(db, replica_conf).await?;
    let (primary, replica) = pair.create_db("hf").await.unwrap();
    primary.batch_execute(schema).await.unwrap();
    for sql in data {
        primary.batch_execute(sql).await.unwrap();
    }
    db.tgt.batch_execute(schema).await.unwrap();
    pair.catch_up().await.unwrap();
    Some((pair, primary, replica))
}

/// Recovery conflicts the replica has had in database `hf` (all kinds).
const CONFLICTS: &str =
    "SELECT confl_tablespace + confl_lock + confl_snapshot + confl_bufferpin + confl_deadlock \
     FROM pg_stat_database_conflicts WHERE datname = 'hf'";

#[tokio::test]
async fn replica_as_source_stage_copy_verify_and_check_report_the_standby() {
    let Some(db) = Dbs::new("replica_source").await else {
        return;
    };
    let Some((pair, primary, replica)) = replica_with(&db, &[], METRICS, &[METRICS_DATA]).await
    else {
        db.cleanup().await;
        return;
    };
    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "the replica is not a hot standby");
    let src = pair.replica_url("hf");

    // check: where the standby stands, and the settings that let it cancel
    // long reads (PostgreSQL's defaults: no feedback, 30 s).
    run(&db, "check", &src, &[])
        .await
        .assert_ok()
        .assert_contains("[standby-lag] source: the source is a hot standby (read replica): the last transaction it replayed committed on the primary at ")
        .assert_contains("not yet replayed). It holds every row the primary committed before that time")
        .assert_contains("WARNING [recovery-conflicts] source: hot_standby_feedback = off and max_standby_streaming_delay = 30s")
        .assert_contains("ALTER SYSTEM SET hot_standby_feedback = on");
    let r = run(&db, "check", &src, &["--output", "json"]).await;
    r.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("check's JSON");
    let st = &v["result"]["source_standby"];
    let replayed: String = replica
        .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(st["replayed_lsn"].as_str(), Some(replayed.as_str()), "{v}");
    assert_eq!(st["hot_standby_feedback"], false, "{v}");
    assert_eq!(st["max_standby_streaming_delay_ms"], 30_000, "{v}");
    assert!(
        st["seconds_since_last_replayed_commit"].as_f64().is_some(),
        "{v}"
    );
    // The primary itself is no standby: none of that.
    let r = run(&db, "check", &pair.primary_url("hf"), &["--output", "json"]).await;
    r.assert_ok();
    assert!(!r.stdout.contains("standby-lag"), "{}", r.stdout);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("check's JSON");
    assert!(v["result"]["source_standby"].is_null(), "{v}");

    // A --until after the standby's last replayed commit: stage warns that
    // the standby may not hold every row below it (a dry run: no change).
    let r = run(&db, "stage", &src, &["--until", "2999-01-01", "--dry-run"]).await;
    r.assert_ok()
        .assert_contains("Warning: source: the source is a hot standby, and the last transaction it replayed committed on the primary at ")
        .assert_contains("before --until 2999-01-01");
    // The same against the primary: no such warning.
    let r = run(
        &db,
        "stage",
        &pair.primary_url("hf"),
        &["--until", "2999-01-01", "--dry-run"],
    )
    .await;
    r.assert_ok();
    assert!(!r.all().contains("hot standby"), "{}", r.all());

    // stage, copy, verify, all reading from the replica (replayed well past
    // --until: no warning).
    let r = run(&db, "stage", &src, &["--until", "2024-01-20"]).await;
    r.assert_ok().assert_contains("Staged 20 chunk(s)");
    assert!(!r.all().contains("hot standby"), "{}", r.all());
    run(&db, "copy", &src, &[]).await.assert_ok();
    assert_eq!(db.queue_states().await, "done:20");
    run(&db, "verify", &src, &[])
        .await
        .assert_ok()
        .assert_contains("20 match");
    let on_target = fingerprint(&db.tgt, "metrics").await;
    assert_eq!(on_target.0, 1440 * 4, "rows on the target");
    assert_eq!(on_target, fingerprint(&primary, "metrics").await);
    drop((primary, replica));
    drop(pair);
    db.cleanup().await;
}

#[tokio::test]
async fn replica_snapshot_exported_on_the_replica_is_read_by_stage_and_copy() {
    let Some(db) = Dbs::new("replica_snapshot").await else {
        return;
    };
    let Some((pair, primary, replica)) = replica_with(&db, &[], METRICS, &[METRICS_DATA]).await
    else {
        db.cleanup().await;
        return;
    };
    // pg_export_snapshot() on the standby, its transaction kept open.
    let holder = harness::connect(&pair.replica_url("hf")).await.unwrap();
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let snapshot: String = holder
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .unwrap()
        .get(0);
    let as_of = fingerprint(&holder, "metrics").await;
    // Written on the primary after the snapshot, into an existing chunk and
    // a new one, and replayed on the replica before stage runs.
    primary
        .batch_execute(
            "INSERT INTO metrics VALUES ('2024-01-02 00:00:01+00', 1, 1), ('2024-01-12 00:00+00', 2, 2)",
        )
        .await
        .unwrap();
    pair.catch_up().await.unwrap();
    assert_eq!(
        fingerprint(&replica, "metrics").await.0,
        as_of.0 + 2,
        "the replica has not replayed the new rows"
    );
    let src = pair.replica_url("hf");
    run(
        &db,
        "stage",
        &src,
        &["--until", "2024-01-20", "--snapshot", &snapshot],
    )
    .await
    .assert_ok()
    .assert_contains("Staged 20 chunk(s)");
    run(&db, "copy", &src, &[]).await.assert_ok();
    assert_eq!(
        fingerprint(&db.tgt, "metrics").await,
        as_of,
        "the target does not hold the rows as of the snapshot"
    );
    run(&db, "verify", &src, &[])
        .await
        .assert_ok()
        .assert_contains("20 match");
    holder.batch_execute("COMMIT").await.unwrap();
    drop((primary, replica, holder));
    drop(pair);
    db.cleanup().await;
}

#[tokio::test]
async fn replica_compressed_chunks_are_copied_from_a_hot_standby() {
    use crate::compressed::{batch_count, statuses, COMPRESS, DATA, SCHEMA};
    let Some(db) = Dbs::licensed("replica_compressed").await else {
        return;
    };
    let Some((pair, primary, replica)) = replica_with(&db, &[], SCHEMA, &[DATA, COMPRESS]).await
    else {
        db.cleanup().await;
        return;
    };
    let src = pair.replica_url("hf");
    run(&db, "stage", &src, &["--until", "2024-01-10"])
        .await
        .assert_ok();
    run(&db, "copy", &src, &[]).await.assert_ok();
    run(&db, "verify", &src, &[]).await.assert_ok();
    assert_eq!(
        fingerprint(&replica, "cm").await,
        fingerprint(&db.tgt, "cm").await
    );
    let st = statuses(&replica).await;
    assert!(st.iter().any(|s| s & 1 == 1), "nothing compressed: {st:?}");
    assert_eq!(st, statuses(&db.tgt).await, "compression states differ");
    assert_eq!(batch_count(&replica).await, batch_count(&db.tgt).await);
    drop((primary, replica));
    drop(pair);
    db.cleanup().await;
}

/// One chunk of about 4 MB, so that a copy capped at 200 kB/s reads it for
/// several seconds; and a small table to vacuum on the primary meanwhile.
const BIG: &str = "
CREATE TABLE big (time timestamptz NOT NULL, device int NOT NULL, payload text);
SELECT create_hypertable('big', by_range('time', INTERVAL '30 days'));
";
const BIG_DATA: &str = "
INSERT INTO big SELECT '2024-01-01'::timestamptz + i * INTERVAL '30 s', i % 7, repeat(md5(i::text), 3)
FROM generate_series(1, 25000) i;
CREATE TABLE junk (i int);
INSERT INTO junk SELECT generate_series(1, 1000);
";

#[tokio::test]
async fn replica_recovery_conflicts_are_retried_and_explained() {
    let Some(db) = Dbs::new("replica_conflict").await else {
        return;
    };
    // A standby that cancels any read in the way of replay at once.
    let Some((pair, primary, replica)) = replica_with(
        &db,
        &[
            "hot_standby_feedback = off",
            "max_standby_streaming_delay = 0",
        ],
        BIG,
        &[BIG_DATA],
    )
    .await
    else {
        db.cleanup().await;
        return;
    };
    let src = pair.replica_url("hf");
    let stats = harness::connect(&pair.replica_url("postgres"))
        .await
        .unwrap();

    run(&db, "check", &src, &[])
        .await
        .assert_ok()
        .assert_contains("[recovery-conflicts] source: hot_standby_feedback = off and max_standby_streaming_delay = 0");
    run(&db, "stage", &src, &["--until", "2024-03-01"])
        .await
        .assert_ok()
        .assert_contains("Staged 1 chunk(s)");

    // A copy reads the chunk slowly from the replica; meanwhile the
    // primary deletes and vacuums rows that the copy's snapshot still
    // sees. Replaying that vacuum conflicts with the copy's snapshot, and
    // the standby cancels the COPY ("canceling statement due to conflict
    // with recovery", SQLSTATE 40001).
    let copy = {
        let args = [
            "copy",
            "--source",
            &src,
            "--target",
            &db.target_url,
            "--max-rate",
            "200kB",
        ];
        let child = harness::bin()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting hyperfill copy");
        tokio::spawn(tokio::time::timeout(
            Duration::from_secs(300),
            child.wait_with_output(),
        ))
    };
    wait_for(
        &stats,
        "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = 'hyperfill' \
         AND state = 'active' AND query LIKE 'COPY%')",
        60,
        "hyperfill's COPY on the replica",
        &pair,
    )
    .await;
    primary.batch_execute("DELETE FROM junk").await.unwrap();
    primary.batch_execute("VACUUM junk").await.unwrap();
    wait_for(
        &stats,
        &format!("SELECT ({CONFLICTS}) > 0"),
        60,
        "a recovery conflict on the replica",
        &pair,
    )
    .await;
    let out = copy
        .await
        .expect("the copy task")
        .expect("hyperfill copy did not finish in 300 s")
        .expect("hyperfill copy");
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // The standby cancels the read ("canceling statement") or, when the
    // session sits idle in its transaction at that moment, ends it
    // ("terminating connection"); both are SQLSTATE 40001 and retried.
    let all = r.all();
    assert!(
        ["canceling statement", "terminating connection"]
            .iter()
            .any(|how| all.contains(&format!(
                "{how} due to conflict with recovery (SQLSTATE 40001)"
            ))),
        "no recovery conflict in the output:\n{all}"
    );
    r.assert_ok()
        .assert_contains("Retrying chunk")
        .assert_contains("User query might have needed to see row versions that must be removed")
        .assert_contains("The source is a hot standby: it cancelled this read to go on replaying the primary's changes (a recovery conflict; hyperfill retries")
        .assert_contains("set hot_standby_feedback = on on the standby, or raise its max_standby_streaming_delay");
    assert_eq!(db.queue_states().await, "done:1");
    assert_eq!(
        fingerprint(&db.tgt, "big").await,
        fingerprint(&replica, "big").await
    );
    run(&db, "verify", &src, &[])
        .await
        .assert_ok()
        .assert_contains("1 match");

    // An idle transaction in the way of replay has its session ended
    // (FATAL, no request waiting for it): the next request on that
    // connection reports the server's reason, retryable, not a bare
    // "connection closed".
    use hyperfill::error::Side;
    let info = hyperfill::db::ConnInfo::parse(Side::Source, &src).expect("connection string");
    let conn = info.connect().await.expect("connecting to the replica");
    primary
        .batch_execute("INSERT INTO junk SELECT generate_series(1, 100)")
        .await
        .unwrap();
    pair.catch_up().await.unwrap();
    conn.batch(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT count(*) FROM junk",
        "reading",
    )
    .await
    .expect("a transaction on the replica");
    let before = harness::scalar(&stats, CONFLICTS).await;
    primary.batch_execute("DELETE FROM junk").await.unwrap();
    primary.batch_execute("VACUUM junk").await.unwrap();
    wait_for(
        &stats,
        &format!("SELECT ({CONFLICTS}) > {before}"),
        60,
        "a recovery conflict with the idle transaction",
        &pair,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = conn
        .batch("SELECT 1", "reading after the conflict")
        .await
        .expect_err("the standby ended the session");
    let text = err.to_string();
    assert!(
        text.contains("terminating connection due to conflict with recovery (SQLSTATE 40001)")
            && text.contains("hot_standby_feedback"),
        "{text}"
    );
    assert!(hyperfill::worker::retryable(&err), "not retryable: {text}");
    drop((primary, replica, stats));
    drop(pair);
    db.cleanup().await;
}
