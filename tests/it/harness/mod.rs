//! Test harness: real PostgreSQL + TimescaleDB servers, a fresh pair of
//! databases per test, and the `hyperfill` binary run as a user would.
//!
//! Servers come from `HYPERFILL_TEST_SOURCE_URL` / `HYPERFILL_TEST_TARGET_URL`
//! (scripts/test.sh sets them). Without them a test prints that it was skipped;
//! with `HYPERFILL_REQUIRE_DB=1` (set by CI) that is a failure instead.
//! Tests that need compression or continuous aggregates call
//! [`Dbs::require_license`]; `HYPERFILL_REQUIRE_LICENSED=1` turns their skip
//! into a failure.

#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

pub mod pooler;
pub mod replica;
pub mod spawned;

use tokio_postgres::{Client, NoTls};

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Replace the database of a URL (`postgres://u@h:p/db?x` → `.../name?x`).
fn with_db(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{name}{query}")
}

/// `url` with its port replaced (`postgres://u@host:PORT/db?...`).
pub fn with_port(url: &str, port: u16) -> String {
    let at = url
        .find('@')
        .map(|i| i + 1)
        .unwrap_or(url.find("://").expect("a URL") + 3);
    let rest = &url[at..];
    let host_end = rest.find([':', '/', '?']).unwrap_or(rest.len());
    let after_port = rest[host_end..]
        .strip_prefix(':')
        .map(|p| {
            let digits = p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len());
            &p[digits..]
        })
        .unwrap_or(&rest[host_end..]);
    format!("{}{}:{port}{after_port}", &url[..at], &rest[..host_end])
}

/// The port of `url` (`postgres://u@host:PORT/db`).
pub fn port_of(url: &str) -> u16 {
    let after = url.rsplit_once('@').map(|(_, r)| r).unwrap_or(url);
    let p = after.split_once(':').expect("a port in the test URL").1;
    let digits: String = p.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().expect("a numeric port")
}

#[test]
fn with_port_replaces_only_the_port() {
    assert_eq!(
        with_port("postgres://u@127.0.0.1:5432/db?sslmode=prefer", 9),
        "postgres://u@127.0.0.1:9/db?sslmode=prefer"
    );
    assert_eq!(with_port("postgres://u@h/db", 9), "postgres://u@h:9/db");
    assert_eq!(port_of("postgres://u@127.0.0.1:5432/db"), 5432);
}

pub async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A source and a target database made for one test.
pub struct Dbs {
    pub name: String,
    pub source_url: String,
    pub target_url: String,
    pub src: Client,
    pub tgt: Client,
    admin_source: String,
    admin_target: String,
}

/// Output of one `hyperfill` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, 0, "expected success; output:\n{}", self.all());
        self
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "expected exit code {code}; output:\n{}",
            self.all()
        );
        self
    }

    #[track_caller]
    pub fn assert_contains(&self, needle: &str) -> &Self {
        assert!(
            self.all().contains(needle),
            "expected output to contain {needle:?}; output:\n{}",
            self.all()
        );
        self
    }
}

impl Dbs {
    /// Fresh databases `hf_<name>_s` / `hf_<name>_t` with timescaledb, or
    /// `None` (loudly) when no servers are configured.
    pub async fn new(name: &str) -> Option<Dbs> {
        let (Ok(s), Ok(t)) = (
            std::env::var("HYPERFILL_TEST_SOURCE_URL"),
            std::env::var("HYPERFILL_TEST_TARGET_URL"),
        ) else {
            if env_flag("HYPERFILL_REQUIRE_DB") || env_flag("CI") {
                panic!("HYPERFILL_TEST_SOURCE_URL / HYPERFILL_TEST_TARGET_URL are not set; run scripts/test.sh");
            }
            record_skip(name, "no test servers");
            eprintln!("SKIPPED {name}: no test servers (run scripts/test.sh, or set HYPERFILL_TEST_SOURCE_URL and HYPERFILL_TEST_TARGET_URL)");
            return None;
        };
        Some(
            Self::create(name, &s, &t)
                .await
                .expect("creating the test databases"),
        )
    }

    /// Fresh databases on the given servers (a test's private clusters).
    pub async fn on(name: &str, source_admin: &str, target_admin: &str) -> Dbs {
        Self::create(name, source_admin, target_admin)
            .await
            .expect("creating the test databases")
    }

    async fn create(name: &str, s: &str, t: &str) -> Result<Dbs> {
        let db = format!("hf_{name}");
        assert!(
            db.len() <= 60,
            "test name too long for a database name: {db}"
        );
        let (sdb, tdb) = (format!("{db}_s"), format!("{db}_t"));
        for (url, dbname) in [(s, &sdb), (t, &tdb)] {
            let admin = connect(url).await?;
            admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{dbname}\" WITH (FORCE)"
                ))
                .await?;
            admin
                .batch_execute(&format!("CREATE DATABASE \"{dbname}\""))
                .await?;
        }
        let source_url = with_db(s, &sdb);
        let target_url = with_db(t, &tdb);
        let src = connect(&source_url).await?;
        let tgt = connect(&target_url).await?;
        for c in [&src, &tgt] {
            c.batch_execute(
                "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS timescaledb",
            )
            .await?;
        }
        Ok(Dbs {
            name: name.to_string(),
            source_url,
            target_url,
            src,
            tgt,
            admin_source: s.to_string(),
            admin_target: t.to_string(),
        })
    }

    /// Fresh databases on servers with the Timescale license, or `None`
    /// (loudly skipped, see [`Dbs::require_license`]).
    pub async fn licensed(name: &str) -> Option<Dbs> {
        let db = Dbs::new(name).await?;
        if !db.require_license().await {
            db.cleanup().await;
            return None;
        }
        Some(db)
    }

    /// Whether both servers carry the Timescale (community) license, needed
    /// for compression and continuous aggregates. Prints loudly when not
    /// (the whole test is skipped), and fails when
    /// `HYPERFILL_REQUIRE_LICENSED=1`.
    pub async fn require_license(&self) -> bool {
        self.license_or_skip("needs timescaledb.license = timescale".into())
            .await
    }

    /// [`Dbs::require_license`] for a test whose licensed `part` only is
    /// skipped without the license (the rest runs).
    pub async fn require_license_for(&self, part: &str) -> bool {
        self.license_or_skip(format!(
            "PARTLY SKIPPED (the rest ran): {part} needs timescaledb.license = timescale"
        ))
        .await
    }

    async fn license_or_skip(&self, reason: String) -> bool {
        let license: String = self
            .src
            .query_one("SELECT current_setting('timescaledb.license')", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or_default();
        if license == "timescale" {
            return true;
        }
        if env_flag("HYPERFILL_REQUIRE_LICENSED") {
            panic!(
                "{}: {reason}, the server has '{license}' (HYPERFILL_REQUIRE_LICENSED=1)",
                self.name
            );
        }
        record_skip(&self.name, &reason);
        eprintln!(
            "\n*** SKIPPED {}: {reason} (compression, continuous aggregates); this server has '{license}'. Set HYPERFILL_REQUIRE_LICENSED=1 to make this a failure. ***\n",
            self.name
        );
        false
    }

    /// Run SQL on both sides (schema set-up).
    pub async fn both(&self, sql: &str) -> Result {
        self.src.batch_execute(sql).await?;
        self.tgt.batch_execute(sql).await?;
        Ok(())
    }

    /// Restore the source's schema into the target the way the migration
    /// guide does: pg_dump with the chunk data excluded.
    pub async fn restore_schema_with_pg_dump(&self) -> Result {
        // The target's client tools (scripts/lib/clusters.sh env sets
        // HYPERFILL_TARGET_PG_BINDIR for a cross-major pair): pg_dump must
        // be at least as new as the source, as on migration day.
        let bindir = std::env::var("HYPERFILL_TARGET_PG_BINDIR")
            .or_else(|_| std::env::var("HYPERFILL_PG_BINDIR"))
            .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
        let dump = tokio::process::Command::new(format!("{bindir}/pg_dump"))
            .args([
                "-d",
                &self.source_url,
                "--format=plain",
                "--quote-all-identifiers",
                "--no-tablespaces",
                "--no-owner",
                "--no-privileges",
                "--exclude-table-data=_timescaledb_internal.*",
            ])
            .output()
            .await?;
        assert!(
            dump.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
        let sql = String::from_utf8(dump.stdout)?;
        self.tgt
            .batch_execute("SELECT public.timescaledb_pre_restore()")
            .await?;
        let mut child = tokio::process::Command::new(format!("{bindir}/psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.target_url,
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(sql.as_bytes()).await?;
        }
        let out = child.wait_with_output().await?;
        assert!(
            out.status.success(),
            "restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.tgt
            .batch_execute("SELECT public.timescaledb_post_restore()")
            .await?;
        Ok(())
    }

    /// Run `hyperfill <args>` with `{S}` / `{T}` replaced by the URLs.
    pub async fn run(&self, args: &[&str]) -> Run {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("{S}", &self.source_url)
                    .replace("{T}", &self.target_url)
            })
            .collect();
        let out = tokio::time::timeout(Duration::from_secs(300), bin().args(&args).output())
            .await
            .expect("hyperfill did not finish in 300 s")
            .expect("running hyperfill");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run `hyperfill <args>` (no placeholders) with `HOME` set to `home`
    /// (so `~/.pgpass` and `~/.postgresql/` are the test's own), no `PG*`
    /// variables inherited from the test process, and `env` added.
    pub async fn run_env(
        &self,
        args: &[&str],
        home: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Run {
        let mut cmd = bin();
        for (k, _) in std::env::vars() {
            if k.starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", home).envs(env.iter().copied()).args(args);
        let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
            .await
            .expect("hyperfill did not finish in 300 s")
            .expect("running hyperfill");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub async fn stage(&self, extra: &[&str]) -> Run {
        let mut a = vec!["stage", "--source", "{S}", "--target", "{T}"];
        a.extend_from_slice(extra);
        self.run(&a).await
    }

    pub async fn copy(&self, extra: &[&str]) -> Run {
        let mut a = vec!["copy", "--source", "{S}", "--target", "{T}"];
        a.extend_from_slice(extra);
        self.run(&a).await
    }

    pub async fn verify(&self, extra: &[&str]) -> Run {
        let mut a = vec!["verify", "--source", "{S}", "--target", "{T}"];
        a.extend_from_slice(extra);
        self.run(&a).await
    }

    /// A single bigint from a query on the source.
    pub async fn src_i64(&self, sql: &str) -> i64 {
        scalar(&self.src, sql).await
    }

    /// A single bigint from a query on the target.
    pub async fn tgt_i64(&self, sql: &str) -> i64 {
        scalar(&self.tgt, sql).await
    }

    /// Task counts per state in the target queue, as `state:n` sorted text.
    pub async fn queue_states(&self) -> String {
        let rows = self
            .tgt
            .query(
                "SELECT state, count(*) FROM __hyperfill.task GROUP BY state ORDER BY state",
                &[],
            )
            .await
            .expect("reading the queue");
        rows.iter()
            .map(|r| format!("{}:{}", r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub async fn queue_exists(&self) -> bool {
        self.tgt
            .query_one("SELECT to_regnamespace('__hyperfill') IS NOT NULL", &[])
            .await
            .expect("query")
            .get(0)
    }

    /// Number of chunks of all hypertables on the target.
    pub async fn target_chunk_count(&self) -> i64 {
        self.tgt_i64("SELECT count(*) FROM _timescaledb_catalog.chunk c WHERE NOT coalesce((to_jsonb(c) ->> 'dropped')::boolean, false)")
            .await
    }

    /// Drop the databases (on success only: a failed test leaves them to look at).
    pub async fn cleanup(self) {
        drop(self.src);
        drop(self.tgt);
        for (url, db) in [
            (&self.admin_source, format!("hf_{}_s", self.name)),
            (&self.admin_target, format!("hf_{}_t", self.name)),
        ] {
            if let Ok(admin) = connect(url).await {
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                    .await;
            }
        }
    }
}

/// Report a test that cannot run here: loudly on stderr and in the skip log
/// (so scripts/test.sh counts it as skipped); a failure instead when
/// `require_flag` (e.g. `HYPERFILL_REQUIRE_TLS`) is set to 1.
pub fn skip(name: &str, why: &str, require_flag: &str) {
    if env_flag(require_flag) {
        panic!("{name}: {why} ({require_flag}=1)");
    }
    record_skip(name, why);
    eprintln!("\n*** SKIPPED {name}: {why}. Set {require_flag}=1 to make this a failure. ***\n");
}

/// Append a skipped test to `$HYPERFILL_SKIP_LOG` (scripts/test.sh reads it
/// to report skips as skips, not passes).
fn record_skip(name: &str, why: &str) {
    use std::io::Write;
    if let Ok(path) = std::env::var("HYPERFILL_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{name}: {why}");
        }
    }
}

pub async fn scalar(c: &Client, sql: &str) -> i64 {
    let row = c
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    row.get::<_, i64>(0)
}

/// The first two columns of every row of `sql`.
pub async fn pairs<A, B>(c: &Client, sql: &str) -> Vec<(A, B)>
where
    A: for<'a> tokio_postgres::types::FromSql<'a>,
    B: for<'a> tokio_postgres::types::FromSql<'a>,
{
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The built binary.
pub fn bin() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_hyperfill"));
    c.env_remove("HYPERFILL_SOURCE")
        .env_remove("HYPERFILL_TARGET")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    c
}

#[test]
fn with_db_replaces_the_database() {
    assert_eq!(
        with_db("postgres://u@h:1/postgres", "x"),
        "postgres://u@h:1/x"
    );
    assert_eq!(
        with_db("postgres://u@h:1/postgres?sslmode=disable", "x"),
        "postgres://u@h:1/x?sslmode=disable"
    );
    assert_eq!(with_db("postgres://u@h:1", "x"), "postgres://u@h:1/x");
}

/// `1234567` → `1,234,567`, as hyperfill prints counts.
pub fn thousands(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && c != '-' && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Count and order-independent digest of the rows of `rel` (a table, a
/// view, or a parenthesized SELECT), compared between source and target.
pub async fn fingerprint(c: &Client, rel: &str) -> (i64, String) {
    let sql = format!(
        "SELECT count(*), coalesce(md5(string_agg(r, ',' ORDER BY r)), '') \
         FROM (SELECT x::text AS r FROM {rel} x) y"
    );
    let row = c
        .query_one(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    (row.get(0), row.get(1))
}

/// Run the statements of `sql` (separated by ";\n") one by one: `CALL
/// refresh_continuous_aggregate` refuses the implicit transaction of a
/// multi-statement batch.
pub async fn each_statement(c: &Client, sql: &str) {
    for stmt in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
        c.batch_execute(stmt)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e:?}"));
    }
}
