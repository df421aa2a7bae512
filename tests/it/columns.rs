//! Column kinds that COPY treats specially: generated columns (the target
//! computes them) and identity columns (their values are copied as they are).

use crate::harness::Dbs;

const SCHEMA: &str = "
CREATE TABLE g (
    time timestamptz NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY,
    serial_id bigserial,
    a int,
    b int GENERATED ALWAYS AS (a * 2) STORED,
    note text DEFAULT 'default'
);
SELECT create_hypertable('g', by_range('time', INTERVAL '1 day'));
";

const COMPRESSION: &str = "
ALTER TABLE g SET (timescaledb.compress, timescaledb.compress_orderby = 'time');
";

/// Days 1-2 compressed (day 1 partial), days 3-4 plain; --until cuts day 4.
const DATA: &str = "
INSERT INTO g (time, a, note)
SELECT t, (extract(epoch from t) / 60)::int % 1000, 'n' || (extract(hour from t))::int
FROM generate_series('2024-01-01'::timestamptz, '2024-01-04 23:59', '10 min') t;
";

const COMPRESS: &str = "
SELECT compress_chunk(c) FROM show_chunks('g', older_than => '2024-01-03'::timestamptz) c;
INSERT INTO g (time, a) VALUES ('2024-01-01 12:05+00', 7);
";

async fn fingerprint(c: &tokio_postgres::Client) -> (i64, String) {
    let row = c
        .query_one(
            "SELECT count(*), md5(string_agg((time, id, serial_id, a, b, note)::text, ',' ORDER BY time, id))
             FROM g WHERE time < '2024-01-04 12:00+00'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn run_generated(db: &Dbs, compressed: bool) {
    db.src.batch_execute(SCHEMA).await.unwrap();
    if compressed {
        db.src.batch_execute(COMPRESSION).await.unwrap();
    }
    db.src.batch_execute(DATA).await.unwrap();
    if compressed {
        db.src.batch_execute(COMPRESS).await.unwrap();
    }
    db.restore_schema_with_pg_dump().await.unwrap();
    db.stage(&["--until", "2024-01-04 12:00+00"])
        .await
        .assert_ok();
    db.copy(&[]).await.assert_ok().assert_contains("0 failed");
    assert_eq!(fingerprint(&db.src).await, fingerprint(&db.tgt).await);
    db.verify(&[])
        .await
        .assert_ok()
        .assert_contains("0 mismatch");
}

#[tokio::test]
async fn copy_generated_and_identity_columns_lets_the_target_compute_them() {
    let Some(db) = Dbs::new("gen_plain").await else {
        return;
    };
    run_generated(&db, false).await;
    db.cleanup().await;
}

#[tokio::test]
async fn copy_generated_columns_of_compressed_and_partial_chunks() {
    let Some(db) = Dbs::licensed("gen_compressed").await else {
        return;
    };
    run_generated(&db, true).await;
    db.cleanup().await;
}

#[tokio::test]
async fn verify_compares_generated_columns_computed_differently_on_the_target() {
    let Some(db) = Dbs::new("gen_differs").await else {
        return;
    };
    db.src.batch_execute(SCHEMA).await.unwrap();
    db.src.batch_execute(DATA).await.unwrap();
    db.restore_schema_with_pg_dump().await.unwrap();
    // The target computes b another way: copying succeeds (the target
    // computes it), and verify must notice the difference.
    db.tgt
        .batch_execute(
            "ALTER TABLE g DROP COLUMN b;
             ALTER TABLE g ADD COLUMN b int GENERATED ALWAYS AS (a * 3) STORED;",
        )
        .await
        .unwrap();
    db.stage(&["--until", "2024-01-03"]).await.assert_ok();
    db.copy(&[]).await.assert_ok();
    db.verify(&[])
        .await
        .assert_code(7)
        .assert_contains("column \"b\": sum");
    db.cleanup().await;
}
