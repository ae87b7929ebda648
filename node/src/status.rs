//! The status file (`STATE_DIR/status.json`) the running agent rewrites every second, and
//! the `boson-node status` lines made from it. Pure: the shell does the file I/O.

use serde::{Deserialize, Serialize};

/// How long after its last rewrite a status file still counts as a running agent's: three
/// missed rewrites.
pub const FRESH_MS: u64 = 3_000;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusFile {
    /// The agent's process id.
    pub pid: u32,
    /// Whether the agent is running (false after a clean stop).
    pub running: bool,
    /// Unix ms of the last rewrite.
    pub updated_ms: u64,
    /// This node's id.
    pub node_id: String,
    /// One entry per `--peer`.
    pub peers: Vec<PeerStatus>,
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// The peer's node id.
    pub node_id: String,
    /// `direct`, `turn`, `quic`, `ws` or `none`.
    pub route: String,
    /// `up`, `trying` or `down`.
    pub state: String,
    /// The local UDP port that is this peer's WireGuard endpoint (127.0.0.1).
    pub local_port: u16,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
}

impl StatusFile {
    /// Whether the file describes an agent running at `now_ms` whose process exists.
    pub const fn is_live(&self, now_ms: u64, process_exists: bool) -> bool {
        self.running && process_exists && now_ms.saturating_sub(self.updated_ms) <= FRESH_MS
    }

    /// `NODE_ID ROUTE STATE LOCAL_PORT TX_BYTES RX_BYTES`, one line per peer.
    pub fn lines(&self) -> String {
        let mut out = String::new();
        for peer in &self.peers {
            out.push_str(&format!(
                "{} {} {} {} {} {}\n",
                peer.node_id, peer.route, peer.state, peer.local_port, peer.tx_bytes, peer.rx_bytes
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_liveness() {
        let file = StatusFile {
            pid: 1,
            running: true,
            updated_ms: 10_000,
            node_id: "n".to_owned(),
            peers: vec![PeerStatus {
                node_id: "6f1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a02".to_owned(),
                route: "ws".to_owned(),
                state: "up".to_owned(),
                local_port: 40000,
                tx_bytes: 5,
                rx_bytes: 7,
            }],
        };
        assert_eq!(
            file.lines(),
            "6f1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a02 ws up 40000 5 7\n"
        );
        assert!(file.is_live(12_000, true));
        assert!(!file.is_live(12_000, false));
        assert!(!file.is_live(10_000 + FRESH_MS + 1, true));
        let stopped = StatusFile {
            running: false,
            ..file
        };
        assert!(!stopped.is_live(10_000, true));
    }
}
