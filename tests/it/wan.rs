//! A far source: `copy` through a proxy that holds every byte for half a
//! round trip in each direction, as a WAN link would.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::harness::{fingerprint, port_of, with_port, Dbs};
use crate::stage::{METRICS, METRICS_DATA};

/// Listens on a free loopback port and forwards every connection to
/// `upstream`, each direction delayed by `rtt / 2` (order kept). Returns the
/// port; it lives as long as the test's runtime.
async fn delaying_proxy(upstream: u16, rtt: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(delayed(cr, sw, rtt / 2));
            tokio::spawn(delayed(sr, cw, rtt / 2));
        }
    });
    port
}

/// Copies `from` to `to`, each chunk of bytes written `delay` after it was
/// read; closes `to` when `from` ends.
async fn delayed(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// The number that follows `marker` in `line`.
fn number_after<N: std::str::FromStr>(line: &str, marker: &str) -> N {
    line.split(marker)
        .nth(1)
        .and_then(|w| w.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {marker:?} in {line:?}"))
}

/// Without `--parallelism`, a source 40 ms away gets one worker per 2 ms
/// more than the default 8, the first line says why, and the rows arrive whole; with
/// `--parallelism 3` it is exactly 3, whatever the round trip.
#[tokio::test]
async fn a_far_source_gets_more_workers_and_the_copy_is_whole() {
    let Some(db) = Dbs::new("far_source").await else {
        return;
    };
    // Chunks of 6 hours, two space partitions: 40 chunks below T, more than
    // the 28 workers a 40 ms source gets.
    db.both(
        "CREATE TABLE metrics (time timestamptz NOT NULL, device int NOT NULL, v double precision);
         SELECT create_hypertable('metrics', by_range('time', INTERVAL '6 hours'));
         SELECT add_dimension('metrics', by_hash('device', 2));",
    )
    .await
    .unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    let chunks = db
        .src_i64("SELECT count(*) FROM timescaledb_information.chunks")
        .await;
    assert!(
        chunks > 8,
        "the test needs more chunks than the default workers: {chunks}"
    );

    let proxy = delaying_proxy(port_of(&db.source_url), Duration::from_millis(40)).await;
    let far = with_port(&db.source_url, proxy);
    db.stage(&["--until", "2024-01-06"]).await.assert_ok();
    let r = db.run(&["copy", "--source", &far, "--target", "{T}"]).await;
    r.assert_ok();
    let first = r
        .stdout
        .lines()
        .find(|l| l.starts_with("Copying "))
        .unwrap_or_else(|| panic!("no 'Copying' line:\n{}", r.all()));
    let workers: i64 = number_after(first, " with ");
    let staged = db.tgt_i64("SELECT count(*) FROM __hyperfill.task").await;
    assert_eq!(staged, 40, "tasks staged");
    let ms: f64 = number_after(first, "the source answers in ");
    assert!((40.0..400.0).contains(&ms), "{first}");
    // 8 + one per 2 ms of round trip: 28 at 40 ms, a little more when the
    // machine is slow to answer (the servers of the tests leave far more
    // than twice that many connection slots free).
    let most = (8 + (ms / 2.0).ceil() as i64).min(40);
    assert!((28..=most).contains(&workers), "{first}");
    assert_eq!(db.queue_states().await, format!("done:{staged}"));
    let s = fingerprint(&db.src, "(SELECT * FROM metrics WHERE time < '2024-01-06')").await;
    let t = fingerprint(&db.tgt, "metrics").await;
    assert!(s.0 > 0, "no rows below T on the source");
    assert_eq!(s, t, "target rows differ from the source's below T");
    db.cleanup().await;

    // An explicit number is exactly that number, far or not.
    let db = Dbs::new("far_source_p3")
        .await
        .expect("the servers answered a moment ago");
    db.both(METRICS).await.unwrap();
    db.src.batch_execute(METRICS_DATA).await.unwrap();
    let proxy = delaying_proxy(port_of(&db.source_url), Duration::from_millis(40)).await;
    let far = with_port(&db.source_url, proxy);
    db.stage(&["--until", "2024-01-11"]).await.assert_ok();
    let r = db
        .run(&[
            "copy",
            "--source",
            &far,
            "--target",
            "{T}",
            "--parallelism",
            "3",
        ])
        .await;
    r.assert_ok().assert_contains("with 3 worker(s):");
    assert!(!r.stdout.contains("the source answers in"), "{}", r.all());
    let s = fingerprint(&db.src, "metrics").await;
    let t = fingerprint(&db.tgt, "metrics").await;
    assert_eq!(s, t, "target rows differ from the source's");
    db.cleanup().await;
}
