//! The agent's TLS client configuration: the system's roots plus `--ca-file`, on rustls
//! with the ring provider; one for https, wss and QUIC.

use anyhow::{Context as _, bail};
use rustls::pki_types::CertificateDer;

/// Parses every certificate of a PEM file.
pub fn parse_ca(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    match boson_tls::parse_certificates(pem) {
        Some(certs) => Ok(certs),
        None => bail!("--ca-file holds no certificate, or a malformed one"),
    }
}

/// A client configuration trusting the platform's roots and `extra`, offering `alpn`.
pub fn client_config(
    extra: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> anyhow::Result<rustls::ClientConfig> {
    boson_tls::client_config(extra, rustls::DEFAULT_VERSIONS, alpn)
        .context("the TLS client configuration (--ca-file)")
}
