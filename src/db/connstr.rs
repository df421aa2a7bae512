//! Connection strings read the way libpq reads them: a URL
//! (`postgres://` / `postgresql://`) or `key=value` pairs, libpq's keys,
//! the `PG*` environment variables for what the string leaves out, and the
//! password file (`~/.pgpass`).
//!
//! tokio-postgres rejects libpq keys it does not know (`sslrootcert`,
//! `passfile`, ...) and the sslmodes `allow`/`verify-ca`/`verify-full`, so
//! the whole string is parsed here. Keys tokio-postgres handles itself are
//! handed to it ([`Settings::postgres`]); the rest is resolved here.
//!
//! No error or `Debug` output in this module ever contains a value that
//! could be a password: errors name keys, never the string or its values
//! (except values that are known not to be secret, such as an sslmode).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A password, sslpassword or similar: never shown.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the process gets its environment from (a fake one in tests).
pub(crate) trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    fn os_user(&self) -> Option<String>;
    fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }
}

/// The real process environment.
pub(crate) struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn os_user(&self) -> Option<String> {
        whoami::username().ok()
    }
}

/// What a key is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Use {
    /// Resolved in this module.
    Ours,
    /// Handed to tokio-postgres as it is.
    Postgres,
    /// Accepted for libpq compatibility, without effect here.
    Ignored,
    /// A libpq key hyperfill does not implement; the text says what to do.
    Unsupported(&'static str),
}

/// libpq's connection keys (PostgreSQL 17) and what hyperfill does with each.
const KEYS: &[(&str, Use)] = &[
    ("host", Use::Ours),
    ("hostaddr", Use::Ours),
    ("port", Use::Ours),
    ("dbname", Use::Postgres),
    ("user", Use::Ours),
    ("password", Use::Ours),
    ("passfile", Use::Ours),
    ("channel_binding", Use::Postgres),
    ("connect_timeout", Use::Postgres),
    ("client_encoding", Use::Ours),
    ("options", Use::Postgres),
    ("application_name", Use::Ignored),
    ("fallback_application_name", Use::Ignored),
    ("keepalives", Use::Postgres),
    ("keepalives_idle", Use::Postgres),
    ("keepalives_interval", Use::Postgres),
    ("keepalives_count", Use::Postgres),
    ("tcp_user_timeout", Use::Postgres),
    ("replication", Use::Ours),
    ("gssencmode", Use::Ours),
    ("sslmode", Use::Ours),
    ("sslnegotiation", Use::Postgres),
    ("sslcompression", Use::Ignored),
    ("sslcert", Use::Ours),
    ("sslkey", Use::Ours),
    ("sslpassword", Use::Ours),
    ("sslcertmode", Use::Ours),
    ("sslrootcert", Use::Ours),
    ("sslsni", Use::Ours),
    ("ssl_min_protocol_version", Use::Ours),
    ("ssl_max_protocol_version", Use::Ours),
    ("krbsrvname", Use::Ignored),
    ("gsslib", Use::Ignored),
    ("gssdelegation", Use::Ignored),
    ("target_session_attrs", Use::Postgres),
    ("load_balance_hosts", Use::Ours),
    (
        "service",
        Use::Unsupported("connection service files (pg_service.conf) are not supported; write the service's settings into the connection string"),
    ),
    (
        "sslcrl",
        Use::Unsupported("certificate revocation lists are not supported"),
    ),
    (
        "sslcrldir",
        Use::Unsupported("certificate revocation lists are not supported"),
    ),
    (
        "requirepeer",
        Use::Unsupported("checking the peer of a unix-domain socket is not supported"),
    ),
    (
        "require_auth",
        Use::Unsupported("restricting the authentication method is not supported; use channel_binding=require to insist on SCRAM with channel binding"),
    ),
];

/// Environment variables for keys the string does not set (libpq's list,
/// minus PGAPPNAME: hyperfill names its sessions itself).
const ENV: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("passfile", "PGPASSFILE"),
    ("channel_binding", "PGCHANNELBINDING"),
    ("options", "PGOPTIONS"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("client_encoding", "PGCLIENTENCODING"),
    ("sslmode", "PGSSLMODE"),
    ("sslnegotiation", "PGSSLNEGOTIATION"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("sslcertmode", "PGSSLCERTMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslsni", "PGSSLSNI"),
    ("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION"),
    ("ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION"),
    ("gssencmode", "PGGSSENCMODE"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
    ("load_balance_hosts", "PGLOADBALANCEHOSTS"),
];

/// Environment variables libpq reads that hyperfill does not support: a
/// warning, because silently ignoring them could weaken what the operator
/// configured.
const ENV_UNSUPPORTED: &[&str] = &[
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSSLCRL",
    "PGSSLCRLDIR",
    "PGREQUIREPEER",
    "PGREQUIREAUTH",
];

fn lookup(key: &str) -> Option<Use> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, u)| *u)
}

/// libpq's default port.
pub(crate) const DEFAULT_PORT: u16 = 5432;
/// libpq's compiled-in unix-socket directory on Debian: a socket here
/// matches `localhost` in the password file.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

// ---------------------------------------------------------------------------
// Splitting a string into key/value pairs
// ---------------------------------------------------------------------------

/// The key/value pairs of a URL or key=value string, in order, decoded.
/// Keys are checked against libpq's list.
pub(crate) fn split(conn: &str) -> Result<Vec<(String, String)>, String> {
    let pairs = if let Some(rest) = conn
        .strip_prefix("postgresql://")
        .or_else(|| conn.strip_prefix("postgres://"))
    {
        parse_url(rest)?
    } else {
        parse_key_values(conn)?
    };
    for (k, _) in &pairs {
        match lookup(k) {
            None => {
                return Err(format!(
                    "unknown connection option \"{}\" (libpq's options are host, port, dbname, user, password, sslmode, sslrootcert, ...)",
                    printable(k)
                ))
            }
            Some(Use::Unsupported(why)) => {
                return Err(format!("the connection option \"{k}\" is not supported: {why}"))
            }
            Some(_) => {}
        }
    }
    Ok(pairs)
}

/// A key as the user typed it, safe to show: keys are short words; a long
/// or odd "key" is more likely a misplaced value, so it is cut.
fn printable(k: &str) -> String {
    if k.chars().count() <= 40 && k.chars().all(|c| c.is_ascii_graphic()) {
        k.to_string()
    } else {
        let head: String = k.chars().take(3).filter(|c| c.is_ascii_graphic()).collect();
        format!("{head}...")
    }
}

fn is_space(c: char) -> bool {
    // C's isspace() in the "C" locale
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// libpq's `key = value` syntax: whitespace around `=`, values in single
/// quotes (may be empty or hold spaces), backslash escapes in quoted and
/// unquoted values.
fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| is_space(*c)) {
            it.next();
        }
        if it.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || is_space(c) {
                break;
            }
            key.push(c);
            it.next();
        }
        while it.peek().is_some_and(|c| is_space(*c)) {
            it.next();
        }
        if it.next() != Some('=') {
            // The "key" may really be a value (a password typed without its
            // key): name it only when it is a known key.
            return Err(if lookup(&key).is_some() {
                format!("missing \"=\" after \"{key}\"")
            } else {
                format!(
                    "missing \"=\" after word {} (use key=value pairs separated by spaces, or a postgres:// URL)",
                    out.len() + 1
                )
            });
        }
        while it.peek().is_some_and(|c| is_space(*c)) {
            it.next();
        }
        let mut value = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            let mut closed = false;
            while let Some(c) = it.next() {
                match c {
                    '\\' => {
                        if let Some(n) = it.next() {
                            value.push(n);
                        }
                    }
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!(
                    "unterminated quoted value of \"{}\"",
                    printable(&key)
                ));
            }
        } else {
            while let Some(&c) = it.peek() {
                if is_space(c) {
                    break;
                }
                it.next();
                if c == '\\' {
                    if let Some(n) = it.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

/// `%XX` decoding as libpq does it: every `%` must start two hex digits, and
/// `%00` is refused. `what` names the part (never its value).
fn percent_decode(s: &str, what: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            ) {
                (Some(h), Some(l)) => {
                    let v = (h * 16 + l) as u8;
                    if v == 0 {
                        return Err(format!("forbidden value %00 in the {what} of the URL"));
                    }
                    out.push(v);
                    i += 3;
                }
                _ => {
                    return Err(format!(
                        "invalid percent-encoding in the {what} of the URL (write % as %25)"
                    ))
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("the {what} of the URL is not valid UTF-8"))
}

/// `postgres://[user[:password]@][host[:port][,...]][/dbname][?key=value&...]`
/// (the scheme already removed), with libpq's rules.
fn parse_url(rest: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut s = rest;

    // Credentials: libpq looks for '@' before the first '/'.
    if let Some(at) = s.find(['@', '/']).filter(|i| s.as_bytes()[*i] == b'@') {
        let creds = &s[..at];
        s = &s[at + 1..];
        let (user, password) = match creds.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (creds, None),
        };
        let user = percent_decode(user, "user name")?;
        if !user.is_empty() {
            out.push(("user".to_string(), user));
        }
        if let Some(p) = password {
            let p = percent_decode(p, "password")?;
            if !p.is_empty() {
                out.push(("password".to_string(), p));
            }
        }
    }

    // Hosts and ports, up to '/' or '?'.
    let end = s.find(['/', '?']).unwrap_or(s.len());
    let hostspec = &s[..end];
    s = &s[end..];
    if !hostspec.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for item in split_hosts(hostspec)? {
            let (h, p) = item;
            hosts.push(percent_decode(h, "host")?);
            ports.push(percent_decode(p.unwrap_or(""), "port")?);
        }
        if hosts.iter().any(|h| !h.is_empty()) {
            out.push(("host".to_string(), hosts.join(",")));
        }
        if ports.iter().any(|p| !p.is_empty()) {
            out.push(("port".to_string(), ports.join(",")));
        }
    }

    // Database name.
    if let Some(after) = s.strip_prefix('/') {
        let end = after.find('?').unwrap_or(after.len());
        let db = percent_decode(&after[..end], "database name")?;
        if !db.is_empty() {
            out.push(("dbname".to_string(), db));
        }
        s = &after[end..];
    }

    // Query parameters.
    if let Some(query) = s.strip_prefix('?') {
        for (n, param) in query.split('&').enumerate() {
            if param.is_empty() {
                continue;
            }
            let Some((k, v)) = param.split_once('=') else {
                return Err(format!(
                    "query parameter {} of the URL has no \"=\" (write key=value)",
                    n + 1
                ));
            };
            let k = percent_decode(k, "query parameter names")?;
            let v = percent_decode(v, &format!("value of \"{}\"", printable(&k)))?;
            // JDBC compatibility, as libpq: ssl=true means sslmode=require.
            if k == "ssl" {
                if v == "true" {
                    out.push(("sslmode".to_string(), "require".to_string()));
                    continue;
                }
                return Err("invalid value for \"ssl\" in the URL (only ssl=true is accepted; prefer sslmode=...)".into());
            }
            out.push((k, v));
        }
    }
    Ok(out)
}

/// `h1:p1,[::1]:p2,h3` → (host, port) pairs, IPv6 literals in brackets.
fn split_hosts(spec: &str) -> Result<Vec<(&str, Option<&str>)>, String> {
    let mut out = Vec::new();
    for item in spec.split(',') {
        if let Some(rest) = item.strip_prefix('[') {
            let Some(close) = rest.find(']') else {
                return Err(
                    "missing \"]\" after an IPv6 host address in the URL ([::1]:5432)".into(),
                );
            };
            let host = &rest[..close];
            if host.is_empty() {
                return Err("empty IPv6 host address in brackets in the URL".into());
            }
            let after = &rest[close + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(
                    "unexpected text after an IPv6 host address in the URL (expected \":port\")"
                        .into(),
                ),
            };
            out.push((host, port));
        } else {
            match item.split_once(':') {
                Some((h, p)) => out.push((h, Some(p))),
                None => out.push((item, None)),
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Resolving the pairs (with the environment) into settings
// ---------------------------------------------------------------------------

/// libpq's sslmode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<Self, String> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode \"{}\" (use disable, allow, prefer, require, verify-ca or verify-full)",
                    printable(other)
                ))
            }
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// One host to try: a name or a unix-socket directory, an optional numeric
/// address, a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostSpec {
    pub host: Option<String>,
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
}

impl HostSpec {
    pub(crate) fn is_socket(&self) -> bool {
        self.host.as_deref().is_some_and(|h| h.starts_with('/'))
    }

    /// The name the host goes by in messages, TLS and the password file.
    pub(crate) fn name(&self) -> String {
        match (&self.host, &self.hostaddr) {
            (Some(h), _) => h.clone(),
            (None, Some(a)) => a.to_string(),
            (None, None) => "localhost".to_string(),
        }
    }
}

/// The TLS-related settings, as given (files are read in `tls`).
#[derive(Clone, Debug)]
pub(crate) struct SslSettings {
    pub mode: SslMode,
    /// sslrootcert, as given (a path or `system`).
    pub rootcert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    /// sslpassword (only to explain that encrypted keys are not supported).
    pub password: Option<Secret>,
    pub sni: bool,
    /// sslcertmode=disable: never send a client certificate.
    pub no_client_cert: bool,
    /// ssl_min_protocol_version=TLSv1.3
    pub min_tls13: bool,
    /// ssl_max_protocol_version=TLSv1.2
    pub max_tls12: bool,
}

/// Everything a connection string (plus the environment) says.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub hosts: Vec<HostSpec>,
    pub user: String,
    pub dbname: String,
    /// From the string or PGPASSWORD; the password file is read later.
    pub password: Option<Secret>,
    /// passfile / PGPASSFILE, else ~/.pgpass.
    pub passfile: Option<PathBuf>,
    /// Whether passfile was given (a missing explicit file is reported).
    pub passfile_explicit: bool,
    pub ssl: SslSettings,
    pub load_balance: bool,
    /// Keys for tokio-postgres, in order (user and dbname resolved).
    pub postgres: Vec<(String, String)>,
}

impl Settings {
    /// Resolve the pairs of [`split`] with libpq's environment defaults.
    pub(crate) fn resolve(
        pairs: Vec<(String, String)>,
        env: &dyn Environment,
    ) -> Result<Settings, String> {
        // Later keys win, as in libpq; an empty value counts as not given.
        let mut map: HashMap<String, String> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for (k, v) in pairs {
            let k = if k == "keepalives_count" {
                // libpq's name; tokio-postgres calls it keepalives_retries
                "keepalives_retries".to_string()
            } else {
                k
            };
            if v.is_empty() {
                map.remove(&k);
                continue;
            }
            if !order.contains(&k) {
                order.push(k.clone());
            }
            map.insert(k, v);
        }
        for (key, var) in ENV {
            if !map.contains_key(*key) {
                if let Some(v) = env.var(var) {
                    if !order.iter().any(|k| k == key) {
                        order.push(key.to_string());
                    }
                    map.insert(key.to_string(), v);
                }
            }
        }
        // Once per process, not once per side.
        static WARNED: std::sync::Once = std::sync::Once::new();
        let unsupported: Vec<&str> = ENV_UNSUPPORTED
            .iter()
            .copied()
            .filter(|v| env.var(v).is_some())
            .collect();
        if !unsupported.is_empty() {
            WARNED.call_once(|| {
                tracing::warn!(
                    "{} set, but hyperfill does not support it; ignored",
                    unsupported.join(", ")
                );
            });
        }
        let get = |k: &str| map.get(k).map(String::as_str);

        let hosts = host_list(get("host"), get("hostaddr"), get("port"))?;

        let user = match get("user") {
            Some(u) => u.to_string(),
            None => env.os_user().ok_or(
                "no user name given and the OS user name is unknown: set user=... or PGUSER",
            )?,
        };
        let dbname = get("dbname").unwrap_or(&user).to_string();

        let mode = match get("sslmode") {
            Some(m) => Some(SslMode::parse(m)?),
            None => None,
        };
        let rootcert = get("sslrootcert").map(str::to_string);
        // libpq (16+): sslrootcert=system means verify-full unless told
        // otherwise, and refuses weaker modes (any public CA would do).
        let mode = match (mode, rootcert.as_deref()) {
            (None, Some("system")) => SslMode::VerifyFull,
            (Some(m), Some("system")) if m != SslMode::VerifyFull && m != SslMode::Disable => {
                return Err(format!(
                    "sslmode={} may not be used with sslrootcert=system (use sslmode=verify-full: with the system's trusted CAs, a certificate for any other name would pass)",
                    m.as_str()
                ));
            }
            (m, _) => m.unwrap_or(SslMode::Prefer),
        };
        let bool_key = |k: &str, default: bool| -> Result<bool, String> {
            match get(k) {
                None => Ok(default),
                Some("1") => Ok(true),
                Some("0") => Ok(false),
                Some(_) => Err(format!("invalid value for \"{k}\" (use 0 or 1)")),
            }
        };
        let no_client_cert = match get("sslcertmode") {
            None | Some("allow") => false,
            Some("disable") => true,
            Some("require") => {
                return Err("sslcertmode=require is not supported (use allow or disable)".into())
            }
            Some(_) => {
                return Err("invalid value for \"sslcertmode\" (use allow or disable)".into())
            }
        };
        let tls_version = |k: &str| -> Result<Option<&str>, String> {
            match get(k) {
                None => Ok(None),
                Some(v @ ("TLSv1" | "TLSv1.1" | "TLSv1.2" | "TLSv1.3")) => Ok(Some(v)),
                Some(_) => Err(format!(
                    "invalid value for \"{k}\" (use TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3)"
                )),
            }
        };
        let min = tls_version("ssl_min_protocol_version")?;
        let max = tls_version("ssl_max_protocol_version")?;
        if matches!(max, Some("TLSv1" | "TLSv1.1")) {
            return Err(
                "ssl_max_protocol_version below TLSv1.2 is not supported (hyperfill speaks TLS 1.2 and 1.3)"
                    .into(),
            );
        }
        if min == Some("TLSv1.3") && max == Some("TLSv1.2") {
            return Err(
                "ssl_min_protocol_version is above ssl_max_protocol_version (TLSv1.3 > TLSv1.2)"
                    .into(),
            );
        }
        let ssl = SslSettings {
            mode,
            rootcert,
            cert: get("sslcert").map(str::to_string),
            key: get("sslkey").map(str::to_string),
            password: get("sslpassword").map(Secret::new),
            sni: bool_key("sslsni", true)?,
            no_client_cert,
            min_tls13: min == Some("TLSv1.3"),
            max_tls12: max == Some("TLSv1.2"),
        };

        let load_balance = match get("load_balance_hosts") {
            None | Some("disable") => false,
            Some("random") => true,
            Some(_) => {
                return Err(
                    "invalid value for \"load_balance_hosts\" (use disable or random)".into(),
                )
            }
        };
        match get("gssencmode") {
            None | Some("disable" | "prefer") => {}
            Some("require") => {
                return Err(
                    "gssencmode=require is not supported (hyperfill has no GSSAPI encryption; use TLS: sslmode=verify-full)"
                        .into(),
                )
            }
            Some(_) => {
                return Err("invalid value for \"gssencmode\" (use disable or prefer)".into())
            }
        }
        if let Some(enc) = get("client_encoding") {
            let e = enc.to_ascii_lowercase().replace(['-', '_'], "");
            if !matches!(e.as_str(), "utf8" | "unicode" | "auto") {
                return Err(format!(
                    "client_encoding={} is not supported: hyperfill always uses UTF8",
                    printable(enc)
                ));
            }
        }
        if let Some(r) = get("replication") {
            if !matches!(r, "0" | "false" | "off" | "no") {
                return Err(
                    "replication connections are not supported (remove the replication option)"
                        .into(),
                );
            }
        }

        let passfile_explicit = map.contains_key("passfile");
        let passfile = get("passfile")
            .map(PathBuf::from)
            .or_else(|| env.home().map(|h| h.join(".pgpass")));

        let mut postgres = vec![
            ("user".to_string(), user.clone()),
            ("dbname".to_string(), dbname.clone()),
        ];
        for k in &order {
            if k == "user" || k == "dbname" {
                continue;
            }
            // keepalives_retries is keepalives_count under its tokio-postgres name
            let u = if k == "keepalives_retries" {
                Some(Use::Postgres)
            } else {
                lookup(k)
            };
            if u == Some(Use::Postgres) {
                if let Some(v) = map.get(k) {
                    postgres.push((k.clone(), v.clone()));
                }
            }
        }

        Ok(Settings {
            hosts,
            user,
            dbname,
            password: get("password").map(Secret::new),
            passfile,
            passfile_explicit,
            ssl,
            load_balance,
            postgres,
        })
    }

    /// Whether the string or the environment set this tokio-postgres key.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.postgres.iter().any(|(k, _)| k == key)
    }

    /// The tokio-postgres keys as one key='value' string.
    pub(crate) fn postgres_string(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.postgres {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(k);
            s.push_str("='");
            for c in v.chars() {
                if c == '\'' || c == '\\' {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push('\'');
        }
        s
    }
}

/// The hosts to try, with libpq's rules for comma-separated host, hostaddr
/// and port lists.
fn host_list(
    host: Option<&str>,
    hostaddr: Option<&str>,
    port: Option<&str>,
) -> Result<Vec<HostSpec>, String> {
    let hosts: Vec<&str> = host.map(|h| h.split(',').collect()).unwrap_or_default();
    let addrs: Vec<IpAddr> = match hostaddr {
        None => Vec::new(),
        Some(a) => a
            .split(',')
            .map(|a| {
                a.trim().parse::<IpAddr>().map_err(|_| {
                    format!(
                        "invalid hostaddr \"{}\" (a numeric IPv4 or IPv6 address)",
                        printable(a)
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(format!(
            "could not match {} host names to {} hostaddr values",
            hosts.len(),
            addrs.len()
        ));
    }
    let n = hosts.len().max(addrs.len()).max(1);
    let ports: Vec<u16> = match port {
        None => vec![DEFAULT_PORT],
        Some(p) => p
            .split(',')
            .map(|p| {
                let p = p.trim();
                if p.is_empty() {
                    return Ok(DEFAULT_PORT);
                }
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("invalid port number \"{}\"", printable(p)))
            })
            .collect::<Result<_, _>>()?,
    };
    if ports.len() != 1 && ports.len() != n {
        return Err(format!(
            "could not match {} port numbers to {} hosts",
            ports.len(),
            n
        ));
    }
    Ok((0..n)
        .map(|i| HostSpec {
            host: hosts
                .get(i)
                .map(|h| h.trim())
                .filter(|h| !h.is_empty())
                .map(str::to_string),
            hostaddr: addrs.get(i).copied(),
            port: if ports.len() == 1 { ports[0] } else { ports[i] },
        })
        .collect())
}

// ---------------------------------------------------------------------------
// The password file
// ---------------------------------------------------------------------------

/// The host name a connection has in the password file: `localhost` for the
/// default socket directory and for no host at all, as libpq.
pub(crate) fn pgpass_host(spec: &HostSpec) -> String {
    match (&spec.host, &spec.hostaddr) {
        (Some(h), _) if h == DEFAULT_SOCKET_DIR => "localhost".to_string(),
        (Some(h), _) => h.clone(),
        (None, Some(a)) => a.to_string(),
        (None, None) => "localhost".to_string(),
    }
}

/// One field of a password-file line against a value: `*` matches
/// anything, `\` escapes the next character. Returns the rest of the line
/// after the field's `:`.
fn pgpass_field<'a>(line: &'a str, value: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut chars = line.char_indices();
    let mut want = value.chars();
    loop {
        let (i, c) = chars.next()?;
        let (c, escaped) = if c == '\\' {
            match chars.next() {
                Some((_, n)) => (n, true),
                None => return None,
            }
        } else {
            (c, false)
        };
        if c == ':' && !escaped {
            return if want.next().is_none() {
                Some(&line[i + 1..])
            } else {
                None
            };
        }
        if want.next() != Some(c) {
            return None;
        }
    }
}

/// The password of the first matching line of a password file
/// (`host:port:database:user:password`), libpq's rules.
pub(crate) fn pgpass_lookup(
    contents: &str,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<(usize, Secret)> {
    for (n, line) in contents.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = pgpass_field(line, host)
            .and_then(|r| pgpass_field(r, port))
            .and_then(|r| pgpass_field(r, dbname))
            .and_then(|r| pgpass_field(r, user))
        else {
            continue;
        };
        // The password: up to an unescaped ':', backslashes removed.
        let mut pw = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                ':' => break,
                '\\' => match chars.next() {
                    Some(n) => pw.push(n),
                    None => pw.push('\\'),
                },
                c => pw.push(c),
            }
        }
        return Some((n + 1, Secret::new(pw)));
    }
    None
}

/// The password file's contents, or None (with libpq's warnings) when it
/// does not exist, is not a plain file, or others may read it.
pub(crate) fn read_pgpass(path: &Path, explicit: bool) -> Option<String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            if explicit {
                tracing::warn!(
                    "password file \"{}\" cannot be read: {e}; it is ignored",
                    path.display()
                );
            }
            return None;
        }
    };
    if !meta.is_file() {
        tracing::warn!(
            "password file \"{}\" is not a plain file; it is ignored",
            path.display()
        );
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less (chmod 0600 {}); it is ignored",
                path.display(),
                path.display()
            );
            return None;
        }
    }
    match std::fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                "password file \"{}\" cannot be read: {e}; it is ignored",
                path.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeEnv(Vec<(&'static str, &'static str)>);

    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
        fn os_user(&self) -> Option<String> {
            Some("osuser".into())
        }
    }

    fn pairs(s: &str) -> Vec<(String, String)> {
        split(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn p(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn resolve(s: &str, env: &[(&'static str, &'static str)]) -> Settings {
        Settings::resolve(pairs(s), &FakeEnv(env.to_vec())).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn resolve_err(s: &str, env: &[(&'static str, &'static str)]) -> String {
        match split(s).and_then(|p| Settings::resolve(p, &FakeEnv(env.to_vec()))) {
            Ok(_) => panic!("{s}: expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn key_values_with_quotes_and_escapes() {
        assert_eq!(
            pairs("host=h  port = 5433 dbname='my db' user=a\\ b password='it\\'s \\\\ x'"),
            p(&[
                ("host", "h"),
                ("port", "5433"),
                ("dbname", "my db"),
                ("user", "a b"),
                ("password", "it's \\ x"),
            ])
        );
        assert_eq!(pairs("sslmode=''"), p(&[("sslmode", "")]));
        assert_eq!(pairs("  \t"), p(&[]));
        // as libpq: after "=", whitespace is skipped before the value
        assert_eq!(pairs("host= h"), p(&[("host", "h")]));
    }

    #[test]
    fn key_value_errors_never_show_values() {
        let e = split("host=h password='s3cret").unwrap_err();
        assert!(e.contains("unterminated"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = split("host=h s3cret").unwrap_err();
        assert!(e.contains("missing \"=\""), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = split("host=h sslpasword=x").unwrap_err();
        assert!(
            e.contains("unknown connection option \"sslpasword\""),
            "{e}"
        );
        let e = split("service=prod").unwrap_err();
        assert!(e.contains("\"service\" is not supported"), "{e}");
    }

    #[test]
    fn urls() {
        assert_eq!(
            pairs("postgres://us%40er:p%3Ass@db.example.com:5433/my%20db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.crt"),
            p(&[
                ("user", "us@er"),
                ("password", "p:ss"),
                ("host", "db.example.com"),
                ("port", "5433"),
                ("dbname", "my db"),
                ("sslmode", "verify-full"),
                ("sslrootcert", "/tmp/ca.crt"),
            ])
        );
        assert_eq!(
            pairs("postgresql://h1:1,[::1]:2,h3/db"),
            p(&[("host", "h1,::1,h3"), ("port", "1,2,"), ("dbname", "db")])
        );
        assert_eq!(
            pairs("postgresql:///db?host=%2Fvar%2Frun%2Fpostgresql"),
            p(&[("dbname", "db"), ("host", "/var/run/postgresql")])
        );
        assert_eq!(
            pairs("postgres://%2Ftmp%2Fsock/db"),
            p(&[("host", "/tmp/sock"), ("dbname", "db")])
        );
        assert_eq!(pairs("postgres://"), p(&[]));
        assert_eq!(pairs("postgres://u@"), p(&[("user", "u")]));
        assert_eq!(
            pairs("postgres://h?ssl=true"),
            p(&[("host", "h"), ("sslmode", "require")])
        );
        // a '?' in an unencoded password: libpq looks for '@' before '/'
        assert_eq!(
            pairs("postgres://u:a?b@h/d"),
            p(&[
                ("user", "u"),
                ("password", "a?b"),
                ("host", "h"),
                ("dbname", "d")
            ])
        );
    }

    #[test]
    fn url_errors_never_show_values() {
        let e = split("postgres://u:s3cr%ZZet@h/db").unwrap_err();
        assert!(e.contains("password"), "{e}");
        assert!(!e.contains("s3cr"), "{e}");
        let e = split("postgres://u:s3cr%00et@h/db").unwrap_err();
        assert!(!e.contains("s3cr"), "{e}");
        let e = split("postgres://h/db?password").unwrap_err();
        assert!(e.contains("no \"=\""), "{e}");
        let e = split("postgres://h/db?sslpassword=x&bogus=1").unwrap_err();
        assert!(e.contains("\"bogus\""), "{e}");
        let e = split("postgres://[::1/db").unwrap_err();
        assert!(e.contains("]"), "{e}");
    }

    #[test]
    fn environment_fills_what_the_string_leaves_out() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGDATABASE", "envdb"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "verify-ca"),
            ("PGSSLROOTCERT", "/ca.crt"),
            ("PGCONNECT_TIMEOUT", "7"),
            ("HOME", "/home/x"),
        ];
        let s = resolve("sslmode=disable", &env);
        assert_eq!(
            s.hosts,
            vec![HostSpec {
                host: Some("envhost".into()),
                hostaddr: None,
                port: 6000
            }]
        );
        assert_eq!((s.user.as_str(), s.dbname.as_str()), ("envuser", "envdb"));
        assert_eq!(s.password, Some(Secret::new("envpw")));
        assert_eq!(s.ssl.mode, SslMode::Disable);
        assert_eq!(s.ssl.rootcert.as_deref(), Some("/ca.crt"));
        assert_eq!(s.passfile, Some(PathBuf::from("/home/x/.pgpass")));
        assert!(s.has("connect_timeout"));

        let s = resolve("postgres://u@h/d", &env);
        assert_eq!(s.hosts[0].host.as_deref(), Some("h"));
        assert_eq!(s.hosts[0].port, 6000);
        assert_eq!(s.user, "u");
        assert_eq!(s.dbname, "d");
        assert_eq!(s.ssl.mode, SslMode::VerifyCa);

        // nothing given: localhost, 5432, OS user, dbname = user, prefer
        let s = resolve("", &[]);
        assert_eq!(s.hosts[0].name(), "localhost");
        assert_eq!(s.hosts[0].port, 5432);
        assert_eq!((s.user.as_str(), s.dbname.as_str()), ("osuser", "osuser"));
        assert_eq!(s.ssl.mode, SslMode::Prefer);
        assert!(s.password.is_none());
        assert!(s.passfile.is_none());
        let s = resolve("passfile=/p", &[]);
        assert!(s.passfile_explicit);
    }

    #[test]
    fn host_lists() {
        let s = resolve(
            "host=a,/sock,c port=1,2,3 hostaddr=10.0.0.1,10.0.0.2,::1",
            &[],
        );
        assert_eq!(s.hosts.len(), 3);
        assert!(s.hosts[1].is_socket());
        assert_eq!(s.hosts[2].hostaddr, Some("::1".parse().unwrap()));
        assert_eq!(s.hosts[2].port, 3);
        let s = resolve("host=a,b port=7", &[]);
        assert_eq!(s.hosts[1].port, 7);
        assert!(resolve_err("host=a,b port=1,2,3", &[]).contains("3 port numbers to 2 hosts"));
        assert!(resolve_err("host=a,b hostaddr=1.2.3.4", &[]).contains("2 host names"));
        assert!(resolve_err("port=99999", &[]).contains("invalid port"));
        assert!(resolve_err("hostaddr=nohost", &[]).contains("invalid hostaddr"));
    }

    #[test]
    fn ssl_options() {
        let s = resolve("sslrootcert=system", &[]);
        assert_eq!(s.ssl.mode, SslMode::VerifyFull);
        let e = resolve_err("sslrootcert=system sslmode=verify-ca", &[]);
        assert!(e.contains("verify-full"), "{e}");
        let e = resolve_err("sslmode=verify-everything", &[]);
        assert!(e.contains("invalid sslmode"), "{e}");
        let s = resolve(
            "sslsni=0 sslcertmode=disable ssl_min_protocol_version=TLSv1.3 sslpassword=x",
            &[],
        );
        assert!(!s.ssl.sni && s.ssl.no_client_cert && s.ssl.min_tls13);
        assert_eq!(format!("{:?}", s.ssl.password), "Some(<redacted>)");
        assert!(resolve_err("ssl_max_protocol_version=TLSv1.1", &[]).contains("not supported"));
        assert!(resolve_err("gssencmode=require", &[]).contains("not supported"));
        assert!(resolve_err("client_encoding=LATIN1", &[]).contains("UTF8"));
        resolve(
            "client_encoding=UTF8 gssencmode=disable sslcompression=1 application_name=x",
            &[],
        );
    }

    #[test]
    fn postgres_keys_are_handed_on_quoted() {
        let s = resolve(
            "user=u dbname='d b' options='-c x=\\'y\\'' keepalives_count=3 connect_timeout=5 target_session_attrs=read-write password=pw sslmode=require",
            &[],
        );
        let text = s.postgres_string();
        assert!(!text.contains("pw"), "{text}");
        assert!(!text.contains("sslmode"), "{text}");
        let cfg: tokio_postgres::Config = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(cfg.get_user(), Some("u"));
        assert_eq!(cfg.get_dbname(), Some("d b"));
        assert_eq!(cfg.get_options(), Some("-c x='y'"));
        assert_eq!(cfg.get_keepalives_retries(), Some(3));
        assert!(s.has("connect_timeout"));
        assert!(!s.has("keepalives"));
    }

    #[test]
    fn debug_output_has_no_password() {
        let s = resolve("password=hunter2 sslpassword=hunter3 user=u", &[]);
        let d = format!("{s:?}");
        assert!(!d.contains("hunter"), "{d}");
    }

    const PGPASS: &str = "# comment\n\
        db.example.com:5432:prod:alice:pw1\n\
        *:5433:*:bob:pw\\:with\\\\escapes:ignored\n\
        we\\:ird:*:*:*:pw3\r\n\
        localhost:*:*:carol:pw4\n\
        *:*:*:*:fallback\n";

    #[test]
    fn pgpass_matching() {
        let l = |h, p, d, u| {
            pgpass_lookup(PGPASS, h, p, d, u).map(|(n, s)| (n, s.expose().to_string()))
        };
        assert_eq!(
            l("db.example.com", "5432", "prod", "alice"),
            Some((2, "pw1".into()))
        );
        assert_eq!(
            l("other", "5433", "x", "bob"),
            Some((3, "pw:with\\escapes".into()))
        );
        assert_eq!(l("we:ird", "1", "d", "u"), Some((4, "pw3".into())));
        assert_eq!(l("localhost", "1", "d", "carol"), Some((5, "pw4".into())));
        assert_eq!(
            l("db.example.com", "5432", "prod", "dave"),
            Some((6, "fallback".into()))
        );
        assert_eq!(
            l("db.example.com", "5432", "prod2", "alice"),
            Some((6, "fallback".into()))
        );
        assert_eq!(pgpass_lookup("h:1:d:u:pw\n", "h", "1", "d", "v"), None);
        assert_eq!(pgpass_lookup("h:1:d:u\n", "h", "1", "d", "u"), None);
        assert_eq!(
            pgpass_lookup("h:1:d:u:\n", "h", "1", "d", "u").map(|x| x.1),
            Some(Secret::new(""))
        );
        // a prefix is not a match
        assert_eq!(pgpass_lookup("hh:1:d:u:pw\n", "h", "1", "d", "u"), None);
        assert_eq!(pgpass_lookup("h:1:d:u:pw\n", "hh", "1", "d", "u"), None);
    }

    #[test]
    fn pgpass_host_names() {
        let h = |host: Option<&str>, addr: Option<&str>| {
            pgpass_host(&HostSpec {
                host: host.map(str::to_string),
                hostaddr: addr.map(|a| a.parse().unwrap()),
                port: 5432,
            })
        };
        assert_eq!(h(None, None), "localhost");
        assert_eq!(h(Some("/var/run/postgresql"), None), "localhost");
        assert_eq!(h(Some("/tmp/x"), None), "/tmp/x");
        assert_eq!(h(None, Some("10.1.2.3")), "10.1.2.3");
        assert_eq!(h(Some("db"), Some("10.1.2.3")), "db");
    }

    #[cfg(unix)]
    #[test]
    fn pgpass_file_readable_by_others_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hf-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pgpass");
        std::fs::write(&f, "*:*:*:*:pw\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_pgpass(&f, true), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_pgpass(&f, true).as_deref(), Some("*:*:*:*:pw\n"));
        assert_eq!(read_pgpass(&dir.join("missing"), false), None);
        assert_eq!(read_pgpass(&dir, false), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
