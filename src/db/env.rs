//! Where libpq looks when the connection string leaves something out: the
//! `PG*` environment variables, the OS user name and the home directory
//! (for `~/.pgpass` and `~/.postgresql/`). Behind a trait, so that tests
//! use a fake environment.

use std::collections::HashMap;
use std::path::PathBuf;

/// Where the process gets its environment from (a fake one in tests).
pub(super) trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    fn os_user(&self) -> Option<String>;
    fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }
}

/// The real process environment.
pub(super) struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn os_user(&self) -> Option<String> {
        whoami::username().ok()
    }
}

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

/// Add the keys the string did not set from their environment variables
/// (appended to `order`), and warn about variables hyperfill ignores.
pub(super) fn fill(
    map: &mut HashMap<String, String>,
    order: &mut Vec<String>,
    env: &dyn Environment,
) {
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
}

/// A fixed environment for tests: these variables, and "osuser".
#[cfg(test)]
pub(super) struct FakeEnv(pub(super) Vec<(&'static str, &'static str)>);

#[cfg(test)]
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

#[cfg(test)]
mod tests {
    use super::super::settings::{HostSpec, Secret, Settings, SslMode};
    use super::*;

    fn resolve(s: &str, env: &[(&'static str, &'static str)]) -> Settings {
        super::super::connstr::split(s)
            .and_then(|p| Settings::resolve(p, &FakeEnv(env.to_vec())))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
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
}
