//! WireGuard control through the `wg` tool (kernel WireGuard or wireguard-go alike): read the
//! interface's key and port, point a peer's endpoint at its local socket. Keys and
//! allowed-ips are the operator's; nothing else is touched.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use boson_shared::WgPublicKey;
use tokio::process::Command;

use crate::config::parse_key;
use crate::keys::WgSecret;

/// `wg show IFACE private-key`: the key the registration proves it holds (the public key is
/// derived from it). Needs the privileges that configuring the interface needs anyway.
pub async fn private_key(iface: &str) -> anyhow::Result<WgSecret> {
    let out = wg(&["show", iface, "private-key"]).await?;
    let key = parse_key(out.trim())
        .map_err(|e| anyhow::anyhow!("`wg show {iface} private-key` printed a key that {e}"))?;
    Ok(WgSecret::from_bytes(key))
}

/// `wg show IFACE listen-port`.
pub async fn listen_port(iface: &str) -> anyhow::Result<u16> {
    let out = wg(&["show", iface, "listen-port"]).await?;
    let port: u16 = out
        .trim()
        .parse()
        .with_context(|| format!("`wg show {iface} listen-port` printed {out:?}"))?;
    if port == 0 {
        bail!("WireGuard interface {iface} has no listen port");
    }
    Ok(port)
}

/// `wg set IFACE peer KEY endpoint ADDR`.
pub async fn set_endpoint(
    iface: &str,
    peer: &WgPublicKey,
    endpoint: SocketAddr,
) -> anyhow::Result<()> {
    wg(&[
        "set",
        iface,
        "peer",
        &peer.to_base64(),
        "endpoint",
        &endpoint.to_string(),
    ])
    .await?;
    Ok(())
}

async fn wg(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("wg")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run the `wg` tool (install wireguard-tools)")?;
    if !output.status.success() {
        bail!(
            "`wg {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
