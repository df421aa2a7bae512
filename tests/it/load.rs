//! Faults under load (issue 10, point 5): kill -9 at random points, backends
//! terminated mid-COPY, a target restart, concurrent copy processes, and a
//! dual-writer on the target. Each test prints its figures on stderr
//! (`FAULT FIGURES ...`; run with --nocapture to read them).

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::spawned::{copy_command, Started};
use crate::harness::{connect, Dbs};

/// A small xorshift generator: random points without a dependency. The seed
/// is printed so that a failing trial can be replayed
/// (`HYPERFILL_FAULT_SEED`).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("HYPERFILL_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(42)
            })
            | 1;
        eprintln!("FAULT FIGURES seed {seed} (HYPERFILL_FAULT_SEED={seed} replays it)");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

const MIXED: &str = "
CREATE TABLE m (time timestamptz NOT NULL, device int NOT NULL, v float8, note text);
SELECT create_hypertable('m', by_range('time', INTERVAL '1 day'));
ALTER TABLE m SET (timescaledb.compress, timescaledb.compress_segmentby = 'device',
                   timescaledb.compress_orderby = 'time DESC');
";

/// 16 days, 8 of them compressed (one partial), 8 plain.
const MIXED_DATA: &str = "
INSERT INTO m SELECT t, d, random(), repeat('y', 30)
FROM generate_series('2024-01-01'::timestamptz, '2024-01-16 23:59:59', '30 s') t, generate_series(1, 3) d;
SELECT compress_chunk(c) FROM show_chunks('m', older_than => '2024-01-09'::timestamptz) c;
INSERT INTO m VALUES ('2024-01-03 12:00:01+00', 9, 0.5, 'late');
";

/// Mixed compressed and plain data, staged: 16 tasks.
async fn mixed(name: &str) -> Option<Dbs> {
    let db = Dbs::licensed(name).await?;
    db.both(MIXED).await.unwrap();
    db.src.batch_execute(MIXED_DATA).await.unwrap();
    db.stage(&["--until", "2024-02-01"])
        .await
        .assert_ok()
        .assert_contains("Staged 16 chunk(s)");
    Some(db)
}

/// Rows on both sides: (target count, target distinct, source count).
async fn counts(db: &Dbs, table: &str, key: &str) -> (i64, i64, i64) {
    (
        db.tgt_i64(&format!("SELECT count(*) FROM {table}")).await,
        db.tgt_i64(&format!("SELECT count(DISTINCT ({key})) FROM {table}"))
            .await,
        db.src_i64(&format!("SELECT count(*) FROM {table}")).await,
    )
}

#[track_caller]
fn assert_same(what: &str, (tgt, distinct, src): (i64, i64, i64)) {
    assert_eq!(
        tgt, src,
        "{what}: {tgt} rows on the target, {src} on the source"
    );
    assert_eq!(distinct, tgt, "{what}: {} duplicated rows", tgt - distinct);
}

/// Every task pending again, as if freshly staged (the target keeps its
/// rows: the next copy replaces them).
async fn requeue_all(db: &Dbs) {
    db.tgt
        .batch_execute(
            "UPDATE __hyperfill.task SET state = 'pending', attempts = 0, verify_state = NULL",
        )
        .await
        .unwrap();
}

fn copy_cmd(db: &Dbs, p: &str) -> tokio::process::Command {
    let mut c = copy_command(db, p);
    c.stderr(Stdio::null());
    c
}

#[tokio::test]
async fn copy_killed_with_sigkill_at_random_points_loses_and_duplicates_nothing() {
    let Some(db) = mixed("load_sigkill").await else {
        return;
    };
    let mut rng = Rng::new();
    // At least TRIALS kills, and more (up to MAX_TRIALS) until half of
    // them landed mid-run: on a fast machine a whole copy takes a few
    // hundred milliseconds and a late random kill finds it finished.
    const TRIALS: usize = 10;
    const MAX_TRIALS: usize = 30;
    let mut mid_run = 0;
    let mut rows_checked = 0;
    let mut trials = 0;
    let started = Instant::now();
    for trial in 0..MAX_TRIALS {
        if trial >= TRIALS && mid_run >= TRIALS / 2 {
            break;
        }
        trials += 1;
        requeue_all(&db).await;
        let mut child = copy_cmd(&db, "4").spawn().expect("spawn");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        // Kill after k copied chunks and a random moment more.
        let k = rng.below(12);
        let mut copied = 0;
        while copied < k {
            match tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await {
                Ok(Ok(Some(l))) if l.contains("Copied chunk") => copied += 1,
                Ok(Ok(Some(_))) => {}
                _ => break,
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // Every other trial kills within a few milliseconds of a chunk's
        // commit, the others anywhere in the next 400 ms.
        let extra = rng.below(if trial % 2 == 0 { 40 } else { 400 });
        tokio::time::sleep(Duration::from_millis(extra)).await;
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("wait");
        db.wait_for_no_hyperfill_sessions().await;
        let done = db
            .tgt_i64("SELECT count(*) FROM __hyperfill.task WHERE state = 'done'")
            .await;
        if (1..16).contains(&done) {
            mid_run += 1;
        }
        // No duplicate at any moment, even right after the kill.
        let (t, d, _) = counts(&db, "m", "time, device").await;
        assert_eq!(t, d, "trial {trial}: duplicated rows right after kill -9");
        // The rerun finishes the job.
        let out = copy_cmd(&db, "4").output().await.expect("copy");
        assert!(out.status.success(), "trial {trial}: rerun failed");
        let c = counts(&db, "m", "time, device").await;
        assert_same(
            &format!("trial {trial} (killed after {k} chunks + {extra} ms, {done}/16 done)"),
            c,
        );
        rows_checked += c.2;
        eprintln!("FAULT FIGURES sigkill trial {trial}: killed after {k} copied chunk(s) + {extra} ms, {done}/16 tasks done at the kill; after the rerun {} rows = source, 0 duplicated", c.0);
    }
    db.verify(&[]).await.assert_ok().assert_contains("16 match");
    eprintln!(
        "FAULT FIGURES sigkill: {trials} trials ({mid_run} landed mid-run), {rows_checked} rows compared, 0 lost, 0 duplicated, in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(mid_run >= TRIALS / 2, "only {mid_run} kills landed mid-run");
    db.cleanup().await;
}

#[tokio::test]
async fn three_copy_processes_at_once_copy_each_task_exactly_once() {
    let Some(db) = mixed("load_three_processes").await else {
        return;
    };
    let run = || async { copy_cmd(&db, "2").output().await.expect("copy") };
    let (a, b, c) = tokio::join!(run(), run(), run());
    let mut per_process = Vec::new();
    for o in [&a, &b, &c] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        per_process.push(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("Copied chunk"))
                .count(),
        );
    }
    assert_eq!(per_process.iter().sum::<usize>(), 16, "{per_process:?}");
    assert_eq!(db.queue_states().await, "done:16");
    assert_eq!(
        db.tgt_i64("SELECT max(attempts)::bigint FROM __hyperfill.task")
            .await,
        1
    );
    assert_same("three processes", counts(&db, "m", "time, device").await);
    eprintln!("FAULT FIGURES three concurrent copy processes: tasks copied per process {per_process:?}, each of 16 exactly once");
    db.cleanup().await;
}

const READINGS: &str = "
CREATE TABLE readings (time timestamptz NOT NULL, device int NOT NULL, v float8, note text);
SELECT create_hypertable('readings', by_range('time', INTERVAL '1 day'));
";

/// `days` of one-minute readings from 2024-01-01 for devices 1 and 2, and a
/// target CHECK constraint (triggers do not fire on copied rows) that makes each chunk's copy last at least `slow` seconds.
async fn slow_readings(db: &Dbs, days: i32, slow: f64) {
    db.both(READINGS).await.unwrap();
    db.src
        .batch_execute(&format!(
            "INSERT INTO readings SELECT t, d, random(), repeat('x', 40)
             FROM generate_series('2024-01-01'::timestamptz, '2024-01-01'::timestamptz + interval '{days} days' - interval '1 s', '1 min') t,
                  generate_series(1, 2) d"
        ))
        .await
        .unwrap();
    db.slow_target_readings(6, slow).await;
}

/// Terminate one hyperfill backend whose last statement is like `like`
/// and whose transaction is open.
async fn terminate_one(c: &tokio_postgres::Client, like: &str) -> bool {
    for _ in 0..400 {
        let row = c
            .query_opt(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'hyperfill' AND datname = current_database()
                   AND xact_start IS NOT NULL AND query LIKE $1
                 LIMIT 1",
                &[&like],
            )
            .await
            .expect("pg_terminate_backend");
        if row.is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test]
async fn copy_recovers_by_itself_when_its_backends_are_terminated_mid_copy() {
    let Some(db) = Dbs::new("load_terminate").await else {
        return;
    };
    slow_readings(&db, 10, 1.0).await;
    db.stage(&["--until", "2024-02-01"]).await.assert_ok();
    let started = Instant::now();
    let child = copy_cmd(&db, "2").spawn().expect("spawn");
    // The source COPY has usually sent its rows into the socket buffers
    // while the (slow) target COPY still runs: the source backend is then
    // terminated in the task's open transaction.
    let src_killed = terminate_one(&db.src, "COPY (SELECT %").await;
    // Let that attempt fail first (the next termination would otherwise
    // hit the same attempt).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tgt_killed = terminate_one(&db.tgt, "COPY %FROM STDIN%").await;
    assert!(src_killed && tgt_killed, "no COPY to terminate");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("copy did not finish by itself")
        .expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let retries = stdout.matches("Retrying chunk").count();
    // The target's termination always fails that attempt (its COPY or
    // commit is cut). The source's fails it when it lands before the
    // source COPY has ended; after that the chunk's rows are all read and
    // the attempt may finish without the source.
    assert!(
        stdout.contains("Retrying chunk") && stdout.contains("failed: target database:"),
        "{stdout}"
    );
    assert_eq!(db.queue_states().await, "done:10");
    assert_same(
        "terminated backends",
        counts(&db, "readings", "time, device").await,
    );
    eprintln!(
        "FAULT FIGURES terminated source and target backends mid-COPY: the run finished by itself in {:.1} s with {retries} retried attempt(s), 10/10 tasks done, rows equal",
        started.elapsed().as_secs_f64()
    );
    db.cleanup().await;
}

#[tokio::test]
async fn dual_writes_on_the_target_during_the_copy_are_kept_and_never_blocked() {
    let Some(db) = Dbs::new("load_dual_write").await else {
        return;
    };
    slow_readings(&db, 8, 0.5).await;
    // T cuts day 6; the application writes rows at and after T to the target.
    let t = "2024-01-06 12:00:00+00";
    db.stage(&["--until", t]).await.assert_ok();
    let writer = connect(&db.target_url).await.expect("writer");
    let started = Instant::now();
    let child = copy_cmd(&db, "2").spawn().expect("spawn");
    let copy = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await
    });
    let insert = writer
        .prepare(
            "INSERT INTO readings VALUES ($1::text::timestamptz + $2::bigint * interval '100 ms', 99, 1.0, 'dual')",
        )
        .await
        .expect("prepare");
    let mut latencies = Vec::new();
    let mut i: i64 = 0;
    while !copy.is_finished() {
        let started = Instant::now();
        writer
            .execute(&insert, &[&t, &i])
            .await
            .expect("dual-write insert");
        latencies.push(started.elapsed());
        i += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let copy_secs = started.elapsed().as_secs_f64();
    let out = copy
        .await
        .expect("join")
        .expect("copy did not finish")
        .expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    latencies.sort();
    let n = latencies.len();
    assert!(n > 100, "only {n} dual-writes during the copy");
    let p50 = latencies[n / 2];
    let p99 = latencies[(n * 99 / 100).min(n - 1)];
    let max = latencies[n - 1];
    let kept = db
        .tgt_i64(&format!(
            "SELECT count(*) FROM readings WHERE time >= '{t}' AND device = 99"
        ))
        .await;
    assert_eq!(kept, i, "dual-written rows lost");
    let before_t = format!("readings WHERE time < '{t}'");
    let (tgt, src) = (
        db.tgt_i64(&format!("SELECT count(*) FROM {before_t}"))
            .await,
        db.src_i64(&format!("SELECT count(*) FROM {before_t}"))
            .await,
    );
    assert_eq!(tgt, src, "rows before T");
    assert_eq!(
        db.tgt_i64(&format!(
            "SELECT count(*) FROM readings WHERE time >= '{t}' AND device <> 99"
        ))
        .await,
        0,
        "the copy wrote at or after T"
    );
    eprintln!(
        "FAULT FIGURES dual-writer: {n} inserts at >= T during the copy ({:.0}/s), all kept; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        n as f64 / copy_secs,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    assert!(max < Duration::from_secs(1), "a dual-write waited {max:?}");
    db.cleanup().await;
}

/// Two private clusters for a test that restarts one (the shared ones
/// serve other tests). Destroyed on drop.
struct PrivateClusters {
    dir: String,
    env: Vec<(String, String)>,
    source_port: u16,
    target_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PrivateClusters {
    fn script() -> String {
        format!("{}/scripts/lib/clusters.sh", env!("CARGO_MANIFEST_DIR"))
    }

    fn start() -> Option<PrivateClusters> {
        let bindir = std::env::var("HYPERFILL_PG_BINDIR").ok()?;
        let (source_port, target_port) = (free_port(), free_port());
        let dir = format!("/tmp/hf-private-{}-{target_port}", std::process::id());
        let env = vec![
            ("HYPERFILL_PG_BINDIR".to_string(), bindir),
            ("HYPERFILL_CLUSTER_DIR".to_string(), dir.clone()),
            ("HYPERFILL_SOURCE_PORT".to_string(), source_port.to_string()),
            ("HYPERFILL_TARGET_PORT".to_string(), target_port.to_string()),
        ];
        let c = PrivateClusters {
            dir,
            env,
            source_port,
            target_port,
        };
        let out = c.script_cmd("start").output().expect("clusters.sh start");
        assert!(
            out.status.success(),
            "clusters.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(c)
    }

    fn script_cmd(&self, what: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(Self::script());
        cmd.arg(what).envs(self.env.iter().cloned());
        cmd
    }

    fn url(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    }

    /// `pg_ctl restart -m fast` of the target cluster, as its OS user.
    fn restart_target(&self) {
        let bindir = &self.env[0].1;
        let data = format!("{}/target/data", self.dir);
        let log = format!("{}/target/postgresql.log", self.dir);
        let pg_ctl = format!("{bindir}/pg_ctl");
        let args = [
            "-D", &data, "-m", "fast", "-w", "-t", "60", "-l", &log, "restart",
        ];
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let mut cmd = if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", &pg_ctl]).args(args);
            c
        } else {
            let mut c = std::process::Command::new(&pg_ctl);
            c.args(args);
            c
        };
        let out = cmd
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .output()
            .expect("pg_ctl restart");
        assert!(
            out.status.success(),
            "pg_ctl restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateClusters {
    fn drop(&mut self) {
        let _ = self
            .script_cmd("destroy")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn copy_recovers_by_itself_from_a_target_restart_mid_run() {
    // Needs the shared servers only to know that a database setup exists.
    let Some(probe) = Dbs::new("load_restart_probe").await else {
        return;
    };
    probe.cleanup().await;
    let Some(clusters) = PrivateClusters::start() else {
        return;
    };
    let db = Dbs::on(
        "load_restart",
        &clusters.url(clusters.source_port),
        &clusters.url(clusters.target_port),
    )
    .await;
    slow_readings(&db, 12, 0.3).await;
    db.stage(&["--until", "2024-02-01"]).await.assert_ok();
    let started = Instant::now();
    let Started {
        mut child,
        mut lines,
        mut out,
    } = Started::first_chunk(copy_cmd(&db, "2"), 60).await;
    let restart = tokio::task::spawn_blocking(move || {
        clusters.restart_target();
        clusters
    });
    let status = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(l)) = lines.next_line().await {
            out.push_str(&l);
            out.push('\n');
        }
        child.wait().await
    })
    .await
    .expect("copy did not finish by itself after the restart")
    .expect("wait");
    let clusters = restart.await.expect("restart");
    assert!(status.success(), "{out}");
    let retries = out.matches("Retrying chunk").count();
    // The test's own connections died with the restart.
    let tgt = connect(&db.target_url).await.expect("reconnect");
    let states: i64 = tgt
        .query_one(
            "SELECT count(*) FROM __hyperfill.task WHERE state = 'done'",
            &[],
        )
        .await
        .expect("queue")
        .get(0);
    assert_eq!(states, 12, "{out}");
    let q = "SELECT count(*) FROM readings";
    let distinct = "SELECT count(DISTINCT (time, device)) FROM readings";
    let t: i64 = tgt.query_one(q, &[]).await.expect("count").get(0);
    let d: i64 = tgt.query_one(distinct, &[]).await.expect("count").get(0);
    let s = db.src_i64(q).await;
    assert_eq!((t, d), (s, s), "rows after the target restart");
    eprintln!(
        "FAULT FIGURES target restart (pg_ctl restart -m fast) mid-run: the run finished by itself in {:.1} s with {retries} retried attempt(s), 12/12 tasks done, {t} rows = source, 0 duplicated",
        started.elapsed().as_secs_f64()
    );
    drop(tgt);
    drop(db);
    drop(clusters);
}
