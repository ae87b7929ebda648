//! `bosonserver healthcheck`: asks the local REST API whether this server is ready and exits 0
//! if it is, 1 if not. Container images without curl use it as their `HEALTHCHECK`.
//!
//! It speaks just enough HTTP/1.1 over a blocking `TcpStream` to read a status line. It runs
//! every few seconds in every container, so it starts no runtime and pulls in no HTTP client.
//! When the API serves TLS (`BOSON_API_CERT` set, as for the server), the check speaks TLS
//! too and accepts exactly the certificate in that file: it asks its own server on loopback,
//! where the certificate's names would not match anyway. Right after the file is renewed the
//! server may still present the old one for a reload interval; that one check fails.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use anyhow::{Context as _, anyhow, bail, ensure};

/// Where to ask, and how long to wait.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct HealthcheckArgs {
    /// URL to GET, `http://` only. Default: `/health/ready` on the REST API's port on loopback.
    #[arg(long)]
    url: Option<String>,

    /// Address the REST API listens on; the default URL uses its port (and its address unless
    /// that is unspecified), so the check follows the server's own setting.
    #[arg(long, env = "BOSON_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    http_listen: SocketAddr,

    /// Give up on each step (connect, send, receive) after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,

    /// The REST API's certificate: when set, speak TLS and accept exactly this certificate.
    #[arg(long, env = "BOSON_API_CERT")]
    api_cert: Option<PathBuf>,
}

/// Largest response head read before giving up on finding the status line.
const MAX_HEAD: usize = 1024;

/// Bytes of the body quoted in the error, enough for the readiness checks' JSON.
const MAX_QUOTED_BODY: usize = 512;

/// Runs the check; an `Err` makes `main` exit with status 1.
pub(crate) fn run(args: &HealthcheckArgs) -> anyhow::Result<()> {
    let target = match &args.url {
        Some(url) => Target::parse(url)?,
        None => Target::ready_on(args.http_listen),
    };
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let pinned = args
        .api_cert
        .as_ref()
        .map(|path| {
            CertificateDer::from_pem_file(path)
                .with_context(|| format!("reading the API certificate {}", path.display()))
        })
        .transpose()?;
    let (status, body) = fetch(&target, timeout, pinned)
        .with_context(|| format!("GET {} failed", target.display()))?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    bail!("GET {} answered {status}: {body}", target.display())
}

/// An `http://` URL taken apart.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// Host as written in the URL, brackets included for IPv6: the `Host` header.
    authority: String,
    /// Host to resolve, without brackets.
    host: String,
    port: u16,
    path: String,
}

impl Target {
    /// `/health/ready` on the REST API; an unspecified listen address means loopback.
    fn ready_on(listen: SocketAddr) -> Self {
        let ip = match listen.ip() {
            ip if !ip.is_unspecified() => ip,
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        let addr = SocketAddr::new(ip, listen.port());
        Self {
            authority: addr.to_string(),
            host: ip.to_string(),
            port: addr.port(),
            path: "/health/ready".to_owned(),
        }
    }

    fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("{url:?}: only http:// URLs are supported"))?;
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        ensure!(
            !authority.is_empty() && !authority.contains('@'),
            "{url:?}: expected http://HOST[:PORT]/PATH"
        );
        let (host, port) = match authority.strip_prefix('[') {
            Some(bracketed) => {
                let (host, tail) = bracketed
                    .split_once(']')
                    .ok_or_else(|| anyhow!("{url:?}: unclosed IPv6 address"))?;
                (host, tail.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(port) => port
                .parse()
                .map_err(|_| anyhow!("{url:?}: {port:?} is not a port"))?,
            None => 80,
        };
        let path = match path {
            "" => "/".to_owned(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_owned(),
        };
        Ok(Self {
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            path,
        })
    }

    fn display(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

/// The status code and the start of the body (for the error message); over TLS accepting
/// exactly `pinned` when it is given.
fn fetch(
    target: &Target,
    timeout: Duration,
    pinned: Option<CertificateDer<'static>>,
) -> anyhow::Result<(u16, String)> {
    let stream = connect(target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    match pinned {
        None => exchange(stream, target),
        Some(leaf) => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { leaf, provider }))
                .with_no_client_auth();
            let name = ServerName::try_from(target.host.clone())
                .with_context(|| format!("{:?} is not a server name", target.host))?;
            let connection = rustls::ClientConnection::new(Arc::new(config), name)?;
            exchange(rustls::StreamOwned::new(connection, stream), target)
        }
    }
}

/// Accepts the one certificate the server was configured with, and checks the handshake's
/// signatures with it as usual.
#[derive(Debug)]
struct Pinned {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
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

/// Sends the GET on `stream` and reads the answer's status and the start of its body.
fn exchange<S: Read + Write>(mut stream: S, target: &Target) -> anyhow::Result<(u16, String)> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: bosonserver-healthcheck\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream
        .write_all(request.as_bytes())
        .context("sending the request")?;

    let mut response = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !response.windows(2).any(|w| w == b"\r\n") {
        ensure!(response.len() < MAX_HEAD, "no status line in the response");
        let n = stream.read(&mut buf).context("reading the response")?;
        ensure!(n > 0, "the connection closed before the status line");
        response.extend_from_slice(&buf[..n]);
    }
    let status = status_code(&response)?;
    // The body only makes a failure readable (`docker inspect` shows it), so a slow or cut
    // one is no reason to fail a check the status line already decided.
    while response.len() < MAX_HEAD + MAX_QUOTED_BODY {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    Ok((status, quoted_body(&response)))
}

fn connect(target: &Target, timeout: Duration) -> anyhow::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", target.host))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(anyhow!(error).context(format!("connecting to {addr}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("{} resolves to no address", target.host)))
}

/// Parses `HTTP/1.x NNN ...` at the start of `response`.
fn status_code(response: &[u8]) -> anyhow::Result<u16> {
    let end = response
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(response.len());
    let line = std::str::from_utf8(&response[..end]).context("the status line is not text")?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    ensure!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1 response: {line:?}"
    );
    match code.parse::<u16>() {
        Ok(code) if (100..600).contains(&code) => Ok(code),
        _ => Err(anyhow!("bad status line {line:?}")),
    }
}

fn quoted_body(response: &[u8]) -> String {
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&[][..], |at| &response[at + 4..]);
    let body = &body[..body.len().min(MAX_QUOTED_BODY)];
    let text = String::from_utf8_lossy(body).trim().to_owned();
    if text.is_empty() {
        "(no body)".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// Serves one connection with `response` and returns the request it read.
    fn serve_once(response: &'static [u8]) -> (SocketAddr, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 256];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            stream.write_all(response).unwrap();
            String::from_utf8(request).unwrap()
        });
        (addr, handle)
    }

    fn args(url: Option<String>, listen: SocketAddr) -> HealthcheckArgs {
        HealthcheckArgs {
            url,
            http_listen: listen,
            timeout_ms: 2000,
            api_cert: None,
        }
    }

    /// Serves one TLS connection with a fresh self-signed certificate (written to
    /// `dir/cert.pem`) and answers 200.
    fn serve_tls_once(dir: &std::path::Path) -> (SocketAddr, thread::JoinHandle<()>) {
        let cert = rcgen::generate_simple_self_signed(vec!["api.example".into()]).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(
            cert.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let connection = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, tcp);
            let mut request = Vec::new();
            let mut buf = [0u8; 256];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        (addr, handle)
    }

    #[test]
    fn with_the_api_certificate_it_speaks_tls_and_accepts_only_that_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, server) = serve_tls_once(dir.path());
        let mut tls_args = args(None, addr);
        tls_args.api_cert = Some(dir.path().join("cert.pem"));
        run(&tls_args).unwrap();
        server.join().unwrap();
        // Another certificate than the server's: refused.
        let other = rcgen::generate_simple_self_signed(vec!["api.example".into()]).unwrap();
        let other_pem = dir.path().join("other.pem");
        std::fs::write(&other_pem, other.cert.pem()).unwrap();
        let (addr, server) = serve_tls_once(dir.path());
        let mut wrong = args(None, addr);
        wrong.api_cert = Some(other_pem);
        assert!(run(&wrong).is_err());
        server.join().unwrap();
    }

    #[test]
    fn ready_server_passes_and_the_default_url_follows_the_listen_port() {
        let (addr, server) =
            serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\n{\"status\":\"ready\"}");
        let listen = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
        run(&args(None, listen)).unwrap();
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /health/ready HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("Host: 127.0.0.1:{}\r\n", addr.port())),
            "{request}"
        );
    }

    #[test]
    fn not_ready_fails_and_quotes_the_body() {
        let (addr, server) = serve_once(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 24\r\n\r\n{\"status\":\"not_ready\"}\r\n",
        );
        let error = run(&args(Some(format!("http://{addr}/health/ready")), addr)).unwrap_err();
        server.join().unwrap();
        let text = format!("{error:#}");
        assert!(text.contains("503"), "{text}");
        assert!(text.contains("not_ready"), "{text}");
    }

    #[test]
    fn nothing_listening_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(run(&args(None, addr)).is_err());
    }

    #[test]
    fn garbage_fails() {
        let (addr, server) = serve_once(b"SSH-2.0-OpenSSH\r\n");
        assert!(run(&args(None, addr)).is_err());
        server.join().unwrap();
    }

    #[test]
    fn urls_parse() {
        let target = Target::parse("http://[::1]:9000/health/live").unwrap();
        assert_eq!(
            target,
            Target {
                authority: "[::1]:9000".into(),
                host: "::1".into(),
                port: 9000,
                path: "/health/live".into(),
            }
        );
        let target = Target::parse("http://localhost").unwrap();
        assert_eq!((target.port, target.path.as_str()), (80, "/"));
        assert_eq!(
            Target::parse("http://h:1?x=1").unwrap().path,
            "/?x=1",
            "a query without a path still makes a valid request line"
        );
        for bad in [
            "https://localhost/",
            "localhost:8080",
            "http://",
            "http://u@h/",
            "http://h:x/",
            "http://[::1/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unspecified_ipv6_listen_means_ipv6_loopback() {
        let target = Target::ready_on("[::]:8080".parse().unwrap());
        assert_eq!(target.authority, "[::1]:8080");
        assert_eq!(target.host, "::1");
    }
}
