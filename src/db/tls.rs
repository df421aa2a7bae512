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
//! Also here: the `tokio_postgres::tls` glue and SCRAM channel binding
//! (`tls-server-end-point`, RFC 5929: the certificate hashed with its
//! signature's hash, SHA-256 for MD5 and SHA-1).

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use super::connstr::{SslMode, SslSettings};
use crate::error::Side;

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
pub(crate) struct Tls {
    config: Option<Arc<ClientConfig>>,
}

/// A TLS failure, for the connection error.
#[derive(Debug)]
pub(crate) enum TlsError {
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

/// Carried through rustls from the verifier to [`TlsError::Verify`].
#[derive(Debug)]
struct VerifyFailure(String);

impl std::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VerifyFailure {}

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
    pub(crate) fn none() -> Tls {
        Tls { config: None }
    }

    /// Build the TLS configuration for a connection string's settings
    /// (none for sslmode=disable). Reads the certificate files now, so that
    /// a missing or bad file is reported before anything connects.
    pub(crate) fn new(side: Side, ssl: &SslSettings, home: Option<&Path>) -> Result<Tls, String> {
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

// ---------------------------------------------------------------------------
// Certificate verification
// ---------------------------------------------------------------------------

struct Verifier {
    side: Side,
    mode: SslMode,
    check: Check,
    roots: Option<Roots>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Verifier({} sslmode={} {:?})",
            self.side,
            self.mode.as_str(),
            self.check
        )
    }
}

impl Verifier {
    fn fail(&self, what: String) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            VerifyFailure(format!(
                "--{}: sslmode={}: {what}",
                self.side,
                self.mode.as_str()
            )),
        ))))
    }

    fn roots_label(&self) -> &str {
        self.roots
            .as_ref()
            .map_or("the root certificates", |r| r.label.as_str())
    }

    fn chain_message(&self, e: &rustls::Error) -> String {
        let roots = self.roots_label();
        let weaker = if self.mode == SslMode::Require
            || self.mode == SslMode::Prefer
            || self.mode == SslMode::Allow
        {
            " (with this sslmode the check happens because a root certificate file is present)"
        } else {
            ""
        };
        match e {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
                "the server certificate is not signed by a CA in {roots}{weaker}. Point sslrootcert at the CA certificate that issued the server's certificate, or use sslmode=require to skip the check"
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => "the server certificate (or one in its chain) has expired; renew it on the server".into(),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            ) => "the server certificate (or one in its chain) is not valid yet; check the clocks of both machines".into(),
            rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
            ) => "the server certificate is not meant for TLS servers (its extended key usage lacks serverAuth)".into(),
            rustls::Error::InvalidCertificate(CertificateError::BadSignature) => format!(
                "the server certificate's signature does not verify against its issuer in {roots}"
            ),
            other => format!("the server certificate does not verify against {roots}: {other}"),
        }
    }
}

/// A host name as given (IP addresses in their usual text form).
fn server_name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        _ => String::new(),
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.check == Check::Nothing {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(roots) = &self.roots else {
            return Err(self.fail("no root certificates loaded".into()));
        };
        let info = der::CertInfo::parse(end_entity.as_ref());
        if roots
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            // The server's own (self-signed) certificate is the root.
            let t = now.as_secs() as i64;
            match info.as_ref().map(|i| (i.not_before, i.not_after)) {
                Some((Some(nb), Some(na))) if nb <= t && t <= na => {}
                Some((Some(nb), Some(_))) if t < nb => return Err(self.fail(
                    "the server certificate is not valid yet; check the clocks of both machines"
                        .into(),
                )),
                Some((Some(_), Some(_))) => {
                    return Err(self
                        .fail("the server certificate has expired; renew it on the server".into()))
                }
                _ => return Err(self.fail("the server certificate cannot be parsed".into())),
            }
        } else {
            let parsed = ParsedCertificate::try_from(end_entity)
                .map_err(|e| self.fail(format!("the server certificate cannot be parsed: {e}")))?;
            verify_server_cert_signed_by_trust_anchor(
                &parsed,
                &roots.store,
                intermediates,
                now,
                self.algorithms.all,
            )
            .map_err(|e| self.fail(self.chain_message(&e)))?;
        }
        if self.check == Check::ChainAndName {
            let host = server_name_text(server_name);
            let Some(info) = info else {
                return Err(self.fail("the server certificate cannot be parsed".into()));
            };
            if !info.matches_host(&host) {
                let names = info.names();
                let (named, hint) = match names.first() {
                    None => ("it names no host".to_string(), String::new()),
                    Some(first) => (
                        format!("it names {}", names.join(", ")),
                        format!(" (host={first})"),
                    ),
                };
                return Err(self.fail(format!(
                    "the server certificate is not valid for host {host} ({named}). Connect using a name the certificate has{hint}, or use sslmode=verify-ca to check the certificate chain only"
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------
// tokio-postgres glue
// ---------------------------------------------------------------------------

/// Turn a handshake I/O error into a [`TlsError`], keeping the verifier's
/// message.
fn classify(e: io::Error, host: &str) -> TlsError {
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) =
        e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>())
    {
        if let Some(v) = inner.downcast_ref::<VerifyFailure>() {
            return TlsError::Verify(v.0.clone());
        }
    }
    TlsError::Handshake(format!("TLS handshake with {host} failed: {e}"))
}

impl<S> MakeTlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connector;
    type Error = TlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connector, TlsError> {
        Ok(Connector {
            config: self.config.clone(),
            host: domain.to_string(),
        })
    }
}

pub(crate) struct Connector {
    config: Option<Arc<ClientConfig>>,
    host: String,
}

impl<S> TlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self
                .config
                .ok_or_else(|| TlsError::Handshake("TLS is disabled (sslmode=disable)".into()))?;
            let name = ServerName::try_from(self.host.clone()).map_err(|_| {
                TlsError::Handshake(format!(
                    "\"{}\" cannot be used as a TLS server name",
                    self.host
                ))
            })?;
            tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map(TlsStream)
                .map_err(|e| classify(e, &self.host))
        })
    }
}

/// A TLS connection to the server.
pub(crate) struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        let (_, conn) = self.0.get_ref();
        match conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| der::end_point_hash(c.as_ref()))
        {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// An alert from the server that says it did not accept our client
/// certificate (or wanted one), for a clearer connection error.
pub(crate) fn client_cert_rejection(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let r = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|i| i.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(alert)) = r {
            use rustls::AlertDescription as A;
            let what = match alert {
                A::CertificateRequired => "the server requires a client certificate and none was sent (set sslcert and sslkey)",
                A::UnknownCA => "the server does not trust the client certificate's CA (sslcert must be signed by a CA in the server's ssl_ca_file)",
                A::BadCertificate | A::UnsupportedCertificate | A::CertificateUnknown => {
                    "the server rejected the client certificate (sslcert)"
                }
                A::CertificateExpired => "the server rejected the client certificate: it has expired",
                A::CertificateRevoked => "the server rejected the client certificate: it is revoked",
                _ => {
                    cur = e.source();
                    continue;
                }
            };
            return Some(what.to_string());
        }
        cur = e.source();
    }
    None
}

// ---------------------------------------------------------------------------
// Just enough DER to read what the checks and messages need
// ---------------------------------------------------------------------------

pub(crate) mod der {
    use std::net::IpAddr;

    use sha2::Digest;

    /// One TLV: tag and contents. Only single-byte tags and definite
    /// lengths (DER).
    fn next<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let mut len = 0usize;
            for b in &rest[..n] {
                len = (len << 8) | *b as usize;
            }
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (body, after) = rest.split_at(len);
        *input = after;
        Some((tag, body))
    }

    fn expect<'a>(input: &mut &'a [u8], tag: u8) -> Option<&'a [u8]> {
        match next(input)? {
            (t, body) if t == tag => Some(body),
            _ => None,
        }
    }

    const SEQ: u8 = 0x30;
    const OID: u8 = 0x06;
    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

    /// What the checks need from a certificate.
    #[derive(Debug, Default)]
    pub(crate) struct CertInfo {
        pub sig_alg: Vec<u8>,
        pub cn: Option<String>,
        pub dns: Vec<String>,
        pub ips: Vec<IpAddr>,
        pub not_before: Option<i64>,
        pub not_after: Option<i64>,
    }

    impl CertInfo {
        pub(crate) fn parse(cert: &[u8]) -> Option<CertInfo> {
            let mut input = cert;
            let mut c = expect(&mut input, SEQ)?;
            let mut tbs = expect(&mut c, SEQ)?;
            let mut alg = expect(&mut c, SEQ)?;
            let mut info = CertInfo {
                sig_alg: expect(&mut alg, OID)?.to_vec(),
                ..CertInfo::default()
            };
            // version [0] (optional), serial, signature, issuer
            let mut item = next(&mut tbs)?;
            if item.0 == 0xa0 {
                item = next(&mut tbs)?;
            }
            if item.0 != 0x02 {
                return None;
            }
            expect(&mut tbs, SEQ)?;
            expect(&mut tbs, SEQ)?;
            let mut validity = expect(&mut tbs, SEQ)?;
            info.not_before = next(&mut validity).and_then(|(t, b)| time(t, b));
            info.not_after = next(&mut validity).and_then(|(t, b)| time(t, b));
            let mut subject = expect(&mut tbs, SEQ)?;
            while let Some(mut rdn) = expect(&mut subject, 0x31) {
                while let Some(mut atv) = expect(&mut rdn, SEQ) {
                    let oid = expect(&mut atv, OID)?;
                    if oid == OID_CN && info.cn.is_none() {
                        let (t, v) = next(&mut atv)?;
                        info.cn = string(t, v);
                    }
                }
            }
            expect(&mut tbs, SEQ)?; // subjectPublicKeyInfo
            while let Some((tag, body)) = next(&mut tbs) {
                if tag != 0xa3 {
                    continue; // issuer/subject unique IDs
                }
                let mut b = body;
                let mut exts = expect(&mut b, SEQ)?;
                while let Some(mut ext) = expect(&mut exts, SEQ) {
                    let oid = expect(&mut ext, OID)?;
                    let (mut t, mut v) = next(&mut ext)?;
                    if t == 0x01 {
                        (t, v) = next(&mut ext)?; // critical
                    }
                    if oid != OID_SAN || t != 0x04 {
                        continue;
                    }
                    let mut octets = v;
                    let mut names = expect(&mut octets, SEQ)?;
                    while let Some((t, v)) = next(&mut names) {
                        match t {
                            0x82 => {
                                if let Ok(s) = std::str::from_utf8(v) {
                                    info.dns.push(s.to_string());
                                }
                            }
                            0x87 => match v.len() {
                                4 => info.ips.push(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
                                16 => info.ips.push(IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
                                _ => {}
                            },
                            _ => {}
                        }
                    }
                }
            }
            Some(info)
        }

        /// libpq's host name check: any subjectAltName may match; the
        /// Common Name counts only when there is no SAN of the host's kind.
        pub(crate) fn matches_host(&self, host: &str) -> bool {
            let host_ip: Option<IpAddr> = host.parse().ok();
            if self.dns.iter().any(|n| name_matches(n, host))
                || host_ip.is_some_and(|ip| self.ips.contains(&ip))
            {
                return true;
            }
            let has_own_kind = if host_ip.is_some() {
                !self.ips.is_empty()
            } else {
                !self.dns.is_empty()
            };
            !has_own_kind && self.cn.as_deref().is_some_and(|cn| name_matches(cn, host))
        }

        /// The names the certificate is valid for, for messages.
        pub(crate) fn names(&self) -> Vec<String> {
            let mut out: Vec<String> = self.dns.clone();
            out.extend(self.ips.iter().map(|i| i.to_string()));
            if let Some(cn) = &self.cn {
                if !out.contains(cn) {
                    out.push(cn.clone());
                }
            }
            out
        }
    }

    /// A certificate name against a host: case-insensitive; `*.` matches
    /// exactly one leftmost label.
    fn name_matches(pattern: &str, host: &str) -> bool {
        if pattern.eq_ignore_ascii_case(host) {
            return true;
        }
        match (pattern.strip_prefix("*."), host.split_once('.')) {
            (Some(suffix), Some((first, rest))) => {
                !first.is_empty() && !suffix.is_empty() && rest.eq_ignore_ascii_case(suffix)
            }
            _ => false,
        }
    }

    fn string(tag: u8, v: &[u8]) -> Option<String> {
        match tag {
            // UTF8String, PrintableString, IA5String, VisibleString
            0x0c | 0x13 | 0x16 | 0x1a => std::str::from_utf8(v).ok().map(str::to_string),
            // TeletexString: treat as Latin-1
            0x14 => Some(v.iter().map(|b| *b as char).collect()),
            // BMPString: UTF-16BE
            0x1e => {
                let units: Vec<u16> = v
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16(&units).ok()
            }
            _ => None,
        }
    }

    /// UTCTime / GeneralizedTime ("...Z") as Unix seconds.
    fn time(tag: u8, v: &[u8]) -> Option<i64> {
        let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
        if !s.is_ascii() {
            return None;
        }
        let (year, rest) = match tag {
            0x17 if s.len() == 12 => {
                let yy: i64 = s[..2].parse().ok()?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
            }
            0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
            _ => return None,
        };
        let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
        let (mo, d, h, mi, se) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
        // days from civil (proleptic Gregorian)
        let y = if mo <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (mo + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146097 + doe - 719468;
        Some(days * 86400 + h * 3600 + mi * 60 + se)
    }

    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
    const NIST_SIG: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03];

    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    pub(crate) enum Hash {
        Sha224,
        Sha256,
        Sha384,
        Sha512,
    }

    /// The tls-server-end-point hash for a signature algorithm (RFC 5929
    /// section 4.1: the signature's hash, but SHA-256 for MD5 and SHA-1).
    /// None for algorithms without a single hash (RSASSA-PSS, EdDSA), for
    /// which PostgreSQL has no channel binding either.
    pub(crate) fn binding_hash(sig_alg: &[u8]) -> Option<Hash> {
        if let Some(n) = sig_alg.strip_prefix(RSA) {
            return match n {
                // md5, sha1, sha256, sha384, sha512, sha224 WithRSAEncryption
                [4] | [5] | [11] => Some(Hash::Sha256),
                [12] => Some(Hash::Sha384),
                [13] => Some(Hash::Sha512),
                [14] => Some(Hash::Sha224),
                _ => None,
            };
        }
        if let Some(n) = sig_alg.strip_prefix(ECDSA) {
            return match n {
                [1] | [3, 2] => Some(Hash::Sha256),
                [3, 1] => Some(Hash::Sha224),
                [3, 3] => Some(Hash::Sha384),
                [3, 4] => Some(Hash::Sha512),
                _ => None,
            };
        }
        if sig_alg == DSA_SHA1 {
            return Some(Hash::Sha256);
        }
        if let Some(n) = sig_alg.strip_prefix(NIST_SIG) {
            return match n {
                // dsa-with-sha224, dsa-with-sha256
                [1] => Some(Hash::Sha224),
                [2] => Some(Hash::Sha256),
                _ => None,
            };
        }
        None
    }

    /// The tls-server-end-point channel binding data for a certificate.
    pub(crate) fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
        let info = CertInfo::parse(cert)?;
        Some(match binding_hash(&info.sig_alg)? {
            Hash::Sha224 => sha2::Sha224::digest(cert).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(cert).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(cert).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(cert).to_vec(),
        })
    }

    #[cfg(test)]
    /// Made with `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384
    /// -sha384 -days 36500 -subj "/O=hyperfill unit test/CN=cn.example.com"
    /// -addext "subjectAltName=DNS:db.example.com,DNS:*.wild.example.com,IP:10.1.2.3,IP:::1"`.
    pub(crate) const TEST_CERT_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIICSjCCAdGgAwIBAgIUZv5jKJkQ7eNBj8mGAGe7JiYX/pAwCgYIKoZIzj0EAwMw
NzEcMBoGA1UECgwTaHlwZXJmaWxsIHVuaXQgdGVzdDEXMBUGA1UEAwwOY24uZXhh
bXBsZS5jb20wIBcNMjYxMTIxMDIyOTExWhgPMjEyNjEwMjgwMjI5MTFaMDcxHDAa
BgNVBAoME2h5cGVyZmlsbCB1bml0IHRlc3QxFzAVBgNVBAMMDmNuLmV4YW1wbGUu
Y29tMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEQsm0uoyUy1oN6lUnwpBXBlHXjhrG
QOOVvU26GnkSXvfOrQlncoVdU1SlSPBVf/DiVYe+1XSue0zYG1epEktjzAcLfib6
tns9PTFSx1qLwvDlfN0imy+1WuoYxMXQOsnUo4GbMIGYMB0GA1UdDgQWBBTguiN5
TzPueELYZStdHP+TKoxjJTAfBgNVHSMEGDAWgBTguiN5TzPueELYZStdHP+TKoxj
JTAPBgNVHRMBAf8EBTADAQH/MEUGA1UdEQQ+MDyCDmRiLmV4YW1wbGUuY29tghIq
LndpbGQuZXhhbXBsZS5jb22HBAoBAgOHEAAAAAAAAAAAAAAAAAAAAAEwCgYIKoZI
zj0EAwMDZwAwZAIwFjP4EvG2kbZtOH5iHkuXPkunhJsDa1Lg4CsSvofstBdLSxlI
5p7nTq5RKVj3PHx7AjAxUC3BY7/wDSia/fVvjYC/piYJgNTvnLUB2vycs3DUpaK6
6qFakgeNQeJ4cyV9NFE=
-----END CERTIFICATE-----";

    #[cfg(test)]
    pub(crate) fn tests_cert() -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(TEST_CERT_PEM.as_bytes())
            .expect("test certificate")
            .to_vec()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_a_real_certificate() {
            let der = tests_cert();
            let info = CertInfo::parse(&der).expect("parsed");
            assert_eq!(info.cn.as_deref(), Some("cn.example.com"));
            assert_eq!(info.dns, vec!["db.example.com", "*.wild.example.com"]);
            assert_eq!(
                info.ips,
                vec![
                    "10.1.2.3".parse::<IpAddr>().unwrap(),
                    "::1".parse().unwrap()
                ]
            );
            // UTCTime and GeneralizedTime (after 2049)
            assert_eq!(info.not_before, Some(1795228151));
            assert_eq!(info.not_after, Some(4948828151));
            assert_eq!(binding_hash(&info.sig_alg), Some(Hash::Sha384));
            assert!(info.matches_host("db.example.com"));
            assert!(info.matches_host("x.wild.example.com"));
            assert!(info.matches_host("10.1.2.3"));
            // DNS SANs present: the CN does not count for DNS names
            assert!(!info.matches_host("cn.example.com"));
            // `openssl x509 -outform der | sha384sum`
            let hash: String = end_point_hash(&der)
                .expect("hash")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(hash, "14e22e9eecd473996f4744e8a52b0ca572c3d82f8cf78a806a01a3f0d6153e97db53869031eba998a063370e3655fac0");
            // garbage and truncation are None, never a panic
            assert!(CertInfo::parse(&der[..der.len() / 2]).is_none());
            assert!(CertInfo::parse(b"\x30\x84\xff\xff\xff\xff").is_none());
            assert!(CertInfo::parse(&[]).is_none());
        }

        #[test]
        fn times() {
            assert_eq!(time(0x17, b"700101000000Z"), Some(0));
            assert_eq!(time(0x17, b"240229123456Z"), Some(1709210096));
            assert_eq!(time(0x18, b"20500101000000Z"), Some(2524608000));
            assert_eq!(time(0x17, b"2401011200Z"), None);
        }

        #[test]
        fn host_names_like_libpq() {
            let cert = |dns: &[&str], ips: &[&str], cn: Option<&str>| CertInfo {
                dns: dns.iter().map(|s| s.to_string()).collect(),
                ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
                cn: cn.map(str::to_string),
                ..CertInfo::default()
            };
            let c = cert(&["localhost"], &[], Some("localhost"));
            assert!(c.matches_host("localhost"));
            assert!(c.matches_host("LocalHost"));
            // no IP SAN: the CN is checked, and it is not the address
            assert!(!c.matches_host("127.0.0.1"));
            assert_eq!(c.names(), vec!["localhost".to_string()]);
            // a DNS SAN hides the CN for DNS hosts
            let c = cert(&["a.example.com"], &[], Some("b.example.com"));
            assert!(!c.matches_host("b.example.com"));
            // no SAN: the CN
            let c = cert(&[], &[], Some("db.example.com"));
            assert!(c.matches_host("db.example.com"));
            let c = cert(&[], &[], Some("127.0.0.1"));
            assert!(c.matches_host("127.0.0.1"));
            // IP SANs
            let c = cert(&["localhost"], &["127.0.0.1", "::1"], None);
            assert!(c.matches_host("127.0.0.1"));
            assert!(c.matches_host("::1"));
            assert!(!c.matches_host("127.0.0.2"));
            // wildcards: one label only
            let c = cert(&["*.example.com"], &[], None);
            assert!(c.matches_host("db.example.com"));
            assert!(!c.matches_host("a.b.example.com"));
            assert!(!c.matches_host("example.com"));
        }

        #[test]
        fn channel_binding_hashes() {
            let rsa = |n: u8| [RSA, &[n]].concat();
            assert_eq!(binding_hash(&rsa(4)), Some(Hash::Sha256)); // md5
            assert_eq!(binding_hash(&rsa(5)), Some(Hash::Sha256)); // sha1
            assert_eq!(binding_hash(&rsa(11)), Some(Hash::Sha256));
            assert_eq!(binding_hash(&rsa(12)), Some(Hash::Sha384));
            assert_eq!(binding_hash(&rsa(13)), Some(Hash::Sha512));
            assert_eq!(binding_hash(&rsa(10)), None); // RSASSA-PSS
            assert_eq!(binding_hash(&[ECDSA, &[1]].concat()), Some(Hash::Sha256));
            assert_eq!(binding_hash(&[ECDSA, &[3, 2]].concat()), Some(Hash::Sha256));
            assert_eq!(binding_hash(&[ECDSA, &[3, 3]].concat()), Some(Hash::Sha384));
            assert_eq!(binding_hash(&[ECDSA, &[3, 4]].concat()), Some(Hash::Sha512));
            assert_eq!(binding_hash(&[0x2b, 0x65, 0x70]), None); // Ed25519
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn verifier(mode: SslMode, check: Check) -> Verifier {
        let cert = CertificateDer::from(der::tests_cert());
        let mut store = RootCertStore::empty();
        let _ = store.add(cert.clone());
        Verifier {
            side: Side::Target,
            mode,
            check,
            roots: Some(Roots {
                store,
                pinned: vec![cert],
                label: "the CA file /x/ca.crt".into(),
            }),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    fn verify(v: &Verifier, host: &str, at: u64) -> Result<(), String> {
        let cert = CertificateDer::from(der::tests_cert());
        let name = ServerName::try_from(host.to_string()).expect("server name");
        v.verify_server_cert(
            &cert,
            &[],
            &name,
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(at)),
        )
        .map(|_| ())
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(o))) => {
                o.to_string()
            }
            other => format!("unexpected: {other}"),
        })
    }

    const NOW: u64 = 1_900_000_000; // 2030, inside the test certificate's validity

    #[test]
    fn a_self_signed_server_certificate_can_be_its_own_root() {
        let v = verifier(SslMode::VerifyFull, Check::ChainAndName);
        assert_eq!(verify(&v, "db.example.com", NOW), Ok(()));
        assert_eq!(verify(&v, "10.1.2.3", NOW), Ok(()));
        let e = verify(&v, "127.0.0.1", NOW).unwrap_err();
        assert!(
            e.starts_with("--target: sslmode=verify-full: the server certificate is not valid for host 127.0.0.1 (it names db.example.com, *.wild.example.com, 10.1.2.3, ::1, cn.example.com)"),
            "{e}"
        );
        assert!(e.contains("(host=db.example.com)"), "{e}");
        // verify-ca does not look at the name
        let v = verifier(SslMode::VerifyCa, Check::Chain);
        assert_eq!(verify(&v, "127.0.0.1", NOW), Ok(()));
        // but at the dates
        let e = verify(&v, "127.0.0.1", 1_000_000_000).unwrap_err();
        assert!(e.contains("not valid yet"), "{e}");
        let e = verify(&v, "127.0.0.1", 5_000_000_000).unwrap_err();
        assert!(e.contains("expired"), "{e}");
    }

    #[test]
    fn nothing_is_checked_without_a_root_file_in_require() {
        let v = Verifier {
            roots: None,
            ..verifier(SslMode::Require, Check::Nothing)
        };
        assert_eq!(verify(&v, "anything.example", 5_000_000_000), Ok(()));
    }

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
        std::fs::write(&crt, der::TEST_CERT_PEM).unwrap();
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
        s.password = Some(super::super::connstr::Secret::new("hunter2"));
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
