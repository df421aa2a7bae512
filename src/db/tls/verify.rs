//! The server certificate checks that sslmode asks for (a rustls
//! `ServerCertVerifier`), and messages that say what to change when one
//! fails.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError};

use super::super::settings::SslMode;
use super::cert::CertInfo;
use super::{Check, Roots};
use crate::error::Side;

/// Carried through rustls from the verifier to `TlsError::Verify`.
#[derive(Debug)]
pub(super) struct VerifyFailure(pub(super) String);

impl std::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VerifyFailure {}

pub(super) struct Verifier {
    pub(super) side: Side,
    pub(super) mode: SslMode,
    pub(super) check: Check,
    pub(super) roots: Option<Roots>,
    pub(super) algorithms: WebPkiSupportedAlgorithms,
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
        let info = CertInfo::parse(end_entity.as_ref());
        if roots
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            // The server's own (self-signed) certificate is the root.
            let t = now.as_secs() as i64;
            match info.as_ref().map(|i| (i.not_before, i.not_after)) {
                Some((nb, na)) if nb <= t && t <= na => {}
                Some((nb, _)) if t < nb => return Err(self.fail(
                    "the server certificate is not valid yet; check the clocks of both machines"
                        .into(),
                )),
                Some(_) => {
                    return Err(self
                        .fail("the server certificate has expired; renew it on the server".into()))
                }
                None => return Err(self.fail("the server certificate cannot be parsed".into())),
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

#[cfg(test)]
mod tests {
    use super::super::cert::tests_cert;
    use super::*;
    use rustls::RootCertStore;
    use std::time::Duration;

    fn verifier(mode: SslMode, check: Check) -> Verifier {
        let cert = CertificateDer::from(tests_cert());
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
        let cert = CertificateDer::from(tests_cert());
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
}
