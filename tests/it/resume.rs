//! Interruptions and concurrency: kill -9, ctrl-c, two copy processes at once.
//! After each, no row is lost or duplicated.

use std::time::Duration;

use crate::harness::spawned::{copy_command, Started};
use crate::harness::Dbs;

const BIG: &str = "
CREATE TABLE readings (time timestamptz NOT NULL, device int NOT NULL, v float8, note text);
SELECT create_hypertable('readings', by_range('time', INTERVAL '1 day'));
";

const BIG_DATA: &str = "
INSERT INTO readings
SELECT t, d, random(), repeat('x', 40)
FROM generate_series('2024-01-01'::timestamptz, '2024-01-30 23:59', '10 s') t,
     generate_series(1, 2) d;
";

async fn big(name: &str) -> Option<Dbs> {
    let db = Dbs::new(name).await?;
    db.both(BIG).await.unwrap();
    db.src.batch_execute(BIG_DATA).await.unwrap();
    db.stage(&["--until", "2024-02-01"])
        .await
        .assert_ok()
        .assert_contains("Staged 30 chunk(s)");
    Some(db)
}

/// Start `copy` and return the child once it has printed its first copied chunk.
async fn copy_until_first_chunk(db: &Dbs) -> tokio::process::Child {
    Started::first_chunk(copy_command(db, "1"), 120)
        .await
        .drain()
}

async fn assert_target_equals_source(db: &Dbs) {
    let q = "SELECT count(*) FROM readings";
    let distinct = "SELECT count(DISTINCT (time, device)) FROM readings";
    let src = db.src_i64(q).await;
    assert_eq!(db.tgt_i64(q).await, src, "row count");
    assert_eq!(db.tgt_i64(distinct).await, src, "duplicated rows");
}

/// The target holds exactly the rows of the tasks marked done: a killed
/// chunk copy left nothing behind.
async fn assert_target_matches_done_tasks(db: &Dbs) {
    let done_rows = db
        .tgt_i64("SELECT coalesce(sum(rows_copied), 0)::bigint FROM __hyperfill.task WHERE state = 'done'")
        .await;
    assert_eq!(db.tgt_i64("SELECT count(*) FROM readings").await, done_rows);
}

#[tokio::test]
async fn copy_killed_with_sigkill_then_rerun_loses_and_duplicates_nothing() {
    let Some(db) = big("resume_sigkill").await else {
        return;
    };
    let mut child = copy_until_first_chunk(&db).await;
    child.start_kill().expect("SIGKILL");
    let status = child.wait().await.expect("wait");
    assert!(!status.success());
    db.wait_for_no_hyperfill_sessions().await;

    let done = db
        .tgt_i64("SELECT count(*) FROM __hyperfill.task WHERE state = 'done'")
        .await;
    assert!(
        (1..30).contains(&done),
        "the kill must land mid-run; {done} of 30 tasks were done"
    );
    assert_target_matches_done_tasks(&db).await;

    db.copy(&["-p", "3"]).await.assert_ok();
    assert_eq!(db.queue_states().await, "done:30");
    assert_target_equals_source(&db).await;
    db.verify(&[]).await.assert_ok().assert_contains("30 match");
    db.cleanup().await;
}

#[cfg(unix)]
#[tokio::test]
async fn copy_interrupted_with_ctrl_c_finishes_in_flight_chunk_and_exits_130() {
    let Some(db) = big("resume_ctrl_c").await else {
        return;
    };
    let child = copy_until_first_chunk(&db).await;
    let pid = child.id().expect("pid");
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("copy did not stop after ctrl-c")
        .expect("wait");
    assert_eq!(
        out.status.code(),
        Some(130),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Stopping"));
    db.wait_for_no_hyperfill_sessions().await;
    assert_target_matches_done_tasks(&db).await;
    let pending = db
        .tgt_i64("SELECT count(*) FROM __hyperfill.task WHERE state = 'pending'")
        .await;
    assert!(pending > 0, "ctrl-c must stop the run early");

    db.copy(&[]).await.assert_ok();
    assert_target_equals_source(&db).await;
    db.cleanup().await;
}

#[tokio::test]
async fn two_copy_processes_share_the_queue_and_copy_each_chunk_once() {
    let Some(db) = big("resume_two_processes").await else {
        return;
    };
    let (a, b) = tokio::join!(db.copy(&["-p", "2"]), db.copy(&["-p", "2"]));
    a.assert_ok();
    b.assert_ok();
    let copied = |s: &str| s.lines().filter(|l| l.contains("Copied chunk")).count();
    let (ca, cb) = (copied(&a.stdout), copied(&b.stdout));
    assert_eq!(
        ca + cb,
        30,
        "each chunk copied exactly once (a={ca}, b={cb})"
    );
    assert_eq!(db.queue_states().await, "done:30");
    assert_eq!(
        db.tgt_i64("SELECT max(attempts)::bigint FROM __hyperfill.task")
            .await,
        1
    );
    assert_target_equals_source(&db).await;
    db.cleanup().await;
}
