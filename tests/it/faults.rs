//! Faults (issue 10): a server that accepts TCP and never answers, signals,
//! a connection that freezes mid-COPY, failures classified as permanent or
//! transient and the attempt limit across workers, server timeouts, colour
//! in logs, and the ctrl-c messages (issue 11).

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::spawned::{copy_command, Started};
use crate::harness::{bin, port_of, with_port, Dbs, Run};

/// A TCP server that accepts every connection and never writes a byte (nor
/// closes). Returns its port; it lives as long as the test's runtime.
async fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

async fn run_bin(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (Run, Duration) {
    let started = Instant::now();
    let mut cmd = bin();
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).args(args);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("hyperfill {args:?} still ran after {limit:?}"))
        .expect("running hyperfill");
    (
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        started.elapsed(),
    )
}

#[tokio::test]
async fn connect_to_a_silent_server_times_out_naming_the_side_and_the_timeout() {
    let port = silent_server().await;
    for ssl in ["disable", "prefer", "require"] {
        let url = format!("postgres://postgres@127.0.0.1:{port}/x?sslmode={ssl}&connect_timeout=3");
        let (r, took) = run_bin(&["status", "--target", &url], &[], Duration::from_secs(30)).await;
        r.assert_code(5)
            .assert_contains("cannot connect to the target database")
            .assert_contains("no answer within 3 s");
        assert!(
            took < Duration::from_secs(8),
            "sslmode={ssl}: took {took:?}"
        );
    }
    // PGCONNECT_TIMEOUT, as libpq; on the source side of a copy.
    let url = format!("postgres://postgres@127.0.0.1:{port}/x?sslmode=disable");
    let (r, took) = run_bin(
        &["copy", "--source", &url, "--target", &url],
        &[("PGCONNECT_TIMEOUT", "2")],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        r.code == 4 || r.code == 5,
        "exit code {}: {}",
        r.code,
        r.all()
    );
    r.assert_contains("no answer within 2 s");
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

#[tokio::test]
async fn connect_to_a_silent_server_without_a_timeout_ends_after_the_default() {
    let port = silent_server().await;
    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=x");
    let (r, took) = run_bin(&["status", "--target", &url], &[], Duration::from_secs(60)).await;
    r.assert_code(5)
        .assert_contains("no answer within 15 s (the default connect_timeout");
    assert!(took < Duration::from_secs(25), "took {took:?}");
}

/// Send `sig` to a child after `after`; returns how long it took to exit.
async fn signal_and_wait(
    child: &mut tokio::process::Child,
    sigs: &[&str],
    after: Duration,
) -> (Option<i32>, Duration) {
    tokio::time::sleep(after).await;
    let pid = child.id().expect("pid").to_string();
    let sent = Instant::now();
    for sig in sigs {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap_or_else(|_| panic!("hyperfill did not exit within 20 s of SIG{sigs:?}"))
        .expect("wait");
    (status.code(), sent.elapsed())
}

#[cfg(unix)]
#[tokio::test]
async fn signals_end_a_process_blocked_on_a_silent_server() {
    let port = silent_server().await;
    // connect_timeout=0: no limit, as libpq; only the signal can end it.
    let url = format!("postgres://postgres@127.0.0.1:{port}/x?sslmode=disable&connect_timeout=0");
    let cases: &[(&[&str], &[&str])] = &[
        (&["status", "--target", &url], &["TERM"]),
        (&["status", "--target", &url], &["INT"]),
        (&["copy", "--source", &url, "--target", &url], &["TERM"]),
        (
            &["copy", "--source", &url, "--target", &url],
            &["INT", "INT"],
        ),
        (
            &[
                "stage",
                "--source",
                &url,
                "--target",
                &url,
                "--until",
                "2024-01-01",
            ],
            &["INT"],
        ),
    ];
    for (args, sigs) in cases {
        let mut child = bin()
            .args(*args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let (code, took) = signal_and_wait(&mut child, sigs, Duration::from_secs(1)).await;
        assert_eq!(code, Some(130), "{args:?} after SIG{sigs:?}");
        assert!(
            took < Duration::from_secs(5),
            "{args:?}: exited {took:?} after SIG{sigs:?}"
        );
    }
}

/// A TCP proxy to `upstream` that, once, freezes the first connection that
/// has carried more than `after` bytes from upstream: it stops forwarding
/// in both directions and keeps the sockets open (a stuck server or
/// network). Other connections are forwarded normally.
struct FreezingProxy {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl FreezingProxy {
    async fn start(upstream: u16, after: u64) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                tokio::spawn(forward(client, server, after, f.clone()));
            }
        });
        FreezingProxy { port, frozen }
    }
}

async fn forward(client: TcpStream, server: TcpStream, after: u64, frozen: Arc<AtomicBool>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mine = Arc::new(AtomicBool::new(false));
    let down = Arc::new(AtomicU64::new(0));
    let (m1, m2) = (mine.clone(), mine.clone());
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if m1.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if m1.load(Ordering::SeqCst) || sw.write_all(&buf[..n]).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let total = down.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        if total > after
            && frozen
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            m2.store(true, Ordering::SeqCst);
        }
        if m2.load(Ordering::SeqCst) {
            // Frozen: hold both sockets, forward nothing, forever.
            std::future::pending::<()>().await;
        }
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    up.abort();
}

const ONE_BIG_CHUNK: &str = "
CREATE TABLE big (time timestamptz NOT NULL, device int NOT NULL, v float8, note text);
SELECT create_hypertable('big', by_range('time', INTERVAL '30 days'));
";

#[tokio::test]
async fn copy_through_a_connection_that_freezes_mid_copy_fails_the_attempt_and_retries() {
    let Some(db) = Dbs::new("fault_freeze").await else {
        return;
    };
    db.both(ONE_BIG_CHUNK).await.unwrap();
    db.src
        .batch_execute(
            "INSERT INTO big SELECT t, d, random(), repeat('x', 60)
             FROM generate_series('2024-01-01'::timestamptz, '2024-01-10', '5 s') t, generate_series(1, 2) d",
        )
        .await
        .unwrap();
    db.stage(&["--until", "2024-02-01"]).await.assert_ok();
    let proxy = FreezingProxy::start(port_of(&db.source_url), 2_000_000).await;
    let via_proxy = with_port(&db.source_url, proxy.port);
    let started = Instant::now();
    let r = db
        .run(&[
            "copy",
            "--source",
            &format!("{via_proxy}?sslmode=disable"),
            "--target",
            "{T}",
            "--stall-timeout",
            "3",
        ])
        .await;
    assert!(proxy.frozen.load(Ordering::SeqCst), "the proxy never froze");
    r.assert_ok()
        .assert_contains("Retrying chunk")
        .assert_contains("no answer for 3 s (--stall-timeout)");
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_eq!(
        db.tgt_i64("SELECT attempts::bigint FROM __hyperfill.task")
            .await,
        2
    );
    let q = "SELECT count(*) FROM big";
    assert_eq!(db.tgt_i64(q).await, db.src_i64(q).await);
    db.cleanup().await;
}

#[tokio::test]
async fn copy_waits_for_a_server_that_is_busy_longer_than_the_stall_timeout() {
    let Some(db) = readings("fault_busy", 2).await else {
        return;
    };
    // Each chunk's COPY spends 5 s in the server (a slow CHECK constraint; user triggers do not fire on copied rows): longer
    // than --stall-timeout, but the server is working, so nothing fails.
    db.slow_target_readings(12, 5.0).await;
    let r = db.copy(&["-p", "2", "--stall-timeout", "2"]).await;
    r.assert_ok();
    assert!(!r.all().contains("Retrying"), "{}", r.all());
    assert_eq!(db.queue_states().await, "done:2");
    assert_eq!(
        db.tgt_i64("SELECT max(attempts)::bigint FROM __hyperfill.task")
            .await,
        1
    );
    db.cleanup().await;
}

const READINGS: &str = "
CREATE TABLE readings (time timestamptz NOT NULL, device int NOT NULL, v float8, note text);
SELECT create_hypertable('readings', by_range('time', INTERVAL '1 day'));
";

async fn readings(name: &str, days: i32) -> Option<Dbs> {
    let db = Dbs::new(name).await?;
    db.both(READINGS).await.unwrap();
    db.src
        .batch_execute(&format!(
            "INSERT INTO readings SELECT t, d, random(), repeat('x', 40)
             FROM generate_series('2024-01-01'::timestamptz, '2024-01-01'::timestamptz + interval '{days} days' - interval '1 s', '1 min') t,
                  generate_series(1, 2) d"
        ))
        .await
        .unwrap();
    db.stage(&["--until", "2024-03-01"]).await.assert_ok();
    Some(db)
}

/// Every `[n/m]` counter in the output: n never passes m, and m is the same
/// everywhere.
#[track_caller]
fn assert_counters_within_total(out: &str) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some((inner, _)) = rest.split_once(']') else {
            continue;
        };
        let Some((n, m)) = inner.split_once('/') else {
            continue;
        };
        if let (Ok(n), Ok(m)) = (n.parse::<u64>(), m.parse::<u64>()) {
            assert!(n <= m, "counter passed its total: {line}\n{out}");
            seen.push((n, m));
        }
    }
    seen
}

#[tokio::test]
async fn copy_never_retries_a_permanent_failure_and_counts_it_once() {
    let Some(db) = readings("fault_permanent", 6).await else {
        return;
    };
    // The target rejects device 2 on three of the six days (SQLSTATE 23514).
    db.tgt
        .batch_execute(
            "ALTER TABLE readings ADD CONSTRAINT no_dev2 CHECK (device <> 2 OR time >= '2024-01-04')",
        )
        .await
        .unwrap();
    let r = db.copy(&["-p", "4"]).await;
    r.assert_code(6)
        .assert_contains("3 task(s) failed")
        .assert_contains("3 failed");
    assert!(!r.all().contains("Retrying"), "{}", r.all());
    let counters = assert_counters_within_total(&r.stdout);
    assert_eq!(counters.len(), 6, "{}", r.stdout);
    assert_eq!(db.queue_states().await, "done:3 failed:3");
    assert_eq!(
        db.tgt_i64("SELECT max(attempts)::bigint FROM __hyperfill.task")
            .await,
        1,
        "a permanent failure is tried once per run"
    );
    // The next run tries the failed ones again, once.
    let r = db.copy(&["-p", "4"]).await;
    r.assert_code(6);
    assert_counters_within_total(&r.stdout);
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM __hyperfill.task WHERE state = 'failed' AND attempts = 1")
            .await,
        3
    );
    db.cleanup().await;
}

#[tokio::test]
async fn copy_retries_a_transient_failure_exactly_max_attempts_times_across_workers() {
    let Some(db) = readings("fault_transient", 3).await else {
        return;
    };
    // Every insert into the target fails with a serialization failure (40001).
    db.tgt
        .batch_execute(
            "CREATE FUNCTION busy(d int) RETURNS bool LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'simulated conflict' USING ERRCODE = 'serialization_failure'; RETURN true; END $$;
             ALTER TABLE readings ADD CONSTRAINT busy CHECK (busy(device));",
        )
        .await
        .unwrap();
    let r = db.copy(&["-p", "4", "--max-attempts", "3"]).await;
    r.assert_code(6).assert_contains("3 task(s) failed");
    let counters = assert_counters_within_total(&r.stdout);
    assert_eq!(counters.len(), 3, "{}", r.stdout);
    assert_eq!(
        r.stdout.matches("Retrying chunk").count(),
        6,
        "two retries per task:\n{}",
        r.stdout
    );
    assert_eq!(db.queue_states().await, "failed:3");
    assert_eq!(
        db.tgt_i64("SELECT count(*) FROM __hyperfill.task WHERE attempts = 3")
            .await,
        3,
        "each task tried exactly --max-attempts times"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn copy_is_not_interrupted_by_server_timeouts_and_check_reports_them() {
    let Some(db) = readings("fault_timeouts", 4).await else {
        return;
    };
    let tdb = format!("hf_{}_t", db.name);
    db.tgt
        .batch_execute(&format!(
            "ALTER DATABASE \"{tdb}\" SET statement_timeout = '50ms';
             ALTER DATABASE \"{tdb}\" SET idle_in_transaction_session_timeout = '50ms';
             ALTER DATABASE \"{tdb}\" SET lock_timeout = '2s';"
        ))
        .await
        .unwrap();
    // Slow every insert down so that each COPY takes longer than 50 ms.
    db.slow_target_readings(0, 0.2).await;
    let r = db
        .run(&["check", "--source", "{S}", "--target", "{T}"])
        .await;
    r.assert_contains("statement_timeout")
        .assert_contains("idle_in_transaction_session_timeout")
        .assert_contains("lock_timeout");
    db.copy(&["-p", "2"]).await.assert_ok();
    assert_eq!(db.queue_states().await, "done:4");
    let q = "SELECT count(*) FROM readings";
    assert_eq!(db.tgt_i64(q).await, db.src_i64(q).await);
    db.cleanup().await;
}

#[tokio::test]
async fn logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let Some(db) = Dbs::new("fault_colour").await else {
        return;
    };
    // A dead first host makes the connection log a warning.
    let (_, rest) = db.target_url.rsplit_once(':').expect("port");
    let (port, dbname) = rest.split_once('/').expect("db");
    let target = format!(
        "host=127.0.0.1,127.0.0.1 port=1,{port} user=postgres dbname={dbname} sslmode=disable"
    );
    for format in ["text", "json"] {
        let r = db
            .run(&["status", "--target", &target, "--log-format", format])
            .await;
        // No queue staged: exit 5, after the warning.
        r.assert_code(5).assert_contains("trying the next host");
        assert!(
            !r.stderr.contains('\u{1b}'),
            "--log-format {format}: colour codes in a redirected log:\n{}",
            r.stderr
        );
        if format == "json" {
            for l in r.stderr.lines().filter(|l| l.contains("next host")) {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("not JSON: {l}: {e}"));
            }
        }
    }
    db.cleanup().await;
}

/// Start `copy -p 2` on 30 one-day chunks and return it after its first
/// copied chunk, with stdout and stderr collected in the background.
async fn copy_started(
    db: &Dbs,
) -> (
    tokio::process::Child,
    tokio::task::JoinHandle<String>,
    tokio::task::JoinHandle<String>,
) {
    let Started {
        mut child,
        mut lines,
        mut out,
    } = Started::first_chunk(copy_command(db, "2"), 120).await;
    let stdout = tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            out.push_str(&l);
            out.push('\n');
        }
        out
    });
    let mut err = child.stderr.take().expect("stderr");
    let stderr = tokio::spawn(async move {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s).await;
        s
    });
    (child, stdout, stderr)
}

#[cfg(unix)]
#[tokio::test]
async fn ctrl_c_says_what_it_does_and_the_summary_says_what_happened() {
    let Some(db) = readings("fault_ctrl_c", 30).await else {
        return;
    };
    // Each chunk's copy takes at least a second on the target, so that
    // chunks are in flight when the signals arrive.
    db.slow_target_readings(12, 1.0).await;
    // One press: in-flight chunks finish.
    let (mut child, stdout, stderr) = copy_started(&db).await;
    let (code, _) = signal_and_wait(&mut child, &["INT"], Duration::ZERO).await;
    let (out, err) = (stdout.await.unwrap(), stderr.await.unwrap());
    assert_eq!(code, Some(130), "{out}{err}");
    assert!(
        err.contains("in-flight chunk(s) are being finished")
            && err.contains("press ctrl-c again to abandon them"),
        "{err}"
    );
    assert!(
        out.contains("Stopped after finishing the in-flight chunk(s)"),
        "{out}"
    );
    assert_counters_within_total(&out);
    // Two presses: in-flight chunks are abandoned.
    let (mut child, stdout, stderr) = copy_started(&db).await;
    let (code, took) = signal_and_wait(&mut child, &["INT", "INT"], Duration::ZERO).await;
    let (out, err) = (stdout.await.unwrap(), stderr.await.unwrap());
    assert_eq!(code, Some(130), "{out}{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Both workers' chunks started together, each spending a second in it:
    // one may have finished in the 200 ms between the two signals.
    assert!(
        err.contains("Abandoning the 2 in-flight chunk(s)")
            || err.contains("Abandoning the 1 in-flight chunk(s)"),
        "{err}"
    );
    assert!(
        err.contains("abandoned") && err.contains("rolled back"),
        "the summary says the chunks were abandoned:\n{out}{err}"
    );
    // The queue is consistent: the rest copies, nothing is duplicated.
    db.copy(&[]).await.assert_ok();
    let q = "SELECT count(*) FROM readings";
    let distinct = "SELECT count(DISTINCT (time, device)) FROM readings";
    assert_eq!(db.tgt_i64(q).await, db.src_i64(q).await);
    assert_eq!(db.tgt_i64(distinct).await, db.src_i64(q).await);
    db.cleanup().await;
}
