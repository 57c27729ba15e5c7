//! TLS for everything the connector says to the platform: lookup,
//! registration and the WebSocket all go through one `awc::Client` built on
//! one [`TlsSettings`].
//!
//! # Trust
//!
//! A server certificate is accepted when it chains to
//!
//! - a root of the bundled Mozilla root store ([`webpki_roots`]), so a
//!   platform with a publicly issued certificate works with no setup; and
//! - any certificate in `platform.ca_file` (PEM), for a platform behind a
//!   company or self-made CA.
//!
//! The bundled roots were chosen over the operating system's store
//! (`rustls-native-certs`): gateways often run minimal images with no or
//! stale `/etc/ssl/certs`, and a bundled store needs no file IO, cannot fail
//! at start and behaves the same everywhere. The price is that new public
//! roots arrive with a rebuild; anything private goes in `ca_file`.
//!
//! # Crypto
//!
//! rustls on the `ring` provider, chosen explicitly (not the process-wide
//! default) so that no other crate's feature choice can change it or make
//! it ambiguous. Only HTTP/1.1 is offered in ALPN: the WebSocket upgrade
//! needs it, and a pooled HTTP/2 connection could not carry the upgrade.
//!
//! ```no_run
//! use std::time::Duration;
//! use connector_core::{http::HttpClient, tls::TlsSettings};
//!
//! # fn run() -> Result<(), connector_core::tls::TlsError> {
//! let tls = TlsSettings::load(Some("/etc/connector/platform-ca.pem".as_ref()))?;
//! let client = HttpClient::from_awc(tls.awc_client(Duration::from_secs(10)));
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Why the TLS settings could not be built. Every variant names the CA file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file is missing or unreadable.
    #[error("cannot read CA file {}: {source}", path.display())]
    ReadCaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CA file is not PEM, or a PEM block in it is broken.
    #[error("CA file {} is not valid PEM: {reason}", path.display())]
    CaFilePem { path: PathBuf, reason: String },
    /// The CA file holds no `CERTIFICATE` block (a key or a DER file, say).
    #[error("CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    /// A certificate in the CA file cannot serve as a trust anchor.
    #[error("CA file {}: certificate {number} cannot be used as a CA: {reason}", path.display())]
    BadCertificate {
        path: PathBuf,
        /// 1-based position of the certificate in the file.
        number: usize,
        reason: String,
    },
}

/// What the connector trusts: the bundled roots plus an optional CA file.
/// Cheap to clone, `Send + Sync`; build the `awc::Client` with
/// [`awc_client`](Self::awc_client) on the thread that uses it.
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<ClientConfig>,
    ca_file: Option<PathBuf>,
    /// Certificates taken from `ca_file`.
    extra_roots: usize,
}

impl TlsSettings {
    /// The bundled roots plus every certificate in `ca_file` (PEM, one or
    /// more `CERTIFICATE` blocks; other blocks are ignored).
    pub fn load(ca_file: Option<&Path>) -> Result<TlsSettings, TlsError> {
        let mut roots = bundled_roots();
        let extra_roots = match ca_file {
            Some(path) => add_ca_file(&mut roots, path)?,
            None => 0,
        };
        tracing::debug!(
            bundled_roots = webpki_roots::TLS_SERVER_ROOTS.len(),
            ca_file = ?ca_file.map(Path::display),
            extra_roots,
            "TLS trust store ready"
        );
        Ok(TlsSettings {
            config: client_config(roots),
            ca_file: ca_file.map(Path::to_owned),
            extra_roots,
        })
    }

    /// The bundled roots only, built once per process: what
    /// [`HttpClient::new`](crate::http::HttpClient::new) and the free
    /// functions of [`http`](crate::http) use.
    pub fn bundled() -> TlsSettings {
        static BUNDLED: OnceLock<TlsSettings> = OnceLock::new();
        BUNDLED
            .get_or_init(|| TlsSettings {
                config: client_config(bundled_roots()),
                ca_file: None,
                extra_roots: 0,
            })
            .clone()
    }

    /// The rustls configuration, e.g. for a client other than `awc`.
    pub fn rustls_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// The CA file the settings were loaded with.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// An `awc::Client` that speaks `http://`, `https://`, `ws://` and
    /// `wss://`; `timeout` is its default request time-out (our
    /// [`RequestBuilder`](crate::http::RequestBuilder) sets its own per
    /// request, so it matters for WebSocket connects).
    ///
    /// Like every `awc::Client` it is not `Send`: build it on the actix
    /// thread that uses it.
    ///
    /// Its sockets have `TCP_NODELAY` set: the link carries small frames
    /// (a command's reply, an event) that should leave at once, not wait
    /// for the peer to acknowledge the previous one (Nagle's algorithm).
    pub fn awc_client(&self, timeout: Duration) -> awc::Client {
        let connector = awc::Connector::new()
            .connector(nodelay_tcp_connector())
            .rustls_0_23(self.rustls_config());
        awc::Client::builder().connector(connector).timeout(timeout).finish()
    }
}

/// awc's default TCP connector, with `TCP_NODELAY` set on each new socket.
fn nodelay_tcp_connector() -> impl actix_service::Service<
    actix_tls::connect::ConnectInfo<awc::http::Uri>,
    Response = actix_tls::connect::Connection<awc::http::Uri, actix_rt::net::TcpStream>,
    Error = actix_tls::connect::ConnectError,
> + Clone {
    use actix_service::ServiceExt;
    let tcp = actix_tls::connect::Connector::new(actix_tls::connect::Resolver::default()).service();
    tcp.map(
        |connection: actix_tls::connect::Connection<awc::http::Uri, actix_rt::net::TcpStream>| {
            if let Err(e) = connection.io_ref().set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
            connection
        },
    )
}

/// What plugins that open connections of their own trust: the same as the
/// platform link. The runtime sets it from `platform.ca_file` when it
/// starts and at each reload; until then it is the bundled roots.
static FOR_PLUGINS: std::sync::RwLock<Option<TlsSettings>> = std::sync::RwLock::new(None);

/// The trust settings for plugins' own connections (see [`set_for_plugins`]).
pub fn for_plugins() -> TlsSettings {
    let shared = FOR_PLUGINS.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    shared.clone().unwrap_or_else(TlsSettings::bundled)
}

/// Makes `settings` what plugins trust from now on: the runtime calls this
/// with the platform link's own, so a private CA in `platform.ca_file`
/// covers a device's HTTPS too.
pub fn set_for_plugins(settings: TlsSettings) {
    *FOR_PLUGINS.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(settings);
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("bundled_roots", &webpki_roots::TLS_SERVER_ROOTS.len())
            .field("ca_file", &self.ca_file)
            .field("extra_roots", &self.extra_roots)
            .finish()
    }
}

/// Added to a refused server certificate's error, to say what to change.
pub const UNTRUSTED_HINT: &str = "the server's certificate chains to none of the bundled roots \
     nor to platform.ca_file; set platform.ca_file to the CA that issued it";

/// Whether an IO error from a connect is rustls refusing the server's
/// certificate (unknown issuer, wrong name, expired, ...).
pub fn is_untrusted_certificate(err: &std::io::Error) -> bool {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| matches!(tls, rustls::Error::InvalidCertificate(_)))
}

fn bundled_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports rustls' default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Adds every certificate of the PEM file at `path`; returns how many.
fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<usize, TlsError> {
    // Read first, so that "cannot read" and "not PEM" are told apart.
    let bytes = std::fs::read(path).map_err(|source| TlsError::ReadCaFile {
        path: path.to_owned(),
        source,
    })?;
    let certificates: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|err| TlsError::CaFilePem {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    let count = certificates.len();
    for (index, certificate) in certificates.into_iter().enumerate() {
        roots.add(certificate).map_err(|err| TlsError::BadCertificate {
            path: path.to_owned(),
            number: index + 1,
            reason: err.to_string(),
        })?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn the_clients_tcp_sockets_have_nodelay_set() {
        use actix_service::Service;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri: awc::http::Uri = format!("http://{}/", listener.local_addr().unwrap()).parse().unwrap();
        let connector = nodelay_tcp_connector();
        let connection = connector
            .call(actix_tls::connect::ConnectInfo::new(uri))
            .await
            .expect("connects to the loopback listener");
        assert!(connection.io_ref().nodelay().unwrap());
    }

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("connector-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn without_a_ca_file_only_the_bundled_roots_are_trusted() {
        let tls = TlsSettings::load(None).unwrap();
        assert_eq!(tls.ca_file(), None);
        assert_eq!(tls.rustls_config().alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(format!("{tls:?}").contains("extra_roots: 0"));
    }

    #[test]
    fn a_missing_ca_file_is_named_in_the_error() {
        let err = TlsSettings::load(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(matches!(err, TlsError::ReadCaFile { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("cannot read CA file /nonexistent/ca.pem: "),
            "{err}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let key_only = temp_file(
            "key.pem",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let err = TlsSettings::load(Some(&key_only)).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("key.pem holds no PEM certificate"), "{err}");

        let text = temp_file("notes.txt", b"just some text\n");
        assert!(matches!(
            TlsSettings::load(Some(&text)),
            Err(TlsError::NoCertificate { .. })
        ));
    }

    #[test]
    fn broken_pem_and_a_certificate_that_is_no_certificate_are_refused() {
        let unterminated = temp_file("cut.pem", b"-----BEGIN CERTIFICATE-----\nMIIB\n");
        let err = TlsSettings::load(Some(&unterminated)).unwrap_err();
        assert!(matches!(err, TlsError::CaFilePem { .. }), "{err:?}");
        assert!(err.to_string().contains("cut.pem is not valid PEM"), "{err}");

        let garbage = temp_file(
            "garbage.pem",
            b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        );
        let err = TlsSettings::load(Some(&garbage)).unwrap_err();
        assert!(matches!(err, TlsError::BadCertificate { number: 1, .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("garbage.pem: certificate 1 cannot be used as a CA"),
            "{err}"
        );
    }
}
