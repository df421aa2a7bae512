//! The source link of the benchmark's WAN scenario: a TCP proxy on
//! loopback that delivers every byte half a round-trip time after it read
//! it, in each direction. The same interface and counters as
//! `benches/benchlib/wanproxy.py` (kept as the fallback when this is not
//! built), at a fraction of its CPU: on the benchmark's two cores a Python
//! proxy competes with the servers for the CPU and inflates the WAN times.
//!
//! ```text
//! cargo build --release --example wanproxy
//! target/release/examples/wanproxy --to 127.0.0.1:5432 --rtt-ms 50 \
//!     --port-file P --stats-file S
//! ```
//!
//! It prints nothing; the port it listens on goes to `--port-file`, and on
//! SIGTERM or SIGINT it writes its counters to `--stats-file` as JSON:
//! `connections` (accepted client connections), `round_trips` (client to
//! server bursts that follow server to client traffic on the same
//! connection, or open it: the sequential round trips the client waited
//! for, pipelined requests counting once), `bytes_up`, `bytes_down`.
//!
//! Each direction holds at most [`WINDOW`] bytes in flight (like a TCP
//! window on a long fat pipe); the reader waits while that much is queued.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Bytes one direction of a connection may hold in flight.
const WINDOW: usize = 16 * 1024 * 1024;
/// The largest single read.
const READ: usize = 256 * 1024;

#[derive(Parser)]
#[command(about = "A delaying TCP proxy for the benchmark's WAN scenario")]
struct Args {
    /// Where to listen (port 0: any free port, written to --port-file).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The server, host:port.
    #[arg(long)]
    to: String,
    /// Round-trip time to add, in milliseconds (half in each direction).
    #[arg(long, default_value_t = 50.0)]
    rtt_ms: f64,
    #[arg(long)]
    port_file: Option<String>,
    #[arg(long)]
    stats_file: Option<String>,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    round_trips: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl Stats {
    fn json(&self) -> String {
        serde_json::json!({
            "connections": self.connections.load(Ordering::Relaxed),
            "round_trips": self.round_trips.load(Ordering::Relaxed),
            "bytes_up": self.bytes_up.load(Ordering::Relaxed),
            "bytes_down": self.bytes_down.load(Ordering::Relaxed),
        })
        .to_string()
    }
}

/// Which way the bytes go, for the counters.
#[derive(Clone, Copy)]
enum Way {
    Up,
    Down,
}

/// Copy `from` to `to`, each piece written `delay` after it was read.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    way: Way,
    stats: Arc<Stats>,
    last_down: Arc<AtomicBool>,
) {
    let window = Arc::new(Semaphore::new(WINDOW));
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>, OwnedSemaphorePermit)>();
    let reader = async move {
        let mut buf = vec![0u8; READ];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let at = Instant::now() + delay;
            match way {
                Way::Up => {
                    stats.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
                    if last_down.swap(false, Ordering::Relaxed) {
                        stats.round_trips.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Way::Down => {
                    stats.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                    last_down.store(true, Ordering::Relaxed);
                }
            }
            let Ok(permit) = window.clone().acquire_many_owned(n as u32).await else {
                break;
            };
            if tx.send((at, buf[..n].to_vec(), permit)).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        let delay = delay;
        while let Some((at, data, permit)) = rx.recv().await {
            // (The timer's resolution is a millisecond: no sleep at 0 ms.)
            if !delay.is_zero() {
                tokio::time::sleep_until(at).await;
            }
            if to.write_all(&data).await.is_err() {
                return;
            }
            drop(permit);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

async fn serve(client: TcpStream, to: String, delay: Duration, stats: Arc<Stats>) {
    let Ok(server) = TcpStream::connect(&to).await else {
        return;
    };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // The client speaks first.
    let last_down = Arc::new(AtomicBool::new(true));
    tokio::join!(
        pump(cr, sw, delay, Way::Up, stats.clone(), last_down.clone()),
        pump(sr, cw, delay, Way::Down, stats, last_down),
    );
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let delay = Duration::from_secs_f64(args.rtt_ms.max(0.0) / 2000.0);
    let listener = TcpListener::bind(&args.listen).await?;
    if let Some(f) = &args.port_file {
        std::fs::write(f, listener.local_addr()?.port().to_string())?;
    }
    let stats = Arc::new(Stats::default());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    tokio::spawn(serve(client, args.to.clone(), delay, stats.clone()));
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    if let Some(f) = &args.stats_file {
        std::fs::write(f, stats.json())?;
    }
    Ok(())
}
