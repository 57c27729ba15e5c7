//! The simulator's TLS mode, through the library and the `serve` command:
//! `https://` and `wss://` on one port with a certificate made in the test.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
};

use platform_sim::{SimConfig, SimError, Simulator, TlsConfig};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// A CA's PEM and a server certificate for 127.0.0.1 that it signed.
fn make_certificates() -> (String, TlsConfig) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let tls = TlsConfig {
        cert_pem: server.pem(),
        key_pem: key.serialize_pem(),
    };
    (ca.pem(), tls)
}

/// An awc client that trusts only `ca_pem`.
fn client_trusting(ca_pem: &str) -> awc::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        let cert: rustls_pki_types::CertificateDer<'static> = cert.unwrap();
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = awc::Connector::new().rustls_0_23(Arc::new(config));
    awc::Client::builder().connector(connector).finish()
}

#[actix_rt::test]
async fn in_tls_mode_the_lookup_answers_wss_over_https() {
    let (ca_pem, tls) = make_certificates();
    let sim = Simulator::start(SimConfig {
        tls: Some(tls),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let port = sim.local_addr().port();
    assert!(sim.is_tls());
    assert_eq!(sim.base_url(), format!("https://127.0.0.1:{port}"));
    assert_eq!(sim.socket_url(), format!("wss://127.0.0.1:{port}/ws"));

    let client = client_trusting(&ca_pem);
    let mut answer = client.get(sim.lookup_url()).send().await.expect("an https answer");
    assert_eq!(answer.status().as_u16(), 200);
    let body = answer.body().await.unwrap();
    assert_eq!(body, format!("wss://127.0.0.1:{port}/ws").as_bytes());

    let (_response, _socket) = client.ws(sim.socket_url()).connect().await.expect("a wss socket");

    // Plain HTTP on the TLS port gets no answer.
    let plain = awc::Client::default()
        .get(format!("http://127.0.0.1:{port}/lookup"))
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    sim.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_certificate_and_key_that_do_not_parse_are_a_config_error() {
    let (_ca, mut tls) = make_certificates();
    tls.key_pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
    let err = Simulator::start(SimConfig {
        tls: Some(tls),
        ..SimConfig::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, SimError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("tls: "), "{err}");
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("platform-sim-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn serve_with_tls_cert_and_key_prints_an_https_lookup_url() {
    let (_ca, tls) = make_certificates();
    let dir = temp_dir();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &tls.cert_pem).unwrap();
    std::fs::write(&key, &tls.key_pem).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_platform-sim"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("lookup: https://127.0.0.1:"), "{line:?}");

    let missing = Command::new(env!("CARGO_BIN_EXE_platform-sim"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .args(["--tls-key", "/nonexistent/key.pem"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(stderr.contains("cannot read TLS key /nonexistent/key.pem"), "{stderr}");

    let half = Command::new(env!("CARGO_BIN_EXE_platform-sim"))
        .args(["serve", "--tls-cert"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(!half.status.success());
    assert!(String::from_utf8_lossy(&half.stderr).contains("--tls-key"));
}
