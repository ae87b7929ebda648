//! TLS for the relay (wss): a certificate chain and key from PEM files, reloaded without a
//! restart when the files change (a certificate renewed by certbot or cert-manager). New
//! connections get the new certificate; established ones keep theirs.

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

/// Modification times of the certificate and key files.
type Mtimes = (Option<SystemTime>, Option<SystemTime>);

/// The current server config, swapped when the files change.
#[derive(Debug)]
pub(crate) struct Reloader {
    source: TlsSource,
    current: RwLock<(Arc<rustls::ServerConfig>, Mtimes)>,
}

impl Reloader {
    pub(crate) fn new(source: TlsSource) -> Result<Self, TlsError> {
        let mtimes = source.mtimes();
        let config = source.load()?;
        Ok(Self {
            source,
            current: RwLock::new((config, mtimes)),
        })
    }

    /// The config for a new connection (a read lock and an `Arc` clone, once per accept).
    pub(crate) fn config(&self) -> Arc<rustls::ServerConfig> {
        let guard = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&guard.0)
    }

    /// Reloads if either file changed. A pair that does not load keeps the old certificate in
    /// service (and is logged); the next change is tried again. Returns whether it reloaded.
    pub(crate) fn check(&self) -> bool {
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
                tracing::info!(cert = %self.source.cert.display(), "relay TLS certificate reloaded");
                true
            }
            Err(err) => {
                tracing::warn!("relay TLS certificate not reloaded, keeping the old one: {err}");
                false
            }
        }
    }
}

/// Stops the reload thread when dropped.
#[derive(Debug)]
pub(crate) struct ReloadStop(Option<std::sync::mpsc::Sender<()>>);

impl Drop for ReloadStop {
    fn drop(&mut self) {
        self.0.take();
    }
}

/// Checks the files every `interval` on a small thread until the returned guard is dropped.
pub(crate) fn spawn_reloader(
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
