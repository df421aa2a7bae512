//! The password file (`~/.pgpass`, `passfile`, `PGPASSFILE`), read as libpq
//! reads it: `host:port:database:user:password` lines, `*` wildcards,
//! backslash escapes, and ignored when others may read it.

use std::path::{Path, PathBuf};

use super::settings::{HostSpec, Secret, Settings};

/// libpq's compiled-in unix-socket directory on Debian: a socket here
/// matches `localhost` in the password file.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// A password for one host, and where it came from (for the hint after an
/// authentication failure).
#[derive(Clone, Debug)]
pub(super) struct Password {
    pub secret: Secret,
    /// The password file and line, when it came from there.
    pub file: Option<(PathBuf, usize)>,
}

/// The password for each host: the given one, else the password file's.
pub(super) fn passwords(s: &Settings) -> Vec<Option<Password>> {
    if let Some(p) = &s.password {
        let pw = Password {
            secret: p.clone(),
            file: None,
        };
        return vec![Some(pw); s.hosts.len()];
    }
    let contents = s
        .passfile
        .as_deref()
        .and_then(|f| read_pgpass(f, s.passfile_explicit));
    s.hosts
        .iter()
        .map(|h| {
            let (file, contents) = (s.passfile.as_ref()?, contents.as_deref()?);
            let (line, secret) = pgpass_lookup(
                contents,
                &pgpass_host(h),
                &h.port.to_string(),
                &s.dbname,
                &s.user,
            )?;
            Some(Password {
                secret,
                file: Some((file.clone(), line)),
            })
        })
        .collect()
}

/// The host name a connection has in the password file: `localhost` for the
/// default socket directory and for no host at all, as libpq.
fn pgpass_host(spec: &HostSpec) -> String {
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
fn pgpass_lookup(
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
fn read_pgpass(path: &Path, explicit: bool) -> Option<String> {
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
