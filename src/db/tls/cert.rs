//! What the checks and channel binding need from a certificate, read with
//! x509-cert (strict DER, as rustls-webpki reads it): the subject's Common
//! Name, the subjectAltName DNS names and IP addresses, the validity and the
//! signature algorithm. Ours: libpq's host name rules, and RFC 5929's choice
//! of hash for channel binding.

use std::net::IpAddr;

use sha2::Digest;
use x509_cert::der::asn1::{Any, BmpString};
use x509_cert::der::oid::db::rfc4519::COMMON_NAME;
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

/// What the checks need from a certificate.
#[derive(Debug, Default)]
pub(super) struct CertInfo {
    /// The signature algorithm, a dotted OID.
    pub sig_alg: String,
    pub cn: Option<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// The validity, in Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    /// None when the certificate cannot be parsed (or has two
    /// subjectAltName extensions).
    pub(super) fn parse(der: &[u8]) -> Option<CertInfo> {
        let cert = Certificate::from_der(der).ok()?;
        let tbs = cert.tbs_certificate();
        let secs = |t: x509_cert::time::Time| t.to_unix_duration().as_secs() as i64;
        let mut info = CertInfo {
            sig_alg: cert.signature_algorithm().oid.to_string(),
            // the first Common Name in a string type we read
            cn: tbs
                .subject()
                .iter()
                .filter(|a| a.oid == COMMON_NAME)
                .find_map(|a| text(&a.value)),
            not_before: secs(tbs.validity().not_before),
            not_after: secs(tbs.validity().not_after),
            ..CertInfo::default()
        };
        if let Some((_, SubjectAltName(names))) = tbs.get_extension::<SubjectAltName>().ok()? {
            for name in names {
                match name {
                    GeneralName::DnsName(d) => info.dns.push(d.to_string()),
                    GeneralName::IpAddress(a) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(a.as_bytes()) {
                            info.ips.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(a.as_bytes()) {
                            info.ips.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(info)
    }

    /// libpq's host name check: any subjectAltName may match; the
    /// Common Name counts only when there is no SAN of the host's kind.
    pub(super) fn matches_host(&self, host: &str) -> bool {
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
    pub(super) fn names(&self) -> Vec<String> {
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

/// A Common Name as text. TeletexString is read as Latin-1, BMPString as
/// UTF-16; other types (none seen in practice) as no name.
fn text(v: &Any) -> Option<String> {
    match v.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::VisibleString => {
            std::str::from_utf8(v.value()).ok().map(str::to_string)
        }
        Tag::TeletexString => Some(v.value().iter().map(|b| char::from(*b)).collect()),
        Tag::BmpString => BmpString::from_ucs2(v.value()).ok().map(|s| s.to_string()),
        _ => None,
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The tls-server-end-point hash for a signature algorithm (a dotted OID;
/// RFC 5929 section 4.1: the signature's hash, but SHA-256 for MD5 and
/// SHA-1, as PostgreSQL). None for algorithms without a single hash
/// (RSASSA-PSS, EdDSA), for which PostgreSQL has no channel binding either.
fn binding_hash(sig_alg: &str) -> Option<Hash> {
    Some(match sig_alg {
        // {md5,sha1,sha256}WithRSAEncryption
        "1.2.840.113549.1.1.4" | "1.2.840.113549.1.1.5" | "1.2.840.113549.1.1.11" => Hash::Sha256,
        "1.2.840.113549.1.1.12" => Hash::Sha384, // sha384WithRSAEncryption
        "1.2.840.113549.1.1.13" => Hash::Sha512, // sha512WithRSAEncryption
        "1.2.840.113549.1.1.14" => Hash::Sha224, // sha224WithRSAEncryption
        // ecdsa-with-SHA1, ecdsa-with-SHA256
        "1.2.840.10045.4.1" | "1.2.840.10045.4.3.2" => Hash::Sha256,
        "1.2.840.10045.4.3.1" => Hash::Sha224, // ecdsa-with-SHA224
        "1.2.840.10045.4.3.3" => Hash::Sha384, // ecdsa-with-SHA384
        "1.2.840.10045.4.3.4" => Hash::Sha512, // ecdsa-with-SHA512
        "1.2.840.10040.4.3" => Hash::Sha256,   // dsa-with-sha1
        "2.16.840.1.101.3.4.3.1" => Hash::Sha224, // dsa-with-sha224
        "2.16.840.1.101.3.4.3.2" => Hash::Sha256, // dsa-with-sha256
        _ => return None,
    })
}

/// The tls-server-end-point channel binding data for a certificate.
pub(super) fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
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
pub(super) const TEST_CERT_PEM: &str = "\
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
pub(super) fn tests_cert() -> Vec<u8> {
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
        assert_eq!(info.not_before, 1795228151);
        assert_eq!(info.not_after, 4948828151);
        assert_eq!(info.sig_alg, "1.2.840.10045.4.3.3"); // ecdsa-with-SHA384
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

    /// The validity comes from x509-cert: its reading of UTCTime (tag 0x17,
    /// two-digit years) and GeneralizedTime (0x18) as Unix seconds.
    fn time(tag: u8, v: &[u8]) -> Option<i64> {
        let der = [&[tag, v.len() as u8][..], v].concat();
        x509_cert::time::Time::from_der(&der)
            .ok()
            .map(|t| t.to_unix_duration().as_secs() as i64)
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
        let rsa = |n: u8| format!("1.2.840.113549.1.1.{n}");
        let ecdsa = |n: &str| format!("1.2.840.10045.4.{n}");
        assert_eq!(binding_hash(&rsa(4)), Some(Hash::Sha256)); // md5
        assert_eq!(binding_hash(&rsa(5)), Some(Hash::Sha256)); // sha1
        assert_eq!(binding_hash(&rsa(11)), Some(Hash::Sha256));
        assert_eq!(binding_hash(&rsa(12)), Some(Hash::Sha384));
        assert_eq!(binding_hash(&rsa(13)), Some(Hash::Sha512));
        assert_eq!(binding_hash(&rsa(10)), None); // RSASSA-PSS
        assert_eq!(binding_hash(&ecdsa("1")), Some(Hash::Sha256));
        assert_eq!(binding_hash(&ecdsa("3.2")), Some(Hash::Sha256));
        assert_eq!(binding_hash(&ecdsa("3.3")), Some(Hash::Sha384));
        assert_eq!(binding_hash(&ecdsa("3.4")), Some(Hash::Sha512));
        assert_eq!(binding_hash("1.3.101.112"), None); // Ed25519
    }
}
