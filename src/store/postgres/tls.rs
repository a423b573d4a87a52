//! TLS to PostgreSQL, as libpq does it: the database URL's `sslmode`
//! (`disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`;
//! unset means `prefer`) and `sslrootcert` (a PEM file of CAs, or
//! `system` for the platform's roots), on every connection herald opens,
//! the LISTEN one included. A small `MakeTlsConnect` adapter puts rustls
//! (the API's TLS library, ring provider) under tokio-postgres.
//!
//! What each mode checks, as libpq:
//!
//! | sslmode | TLS | chain checked | host name checked |
//! |---|---|---|---|
//! | disable | never | | |
//! | allow | only if the server refuses plain | with sslrootcert | |
//! | prefer (default) | when the server offers it, else plain | with sslrootcert | |
//! | require | always | with sslrootcert | |
//! | verify-ca | always | always | |
//! | verify-full | always | always | always |
//!
//! Without `sslrootcert`, `~/.postgresql/root.crt` is used when it exists,
//! as libpq does. The root file is read once, when the store opens.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, Connection, Socket};

use super::StoreError;

/// A root certificate file larger than this is refused (a CA bundle is a
/// few hundred kilobytes).
const ROOT_CERT_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?} is not a mode; use disable, allow, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the CAs that sign the server's certificate come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RootCert {
    /// No CA: the chain is not checked (`prefer`, `require`).
    None,
    File(PathBuf),
    /// `sslrootcert=system`: the platform's trusted roots.
    System,
}

/// The URL's TLS parameters taken out of it, and what is left for
/// tokio-postgres (which knows neither `verify-*` nor `sslrootcert`).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct UrlTls {
    pub(super) url_without_tls: String,
    pub(super) mode: SslMode,
    root_cert: RootCert,
}

/// Splits `sslmode` and `sslrootcert` out of a `postgres://` URL. The
/// errors name the parameter and never repeat the URL (it may hold a
/// password).
pub(super) fn split_url(url: &str, home: Option<&Path>) -> Result<UrlTls, String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut kept = Vec::new();
    let mut mode = None;
    let mut root_file = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)
            .ok_or_else(|| format!("the value of {key} is not valid percent-encoded UTF-8"))?;
        match key {
            "sslmode" => mode = Some(SslMode::parse(&value)?),
            "sslrootcert" if value.is_empty() => {
                return Err("sslrootcert is empty; name a PEM file of CA certificates, or system".into())
            }
            "sslrootcert" => root_file = Some(value),
            // What libpq ignores here too: a client key's passphrase
            // without a client key, SNI (always sent for a name),
            // compression (gone from TLS).
            "sslpassword" | "sslsni" | "sslcompression" => {}
            "sslcert" | "sslkey" | "sslcrl" | "sslcrldir" | "ssl_min_protocol_version"
            | "ssl_max_protocol_version" => {
                return Err(format!(
                    "{key} is not supported by herald (client certificates and these TLS settings are not); remove it"
                ))
            }
            _ => kept.push(pair),
        }
    }
    let root_cert = match root_file.as_deref() {
        Some("system") => RootCert::System,
        Some(file) => RootCert::File(PathBuf::from(file)),
        None => match home.map(|home| home.join(".postgresql/root.crt")) {
            Some(default) if default.is_file() => RootCert::File(default),
            _ => RootCert::None,
        },
    };
    // libpq: the system's roots are only as good as the host name check.
    let mode = match (mode, &root_cert) {
        (None, RootCert::System) => SslMode::VerifyFull,
        (Some(mode), RootCert::System) if mode != SslMode::VerifyFull => {
            return Err(format!(
                "sslmode={} may not be used with sslrootcert=system: any certificate a public CA signed for any name would pass; use sslmode=verify-full",
                mode.as_str()
            ))
        }
        (mode, _) => mode.unwrap_or(SslMode::Prefer),
    };
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert == RootCert::None {
        return Err(format!(
            "sslmode={} checks the server's certificate against a CA, but none is given; add sslrootcert=/path/to/ca.pem (or sslrootcert=system for a publicly signed server)",
            mode.as_str()
        ));
    }
    let url_without_tls = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(UrlTls {
        url_without_tls,
        mode,
        root_cert,
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// How every connection of a store is opened: the driver's settings and
/// the TLS that `sslmode` asks for.
#[derive(Clone)]
pub(super) struct ConnectionSettings {
    pub(super) config: tokio_postgres::Config,
    mode: SslMode,
    tls: MakeRustls,
}

impl ConnectionSettings {
    /// `config` is the URL without its TLS parameters, as parsed by
    /// tokio-postgres; reads the root certificates now.
    pub(super) fn new(
        mut config: tokio_postgres::Config,
        tls: &UrlTls,
    ) -> Result<ConnectionSettings, StoreError> {
        let client_config =
            client_config(tls.mode, &tls.root_cert).map_err(StoreError::InvalidUrl)?;
        config.ssl_mode(match tls.mode {
            SslMode::Disable | SslMode::Allow => DriverSslMode::Disable,
            SslMode::Prefer => DriverSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
        });
        Ok(ConnectionSettings {
            config,
            mode: tls.mode,
            tls: MakeRustls {
                config: Arc::new(client_config),
            },
        })
    }

    pub(super) fn mode(&self) -> SslMode {
        self.mode
    }

    /// Opens one connection. `prefer` falls back to plain when the TLS
    /// handshake fails, and `allow` to TLS when the server refuses plain,
    /// as libpq does.
    pub(super) async fn connect(
        &self,
    ) -> Result<(Client, Connection<Socket, PgTlsStream>), tokio_postgres::Error> {
        let first = self.config.connect(self.tls.clone()).await;
        let second_mode = match (&first, self.mode) {
            (Err(error), SslMode::Prefer) if handshake_failed(error) => DriverSslMode::Disable,
            (Err(error), SslMode::Allow) if refused_without_tls(error) => DriverSslMode::Require,
            _ => return first,
        };
        let mut second = self.config.clone();
        second.ssl_mode(second_mode);
        second.connect(self.tls.clone()).await
    }
}

/// The TLS handshake itself failed (not the server's answer after it).
fn handshake_failed(error: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        if inner.is::<HandshakeError>() {
            return true;
        }
        cause = inner.source();
    }
    false
}

/// The server refused a connection without TLS (`hostssl` lines only).
fn refused_without_tls(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && db.message().contains("no encryption")
    })
}

fn read_roots(file: &Path) -> Result<RootCertStore, String> {
    let shown = file.display();
    let size = std::fs::metadata(file)
        .map_err(|e| format!("sslrootcert: cannot read {shown}: {e}"))?
        .len();
    if size > ROOT_CERT_FILE_BYTES_MAX {
        return Err(format!(
            "sslrootcert: {shown} is {size} bytes, more than the {ROOT_CERT_FILE_BYTES_MAX} a CA file may have"
        ));
    }
    let pem = std::fs::read(file).map_err(|e| format!("sslrootcert: cannot read {shown}: {e}"))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("sslrootcert: {shown} is not valid PEM: {e}"))?;
    if certificates.is_empty() {
        return Err(format!(
            "sslrootcert: {shown} holds no PEM certificate (a \"BEGIN CERTIFICATE\" block)"
        ));
    }
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|e| format!("sslrootcert: {shown} holds an unusable CA certificate: {e}"))?;
    }
    Ok(roots)
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for a mode and its roots.
fn client_config(mode: SslMode, root_cert: &RootCert) -> Result<ClientConfig, String> {
    let provider = ring();
    let verifier: Arc<dyn ServerCertVerifier> = match root_cert {
        // No CA to check against: encrypted, not authenticated (libpq's
        // `require` without a root file).
        RootCert::None => Arc::new(AnyCertificate {
            provider: provider.clone(),
        }),
        RootCert::System => Arc::new(
            rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|e| {
                format!("sslrootcert=system: the platform's roots cannot be used: {e}")
            })?,
        ),
        RootCert::File(file) => {
            let roots = Arc::new(read_roots(file)?);
            let chain_and_name =
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| format!("sslrootcert: {}: {e}", file.display()))?;
            if mode == SslMode::VerifyFull {
                chain_and_name
            } else {
                // libpq checks the host name in verify-full only.
                Arc::new(ChainOnly {
                    inner: chain_and_name,
                })
            }
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // What libpq 17 offers; servers before 17 ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// Accepts any certificate, but still checks that the server holds its
/// key (the handshake's signatures): `sslmode=require` without a CA.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Checks the chain against the roots but not the host name
/// (`verify-ca`, and `prefer`/`require` with a root file).
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first, then the name: a name error means
        // the chain passed.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
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

/// tokio-postgres's TLS connector over rustls.
#[derive(Clone)]
pub(super) struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = PgTlsStream;
    type TlsConnect = RustlsConnect;
    type Error = HandshakeError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, HandshakeError> {
        let server_name = ServerName::try_from(host.to_owned()).map_err(|e| HandshakeError {
            host: host.to_owned(),
            reason: format!("{host:?} is not a host name TLS can check: {e}"),
            hint: "",
        })?;
        Ok(RustlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            server_name,
        })
    }
}

pub(super) struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = PgTlsStream;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream, HandshakeError>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let host = self.server_name.to_str().into_owned();
            self.connector
                .connect(self.server_name, stream)
                .await
                .map(|stream| PgTlsStream(Box::new(stream)))
                .map_err(|error| HandshakeError::new(host, error))
        })
    }
}

/// A failed TLS handshake with PostgreSQL, with what to do about it.
#[derive(Debug)]
pub struct HandshakeError {
    host: String,
    reason: String,
    hint: &'static str,
}

impl HandshakeError {
    fn new(host: String, error: std::io::Error) -> HandshakeError {
        let rustls = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        let hint = match rustls {
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => "; sslmode=verify-full checks that the server's certificate names the host of the URL: connect by a name the certificate holds, or use sslmode=verify-ca",
            Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                "; the server's certificate is not signed by a CA in sslrootcert: give the CA that signed it"
            }
            Some(rustls::Error::InvalidCertificate(_)) => {
                "; the server's certificate was refused: check sslrootcert and the certificate's dates"
            }
            _ => "",
        };
        HandshakeError {
            host,
            reason: error.to_string(),
            hint,
        }
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TLS with PostgreSQL at {} failed: {}{}",
            self.host, self.reason, self.hint
        )
    }
}

impl std::error::Error for HandshakeError {}

/// A TLS session with PostgreSQL.
pub struct PgTlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl TlsStream for PgTlsStream {
    /// `tls-server-end-point` (RFC 5929): the hash of the server's
    /// certificate, so SCRAM authentication cannot be relayed by a man in
    /// the middle even where the certificate is not checked (`require`).
    /// None for a signature whose hash the RFC leaves open (Ed25519): SCRAM
    /// then runs without binding, as libpq does.
    fn channel_binding(&self) -> ChannelBinding {
        let certificate = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        match certificate.and_then(|c| tls_server_end_point(c)) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// The certificate's hash for `tls-server-end-point`: with its signature's
/// hash function, SHA-256 for MD5 and SHA-1 (RFC 5929 section 4.1).
fn tls_server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, ... }
    let (_, certificate_body, _) = der_element(certificate)?;
    let (_, _tbs, rest) = der_element(certificate_body)?;
    let (_, algorithm, _) = der_element(rest)?;
    let (tag, oid, _) = der_element(algorithm)?;
    if tag != 0x06 {
        return None;
    }
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let bits = match oid {
        _ if oid == ECDSA_SHA1 => 256,
        [prefix @ .., last] if prefix == RSA => match last {
            0x04 | 0x05 | 0x0b => 256,
            0x0c => 384,
            0x0d => 512,
            _ => return None,
        },
        [prefix @ .., last] if prefix == ECDSA_SHA2 => match last {
            0x02 => 256,
            0x03 => 384,
            0x04 => 512,
            _ => return None,
        },
        _ => return None,
    };
    Some(match bits {
        256 => sha2::Sha256::digest(certificate).to_vec(),
        384 => sha2::Sha384::digest(certificate).to_vec(),
        _ => sha2::Sha512::digest(certificate).to_vec(),
    })
}

/// One DER element at the start of `bytes`: its tag, its content and what
/// follows it. None when it is cut short or uses an indefinite length.
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |length, &b| (length << 8) | b as usize);
        (length, &rest[count..])
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> Result<UrlTls, String> {
        split_url(url, None)
    }

    #[test]
    fn the_default_is_prefer_and_the_url_is_unchanged() {
        let tls = split("postgres://u@h/db?options=-csearch_path%3Dx").unwrap();
        assert_eq!(tls.mode, SslMode::Prefer);
        assert_eq!(tls.root_cert, RootCert::None);
        assert_eq!(
            tls.url_without_tls,
            "postgres://u@h/db?options=-csearch_path%3Dx"
        );
    }

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let tls = split(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, RootCert::File("/etc/ca.pem".into()));
        assert_eq!(tls.url_without_tls, "postgres://u@h/db?application_name=x");
    }

    #[test]
    fn what_libpq_ignores_without_a_client_key_is_dropped() {
        let tls = split("postgres://u@h/db?sslpassword=p&sslsni=1&sslmode=disable").unwrap();
        assert_eq!(tls.url_without_tls, "postgres://u@h/db");
        assert_eq!(tls.mode, SslMode::Disable);
    }

    #[test]
    fn verify_modes_need_a_ca() {
        let error = split("postgres://u:secret@h/db?sslmode=verify-ca").unwrap_err();
        assert!(error.contains("sslrootcert"), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn system_roots_mean_verify_full() {
        let tls = split("postgres://u@h/db?sslrootcert=system").unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        let error = split("postgres://u@h/db?sslrootcert=system&sslmode=require").unwrap_err();
        assert!(error.contains("verify-full"), "{error}");
    }

    #[test]
    fn an_unknown_mode_and_client_certificates_are_refused_by_name() {
        let error = split("postgres://u@h/db?sslmode=verify").unwrap_err();
        assert!(
            error.starts_with("sslmode=\"verify\" is not a mode"),
            "{error}"
        );
        let error = split("postgres://u@h/db?sslcert=/c.pem").unwrap_err();
        assert!(error.starts_with("sslcert is not supported"), "{error}");
    }

    #[test]
    fn the_home_root_file_is_used_as_libpq_does() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".postgresql")).unwrap();
        std::fs::write(home.path().join(".postgresql/root.crt"), "x").unwrap();
        let tls = split_url("postgres://u@h/db?sslmode=verify-ca", Some(home.path())).unwrap();
        assert_eq!(
            tls.root_cert,
            RootCert::File(home.path().join(".postgresql/root.crt"))
        );
    }

    #[test]
    fn a_missing_root_file_names_the_parameter_and_the_file() {
        let error = client_config(
            SslMode::VerifyFull,
            &RootCert::File("/nonexistent/ca.pem".into()),
        )
        .unwrap_err();
        assert!(
            error.starts_with("sslrootcert: cannot read /nonexistent/ca.pem"),
            "{error}"
        );
    }
}
