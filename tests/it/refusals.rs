//! Refused inputs change nothing: `stage` validates everything before it
//! creates the queue schema or a single target chunk, and says what to fix.

use crate::harness::Dbs;

const MM: &str = "
CREATE TABLE mm (time timestamptz NOT NULL, device int NOT NULL, v float8);
SELECT create_hypertable('mm', by_range('time', INTERVAL '1 day'));
INSERT INTO mm SELECT t, 1, 1 FROM generate_series('2024-01-01'::timestamptz, '2024-01-04 23:00', '1 hour') t;
";

#[tokio::test]
async fn stage_refuses_a_target_table_that_is_not_a_hypertable_and_creates_nothing() {
    let Some(db) = Dbs::new("refuse_not_ht").await else {
        return;
    };
    db.src.batch_execute(MM).await.unwrap();
    db.tgt
        .batch_execute("CREATE TABLE mm (time timestamptz NOT NULL, device int NOT NULL, v float8)")
        .await
        .unwrap();
    let r = db.stage(&["--until", "2024-01-05"]).await;
    r.assert_code(3)
        .assert_contains("\"public\".\"mm\" exists on the target but is not a hypertable")
        .assert_contains("create_hypertable('\"public\".\"mm\"', by_range('time'")
        .assert_contains("Nothing was changed");
    assert!(!r.all().contains("TS001"), "{}", r.all());
    assert!(!db.queue_exists().await, "the queue schema was created");
    db.cleanup().await;
}

#[tokio::test]
async fn stage_refuses_a_source_role_that_cannot_read_the_hypertables() {
    let Some(db) = Dbs::new("refuse_no_select").await else {
        return;
    };
    db.both(
        "CREATE TABLE mm (time timestamptz NOT NULL, device int NOT NULL, v float8);
         SELECT create_hypertable('mm', by_range('time', INTERVAL '1 day'));",
    )
    .await
    .unwrap();
    db.src
        .batch_execute(
            "INSERT INTO mm SELECT t, 1, 1 FROM generate_series('2024-01-01'::timestamptz, '2024-01-04 23:00', '1 hour') t;
             DO $$ BEGIN CREATE ROLE hf_no_select LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
        )
        .await
        .unwrap();
    let reader = db.source_url.replacen("postgres@", "hf_no_select@", 1);
    let r = db
        .run(&[
            "stage",
            "--source",
            &reader,
            "--target",
            "{T}",
            "--until",
            "2024-01-05",
        ])
        .await;
    r.assert_code(4)
        .assert_contains("the source role lacks the SELECT privilege")
        .assert_contains("\"public\".\"mm\"")
        .assert_contains("GRANT SELECT ON \"public\".\"mm\" TO <role>")
        .assert_contains("Nothing was changed");
    assert!(!db.queue_exists().await, "the queue schema was created");
    db.cleanup().await;
}

#[tokio::test]
async fn stage_refuses_target_chunks_of_another_shape_before_creating_anything() {
    let Some(db) = Dbs::licensed("refuse_shape").await else {
        return;
    };
    db.src.batch_execute(MM).await.unwrap();
    // The target partitions time in 2-day chunks and already has one.
    db.tgt
        .batch_execute(
            "CREATE TABLE mm (time timestamptz NOT NULL, device int NOT NULL, v float8);
             SELECT create_hypertable('mm', by_range('time', INTERVAL '2 days'));
             INSERT INTO mm VALUES ('2024-01-03 12:00+00', 1, 1);",
        )
        .await
        .unwrap();
    let before = db.target_chunk_count().await;
    let r = db.stage(&["--until", "2024-01-05"]).await;
    r.assert_code(3)
        .assert_contains("partitions time (or space) differently")
        .assert_contains("Nothing was changed");
    assert!(!db.queue_exists().await, "the queue schema was created");
    assert_eq!(db.target_chunk_count().await, before, "chunks were created");
    db.cleanup().await;
}

#[tokio::test]
async fn stage_refuses_a_target_role_that_does_not_own_a_hypertable_with_compressed_chunks() {
    let Some(db) = Dbs::licensed("refuse_not_owner").await else {
        return;
    };
    let schema = "CREATE TABLE mm (time timestamptz NOT NULL, device int NOT NULL, v float8);
         SELECT create_hypertable('mm', by_range('time', INTERVAL '1 day'));
         ALTER TABLE mm SET (timescaledb.compress, timescaledb.compress_segmentby = 'device',
                             timescaledb.compress_orderby = 'time DESC');";
    db.both(schema).await.unwrap();
    db.src
        .batch_execute(
            "INSERT INTO mm SELECT t, 1, 1 FROM generate_series('2024-01-01'::timestamptz, '2024-01-04 23:00', '1 hour') t;
             SELECT compress_chunk(c) FROM show_chunks('mm', older_than => '2024-01-03'::timestamptz) c;",
        )
        .await
        .unwrap();
    // A role with every table privilege on the target, but not the owner.
    db.tgt
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE hf_not_owner LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT CREATE ON DATABASE \"hf_{}_t\" TO hf_not_owner;
             GRANT USAGE, CREATE ON SCHEMA public TO hf_not_owner;
             GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON mm TO hf_not_owner;",
            db.name
        ))
        .await
        .unwrap();
    let writer = db.target_url.replacen("postgres@", "hf_not_owner@", 1);
    let r = db
        .run(&[
            "stage",
            "--source",
            "{S}",
            "--target",
            &writer,
            "--until",
            "2024-01-05",
        ])
        .await;
    r.assert_code(5)
        .assert_contains("the target role does not own \"public\".\"mm\"")
        .assert_contains("GRANT <owner role> TO <role>")
        .assert_contains("Nothing was changed");
    assert!(!db.queue_exists().await, "the queue schema was created");
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM show_chunks('mm')").await,
        0,
        "target chunks were created"
    );
    db.cleanup().await;
}

/// No compress_orderby given (the common case): on 2.19 and later the
/// source's chunks carry the order TimescaleDB chose when it compressed
/// them, and the target hypertable (restored from the schema) has none.
/// check and stage name the difference and its fix; after the fix the
/// chunks copy compressed and equal.
#[tokio::test]
async fn default_compression_order_is_named_by_check_and_copies_after_the_fix() {
    let Some(db) = Dbs::licensed("default_order").await else {
        return;
    };
    db.both(
        "CREATE TABLE dm (time timestamptz NOT NULL, device int NOT NULL, v float8);
         SELECT create_hypertable('dm', by_range('time', INTERVAL '1 day'));
         ALTER TABLE dm SET (timescaledb.compress, timescaledb.compress_segmentby = 'device');",
    )
    .await
    .unwrap();
    db.src
        .batch_execute(
            "INSERT INTO dm SELECT t, d, d + extract(epoch from t) / 1e9
             FROM generate_series('2024-01-01'::timestamptz, '2024-01-04 23:00', '10 min') t, generate_series(1, 3) d;
             SELECT compress_chunk(c) FROM show_chunks('dm', older_than => '2024-01-03'::timestamptz) c;",
        )
        .await
        .unwrap();
    let check = db
        .run(&["check", "--source", "{S}", "--target", "{T}"])
        .await;
    if check.code == 3 {
        check
            .assert_contains("[compression-settings]")
            .assert_contains("got its order from TimescaleDB's default")
            .assert_contains("ALTER TABLE \"public\".\"dm\" SET (timescaledb.compress");
        let refused = db.stage(&["--until", "2024-01-05"]).await;
        refused
            .assert_code(3)
            .assert_contains("Nothing was changed");
        assert!(!db.queue_exists().await, "the queue schema was created");
        // The fix as named: the source chunk's settings on the target.
        let line = refused
            .all()
            .lines()
            .find_map(|l| {
                l.split("Fix: on the target, ")
                    .nth(1)
                    .map(|f| f.trim().to_string())
            })
            .expect("the fix");
        db.tgt.batch_execute(&line).await.unwrap();
        db.run(&["check", "--source", "{S}", "--target", "{T}"])
            .await
            .assert_ok();
    } else {
        check.assert_ok();
    }
    db.stage(&["--until", "2024-01-05"]).await.assert_ok();
    db.copy(&[]).await.assert_ok();
    db.verify(&[])
        .await
        .assert_ok()
        .assert_contains("0 mismatch");
    let compressed = "SELECT count(*) FROM timescaledb_information.chunks
                      WHERE hypertable_name = 'dm' AND is_compressed";
    assert_eq!(db.src_i64(compressed).await, 2);
    assert_eq!(db.tgt_i64(compressed).await, 2, "compression status copied");
    let rows = "SELECT count(*) FROM dm";
    assert_eq!(db.tgt_i64(rows).await, db.src_i64(rows).await);
    db.cleanup().await;
}
