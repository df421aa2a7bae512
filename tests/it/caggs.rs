//! Continuous aggregates (need the Timescale license): materializations
//! copied like hypertables without leaving invalidations behind, then
//! `refresh-caggs` catches the target up to the source's watermarks.

use crate::harness::Dbs;
use crate::harness::{each_statement as each, fingerprint};

const SCHEMA: &str = "
CREATE TABLE raw (time timestamptz NOT NULL, device int NOT NULL, v float8);
SELECT create_hypertable('raw', by_range('time', INTERVAL '1 day'));
ALTER TABLE raw SET (timescaledb.compress, timescaledb.compress_segmentby = 'device',
                     timescaledb.compress_orderby = 'time');
CREATE MATERIALIZED VIEW hourly WITH (timescaledb.continuous) AS
    SELECT time_bucket('1 hour', time) AS bucket, device, avg(v) AS avg_v, count(*) AS n
    FROM raw GROUP BY 1, 2 WITH NO DATA;
CREATE MATERIALIZED VIEW \"Daily Roll\" WITH (timescaledb.continuous) AS
    SELECT time_bucket('1 day', bucket) AS day, device, sum(n) AS n
    FROM hourly GROUP BY 1, 2 WITH NO DATA;
";

const DATA: &str = "
INSERT INTO raw SELECT t, d, d + extract(epoch from t) / 1e9
FROM generate_series('2024-01-01'::timestamptz, '2024-01-10 23:59', '10 min') t, generate_series(1, 3) d;
CALL refresh_continuous_aggregate('hourly', NULL, '2024-01-05');
CALL refresh_continuous_aggregate('\"Daily Roll\"', NULL, '2024-01-04');
SELECT compress_chunk(c) FROM show_chunks('raw', older_than => '2024-01-06'::timestamptz) c;
INSERT INTO raw VALUES ('2024-01-02 10:05+00', 9, 42);
";

/// The source keeps materializing after the target's schema was restored.
const LATER: &str = "
CALL refresh_continuous_aggregate('hourly', NULL, '2024-01-09');
CALL refresh_continuous_aggregate('\"Daily Roll\"', NULL, '2024-01-08');
";

/// The continuous aggregates' rows as compared. `avg_v` is a float average:
/// a refresh on either side may sum the same rows in another physical order,
/// which moves the last binary digit, so it is compared to 9 decimals (as
/// `verify` compares float sums with a tolerance).
const VIEWS: [&str; 2] = [
    "(SELECT bucket, device, round(avg_v::numeric, 9) AS avg_v, n FROM hourly)",
    "\"Daily Roll\"",
];

async fn invalidations(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT (SELECT count(*) FROM _timescaledb_catalog.continuous_aggs_hypertable_invalidation_log)
              + (SELECT count(*) FROM _timescaledb_catalog.continuous_aggs_materialization_invalidation_log)",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Whether the target logs invalidations in C (TimescaleDB 2.23 and later)
/// rather than through the `ts_cagg_invalidation_trigger` row trigger.
async fn invalidations_without_trigger(c: &tokio_postgres::Client) -> bool {
    c.query_one(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'continuous_agg_invalidation_trigger')",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Invalidations the copy cannot avoid: from 2.23 to 2.27, the rows of a
/// partially compressed chunk must go through the hypertable (only that sets
/// the partial flag), which records one invalidation for the one partial
/// chunk of this dataset. Everything else is written with
/// `timescaledb.restoring` on and records nothing. From 2.28,
/// `timescaledb.skip_cagg_invalidation` keeps out that one too.
async fn unavoidable(c: &tokio_postgres::Client) -> i64 {
    let skip_setting: bool = c
        .query_one(
            "SELECT current_setting('timescaledb.skip_cagg_invalidation', true) IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if invalidations_without_trigger(c).await && !skip_setting {
        1
    } else {
        0
    }
}

async fn watermarks(c: &tokio_postgres::Client) -> Vec<(String, i64)> {
    crate::harness::pairs(
        c,
        "SELECT user_view_name::text, _timescaledb_functions.cagg_watermark(mat_hypertable_id)
         FROM _timescaledb_catalog.continuous_agg ORDER BY 1",
    )
    .await
}

#[tokio::test]
async fn caggs_mixed_compression_two_level_hierarchy_backfills_to_an_identical_target() {
    let Some(db) = Dbs::licensed("cagg_full").await else {
        return;
    };
    db.src.batch_execute(SCHEMA).await.unwrap();
    each(&db.src, DATA).await;
    db.restore_schema_with_pg_dump().await.unwrap();
    each(&db.src, LATER).await;

    let before = invalidations(&db.tgt).await;
    db.stage(&["--until", "2024-01-11"]).await.assert_ok();
    // raw (10 chunks) and both materialization hypertables are staged.
    assert_eq!(
        db.tgt_i64("SELECT count(DISTINCT hypertable_name) FROM __hyperfill.task")
            .await,
        3
    );
    db.copy(&["-p", "4"]).await.assert_ok();
    assert_eq!(
        invalidations(&db.tgt).await,
        before + unavoidable(&db.tgt).await,
        "the copy logged invalidations"
    );
    assert_eq!(
        fingerprint(&db.src, "raw").await,
        fingerprint(&db.tgt, "raw").await
    );
    db.verify(&[])
        .await
        .assert_ok()
        .assert_contains("0 mismatch");

    let r = db
        .run(&["refresh-caggs", "--source", "{S}", "--target", "{T}"])
        .await;
    r.assert_ok()
        .assert_contains("Refreshed 2 continuous aggregate(s)");
    let (h, d) = (
        r.stdout.find("\"hourly\"").unwrap(),
        r.stdout.find("\"Daily Roll\"").unwrap(),
    );
    assert!(
        h < d,
        "the cagg a cagg is built on must be refreshed first:\n{}",
        r.stdout
    );
    assert_eq!(watermarks(&db.src).await, watermarks(&db.tgt).await);
    for view in VIEWS {
        assert_eq!(
            fingerprint(&db.src, view).await,
            fingerprint(&db.tgt, view).await,
            "{view}"
        );
    }
    // Nothing left to do the second time.
    db.run(&["refresh-caggs", "--source", "{S}", "--target", "{T}"])
        .await
        .assert_ok()
        .assert_contains("already materialized");
    db.cleanup().await;
}

#[tokio::test]
async fn caggs_filter_and_cascade_select_views_for_stage_and_refresh() {
    let Some(db) = Dbs::licensed("cagg_filter").await else {
        return;
    };
    db.src.batch_execute(SCHEMA).await.unwrap();
    each(&db.src, DATA).await;
    db.restore_schema_with_pg_dump().await.unwrap();
    each(&db.src, LATER).await;

    // The daily view alone, then with what it is built on. Names are matched
    // as format('%I.%I') renders them: quoted where they need quotes.
    db.stage(&["--until", "2024-01-11", "--filter", "daily roll\"$"])
        .await
        .assert_ok();
    assert_eq!(
        db.tgt_i64("SELECT count(DISTINCT hypertable_name) FROM __hyperfill.task")
            .await,
        1
    );
    db.stage(&[
        "--until",
        "2024-01-11",
        "--filter",
        "daily roll\"$",
        "--cascade-down",
    ])
    .await
    .assert_ok();
    assert_eq!(
        db.tgt_i64("SELECT count(DISTINCT hypertable_name) FROM __hyperfill.task")
            .await,
        3
    );
    db.copy(&[]).await.assert_ok();

    let r = db
        .run(&[
            "refresh-caggs",
            "--source",
            "{S}",
            "--target",
            "{T}",
            "--filter",
            "^public\\.hourly$",
        ])
        .await;
    r.assert_ok()
        .assert_contains("Refreshed 1 continuous aggregate(s)");
    assert!(!r.stdout.contains("Daily Roll"), "{}", r.stdout);
    let r = db
        .run(&[
            "refresh-caggs",
            "--source",
            "{S}",
            "--target",
            "{T}",
            "-f",
            "hourly",
            "-U",
        ])
        .await;
    r.assert_ok().assert_contains("\"Daily Roll\"");
    assert_eq!(watermarks(&db.src).await, watermarks(&db.tgt).await);
    db.run(&[
        "refresh-caggs",
        "--source",
        "{S}",
        "--target",
        "{T}",
        "-f",
        "nothing-matches",
    ])
    .await
    .assert_ok()
    .assert_contains("No continuous aggregates to refresh");
    db.cleanup().await;
}

#[tokio::test]
async fn caggs_copy_as_a_non_superuser_owner_leaves_no_invalidations() {
    let Some(db) = Dbs::licensed("cagg_owner").await else {
        return;
    };
    let role = "hf_cagg_owner";
    for c in [&db.src, &db.tgt] {
        c.batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT CREATE ON DATABASE {db} TO {role};
             GRANT ALL ON SCHEMA public TO {role};
             GRANT SET ON PARAMETER timescaledb.restoring TO {role};",
            db = c
                .query_one("SELECT quote_ident(current_database())", &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        ))
        .await
        .unwrap();
        c.batch_execute(&format!("SET ROLE {role}; {SCHEMA}; RESET ROLE"))
            .await
            .unwrap();
    }
    each(
        &db.src,
        &format!("SET ROLE {role};\n{DATA}\n{LATER}\nRESET ROLE;\n"),
    )
    .await;
    // Give the target an invalidation threshold, as a restored target has:
    // rows written below it are what TimescaleDB logs invalidations for.
    each(
        &db.tgt,
        &format!(
            "SET ROLE {role};\n{}\nRESET ROLE;\n",
            DATA.lines()
                .filter(|l| l.starts_with("CALL"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    )
    .await;
    assert!(
        db.tgt_i64(
            "SELECT count(*) FROM _timescaledb_catalog.continuous_aggs_invalidation_threshold"
        )
        .await
            > 0
    );
    let before = invalidations(&db.tgt).await;
    let as_owner = db.target_url.replacen("postgres@", &format!("{role}@"), 1);
    let r = db
        .run(&[
            "stage",
            "--source",
            "{S}",
            "--target",
            &as_owner,
            "--until",
            "2024-01-11",
        ])
        .await;
    r.assert_ok();
    db.run(&["copy", "--source", "{S}", "--target", &as_owner])
        .await
        .assert_ok();
    assert_eq!(
        invalidations(&db.tgt).await,
        before + unavoidable(&db.tgt).await,
        "the copy logged invalidations"
    );
    // Where there is an invalidation trigger, it is back on every chunk of raw.
    let expected_missing = if invalidations_without_trigger(&db.tgt).await {
        db.tgt_i64("SELECT count(*) FROM show_chunks('raw')").await
    } else {
        0
    };
    assert_eq!(
        db.tgt_i64(
            "SELECT count(*) FROM show_chunks('raw') c
             WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c AND t.tgname = 'ts_cagg_invalidation_trigger')"
        )
        .await,
        expected_missing
    );
    assert_eq!(
        fingerprint(&db.src, "raw").await,
        fingerprint(&db.tgt, "raw").await
    );
    db.run(&["verify", "--source", "{S}", "--target", &as_owner])
        .await
        .assert_ok();
    db.run(&["refresh-caggs", "--source", "{S}", "--target", &as_owner])
        .await
        .assert_ok();
    for view in VIEWS {
        assert_eq!(
            fingerprint(&db.src, view).await,
            fingerprint(&db.tgt, view).await,
            "{view}"
        );
    }
    db.cleanup().await;
}
