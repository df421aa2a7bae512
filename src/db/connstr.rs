//! Connection strings read the way libpq reads them: a URL
//! (`postgres://` / `postgresql://`) or `key=value` pairs, and libpq's list
//! of keys. [`split`] turns a string into checked key/value pairs;
//! `settings` resolves them (with the `PG*` environment, `env`) into what a
//! connection needs.
//!
//! tokio-postgres rejects libpq keys it does not know (`sslrootcert`,
//! `passfile`, ...) and the sslmodes `allow`/`verify-ca`/`verify-full`, so
//! the whole string is parsed here. Keys tokio-postgres handles itself are
//! handed to it ([`Use::Postgres`]); the rest is resolved in `settings`.
//!
//! No error in this module ever contains a value that could be a password:
//! errors name keys, never the string or its values.

/// What a key is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Use {
    /// Resolved by hyperfill (`settings`).
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

/// What hyperfill does with a libpq key; None for a key libpq does not know.
pub(super) fn lookup(key: &str) -> Option<Use> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, u)| *u)
}

/// The key/value pairs of a URL or key=value string, in order, decoded.
/// Keys are checked against libpq's list.
pub(super) fn split(conn: &str) -> Result<Vec<(String, String)>, String> {
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
pub(super) fn printable(k: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        split(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn p(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
}
