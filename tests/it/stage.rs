//! `stage`: which chunks become tasks, with which row filter.

use crate::harness::Dbs;

/// A timestamptz hypertable with a hash dimension, 1-day chunks, 2024-01-01..10.
pub const METRICS: &str = "
CREATE TABLE metrics (time timestamptz NOT NULL, device int NOT NULL, v double precision);
SELECT create_hypertable('metrics', by_range('time', INTERVAL '1 day'));
SELECT add_dimension('metrics', by_hash('device', 2));
";

pub const METRICS_DATA: &str = "
INSERT INTO metrics
SELECT t, d, d * 1.5 + extract(epoch from t) / 1e6
FROM generate_series('2024-01-01 00:00+00'::timestamptz, '2024-01-10 23:50+00', '10 min') t,
     generate_series(1, 4) d;
";

#[tokio::test]
async fn stage_dry_run_lists_chunks_and_changes_nothing() {
    let Some(db) = Dbs::new("stage_dry_run").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    let chunks_before = db.target_chunk_count().await;

    let r = db
        .stage(&["--until", "2024-01-05 12:00+00", "--dry-run"])
        .await;
    r.assert_ok()
        .assert_contains("Would stage 10 chunk(s)")
        .assert_contains("where \"time\" < '2024-01-05 12:00:00+00'::timestamptz")
        .assert_contains("Nothing was changed");
    assert!(!db.queue_exists().await, "dry run created the queue");
    assert_eq!(
        db.target_chunk_count().await,
        chunks_before,
        "dry run created chunks"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn stage_twice_never_duplicates_and_creates_missing_target_chunks() {
    let Some(db) = Dbs::new("stage_twice").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    assert_eq!(db.target_chunk_count().await, 0);

    db.stage(&["--until", "2024-01-05 12:00+00"])
        .await
        .assert_ok()
        .assert_contains("Staged 10 chunk(s)");
    // 5 days x 2 hash partitions, the 5th day cut by the bound
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM __hyperfill.task").await,
        10
    );
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM __hyperfill.task WHERE upper_literal IS NOT NULL")
            .await,
        2
    );
    // With the community license, stage creates the missing target chunks
    // (create_chunk); the Apache build forbids create_chunk, so copy lets
    // TimescaleDB create them as the rows arrive.
    let licensed = db
        .tgt_i64("SELECT (current_setting('timescaledb.license') = 'timescale')::int::bigint")
        .await
        == 1;
    assert_eq!(db.target_chunk_count().await, if licensed { 10 } else { 0 });

    db.stage(&["--until", "2024-01-05 12:00+00"])
        .await
        .assert_ok()
        .assert_contains("Skipping 10 task(s)");
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM __hyperfill.task").await,
        10
    );
    db.copy(&[]).await.assert_ok();
    assert_eq!(
        db.target_chunk_count().await,
        10,
        "every source chunk has its target chunk"
    );
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM __hyperfill.task WHERE target_chunk_name IS NULL")
            .await,
        0,
        "the queue records each task's target chunk"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn stage_with_pg_dump_restored_target_reuses_its_empty_chunks() {
    let Some(db) = Dbs::new("stage_pg_dump").await else {
        return;
    };
    db.src.batch_execute(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    db.restore_schema_with_pg_dump().await.unwrap();
    let chunks = db.target_chunk_count().await;
    assert_eq!(chunks, 20, "pg_dump restores the empty chunks");
    db.stage(&["--until", "2024-01-11"])
        .await
        .assert_ok()
        .assert_contains("Staged 20 chunk(s)");
    assert_eq!(
        db.target_chunk_count().await,
        chunks,
        "no new chunk when the target has them"
    );
    db.copy(&[]).await.assert_ok();
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM metrics").await,
        db.src_i64("SELECT count(*) FROM metrics").await
    );
    db.verify(&[]).await.assert_ok().assert_contains("20 match");
    db.cleanup().await;
}

#[tokio::test]
async fn stage_filter_selects_by_table_and_by_schema_case_insensitively() {
    let Some(db) = Dbs::new("stage_filter").await else {
        return;
    };
    let schema = "
        CREATE SCHEMA a; CREATE SCHEMA b;
        CREATE TABLE a.temps (time timestamptz NOT NULL, v int);
        CREATE TABLE a.other (time timestamptz NOT NULL, v int);
        CREATE TABLE b.temps (time timestamptz NOT NULL, v int);
        SELECT create_hypertable('a.temps', by_range('time', INTERVAL '1 day'));
        SELECT create_hypertable('a.other', by_range('time', INTERVAL '1 day'));
        SELECT create_hypertable('b.temps', by_range('time', INTERVAL '1 day'));
    ";
    db.both(schema).await.unwrap();
    for t in ["a.temps", "a.other", "b.temps"] {
        db.src
            .batch_execute(&format!(
                "INSERT INTO {t} SELECT t, 1 FROM generate_series('2024-01-01'::timestamptz, '2024-01-03 23:00', '1 hour') t"
            ))
            .await
            .unwrap();
    }
    db.stage(&["--until", "2024-01-10", "--filter", "^A\\."])
        .await
        .assert_ok();
    let per = |ht: &'static str| {
        let db = &db;
        async move {
            db.tgt_i64(&format!(
                "SELECT count(*) FROM __hyperfill.task WHERE hypertable_schema || '.' || hypertable_name = '{ht}'"
            ))
            .await
        }
    };
    assert_eq!(
        (
            per("a.temps").await,
            per("a.other").await,
            per("b.temps").await
        ),
        (3, 3, 0)
    );

    db.stage(&["--until", "2024-01-10", "--filter", "^b\\.temps$"])
        .await
        .assert_ok();
    assert_eq!(per("b.temps").await, 3);
    db.copy(&["-p", "2"]).await.assert_ok();
    for t in ["a.temps", "a.other", "b.temps"] {
        assert_eq!(
            db.tgt_i64(&format!("SELECT count(*) FROM {t}")).await,
            72,
            "{t}"
        );
    }
    db.cleanup().await;
}

#[tokio::test]
async fn stage_restage_with_later_until_requeues_the_boundary_chunk() {
    let Some(db) = Dbs::new("stage_restage").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();

    db.stage(&["--until", "2024-01-05 12:00+00"])
        .await
        .assert_ok();
    db.copy(&[]).await.assert_ok();
    let below = |t: &'static str| {
        let db = &db;
        async move {
            let q = format!("SELECT count(*) FROM metrics WHERE time < '{t}'");
            (db.src_i64(&q).await, db.tgt_i64(&q).await)
        }
    };
    let (s, t) = below("2024-01-05 12:00+00").await;
    assert_eq!(s, t);

    let r = db.stage(&["--until", "2024-01-07 06:00+00"]).await;
    r.assert_ok()
        .assert_contains("re-queued 2 chunk(s) with a wider range");
    db.copy(&[]).await.assert_ok();
    let (s, t) = below("2024-01-07 06:00+00").await;
    assert_eq!(
        s, t,
        "rows between the old and the new --until must be copied"
    );
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM metrics").await,
        s,
        "nothing at or after the new T"
    );
    db.verify(&[]).await.assert_ok();
    db.cleanup().await;
}

#[tokio::test]
async fn stage_splits_a_huge_chunk_into_parts_that_copy_and_verify_exactly() {
    let Some(db) = Dbs::new("stage_split").await else {
        return;
    };
    db.both(
        "CREATE TABLE skew (time timestamptz NOT NULL, v int, pad text);
         SELECT create_hypertable('skew', by_range('time', INTERVAL '1 day'));",
    )
    .await
    .unwrap();
    // Ten ordinary days, then one day with 20 times the rows.
    db.src
        .batch_execute(
            "INSERT INTO skew SELECT t, 1, repeat('x', 100) FROM generate_series('2024-01-01'::timestamptz, '2024-01-10 23:59:59', '20 s') t;
             INSERT INTO skew SELECT t, 2, repeat('y', 100) FROM generate_series('2024-01-11'::timestamptz, '2024-01-11 23:59:59', '1 s') t;
             ANALYZE skew;",
        )
        .await
        .unwrap();
    // Rows already on the target in the huge chunk's range: replaced, not doubled.
    db.tgt
        .batch_execute("INSERT INTO skew VALUES ('2024-01-11 12:00:00+00', -1, 'stale')")
        .await
        .unwrap();
    db.stage(&["--until", "2024-02-01"]).await.assert_ok();
    let parts = db
        .tgt_i64("SELECT count(*) FROM __hyperfill.task WHERE part > 0")
        .await;
    assert!(
        parts >= 5,
        "the huge chunk should be split, got {parts} parts"
    );
    assert_eq!(
        db.tgt_i64("SELECT count(DISTINCT chunk_name) FROM __hyperfill.task WHERE part > 0")
            .await,
        1
    );
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM __hyperfill.task WHERE part = 0")
            .await,
        10
    );
    // Staging again adds nothing.
    db.stage(&["--until", "2024-02-01"]).await.assert_ok();
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM __hyperfill.task").await,
        10 + parts
    );

    db.copy(&["-p", "4"])
        .await
        .assert_ok()
        .assert_contains("(part ");
    let q = "SELECT count(*) FROM skew";
    assert_eq!(db.tgt_i64(q).await, db.src_i64(q).await);
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM skew WHERE v = -1").await,
        0
    );
    assert_eq!(
        db.tgt_i64("SELECT count(DISTINCT time) FROM skew").await,
        db.src_i64("SELECT count(DISTINCT time) FROM skew").await
    );
    db.verify(&[])
        .await
        .assert_ok()
        .assert_contains(&format!("{} match", 10 + parts));
    db.cleanup().await;
}

#[tokio::test]
async fn stage_upgrades_a_queue_created_by_an_earlier_version() {
    let Some(db) = Dbs::new("stage_migrate").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    db.stage(&["--until", "2024-01-03"]).await.assert_ok();
    // Turn the queue back into schema version 1, as an earlier hyperfill left it.
    db.tgt
        .batch_execute(
            "ALTER TABLE __hyperfill.task DROP CONSTRAINT task_chunk_part_key;
             ALTER TABLE __hyperfill.task DROP COLUMN part;
             ALTER TABLE __hyperfill.task DROP COLUMN batches_copied, DROP COLUMN verify_details;
             ALTER TABLE __hyperfill.task DROP COLUMN fallback, DROP COLUMN source_watermark;
             ALTER TABLE __hyperfill.task DROP COLUMN source_compressed_schema, DROP COLUMN source_compressed_name;
             DROP TABLE __hyperfill.source_hypertable, __hyperfill.cagg_refresh;
             ALTER TABLE __hyperfill.task ADD CONSTRAINT task_chunk_schema_chunk_name_key UNIQUE (chunk_schema, chunk_name);
             DELETE FROM __hyperfill.migration WHERE version > 1;",
        )
        .await
        .unwrap();
    db.stage(&["--until", "2024-01-05"]).await.assert_ok();
    assert_eq!(
        db.tgt_i64("SELECT max(version)::bigint FROM __hyperfill.migration")
            .await,
        5
    );
    assert_eq!(db.tgt_i64("SELECT count(*) FROM __hyperfill.task").await, 8);
    db.copy(&[]).await.assert_ok();
    db.verify(&[]).await.assert_ok().assert_contains("8 match");
    db.cleanup().await;
}
