//! `ws-shell`: the WebSocket relay's shell on a worker, in process over loopback TCP.
//!
//! The dataplane is started in this process ([`boson_dataplane::start`], one worker, the
//! epoll backend: valgrind does not run io_uring, and the relay's TCP sockets sit in the
//! shell's own epoll set on both backends, so the shell's path is the same). Two nodes
//! connect, upgrade with a Bearer token and get READY; then node A writes batches of
//! [`BATCH`] SEND frames to node B, one `write` per batch, and B reads every RECV of a batch
//! before A writes the next, so each batch reaches the worker in the same way on every run.
//!
//! `benches/icount.sh` collects only inside `RelayShell::turn` (`--toggle-collect`), which
//! runs on the worker thread: the readiness poll, reading the sender's socket, frame parsing
//! and unmasking, the hub's directory lookup, the RECV built and queued, the destination's
//! queue copied out and written, as the real server does it (the system calls' user-space
//! side included, the kernel's work not). The handshakes are counted too; the script runs
//! two lengths and divides the difference by the difference in frames, so set-up cancels.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use boson_dataplane::relay::{AuthError, RelayConfig};
use boson_dataplane::{DataplaneConfig, IoBackend};
use boson_dataplane_proto::ws::frame::{FrameHeader, OpCode, encode_masked};
use boson_dataplane_proto::ws::relay::{Message, node_bytes, node_id};
use boson_dataplane_proto::{BindingConfig, StunServer};
use boson_shared::NodeId;

/// SEND frames per write.
pub(crate) const BATCH: usize = 32;

/// Batches before the measured ones (counted by callgrind, cancelled by the two-length
/// difference like the handshakes).
const WARM_UP_BATCHES: usize = 8;

/// How long one read may wait: valgrind runs the worker some 50 times slower.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

const NODE_A: [u8; 16] = [0xAA; 16];
const NODE_B: [u8; 16] = [0xBB; 16];

/// Tokens are the node id in hex; anything else is refused.
fn authenticate(token: &[u8]) -> Result<NodeId, AuthError> {
    let invalid = || AuthError::Invalid("not an icount token".into());
    if token.len() != 32 {
        return Err(invalid());
    }
    let mut bytes = [0u8; 16];
    for (byte, pair) in bytes.iter_mut().zip(token.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).map_err(|_| invalid())?;
        *byte = u8::from_str_radix(text, 16).map_err(|_| invalid())?;
    }
    Ok(node_id(bytes))
}

fn token(node: [u8; 16]) -> String {
    node.iter().map(|b| format!("{b:02x}")).collect()
}

/// One node's connection: a blocking socket with a read timeout and what it has read.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[at..]`.
    at: usize,
}

impl Client {
    /// Connected, upgraded with `Authorization: Bearer`, READY for `node` received.
    fn join(relay: SocketAddr, node: [u8; 16]) -> Result<Self, String> {
        let stream = TcpStream::connect(relay).map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut client = Self {
            stream,
            buf: Vec::with_capacity(256 * 1024),
            at: 0,
        };
        let request = format!(
            "GET /relay HTTP/1.1\r\nHost: icount.test\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {}\r\n\r\n",
            token(node)
        );
        client.write(request.as_bytes())?;
        let end = loop {
            if let Some(at) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            client.fill()?;
        };
        if !client.buf.starts_with(b"HTTP/1.1 101") {
            let head = String::from_utf8_lossy(&client.buf[..end]).into_owned();
            return Err(format!("upgrade refused: {head}"));
        }
        client.at = end;
        let ready = client
            .message(|message| Ok(matches!(message, Message::Ready(id) if id == node_id(node))))?;
        if ready {
            Ok(client)
        } else {
            Err("the first message was not READY for this node".into())
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads more bytes (at least one) after what is buffered.
    fn fill(&mut self) -> Result<(), String> {
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + 64 * 1024, 0);
        match self.stream.read(&mut self.buf[len..]) {
            Ok(0) => Err("the relay closed the connection".into()),
            Ok(n) => {
                self.buf.truncate(len + n);
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// The next relay message, handed to `f`; pings are answered and skipped.
    fn message<T>(
        &mut self,
        mut f: impl FnMut(Message<'_>) -> Result<T, String>,
    ) -> Result<T, String> {
        loop {
            let pending = &self.buf[self.at..];
            let header = FrameHeader::parse(pending).map_err(|e| format!("frame: {e}"))?;
            let whole = header.and_then(|h| Some((h, h.frame_len()?)));
            let Some((header, len)) = whole.filter(|&(_, len)| len <= pending.len()) else {
                self.fill()?;
                continue;
            };
            let start = self.at + header.header_len;
            let end = self.at + len;
            self.at = end;
            match header.opcode {
                OpCode::Binary => {
                    let message = Message::parse(&self.buf[start..end])
                        .map_err(|e| format!("relay message: {e}"))?;
                    return f(message);
                }
                OpCode::Ping => {
                    let pong = masked(OpCode::Pong, &self.buf[start..end])?;
                    self.write(&pong)?;
                }
                OpCode::Continuation | OpCode::Text | OpCode::Close | OpCode::Pong => {
                    return Err(format!("unexpected {:?} frame", header.opcode));
                }
            }
        }
    }
}

fn masked(opcode: OpCode, payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; payload.len() + 14];
    let len = encode_masked(true, opcode, [0x12, 0x34, 0x56, 0x78], payload, &mut out)
        .map_err(|e| e.to_string())?;
    out.truncate(len);
    Ok(out)
}

/// Relays `frames` SENDs of `size`-byte packets (rounded up to whole batches) from A to B
/// through the worker's relay after the warm-up; returns the frames relayed after it.
pub(crate) fn ws_shell(size: usize, frames: usize) -> Result<usize, String> {
    let mut relay = RelayConfig::new(Arc::new(authenticate));
    relay.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = DataplaneConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: 1,
        pin: false,
        backend: IoBackend::Epoll,
        relay: Some(relay),
        ..DataplaneConfig::default()
    };
    let dataplane = boson_dataplane::start(config, |_| StunServer::new(BindingConfig::default()))
        .map_err(|e| format!("starting the dataplane: {e:#}"))?;
    let addr = dataplane.relay_addr().ok_or("the relay does not listen")?;
    let result = relay_batches(addr, size, frames.div_ceil(BATCH));
    dataplane
        .shutdown()
        .map_err(|e| format!("stopping the dataplane: {e:#}"))?;
    result
}

fn relay_batches(addr: SocketAddr, size: usize, batches: usize) -> Result<usize, String> {
    let mut a = Client::join(addr, NODE_A)?;
    let mut b = Client::join(addr, NODE_B)?;
    let mut send = vec![0x01];
    send.extend_from_slice(&NODE_B);
    send.resize(1 + 16 + size, 0xA5);
    let frame = masked(OpCode::Binary, &send)?;
    let batch = frame.repeat(BATCH);
    let mut relayed = 0;
    for round in 0..WARM_UP_BATCHES + batches {
        a.write(&batch)?;
        for _ in 0..BATCH {
            let ok = b.message(|message| {
                Ok(matches!(message, Message::Recv { src, packet }
                    if node_bytes(&src) == &NODE_A && packet.len() == size))
            })?;
            if !ok {
                return Err("B got something other than A's packet".into());
            }
            if round >= WARM_UP_BATCHES {
                relayed += 1;
            }
        }
    }
    Ok(relayed)
}
