//! TLS for PostgreSQL connections, by rustls with the ring provider, with
//! libpq's `sslmode` semantics:
//! - `prefer`, `require`: encrypt, but do not verify the certificate
//!   (`require` with `sslrootcert` set verifies the chain, as libpq does);
//! - `verify-ca`: the certificate chains to a trusted CA;
//! - `verify-full`: and it names the host the URL connects to.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::url::{PgTarget, SslMode};

/// The connector and the mode to hand to the postgres client.
pub(crate) fn connector(target: &PgTarget) -> Result<(PgSslMode, MakeRustls), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // libpq: `require` with a root certificate file behaves as `verify-ca`.
    let mode = match (target.sslmode, &target.sslrootcert) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(NoVerification(provider.clone()))
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = load_roots(target.sslrootcert.as_deref(), mode)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("cannot use the trusted certificates: {e}"))?;
            Arc::new(Verify {
                inner: webpki,
                check_name: mode == SslMode::VerifyFull,
            })
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let pg_mode = match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    };
    Ok((pg_mode, MakeRustls(Arc::new(config))))
}

/// The largest file of trusted certificates: a system's whole bundle is
/// a few hundred KiB.
const MAX_ROOTS_BYTES: u64 = 16 * 1024 * 1024;

fn load_roots(sslrootcert: Option<&Path>, mode: SslMode) -> Result<RootCertStore, String> {
    let path: PathBuf = match sslrootcert {
        Some(p) if p == Path::new("system") => system_roots_file().ok_or_else(|| {
            "sslrootcert=system: no system certificate bundle found (set SSL_CERT_FILE)".to_string()
        })?,
        Some(p) => p.to_path_buf(),
        None => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            let default = home.join(".postgresql/root.crt");
            if !default.is_file() {
                return Err(format!(
                    "sslmode={} needs trusted CA certificates: add `sslrootcert=/path/to/ca.pem` (or `sslrootcert=system`) to the URL",
                    mode.as_str()
                ));
            }
            default
        }
    };
    let mut roots = RootCertStore::empty();
    // Only a regular file, of a bounded size: `/dev/zero` would be read
    // without end, and a FIFO waited on.
    let pem = crate::fsread::read_regular(&path, MAX_ROOTS_BYTES).map_err(|e| {
        format!(
            "cannot read sslrootcert `{}`: {}",
            path.display(),
            e.reason(MAX_ROOTS_BYTES)
        )
    })?;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("bad certificate in `{}`: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("bad certificate in `{}`: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "no certificates in sslrootcert `{}`",
            path.display()
        ));
    }
    Ok(roots)
}

fn system_roots_file() -> Option<PathBuf> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let known = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ];
    from_env
        .into_iter()
        .chain(known.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Checks the handshake's signatures but not the certificate: what libpq's
/// `prefer` and `require` give.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// WebPKI verification, with the host name check optional (`verify-ca`).
#[derive(Debug)]
struct Verify {
    inner: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Verify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Makes a TLS connector for each connection attempt.
#[derive(Clone)]
pub(crate) struct MakeRustls(Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        // Called for every connection, also over a Unix socket with TLS
        // disabled, where the "domain" is a path: fail only if used.
        Ok(RustlsConnect {
            config: self.0.clone(),
            name: ServerName::try_from(domain.to_string()).ok(),
        })
    }
}

pub(crate) struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: Option<ServerName<'static>>,
}

type ConnectFuture<S> = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = ConnectFuture<S>;

    fn connect(self, stream: S) -> ConnectFuture<S> {
        let Some(name) = self.name else {
            return Box::pin(async {
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS needs a host name or IP address, not a socket path",
                ))
            });
        };
        let connector = tokio_rustls::TlsConnector::from(self.config);
        let connect = connector.connect(name, stream);
        Box::pin(async move { connect.await.map(RustlsStream) })
    }
}

/// A TLS stream; channel binding is not offered, so SCRAM authenticates
/// without it (as libpq's `channel_binding=prefer` does when the server's
/// certificate hash algorithm is unknown).
pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> fmt::Debug for RustlsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RustlsStream")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
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
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
