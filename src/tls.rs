//! TLS on the API: the certificate, key and optional client CA named under
//! `[server]`, read into a rustls server configuration (ring provider,
//! HTTP/1.1 only), and `LiveTls`, the configuration new connections take,
//! swapped by a config reload while open connections keep the one they
//! started with.
//!
//! Everything here reads files; nothing here speaks HTTP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// A PEM file larger than this is refused: a certificate chain or a key is
/// a few kilobytes, a CA bundle a few hundred.
pub const PEM_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// The TLS files of `[server]`, and the server configuration read from
/// them when the config was loaded (so a reload that cannot read them
/// fails before anything changes).
#[derive(Clone)]
pub struct TlsSettings {
    /// `server.tls_cert_file`: the certificate chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// `server.tls_key_file`: its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// `server.tls_client_ca_file`: when set, every client must present a
    /// certificate signed by one of these CAs (mTLS).
    pub client_ca_file: Option<PathBuf>,
    pub server_config: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key's path may be printed; never its content.
        f.debug_struct("TlsSettings")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("client_ca_file", &self.client_ca_file)
            .finish_non_exhaustive()
    }
}

/// Why the TLS files cannot be used; each names the config key and the
/// file, and says what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsError {
    #[error("server.{key}: cannot read {file}: {reason}")]
    Read {
        key: &'static str,
        file: String,
        reason: String,
    },
    #[error("server.{key}: {file} holds no PEM certificate (a \"BEGIN CERTIFICATE\" block)")]
    NoCertificate { key: &'static str, file: String },
    #[error(
        "server.tls_key_file: {file} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}"
    )]
    NoKey { file: String, reason: String },
    #[error("server.tls_key_file: the key in {key_file} cannot serve the certificate in {cert_file}: {reason}")]
    Mismatch {
        cert_file: String,
        key_file: String,
        reason: String,
    },
    #[error("server.tls_client_ca_file: {file} is not a usable CA certificate: {reason}")]
    ClientCa { file: String, reason: String },
}

impl TlsSettings {
    /// Reads the files and builds the server configuration.
    pub fn load(
        cert_file: PathBuf,
        key_file: PathBuf,
        client_ca_file: Option<PathBuf>,
    ) -> Result<TlsSettings, TlsError> {
        let server_config = Arc::new(server_config(
            &cert_file,
            &key_file,
            client_ca_file.as_deref(),
        )?);
        Ok(TlsSettings {
            cert_file,
            key_file,
            client_ca_file,
            server_config,
        })
    }

    /// The same files read again (certificates are renewed in place).
    pub fn reread(&self) -> Result<TlsSettings, TlsError> {
        TlsSettings::load(
            self.cert_file.clone(),
            self.key_file.clone(),
            self.client_ca_file.clone(),
        )
    }
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |reason: String| TlsError::Read {
        key,
        file: path.display().to_string(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| read_error(e.to_string()))?
        .len();
    if size > PEM_FILE_BYTES_MAX {
        return Err(read_error(format!(
            "{size} bytes, more than the {PEM_FILE_BYTES_MAX} a PEM file may have"
        )));
    }
    std::fs::read(path).map_err(|e| read_error(e.to_string()))
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(key, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read {
            key,
            file: path.display().to_string(),
            reason: format!("bad PEM: {e}"),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            file: path.display().to_string(),
        });
    }
    Ok(certificates)
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for these files: TLS 1.2 and 1.3, HTTP/1.1
/// offered by ALPN, a client certificate required when a CA is given.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let chain = certificates("tls_cert_file", cert_file)?;
    let key_pem = read_pem("tls_key_file", key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        file: key_file.display().to_string(),
        reason: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let ca_error = |reason: String| TlsError::ClientCa {
                file: ca_file.display().to_string(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for certificate in certificates("tls_client_ca_file", ca_file)? {
                roots
                    .add(certificate)
                    .map_err(|e| ca_error(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), ring())
                .build()
                .map_err(|e| ca_error(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Mismatch {
            cert_file: cert_file.display().to_string(),
            key_file: key_file.display().to_string(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS configuration new connections are accepted with; a reload
/// replaces it, and a connection keeps the one it was accepted with.
pub struct LiveTls {
    current: RwLock<Arc<ServerConfig>>,
}

impl LiveTls {
    pub fn new(config: Arc<ServerConfig>) -> LiveTls {
        LiveTls {
            current: RwLock::new(config),
        }
    }

    /// An acceptor for one new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        // Held only to clone the Arc; never across an await.
        let config = self.current.read().expect("TLS config lock poisoned");
        tokio_rustls::TlsAcceptor::from(config.clone())
    }

    /// From now on new connections use `config`.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.current.write().expect("TLS config lock poisoned") = config;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_names_the_key_and_the_file() {
        let error = server_config(
            Path::new("/nonexistent/cert.pem"),
            Path::new("/nonexistent/key.pem"),
            None,
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("server.tls_cert_file: cannot read /nonexistent/cert.pem"),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let error = server_config(&cert, &cert, None).unwrap_err();
        assert_eq!(
            error,
            TlsError::NoCertificate {
                key: "tls_cert_file",
                file: cert.display().to_string()
            }
        );
    }
}
