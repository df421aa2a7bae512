//! TLS for tokio-postgres through rustls (ring provider), with libpq's
//! sslmode semantics:
//!
//! | sslmode              | TLS                                   | server certificate checked                        |
//! |----------------------|---------------------------------------|---------------------------------------------------|
//! | disable              | never                                 | -                                                 |
//! | allow                | only if plain is refused              | chain, if a root certificate file exists          |
//! | prefer (default)     | if the server supports it             | chain, if a root certificate file exists          |
//! | require              | always                                | chain, if a root certificate file exists          |
//! | verify-ca            | always                                | chain against sslrootcert / ~/.postgresql/root.crt |
//! | verify-full          | always                                | chain, and the host name against the certificate  |
//!
//! ("a root certificate file exists": sslrootcert, or the default
//! `~/.postgresql/root.crt`; libpq does the same for backwards
//! compatibility.) `sslrootcert=system` uses the OS trust store.
//!
//! Host names are matched as libpq does: subjectAltName entries, and the
//! Common Name only when the certificate has no SAN of the host's kind (DNS
//! name or IP address). A self-signed server certificate used as its own
//! root (the PostgreSQL manual's recipe) is accepted when it is byte for
//! byte one of the root file's certificates.
//!
//! Here: the configuration (root certificates, the client certificate,
//! protocol versions). In `verify`, the server certificate checks and their
//! messages; in `cert`, what they read from a certificate (with x509-cert)
//! and the hash for channel binding; in `stream`, the `tokio_postgres::tls`
//! glue and SCRAM channel binding (`tls-server-end-point`, RFC 5929: the
//! certificate hashed with its signature's hash, SHA-256 for MD5 and SHA-1).

mod cert;
mod stream;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::settings::{SslMode, SslSettings};
use crate::error::Side;
pub(super) use stream::{client_cert_rejection, TlsStream};
use verify::Verifier;

/// How much of the server certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// A ready TLS client configuration for one side (none for
/// sslmode=disable). Cheap to clone.
#[derive(Clone)]
pub(super) struct Tls {
    config: Option<Arc<ClientConfig>>,
}

/// A TLS failure, for the connection error.
#[derive(Debug)]
pub(super) enum TlsError {
    /// The server certificate did not pass the checks sslmode asks for:
    /// not worth retrying; the text says what to change.
    Verify(String),
    /// Anything else in the handshake.
    Handshake(String),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Verify(m) | TlsError::Handshake(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for TlsError {}

/// The default file locations, as libpq (`~/.postgresql/...`).
fn default_file(home: Option<&Path>, name: &str) -> Option<PathBuf> {
    home.map(|h| h.join(".postgresql").join(name))
}

fn read(side: Side, key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "--{side}: {key}={}: cannot read the file: {e}",
            path.display()
        )
    })
}

/// The trust anchors: a PEM file, or the OS store for `system`.
struct Roots {
    store: RootCertStore,
    /// The file's certificates, to accept a pinned self-signed server certificate.
    pinned: Vec<CertificateDer<'static>>,
    /// "the CA file /x/ca.crt" / "the system's trusted CAs", for messages.
    label: String,
}

fn load_roots(side: Side, rootcert: &str, explicit: bool) -> Result<Roots, String> {
    if rootcert == "system" {
        let found = rustls_native_certs::load_native_certs();
        let mut store = RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
            return Err(format!(
                "--{side}: sslrootcert=system: no trusted CA certificates found in the system's store{}; install ca-certificates or name a CA file with sslrootcert=/path/to/ca.crt",
                if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) }
            ));
        }
        return Ok(Roots {
            store,
            pinned: Vec::new(),
            label: "the system's trusted CAs".into(),
        });
    }
    let path = Path::new(rootcert);
    let key = if explicit {
        "sslrootcert"
    } else {
        "root certificate"
    };
    let pem = read(side, key, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "--{side}: {key}={}: not a PEM certificate file: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "--{side}: {key}={}: no certificate in the file (expected PEM blocks \"-----BEGIN CERTIFICATE-----\")",
            path.display()
        ));
    }
    let mut store = RootCertStore::empty();
    for c in &certs {
        // A self-signed server certificate used as its own root may not be
        // a valid trust anchor for webpki; it is still pinned below.
        let _ = store.add(c.clone());
    }
    Ok(Roots {
        store,
        pinned: certs,
        label: format!("the CA file {}", path.display()),
    })
}

/// The client certificate chain and key (sslcert/sslkey), libpq's rules:
/// the default files are used when they exist; the key must not be
/// readable by others.
#[allow(clippy::type_complexity)]
fn load_client_cert(
    side: Side,
    ssl: &SslSettings,
    home: Option<&Path>,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, String> {
    if ssl.no_client_cert {
        return Ok(None);
    }
    let cert_path = match &ssl.cert {
        Some(c) => PathBuf::from(c),
        None => match default_file(home, "postgresql.crt") {
            Some(p) if p.exists() => p,
            _ => return Ok(None),
        },
    };
    let pem = read(side, "sslcert", &cert_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "--{side}: sslcert={}: not a PEM certificate file: {e}",
                cert_path.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "--{side}: sslcert={}: no certificate in the file (expected PEM blocks \"-----BEGIN CERTIFICATE-----\")",
            cert_path.display()
        ));
    }
    let key_path = match &ssl.key {
        Some(k) => PathBuf::from(k),
        None => {
            default_file(home, "postgresql.key").unwrap_or_else(|| cert_path.with_extension("key"))
        }
    };
    let meta = std::fs::metadata(&key_path).map_err(|e| {
        format!(
            "--{side}: the client certificate {} has no private key file {} ({e}); name it with sslkey=/path/to/key",
            cert_path.display(),
            key_path.display()
        )
    })?;
    if !meta.is_file() {
        return Err(format!(
            "--{side}: sslkey={}: not a regular file",
            key_path.display()
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = meta.permissions().mode();
        let too_open = if meta.uid() == 0 {
            mode & 0o037 != 0
        } else {
            mode & 0o077 != 0
        };
        if too_open {
            return Err(format!(
                "--{side}: sslkey={}: the private key file has group or world access; it must have permissions u=rw (0600) or less if owned by the current user, or u=rw,g=r (0640) or less if owned by root (chmod 0600 {})",
                key_path.display(),
                key_path.display()
            ));
        }
    }
    let bytes = read(side, "sslkey", &key_path)?;
    let text = String::from_utf8_lossy(&bytes);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(format!(
            "--{side}: sslkey={}: the private key is encrypted{}; hyperfill cannot decrypt keys. Decrypt it once (openssl pkey -in {} -out client.key; chmod 0600 client.key) and point sslkey at the result",
            key_path.display(),
            if ssl.password.is_some() { " (sslpassword is not supported)" } else { "" },
            key_path.display()
        ));
    }
    let key = match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(k) => k,
        // libpq also takes a DER key
        Err(_) => PrivateKeyDer::try_from(bytes.clone()).map_err(|_| {
            format!(
                "--{side}: sslkey={}: no private key in the file (expected PEM \"-----BEGIN PRIVATE KEY-----\", RSA or EC)",
                key_path.display()
            )
        })?,
    };
    Ok(Some((chain, key)))
}

impl Tls {
    /// No TLS (sslmode=disable, unix-domain sockets).
    pub(super) fn none() -> Tls {
        Tls { config: None }
    }

    /// Build the TLS configuration for a connection string's settings
    /// (none for sslmode=disable). Reads the certificate files now, so that
    /// a missing or bad file is reported before anything connects.
    pub(super) fn new(side: Side, ssl: &SslSettings, home: Option<&Path>) -> Result<Tls, String> {
        if ssl.mode == SslMode::Disable {
            return Ok(Tls::none());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        // The root certificates: named, or the default file when it exists.
        let explicit_root = ssl.rootcert.is_some();
        let root_file = match &ssl.rootcert {
            Some(r) => Some(r.clone()),
            None => default_file(home, "root.crt")
                .filter(|p| p.exists())
                .map(|p| p.display().to_string()),
        };
        let check = match ssl.mode {
            SslMode::VerifyFull => Check::ChainAndName,
            SslMode::VerifyCa => Check::Chain,
            _ if root_file.is_some() => Check::Chain,
            _ => Check::Nothing,
        };
        let roots = match (&root_file, check) {
            (_, Check::Nothing) => None,
            (Some(f), _) => Some(load_roots(side, f, explicit_root)?),
            (None, _) => {
                let default = default_file(home, "root.crt")
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.postgresql/root.crt".into());
                return Err(format!(
                    "--{side}: sslmode={} needs the CA certificate to check the server's certificate against, and the root certificate file \"{default}\" does not exist. Name the CA file with sslrootcert=/path/to/ca.crt, use the system's trusted CAs with sslrootcert=system, or use sslmode=require to skip the check",
                    ssl.mode.as_str()
                ));
            }
        };

        let verifier = Arc::new(Verifier {
            side,
            mode: ssl.mode,
            check,
            roots,
            algorithms: provider.signature_verification_algorithms,
        });

        let versions: Vec<&'static rustls::SupportedProtocolVersion> =
            match (ssl.min_tls13, ssl.max_tls12) {
                (true, _) => vec![&rustls::version::TLS13],
                (false, true) => vec![&rustls::version::TLS12],
                (false, false) => vec![&rustls::version::TLS13, &rustls::version::TLS12],
            };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| format!("--{side}: TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match load_client_cert(side, ssl, home)? {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "--{side}: the client certificate (sslcert) and key (sslkey) cannot be used together: {e}. Check that the key belongs to the certificate"
                )
            })?,
            None => builder.with_no_client_auth(),
        };
        config.enable_sni = ssl.sni;
        // PostgreSQL 17 checks the ALPN protocol when given and needs it for
        // sslnegotiation=direct; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Tls {
            config: Some(Arc::new(config)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: SslMode) -> SslSettings {
        SslSettings {
            mode,
            rootcert: None,
            cert: None,
            key: None,
            password: None,
            sni: true,
            no_client_cert: false,
            min_tls13: false,
            max_tls12: false,
        }
    }

    #[test]
    fn file_errors_name_the_side_the_file_and_the_fix() {
        let home = std::env::temp_dir().join(format!("hf-tls-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        let err = |s: &SslSettings| match Tls::new(Side::Source, s, Some(&home)) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        };
        let e = err(&settings(SslMode::VerifyFull));
        assert!(
            e.starts_with("--source: sslmode=verify-full needs the CA certificate"),
            "{e}"
        );
        assert!(e.contains(".postgresql/root.crt"), "{e}");
        let mut s = settings(SslMode::VerifyCa);
        s.rootcert = Some("/nonexistent/ca.crt".into());
        let e = err(&s);
        assert!(
            e.starts_with("--source: sslrootcert=/nonexistent/ca.crt: cannot read the file"),
            "{e}"
        );
        let empty = home.join("empty.crt");
        std::fs::write(&empty, "not pem\n").unwrap();
        s.rootcert = Some(empty.display().to_string());
        assert!(err(&s).contains("no certificate in the file"));
        // an encrypted key is explained, sslpassword or not
        let mut s = settings(SslMode::Require);
        let (crt, key) = (home.join("c.crt"), home.join("c.key"));
        std::fs::write(&crt, cert::TEST_CERT_PEM).unwrap();
        std::fs::write(
            &key,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        s.cert = Some(crt.display().to_string());
        s.key = Some(key.display().to_string());
        s.password = Some(super::super::settings::Secret::new("hunter2"));
        let e = err(&s);
        assert!(
            e.contains("the private key is encrypted (sslpassword is not supported)"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        // disable needs nothing, require without files neither
        assert!(Tls::new(Side::Source, &settings(SslMode::Disable), Some(&home)).is_ok());
        assert!(Tls::new(Side::Source, &settings(SslMode::Require), Some(&home)).is_ok());
        let _ = std::fs::remove_dir_all(&home);
    }
}
