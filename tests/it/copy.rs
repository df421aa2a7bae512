//! `copy` and `verify`: rows end up right on the target.

use crate::harness::Dbs;
use crate::stage::{METRICS, METRICS_DATA};

/// Content fingerprint of a query's rows, identical on both sides when the
/// rows are (order-independent).
async fn fingerprint(
    c: &tokio_postgres::Client,
    table: &str,
    cols: &str,
    filter: &str,
) -> (i64, String) {
    let sql = format!(
        "SELECT count(*), coalesce(md5(string_agg(r, ',' ORDER BY r)), '') FROM \
         (SELECT ({cols})::text AS r FROM {table} {filter}) x"
    );
    let row = c
        .query_one(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn copy_every_time_type_with_until_inside_chunks_and_dual_writes() {
    let Some(db) = Dbs::new("copy_time_types").await else {
        return;
    };
    // (table, time column type, chunk interval, series, T, a value just below T)
    let cases = [
        (
            "tz",
            "timestamptz",
            "INTERVAL '1 day'",
            "generate_series('2024-01-01'::timestamptz, '2024-01-08', '17 min')",
            "2024-01-04 13:00:00+00",
            "'2024-01-04 12:59:00+00'",
        ),
        (
            "ts",
            "timestamp",
            "INTERVAL '1 day'",
            "generate_series('2024-01-01'::timestamp, '2024-01-08', '17 min')",
            "2024-01-04 13:00:00",
            "'2024-01-04 12:59:00'",
        ),
        (
            "d",
            "date",
            "INTERVAL '7 days'",
            "generate_series('2024-01-01'::date, '2024-04-01', '1 day')",
            "2024-02-14",
            "'2024-02-13'",
        ),
        (
            "i2",
            "smallint",
            "100",
            "generate_series(-1000, 1000)",
            "-55",
            "-56",
        ),
        (
            "i4",
            "integer",
            "1000",
            "generate_series(-10000, 10000)",
            "2500",
            "2499",
        ),
        (
            "i8",
            "bigint",
            "1000",
            "generate_series(-10000, 10000)",
            "-2500",
            "-2501",
        ),
    ];
    for (t, ty, interval, series, _, _) in cases {
        db.both(&format!(
            "CREATE TABLE {t} (k {ty} NOT NULL, v int NOT NULL);
             SELECT create_hypertable('{t}', by_range('k', {interval}));"
        ))
        .await
        .unwrap();
        db.src
            .batch_execute(&format!(
                "INSERT INTO {t} SELECT x, row_number() over () FROM {series} x"
            ))
            .await
            .unwrap();
    }
    // Dual-write: the application has written rows >= T to both sides (copy
    // them over), and the target holds a stray row < T in the boundary chunk
    // that the backfill must replace.
    for (t, ty, _, _, until, just_below) in cases {
        let rows = db
            .src
            .query(
                &format!("SELECT k::text, v FROM {t} WHERE k >= '{until}'::{ty}"),
                &[],
            )
            .await
            .unwrap();
        let ks: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let vs: Vec<i32> = rows.iter().map(|r| r.get(1)).collect();
        db.tgt
            .execute(
                &format!("INSERT INTO {t} SELECT k::{ty}, v FROM unnest($1::text[], $2::int[]) AS x(k, v)"),
                &[&ks, &vs],
            )
            .await
            .unwrap();
        db.tgt
            .batch_execute(&format!(
                "INSERT INTO {t} VALUES ({just_below}::{ty}, -999)"
            ))
            .await
            .unwrap_or_else(|e| panic!("{t}: {e:?}"));
    }
    let above_before: Vec<i64> = {
        let mut v = Vec::new();
        for (t, ty, _, _, until, _) in cases {
            v.push(
                db.tgt_i64(&format!(
                    "SELECT count(*) FROM {t} WHERE k >= '{until}'::{ty}"
                ))
                .await,
            );
        }
        v
    };

    for (t, _, _, _, until, _) in cases {
        db.stage(&["--until", until, "--filter", &format!("^public\\.{t}$")])
            .await
            .assert_ok();
    }
    db.copy(&["-p", "3"])
        .await
        .assert_ok()
        .assert_contains("0 failed");
    for (i, (t, ty, _, _, until, _)) in cases.iter().enumerate() {
        let below = format!("WHERE k < '{until}'::{ty}");
        assert_eq!(
            fingerprint(&db.src, t, "k, v", &below).await,
            fingerprint(&db.tgt, t, "k, v", &below).await,
            "{t}: rows below T must equal the source's"
        );
        assert_eq!(
            db.tgt_i64(&format!("SELECT count(*) FROM {t} WHERE v = -999"))
                .await,
            0,
            "{t}: stray row < T kept"
        );
        let above = db
            .tgt_i64(&format!(
                "SELECT count(*) FROM {t} WHERE k >= '{until}'::{ty}"
            ))
            .await;
        assert_eq!(
            above, above_before[i],
            "{t}: dual-written rows >= T must survive"
        );
        assert_eq!(
            fingerprint(&db.src, t, "k, v", "").await,
            fingerprint(&db.tgt, t, "k, v", "").await,
            "{t}: whole table"
        );
    }
    db.verify(&[])
        .await
        .assert_ok()
        .assert_contains("0 mismatch");
    db.cleanup().await;
}

#[tokio::test]
async fn copy_from_and_until_copy_only_the_window() {
    let Some(db) = Dbs::new("copy_from_until").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    // The target already has its own rows outside the window: untouched.
    db.tgt
        .batch_execute(
            "INSERT INTO metrics VALUES ('2024-01-02 06:00+00', 1, 42), ('2024-01-08 18:00+00', 2, 43)",
        )
        .await
        .unwrap();
    db.stage(&[
        "--from",
        "2024-01-03 06:00+00",
        "--until",
        "2024-01-08 12:00+00",
    ])
    .await
    .assert_ok()
    .assert_contains("Staged 12 chunk(s)");
    db.copy(&[]).await.assert_ok();
    let window = "WHERE time >= '2024-01-03 06:00+00' AND time < '2024-01-08 12:00+00'";
    assert_eq!(
        fingerprint(&db.src, "metrics", "time, device, v", window).await,
        fingerprint(&db.tgt, "metrics", "time, device, v", window).await
    );
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM metrics WHERE time < '2024-01-03 06:00+00' OR time >= '2024-01-08 12:00+00'").await,
        2,
        "rows outside the window are neither copied nor deleted"
    );
    db.verify(&[]).await.assert_ok().assert_contains("12 match");
    db.cleanup().await;
}

#[tokio::test]
async fn copy_skips_a_chunk_dropped_on_the_source_after_stage() {
    let Some(db) = Dbs::new("copy_dropped").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    db.stage(&["--until", "2024-01-11"]).await.assert_ok();
    db.src
        .batch_execute(
            "SELECT drop_chunks('metrics', older_than => '2024-01-03 00:00+00'::timestamptz)",
        )
        .await
        .unwrap();
    db.copy(&[])
        .await
        .assert_ok()
        .assert_contains("no longer exists on the source");
    assert_eq!(db.queue_states().await, "done:16 skipped:4");
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM metrics").await,
        db.src_i64("SELECT count(*) FROM metrics").await
    );
    db.verify(&[]).await.assert_ok();
    db.cleanup().await;
}

#[tokio::test]
async fn copy_matches_columns_by_name_across_dropped_columns_and_other_order() {
    let Some(db) = Dbs::new("copy_column_order").await else {
        return;
    };
    db.src
        .batch_execute(
            "CREATE TABLE m (time timestamptz NOT NULL, a int, junk text, b text);
             SELECT create_hypertable('m', by_range('time', INTERVAL '1 day'));
             INSERT INTO m SELECT t, 1, 'x', 'old' FROM generate_series('2024-01-01'::timestamptz, '2024-01-02', '1 hour') t;
             ALTER TABLE m DROP COLUMN junk;
             ALTER TABLE m ADD COLUMN c numeric;
             INSERT INTO m SELECT t, 2, 'new', 3.25 FROM generate_series('2024-01-03'::timestamptz, '2024-01-04', '1 hour') t;",
        )
        .await
        .unwrap();
    db.tgt
        .batch_execute(
            "CREATE TABLE m (c numeric, b text, time timestamptz NOT NULL, a int);
             SELECT create_hypertable('m', by_range('time', INTERVAL '1 day'));",
        )
        .await
        .unwrap();
    db.stage(&["--until", "2024-02-01"]).await.assert_ok();
    db.copy(&[]).await.assert_ok();
    assert_eq!(
        fingerprint(&db.src, "m", "time, a, b, c", "").await,
        fingerprint(&db.tgt, "m", "time, a, b, c", "").await
    );
    db.verify(&[]).await.assert_ok();
    db.cleanup().await;
}

#[tokio::test]
async fn copy_types_without_portable_binary_form_in_text() {
    let Some(db) = Dbs::new("copy_text_types").await else {
        return;
    };
    db.both(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TYPE pair AS (x int, y text);
         CREATE TABLE odd (time timestamptz NOT NULL, acl aclitem, moods mood[], p pair, m mood, j jsonb, arr int[]);
         SELECT create_hypertable('odd', by_range('time', INTERVAL '1 day'));",
    )
    .await
    .unwrap();
    // Make the OIDs of the user types differ between the two databases.
    db.tgt
        .batch_execute("CREATE TYPE filler AS (z int)")
        .await
        .unwrap();
    db.src
        .batch_execute(
            "INSERT INTO odd SELECT t, 'postgres=arwdDxt/postgres', '{sad,happy}', ROW(1, 'a\"b')::pair, 'ok', '{\"k\": [1, 2]}', '{1,2,3}'
             FROM generate_series('2024-01-01'::timestamptz, '2024-01-03', '3 hour') t;",
        )
        .await
        .unwrap();
    db.stage(&["--until", "2024-02-01"]).await.assert_ok();
    db.copy(&[]).await.assert_ok().assert_contains("0 failed");
    let cols = "time, acl, moods, p, m, j, arr";
    assert_eq!(
        fingerprint(&db.src, "odd", cols, "").await,
        fingerprint(&db.tgt, "odd", cols, "").await
    );
    db.verify(&[]).await.assert_ok();
    db.cleanup().await;
}

#[tokio::test]
async fn copy_identifiers_with_quotes_spaces_case_and_unicode() {
    let Some(db) = Dbs::new("copy_identifiers").await else {
        return;
    };
    db.both(
        r#"CREATE SCHEMA "Sch ""é""";
           CREATE TABLE "Sch ""é"""."Mé Table" ("Time Col" timestamptz NOT NULL, "Reading °C" float8, "UPPER" text);
           SELECT create_hypertable('"Sch ""é"""."Mé Table"', by_range('Time Col', INTERVAL '1 day'));"#,
    )
    .await
    .unwrap();
    db.src
        .batch_execute(
            r#"INSERT INTO "Sch ""é"""."Mé Table" SELECT t, 21.5, 'x''y'
               FROM generate_series('2024-01-01'::timestamptz, '2024-01-04', '30 min') t;"#,
        )
        .await
        .unwrap();
    db.stage(&["--until", "2024-01-03 12:00+00", "--filter", "mé table"])
        .await
        .assert_ok()
        .assert_contains("Staged 3 chunk(s)");
    db.copy(&[]).await.assert_ok();
    let t = r#""Sch ""é"""."Mé Table""#;
    let cols = r#""Time Col", "Reading °C", "UPPER""#;
    let f = r#"WHERE "Time Col" < '2024-01-03 12:00+00'"#;
    assert_eq!(
        fingerprint(&db.src, t, cols, f).await,
        fingerprint(&db.tgt, t, cols, f).await
    );
    assert_eq!(db.tgt_i64(&format!("SELECT count(*) FROM {t}")).await, 120);
    db.verify(&[]).await.assert_ok().assert_contains("3 match");
    db.cleanup().await;
}

#[tokio::test]
async fn verify_reports_a_changed_target_and_exits_non_zero() {
    let Some(db) = Dbs::new("verify_mismatch").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    db.stage(&["--until", "2024-01-03"]).await.assert_ok();
    db.copy(&[]).await.assert_ok();
    db.verify(&[]).await.assert_ok().assert_contains("4 match");
    db.tgt
        .batch_execute(
            "DELETE FROM metrics WHERE time = '2024-01-01 00:00+00' AND device = 1;
             UPDATE metrics SET v = v + 1 WHERE time = '2024-01-02 00:00+00' AND device = 2;",
        )
        .await
        .unwrap();
    let r = db.verify(&["--all"]).await;
    r.assert_code(7)
        .assert_contains("MISMATCH")
        .assert_contains("row count: source=")
        .assert_contains("column \"v\": sum")
        .assert_contains("2 mismatch");
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM __hyperfill.task WHERE verify_state = 'mismatch'")
            .await,
        2
    );
    // The recorded mismatch keeps the exit code non-zero on a re-run.
    db.verify(&[]).await.assert_code(7);
    // Copy the mismatched chunks again, then they verify.
    db.copy(&["--requeue-mismatched"])
        .await
        .assert_ok()
        .assert_contains("Re-queued 2 task(s)")
        .assert_contains("Copying 2 chunk(s)");
    db.verify(&[]).await.assert_ok().assert_contains("2 match");
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM metrics").await,
        db.src_i64("SELECT count(*) FROM metrics WHERE time < '2024-01-03'")
            .await
    );
    db.cleanup().await;
}

#[tokio::test]
async fn copy_failing_task_is_recorded_others_carry_on_and_rerun_fixes_it() {
    let Some(db) = Dbs::new("copy_task_fails").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    db.src
        .batch_execute("UPDATE metrics SET v = -1 WHERE time = '2024-01-02 12:00+00'")
        .await
        .unwrap();
    // A target-only constraint the source data violates in one day's chunks.
    db.tgt
        .batch_execute("ALTER TABLE metrics ADD CONSTRAINT v_positive CHECK (v >= 0)")
        .await
        .unwrap();
    db.stage(&["--until", "2024-01-05"]).await.assert_ok();
    let r = db.copy(&[]).await;
    r.assert_code(6)
        .assert_contains("FAILED chunk")
        .assert_contains("v_positive");
    let states = db.queue_states().await;
    assert!(
        states.starts_with("done:") && states.contains("failed:"),
        "{states}"
    );
    assert!(
        db.tgt_i64("SELECT count(*) FROM __hyperfill.task WHERE state = 'failed' AND last_error LIKE '%v_positive%'")
            .await
            >= 1
    );
    db.tgt
        .batch_execute("ALTER TABLE metrics DROP CONSTRAINT v_positive")
        .await
        .unwrap();
    db.copy(&[]).await.assert_ok();
    assert_eq!(db.queue_states().await, "done:8");
    db.verify(&[]).await.assert_ok();
    db.cleanup().await;
}

#[tokio::test]
async fn copy_with_snapshot_reads_the_source_as_of_the_exported_snapshot() {
    let Some(db) = Dbs::new("copy_snapshot").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    // Export a snapshot and keep its transaction open, as a user would in psql.
    let holder = crate::harness::connect(&db.source_url).await.unwrap();
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let snapshot: String = holder
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .unwrap()
        .get(0);
    let as_of = db.src_i64("SELECT count(*) FROM metrics").await;
    // Written after the snapshot: into existing chunks and into a new one.
    db.src
        .batch_execute(
            "INSERT INTO metrics VALUES ('2024-01-02 00:00:01+00', 1, 1), ('2024-01-12 00:00+00', 2, 2)",
        )
        .await
        .unwrap();
    db.stage(&["--until", "2024-01-20", "--snapshot", &snapshot])
        .await
        .assert_ok()
        .assert_contains("Staged 20 chunk(s)");
    db.copy(&[]).await.assert_ok();
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM metrics").await,
        as_of,
        "rows after the snapshot were copied"
    );
    db.verify(&[]).await.assert_ok().assert_contains("20 match");
    holder.batch_execute("COMMIT").await.unwrap();

    // A snapshot that no longer exists is refused with the way out.
    let r = db
        .stage(&["--until", "2024-01-20", "--snapshot", &snapshot])
        .await;
    r.assert_code(2).assert_contains("must stay open");
    db.stage(&["--until", "2024-01-20", "--snapshot", "x'; --"])
        .await
        .assert_code(2);
    db.cleanup().await;
}

/// Status bit 4 (frozen) of the `metrics` chunks holding 2024-01-01, from
/// functions and views every release has.
async fn frozen_chunks(c: &tokio_postgres::Client) -> i64 {
    crate::harness::scalar(
        c,
        "SELECT count(*) FROM timescaledb_information.chunks i
         WHERE i.hypertable_name = 'metrics'
           AND _timescaledb_functions.chunk_status(format('%I.%I', i.chunk_schema, i.chunk_name)::regclass) & 4 <> 0",
    )
    .await
}

#[tokio::test]
async fn copy_into_target_chunks_restored_frozen_fills_them_and_keeps_them_frozen() {
    let Some(db) = Dbs::licensed("copy_frozen").await else {
        return;
    };
    db.src.batch_execute(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    db.src
        .batch_execute(
            "SELECT _timescaledb_functions.freeze_chunk(c)
             FROM show_chunks('metrics', older_than => '2024-01-02'::timestamptz) c",
        )
        .await
        .unwrap();
    let frozen = frozen_chunks(&db.src).await;
    assert!(frozen > 0);
    // pg_dump carries the chunk catalog, frozen status included.
    db.restore_schema_with_pg_dump().await.unwrap();
    assert_eq!(frozen_chunks(&db.tgt).await, frozen);
    db.stage(&["--until", "2024-01-11"]).await.assert_ok();
    db.copy(&[]).await.assert_ok();
    let all = "time, device, v";
    assert_eq!(
        fingerprint(&db.src, "metrics", all, "").await,
        fingerprint(&db.tgt, "metrics", all, "").await,
        "rows differ"
    );
    assert_eq!(frozen_chunks(&db.tgt).await, frozen, "frozen chunks thawed");
    db.cleanup().await;
}

#[tokio::test]
async fn copy_analyze_leaves_statistics_on_every_copied_chunk() {
    let Some(db) = Dbs::new("copy_analyze").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    db.stage(&["--until", "2024-01-03"]).await.assert_ok();
    db.copy(&["--analyze", "-p", "2"]).await.assert_ok();
    // ANALYZE sets reltuples (-1 on a table never analyzed or vacuumed).
    let chunks = "SELECT count(*) FROM pg_class WHERE oid IN
                  (SELECT show_chunks('metrics', older_than => '2024-01-03'::timestamptz))";
    let analyzed = "SELECT count(*) FROM pg_class WHERE reltuples > 0 AND oid IN
                  (SELECT show_chunks('metrics', older_than => '2024-01-03'::timestamptz))";
    let n = db.tgt_i64(chunks).await;
    assert!(n > 0, "no target chunks below the bound");
    assert_eq!(db.tgt_i64(analyzed).await, n, "chunks without statistics");
    // No transaction left open on the target by the ANALYZE.
    assert_eq!(
        db.tgt_i64(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hyperfill'
             AND datname = current_database() AND state LIKE 'idle in transaction%'"
        )
        .await,
        0
    );
    db.cleanup().await;
}
