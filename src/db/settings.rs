//! What a connection string says, resolved as libpq resolves it: the pairs
//! of `connstr::split`, later keys winning, the `PG*` environment for what
//! they leave out (`env`), libpq's defaults, and checks of every value.
//!
//! No error or `Debug` output in this module ever contains a value that
//! could be a password: errors name keys, never their values (except values
//! that are known not to be secret, such as an sslmode).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use super::connstr::{lookup, printable, Use};
use super::env::{self, Environment};

/// A password, sslpassword or similar: never shown.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Secret(String);

impl Secret {
    pub(super) fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub(super) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// libpq's default port.
const DEFAULT_PORT: u16 = 5432;

/// libpq's sslmode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum SslMode {
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

    pub(super) fn as_str(self) -> &'static str {
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
pub(super) struct HostSpec {
    pub host: Option<String>,
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
}

impl HostSpec {
    pub(super) fn is_socket(&self) -> bool {
        self.host.as_deref().is_some_and(|h| h.starts_with('/'))
    }

    /// The name the host goes by in messages, TLS and the password file.
    pub(super) fn name(&self) -> String {
        match (&self.host, &self.hostaddr) {
            (Some(h), _) => h.clone(),
            (None, Some(a)) => a.to_string(),
            (None, None) => "localhost".to_string(),
        }
    }
}

/// The TLS-related settings, as given (files are read in `tls`).
#[derive(Clone, Debug)]
pub(super) struct SslSettings {
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
pub(super) struct Settings {
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
    /// Resolve the pairs of `connstr::split` with libpq's environment defaults.
    pub(super) fn resolve(
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
        env::fill(&mut map, &mut order, env);
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
    pub(super) fn has(&self, key: &str) -> bool {
        self.postgres.iter().any(|(k, _)| k == key)
    }

    /// The tokio-postgres keys as one key='value' string.
    pub(super) fn postgres_string(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::super::connstr::split;
    use super::super::env::FakeEnv;
    use super::*;

    fn resolve(s: &str, env: &[(&'static str, &'static str)]) -> Settings {
        split(s)
            .and_then(|p| Settings::resolve(p, &FakeEnv(env.to_vec())))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn resolve_err(s: &str, env: &[(&'static str, &'static str)]) -> String {
        match split(s).and_then(|p| Settings::resolve(p, &FakeEnv(env.to_vec()))) {
            Ok(_) => panic!("{s}: expected an error"),
            Err(e) => e,
        }
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
}
