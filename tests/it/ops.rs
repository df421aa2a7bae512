//! Operator experience: the `check` preflight, machine-readable output,
//! `--max-rate`, completions and the man page.

use std::time::Instant;

use crate::harness::{bin, Dbs};
use crate::stage::{METRICS, METRICS_DATA};

fn findings(json: &serde_json::Value) -> Vec<(String, String, String)> {
    json["result"]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap_or_default().to_string(),
                f["code"].as_str().unwrap_or_default().to_string(),
                f["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn check_json(db: &Dbs, target: &str) -> (i32, serde_json::Value) {
    let r = db
        .run(&[
            "check", "--source", "{S}", "--target", target, "--output", "json",
        ])
        .await;
    let v: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.all()));
    (r.code, v)
}

async fn server_version(c: &tokio_postgres::Client) -> (String, i32) {
    let row = c
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn check_reports_both_postgres_versions_and_a_major_change() {
    let Some(db) = Dbs::new("check_majors").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    let (sv, sm) = server_version(&db.src).await;
    let (tv, tm) = server_version(&db.tgt).await;
    let r = db
        .run(&["check", "--source", "{S}", "--target", "{T}"])
        .await;
    r.assert_ok()
        .assert_contains(&format!("on PostgreSQL {sv}, target"))
        .assert_contains(&format!("on PostgreSQL {tv};"));
    let (_, v) = check_json(&db, "{T}").await;
    assert_eq!(v["result"]["source_postgres"], sv.as_str());
    assert_eq!(v["result"]["target_postgres"], tv.as_str());
    let noted = findings(&v).iter().any(|f| f.1 == "postgres-majors");
    assert_eq!(
        noted,
        sm != tm,
        "postgres-majors note when {sm} -> {tm}: {v}"
    );
    if sm != tm {
        r.assert_contains(&format!(
            "the source runs PostgreSQL {sv} and the target PostgreSQL {tv}: supported"
        ));
    }
    db.cleanup().await;
}

#[tokio::test]
async fn check_passes_on_a_ready_pair_and_reports_size() {
    let Some(db) = Dbs::new("check_ready").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    let r = db
        .run(&["check", "--source", "{S}", "--target", "{T}"])
        .await;
    r.assert_ok().assert_contains("Ready to stage: no errors");
    let (code, v) = check_json(&db, "{T}").await;
    assert_eq!(code, 0);
    assert_eq!(v["ok"], true);
    assert!(v["result"]["estimated_bytes"].as_i64().unwrap() > 0);
    assert!(findings(&v).iter().all(|f| f.0 != "error"), "{v}");
    assert!(!db.queue_exists().await, "check changed the target");
    db.cleanup().await;
}

#[tokio::test]
async fn check_reports_schema_problems_with_fixes_and_exits_3() {
    let Some(db) = Dbs::new("check_schema").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src
        .batch_execute(
            "CREATE TABLE only_src (time timestamptz NOT NULL, v int);
             SELECT create_hypertable('only_src', by_range('time', INTERVAL '1 day'));",
        )
        .await
        .unwrap();
    db.tgt
        .batch_execute("ALTER TABLE metrics ADD COLUMN extra int")
        .await
        .unwrap();
    // The target's metadata copied from the source (a dump that included it).
    let uuid: String = db
        .src
        .query_one(
            "SELECT value FROM _timescaledb_catalog.metadata WHERE key = 'uuid'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    db.tgt
        .execute(
            "UPDATE _timescaledb_catalog.metadata SET value = $1 WHERE key = 'uuid'",
            &[&uuid],
        )
        .await
        .unwrap();
    let r = db
        .run(&["check", "--source", "{S}", "--target", "{T}"])
        .await;
    r.assert_code(3)
        .assert_contains(
            "[missing-hypertable] target: \"public\".\"only_src\" does not exist on the target",
        )
        .assert_contains("column \"extra\" (integer) exists on the target but not on the source")
        .assert_contains("[metadata]")
        .assert_contains("fix:")
        .assert_contains("Not ready: 2 error(s)");
    let (code, v) = check_json(&db, "{T}").await;
    assert_eq!(code, 3);
    assert_eq!(v["ok"], false);
    let codes: Vec<String> = findings(&v).into_iter().map(|f| f.1).collect();
    for c in ["missing-hypertable", "columns", "metadata"] {
        assert!(codes.iter().any(|x| x == c), "{c} missing in {codes:?}");
    }
    db.cleanup().await;
}

#[tokio::test]
async fn check_reports_extension_schema_tablespaces_and_privileges() {
    let Some(db) = Dbs::new("check_env").await else {
        return;
    };
    // Target: timescaledb in its own schema, not public.
    db.tgt
        .batch_execute("DROP EXTENSION timescaledb; CREATE SCHEMA tsdb")
        .await
        .unwrap();
    // CREATE EXTENSION must be the first command of its session.
    crate::harness::connect(&db.target_url)
        .await
        .unwrap()
        .batch_execute("CREATE EXTENSION timescaledb SCHEMA tsdb")
        .await
        .unwrap();
    db.src.batch_execute(METRICS).await.unwrap();
    db.tgt
        .batch_execute(
            &METRICS
                .replace("create_hypertable", "tsdb.create_hypertable")
                .replace("add_dimension", "tsdb.add_dimension")
                .replace("by_range", "tsdb.by_range")
                .replace("by_hash", "tsdb.by_hash"),
        )
        .await
        .unwrap();
    // Source: a hypertable in a custom tablespace, in a directory owned by
    // the server's OS user (next to its data directory).
    let data_dir: String = db
        .src
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    let ts_dir = std::path::Path::new(&data_dir)
        .parent()
        .expect("data dir parent")
        .join("ts_check_env");
    let _ = std::fs::remove_dir_all(&ts_dir);
    std::fs::create_dir_all(&ts_dir).expect("tablespace dir");
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&data_dir).expect("data dir");
        std::os::unix::fs::chown(&ts_dir, Some(meta.uid()), Some(meta.gid())).expect("chown");
    }
    db.src
        .batch_execute("DROP TABLESPACE IF EXISTS hf_check_ts")
        .await
        .unwrap();
    db.src
        .batch_execute(&format!(
            "CREATE TABLESPACE hf_check_ts LOCATION '{}'",
            ts_dir.display()
        ))
        .await
        .unwrap();
    db.src
        .batch_execute(
            "CREATE TABLE spaced (time timestamptz NOT NULL, v int) TABLESPACE hf_check_ts;
             SELECT create_hypertable('spaced', by_range('time', INTERVAL '1 day'));",
        )
        .await
        .unwrap();
    db.tgt
        .batch_execute(
            "CREATE TABLE spaced (time timestamptz NOT NULL, v int);
             SELECT tsdb.create_hypertable('spaced', tsdb.by_range('time', INTERVAL '1 day'));
             DO $$ BEGIN CREATE ROLE hf_check_nobody LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
        )
        .await
        .unwrap();
    let r = db
        .run(&["check", "--source", "{S}", "--target", "{T}"])
        .await;
    r.assert_ok()
        .assert_contains(
            "[extension-schema] target: the timescaledb extension is installed in schema \"tsdb\"",
        )
        .assert_contains(
            "[tablespaces] source: hypertables or chunks use custom tablespaces: hf_check_ts",
        );
    // A role with no rights on the target.
    let nobody = db.target_url.replacen("postgres@", "hf_check_nobody@", 1);
    let r = db
        .run(&["check", "--source", "{S}", "--target", &nobody])
        .await;
    r.assert_code(3)
        .assert_contains("[privilege] target: the role cannot create hyperfill's queue schema")
        .assert_contains("the role lacks SELECT, INSERT, DELETE on \"public\".\"metrics\"")
        .assert_contains("[ownership]");
    db.src.batch_execute("DROP TABLE spaced").await.unwrap();
    db.src
        .batch_execute("DROP TABLESPACE hf_check_ts")
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&ts_dir);
    db.cleanup().await;
}

#[tokio::test]
async fn check_reports_scheduled_jobs_and_compression_settings_on_licensed_servers() {
    let Some(db) = Dbs::licensed("check_licensed").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src
        .batch_execute("ALTER TABLE metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'device')")
        .await
        .unwrap();
    db.tgt
        .batch_execute(
            "ALTER TABLE metrics SET (timescaledb.compress, timescaledb.compress_segmentby = '');
             SELECT add_compression_policy('metrics', INTERVAL '7 days');",
        )
        .await
        .unwrap();
    let r = db
        .run(&["check", "--source", "{S}", "--target", "{T}"])
        .await;
    r.assert_code(3)
        .assert_contains("[compression-settings]")
        .assert_contains("timescaledb.compress_segmentby = '\"device\"'")
        .assert_contains("[scheduled-job] target: background job")
        .assert_contains("scheduled => false");
    db.cleanup().await;
}

#[tokio::test]
async fn every_command_has_a_json_result() {
    let Some(db) = Dbs::new("ops_json").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    let parse = |r: &crate::harness::Run| -> serde_json::Value {
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", r.all()))
    };
    let r = db
        .stage(&["--until", "2024-01-03", "--output", "json"])
        .await;
    r.assert_ok();
    let v = parse(&r);
    assert_eq!(
        (v["command"].as_str(), v["ok"].as_bool()),
        (Some("stage"), Some(true))
    );
    assert_eq!(v["result"]["staged"], 4);
    // Human lines go to stderr in JSON mode.
    assert!(r.stderr.contains("Staged 4 chunk(s)"), "{}", r.stderr);

    let v = parse(&db.copy(&["--output", "json"]).await);
    assert_eq!(v["result"]["copied"], 4);
    assert_eq!(v["result"]["rows"], 4 * 2 * 144);
    let v = parse(&db.verify(&["--output", "json"]).await);
    assert_eq!(v["result"]["matched"], 4);
    let v = parse(
        &db.run(&["status", "--target", "{T}", "--output", "json"])
            .await,
    );
    assert_eq!(v["result"]["hypertables"][0]["done"], 4);
    let v = parse(
        &db.run(&["clean", "--target", "{T}", "--output", "json"])
            .await,
    );
    assert_eq!(v["result"]["removed"], true);

    // A failure is a JSON document too, with the error and the exit code.
    let r = db.copy(&["--output", "json"]).await;
    r.assert_code(5);
    let v = parse(&r);
    assert_eq!(
        (v["ok"].as_bool(), v["exit_code"].as_i64()),
        (Some(false), Some(5))
    );
    assert!(v["error"].as_str().unwrap().contains("no hyperfill queue"));
    db.cleanup().await;
}

#[tokio::test]
async fn copy_max_rate_caps_the_throughput() {
    let Some(db) = Dbs::new("ops_max_rate").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    db.stage(&["--until", "2024-01-11"]).await.assert_ok();
    // About 200 kB of COPY data at 50 kB/s cannot take less than ~3 s, however
    // fast the machine (a lower bound only: this cannot flake by being slow).
    let clock = Instant::now();
    let r = db
        .copy(&["-p", "4", "--max-rate", "50kB", "--output", "json"])
        .await;
    r.assert_ok();
    let elapsed = clock.elapsed().as_secs_f64();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let bytes = v["result"]["bytes"].as_f64().unwrap();
    assert!(
        bytes > 150e3,
        "the dataset is smaller than planned: {bytes}"
    );
    // Only the very first buffer goes out without waiting (one chunk, ~10 kB
    // here): the workers share one clock of reserved slots.
    let floor = (bytes - 64.0 * 1024.0).max(0.0) / 50e3;
    assert!(
        elapsed >= floor * 0.95,
        "copied {bytes} bytes in {elapsed:.2}s, faster than 500 kB/s allows ({floor:.2}s)"
    );
    db.run(&[
        "copy",
        "--source",
        "{S}",
        "--target",
        "{T}",
        "--max-rate",
        "fast",
    ])
    .await
    .assert_code(2)
    .assert_contains("use bytes per second");
    db.cleanup().await;
}

#[tokio::test]
async fn completions_and_man_page_are_generated() {
    let out = bin()
        .args(["completions", "bash"])
        .output()
        .await
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "stage",
        "copy",
        "verify",
        "refresh-caggs",
        "status",
        "check",
        "clean",
    ] {
        assert!(text.contains(cmd), "bash completion lacks {cmd}");
    }
    let out = bin().arg("man").output().await.expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(".TH hyperfill") && text.contains("stage"),
        "{text}"
    );
}
