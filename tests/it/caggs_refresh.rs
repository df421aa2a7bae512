//! Continuous aggregates complete to the last bucket: the target's schema
//! restored with pg_dump carries the source's watermark, the
//! materializations are copied below T only, and `refresh-caggs` must still
//! fill every bucket from T to the source's watermark (hierarchical
//! aggregates after the ones they are built on); `verify` compares the views
//! per bucket over that range.

use crate::harness::fingerprint;
use crate::harness::Dbs;

const SCHEMA: &str = "
CREATE TABLE raw (time timestamptz NOT NULL, device int NOT NULL, v float8);
SELECT create_hypertable('raw', by_range('time', INTERVAL '1 day'));
CREATE MATERIALIZED VIEW hourly WITH (timescaledb.continuous) AS
    SELECT time_bucket('1 hour', time) AS bucket, device, avg(v) AS avg_v, count(*) AS n
    FROM raw GROUP BY 1, 2 WITH NO DATA;
CREATE MATERIALIZED VIEW daily WITH (timescaledb.continuous) AS
    SELECT time_bucket('1 day', bucket) AS day, device, sum(n) AS n
    FROM hourly GROUP BY 1, 2 WITH NO DATA;
";

/// The rows, all sides alike; `{filter}` picks a time range.
fn rows(filter: &str) -> String {
    format!(
        "INSERT INTO raw SELECT t, d, d + extract(epoch from t) / 1e9
         FROM generate_series('2024-01-01'::timestamptz, '2024-01-09 23:59', '10 min') t, generate_series(1, 3) d
         WHERE {filter}"
    )
}

const T: &str = "2024-01-06 12:00:00+00";

async fn each(c: &tokio_postgres::Client, stmts: &[&str]) {
    for s in stmts {
        c.batch_execute(s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e:?}"));
    }
}

/// The views below the source's watermark (Jan 9), which is what the source
/// has materialized. (A refresh on the target may materialize a bucket
/// beyond its window when one logged invalidation spans the window's end;
/// the source has not materialized those buckets yet.)
const HOURLY: &str = "(SELECT bucket, device, round(avg_v::numeric, 9) AS avg_v, n FROM hourly WHERE bucket < '2024-01-09')";
const DAILY: &str = "(SELECT * FROM daily WHERE day < '2024-01-09')";

/// The source: the schema, every row, both aggregates materialized up to Jan 9.
async fn source_materialized_to_jan_9(db: &Dbs) {
    db.src.batch_execute(SCHEMA).await.unwrap();
    each(
        &db.src,
        &[
            &rows("true"),
            "CALL refresh_continuous_aggregate('hourly', NULL, '2024-01-09')",
            "CALL refresh_continuous_aggregate('daily', NULL, '2024-01-09')",
        ],
    )
    .await;
}

/// The dual-written rows (from T on) land on the target; then stage --until
/// T, copy and refresh-caggs, whose run is returned.
async fn dual_writes_then_stage_copy_refresh(db: &Dbs) -> crate::harness::Run {
    db.tgt
        .batch_execute(&rows(&format!("t >= '{T}'")))
        .await
        .unwrap();
    db.stage(&["--until", T]).await.assert_ok();
    db.copy(&[]).await.assert_ok();
    db.run(&["refresh-caggs", "--source", "{S}", "--target", "{T}"])
        .await
}

/// Retention on the source dropped the oldest raw chunks, while the
/// aggregates keep their buckets; the target's schema was made by hand
/// (aggregates WITH NO DATA: the lowest watermark). refresh-caggs must keep
/// the copied buckets, not recompute them from raw rows the target never got.
#[tokio::test]
async fn refresh_caggs_keeps_copied_buckets_whose_raw_rows_retention_dropped() {
    let Some(db) = Dbs::licensed("cagg_retention").await else {
        return;
    };
    source_materialized_to_jan_9(&db).await;
    each(
        &db.src,
        &["SELECT count(*) FROM drop_chunks('raw', older_than => '2024-01-03'::timestamptz)"],
    )
    .await;
    assert_eq!(
        db.src_i64("SELECT count(*) FROM raw WHERE time < '2024-01-03'")
            .await,
        0,
        "retention dropped the oldest raw rows"
    );
    db.tgt.batch_execute(SCHEMA).await.unwrap();
    let r = dual_writes_then_stage_copy_refresh(&db).await;
    r.assert_ok();
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM hourly WHERE bucket < '2024-01-03'")
            .await,
        2 * 24 * 3,
        "the hourly buckets of the dropped raw chunks"
    );
    r.assert_contains(&format!(
        "Refreshing continuous aggregate \"public\".\"hourly\" in range [{T}, 2024-01-09 00:00:00+00)"
    ));
    assert_eq!(
        fingerprint(&db.src, HOURLY).await,
        fingerprint(&db.tgt, HOURLY).await,
        "hourly differs"
    );
    assert_eq!(
        fingerprint(&db.src, DAILY).await,
        fingerprint(&db.tgt, DAILY).await,
        "daily differs"
    );
    // The views compare as text: a target database with another time zone
    // and date style must not make its buckets look different.
    db.tgt
        .batch_execute(&format!(
            "ALTER DATABASE \"hf_{}_t\" SET TimeZone = 'Europe/Berlin';
             ALTER DATABASE \"hf_{}_t\" SET DateStyle = 'SQL, DMY'",
            db.name, db.name
        ))
        .await
        .unwrap();
    db.verify(&[])
        .await
        .assert_ok()
        .assert_contains("bucket(s) in the refreshed range")
        .assert_contains("match");
    db.cleanup().await;
}

#[tokio::test]
async fn refresh_caggs_fills_every_bucket_between_t_and_the_source_watermark() {
    let Some(db) = Dbs::licensed("cagg_to_last_bucket").await else {
        return;
    };
    // The source holds everything and has materialized up to Jan 9; the
    // target is restored from its dump (watermarks and all), then receives
    // the dual-written rows from T on.
    source_materialized_to_jan_9(&db).await;
    db.restore_schema_with_pg_dump().await.unwrap();
    let r = dual_writes_then_stage_copy_refresh(&db).await;
    r.assert_ok()
        .assert_contains(&format!(
            "Refreshing continuous aggregate \"public\".\"hourly\" in range [{T}, 2024-01-09 00:00:00+00)"
        ))
        .assert_contains("Refreshed 2 continuous aggregate(s)");
    let (h, d) = (
        r.stdout.find("\"hourly\" in range").unwrap(),
        r.stdout.find("\"daily\" in range").unwrap(),
    );
    assert!(h < d, "parents first:\n{}", r.stdout);
    assert_eq!(
        fingerprint(&db.src, HOURLY).await,
        fingerprint(&db.tgt, HOURLY).await,
        "hourly differs"
    );
    assert_eq!(
        fingerprint(&db.src, DAILY).await,
        fingerprint(&db.tgt, DAILY).await,
        "daily differs"
    );
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM hourly WHERE bucket < '2024-01-09'")
            .await,
        8 * 24 * 3,
        "every hourly bucket below the watermark"
    );

    // verify compares the views over the refreshed range.
    db.verify(&[])
        .await
        .assert_ok()
        .assert_contains("Verified continuous aggregate \"public\".\"hourly\": 60 bucket(s)")
        .assert_contains("bucket(s) in the refreshed range [2024-01-06 12:00:00+00, 2024-01-09 00:00:00+00) match");
    // Nothing left to refresh the second time.
    db.run(&["refresh-caggs", "--source", "{S}", "--target", "{T}"])
        .await
        .assert_ok()
        .assert_contains("already refreshed by refresh-caggs");

    // A bucket lost on the target in that range is found.
    let mat: String = db
        .tgt
        .query_one(
            "SELECT format('%I.%I', h.schema_name, h.table_name)
             FROM _timescaledb_catalog.continuous_agg ca
             JOIN _timescaledb_catalog.hypertable h ON h.id = ca.mat_hypertable_id
             WHERE ca.user_view_name = 'hourly'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    db.tgt
        .batch_execute(&format!(
            "UPDATE {mat} SET n = n + 1 WHERE bucket = '2024-01-07 05:00+00' AND device = 2"
        ))
        .await
        .unwrap();
    db.verify(&["--all"])
        .await
        .assert_code(7)
        .assert_contains("MISMATCH in continuous aggregate \"public\".\"hourly\"")
        .assert_contains("1 bucket(s) with different rows: 2024-01-07 05:00:00+00");
    db.cleanup().await;
}
