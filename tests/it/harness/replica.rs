//! A private primary and its streaming replica (`pg_basebackup -R`), for the
//! tests that read from a hot standby.
//!
//! Each test makes its own pair rather than a replica of the shared source
//! cluster: its replica settings are its own (one test needs
//! `max_standby_streaming_delay = 0`), it replays only its own test's WAL,
//! and a replica on the same machine as its primary would replay another
//! test's CREATE TABLESPACE into the primary's own directory. Both servers
//! run the test servers' binaries (`HYPERFILL_PG_BINDIR`), listen on a unix
//! socket only (in the pair's directory, so no TCP port is taken), run as
//! the `postgres` OS user when the tests run as root, and are stopped and
//! removed on drop (kept, with their logs, when the test failed).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{connect, Dbs, Result};

const PRIMARY_PORT: u16 = 5001;
const REPLICA_PORT: u16 = 5002;
/// The OS user the servers run as when the tests run as root.
const PG_OS_USER: &str = "postgres";

/// Settings of the pair's primary: TimescaleDB preloaded, durability off
/// (test data), and nothing that reads or vacuums on its own, so that what
/// the replica replays is only what the test does.
const PRIMARY_CONF: &str = "
listen_addresses = ''
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
timescaledb.max_background_workers = 0
max_locks_per_transaction = 512
max_connections = 60
autovacuum = off
fsync = off
synchronous_commit = off
full_page_writes = off
";

pub struct ReplicaPair {
    name: String,
    dir: PathBuf,
    bindir: PathBuf,
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A server-side program, run as the servers' OS user when we are root.
fn pg_command(program: &Path) -> std::process::Command {
    if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", PG_OS_USER, "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    }
}

/// Why the local installation cannot run a pair whose TimescaleDB matches
/// the target server's version, if it cannot.
fn cannot_run_here(bindir: &Path, target_version: &str) -> Option<String> {
    for program in ["pg_basebackup", "initdb", "pg_ctl", "pg_config"] {
        if !bindir.join(program).exists() {
            return Some(format!("{} not found", bindir.join(program).display()));
        }
    }
    let sharedir = std::process::Command::new(bindir.join("pg_config"))
        .arg("--sharedir")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let control = Path::new(&sharedir).join("extension/timescaledb.control");
    let local = std::fs::read_to_string(&control).ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("default_version"))
            .map(|v| {
                v.trim_start_matches([' ', '='])
                    .trim()
                    .trim_matches('\'')
                    .to_string()
            })
    });
    match local {
        None => Some(format!(
            "no TimescaleDB in {} ({})",
            bindir.display(),
            control.display()
        )),
        Some(v) if v != target_version => Some(format!(
            "the TimescaleDB in {} is {v}, the target server's is {target_version}",
            bindir.display()
        )),
        Some(_) => None,
    }
}

impl ReplicaPair {
    /// Start a primary, clone it with `pg_basebackup -R`, add
    /// `replica_conf` (postgresql.conf lines) to the clone and start it as
    /// a hot standby. The pair runs the local installation
    /// (`HYPERFILL_PG_BINDIR`), so its TimescaleDB must be the target
    /// server's version. `None`, loudly, when this machine cannot make the
    /// pair: no pg_basebackup, or no such TimescaleDB in that installation
    /// (test servers in Docker); `HYPERFILL_REQUIRE_DB=1` makes that a
    /// failure.
    pub async fn start(db: &Dbs, replica_conf: &[&str]) -> Option<ReplicaPair> {
        let name = db.name.as_str();
        let bindir = PathBuf::from(
            std::env::var("HYPERFILL_PG_BINDIR")
                .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        let target_version: String = db
            .tgt
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
                &[],
            )
            .await
            .expect("the target's TimescaleDB version")
            .get(0);
        if let Some(why) = cannot_run_here(&bindir, &target_version) {
            super::skip(
                name,
                &format!("a streaming replica cannot be made here: {why}"),
                "HYPERFILL_REQUIRE_DB",
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!("hf-pair-{name}-{}", std::process::id()));
        let pair = ReplicaPair {
            name: name.to_string(),
            dir,
            bindir,
        };
        let conf = replica_conf.join("\n");
        let pair = tokio::task::spawn_blocking(move || {
            pair.make(&conf);
            pair
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: making the replica pair: {e}"));
        Some(pair)
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = pg_command(&self.bindir.join(program))
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("{}: running {program}: {e}", self.name));
        assert!(
            out.status.success(),
            "{}: {program} {args:?} failed: {}{}\n{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }

    fn append(path: &Path, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    fn data(&self, which: &str) -> String {
        self.dir.join(which).display().to_string()
    }

    fn make(&self, replica_conf: &str) {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("pair directory");
        if is_root() {
            let st = std::process::Command::new("chown")
                .arg(format!("{PG_OS_USER}:"))
                .arg(&self.dir)
                .status()
                .expect("chown");
            assert!(st.success(), "chown {}", self.dir.display());
        }
        let (primary, replica) = (self.data("primary"), self.data("replica"));
        self.run(
            "initdb",
            &[
                "-D",
                &primary,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
        );
        Self::append(
            &self.dir.join("primary/postgresql.conf"),
            &format!(
                "{PRIMARY_CONF}unix_socket_directories = '{}'\nport = {PRIMARY_PORT}\n",
                self.dir.display()
            ),
        );
        self.pg_ctl_start("primary");
        let socket_dir = self.dir.display().to_string();
        let port = PRIMARY_PORT.to_string();
        self.run(
            "pg_basebackup",
            &[
                "-h",
                &socket_dir,
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &replica,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        // postgresql.auto.conf is read last: these override the primary's
        // settings that the clone carries. The primary_conninfo that -R
        // wrote names every option pg_basebackup's libpq knows; a server
        // whose walreceiver loads an older libpq (a relocatable build on a
        // system with another libpq) refuses the newer ones, such as
        // sslnegotiation. The later, minimal one wins.
        Self::append(
            &self.dir.join("replica/postgresql.auto.conf"),
            &format!(
                "port = {REPLICA_PORT}\nhot_standby = on\n\
                 primary_conninfo = 'host={} port={PRIMARY_PORT} user=postgres'\n{replica_conf}\n",
                self.dir.display()
            ),
        );
        self.pg_ctl_start("replica");
    }

    fn pg_ctl_start(&self, which: &str) {
        let log = self.dir.join(format!("{which}.log")).display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(which),
                "-l",
                &log,
                "-w",
                "-t",
                "120",
                "start",
            ],
        );
    }

    /// The last lines of both servers' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for which in ["primary", "replica"] {
            let path = self.dir.join(format!("{which}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("--- {} (last lines)\n", path.display()));
            for l in &lines[lines.len().saturating_sub(30)..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    fn url(&self, port: u16, db: &str) -> String {
        format!(
            "host={} port={port} user=postgres dbname={db}",
            self.dir.display()
        )
    }

    /// Connection string of a database on the primary (key=value, unix socket).
    pub fn primary_url(&self, db: &str) -> String {
        self.url(PRIMARY_PORT, db)
    }

    /// Connection string of a database on the replica (key=value, unix socket).
    pub fn replica_url(&self, db: &str) -> String {
        self.url(REPLICA_PORT, db)
    }

    /// Create a database with timescaledb on the primary, wait until the
    /// replica has it, and return a client on each side.
    pub async fn create_db(&self, db: &str) -> Result<(Client, Client)> {
        let admin = connect(&self.primary_url("postgres")).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .await?;
        let primary = connect(&self.primary_url(db)).await?;
        primary
            .batch_execute(
                "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS timescaledb",
            )
            .await?;
        self.catch_up().await?;
        let replica = connect(&self.replica_url(db)).await?;
        Ok((primary, replica))
    }

    /// Wait until the replica has replayed everything the primary has
    /// written so far: pg_last_wal_replay_lsn() >= the primary's
    /// pg_current_wal_insert_lsn(). Not pg_current_wal_lsn(): that is what
    /// has left the WAL buffers, and with synchronous_commit = off a commit
    /// can still be in them.
    pub async fn catch_up(&self) -> Result {
        let primary = connect(&self.primary_url("postgres")).await?;
        let lsn: String = primary
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // The replica may still be starting up right after `start`.
            if let Ok(replica) = connect(&self.replica_url("postgres")).await {
                let done: Option<bool> = replica
                    .query_one(
                        "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                        &[&lsn],
                    )
                    .await?
                    .get(0);
                if done == Some(true) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: the replica did not replay up to {lsn} within 120 s\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ReplicaPair {
    fn drop(&mut self) {
        for which in ["replica", "primary"] {
            if self.dir.join(which).join("postmaster.pid").exists() {
                let _ = pg_command(&self.bindir.join("pg_ctl"))
                    .args(["-D", &self.data(which), "-m", "immediate", "-w", "stop"])
                    .current_dir(&self.dir)
                    .output();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "{}: the replica pair's data and logs are kept in {}",
                self.name,
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn a_missing_installation_is_a_reason_to_skip() {
    let why = cannot_run_here(Path::new("/nonexistent/bin"), "2.19.3").expect("a reason");
    assert!(
        why.contains("/nonexistent/bin/pg_basebackup not found"),
        "{why}"
    );
}
