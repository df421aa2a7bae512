//! Compressed batches the target refuses (TimescaleDB 2.19.x cannot read
//! back a batch whose column is NULL in every row, stored with its "NULL"
//! compression algorithm): the chunk is copied as rows and compressed on the
//! target in the same run, and the queue and `status` say so.

use crate::harness::Dbs;

const SCHEMA: &str = "
CREATE TABLE nb (time timestamptz NOT NULL, device int NOT NULL, v float8, note text);
SELECT create_hypertable('nb', by_range('time', INTERVAL '1 day'));
ALTER TABLE nb SET (timescaledb.compress, timescaledb.compress_segmentby = 'device',
                    timescaledb.compress_orderby = 'time');
";

/// Device 2 never sets `note` on days 1 and 2: its batches there hold a
/// column that is NULL in every row. Day 3 has no such batch. Days 1-3 are
/// compressed, day 2 partially (a late row), day 4 is not compressed.
const DATA: &str = "
INSERT INTO nb SELECT t, d, d + extract(epoch from t) / 1e9,
       CASE WHEN d = 2 AND t < '2024-01-03' THEN NULL ELSE 'n' || d END
FROM generate_series('2024-01-01'::timestamptz, '2024-01-04 23:59', '10 min') t, generate_series(1, 3) d;
SELECT compress_chunk(c) FROM show_chunks('nb', older_than => '2024-01-04'::timestamptz) c;
INSERT INTO nb VALUES ('2024-01-02 12:05+00', 2, 1.5, NULL);
";

async fn fingerprint(c: &tokio_postgres::Client) -> (i64, String) {
    let row = c
        .query_one(
            "SELECT count(*), md5(string_agg((time, device, v, note)::text, ',' ORDER BY time, device, v))
             FROM nb",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Compression status bit 1 of every chunk of nb, oldest first.
async fn compressed_bits(c: &tokio_postgres::Client) -> Vec<i32> {
    c.query(
        "SELECT c.status & 1 FROM _timescaledb_catalog.chunk c
         JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id
         WHERE h.table_name = 'nb' ORDER BY c.table_name",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn copy_compressed_batches_the_target_refuses_are_copied_as_rows_and_compressed() {
    let Some(db) = Dbs::licensed("fallback_null_batches").await else {
        return;
    };
    // The NULL-batch refusal is a 2.19-era bug: releases before 2.19 have
    // no "NULL" compression algorithm (nor compressed_data_info() to find
    // such batches), and the probes below read the chunk catalog of
    // releases before 2.29. Elsewhere the test is reported as skipped,
    // loudly.
    let why_not = if db
        .src_i64("SELECT count(*) FROM pg_proc WHERE proname = 'compressed_data_info'")
        .await
        == 0
    {
        Some("this release has no \"NULL\" compression algorithm (before 2.19), so no batch to refuse")
    } else if db
        .src_i64("SELECT count(*) FROM pg_attribute WHERE attrelid = '_timescaledb_catalog.chunk'::regclass AND attname = 'compressed_chunk_id'")
        .await
        == 0
    {
        Some("the NULL-batch probes read the chunk catalog of TimescaleDB before 2.29")
    } else {
        None
    };
    if let Some(why) = why_not {
        crate::harness::skip("fallback_null_batches", why, "HYPERFILL_REQUIRE_FALLBACK");
        db.cleanup().await;
        return;
    }
    db.src.batch_execute(SCHEMA).await.unwrap();
    db.src.batch_execute(DATA).await.unwrap();
    db.restore_schema_with_pg_dump().await.unwrap();

    // The source really holds "NULL"-algorithm batches.
    let compressed: Vec<String> = db
        .src
        .query(
            "SELECT format('%I.%I', cc.schema_name, cc.table_name)
             FROM _timescaledb_catalog.chunk c JOIN _timescaledb_catalog.chunk cc ON cc.id = c.compressed_chunk_id
             JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id
             WHERE h.table_name = 'nb' ORDER BY c.table_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut null_batches = Vec::new();
    for rel in &compressed {
        null_batches.push(
            db.src_i64(&format!(
                "SELECT count(*) FROM {rel}, LATERAL _timescaledb_functions.compressed_data_info(note) i
                 WHERE i.algorithm::text = 'NULL'"
            ))
            .await,
        );
    }
    assert_eq!(
        null_batches,
        vec![1, 1, 0],
        "NULL-algorithm batches per compressed chunk"
    );
    // Whether this target release can read such a batch back.
    let sample: String = db
        .src
        .query_one(
            "SELECT (xpath('/row/n/text()', query_to_xml(format('SELECT note::text AS n FROM %I.%I WHERE device = 2 LIMIT 1', cc.schema_name, cc.table_name), false, true, '')))[1]::text
             FROM _timescaledb_catalog.chunk c JOIN _timescaledb_catalog.chunk cc ON cc.id = c.compressed_chunk_id
             JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id
             WHERE h.table_name = 'nb' ORDER BY c.table_name LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let refused = db
        .tgt
        .query_one(
            "SELECT $1::text::_timescaledb_internal.compressed_data IS NULL",
            &[&sample],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(true);

    db.stage(&["--until", "2024-01-05"]).await.assert_ok();
    let r = db.copy(&[]).await;
    r.assert_ok().assert_contains("0 failed");
    assert_eq!(fingerprint(&db.src).await, fingerprint(&db.tgt).await);
    assert_eq!(compressed_bits(&db.tgt).await, vec![1, 1, 1, 0]);
    db.verify(&[])
        .await
        .assert_ok()
        .assert_contains("0 mismatch");

    let fallbacks = db
        .tgt_i64("SELECT count(*) FROM __hyperfill.task WHERE fallback IS NOT NULL")
        .await;
    let status = db.run(&["status", "--target", "{T}"]).await;
    status.assert_ok();
    if refused {
        // Days 1 and 2 hold NULL batches; day 3 goes in as batches.
        assert_eq!(fallbacks, 2, "{}", r.all());
        r.assert_contains("copied as rows and compressed on the target");
        status
            .assert_contains("Copied another way than staged: 2 chunk(s)")
            .assert_contains("returned NULL");
    } else {
        eprintln!("this TimescaleDB reads NULL-algorithm batches back: no fallback expected");
        assert_eq!(fallbacks, 0, "{}", r.all());
        assert!(!status.stdout.contains("Copied another way"));
    }
    db.cleanup().await;
}
