//! Connection strings, TLS and passwords against the real servers, the way
//! an operator would use libpq settings: sslmode/sslrootcert/sslcert/sslkey,
//! PG* environment variables, the password file, and no password ever in
//! the output.
//!
//! Needs the clusters' TLS set-up from scripts/lib/clusters.sh (test CA,
//! server certificate for `localhost` only, a client certificate, and the
//! `hf_certuser` / `hf_pwuser` pg_hba.conf rules). Without it the tests skip
//! loudly (`HYPERFILL_REQUIRE_TLS=1` makes that a failure).

use std::path::{Path, PathBuf};

use crate::harness::{skip, Dbs, Run};
use crate::stage::METRICS;

/// The password the tests give `hf_pwuser` (the same in every test, so that
/// tests running at the same time agree). Characters that need
/// percent-encoding in a URL and quoting in key=value strings.
const PW: &str = "hf pw/Zq9:x'y@z";
const PW_URL: &str = "hf%20pw%2FZq9%3Ax'y%40z";

/// Where a harness URL points.
struct Url {
    user: String,
    port: String,
    db: String,
}

fn parts(url: &str) -> Url {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .expect("a postgres:// URL");
    let rest = rest.split('?').next().unwrap_or(rest);
    let (user, rest) = rest.split_once('@').expect("user@ in the URL");
    let (hostport, db) = rest.split_once('/').expect("/db in the URL");
    let port = hostport.split_once(':').map_or("5432", |(_, p)| p);
    Url {
        user: user.split(':').next().unwrap_or(user).to_string(),
        port: port.to_string(),
        db: db.to_string(),
    }
}

/// The test CA and client certificate files.
struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A fresh directory for one test (used as HOME and for scratch files).
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hf-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("creating a scratch dir");
    d
}

#[cfg(unix)]
fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Databases plus the TLS files, or None (skipped loudly) when the servers
/// have no TLS.
async fn setup(name: &str) -> Option<(Dbs, Files, PathBuf)> {
    let db = Dbs::new(name).await?;
    let ssl: String = db
        .tgt
        .query_one("SHOW ssl", &[])
        .await
        .expect("SHOW ssl")
        .get(0);
    let ssl_source: String = db
        .src
        .query_one("SHOW ssl", &[])
        .await
        .expect("SHOW ssl")
        .get(0);
    if ssl != "on" || ssl_source != "on" {
        skip(
            name,
            "the test servers have no TLS (ssl = off); run scripts/lib/clusters.sh start",
            "HYPERFILL_REQUIRE_TLS",
        );
        return None;
    }
    // The CA: the server's own setting when its file is readable here (same
    // machine: always right, whichever pair of clusters the URLs point at),
    // else HYPERFILL_TEST_CA from scripts/lib/clusters.sh env; the client
    // files lie next to it unless named too.
    let server_ca: String = db
        .tgt
        .query_one("SHOW ssl_ca_file", &[])
        .await
        .expect("SHOW ssl_ca_file")
        .get(0);
    let from_server = !server_ca.is_empty() && Path::new(&server_ca).is_file();
    let ca = if from_server {
        PathBuf::from(&server_ca)
    } else {
        std::env::var("HYPERFILL_TEST_CA")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(&server_ca))
    };
    let dir = ca.parent().map(Path::to_path_buf).unwrap_or_default();
    let named = |var: &str, file: &str| match std::env::var(var) {
        Ok(p) if !from_server => PathBuf::from(p),
        _ => dir.join(file),
    };
    let cert = named("HYPERFILL_TEST_CLIENT_CERT", "client.crt");
    let key = named("HYPERFILL_TEST_CLIENT_KEY", "client.key");
    for f in [&ca, &cert, &key] {
        if !f.is_file() {
            skip(
                name,
                &format!(
                    "{} does not exist; run scripts/lib/clusters.sh start",
                    f.display()
                ),
                "HYPERFILL_REQUIRE_TLS",
            );
            return None;
        }
    }
    let home = scratch(name);
    Some((db, Files { ca, cert, key }, home))
}

/// Whether the target's pg_hba.conf has the rules clusters.sh adds for a role.
async fn has_hba_rule(db: &Dbs, role: &str) -> bool {
    db.tgt
        .query_one(
            "SELECT count(*) FROM pg_hba_file_rules WHERE $1 = ANY(user_name) AND error IS NULL",
            &[&role],
        )
        .await
        .map(|r| r.get::<_, i64>(0) > 0)
        .unwrap_or(false)
}

/// `hyperfill clean --target <url>`: connects to the target only.
async fn clean(db: &Dbs, home: &Path, target: &str, env: &[(&str, &str)]) -> Run {
    db.run_env(&["clean", "--target", target], home, env).await
}

#[tokio::test]
async fn tls_verify_full_checks_the_host_name() {
    let Some((db, f, home)) = setup("tls_verify_full").await else {
        return;
    };
    db.both(METRICS).await.unwrap();
    let (s, t) = (parts(&db.source_url), parts(&db.target_url));
    let ca = f.ca.display().to_string();
    let url = |u: &Url, host: &str, mode: &str| {
        format!(
            "postgres://{}@{host}:{}/{}?sslmode={mode}&sslrootcert={ca}",
            u.user, u.port, u.db
        )
    };

    // The certificate names localhost: verify-full with localhost passes,
    // on both sides (stage --dry-run connects to both and changes nothing).
    let src_ok = url(&s, "localhost", "verify-full");
    let tgt_ok = url(&t, "localhost", "verify-full");
    db.run_env(
        &[
            "stage",
            "--source",
            &src_ok,
            "--target",
            &tgt_ok,
            "--until",
            "2024-01-05",
            "--dry-run",
        ],
        &home,
        &[],
    )
    .await
    .assert_ok();

    // 127.0.0.1 is not in the certificate (no IP SAN; the CN is localhost).
    let r = clean(&db, &home, &url(&t, "127.0.0.1", "verify-full"), &[]).await;
    r.assert_code(5)
        .assert_contains("--target: sslmode=verify-full: the server certificate is not valid for host 127.0.0.1 (it names localhost)")
        .assert_contains("sslmode=verify-ca");
    let r = db
        .run_env(
            &[
                "stage",
                "--source",
                &url(&s, "127.0.0.1", "verify-full"),
                "--target",
                &tgt_ok,
                "--until",
                "2024-01-05",
                "--dry-run",
            ],
            &home,
            &[],
        )
        .await;
    r.assert_code(4).assert_contains(
        "--source: sslmode=verify-full: the server certificate is not valid for host 127.0.0.1",
    );

    // hostaddr: connect to the address, check the certificate against host.
    let kv = format!(
        "host=localhost hostaddr=127.0.0.1 port={} dbname={} user={} sslmode=verify-full sslrootcert={ca}",
        t.port, t.db, t.user
    );
    clean(&db, &home, &kv, &[]).await.assert_ok();

    // The same in key=value form, the CA path quoted.
    let kv = format!(
        "host=localhost port={} dbname='{}' user={} sslmode=verify-full sslrootcert='{ca}'",
        t.port, t.db, t.user
    );
    clean(&db, &home, &kv, &[]).await.assert_ok();

    // sslrootcert=system: the OS store (rustls-native-certs reads
    // SSL_CERT_FILE, here the test CA); verify-full is implied, as in libpq.
    let system = format!(
        "postgres://{}@localhost:{}/{}?sslrootcert=system",
        t.user, t.port, t.db
    );
    clean(&db, &home, &system, &[("SSL_CERT_FILE", &ca)])
        .await
        .assert_ok();
    let r = clean(
        &db,
        &home,
        &format!("{system}&sslmode=verify-ca"),
        &[("SSL_CERT_FILE", &ca)],
    )
    .await;
    r.assert_code(2)
        .assert_contains("sslmode=verify-ca may not be used with sslrootcert=system");

    db.cleanup().await;
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test]
async fn tls_verify_ca_checks_the_chain() {
    let Some((db, f, home)) = setup("tls_verify_ca").await else {
        return;
    };
    let t = parts(&db.target_url);
    let url = |host: &str, extra: &str| {
        format!("postgres://{}@{host}:{}/{}?{extra}", t.user, t.port, t.db)
    };
    let ca = f.ca.display().to_string();

    // verify-ca: the chain, not the host name: 127.0.0.1 passes.
    clean(
        &db,
        &home,
        &url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")),
        &[],
    )
    .await
    .assert_ok();

    // A CA that did not sign the server's certificate fails.
    let wrong = home.join("wrong-ca.crt");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", "/CN=not the hyperfill test CA"])
        .arg("-keyout")
        .arg(home.join("wrong-ca.key"))
        .arg("-out")
        .arg(&wrong)
        .output()
        .expect("running openssl (scripts/lib/clusters.sh installs it)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong_s = wrong.display().to_string();
    let r = clean(
        &db,
        &home,
        &url(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={wrong_s}"),
        ),
        &[],
    )
    .await;
    r.assert_code(5)
        .assert_contains("--target: sslmode=verify-ca: the server certificate is not signed by a CA in the CA file")
        .assert_contains(&wrong_s);
    // A certificate that is no CA at all (the client's) fails the same way.
    let cert = f.cert.display().to_string();
    clean(
        &db,
        &home,
        &url(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={cert}"),
        ),
        &[],
    )
    .await
    .assert_code(5)
    .assert_contains("not signed by a CA");

    // A file that does not exist: named, with the side, before connecting.
    let r = clean(
        &db,
        &home,
        &url(
            "127.0.0.1",
            "sslmode=verify-ca&sslrootcert=/nonexistent/ca.crt",
        ),
        &[],
    )
    .await;
    r.assert_code(2)
        .assert_contains("--target: sslrootcert=/nonexistent/ca.crt: cannot read the file");

    // No sslrootcert and no ~/.postgresql/root.crt: says what to do.
    let r = clean(&db, &home, &url("127.0.0.1", "sslmode=verify-ca"), &[]).await;
    r.assert_code(2)
        .assert_contains(".postgresql/root.crt\" does not exist")
        .assert_contains("sslrootcert=system");

    // ~/.postgresql/root.crt is the default root file ...
    let pgdir = home.join(".postgresql");
    std::fs::create_dir_all(&pgdir).unwrap();
    std::fs::copy(&f.ca, pgdir.join("root.crt")).unwrap();
    clean(&db, &home, &url("127.0.0.1", "sslmode=verify-ca"), &[])
        .await
        .assert_ok();
    // ... and, as in libpq, makes even sslmode=require check the chain.
    std::fs::copy(&wrong, pgdir.join("root.crt")).unwrap();
    clean(&db, &home, &url("127.0.0.1", "sslmode=require"), &[])
        .await
        .assert_code(5)
        .assert_contains("sslmode=require: the server certificate is not signed by a CA");
    std::fs::remove_file(pgdir.join("root.crt")).unwrap();

    db.cleanup().await;
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test]
async fn tls_require_prefer_allow_and_disable() {
    let Some((db, _f, home)) = setup("tls_modes").await else {
        return;
    };
    let t = parts(&db.target_url);
    for mode in ["require", "prefer", "allow", "disable"] {
        let u = format!(
            "postgres://{}@127.0.0.1:{}/{}?sslmode={mode}",
            t.user, t.port, t.db
        );
        clean(&db, &home, &u, &[]).await.assert_ok();
        let kv = format!(
            "host=127.0.0.1 port={} dbname={} user={} sslmode={mode}",
            t.port, t.db, t.user
        );
        clean(&db, &home, &kv, &[]).await.assert_ok();
    }
    // A unix-domain socket: libpq never uses TLS there, whatever sslmode says.
    let sockets: String = db
        .tgt
        .query_one("SHOW unix_socket_directories", &[])
        .await
        .unwrap()
        .get(0);
    if let Some(dir) = sockets
        .split(',')
        .map(str::trim)
        .find(|d| d.starts_with('/'))
    {
        let kv = format!(
            "host={dir} port={} dbname={} user={} sslmode=verify-full",
            t.port, t.db, t.user
        );
        clean(&db, &home, &kv, &[]).await.assert_ok();
        let u = format!(
            "postgresql://{}@%2F{}:{}/{}?sslmode=require",
            t.user,
            dir.trim_start_matches('/').replace('/', "%2F"),
            t.port,
            t.db
        );
        clean(&db, &home, &u, &[]).await.assert_ok();
    } else {
        panic!("the target has no unix-domain socket directory ({sockets:?})");
    }
    // Several hosts: the first that accepts wins (here the second).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let u = format!(
        "postgres://{}@127.0.0.1:{closed},127.0.0.1:{}/{}?sslmode=require",
        t.user, t.port, t.db
    );
    clean(&db, &home, &u, &[]).await.assert_ok();
    // postgresql:// works too, and the JDBC-style ssl=true means require.
    let u = format!(
        "postgresql://{}@127.0.0.1:{}/{}?ssl=true",
        t.user, t.port, t.db
    );
    clean(&db, &home, &u, &[]).await.assert_ok();
    // Unknown keys are named (and the value is not shown).
    let r = clean(&db, &home, &format!("{u}&sslrootcrt=/x/ca.crt"), &[]).await;
    r.assert_code(2)
        .assert_contains("unknown connection option \"sslrootcrt\"");
    assert!(!r.all().contains("/x/ca.crt"), "{}", r.all());
    db.cleanup().await;
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test]
async fn tls_client_certificate_authenticates() {
    let Some((db, f, home)) = setup("tls_client_cert").await else {
        return;
    };
    if !has_hba_rule(&db, "hf_certuser").await {
        skip(
            "tls_client_cert",
            "the target's pg_hba.conf has no rule for hf_certuser; run scripts/lib/clusters.sh start",
            "HYPERFILL_REQUIRE_TLS",
        );
        return;
    }
    let t = parts(&db.target_url);
    let (ca, cert, key) = (
        f.ca.display().to_string(),
        f.cert.display().to_string(),
        f.key.display().to_string(),
    );
    let url = |extra: &str| {
        format!(
            "postgres://hf_certuser@localhost:{}/{}?sslrootcert={ca}&{extra}",
            t.port, t.db
        )
    };

    // hostssl ... cert: the client certificate is the authentication.
    clean(
        &db,
        &home,
        &url(&format!("sslmode=verify-full&sslcert={cert}&sslkey={key}")),
        &[],
    )
    .await
    .assert_ok();
    // allow: plain first (rejected by pg_hba.conf), then TLS with the certificate.
    clean(
        &db,
        &home,
        &url(&format!("sslmode=allow&sslcert={cert}&sslkey={key}")),
        &[],
    )
    .await
    .assert_ok();
    // disable really is plain: the same role has no plain rule.
    clean(
        &db,
        &home,
        &url(&format!("sslmode=disable&sslcert={cert}&sslkey={key}")),
        &[],
    )
    .await
    .assert_code(5)
    .assert_contains("no encryption");
    // Without a certificate the server refuses.
    clean(&db, &home, &url("sslmode=verify-full"), &[])
        .await
        .assert_code(5)
        .assert_contains("requires a valid client certificate");
    // sslcertmode=disable never sends one.
    clean(
        &db,
        &home,
        &url(&format!(
            "sslmode=verify-full&sslcert={cert}&sslkey={key}&sslcertmode=disable"
        )),
        &[],
    )
    .await
    .assert_code(5)
    .assert_contains("requires a valid client certificate");
    // The default files ~/.postgresql/postgresql.crt and .key, as in libpq.
    let pgdir = home.join(".postgresql");
    std::fs::create_dir_all(&pgdir).unwrap();
    std::fs::copy(&f.cert, pgdir.join("postgresql.crt")).unwrap();
    std::fs::copy(&f.key, pgdir.join("postgresql.key")).unwrap();
    chmod(&pgdir.join("postgresql.key"), 0o600);
    clean(&db, &home, &url("sslmode=verify-full"), &[])
        .await
        .assert_ok();
    // A key others may read is refused, naming the file and the fix.
    chmod(&pgdir.join("postgresql.key"), 0o644);
    let r = clean(&db, &home, &url("sslmode=verify-full"), &[]).await;
    r.assert_code(2)
        .assert_contains("postgresql.key: the private key file has group or world access")
        .assert_contains("chmod 0600");
    // The client certificate with a missing key file.
    std::fs::remove_file(pgdir.join("postgresql.key")).unwrap();
    clean(&db, &home, &url("sslmode=verify-full"), &[])
        .await
        .assert_code(2)
        .assert_contains("has no private key file");

    db.cleanup().await;
    let _ = std::fs::remove_dir_all(&home);
}

/// Give hf_pwuser its password (scram-sha-256), or skip when the pg_hba.conf
/// rule that makes it ask for one is missing.
async fn password_role(db: &Dbs, name: &str) -> bool {
    if !has_hba_rule(db, "hf_pwuser").await {
        skip(
            name,
            "the target's pg_hba.conf has no scram-sha-256 rule for hf_pwuser; run scripts/lib/clusters.sh start",
            "HYPERFILL_REQUIRE_TLS",
        );
        return false;
    }
    db.tgt
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; ALTER ROLE hf_pwuser PASSWORD '{}'",
            PW.replace('\'', "''")
        ))
        .await
        .expect("setting hf_pwuser's password");
    true
}

/// `clean --target <target>` with environment variables.
async fn run_vars(db: &Dbs, home: &Path, target: &str, vars: &[(&'static str, String)]) -> Run {
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    clean(db, home, target, &vars).await
}

/// A pgpass line with `:` and `\` escaped.
fn pgpass_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

#[tokio::test]
async fn tls_environment_and_password_file() {
    let Some((db, f, home)) = setup("tls_env_pgpass").await else {
        return;
    };
    if !password_role(&db, "tls_env_pgpass").await {
        return;
    }
    let t = parts(&db.target_url);
    let ca = f.ca.display().to_string();
    let passfile = home.join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "# hosts we do not use\nother:1:*:*:nope\n127.0.0.1:{}:{}:hf_pwuser:{}\n",
            t.port,
            t.db,
            pgpass_escape(PW)
        ),
    )
    .unwrap();
    chmod(&passfile, 0o600);
    let pf = passfile.display().to_string();
    let env = |host: &str| -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", host.to_string()),
            ("PGPORT", t.port.clone()),
            ("PGDATABASE", t.db.clone()),
            ("PGUSER", "hf_pwuser".to_string()),
            ("PGPASSFILE", pf.clone()),
        ]
    };

    // Everything from the environment and the password file; the string
    // only says sslmode.
    run_vars(&db, &home, "sslmode=disable", &env("127.0.0.1"))
        .await
        .assert_ok();
    // The default sslmode (prefer) uses TLS: channel binding (SCRAM-SHA-256-PLUS,
    // tls-server-end-point) needs it.
    run_vars(&db, &home, "channel_binding=require", &env("127.0.0.1"))
        .await
        .assert_ok();
    run_vars(
        &db,
        &home,
        "sslmode=disable channel_binding=require",
        &env("127.0.0.1"),
    )
    .await
    .assert_code(5)
    .assert_contains("channel binding");
    // PGSSLMODE / PGSSLROOTCERT, with a host the certificate names (the
    // password file line is for 127.0.0.1: give the password by PGPASSWORD).
    let mut v = env("localhost");
    v.push(("PGSSLMODE", "verify-full".into()));
    v.push(("PGSSLROOTCERT", ca.clone()));
    v.push(("PGPASSWORD", PW.into()));
    run_vars(&db, &home, "", &v).await.assert_ok();
    // The string wins over the environment.
    run_vars(&db, &home, "sslmode=verify-ca host=127.0.0.1", &v)
        .await
        .assert_ok();
    // ~/.pgpass is the default password file.
    std::fs::copy(&passfile, home.join(".pgpass")).unwrap();
    chmod(&home.join(".pgpass"), 0o600);
    let mut v = env("127.0.0.1");
    v.retain(|(k, _)| *k != "PGPASSFILE");
    run_vars(&db, &home, "sslmode=require", &v)
        .await
        .assert_ok();
    // A password file others may read is ignored with libpq's warning.
    chmod(&home.join(".pgpass"), 0o644);
    let r = run_vars(&db, &home, "sslmode=require", &v).await;
    r.assert_code(5)
        .assert_contains("has group or world access")
        .assert_contains("the server asks for a password and none was given");
    assert!(!r.all().contains(PW), "{}", r.all());
    // A wrong password in the file: the message says where it came from.
    std::fs::write(home.join(".pgpass"), "*:*:*:hf_pwuser:wrong-Secret-77\n").unwrap();
    chmod(&home.join(".pgpass"), 0o600);
    let r = run_vars(&db, &home, "sslmode=require", &v).await;
    r.assert_code(5)
        .assert_contains("password authentication failed")
        .assert_contains("the password came from the password file");
    assert!(!r.all().contains("wrong-Secret-77"), "{}", r.all());

    db.cleanup().await;
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test]
async fn tls_passwords_never_appear_in_the_output() {
    let Some((db, _f, home)) = setup("tls_no_password_leak").await else {
        return;
    };
    if !password_role(&db, "tls_no_password_leak").await {
        return;
    }
    let t = parts(&db.target_url);
    let s = parts(&db.source_url);
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let secret = "Sup3r-Secret pw/with:odd'chars";
    let secret_url = "Sup3r-Secret%20pw%2Fwith%3Aodd'chars";
    let kv_secret = "Sup3r-Secret pw/with:odd\\'chars";
    let cases: Vec<(String, i32)> = vec![
        // the right user, a wrong password (scram-sha-256)
        (format!("postgres://hf_pwuser:{secret_url}@127.0.0.1:{}/{}", t.port, t.db), 5),
        (format!("host=127.0.0.1 port={} dbname={} user=hf_pwuser password='{kv_secret}' sslmode=require", t.port, t.db), 5),
        // nothing listens there
        (format!("postgres://hf_pwuser:{secret_url}@127.0.0.1:{closed}/{}", t.db), 5),
        // an invalid string that holds the password
        (format!("postgres://hf_pwuser:{secret_url}@127.0.0.1:{}/{}?sslmode=bogus", t.port, t.db), 2),
        (format!("host=127.0.0.1 password='{kv_secret}' badkey=1"), 2),
        (format!("host=127.0.0.1 password={kv_secret}"), 2),
    ];
    for (target, code) in &cases {
        for log in ["warn", "trace"] {
            let r = db
                .run_env(&["clean", "--target", target], &home, &[("RUST_LOG", log)])
                .await;
            r.assert_code(*code);
            for needle in [secret, secret_url, "Sup3r-Secret", PW, PW_URL] {
                assert!(
                    !r.all().contains(needle),
                    "the password ({needle:?}) appears in the output of `clean --target {target}` (RUST_LOG={log}):\n{}",
                    r.all()
                );
            }
        }
    }
    // PGPASSWORD, wrong, on the source side of a two-sided command.
    let src = format!("postgres://hf_pwuser@127.0.0.1:{}/{}", s.port, s.db);
    let tgt = format!("postgres://postgres@127.0.0.1:{}/{}", t.port, t.db);
    let r = db
        .run_env(
            &["copy", "--source", &src, "--target", &tgt],
            &home,
            &[("PGPASSWORD", secret), ("RUST_LOG", "debug")],
        )
        .await;
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(!r.all().contains("Sup3r-Secret"), "{}", r.all());

    db.cleanup().await;
    let _ = std::fs::remove_dir_all(&home);
}
