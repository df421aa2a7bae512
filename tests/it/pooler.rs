//! The target behind PgBouncer, in transaction and in session pooling: stage,
//! copy and verify work as on a direct connection (issue 13). In transaction
//! mode every transaction may run in another server session, so nothing
//! hyperfill does may outlive a transaction: named prepared statements,
//! session settings, session advisory locks.

use crate::harness::pooler::PgBouncer;
use crate::harness::Dbs;

const SCHEMA: &str = "
CREATE TABLE pm (time timestamptz NOT NULL, device int NOT NULL, v float8, note text, span interval, raw bytea);
SELECT create_hypertable('pm', by_range('time', INTERVAL '1 day'));
";

const COMPRESSION: &str = "
ALTER TABLE pm SET (timescaledb.compress, timescaledb.compress_segmentby = 'device',
                    timescaledb.compress_orderby = 'time DESC');
";

/// Twelve days, three devices; values whose text form depends on session
/// settings (floats, intervals, bytea, timestamps).
const DATA: &str = "
INSERT INTO pm SELECT t, d, d / 3.0 + extract(epoch from t) / 1e9, 'n' || d,
                      make_interval(secs => d * 1.5), decode(md5(t::text), 'hex')
FROM generate_series('2024-03-01'::timestamptz, '2024-03-12 23:59', '10 min') t, generate_series(1, 3) d;
";

async fn fingerprint(c: &tokio_postgres::Client) -> (i64, String) {
    let row = c
        .query_one(
            "SELECT count(*), coalesce(md5(string_agg(r, ',' ORDER BY r)), '') FROM
             (SELECT (time, device, v::text, note, span, raw)::text AS r FROM pm) x",
            &[],
        )
        .await
        .expect("fingerprint");
    (row.get(0), row.get(1))
}

async fn through_pooler(name: &str, pool_mode: &str) {
    let Some(db_owned) = Dbs::new(name).await else {
        return;
    };
    let db = &db_owned;
    let Some(bouncer) = PgBouncer::start(name, &db.target_url, pool_mode) else {
        db_owned.cleanup().await;
        return;
    };
    let licensed = db
        .require_license_for("the compressed half of the chunks")
        .await;
    db.both(SCHEMA).await.expect("schema");
    if licensed {
        db.both(COMPRESSION).await.expect("compression settings");
    }
    db.src.batch_execute(DATA).await.expect("data");
    if licensed {
        // Half the chunks compressed, as in a real history.
        db.src
            .batch_execute(
                "SELECT compress_chunk(c) FROM show_chunks('pm', older_than => '2024-03-07'::timestamptz) c",
            )
            .await
            .expect("compress");
    }
    let pooled = bouncer.url(&format!("hf_{name}_t"));
    let args = |cmd: &'static str, extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = vec![cmd.into(), "--source".into(), db.source_url.clone()];
        a.extend(["--target".to_string(), pooled.clone()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| async move {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        db.run(&refs).await
    };

    run(args("check", &[])).await.assert_ok();
    run(args("stage", &["--until", "2024-03-13"]))
        .await
        .assert_ok()
        .assert_contains("Staged 12 chunk(s)");
    // Staged again through the pooler: the lock and the queue still agree.
    run(args("stage", &["--until", "2024-03-13"]))
        .await
        .assert_ok()
        .assert_contains("Skipping 12 task(s)");
    // More workers than the pool has server connections.
    let copied = run(args("copy", &["--parallelism", "4"])).await;
    assert_eq!(
        copied.code,
        0,
        "copy through {pool_mode} pooling failed:\n{}\npgbouncer log:\n{}",
        copied.all(),
        bouncer.log()
    );
    assert_eq!(db.queue_states().await, "done:12");
    assert_eq!(
        fingerprint(&db.src).await,
        fingerprint(&db.tgt).await,
        "rows differ after a copy through {pool_mode} pooling"
    );
    if licensed {
        let compressed = "SELECT count(*) FROM timescaledb_information.chunks
            WHERE hypertable_name = 'pm' AND is_compressed";
        assert_eq!(db.src_i64(compressed).await, 6);
        assert_eq!(db.tgt_i64(compressed).await, 6, "compression status copied");
    }
    run(args("verify", &["--parallelism", "4"]))
        .await
        .assert_ok();
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM __hyperfill.task WHERE verify_state = 'match'")
            .await,
        12
    );
    let status = db.run(&["status", "--target", &pooled]).await;
    status.assert_ok();
    db.run(&["clean", "--target", &pooled]).await.assert_ok();
    assert!(!db.queue_exists().await, "clean dropped the queue");
    drop(bouncer);
    db_owned.cleanup().await;
}

#[tokio::test]
async fn pooler_transaction_mode_target_stage_copy_verify() {
    through_pooler("pooler_txn", "transaction").await;
}

#[tokio::test]
async fn pooler_session_mode_target_stage_copy_verify() {
    through_pooler("pooler_session", "session").await;
}

/// Each chunk's COPY takes 3 s on the target, longer than --stall-timeout
/// 1 s and than the database's statement_timeout (1 s): the stuck-server probe must ask about the server process of the
/// transaction the COPY runs in, which a transaction-mode pooler may have
/// moved to another one than the connection started on, and find it working.
#[tokio::test]
async fn pooler_transaction_mode_long_copies_are_not_taken_for_stalls() {
    let name = "pooler_stall";
    let Some(db) = Dbs::new(name).await else {
        return;
    };
    let Some(bouncer) = PgBouncer::start(name, &db.target_url, "transaction") else {
        db.cleanup().await;
        return;
    };
    db.both(SCHEMA).await.expect("schema");
    db.src.batch_execute(DATA).await.expect("data");
    db.tgt
        .batch_execute(
            "CREATE FUNCTION slow(d int, t timestamptz) RETURNS bool LANGUAGE plpgsql AS $$
             BEGIN IF d = 1 AND extract(hour FROM t) = 12 AND extract(minute FROM t) = 0
                   THEN PERFORM pg_sleep(3); END IF; RETURN true; END $$;
             ALTER TABLE pm ADD CONSTRAINT slow CHECK (slow(device, time));",
        )
        .await
        .expect("a slow CHECK constraint");
    // A server time limit shorter than each COPY: PgBouncer refuses the
    // startup options that turn it off, so each transaction must do it.
    db.tgt
        .batch_execute(&format!(
            "ALTER DATABASE \"hf_{name}_t\" SET statement_timeout = '1s'"
        ))
        .await
        .expect("a database statement_timeout");
    let pooled = bouncer.url(&format!("hf_{name}_t"));
    let src = db.source_url.clone();
    db.run(&[
        "stage",
        "--source",
        &src,
        "--target",
        &pooled,
        "--until",
        "2024-03-05",
    ])
    .await
    .assert_ok()
    .assert_contains("Staged 4 chunk(s)");
    let r = db
        .run(&[
            "copy",
            "--source",
            &src,
            "--target",
            &pooled,
            "-p",
            "3",
            "--stall-timeout",
            "1",
        ])
        .await;
    assert_eq!(r.code, 0, "{}\npgbouncer log:\n{}", r.all(), bouncer.log());
    assert!(!r.all().contains("Retrying"), "{}", r.all());
    assert_eq!(db.queue_states().await, "done:4");
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM pm").await,
        db.src_i64("SELECT count(*) FROM pm WHERE time < '2024-03-05'")
            .await
    );
    drop(bouncer);
    db.cleanup().await;
}
