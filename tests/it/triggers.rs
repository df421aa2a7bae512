//! Triggers and foreign keys on the target during a backfill: one rule for
//! every path (plain chunks, compressed batches, rows sent through the
//! hypertable, hypertables with or without a continuous aggregate): copied
//! rows are loaded as pg_restore loads data, user triggers do not fire and
//! foreign keys are not checked.

use crate::harness::Dbs;
use crate::harness::{each_statement as each, fingerprint};

const SCHEMA: &str = "
CREATE TABLE devices (id int PRIMARY KEY);
INSERT INTO devices SELECT generate_series(1, 3);
CREATE TABLE audit (n bigint NOT NULL);
INSERT INTO audit VALUES (0);
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN RAISE EXCEPTION 'trigger fired on %', TG_TABLE_NAME; END$$;
CREATE FUNCTION count_rows() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN UPDATE audit SET n = n + 1; RETURN NULL; END$$;

CREATE TABLE metrics (time timestamptz NOT NULL, device int NOT NULL REFERENCES devices (id), v float8);
SELECT create_hypertable('metrics', by_range('time', INTERVAL '1 day'));
CREATE TABLE counters (time bigint NOT NULL, device int NOT NULL REFERENCES devices (id), c bigint);
SELECT create_hypertable('counters', by_range('time', 86400));
";

const LICENSED: &str = "
ALTER TABLE metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'device',
                         timescaledb.compress_orderby = 'time');
CREATE MATERIALIZED VIEW metrics_hourly WITH (timescaledb.continuous) AS
    SELECT time_bucket('1 hour', time) AS bucket, device, count(*) AS n
    FROM metrics GROUP BY 1, 2 WITH NO DATA;
";

/// Days 1-2 of metrics compressed (day 2 partial), day 3 plain; counters
/// (seconds since the epoch) plain. Triggers are created after the data,
/// so the source's rows never met them.
const DATA: &str = "
INSERT INTO metrics SELECT t, d, d * 1.5 FROM generate_series('2024-01-01'::timestamptz, '2024-01-03 23:59', '15 min') t, generate_series(1, 3) d;
INSERT INTO counters SELECT t, d, t % 97 FROM generate_series(1704067200, 1704067200 + 3 * 86400 - 1, 600) t, generate_series(1, 3) d;
";

const COMPRESS: &str = "
SELECT compress_chunk(c) FROM show_chunks('metrics', older_than => '2024-01-03'::timestamptz) c;
INSERT INTO metrics VALUES ('2024-01-02 12:05+00', 2, 9.5);
CALL refresh_continuous_aggregate('metrics_hourly', NULL, '2024-01-02');
";

const TRIGGERS: &str = "
CREATE TRIGGER refuse BEFORE INSERT ON metrics FOR EACH ROW EXECUTE FUNCTION refuse();
CREATE TRIGGER refuse BEFORE INSERT ON counters FOR EACH ROW EXECUTE FUNCTION refuse();
CREATE TRIGGER audit AFTER INSERT ON metrics FOR EACH ROW EXECUTE FUNCTION count_rows();
CREATE TRIGGER audit AFTER INSERT ON counters FOR EACH ROW EXECUTE FUNCTION count_rows();
";

/// After the copy: both tables equal on both sides, no user trigger fired
/// on a copied row, and every chunk's triggers enabled again.
async fn assert_loaded_as_restored(db: &Dbs) {
    for t in ["metrics", "counters"] {
        assert_eq!(
            fingerprint(&db.src, t).await,
            fingerprint(&db.tgt, t).await,
            "{t}"
        );
    }
    assert_eq!(
        db.tgt_i64("SELECT n FROM audit").await,
        0,
        "a trigger fired"
    );
    assert_eq!(triggers_left_disabled(&db.tgt).await, 0);
}

/// Chunks of metrics and counters whose user triggers are not all enabled
/// as created (O) after the copy.
async fn triggers_left_disabled(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_trigger t
         WHERE t.tgrelid IN (SELECT show_chunks('metrics') UNION ALL SELECT show_chunks('counters'))
           AND NOT t.tgisinternal AND t.tgenabled <> 'O'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

async fn set_up(db: &Dbs, licensed: bool, as_role: Option<&str>) {
    let mut schema = SCHEMA.to_string();
    if licensed {
        schema.push_str(LICENSED);
    }
    let data = if licensed {
        format!("{DATA}{COMPRESS}")
    } else {
        DATA.to_string()
    };
    match as_role {
        Some(role) => {
            db.src
                .batch_execute(&format!("SET ROLE {role}; {schema}; RESET ROLE"))
                .await
                .unwrap();
            each(&db.src, &format!("SET ROLE {role};\n{data}\nRESET ROLE;\n")).await;
            db.src
                .batch_execute(&format!("SET ROLE {role}; {TRIGGERS}; RESET ROLE"))
                .await
                .unwrap();
        }
        None => {
            db.src.batch_execute(&schema).await.unwrap();
            each(&db.src, &data).await;
            db.src.batch_execute(TRIGGERS).await.unwrap();
        }
    }
}

#[tokio::test]
async fn copy_does_not_fire_user_triggers_or_check_foreign_keys_on_any_path() {
    let Some(db) = Dbs::licensed("trig_replica").await else {
        return;
    };
    set_up(&db, true, None).await;
    db.restore_schema_with_pg_dump().await.unwrap();
    // A row the copied data refers to is gone on the target: pg_restore
    // would load the rows all the same (constraints come after the data).
    db.tgt
        .batch_execute("DELETE FROM devices WHERE id = 3")
        .await
        .unwrap();
    db.stage(&["--until", "2024-01-04", "--filter", "metrics"])
        .await
        .assert_ok();
    db.stage(&["--until", "1704326400", "--filter", "^public\\.counters$"])
        .await
        .assert_ok();
    db.copy(&[]).await.assert_ok().assert_contains("0 failed");
    assert_loaded_as_restored(&db).await;
    // The triggers are there and act on new rows.
    assert!(db
        .tgt
        .batch_execute("INSERT INTO counters VALUES (1704326400, 1, 1)")
        .await
        .is_err());
    db.verify(&[]).await.assert_ok();
    db.cleanup().await;
}

#[tokio::test]
async fn copy_as_an_owner_without_the_replica_role_disables_chunk_triggers_the_same_way() {
    let Some(db) = Dbs::licensed("trig_owner").await else {
        return;
    };
    let role = "hf_trig_owner";
    for c in [&db.src, &db.tgt] {
        c.batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT CREATE ON DATABASE {db} TO {role};
             GRANT ALL ON SCHEMA public TO {role};",
            db = c
                .query_one("SELECT quote_ident(current_database())", &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        ))
        .await
        .unwrap();
    }
    set_up(&db, true, Some(role)).await;
    // The target's schema as that role, the way the source has it.
    db.tgt
        .batch_execute(&format!(
            "SET ROLE {role}; {SCHEMA}; {LICENSED}; {TRIGGERS}; RESET ROLE"
        ))
        .await
        .unwrap();
    let as_owner = db.target_url.replacen("postgres@", &format!("{role}@"), 1);
    for args in [
        vec!["--until", "2024-01-04", "--filter", "metrics"],
        vec!["--until", "1704326400", "--filter", "^public\\.counters$"],
    ] {
        let mut a = vec!["stage", "--source", "{S}", "--target", &as_owner];
        a.extend(args);
        db.run(&a).await.assert_ok();
    }
    db.run(&["copy", "--source", "{S}", "--target", &as_owner])
        .await
        .assert_ok()
        .assert_contains("0 failed");
    assert_loaded_as_restored(&db).await;
    db.cleanup().await;
}
