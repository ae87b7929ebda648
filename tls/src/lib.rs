//! TLS server certificates for BosonServer's TCP listeners (the node relay's wss and the REST
//! API's https): a certificate chain and key from PEM files, built into a rustls config with
//! the ring provider, and reloaded without a restart when the files change (a certificate
//! renewed by certbot or cert-manager). New connections get the new certificate; established
//! ones keep theirs. One implementation for both listeners, so both reload alike.
//!
//! And the client side of the relay mesh ([`mesh_client_config`]): TLS 1.3 only, trusting
//! the platform's roots and the deployment's CA file, read again for every config so a
//! renewed CA needs no restart either.
//!
//! I/O: this crate reads files and may run a small polling thread ([`spawn_reloader`]);
//! nothing else.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSource {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No certificate, or a malformed one, in the certificate file.
    #[error("no usable certificate in {0}")]
    NoCertificate(PathBuf),
    /// No private key, or a malformed one, in the key file.
    #[error("no usable private key in {0}")]
    NoKey(PathBuf),
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("certificate and key refused: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsSource {
    /// Reads and checks the pair, building a server config (ALPN `http/1.1`).
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        };
        let cert_pem = read(&self.cert)?;
        let key_pem = read(&self.key)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::NoCertificate(self.cert.clone()))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(self.cert.clone()));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|_| TlsError::NoKey(self.key.clone()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn mtimes(&self) -> Mtimes {
        let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (mtime(&self.cert), mtime(&self.key))
    }
}

/// Every certificate of a PEM document, in order; `None` when it holds none or a malformed
/// one. One parser for every CA file: the mesh's `--mesh-ca-file` and the node agent's
/// `--ca-file`.
pub fn parse_certificates(pem: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .ok()?;
    (!certs.is_empty()).then_some(certs)
}

/// A client config on the ring provider that checks servers against the platform's roots
/// plus `extra` (the CA file alone on a machine without a system trust store), offering
/// `versions` and `alpn`. One implementation for every TLS client of the project: the relay
/// mesh and the node agent's https, wss and QUIC.
pub fn client_config(
    extra: &[CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?;
    let mut config = match rustls_platform_verifier::Verifier::new_with_extra_roots(
        extra.iter().cloned(),
        provider,
    ) {
        Ok(verifier) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
        // A machine without a system trust store: the CA file alone.
        Err(_) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in extra {
                roots.add(cert.clone())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The TLS config a relay host opens mesh links with: TLS 1.3 only (the link's token is
/// bound to the exporter keying material, RFC 8446 §7.5), the ring provider, ALPN
/// `http/1.1`, checking the other host's certificate against the platform's roots and the
/// certificates of `ca_file` (PEM), read now.
pub fn mesh_client_config(
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let extra: Vec<CertificateDer<'static>> = match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })?;
            parse_certificates(&pem).ok_or_else(|| TlsError::NoCertificate(path.to_owned()))?
        }
        None => Vec::new(),
    };
    let config = client_config(&extra, &[&rustls::version::TLS13], &[b"http/1.1"])?;
    Ok(Arc::new(config))
}

/// Modification times of the certificate and key files.
type Mtimes = (Option<SystemTime>, Option<SystemTime>);

/// The current server config, swapped when the files change.
#[derive(Debug)]
pub struct Reloader {
    source: TlsSource,
    /// What the certificate serves, for the log (`relay`, `API`).
    what: &'static str,
    current: RwLock<(Arc<rustls::ServerConfig>, Mtimes)>,
}

impl Reloader {
    /// Loads the pair once; `what` names the listener in log lines.
    pub fn new(source: TlsSource, what: &'static str) -> Result<Self, TlsError> {
        let mtimes = source.mtimes();
        let config = source.load()?;
        Ok(Self {
            source,
            what,
            current: RwLock::new((config, mtimes)),
        })
    }

    /// The config for a new connection (a read lock and an `Arc` clone, once per accept).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        let guard = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&guard.0)
    }

    /// Reloads if either file changed. A pair that does not load keeps the old certificate in
    /// service (and is logged); the next change is tried again. Returns whether it reloaded.
    pub fn check(&self) -> bool {
        let mtimes = self.source.mtimes();
        {
            let guard = self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if guard.1 == mtimes {
                return false;
            }
        }
        let mut guard = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.1 = mtimes;
        match self.source.load() {
            Ok(config) => {
                guard.0 = config;
                tracing::info!(
                    cert = %self.source.cert.display(),
                    "{} TLS certificate reloaded",
                    self.what
                );
                true
            }
            Err(err) => {
                tracing::warn!(
                    "{} TLS certificate not reloaded, keeping the old one: {err}",
                    self.what
                );
                false
            }
        }
    }
}

/// Stops the reload thread when dropped.
#[derive(Debug)]
pub struct ReloadStop(Option<std::sync::mpsc::Sender<()>>);

impl Drop for ReloadStop {
    fn drop(&mut self) {
        self.0.take();
    }
}

/// Checks the files every `interval` on a small thread until the returned guard is dropped.
pub fn spawn_reloader(
    reloader: Arc<Reloader>,
    interval: std::time::Duration,
) -> std::io::Result<ReloadStop> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("boson-tls-reload".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                reloader.check();
            }
        })?;
    Ok(ReloadStop(Some(tx)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn write_pair(dir: &std::path::Path, name: &str) -> TlsSource {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let source = TlsSource {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&source.cert, cert.cert.pem()).unwrap();
        std::fs::write(&source.key, cert.signing_key.serialize_pem()).unwrap();
        source
    }

    #[test]
    fn loads_reloads_on_change_and_keeps_the_old_pair_when_the_new_one_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let source = write_pair(dir.path(), "one.test");
        let reloader = Reloader::new(source.clone(), "test").unwrap();
        let first = reloader.config();
        assert!(!reloader.check(), "nothing changed");
        assert!(Arc::ptr_eq(&first, &reloader.config()));
        // A new pair (mtimes differ once the files are rewritten a little later).
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_pair(dir.path(), "two.test");
        assert!(reloader.check());
        let second = reloader.config();
        assert!(!Arc::ptr_eq(&first, &second));
        // A broken key: the old config stays in service.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&source.key, "not a key").unwrap();
        assert!(!reloader.check());
        assert!(Arc::ptr_eq(&second, &reloader.config()));
    }

    #[test]
    fn unusable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let source = TlsSource {
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("missing-key.pem"),
        };
        assert!(matches!(source.load(), Err(TlsError::Read { .. })));
        std::fs::write(&source.cert, "garbage").unwrap();
        std::fs::write(&source.key, "garbage").unwrap();
        assert!(matches!(source.load(), Err(TlsError::NoCertificate(_))));
        let good = write_pair(dir.path(), "x.test");
        std::fs::write(&good.key, "garbage").unwrap();
        assert!(matches!(good.load(), Err(TlsError::NoKey(_))));
    }
}
