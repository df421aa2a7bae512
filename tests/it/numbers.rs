//! The figures hyperfill prints agree with SQL on both servers (issue 11):
//! logical rows for compressed chunks, bytes that add up, tasks and chunks,
//! a dry run that knows the queue, JSON shapes, exit codes.

use crate::harness::{Dbs, Run};
use crate::stage::{METRICS, METRICS_DATA};

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", r.all()))
}

/// 4 devices every minute for 6 days, 1-day chunks; days 1-3 compressed
/// (segmented by device), day 2 also partial; days 4-6 plain.
const HALF_COMPRESSED: &str = "
CREATE TABLE hc (time timestamptz NOT NULL, device int NOT NULL, v float8);
SELECT create_hypertable('hc', by_range('time', INTERVAL '1 day'));
ALTER TABLE hc SET (timescaledb.compress, timescaledb.compress_segmentby = 'device',
                    timescaledb.compress_orderby = 'time');
";
const HALF_COMPRESSED_DATA: &str = "
INSERT INTO hc SELECT t, d, d + extract(epoch from t) / 1e9
FROM generate_series('2024-01-01'::timestamptz, '2024-01-06 23:59', '1 min') t, generate_series(1, 4) d;
SELECT compress_chunk(c) FROM show_chunks('hc', older_than => '2024-01-04'::timestamptz) c;
INSERT INTO hc VALUES ('2024-01-02 12:00:30+00', 9, 0.5);
";

/// The compressed batches (rows of the compressed chunk tables) of `hc`.
const BATCHES: &str = "
SELECT coalesce(sum((xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I',
           cc.schema_name, cc.table_name), false, true, '')))[1]::text::bigint), 0)::bigint
FROM _timescaledb_catalog.chunk c
JOIN _timescaledb_catalog.chunk cc ON cc.id = c.compressed_chunk_id
JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id
WHERE h.table_name = 'hc'";

#[tokio::test]
async fn row_figures_count_logical_rows_of_compressed_chunks() {
    let Some(db) = Dbs::licensed("num_rows").await else {
        return;
    };
    db.both(HALF_COMPRESSED).await.unwrap();
    db.src.batch_execute(HALF_COMPRESSED_DATA).await.unwrap();
    let rows = db.src_i64("SELECT count(*) FROM hc").await;
    let batches = db.src_i64(BATCHES).await;
    assert!(
        rows > 30_000 && batches > 0 && batches < 100,
        "dataset: {rows} rows, {batches} batches"
    );

    db.stage(&["--until", "2024-01-07"]).await.assert_ok();
    let r = db.copy(&["--output", "json", "-p", "2"]).await;
    r.assert_ok();
    let v = json(&r);
    assert_eq!(v["result"]["rows"], rows, "copy's rows: {v}");
    assert_eq!(v["result"]["batches"], batches, "copy's batches: {v}");
    let ht = &v["result"]["hypertables"][0];
    assert_eq!(ht["hypertable"]["name"], "hc");
    assert_eq!(
        (
            ht["rows"].as_i64(),
            ht["batches"].as_i64(),
            ht["copied"].as_i64()
        ),
        (Some(rows), Some(batches), Some(6))
    );
    assert_eq!(ht["bytes"], v["result"]["bytes"]);
    // The per-chunk lines and the summary say it in words, batches labelled.
    assert!(
        r.stderr.contains("compressed batches)") && r.stderr.contains("5,760 rows,"),
        "{}",
        r.stderr
    );
    assert_eq!(db.tgt_i64("SELECT count(*) FROM hc").await, rows);
    assert_eq!(
        db.tgt_i64("SELECT sum(rows_copied)::bigint FROM __hyperfill.task")
            .await,
        rows
    );
    assert_eq!(
        db.tgt_i64("SELECT sum(batches_copied)::bigint FROM __hyperfill.task")
            .await,
        batches
    );

    // status: the same rows; bytes copied + left = total.
    let s = json(
        &db.run(&["status", "--target", "{T}", "--output", "json"])
            .await,
    );
    let h = &s["result"]["hypertables"][0];
    assert_eq!(h["rows_copied"], rows, "{s}");
    assert_eq!(h["batches_copied"], batches);
    assert_eq!(h["bytes_copied"], v["result"]["bytes"]);
    assert_eq!(h["estimated_bytes_left"], 0);
    assert_eq!(h["estimated_bytes_total"], h["bytes_copied"]);
    assert_eq!(
        (h["chunks"].as_i64(), h["done"].as_i64()),
        (Some(6), Some(6))
    );
    let st = db.run(&["status", "--target", "{T}"]).await;
    st.assert_ok()
        .assert_contains(&crate::harness::thousands(rows))
        .assert_contains("compressed batches");

    // verify counts logical rows too.
    let r = db.verify(&["--output", "json"]).await;
    r.assert_ok();
    assert_eq!(json(&r)["result"]["matched"], 6);
    db.cleanup().await;
}

#[tokio::test]
async fn status_bytes_add_up_while_tasks_are_left() {
    let Some(db) = Dbs::new("num_status_bytes").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    db.stage(&["--until", "2024-01-11"]).await.assert_ok();
    // Copy some of it: mark all but 6 tasks done by copying, then re-queue.
    db.copy(&[]).await.assert_ok();
    db.tgt
        .batch_execute(
            "UPDATE __hyperfill.task SET state = 'pending'
             WHERE id IN (SELECT id FROM __hyperfill.task ORDER BY id LIMIT 6)",
        )
        .await
        .unwrap();
    let s = json(
        &db.run(&["status", "--target", "{T}", "--output", "json"])
            .await,
    );
    let h = &s["result"]["hypertables"][0];
    let (copied, left, total) = (
        h["bytes_copied"].as_i64().unwrap(),
        h["estimated_bytes_left"].as_i64().unwrap(),
        h["estimated_bytes_total"].as_i64().unwrap(),
    );
    assert_eq!(copied + left, total, "{s}");
    assert!(left > 0 && copied > 0, "{s}");
    // Only done tasks' figures count: the re-queued ones are left, not copied.
    assert_eq!(
        copied,
        db.tgt_i64("SELECT sum(bytes_copied)::bigint FROM __hyperfill.task WHERE state = 'done'")
            .await
    );
    assert_eq!(
        (h["pending"].as_i64(), h["done"].as_i64()),
        (Some(6), Some(14))
    );
    // The human table has the task columns under a "tasks" heading and
    // decimal units only.
    let r = db.run(&["status", "--target", "{T}"]).await;
    r.assert_ok()
        .assert_contains(" tasks ")
        .assert_contains("total(est)");
    assert!(!r.stdout.contains("iB"), "binary units in {}", r.stdout);
    db.cleanup().await;
}

#[tokio::test]
async fn dry_run_reports_what_the_real_stage_does_against_the_queue() {
    let Some(db) = Dbs::new("num_dry_run_queue").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    // 5 days x 2 space partitions, the 5th day cut at noon.
    db.stage(&["--until", "2024-01-05 12:00+00"])
        .await
        .assert_ok();
    db.copy(&[]).await.assert_ok();

    // A later T: the 2 chunks cut at noon widen, days 6-7 are new (4 chunks),
    // days 1-4 are already staged (8 tasks).
    let later = ["--until", "2024-01-08 00:00+00"];
    let dry = db
        .stage(&[later[0], later[1], "--dry-run", "--output", "json"])
        .await;
    dry.assert_ok();
    let d = json(&dry)["result"].clone();
    assert_eq!(
        (
            d["dry_run"].as_bool(),
            d["staged"].as_i64(),
            d["requeued"].as_i64(),
            d["already_staged"].as_i64()
        ),
        (Some(true), Some(4), Some(2), Some(8)),
        "{d}"
    );
    let tasks = d["tasks"].as_array().expect("the listing is in the JSON");
    assert_eq!(tasks.len(), 14);
    let actions = |a: &str| tasks.iter().filter(|t| t["action"] == a).count();
    assert_eq!(
        (actions("new"), actions("widen"), actions("already staged")),
        (4, 2, 8)
    );
    let widen = tasks.iter().find(|t| t["action"] == "widen").unwrap();
    assert_eq!(
        widen["added_ranges"][0],
        serde_json::json!(["2024-01-05 12:00:00+00", "2024-01-06 00:00:00+00"])
    );
    let warning = d["warnings"][0].as_str().expect("a widening warning");
    assert!(
        warning.contains("[2024-01-05 12:00:00+00, 2024-01-08 00:00:00+00)")
            && warning.contains("dual-writes")
            && warning.contains("widens 2 chunk(s) and adds 4 new chunk(s)"),
        "{warning}"
    );
    assert!(dry.stderr.contains("Warning:"), "{}", dry.stderr);
    assert_eq!(
        db.queue_states().await,
        "done:10",
        "the dry run changed the queue"
    );

    // The human dry run says the same.
    db.stage(&[later[0], later[1], "--dry-run"])
        .await
        .assert_ok()
        .assert_contains("Would stage 4 chunk(s), re-queue 2 chunk(s) with a wider range, leave 8 task(s) already staged:")
        .assert_contains("copies [2024-01-05 12:00:00+00, 2024-01-06 00:00:00+00) again");

    // The real run does what the dry run said.
    let real = db.stage(&[later[0], later[1], "--output", "json"]).await;
    real.assert_ok();
    let r = json(&real)["result"].clone();
    for k in ["staged", "requeued", "already_staged", "estimated_bytes"] {
        assert_eq!(r[k], d[k], "{k}: dry run {d} vs real {r}");
    }
    assert!(r.get("tasks").is_none(), "the real run lists no tasks: {r}");
    assert_eq!(r["warnings"], d["warnings"]);
    assert_eq!(db.queue_states().await, "done:8 pending:6");
    db.cleanup().await;
}

#[tokio::test]
async fn a_bound_without_offset_says_how_it_was_read() {
    let Some(db) = Dbs::new("num_bound_zone").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    let dbname: String = db
        .src
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    db.src
        .batch_execute(&format!(
            "ALTER DATABASE \"{dbname}\" SET TimeZone = 'America/New_York'"
        ))
        .await
        .unwrap();
    let r = db
        .stage(&["--until", "2024-01-05 12:00", "--dry-run"])
        .await;
    r.assert_ok().assert_contains(
        "--until '2024-01-05 12:00' has no UTC offset: it was read in the source server's time \
         zone (America/New_York) as 2024-01-05 17:00:00+00",
    );
    let r = db
        .stage(&[
            "--until",
            "2024-01-05 12:00+00",
            "--dry-run",
            "--output",
            "json",
        ])
        .await;
    r.assert_ok();
    assert!(!r.stderr.contains("no UTC offset"), "{}", r.stderr);
    assert_eq!(json(&r)["result"]["notes"], serde_json::json!([]));
    db.cleanup().await;
}

#[tokio::test]
async fn verify_mismatches_are_in_the_json_with_counts_and_columns() {
    let Some(db) = Dbs::new("num_verify_json").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    db.stage(&["--until", "2024-01-03"]).await.assert_ok();
    db.copy(&[]).await.assert_ok();
    // One row lost and one value changed on the target, in one chunk.
    db.tgt
        .batch_execute(
            "DELETE FROM metrics WHERE time = '2024-01-01 00:00+00' AND device = 1;
             UPDATE metrics SET v = v + 1 WHERE time = '2024-01-01 01:00+00' AND device = 1;",
        )
        .await
        .unwrap();
    let r = db.verify(&["--output", "json"]).await;
    r.assert_code(7);
    let v = json(&r);
    assert_eq!(
        (v["ok"].as_bool(), v["exit_code"].as_i64()),
        (Some(false), Some(7))
    );
    let res = &v["result"];
    assert_eq!(res["mismatched"], 1, "{v}");
    assert_eq!(res["matched"], 3);
    let m = &res["mismatches"][0];
    assert_eq!(m["hypertable"]["name"], "metrics");
    let d = &m["details"];
    assert_eq!(
        d["source_rows"].as_i64().unwrap() - d["target_rows"].as_i64().unwrap(),
        1,
        "{m}"
    );
    let columns: Vec<&str> = d["differences"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["column"].as_str())
        .collect();
    assert!(columns.contains(&"v") && columns.contains(&"time"), "{m}");
    // A second run with nothing left to verify reports the same mismatch.
    let v = json(&db.verify(&["--output", "json"]).await);
    assert_eq!(v["exit_code"], 7);
    assert_eq!(v["result"]["mismatches"][0]["chunk"], m["chunk"]);
    db.cleanup().await;
}

#[tokio::test]
async fn check_without_timescaledb_is_a_finding_with_exit_3() {
    let Some(db) = Dbs::new("num_check_no_ext").await else {
        return;
    };
    db.tgt
        .batch_execute("DROP EXTENSION timescaledb CASCADE")
        .await
        .unwrap();
    let version: String = db
        .src
        .query_one(
            "SELECT extversion::text FROM pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let r = db
        .run(&["check", "--source", "{S}", "--target", "{T}"])
        .await;
    r.assert_code(3)
        .assert_contains(
            "ERROR   [extension-missing] target: the timescaledb extension is not installed",
        )
        .assert_contains(&format!("CREATE EXTENSION timescaledb VERSION '{version}'"))
        .assert_contains("target not installed");
    let r = db
        .run(&[
            "check", "--source", "{S}", "--target", "{T}", "--output", "json",
        ])
        .await;
    r.assert_code(3);
    let v = json(&r);
    let f = &v["result"]["findings"][0];
    assert_eq!(
        (
            f["code"].as_str(),
            f["side"].as_str(),
            f["severity"].as_str()
        ),
        (Some("extension-missing"), Some("target"), Some("error")),
        "{v}"
    );
    db.cleanup().await;
}

const CAGG: &str = "
CREATE MATERIALIZED VIEW metrics_hourly_average_per_device_for_the_operations_dashboard
WITH (timescaledb.continuous) AS
SELECT time_bucket('1 hour', time) AS bucket, device, avg(v) AS v FROM metrics GROUP BY 1, 2
WITH NO DATA;
";

#[tokio::test]
async fn check_and_status_name_a_continuous_aggregate_by_its_view() {
    let Some(db) = Dbs::licensed("num_cagg_names").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.both(CAGG).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    db.src
        .batch_execute(
            "CALL refresh_continuous_aggregate('metrics_hourly_average_per_device_for_the_operations_dashboard', NULL, '2024-01-05')",
        )
        .await
        .unwrap();
    db.tgt
        .batch_execute(
            "SELECT add_continuous_aggregate_policy('metrics_hourly_average_per_device_for_the_operations_dashboard',
                 start_offset => NULL, end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 day')",
        )
        .await
        .unwrap();
    let r = db
        .run(&["check", "--source", "{S}", "--target", "{T}"])
        .await;
    r.assert_contains(
        "on continuous aggregate public.metrics_hourly_average_per_device_for_the_operations_dashboard)",
    );
    assert!(
        !r.all()
            .contains("on \"_timescaledb_internal\".\"_materialized_hypertable_"),
        "{}",
        r.all()
    );

    db.stage(&["--until", "2024-01-05"]).await.assert_ok();
    let r = db.run(&["status", "--target", "{T}"]).await;
    r.assert_ok();
    // Every line of the table has the same width, whatever the names' lengths.
    let table: Vec<&str> = r
        .stdout
        .lines()
        .take_while(|l| !l.starts_with("hyperfill sessions") && !l.starts_with("Rows are"))
        .collect();
    assert_eq!(table.len(), 5, "{}", r.stdout);
    let width = table[1].chars().count();
    for l in &table {
        assert_eq!(
            l.chars().count(),
            width,
            "misaligned line {l:?} in\n{}",
            r.stdout
        );
    }
    assert!(table.iter().any(|l| l.starts_with(
        "public.metrics_hourly_average_per_device_for_the_operations_dashboard (continuous aggregate)"
    )));
    db.cleanup().await;
}
