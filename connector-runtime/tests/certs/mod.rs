//! Throw-away certificates for the TLS tests, made fresh in each run with
//! rcgen: a self-made CA and a server certificate it signed for
//! `localhost` and `127.0.0.1`, as a company CA would issue one.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use platform_sim::{SimConfig, SimHandle, Simulator, TlsConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// A CA and the server certificate it signed.
pub struct TestPki {
    /// The CA certificate, PEM: what `platform.ca_file` points at.
    pub ca_pem: String,
    /// The server certificate and key, for the simulator.
    pub server: TlsConfig,
}

impl TestPki {
    pub fn new() -> TestPki {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "connector test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).expect("a self-signed CA");

        let server_key = KeyPair::generate().expect("a server key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("server parameters");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "platform simulator");
        let server = server_params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("a server certificate signed by the CA");
        TestPki {
            ca_pem: ca.pem(),
            server: TlsConfig {
                cert_pem: server.pem(),
                key_pem: server_key.serialize_pem(),
            },
        }
    }

    /// Writes the CA certificate as `name` into `dir` (created if needed).
    pub fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        std::fs::create_dir_all(dir).expect("a temporary directory");
        let path = dir.join(name);
        std::fs::write(&path, &self.ca_pem).expect("the CA file is written");
        path
    }

    /// A simulator serving `https://` and `wss://` with the server certificate.
    pub async fn simulator(&self, config: SimConfig) -> SimHandle {
        Simulator::start(SimConfig {
            tls: Some(self.server.clone()),
            ..config
        })
        .await
        .expect("the TLS simulator starts")
    }
}

/// A fresh directory under the system's temporary one for this test process.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connector-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}
