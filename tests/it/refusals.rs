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
