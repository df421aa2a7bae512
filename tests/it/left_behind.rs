//! Hypertables left behind: a selection with two time types needs two
//! stages; one forgotten must show in `check`, `copy`, `verify` and `status`
//! with the command that stages it, and a bound in the wrong unit is named.

use crate::harness::Dbs;

const SCHEMA: &str = "
CREATE TABLE metrics (time timestamptz NOT NULL, device int NOT NULL, v float8);
SELECT create_hypertable('metrics', by_range('time', INTERVAL '1 day'));
CREATE TABLE counters (time bigint NOT NULL, device int NOT NULL, c bigint);
SELECT create_hypertable('counters', by_range('time', 86400));
INSERT INTO metrics SELECT t, d, d FROM generate_series('2024-01-01'::timestamptz, '2024-01-04 23:59', '1 hour') t, generate_series(1, 2) d;
INSERT INTO counters SELECT t, d, t % 7 FROM generate_series(1704067200, 1704067200 + 4 * 86400 - 1, 3600) t, generate_series(1, 2) d;
";

const LEFT: &str = "LEFT BEHIND: 1 source hypertable(s) or continuous aggregate(s) have chunks but were never staged";
const COMMAND: &str = "--until '<T as bigint>' --filter '^public\\.counters$'";

#[tokio::test]
async fn status_copy_and_verify_list_a_hypertable_no_stage_selected() {
    let Some(db) = Dbs::new("left_behind").await else {
        return;
    };
    db.src.batch_execute(SCHEMA).await.unwrap();
    db.restore_schema_with_pg_dump().await.unwrap();

    db.run(&["check", "--source", "{S}", "--target", "{T}"])
        .await
        .assert_ok()
        .assert_contains("[mixed-time-types]")
        .assert_contains("\"public\".\"counters\" (bigint)");

    // Only the timestamptz hypertable is staged; counters is forgotten.
    db.stage(&["--until", "2024-01-04", "--filter", "^public\\.metrics$"])
        .await
        .assert_ok();
    db.copy(&[])
        .await
        .assert_ok()
        .assert_contains(LEFT)
        .assert_contains("\"public\".\"counters\": 4 chunk(s), time column bigint")
        .assert_contains(COMMAND);
    db.verify(&[])
        .await
        .assert_ok()
        .assert_contains(LEFT)
        .assert_contains(COMMAND);
    db.run(&["status", "--target", "{T}"])
        .await
        .assert_ok()
        .assert_contains(LEFT)
        .assert_contains(COMMAND);
    let json = db
        .run(&["status", "--target", "{T}", "--output", "json"])
        .await;
    json.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        v["result"]["left_behind"][0]["hypertable"]["name"], "counters",
        "{}",
        json.stdout
    );

    // Staged with T in milliseconds for a column in seconds: every chunk is
    // selected, and stage says so.
    db.stage(&[
        "--until",
        "1704326400000",
        "--filter",
        "^public\\.counters$",
    ])
    .await
    .assert_ok()
    .assert_contains(
        "Warning: --until 1704326400000 is far past the data of \"public\".\"counters\"",
    )
    .assert_contains(
        "its 4 chunk(s) cover [1704067200, 1704412800) (bigint), so every one of them is selected",
    );
    let status = db.run(&["status", "--target", "{T}"]).await;
    status.assert_ok();
    assert!(!status.stdout.contains("LEFT BEHIND"), "{}", status.stdout);
    db.cleanup().await;
}
