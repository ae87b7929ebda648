//! The agent's TLS client configuration: the system's roots plus `--ca-file`, on rustls
//! with the ring provider; one for https, wss and QUIC.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Parses every certificate of a PEM file.
pub fn parse_ca(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .context("--ca-file is not PEM")?;
    if certs.is_empty() {
        bail!("--ca-file holds no certificate");
    }
    Ok(certs)
}

/// A client configuration trusting the platform's roots and `extra`, offering `alpn`.
pub fn client_config(
    extra: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut config = match rustls_platform_verifier::Verifier::new_with_extra_roots(
        extra.iter().cloned(),
        provider,
    ) {
        Ok(verifier) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
        // A machine without a system trust store: the extra CA alone.
        Err(_) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in extra {
                roots.add(cert.clone()).context("--ca-file certificate")?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
