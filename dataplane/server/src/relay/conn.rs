//! One relay connection's socket side: non-blocking reads into an input buffer the hub parses
//! in place, batched writes of what the hub queued, and TLS (rustls) when configured.
//!
//! The input buffer starts small (a handshake fits in [`INITIAL_INPUT`]) and grows, once, to
//! the hub's whole-frame size only when a frame needs it, so an idle or unauthenticated
//! connection costs a few KiB, not 64.

use boson_dataplane_proto::ws::{ConnId, Hub, MeshClient, MeshInput, Presence};
use boson_shared::NodeId;
use boson_shared::mesh::{BINDING_LEN, ChannelBinding, EXPORTER_LABEL};
use boson_shared::plane::HostId;
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

/// Masking keys of the mesh client's frames (RFC 6455 wants them unpredictable).
pub(super) type MeshRng = rand::rngs::StdRng;

/// What drives a connection.
pub(super) enum ConnKind {
    /// A client (node or mesh peer) of this host's hub, as the hub knows it.
    Hub(ConnId),
    /// The receiving end of a mesh link this host opened to another host.
    Mesh {
        host: HostId,
        client: Box<MeshClient<MeshRng>>,
    },
}

/// Input bytes allocated at accept.
const INITIAL_INPUT: usize = 8 * 1024;

/// Plaintext rustls may buffer for sending: a scratch buffer's worth plus records overhead.
const TLS_SEND_LIMIT: usize = 512 * 1024;

pub(super) enum ReadOutcome {
    /// This many bytes were added to the input.
    Data(usize),
    /// Nothing to read now.
    Nothing,
    /// The peer closed.
    Closed,
    /// A socket error.
    Failed,
    /// TLS failed (bad record, handshake failure).
    TlsFailed,
}

pub(super) enum Flush {
    /// Everything the hub had is written; this many plaintext bytes.
    Done(usize),
    /// The socket is full; the rest waits for writability.
    Blocked(usize),
    /// A socket or TLS error.
    Failed,
}

/// Why a connection has no mesh channel binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum BindingError {
    /// Plain TCP: mesh links need TLS (or `--danger-plain-mesh`).
    #[error("mesh links need TLS")]
    Plain,
    /// TLS, but not a finished TLS 1.3 handshake.
    #[error("mesh links need TLS 1.3")]
    NotTls13,
}

/// The mesh channel binding of a connection over `tls`: 32 bytes of its TLS exporter keying
/// material. Only finished TLS 1.3 connections have one (TLS 1.2's exporter is not bound to
/// the connection without the extended master secret, RFC 7627); a plain connection has
/// [`ChannelBinding::PLAIN`] when `allow_plain` (`--danger-plain-mesh`), none otherwise. One
/// rule for both ends of a mesh link: the host that opens it and the host that accepts it.
pub(super) fn channel_binding(
    tls: Option<&rustls::Connection>,
    allow_plain: bool,
) -> Result<ChannelBinding, BindingError> {
    let Some(tls) = tls else {
        return if allow_plain {
            Ok(ChannelBinding::PLAIN)
        } else {
            Err(BindingError::Plain)
        };
    };
    if tls.is_handshaking() || tls.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Err(BindingError::NotTls13);
    }
    let material = tls
        .export_keying_material([0u8; BINDING_LEN], EXPORTER_LABEL, None)
        .map_err(|_| BindingError::NotTls13)?;
    Ok(ChannelBinding::from_exporter(material))
}

pub(super) struct Conn {
    stream: TcpStream,
    tls: Option<Box<rustls::Connection>>,
    input: Vec<u8>,
    max_input: usize,
    start: usize,
    end: usize,
    /// Plaintext (plain TCP only) the socket did not take yet.
    pending: Vec<u8>,
    pending_pos: usize,
    pub(super) kind: ConnKind,
    /// The host this connection is a mesh session of, once accepted as one.
    pub(super) mesh_host: Option<HostId>,
    pub(super) token: u64,
    pub(super) node: Option<NodeId>,
    pub(super) epoch: u64,
    /// The session is closed: close the socket once flushed.
    pub(super) closing: bool,
    /// EPOLLOUT is armed.
    pub(super) want_write: bool,
}

impl Conn {
    pub(super) fn new(
        stream: TcpStream,
        tls: Option<rustls::Connection>,
        max_input: usize,
        kind: ConnKind,
        token: u64,
    ) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let tls = tls.map(|mut tls| {
            tls.set_buffer_limit(Some(TLS_SEND_LIMIT));
            Box::new(tls)
        });
        Ok(Self {
            stream,
            tls,
            input: vec![0; INITIAL_INPUT.min(max_input)],
            max_input,
            start: 0,
            end: 0,
            pending: Vec::new(),
            pending_pos: 0,
            kind,
            mesh_host: None,
            token,
            node: None,
            epoch: 0,
            closing: false,
            want_write: false,
        })
    }

    /// The mesh channel binding of this connection: see [`channel_binding`].
    pub(super) fn channel_binding(
        &self,
        allow_plain: bool,
    ) -> Result<ChannelBinding, BindingError> {
        channel_binding(self.tls.as_deref(), allow_plain)
    }

    /// The hub's handle, for hub clients.
    pub(super) const fn hub_conn(&self) -> Option<ConnId> {
        match self.kind {
            ConnKind::Hub(conn) => Some(conn),
            ConnKind::Mesh { .. } => None,
        }
    }

    pub(super) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Unparsed input, from a frame boundary.
    pub(super) fn pending_input(&mut self) -> &mut [u8] {
        &mut self.input[self.start..self.end]
    }

    /// Hands the unparsed input to the mesh client; `None` for hub clients.
    pub(super) fn mesh_input(&mut self, now: std::time::Instant) -> Option<MeshInput> {
        let ConnKind::Mesh { client, .. } = &mut self.kind else {
            return None;
        };
        let input = &mut self.input[self.start..self.end];
        if input.is_empty() {
            return Some(MeshInput::NeedMore);
        }
        Some(client.handle_input(now, input))
    }

    /// The input buffer, lent out (`restore_input` gives it back), with the offset of the
    /// unparsed input in it (ranges the hub returns are relative to that offset).
    pub(super) fn take_input(&mut self) -> (Vec<u8>, usize) {
        (std::mem::take(&mut self.input), self.start)
    }

    pub(super) fn restore_input(&mut self, input: Vec<u8>) {
        self.input = input;
    }

    /// The hub consumed `n` bytes.
    pub(super) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Moves a partial frame to the front; grows the buffer (once) when a frame needs more room
    /// than it has.
    pub(super) fn compact(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            return;
        }
        if self.end < self.input.len() {
            return;
        }
        if self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        } else if self.input.len() < self.max_input {
            self.input.resize(self.max_input, 0);
        }
    }

    /// Whether TLS has records to send (handshake, alerts).
    pub(super) fn tls_wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// One read from the socket (through TLS if any) into the input buffer.
    pub(super) fn read(&mut self) -> ReadOutcome {
        self.compact();
        if self.end == self.input.len() {
            // A whole frame is buffered and the hub did not take it: nothing to read into.
            return ReadOutcome::Nothing;
        }
        let Some(tls) = self.tls.as_mut() else {
            let free = self.input.len() - self.end;
            return match self.stream.read(&mut self.input[self.end..]) {
                Ok(0) => ReadOutcome::Closed,
                Ok(n) => {
                    self.end += n;
                    // A read that filled the buffer means a busy client: read in whole-frame
                    // sized chunks from now on (one allocation, once) to batch syscalls.
                    if n == free && self.input.len() < self.max_input {
                        self.input.resize(self.max_input, 0);
                    }
                    ReadOutcome::Data(n)
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => ReadOutcome::Nothing,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => ReadOutcome::Nothing,
                Err(_) => ReadOutcome::Failed,
            };
        };
        let mut eof = false;
        match tls.read_tls(&mut self.stream) {
            Ok(0) => eof = true,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return ReadOutcome::Failed,
        }
        if tls.process_new_packets().is_err() {
            // Best effort: send the alert rustls queued.
            let _ = tls.write_tls(&mut self.stream);
            return ReadOutcome::TlsFailed;
        }
        let mut added = 0;
        while self.end < self.input.len() {
            match tls.reader().read(&mut self.input[self.end..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    self.end += n;
                    added += n;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        match (added, eof) {
            (0, true) => ReadOutcome::Closed,
            (0, false) => ReadOutcome::Nothing,
            (n, _) => ReadOutcome::Data(n),
        }
    }

    /// Whether decrypted input is still buffered inside rustls (the socket will not report it).
    pub(super) fn has_buffered_plaintext(&mut self) -> bool {
        self.tls.as_mut().is_some_and(|tls| {
            tls.process_new_packets()
                .is_ok_and(|state| state.plaintext_bytes_to_read() > 0)
        })
    }

    /// Writes what is pending, then what the hub has for this connection, in batches of
    /// `scratch`'s size.
    pub(super) fn flush<P: Presence>(&mut self, hub: &mut Hub<P>, scratch: &mut [u8]) -> Flush {
        match self.tls.as_mut() {
            None => self.flush_plain(hub, scratch),
            Some(_) => self.flush_tls(hub, scratch),
        }
    }

    /// The next output bytes: from the hub for its clients, from the mesh client otherwise.
    fn next_output<P: Presence>(&mut self, hub: &mut Hub<P>, scratch: &mut [u8]) -> Option<usize> {
        match &mut self.kind {
            ConnKind::Hub(conn) => hub.poll_transmit(*conn, scratch),
            ConnKind::Mesh { client, .. } => client.poll_transmit(scratch),
        }
    }

    fn flush_plain<P: Presence>(&mut self, hub: &mut Hub<P>, scratch: &mut [u8]) -> Flush {
        let mut written = 0;
        while self.pending_pos < self.pending.len() {
            match self.stream.write(&self.pending[self.pending_pos..]) {
                Ok(0) => return Flush::Failed,
                Ok(n) => self.pending_pos += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return Flush::Blocked(written);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Flush::Failed,
            }
        }
        self.pending.clear();
        self.pending_pos = 0;
        loop {
            let Some(n) = self.next_output(hub, scratch) else {
                return Flush::Done(written);
            };
            written += n;
            let mut off = 0;
            while off < n {
                match self.stream.write(&scratch[off..n]) {
                    Ok(0) => return Flush::Failed,
                    Ok(k) => off += k,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        self.pending.extend_from_slice(&scratch[off..n]);
                        return Flush::Blocked(written);
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Flush::Failed,
                }
            }
        }
    }

    fn flush_tls<P: Presence>(&mut self, hub: &mut Hub<P>, scratch: &mut [u8]) -> Flush {
        let mut written = 0;
        loop {
            let Some(tls) = self.tls.as_mut() else {
                return Flush::Failed;
            };
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(0) => return Flush::Failed,
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        return Flush::Blocked(written);
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Flush::Failed,
                }
            }
            if tls.is_handshaking() {
                // Application data waits for the handshake; rustls would buffer it anyway.
                return Flush::Done(written);
            }
            let Some(n) = self.next_output(hub, scratch) else {
                return Flush::Done(written);
            };
            let Some(tls) = self.tls.as_mut() else {
                return Flush::Failed;
            };
            if tls.writer().write_all(&scratch[..n]).is_err() {
                return Flush::Failed;
            }
            written += n;
        }
    }

    /// Closes the connection: TLS close_notify (best effort), then FIN.
    pub(super) fn shutdown(mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut self.stream);
        }
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}
