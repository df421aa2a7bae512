//! Compressed chunks (need the Timescale license): copied as batches, the
//! target chunk ending in the source's compression state.

use crate::harness::Dbs;

pub const SCHEMA: &str = "
CREATE TABLE cm (time timestamptz NOT NULL, device int NOT NULL, v float8, note text);
SELECT create_hypertable('cm', by_range('time', INTERVAL '1 day'));
ALTER TABLE cm SET (timescaledb.compress, timescaledb.compress_segmentby = 'device',
                    timescaledb.compress_orderby = 'time DESC');
";

pub const DATA: &str = "
INSERT INTO cm SELECT t, d, d * 0.5 + extract(epoch from t) / 1e9, 'n' || d
FROM generate_series('2024-01-01'::timestamptz, '2024-01-06 23:59', '5 min') t, generate_series(1, 3) d;
";

/// Compress the chunks of days 1-4, make day 2 partial (a row written after
/// compression), leave days 5-6 uncompressed.
pub const COMPRESS: &str = "
SELECT compress_chunk(c) FROM show_chunks('cm', older_than => '2024-01-05'::timestamptz) c;
INSERT INTO cm VALUES ('2024-01-02 12:02:30+00', 7, 1.25, 'late');
";

/// Per chunk of `cm`, oldest first: name and status bits (1 compressed,
/// 8 partial), through functions and views every release has.
const STATES: &str = "
SELECT c.chunk_name::text,
       _timescaledb_functions.chunk_status(format('%I.%I', c.chunk_schema, c.chunk_name)::regclass)
FROM timescaledb_information.chunks c
WHERE c.hypertable_name = 'cm'
ORDER BY c.range_start";

/// The compressed relation of each chunk of `cm`, on every release: from
/// 2.29 only `compression_settings.compress_relid` leads to it; before,
/// `chunk.compressed_chunk_id`. Read through `to_jsonb` so that one
/// statement parses whichever columns the catalog has.
const COMPRESSED_RELATIONS: &str = "
WITH ch AS (SELECT to_jsonb(c) AS j FROM _timescaledb_catalog.chunk c)
SELECT coalesce(
         (SELECT (to_jsonb(s) ->> 'compress_relid')::regclass
          FROM _timescaledb_catalog.compression_settings s
          WHERE s.relid = format('%I.%I', i.chunk_schema, i.chunk_name)::regclass),
         (SELECT to_regclass(quote_ident(cc.j ->> 'schema_name') || '.' || quote_ident(cc.j ->> 'table_name'))
          FROM ch c JOIN ch cc ON (cc.j ->> 'id')::int = (c.j ->> 'compressed_chunk_id')::int
          WHERE c.j ->> 'schema_name' = i.chunk_schema AND c.j ->> 'table_name' = i.chunk_name))::text
FROM timescaledb_information.chunks i
WHERE i.hypertable_name = $1";

pub async fn statuses(c: &tokio_postgres::Client) -> Vec<i32> {
    c.query(STATES, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(1))
        .collect()
}

/// Compressed batches of all chunks of `cm`.
pub async fn batch_count(c: &tokio_postgres::Client) -> i64 {
    batches_of(c, "cm").await
}

/// The compressed batches (rows of the compressed chunk tables) of a
/// hypertable, on any supported release.
pub async fn batches_of(c: &tokio_postgres::Client, hypertable: &str) -> i64 {
    let mut n = 0;
    for r in c.query(COMPRESSED_RELATIONS, &[&hypertable]).await.unwrap() {
        if let Some(rel) = r.get::<_, Option<String>>(0) {
            n += crate::harness::scalar(c, &format!("SELECT count(*) FROM {rel}")).await;
        }
    }
    n
}

pub async fn fingerprint(c: &tokio_postgres::Client, filter: &str) -> (i64, String) {
    let row = c
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(r, ',' ORDER BY r)), '') FROM
                 (SELECT (time, device, v, note)::text AS r FROM cm {filter}) x"
            ),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn assert_same(db: &Dbs) {
    assert_eq!(
        fingerprint(&db.src, "").await,
        fingerprint(&db.tgt, "").await,
        "rows differ"
    );
    assert_eq!(
        statuses(&db.src).await,
        statuses(&db.tgt).await,
        "chunk compression states differ"
    );
    let batches = batch_count(&db.src).await;
    assert_eq!(
        batches,
        batch_count(&db.tgt).await,
        "compressed batch counts differ"
    );
    if statuses(&db.src).await.iter().any(|s| s & 1 == 1) {
        assert!(batches > 0, "compressed chunks but no batches found");
    }
}

/// Licensed databases with `SCHEMA` on both sides and the source's `DATA`
/// compressed as `COMPRESS` says (`None`: skipped, loudly).
async fn compressed_on_the_source(name: &str) -> Option<Dbs> {
    let db = Dbs::licensed(name).await?;
    db.both(SCHEMA).await.unwrap();
    db.src.batch_execute(DATA).await.unwrap();
    db.src.batch_execute(COMPRESS).await.unwrap();
    Some(db)
}

#[tokio::test]
async fn compressed_chunks_restored_by_pg_dump_get_the_batches_and_status() {
    let Some(db) = Dbs::licensed("cz_pg_dump").await else {
        return;
    };
    db.src.batch_execute(SCHEMA).await.unwrap();
    db.src.batch_execute(DATA).await.unwrap();
    db.src.batch_execute(COMPRESS).await.unwrap();
    db.restore_schema_with_pg_dump().await.unwrap();
    db.stage(&["--until", "2024-01-07"])
        .await
        .assert_ok()
        .assert_contains("Staged 6 chunk(s)");
    db.copy(&[]).await.assert_ok();
    assert_eq!(statuses(&db.src).await, vec![1, 9, 1, 1, 0, 0]);
    assert_same(&db).await;
    db.verify(&[]).await.assert_ok().assert_contains("6 match");
    db.cleanup().await;
}

#[tokio::test]
async fn compressed_on_the_source_only_creates_compressed_target_chunks_at_stage() {
    let Some(db) = compressed_on_the_source("cz_source_only").await else {
        return;
    };
    db.stage(&["--until", "2024-01-07"]).await.assert_ok();
    // Stage created the target chunks, the compressed ones compressed (empty).
    assert_eq!(statuses(&db.tgt).await, vec![1, 1, 1, 1, 0, 0]);
    db.copy(&[]).await.assert_ok();
    assert_same(&db).await;
    db.verify(&[]).await.assert_ok();
    db.cleanup().await;
}

#[tokio::test]
async fn compressed_or_decompressed_on_the_source_after_the_target_was_restored() {
    let Some(db) = Dbs::licensed("cz_changed_after").await else {
        return;
    };
    db.src.batch_execute(SCHEMA).await.unwrap();
    db.src.batch_execute(DATA).await.unwrap();
    db.src.batch_execute(COMPRESS).await.unwrap();
    db.restore_schema_with_pg_dump().await.unwrap();
    // After the restore: day 5 gets compressed, day 3 decompressed.
    db.src
        .batch_execute(
            "SELECT compress_chunk(c) FROM show_chunks('cm') c WHERE c IN (SELECT show_chunks('cm', newer_than => '2024-01-05'::timestamptz, older_than => '2024-01-06'::timestamptz));
             SELECT decompress_chunk(c) FROM show_chunks('cm') c WHERE c IN (SELECT show_chunks('cm', newer_than => '2024-01-03'::timestamptz, older_than => '2024-01-04'::timestamptz));",
        )
        .await
        .unwrap();
    assert_eq!(statuses(&db.src).await, vec![1, 9, 0, 1, 1, 0]);
    db.stage(&["--until", "2024-01-07"]).await.assert_ok();
    db.copy(&[]).await.assert_ok();
    assert_same(&db).await;
    db.verify(&[]).await.assert_ok();
    db.cleanup().await;
}

#[tokio::test]
async fn compressed_until_inside_a_compressed_chunk_keeps_dual_writes_and_compression() {
    let Some(db) = compressed_on_the_source("cz_until_inside").await else {
        return;
    };
    // Dual-writes from T = 2024-01-03 12:00 on, also compressed on the target.
    db.tgt
        .batch_execute(
            "INSERT INTO cm SELECT t, d, d * 0.5 + extract(epoch from t) / 1e9, 'n' || d
             FROM generate_series('2024-01-03 12:00'::timestamptz, '2024-01-06 23:59', '5 min') t, generate_series(1, 3) d;
             SELECT compress_chunk(c) FROM show_chunks('cm', older_than => '2024-01-05'::timestamptz) c;",
        )
        .await
        .unwrap();
    let above = "WHERE time >= '2024-01-03 12:00+00'";
    let before_above = fingerprint(&db.tgt, above).await;
    db.stage(&["--until", "2024-01-03 12:00+00"])
        .await
        .assert_ok();
    db.copy(&[]).await.assert_ok();
    let below = "WHERE time < '2024-01-03 12:00+00'";
    assert_eq!(
        fingerprint(&db.src, below).await,
        fingerprint(&db.tgt, below).await
    );
    assert_eq!(
        fingerprint(&db.tgt, above).await,
        before_above,
        "dual-written rows >= T changed"
    );
    let st = statuses(&db.tgt).await;
    assert_eq!(
        st[2] & 1,
        1,
        "the boundary chunk must stay compressed: {st:?}"
    );
    db.verify(&[]).await.assert_ok();
    db.cleanup().await;
}

#[tokio::test]
async fn compressed_rerun_into_chunks_that_already_hold_batches_never_duplicates() {
    let Some(db) = compressed_on_the_source("cz_rerun").await else {
        return;
    };
    // The target already holds data for these chunks, compressed there.
    db.tgt.batch_execute(DATA).await.unwrap();
    db.tgt
        .batch_execute("SELECT compress_chunk(c) FROM show_chunks('cm') c")
        .await
        .unwrap();
    db.stage(&["--until", "2024-01-07"]).await.assert_ok();
    db.copy(&[]).await.assert_ok();
    assert_same(&db).await;
    // Copy everything once more from a fresh queue.
    db.run(&["clean", "--target", "{T}"]).await.assert_ok();
    db.stage(&["--until", "2024-01-07"]).await.assert_ok();
    db.copy(&[]).await.assert_ok();
    assert_same(&db).await;
    db.verify(&[]).await.assert_ok();
    db.cleanup().await;
}

#[tokio::test]
async fn compressed_settings_that_differ_are_refused_at_stage_with_the_fix() {
    let Some(db) = Dbs::licensed("cz_settings").await else {
        return;
    };
    db.src.batch_execute(SCHEMA).await.unwrap();
    db.tgt
        .batch_execute(&SCHEMA.replace(
            "compress_segmentby = 'device'",
            "compress_segmentby = 'note'",
        ))
        .await
        .unwrap();
    db.src.batch_execute(DATA).await.unwrap();
    db.src.batch_execute(COMPRESS).await.unwrap();
    let r = db.stage(&["--until", "2024-01-07"]).await;
    r.assert_code(3)
        .assert_contains("compression settings differ")
        .assert_contains("timescaledb.compress_segmentby = '\"device\"'")
        .assert_contains("ALTER TABLE \"public\".\"cm\" SET (timescaledb.compress");
    assert!(!db.queue_exists().await);
    assert_eq!(db.target_chunk_count().await, 0);
    db.cleanup().await;
}

/// Per task, oldest first: the source chunk and the compressed relation
/// stage recorded for it.
async fn compressed_relations_in_queue(db: &Dbs) -> Vec<(String, Option<String>)> {
    crate::harness::pairs(
        &db.tgt,
        "SELECT chunk_name, source_compressed_name FROM __hyperfill.task ORDER BY range_start",
    )
    .await
}

#[tokio::test]
async fn compressed_batches_come_from_the_chunks_own_relation_whatever_the_queue_guessed() {
    let Some(db) = compressed_on_the_source("cz_guess").await else {
        return;
    };
    db.stage(&["--until", "2024-01-07"]).await.assert_ok();
    // Stage recorded the compressed relation of each compressed chunk (days
    // 1-4), and none for the others.
    let queued = compressed_relations_in_queue(&db).await;
    assert_eq!(
        queued.iter().map(|(_, c)| c.is_some()).collect::<Vec<_>>(),
        vec![true, true, true, true, false, false],
        "{queued:?}"
    );
    // Wrong guesses: day 1's names day 2's batches (a relation that exists),
    // day 3's a relation that does not; day 4 is compressed again on the
    // source (a new relation before 2.29, the same name from 2.29 on).
    let day2 = queued[1].1.clone().unwrap();
    db.tgt
        .execute(
            "UPDATE __hyperfill.task SET source_compressed_name = $1 WHERE chunk_name = $2",
            &[&day2, &queued[0].0],
        )
        .await
        .unwrap();
    db.tgt
        .execute(
            "UPDATE __hyperfill.task SET source_compressed_name = 'no_such_relation' WHERE chunk_name = $1",
            &[&queued[2].0],
        )
        .await
        .unwrap();
    db.src
        .batch_execute(
            "SELECT decompress_chunk(c) FROM show_chunks('cm') c WHERE c IN (SELECT show_chunks('cm', newer_than => '2024-01-04'::timestamptz, older_than => '2024-01-05'::timestamptz));
             SELECT compress_chunk(c) FROM show_chunks('cm') c WHERE c IN (SELECT show_chunks('cm', newer_than => '2024-01-04'::timestamptz, older_than => '2024-01-05'::timestamptz));",
        )
        .await
        .unwrap();
    db.copy(&[]).await.assert_ok();
    assert_same(&db).await;
    db.verify(&[]).await.assert_ok().assert_contains("6 match");
    db.cleanup().await;
}
