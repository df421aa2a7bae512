//! A PgBouncer in front of a test server: started on a free loopback port
//! with a generated configuration (trust authentication, a pool of two
//! server connections so that clients share them), stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

pub struct PgBouncer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

/// The pgbouncer binary, when installed.
fn binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgBouncer {
    /// A PgBouncer in `pool_mode` (transaction or session) in front of the
    /// server of `upstream_url`, or `None` after a loud skip when pgbouncer
    /// is not installed (`HYPERFILL_REQUIRE_PGBOUNCER=1` makes that a
    /// failure).
    pub fn start(test: &str, upstream_url: &str, pool_mode: &str) -> Option<PgBouncer> {
        let Some(bin) = binary() else {
            super::skip(
                test,
                "pgbouncer is not installed (apt-get install pgbouncer)",
                "HYPERFILL_REQUIRE_PGBOUNCER",
            );
            return None;
        };
        let cfg = tokio_postgres::Config::from_str(upstream_url).expect("a test URL");
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let upstream_port = cfg.get_ports().first().copied().unwrap_or(5432);
        let user = cfg.get_user().unwrap_or("postgres").to_string();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("hf-pgbouncer-{test}-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pgbouncer dir");
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("users.txt");
        std::fs::write(&users, format!("\"{user}\" \"\"\n")).expect("users.txt");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 * = host={host} port={upstream_port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 pool_mode = {pool_mode}\n\
                 default_pool_size = 2\n\
                 max_client_conn = 200\n\
                 logfile = {log}\n\
                 pidfile =\n",
                users = users.display(),
                log = dir.join("pgbouncer.log").display(),
            ),
        )
        .expect("pgbouncer.ini");
        let mut cmd = Command::new(bin);
        if is_root() {
            // pgbouncer refuses to run as root; the clusters' own user.
            use std::os::unix::fs::PermissionsExt;
            for p in [&dir, &ini, &users] {
                let mode = if p == &dir { 0o777 } else { 0o644 };
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            }
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting pgbouncer");
        let me = PgBouncer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not start listening on {port}; log:\n{}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(me)
    }

    /// A URL for `dbname` through this pooler (no TLS between client and
    /// pooler).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{dbname}?sslmode=disable",
            self.port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
