//! The REST API over TLS: a CA made in the test signs the server's certificate; clients that
//! trust the CA get answers, plain HTTP gets none, and a new certificate written over the
//! files serves new connections without a restart.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use boson_control::config::ApiTls;
use common::{Backend, Options, TestServer};
use rustls::pki_types::{CertificateDer, ServerName};

/// A CA: its certificate (DER) and what signs with it.
struct Ca {
    cert: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes a certificate for `localhost` and `127.0.0.1`, signed by this CA, and its key.
    fn issue(&self, cert: &Path, key: &Path) {
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = params.signed_by(&leaf_key, &self.issuer).unwrap();
        // Written to a temporary name and renamed, as certbot and cert-manager do.
        let tmp = cert.with_extension("new");
        std::fs::write(&tmp, leaf.pem()).unwrap();
        std::fs::rename(&tmp, cert).unwrap();
        std::fs::write(&tmp, leaf_key.serialize_pem()).unwrap();
        std::fs::rename(&tmp, key).unwrap();
    }
}

/// `GET path` over TLS to `addr`, trusting only `ca`; the status code, or the TLS or I/O
/// error.
fn get(addr: SocketAddr, ca: &CertificateDer<'static>, path: &str) -> Result<u16, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // The server may close without close_notify after `Connection: close`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))
}

async fn tls_server(dir: &Path, ca: &Ca) -> TestServer {
    let source = boson_tls::TlsSource {
        cert: dir.join("api.pem"),
        key: dir.join("api-key.pem"),
    };
    ca.issue(&source.cert, &source.key);
    let options = Options {
        api_tls: Some(ApiTls {
            source,
            reload_interval: Duration::from_millis(50),
        }),
        ..Options::default()
    };
    TestServer::start_with(Backend::Sqlite, options)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_with_a_certificate_and_nothing_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let server = tls_server(dir.path(), &ca).await;
    let addr = server.addr;
    let cert = ca.cert.clone();
    let status = tokio::task::spawn_blocking(move || get(addr, &cert, "/health/ready"))
        .await
        .unwrap();
    assert_eq!(status, Ok(200));
    // A client that trusts another CA refuses the server.
    let other = Ca::new("other CA").cert;
    let refused = tokio::task::spawn_blocking(move || get(addr, &other, "/health"))
        .await
        .unwrap();
    assert!(refused.is_err(), "{refused:?}");
    // Plain HTTP gets no HTTP answer: the server reads it as a broken handshake.
    let plain = server.http.get(server.url("/health")).send().await;
    assert!(plain.is_err(), "{plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_serves_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new("first CA");
    let server = tls_server(dir.path(), &first).await;
    let addr = server.addr;
    let cert = first.cert.clone();
    let status = tokio::task::spawn_blocking(move || get(addr, &cert, "/health"))
        .await
        .unwrap();
    assert_eq!(status, Ok(200));

    // The files now hold a certificate from another CA.
    let second = Ca::new("second CA");
    second.issue(&dir.path().join("api.pem"), &dir.path().join("api-key.pem"));
    let (new_ca, old_ca) = (second.cert.clone(), first.cert.clone());
    let (now_new, now_old) = tokio::task::spawn_blocking(move || {
        // Up to 10 s: the reloader looks every 50 ms.
        for _ in 0..200 {
            if get(addr, &new_ca, "/health") == Ok(200) {
                return (Ok(200), get(addr, &old_ca, "/health"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (get(addr, &new_ca, "/health"), Ok(0))
    })
    .await
    .unwrap();
    assert_eq!(now_new, Ok(200), "the renewed certificate never served");
    assert!(
        now_old.is_err(),
        "the old certificate still serves: {now_old:?}"
    );
}
