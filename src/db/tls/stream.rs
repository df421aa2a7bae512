//! The `tokio_postgres::tls` glue: a connector per connection, the TLS
//! stream with SCRAM channel binding (`tls-server-end-point`), and handshake
//! errors turned into messages.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, OtherError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use super::cert;
use super::verify::VerifyFailure;
use super::{Tls, TlsError};

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

/// Connects one connection (made per host by tokio-postgres).
pub(in crate::db) struct Connector {
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
pub(in crate::db) struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        let (_, conn) = self.0.get_ref();
        match conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| cert::end_point_hash(c.as_ref()))
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
pub(in crate::db) fn client_cert_rejection(
    err: &(dyn std::error::Error + 'static),
) -> Option<String> {
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
