//! Connections: parsing connection strings, connecting, session settings,
//! and a thin wrapper that attaches the side and the operation to every error.
//!
//! Connection strings (`connstr`, resolved in `settings`), the environment
//! (`env`) and the password file (`pgpass`) behave as in libpq; TLS, with
//! libpq's sslmode semantics, is rustls (`tls`). A password never appears
//! in a message, a log line or `Debug`.

mod connstr;
mod env;
mod pgpass;
mod settings;
mod tls;
mod watch;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, Connection, Row, Socket};

use crate::error::{Error, Result, Side};
use env::{Environment, ProcessEnv};
use pgpass::Password;
use settings::{HostSpec, Settings, SslMode};
use tls::{Tls, TlsError, TlsStream};

/// Session settings of the source: text forms that read back identically
/// on the other side, whatever each server's defaults are; as extra
/// protection, nothing we run there can write; and no server-side time limit
/// on a statement or an open transaction (a chunk's COPY takes as long as it
/// takes; a managed service's `statement_timeout` would otherwise end every
/// long copy). Any role may set these for its own session;
/// `transaction_timeout` exists from PostgreSQL 17. `lock_timeout` is left as
/// configured: a lock wait that long fails the attempt (55P03, transient)
/// and the task is retried. A stuck server is noticed on our side instead:
/// `connect_timeout`, TCP keepalives and `--stall-timeout`. One round trip.
// language=PostgreSQL
const SOURCE_SESSION: &str = "SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; \
     SET extra_float_digits = 3; \
     SET TimeZone = 'UTC'; \
     SET bytea_output = 'hex'; \
     SET standard_conforming_strings = on; \
     SET client_min_messages = warning; \
     SET default_transaction_read_only = on; \
     SELECT set_config(name, '0', false) FROM pg_settings \
     WHERE name IN ('statement_timeout', 'idle_in_transaction_session_timeout', 'transaction_timeout')";

/// When the endpoint refused [`STARTUP_OPTIONS`] (a pooler), the source's
/// limits go first, alone: a server-side statement_timeout counts from the
/// start of each query string, and a tiny one (50 ms) can end even
/// [`SOURCE_SESSION`] on a loaded server; then it is tried again.
// language=PostgreSQL
const SESSION_TIMEOUTS: &str =
    "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0";

/// The server process of this session, for the stuck-server probe.
// language=PostgreSQL
const BACKEND_PID: &str = "SELECT pg_backend_pid()";

/// Begins a target transaction that moves or compares data, with the source
/// session's text settings and time limits, for this transaction only. The
/// target keeps no session state at all: through a transaction-mode pooler
/// each transaction may run in another server session, and a session `SET`
/// would leak into the pooled session that other clients get next.
/// One statement after BEGIN, not one `SET LOCAL` per setting: a many-chunk
/// copy runs it per task, and the server parses and runs each statement of
/// a batch on its own (ten of them cost the target about 0.2 ms per task).
// language=PostgreSQL
pub const BEGIN_TARGET: &str = "BEGIN; \
     SELECT set_config('DateStyle', 'ISO, YMD', true), \
            set_config('IntervalStyle', 'postgres', true), \
            set_config('extra_float_digits', '3', true), \
            set_config('TimeZone', 'UTC', true), \
            set_config('bytea_output', 'hex', true), \
            set_config('standard_conforming_strings', 'on', true), \
            set_config('client_min_messages', 'warning', true), \
            set_config('statement_timeout', '0', true), \
            set_config('idle_in_transaction_session_timeout', '0', true), \
            CASE WHEN current_setting('transaction_timeout', true) IS NOT NULL \
                 THEN set_config('transaction_timeout', '0', true) END";

/// Sent in the startup packet of every connection: no server-side time
/// limit on a statement or an idle transaction for hyperfill's own sessions
/// (see SOURCE_SESSION), without a round trip and without a session `SET`
/// that a transaction-mode pooler would hand on to its other clients. A
/// pooler that refuses startup options (PgBouncer: "unsupported startup
/// parameter") gets a connection without them; then the copy and verify
/// transactions set the limits for themselves (BEGIN_TARGET).
const STARTUP_OPTIONS: &str = "-c statement_timeout=0 -c idle_in_transaction_session_timeout=0";

type Conn = (Client, Connection<Socket, TlsStream<Socket>>);

/// A parsed connection string, with the side it belongs to.
#[derive(Clone)]
pub struct ConnInfo {
    pub side: Side,
    /// Everything but the host, port, password and sslmode, which are set
    /// per host at connect time.
    config: Config,
    /// Set once the endpoint refused [`STARTUP_OPTIONS`] (a pooler): shared
    /// by every clone, so the workers connect without them at once.
    no_startup_options: Arc<AtomicBool>,
    hosts: Vec<HostSpec>,
    /// One per host (the password file may differ per host).
    passwords: Vec<Option<Password>>,
    user: String,
    dbname: String,
    sslmode: SslMode,
    tls: Tls,
    load_balance: bool,
    /// The password file, for the hint when a password is missing.
    passfile: Option<PathBuf>,
    /// The limit on one host's whole start-up, and where it came from
    /// (`None`: connect_timeout=0, no limit).
    connect_timeout: Option<(Duration, &'static str)>,
    /// Connections made from this are watched for a stuck server
    /// (`watch.rs`) with this stall timeout.
    stall: Option<Duration>,
}

/// How long a watched connection waits for an answer before it probes the
/// server (`copy --stall-timeout`'s default; `verify` uses it as is).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The connect_timeout used when neither the connection string nor
/// PGCONNECT_TIMEOUT gives one (libpq waits forever).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const DEFAULT_CONNECT_TIMEOUT_WHY: &str =
    "the default connect_timeout; set connect_timeout=<seconds> in the connection string or PGCONNECT_TIMEOUT";

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(
            f,
            "ConnInfo({} {} sslmode={})",
            self.side,
            self.describe(),
            self.sslmode.as_str()
        )
    }
}

impl ConnInfo {
    /// Parse a libpq URL or key=value string; what it leaves out comes from
    /// the PG* environment variables and the password file, as in libpq.
    /// Certificate files are read here, so a bad one is reported before
    /// anything connects. The error never repeats the string itself, which
    /// may hold a password.
    pub fn parse(side: Side, conn: &str) -> Result<Self> {
        Self::parse_with(side, conn, &ProcessEnv)
    }

    fn parse_with(side: Side, conn: &str, env: &dyn Environment) -> Result<Self> {
        let invalid = |e: String| {
            Error::InvalidArgument(format!(
                "--{side} is not a valid connection string: {e}. \
                 Use a URL (postgres://user@host:5432/db?sslmode=verify-full) or key=value pairs (host=... dbname=...)"
            ))
        };
        let settings = connstr::split(conn)
            .and_then(|pairs| Settings::resolve(pairs, env))
            .map_err(invalid)?;
        let mut config = Config::from_str(&settings.postgres_string())
            .map_err(|e| invalid(crate::error::pg_text(&e)))?;
        // connect_timeout bounds the whole start-up of each host (TCP, TLS,
        // authentication, session set-up), as in libpq, which also rounds
        // 1 s up to 2; 0 means no limit. Without one we use a default, so
        // that a server that accepts and never answers cannot hang us.
        let connect_timeout = if settings.has("connect_timeout") {
            config
                .get_connect_timeout()
                .map(|t| (*t.max(&Duration::from_secs(2)), "connect_timeout"))
        } else {
            Some((DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT_WHY))
        };
        if let Some((t, _)) = connect_timeout {
            config.connect_timeout(t);
        }
        // A dead peer (a cut network, a crashed host) is noticed by TCP:
        // keepalive probes after 30 s of silence, 3 probes 10 s apart, and
        // sent data unacknowledged for 60 s. libpq's keepalives* and
        // tcp_user_timeout keys override these.
        if !settings.has("keepalives") {
            config.keepalives(true);
        }
        if !settings.has("keepalives_idle") {
            config.keepalives_idle(Duration::from_secs(30));
        }
        if !settings.has("keepalives_interval") {
            config.keepalives_interval(Duration::from_secs(10));
        }
        if !settings.has("keepalives_retries") {
            config.keepalives_retries(3);
        }
        if !settings.has("tcp_user_timeout") {
            config.tcp_user_timeout(Duration::from_secs(60));
        }
        // `status` finds hyperfill's sessions by this name.
        config.application_name("hyperfill");

        let home = env.home();
        // No TLS over unix-domain sockets (as libpq): then the certificate
        // files are not needed either.
        let tls = if settings.hosts.iter().all(HostSpec::is_socket) {
            Tls::none()
        } else {
            Tls::new(side, &settings.ssl, home.as_deref()).map_err(Error::InvalidArgument)?
        };
        let passwords = pgpass::passwords(&settings);
        Ok(Self {
            side,
            config,
            no_startup_options: Arc::new(AtomicBool::new(false)),
            passwords,
            passfile: settings.passfile.clone(),
            user: settings.user,
            dbname: settings.dbname,
            sslmode: settings.ssl.mode,
            tls,
            load_balance: settings.load_balance,
            hosts: settings.hosts,
            connect_timeout,
            stall: None,
        })
    }

    /// The same connection string, whose connections notice a stuck server:
    /// every wait longer than `stall` is checked by a probe (`watch.rs`).
    pub fn watched(&self, stall: Duration) -> ConnInfo {
        ConnInfo {
            stall: Some(stall),
            ..self.clone()
        }
    }

    /// `user@host:port/dbname`, for messages. Never includes the password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self.hosts.iter().map(host_port).collect();
        format!("{}@{}/{}", self.user, hosts.join(","), self.dbname)
    }

    fn describe_host(&self, h: &HostSpec) -> String {
        format!("{}@{}/{}", self.user, host_port(h), self.dbname)
    }

    /// Open a connection and apply the session settings.
    pub async fn connect(&self) -> Result<Db> {
        let (client, connection) = self.open().await?;
        let side = self.side;
        let mut db = Db::new(client, side);
        let ended = db.ended.clone();
        tokio::spawn(async move {
            let mut connection = Box::pin(connection);
            if let Err(e) = connection.as_mut().await {
                tracing::debug!(%side, error = %e, "connection closed with an error");
                // Kept before the connection is dropped, so that the
                // client's next request, which fails as "connection
                // closed", can report why instead.
                *ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
            drop(connection);
        });
        let setup = async {
            // The target gets no session settings (see BEGIN_TARGET).
            if side == Side::Source && self.no_startup_options.load(Ordering::Relaxed) {
                let mut tries = 0;
                loop {
                    match db.batch(SESSION_TIMEOUTS, "setting up the session").await {
                        Err(Error::Db { source, .. })
                            if tries < 3 && source.code() == Some(&SqlState::QUERY_CANCELED) =>
                        {
                            tries += 1;
                        }
                        r => break r?,
                    }
                }
            }
            // The settings and the backend's pid in one round trip
            // (pipelined; the target gets no settings).
            let settings = async {
                match side {
                    Side::Source => db.batch(SOURCE_SESSION, "setting up the session").await,
                    Side::Target => Ok(()),
                }
            };
            let pid = async {
                match self.stall {
                    Some(_) => Ok(Some(
                        db.query_one(BACKEND_PID, &[], "setting up the session")
                            .await?
                            .get::<_, i32>(0),
                    )),
                    None => Ok(None),
                }
            };
            let ((), pid) = tokio::try_join!(settings, pid)?;
            Ok(pid)
        };
        let pid = self.within_timeout(&self.describe(), setup).await?;
        if let (Some(pid), Some(stall)) = (pid, self.stall) {
            db.watch = Some(watch::Watch {
                conn: ConnInfo {
                    stall: None,
                    ..self.clone()
                },
                pid: std::sync::Arc::new(std::sync::atomic::AtomicI32::new(pid)),
                stall,
            });
        }
        Ok(db)
    }

    /// Run one step of connecting within connect_timeout.
    async fn within_timeout<T>(
        &self,
        addr: &str,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match self.connect_timeout {
            None => f.await,
            Some((timeout, why)) => tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
                Err(Error::ConnectTimeout {
                    side: self.side,
                    addr: addr.to_string(),
                    timeout,
                    why,
                })
            }),
        }
    }

    /// Connect without startup options and without session settings: the
    /// session sees the time limits the server, database and role set (for
    /// `check`).
    pub async fn connect_plain(&self) -> Result<Db> {
        let mut plain = self.clone();
        plain.no_startup_options = Arc::new(AtomicBool::new(true));
        plain.connect_raw().await
    }

    /// Connect with server defaults only (no session settings): used to parse
    /// user-given bounds the way psql would on that server.
    pub async fn connect_raw(&self) -> Result<Db> {
        let (client, connection) = self.open().await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Db::new(client, self.side))
    }

    /// Try the hosts in order (or shuffled with load_balance_hosts=random),
    /// as libpq: the first that accepts wins; the last error is returned.
    async fn open(&self) -> Result<Conn> {
        let mut order: Vec<usize> = (0..self.hosts.len()).collect();
        if self.load_balance {
            shuffle(&mut order);
        }
        let mut last = None;
        for (n, &i) in order.iter().enumerate() {
            match self.open_host(i).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    if n + 1 < order.len() {
                        tracing::warn!(side = %self.side, error = %e, "trying the next host");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::InvalidArgument(format!("--{}: no host to connect to", self.side))
        }))
    }

    /// One host's whole start-up (TCP, TLS, authentication), within
    /// connect_timeout.
    async fn open_host(&self, i: usize) -> Result<Conn> {
        let addr = self.describe_host(&self.hosts[i]);
        self.within_timeout(&addr, self.open_host_untimed(i)).await
    }

    async fn open_host_untimed(&self, i: usize) -> Result<Conn> {
        if self.no_startup_options.load(Ordering::Relaxed) {
            return self.open_host_with(i, false).await;
        }
        match self.open_host_with(i, true).await {
            Err(Error::Connect { source, .. })
                if source
                    .as_db_error()
                    .is_some_and(|e| e.message().starts_with("unsupported startup parameter")) =>
            {
                // A connection pooler (PgBouncer) in front: it takes no
                // `options`. The time limits are then set per transaction
                // (BEGIN_TARGET), and for the source's session by SET.
                tracing::info!(side = %self.side, "the endpoint takes no startup options (a connection pooler): time limits are set per transaction");
                self.no_startup_options.store(true, Ordering::Relaxed);
                self.open_host_with(i, false).await
            }
            r => r,
        }
    }

    async fn open_host_with(&self, i: usize, options: bool) -> Result<Conn> {
        let h = &self.hosts[i];
        let mut cfg = self.config.clone();
        if options {
            let all = match cfg.get_options() {
                Some(given) => format!("{given} {STARTUP_OPTIONS}"),
                None => STARTUP_OPTIONS.to_string(),
            };
            cfg.options(&all);
        }
        // tokio-postgres checks the TLS certificate against the host name;
        // with only a hostaddr, that is the address.
        cfg.host(h.name());
        if let Some(a) = h.hostaddr {
            cfg.hostaddr(a);
        }
        cfg.port(h.port);
        let password = self.passwords.get(i).and_then(Option::as_ref);
        if let Some(pw) = password {
            cfg.password(pw.secret.expose());
        }
        let attempt = |mode: PgSslMode| {
            let mut cfg = cfg.clone();
            cfg.ssl_mode(mode);
            let tls = self.tls.clone();
            async move { cfg.connect(tls).await }
        };
        // libpq never uses TLS over unix-domain sockets.
        let mode = if h.is_socket() {
            SslMode::Disable
        } else {
            self.sslmode
        };
        let result = match mode {
            SslMode::Disable => attempt(PgSslMode::Disable).await,
            // Plain first; TLS when the server refused (e.g. a hostssl rule).
            SslMode::Allow => match attempt(PgSslMode::Disable).await {
                Err(plain) if plain.as_db_error().is_some() => {
                    tracing::debug!(side = %self.side, error = %plain, "sslmode=allow: retrying with TLS");
                    match attempt(PgSslMode::Require).await {
                        Err(e) if tls_failed(&e) => Err(plain),
                        r => r,
                    }
                }
                r => r,
            },
            // TLS when the server offers it; plain again when the TLS
            // handshake fails.
            SslMode::Prefer => match attempt(PgSslMode::Prefer).await {
                Err(e) if find_tls_error(&e).is_some() => {
                    tracing::debug!(side = %self.side, error = %e, "sslmode=prefer: TLS failed, retrying without");
                    attempt(PgSslMode::Disable).await
                }
                r => r,
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                attempt(PgSslMode::Require).await
            }
        };
        result.map_err(|e| self.connect_error(h, e, password))
    }

    fn connect_error(
        &self,
        h: &HostSpec,
        source: tokio_postgres::Error,
        password: Option<&Password>,
    ) -> Error {
        let side = self.side;
        let addr = self.describe_host(h);
        // Certificate problems are configuration, not worth retrying.
        if let Some(TlsError::Verify(msg)) = find_tls_error(&source) {
            return Error::Precondition {
                side,
                message: format!("cannot connect to {addr}: {msg}"),
            };
        }
        if let Some(why) = tls::client_cert_rejection(&source) {
            return Error::Precondition {
                side,
                message: format!("cannot connect to {addr}: --{side}: {why}"),
            };
        }
        if source.as_db_error().is_none()
            && std::error::Error::source(&source)
                .is_some_and(|c| c.to_string() == "password missing")
        {
            let file = self
                .passfile
                .as_ref()
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default();
            return Error::Precondition {
                side,
                message: format!(
                    "cannot connect to {addr}: the server asks for a password and none was given. \
                     Put it in the password file{file} as a line host:port:database:user:password \
                     (mode 0600), in PGPASSWORD, or in --{side}"
                ),
            };
        }
        if source.code() == Some(&SqlState::INVALID_PASSWORD) {
            if let Some(Password {
                file: Some((path, line)),
                ..
            }) = password
            {
                tracing::warn!(
                    "--{side}: the password came from the password file {} (line {line})",
                    path.display()
                );
            }
        }
        Error::Connect { side, addr, source }
    }
}

/// `host:port`, IPv6 addresses in brackets.
fn host_port(h: &HostSpec) -> String {
    let name = h.name();
    if name.contains(':') && !h.is_socket() {
        format!("[{name}]:{}", h.port)
    } else {
        format!("{name}:{}", h.port)
    }
}

/// Our TLS error somewhere in a connection error's causes.
fn find_tls_error(e: &tokio_postgres::Error) -> Option<&TlsError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<TlsError>() {
            return Some(t);
        }
        cur = c.source();
    }
    None
}

/// Whether a connection failed at the TLS level (handshake, or a server
/// without TLS), rather than after it.
fn tls_failed(e: &tokio_postgres::Error) -> bool {
    find_tls_error(e).is_some() || e.to_string().starts_with("error performing TLS handshake")
}

/// Shuffle for load_balance_hosts=random (std's random hash keys as the
/// randomness: no RNG crate needed for this).
fn shuffle(v: &mut [usize]) {
    use std::hash::{BuildHasher, Hasher};
    for i in (1..v.len()).rev() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        let j = (h.finish() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// A bind parameter that knows its PostgreSQL type.
///
/// Every statement is sent unnamed, with its parameter types, in a single
/// round trip (Parse, Bind, Describe, Execute, Sync together): nothing is
/// left on the server between transactions, so it works the same through a
/// transaction-mode connection pooler (where a named prepared statement
/// made in one transaction is gone, or someone else's, in the next), and it
/// costs one round trip however far the server is.
pub trait Param: ToSql + Sync {
    fn pg_type(&self) -> Type;
}

/// The PostgreSQL type a Rust value is sent as.
pub trait PgType {
    const TYPE: Type;
}

macro_rules! pg_types {
    ($($t:ty => $pg:ident),* $(,)?) => {
        $(impl PgType for $t { const TYPE: Type = Type::$pg; })*
    };
}
pg_types! {
    bool => BOOL,
    i16 => INT2,
    i32 => INT4,
    i64 => INT8,
    f64 => FLOAT8,
    String => TEXT,
    &str => TEXT,
    std::time::SystemTime => TIMESTAMPTZ,
    serde_json::Value => JSONB,
    &serde_json::Value => JSONB,
    Vec<String> => TEXT_ARRAY,
    Vec<i64> => INT8_ARRAY,
}

impl<T: PgType> PgType for Option<T> {
    const TYPE: Type = T::TYPE;
}

impl<T: PgType + ToSql + Sync> Param for T {
    fn pg_type(&self) -> Type {
        T::TYPE
    }
}

/// A connection to one side. Every method names the side and the operation
/// in its error.
pub struct Db {
    pub client: Client,
    pub side: Side,
    /// Statements to send in front of the next [`Db::batch`], in its round
    /// trip (the `COMMIT` of a read-only source transaction, whose outcome
    /// nothing waits for).
    deferred: std::sync::Mutex<String>,
    /// The error the server ended the session with, if it did: a FATAL
    /// sent while no request was waiting (a hot standby ending an idle
    /// transaction for a recovery conflict, an administrator's
    /// pg_terminate_backend) reaches no request, only the connection.
    ended: Arc<Mutex<Option<tokio_postgres::Error>>>,
    /// Set on worker connections: every wait is checked for a stuck server.
    watch: Option<watch::Watch>,
    /// Source connections only: the statements prepared on this session,
    /// by their text (see [`Db::prepared`]).
    statements: std::sync::Mutex<std::collections::HashMap<String, tokio_postgres::Statement>>,
}

/// Set once a source session says a statement prepared on it is gone (a
/// transaction-mode pooler hands each transaction another server session):
/// from then on every source statement is sent unnamed, as on the target.
static SOURCE_STATEMENTS_OFF: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// How many statements one source session keeps prepared at most.
const MAX_PREPARED: usize = 64;

/// The parameters as tokio-postgres takes them, with their types.
fn typed<'a>(params: &[&'a dyn Param]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|p| (*p as &(dyn ToSql + Sync), p.pg_type()))
        .collect()
}

/// The parameters as a prepared statement takes them.
fn values<'a>(params: &[&'a dyn Param]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| *p as &(dyn ToSql + Sync)).collect()
}

impl Db {
    pub(crate) fn new(client: Client, side: Side) -> Db {
        Db {
            client,
            side,
            deferred: std::sync::Mutex::new(String::new()),
            ended: Arc::default(),
            watch: None,
            statements: std::sync::Mutex::default(),
        }
    }

    /// The statement prepared for `sql` on this session, when it is a
    /// source session that has run it before. Every task runs the same
    /// catalog statements on the source, and planning them again each time
    /// costs more than running them (about 1 ms against 0.1 ms on 2.29's
    /// chunk catalog), so the source keeps them prepared. The target never
    /// does: through a transaction-mode pooler, nothing may outlive a
    /// transaction there.
    fn prepared(&self, sql: &str) -> Option<tokio_postgres::Statement> {
        if !self.keeps_statements() {
            return None;
        }
        self.statements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sql)
            .cloned()
    }

    /// Whether statements run on this session are to be kept prepared.
    fn keeps_statements(&self) -> bool {
        self.side == Side::Source
            && !SOURCE_STATEMENTS_OFF.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Prepare `sql` for the next time, in the round trip of its first run:
    /// sent after the statement itself (join it after that), so the order
    /// of pipelined statements is kept. A failed prepare is only not kept.
    async fn prepare_for_next_time(&self, sql: &str, params: &[&dyn Param]) {
        if !self.keeps_statements() {
            return;
        }
        let types: Vec<Type> = params.iter().map(|p| p.pg_type()).collect();
        if let Ok(st) = self.client.prepare_typed(sql, &types).await {
            let mut m = self.statements.lock().unwrap_or_else(|e| e.into_inner());
            if m.len() >= MAX_PREPARED {
                m.clear();
            }
            m.insert(sql.to_string(), st);
        }
    }

    /// A prepared statement that is gone means a transaction-mode pooler in
    /// front of the source: this attempt fails (transient) and from now on
    /// source statements are sent unnamed.
    fn note_prepared_error<T>(r: &std::result::Result<T, tokio_postgres::Error>) {
        if let Err(e) = r {
            if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME) {
                SOURCE_STATEMENTS_OFF.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    async fn rows(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        match self.prepared(sql) {
            Some(st) => {
                let r = self.client.query(&st, &values(params)).await;
                Self::note_prepared_error(&r);
                r
            }
            None => {
                let typed = typed(params);
                let (r, ()) = futures::join!(
                    self.client.query_typed(sql, &typed),
                    self.prepare_for_next_time(sql, params)
                );
                r
            }
        }
    }

    async fn row(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> std::result::Result<Row, tokio_postgres::Error> {
        match self.prepared(sql) {
            Some(st) => {
                let r = self.client.query_one(&st, &values(params)).await;
                Self::note_prepared_error(&r);
                r
            }
            None => {
                let typed = typed(params);
                let (r, ()) = futures::join!(
                    self.client.query_typed_one(sql, &typed),
                    self.prepare_for_next_time(sql, params)
                );
                r
            }
        }
    }

    async fn row_opt(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> std::result::Result<Option<Row>, tokio_postgres::Error> {
        match self.prepared(sql) {
            Some(st) => {
                let r = self.client.query_opt(&st, &values(params)).await;
                Self::note_prepared_error(&r);
                r
            }
            None => {
                let typed = typed(params);
                let (r, ()) = futures::join!(
                    self.client.query_typed_opt(sql, &typed),
                    self.prepare_for_next_time(sql, params)
                );
                r
            }
        }
    }

    /// Send `sql` (statements without parameters) with the next
    /// [`Db::batch`] instead of now, saving its round trip.
    pub fn defer(&self, sql: &str) {
        let mut d = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        d.push_str(sql);
        d.push_str("; ");
    }

    /// The error for a failed request on this connection: the side and the
    /// operation, and, when the connection was closed because the server
    /// ended the session, the server's own error (message, SQLSTATE, hint)
    /// rather than a bare "connection closed".
    pub fn error(&self, what: impl Into<String>, e: tokio_postgres::Error) -> Error {
        if e.is_closed() {
            let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(ended) = ended {
                // Only where that keeps the decision to retry: a closed
                // connection is always retried.
                if crate::error::is_retryable(&ended) {
                    return Error::db(self.side, what, ended);
                }
                let what = format!(
                    "{} (the server ended the session: {})",
                    what.into(),
                    crate::error::pg_text(&ended)
                );
                return Error::db(self.side, what, e);
            }
        }
        Error::db(self.side, what, e)
    }

    /// Await an operation on this connection; on a watched connection, a
    /// stuck server fails it with [`Error::Stalled`] instead of hanging.
    /// Errors name the side and `what`.
    pub async fn guard<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        let r = match &self.watch {
            None => f.await,
            Some(w) => w.run(self.side, what, f).await?,
        };
        r.map_err(|e| self.error(what, e))
    }

    /// Run a statement; the error is tokio-postgres' own, for callers that
    /// look at its SQLSTATE.
    pub async fn try_query(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        self.rows(sql, params).await
    }

    /// [`Db::try_query`] for exactly one row.
    pub async fn try_query_one(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> std::result::Result<Row, tokio_postgres::Error> {
        self.row(sql, params).await
    }

    pub async fn query(&self, sql: &str, params: &[&dyn Param], what: &str) -> Result<Vec<Row>> {
        self.guard(what, self.rows(sql, params)).await
    }

    pub async fn query_one(&self, sql: &str, params: &[&dyn Param], what: &str) -> Result<Row> {
        self.guard(what, self.row(sql, params)).await
    }

    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&dyn Param],
        what: &str,
    ) -> Result<Option<Row>> {
        self.guard(what, self.row_opt(sql, params)).await
    }

    /// Run a statement; returns the number of rows it affected.
    pub async fn execute(&self, sql: &str, params: &[&dyn Param], what: &str) -> Result<u64> {
        let run = async {
            let rows = self.client.query_typed_raw(sql, typed(params)).await?;
            futures::pin_mut!(rows);
            while rows.as_mut().try_next().await?.is_some() {}
            Ok(rows.rows_affected().unwrap_or(0))
        };
        self.guard(what, run).await
    }

    /// Statements without parameters, in one simple-query round trip
    /// (with whatever was [`Db::defer`]red in front).
    /// On a watched connection, read which server process serves the
    /// transaction just begun (send it right after BEGIN, in the same
    /// round trip), so that the stuck-server probe asks about the right
    /// one behind a transaction-mode pooler. Nothing on other connections.
    pub async fn note_session(&self) -> Result<()> {
        let Some(w) = &self.watch else {
            return Ok(());
        };
        let pid: i32 = self
            .guard(
                "reading the transaction's server process",
                self.client.query_typed_one(BACKEND_PID, &[]),
            )
            .await?
            .get(0);
        w.set_pid(pid);
        Ok(())
    }

    pub async fn batch(&self, sql: &str, what: &str) -> Result<()> {
        let deferred =
            std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|e| e.into_inner()));
        let sql = if deferred.is_empty() {
            std::borrow::Cow::Borrowed(sql)
        } else {
            std::borrow::Cow::Owned(format!("{deferred}{sql}"))
        };
        self.guard(what, self.client.batch_execute(&sql)).await
    }
}

#[cfg(test)]
mod tests {
    use super::env::FakeEnv;
    use super::*;

    fn parse(s: &str, env: &[(&'static str, &'static str)]) -> Result<ConnInfo> {
        ConnInfo::parse_with(Side::Target, s, &FakeEnv(env.to_vec()))
    }

    #[test]
    fn describe_and_debug_never_show_the_password() {
        let c = parse(
            "postgres://u:hunter2@h1:5433,[::1]:5434/db?sslmode=disable",
            &[],
        )
        .expect("parsed");
        assert_eq!(c.describe(), "u@h1:5433,[::1]:5434/db");
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("sslmode=disable"), "{d}");
        let c = parse(
            "sslmode=disable",
            &[("PGPASSWORD", "hunter3"), ("PGHOST", "/tmp/sock")],
        )
        .expect("parsed");
        assert_eq!(c.describe(), "osuser@/tmp/sock:5432/osuser");
        assert!(!format!("{c:?}").contains("hunter3"));
        assert_eq!(c.config.get_application_name(), Some("hyperfill"));
        assert_eq!(
            c.config.get_connect_timeout(),
            Some(&Duration::from_secs(15))
        );
        assert_eq!(
            c.connect_timeout.map(|t| t.0),
            Some(DEFAULT_CONNECT_TIMEOUT)
        );
        let c = parse("sslmode=disable connect_timeout=3", &[]).expect("parsed");
        assert_eq!(
            c.connect_timeout,
            Some((Duration::from_secs(3), "connect_timeout"))
        );
        // libpq: 1 s is rounded up to 2, 0 is no limit; PGCONNECT_TIMEOUT.
        let c = parse("connect_timeout=1", &[]).expect("parsed");
        assert_eq!(c.connect_timeout.map(|t| t.0), Some(Duration::from_secs(2)));
        let c = parse("connect_timeout=0", &[]).expect("parsed");
        assert_eq!(c.connect_timeout, None);
        let c = parse("", &[("PGCONNECT_TIMEOUT", "7")]).expect("parsed");
        assert_eq!(c.connect_timeout.map(|t| t.0), Some(Duration::from_secs(7)));
        assert_eq!(c.config.get_keepalives_retries(), Some(3));
        assert_eq!(
            c.config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(60))
        );
    }

    #[test]
    fn parse_errors_name_the_side_and_never_the_password() {
        for s in [
            "postgres://u:hunter2@h/db?sslmode=sometimes",
            "host=h password=hunter2 keepalives=x",
            "host=h password='hunter2",
            "host=h hunter2",
        ] {
            match parse(s, &[]) {
                Ok(_) => panic!("{s}: expected an error"),
                Err(e) => {
                    let m = e.to_string();
                    assert!(
                        m.starts_with("--target is not a valid connection string"),
                        "{m}"
                    );
                    assert!(!m.contains("hunter2"), "{m}");
                    assert_eq!(e.exit_code(), crate::error::exit::BAD_ARGUMENTS);
                }
            }
        }
    }

    #[test]
    fn the_password_file_is_read_per_host() {
        let dir = std::env::temp_dir().join(format!("hf-db-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pgpass");
        std::fs::write(&f, "h1:5432:db:u:one\nh2:5432:db:u:two\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let conn = format!(
            "host=h1,h2,h3 user=u dbname=db sslmode=disable passfile='{}'",
            f.display()
        );
        let c = parse(&conn, &[]).expect("parsed");
        let pw: Vec<Option<&str>> = c
            .passwords
            .iter()
            .map(|p| p.as_ref().map(|p| p.secret.expose()))
            .collect();
        assert_eq!(pw, vec![Some("one"), Some("two"), None]);
        // a password in the string wins
        let c = parse(&format!("{conn} password=given"), &[]).expect("parsed");
        assert!(c
            .passwords
            .iter()
            .all(|p| p.as_ref().map(|p| p.secret.expose()) == Some("given")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
