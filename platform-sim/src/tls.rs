//! The simulator's optional TLS mode: with [`SimConfig::tls`](crate::SimConfig::tls)
//! set, the one port serves `https://` and `wss://` only, and the lookup
//! answers `wss://HOST:PORT/ws`, as a platform behind TLS does.
//!
//! The certificate and key are given as PEM text, so a test can make a
//! throw-away certificate in memory; [`TlsConfig::from_files`] reads them
//! for the command line (`platform-sim serve --tls-cert F --tls-key F`).
//! rustls runs on the `ring` provider, like the connector's client.

use std::{fmt, path::Path, sync::Arc};

use rustls::ServerConfig;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use crate::SimError;

/// The server certificate (chain) and its private key, both PEM. `Debug`
/// never shows the key.
#[derive(Clone)]
pub struct TlsConfig {
    /// The server certificate first, then any intermediates.
    pub cert_pem: String,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsConfig {
    /// Reads the certificate and key files; an unreadable file is named in
    /// the error.
    pub fn from_files(cert: &Path, key: &Path) -> Result<TlsConfig, SimError> {
        let read = |what: &str, path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| SimError::Config(format!("cannot read TLS {what} {}: {e}", path.display())))
        };
        Ok(TlsConfig {
            cert_pem: read("certificate", cert)?,
            key_pem: read("key", key)?,
        })
    }

    /// The rustls server configuration, or the problem (for
    /// [`SimError::Config`]) naming the part, certificate or key, at fault.
    pub(crate) fn server_config(&self) -> Result<ServerConfig, String> {
        let bad = |message: String| format!("tls: {message}");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("the certificate is not valid PEM: {e}")))?;
        if chain.is_empty() {
            return Err(bad("the certificate PEM holds no CERTIFICATE block".to_owned()));
        }
        // PEM errors name markers and offsets, never key material.
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| bad(format!("the key PEM holds no usable private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| bad(format!("the certificate and key do not fit together: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let tls = TlsConfig {
            cert_pem: "CERT".into(),
            key_pem: "very-secret-key".into(),
        };
        assert!(!format!("{tls:?}").contains("very-secret-key"));
    }

    #[test]
    fn pem_without_a_certificate_or_key_is_a_config_error() {
        let tls = TlsConfig {
            cert_pem: "not pem".into(),
            key_pem: "not pem".into(),
        };
        let err = tls.server_config().unwrap_err();
        assert!(
            err.contains("tls: the certificate PEM holds no CERTIFICATE block"),
            "{err}"
        );
    }

    #[test]
    fn unreadable_files_are_named() {
        let err = TlsConfig::from_files(Path::new("/nonexistent/cert.pem"), Path::new("/nonexistent/key.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read TLS certificate /nonexistent/cert.pem"),
            "{err}"
        );
    }
}
