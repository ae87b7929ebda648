//! Platform I/O behind one small surface, [`Io`], with two backends: [`uring`] (io_uring,
//! preferred) and [`epoll`] (fallback for kernels or sandboxes without io_uring, e.g. Docker's
//! default seccomp profile, which makes `io_uring_setup` fail with `EPERM`).
//!
//! # The surface
//!
//! One [`Io`] value belongs to one worker thread and is driven by its event loop:
//!
//! * [`register`](Io::register) a UDP socket (the listener, or a relay socket) with its
//!   [`SocketRole`]; the backend starts receiving on it at once. [`unregister`](Io::unregister)
//!   stops receiving and closes it.
//! * [`submit_and_wait`](Io::submit_and_wait): once per loop turn, hand queued sends and
//!   re-armed receives to the kernel and wait until something completes or `timeout` (the
//!   core's next timer) passes. This is the loop's only blocking call.
//! * [`reap`](Io::reap): the next received [`Datagram`], or `None` when nothing is left from
//!   this wait. The worker calls it at most its budget times per turn; completions of sends
//!   are processed inside `reap` and `submit_and_wait` and show up only in [`IoCounters`].
//! * [`send`](Io::send) a range of a buffer slot from a registered socket to an address. The
//!   slot is consumed: the backend returns it to the pool once the kernel is done with it.
//!   Sends are batched: io_uring queues one SQE per send and submits them all in the next
//!   `submit_and_wait`; epoll collects them and flushes them with `sendmmsg` at the end of
//!   the turn ([`flush`](Io::flush)).
//! * [`alloc`](Io::alloc) / [`release`](Io::release) buffer slots, and [`bufs`](Io::bufs) to
//!   read and write them (see [`bufs`] for the ownership rules).
//!
//! # Headroom: how the payload lands at [`RX_START`] without a copy
//!
//! The TURN core wraps a peer's payload in place: a 4-byte ChannelData header, or a Data
//! indication (20-byte header + XOR-PEER-ADDRESS + DATA attribute header = up to 48 bytes), in
//! front of it. So every datagram is received at offset [`RX_START`] of its slot:
//! [`HEADROOM`] bytes for the core, behind [`CONTROL_LEN`] bytes of room for the receive's
//! control data. The worker hands the core the slot from `CONTROL_LEN` on, so the core sees
//! its payload at `HEADROOM`.
//!
//! * **epoll**: `recvmmsg` is given an iovec that starts at `slot + RX_START` (and a control
//!   buffer of its own). Trivial.
//! * **io_uring**: with a provided buffer ring the kernel chooses the buffer and writes at its
//!   start, and multishot `RecvMsg` lays the buffer out as `io_uring_recvmsg_out` (16 bytes),
//!   then the source address area (exactly `msg_namelen` bytes, zero-padded), then control
//!   data (exactly `msg_controllen` bytes), then the payload. We set `msg_namelen` to 32,
//!   which is enough for a `sockaddr_in6` (28 bytes), and `msg_controllen` to
//!   [`CONTROL_LEN`], so the payload starts at 16 + 32 + 24 = 72 = [`RX_START`]. The shell
//!   decodes the source address and the control data before handing the slot to the core,
//!   after which they are dead bytes the core may overwrite.
//!
//! # Kernel overflow drops
//!
//! Every registered socket has `SO_RXQ_OVFL` on: the kernel adds to each datagram the number
//! of datagrams it has dropped at that socket so far (a full receive queue). Both backends
//! keep the last total per socket and add what grew to [`IoCounters::rx_overflow`]
//! (`shell_drops_total{reason="rx_overflow"}`), so drops a socket suffered show up with its
//! next datagram. The ring
//!   entries advertise `SLOT_SIZE - TAILROOM` bytes, so the kernel never writes into the
//!   tailroom the core may need for DATA padding.
//!
//! Result: **no payload copy on any path with either backend**. Client → peer (ChannelData or
//! Send indication) sends a sub-range of the received slot from the relay socket; peer →
//! client (ChannelData and Data indication alike) sends the slot after the core wrote the
//! header into the headroom. Only STUN responses are written fresh, into a second slot.
//!
//! # Backend selection
//!
//! [`resolve`] turns the configured [`IoBackend`] into a concrete one once per process, before
//! workers start: `Auto` sets up a small io_uring instance with every feature the worker
//! needs (see [`uring`]) and falls back to epoll with exactly one `warn!` line saying why;
//! `Uring` fails instead.

pub(crate) mod bufs;
pub(crate) mod epoll;
pub(crate) mod socket;
pub(crate) mod uring;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use anyhow::Context as _;

use crate::packet_core::RelayPort;
pub(crate) use bufs::{BufId, BufPool};

/// Bytes reserved in front of every received payload for encapsulation headers, as the TURN
/// core defines them: a Data indication's 20-byte STUN header + XOR-PEER-ADDRESS (4 + 20 for
/// IPv6) + DATA header (4). ChannelData needs only 4 of them.
pub use boson_dataplane_proto::HEADROOM;

/// Which I/O backend the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// io_uring if this kernel and sandbox allow it, else epoll (with one warning).
    #[default]
    Auto,
    /// io_uring; starting fails if it is unavailable.
    Uring,
    /// epoll with `recvmmsg`/`sendmmsg`.
    Epoll,
}

impl IoBackend {
    /// Stable lowercase name, for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Uring => "io_uring",
            Self::Epoll => "epoll",
        }
    }
}

/// Checks whether io_uring can run a worker here, as [`IoBackend::Auto`] does; the error says
/// why not.
pub fn check_uring() -> anyhow::Result<()> {
    uring::probe()
}

/// Picks the concrete backend for `requested`. Called once per process.
pub(crate) fn resolve(requested: IoBackend) -> anyhow::Result<IoBackend> {
    match requested {
        IoBackend::Epoll => Ok(IoBackend::Epoll),
        IoBackend::Uring => {
            uring::probe().context("io_uring backend requested but unavailable")?;
            Ok(IoBackend::Uring)
        }
        IoBackend::Auto => match uring::probe() {
            Ok(()) => Ok(IoBackend::Uring),
            Err(err) => {
                tracing::warn!(
                    "io_uring unavailable, falling back to epoll: {err:#}{}",
                    hint(&err)
                );
                Ok(IoBackend::Epoll)
            }
        },
    }
}

/// A likely cause for a setup error, for the fallback warning.
fn hint(err: &anyhow::Error) -> &'static str {
    let errno = err
        .chain()
        .find_map(|e| e.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error);
    match errno {
        Some(libc::EPERM) => {
            " (blocked by a seccomp profile, e.g. Docker's default, or kernel.io_uring_disabled)"
        }
        Some(libc::ENOSYS) => " (kernel built without io_uring)",
        _ => "",
    }
}

/// What a registered socket is for; reported with every datagram it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketRole {
    /// The worker's SO_REUSEPORT socket on the public port.
    Listener,
    /// The relay socket of one allocation.
    Relay(RelayPort),
    /// The worker's SO_REUSEPORT socket of the QUIC node relay.
    Quic,
    /// The worker's SO_REUSEPORT socket on the host's second STUN address (RFC 5780).
    StunAlternate,
}

/// Handle of a registered socket. The generation makes a handle of a closed socket stale even
/// after its slot is reused, so late completions and queued sends cannot hit the new socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketId {
    index: u32,
    generation: u32,
}

impl SocketId {
    /// Generations wrap at 24 bits so a packed id fits the 56-bit payload of io_uring user
    /// data (see [`uring`]); a stale handle would need 16 million reuses of one slot to alias.
    const GENERATION_MASK: u32 = (1 << 24) - 1;

    /// Packs into 56 bits (epoll data, io_uring user data).
    const fn to_u64(self) -> u64 {
        ((self.generation as u64) << 32) | self.index as u64
    }

    const fn from_u64(raw: u64) -> Self {
        Self {
            index: raw as u32,
            generation: (raw >> 32) as u32,
        }
    }
}

/// Room for the control data of a receive: one `SO_RXQ_OVFL` message and one `UDP_GRO`
/// message, `CMSG_SPACE(4)` each (a 16-byte `cmsghdr` and an `int` padded to 8). See
/// [`parse_control`].
pub(crate) const CONTROL_LEN: usize = 2 * (size_of::<libc::cmsghdr>() + 8);

/// Where a received payload starts in its slot, on both backends: behind the control data,
/// with [`HEADROOM`] free in front of it for the core (see the [module docs](self)).
pub(crate) const RX_START: usize = CONTROL_LEN + HEADROOM;

/// At most this many segments in one GSO send (the kernel's `UDP_MAX_SEGMENTS`).
pub(crate) const GSO_MAX_SEGMENTS: usize = 64;

/// At most this many payload bytes in one GSO send: below what one IPv4 or IPv6 datagram
/// carries (65,507 and 65,527 bytes).
pub(crate) const GSO_MAX_BYTES: usize = 65_000;

/// Only datagrams up to this size are sent as GSO segments: the kernel refuses a segment
/// larger than the path MTU, where a plain send would fragment. 1,452 is what fits a
/// 1500-byte MTU behind IPv6 and UDP headers.
pub(crate) const GSO_MAX_SEGMENT: usize = 1452;

/// Asks the kernel to report, with received datagrams, how many it dropped at this socket
/// (`SO_RXQ_OVFL`: its receive queue was full). Best effort: without it the drops are not
/// counted, which the caller logs.
fn enable_overflow_count(socket: &UdpSocket) -> io::Result<()> {
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)
}

fn set_int_option(socket: &UdpSocket, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: plain setsockopt on a live fd with a c_int option value.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// UDP segmentation offload on one socket: what the kernel agreed to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Offload {
    /// `UDP_GRO` is on: a receive may hand over several datagrams of one sender coalesced,
    /// with their segment size in the control data.
    pub(crate) gro: bool,
    /// The kernel knows `UDP_SEGMENT`: a send may carry several datagrams to one address.
    pub(crate) gso: bool,
}

/// Logged once per process: a kernel that refuses UDP offload refuses it on every socket.
static OFFLOAD_REFUSED_LOGGED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Turns on GRO and checks for GSO on `socket` (Linux 5.0 and 4.18). What the kernel
/// refuses stays off; the second return value says whether it refused anything (the caller
/// counts it), and the first refusal in the process is logged.
fn enable_offload(socket: &UdpSocket) -> (Offload, bool) {
    let gro = set_int_option(socket, libc::SOL_UDP, libc::UDP_GRO, 1);
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: plain getsockopt on a live fd into a c_int with its length.
    let gso = if unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&raw mut value).cast(),
            &raw mut len,
        )
    } == 0
    {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    let offload = Offload {
        gro: gro.is_ok(),
        gso: gso.is_ok(),
    };
    let refused = gro.as_ref().err().or(gso.as_ref().err());
    if let Some(err) = refused
        && !OFFLOAD_REFUSED_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!(
            %err,
            gro = offload.gro,
            gso = offload.gso,
            "the kernel refuses UDP GRO or GSO; datagrams go one per system call \
             (counted as udp_offload_refused)"
        );
    }
    (offload, refused.is_some())
}

/// A send queued for the next flush.
struct PendingSend {
    socket: SocketId,
    dst: SocketAddr,
    buf: BufId,
    range: Range<usize>,
}

/// How many of `sends` (all from one socket that may use GSO) leave as one GSO message: the
/// first and those behind it to the same address with its size, ended early by a shorter
/// one, within the kernel's limits.
fn gso_group(sends: &[PendingSend]) -> usize {
    let Some(first) = sends.first() else {
        return 0;
    };
    let size = first.range.len();
    if size == 0 || size > GSO_MAX_SEGMENT {
        return 1;
    }
    let mut bytes = size;
    let mut end = 1;
    while end < sends.len() && end < GSO_MAX_SEGMENTS && bytes + size <= GSO_MAX_BYTES {
        let send = &sends[end];
        let len = send.range.len();
        if send.dst != first.dst || len > size || len == 0 {
            break;
        }
        bytes += len;
        end += 1;
        if len < size {
            break;
        }
    }
    end
}

/// Control data of a GSO send: `CMSG_SPACE(2)` for the `u16` segment size.
const SEGMENT_CONTROL_LEN: usize = size_of::<libc::cmsghdr>() + 8;

/// Writes a `UDP_SEGMENT` control message with segment size `size` into `control`.
fn write_segment_cmsg(control: &mut [u64; SEGMENT_CONTROL_LEN / 8], size: usize) {
    // SAFETY: all-zero is a valid cmsghdr.
    let mut hdr: libc::cmsghdr = unsafe { std::mem::zeroed() };
    hdr.cmsg_level = libc::SOL_UDP;
    hdr.cmsg_type = libc::UDP_SEGMENT;
    hdr.cmsg_len = size_of::<libc::cmsghdr>() + size_of::<u16>();
    let size = u16::try_from(size).unwrap_or_else(|_| unreachable!("at most GSO_MAX_SEGMENT"));
    let base = control.as_mut_ptr().cast::<u8>();
    // SAFETY: the area holds a cmsghdr and a u16 behind it; unaligned writes need no
    // alignment.
    unsafe {
        base.cast::<libc::cmsghdr>().write_unaligned(hdr);
        base.add(size_of::<libc::cmsghdr>())
            .cast::<u16>()
            .write_unaligned(size);
    }
}

/// Logs, once per process, that a GSO send failed and GSO is off for that socket.
fn log_gso_failed(err: &io::Error) {
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            %err,
            "a GSO send failed (the route's device may lack checksum offload); GSO is off \
             for that socket from now on (counted as udp_offload_refused)"
        );
    }
}

/// What the control data of one receive says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ControlData {
    /// The `SO_RXQ_OVFL` value: how many datagrams the kernel had dropped at the socket, in
    /// all, when this one was queued. `None` when the control data holds none (the kernel
    /// sends it only once the socket has dropped something).
    overflow: Option<u32>,
    /// The `UDP_GRO` segment size: the receive holds datagrams of this size back to back
    /// (the last may be shorter). `None` for a single datagram.
    segment: Option<usize>,
}

/// Reads the control data of a receive.
fn parse_control(control: &[u8]) -> ControlData {
    const HDR: usize = size_of::<libc::cmsghdr>();
    let mut out = ControlData::default();
    let mut rest = control;
    while rest.len() >= HDR {
        // SAFETY: `rest` holds at least a cmsghdr; read_unaligned copes with any alignment.
        let hdr = unsafe { rest.as_ptr().cast::<libc::cmsghdr>().read_unaligned() };
        let len = hdr.cmsg_len;
        if len < HDR || len > rest.len() {
            break;
        }
        let value = rest
            .get(HDR..HDR + 4)
            .and_then(|v| v.try_into().ok())
            .map(u32::from_ne_bytes);
        match (hdr.cmsg_level, hdr.cmsg_type) {
            (libc::SOL_SOCKET, libc::SO_RXQ_OVFL) => out.overflow = value.or(out.overflow),
            (libc::SOL_UDP, libc::UDP_GRO) => {
                out.segment = value
                    .and_then(|v| usize::try_from(v).ok())
                    .filter(|&v| v > 0);
            }
            _ => {}
        }
        let Some(next) = rest.get(len.next_multiple_of(size_of::<usize>())..) else {
            break;
        };
        rest = next;
    }
    out
}

/// The `SO_RXQ_OVFL` value in the control data of a receive (see [`ControlData`]).
#[cfg(test)]
fn overflow_total(control: &[u8]) -> Option<u32> {
    parse_control(control).overflow
}

/// The kernel's drop total of one socket, as last seen in its datagrams' control data.
#[derive(Debug, Default, Clone, Copy)]
struct OverflowSeen(u32);

impl OverflowSeen {
    /// Datagrams dropped since the last report, given the `total` a new datagram carries.
    /// The kernel's counter is 32-bit and wraps.
    const fn update(&mut self, total: u32) -> u64 {
        let new = total.wrapping_sub(self.0);
        self.0 = total;
        new as u64
    }
}

/// One received datagram: the payload is `slot[RX_START..RX_START + len]` of `buf`.
#[derive(Debug)]
pub(crate) struct Datagram {
    pub(crate) role: SocketRole,
    pub(crate) from: SocketAddr,
    pub(crate) buf: BufId,
    pub(crate) len: usize,
}

/// Counters kept by a backend, monotonically increasing.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IoCounters {
    /// Datagrams handed to the worker.
    pub(crate) rx_packets: u64,
    /// Payload bytes handed to the worker.
    pub(crate) rx_bytes: u64,
    /// Datagrams larger than a slot's payload area, dropped.
    pub(crate) rx_truncated: u64,
    /// Datagrams the kernel dropped because a registered socket's receive queue was full
    /// (`SO_RXQ_OVFL`), counted when the socket's next datagram arrives.
    pub(crate) rx_overflow: u64,
    /// Receives re-armed because a multishot receive ended (io_uring only), mostly because
    /// the buffer ring ran dry.
    pub(crate) rx_rearms: u64,
    /// Datagrams the kernel accepted for sending.
    pub(crate) tx_packets: u64,
    /// Bytes the kernel accepted for sending.
    pub(crate) tx_bytes: u64,
    /// Sends that failed (socket buffer full, unreachable, socket gone, …), in datagrams.
    pub(crate) tx_failed: u64,
    /// Receives that held several datagrams coalesced by GRO, split into their segments.
    pub(crate) rx_gro_batches: u64,
    /// Received datagrams (GRO segments) dropped because no buffer slot was free.
    pub(crate) rx_no_buffer: u64,
    /// Sends that carried several datagrams as GSO segments.
    pub(crate) tx_gso_sends: u64,
    /// Sockets on which the kernel refused UDP GRO or GSO, and GSO sends it refused (GSO is
    /// then off for that socket).
    pub(crate) udp_offload_refused: u64,
}

/// The I/O surface both backends implement; see the [module docs](self).
pub(crate) trait Io {
    /// Starts receiving on `socket`.
    fn register(&mut self, socket: UdpSocket, role: SocketRole) -> io::Result<SocketId>;
    /// Stops receiving on the socket and closes it (once the kernel has let go of it). A
    /// stale id is ignored.
    fn unregister(&mut self, id: SocketId);
    /// Submits queued work and waits for completions, at most `timeout` (`None`: until
    /// something happens, including a [`Waker::wake`]).
    fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// The next received datagram, if any is ready.
    fn reap(&mut self) -> Option<Datagram>;
    /// A free slot for an output buffer.
    fn alloc(&mut self) -> Option<BufId>;
    /// Hands a slot back without sending it.
    fn release(&mut self, buf: BufId);
    /// Access to slot contents.
    fn bufs(&mut self) -> &mut BufPool;
    /// Queues `slot[range]` of `buf` for sending from `socket` to `dst`; consumes `buf`.
    /// `range` must lie within the slot.
    fn send(&mut self, socket: SocketId, dst: SocketAddr, buf: BufId, range: Range<usize>);
    /// Hands sends queued so far to the kernel if the backend does that synchronously
    /// (epoll), so the counters are current when the worker publishes them before it sleeps.
    /// A no-op for io_uring, whose sends go with the next submit and complete as CQEs.
    fn flush(&mut self);
    /// Also wakes the wait when `fd` becomes readable (level-triggered): the relay's own
    /// epoll set of TCP sockets is watched this way, so one wait covers UDP and TCP. At most
    /// one aux fd; it must stay open until [`close`](Io::close).
    fn watch_aux(&mut self, fd: RawFd) -> io::Result<()>;
    /// Whether the aux fd reported readiness since the last call.
    fn take_aux_ready(&mut self) -> bool;
    /// The counters so far.
    fn counters(&self) -> IoCounters;
    /// Unregisters every socket and waits (bounded) for the kernel to let go of every buffer.
    fn close(&mut self);
}

/// Slab of registered sockets, shared by both backends.
#[derive(Debug)]
struct Sockets<E> {
    slots: Vec<SocketSlot<E>>,
    free: Vec<u32>,
}

#[derive(Debug)]
struct SocketSlot<E> {
    generation: u32,
    entry: Option<E>,
}

impl<E> Sockets<E> {
    const fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn insert(&mut self, entry: E) -> SocketId {
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.generation = (slot.generation + 1) & SocketId::GENERATION_MASK;
            slot.entry = Some(entry);
            return SocketId {
                index,
                generation: slot.generation,
            };
        }
        let index = u32::try_from(self.slots.len()).unwrap_or_else(|_| unreachable!());
        self.slots.push(SocketSlot {
            generation: 0,
            entry: Some(entry),
        });
        SocketId {
            index,
            generation: 0,
        }
    }

    fn get(&self, id: SocketId) -> Option<&E> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.entry.as_ref()
    }

    fn get_mut(&mut self, id: SocketId) -> Option<&mut E> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.entry.as_mut()
    }

    fn remove(&mut self, id: SocketId) -> Option<E> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let entry = slot.entry.take()?;
        self.free.push(id.index);
        Some(entry)
    }

    /// Ids of every live socket (for teardown), in slot order.
    fn ids(&self) -> impl Iterator<Item = SocketId> + '_ {
        self.slots.iter().zip(0u32..).filter_map(|(slot, index)| {
            slot.entry.as_ref().map(|_| SocketId {
                index,
                generation: slot.generation,
            })
        })
    }
}

/// A `sockaddr_in` or `sockaddr_in6`, as the kernel reads and writes them.
#[derive(Clone, Copy)]
#[repr(C)]
union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    /// Size of the name area we give the kernel: the larger of the two.
    const LEN: usize = size_of::<Self>();

    const fn zeroed() -> Self {
        // SAFETY: all-zero is a valid value of both plain C structs.
        unsafe { std::mem::zeroed() }
    }

    /// Encodes `addr`; returns the value and the length to pass as `msg_namelen`.
    fn encode(addr: SocketAddr) -> (Self, libc::socklen_t) {
        let mut raw = Self::zeroed();
        let len = match addr {
            SocketAddr::V4(a) => {
                raw.v4 = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                raw.v6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                size_of::<libc::sockaddr_in6>()
            }
        };
        (raw, len as libc::socklen_t)
    }
}

/// Decodes the source address the kernel wrote (`bytes` is the filled part of the name area).
fn decode_addr(bytes: &[u8]) -> Option<SocketAddr> {
    let family = libc::sa_family_t::from_ne_bytes(
        bytes
            .get(..size_of::<libc::sa_family_t>())?
            .try_into()
            .ok()?,
    );
    match i32::from(family) {
        libc::AF_INET if bytes.len() >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: long enough; read_unaligned copes with any alignment.
            let a = unsafe { bytes.as_ptr().cast::<libc::sockaddr_in>().read_unaligned() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if bytes.len() >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above.
            let a = unsafe { bytes.as_ptr().cast::<libc::sockaddr_in6>().read_unaligned() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Wakes one worker's blocking wait from another thread: an eventfd that both backends watch.
/// Used for shutdown now, and for cross-core mailboxes later.
#[derive(Debug)]
pub(crate) struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Makes the worker's current or next wait return.
    pub(crate) fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer. A full counter (EAGAIN) is still a
        // pending wake-up, so the result needs no handling.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Clears pending wake-ups (the fd is non-blocking).
    fn drain(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer. EAGAIN means nothing was pending.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn raw_addresses_round_trip() {
        for addr in [
            "192.0.2.1:3478",
            "[2001:db8::1]:49152",
            "[::ffff:192.0.2.9]:1",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (raw, len) = RawAddr::encode(addr);
            // SAFETY: reading the bytes of a plain C union.
            let bytes: [u8; RawAddr::LEN] = unsafe { std::mem::transmute(raw) };
            assert_eq!(decode_addr(&bytes[..len as usize]), Some(addr));
        }
        assert_eq!(decode_addr(&[]), None);
        assert_eq!(decode_addr(&[0; 32]), None);
        const { assert!(RawAddr::LEN <= uring::NAME_LEN) };
    }

    /// Receive at RX_START, write a header in place, send the slot back: the surface works the
    /// same on both backends.
    fn round_trip<I: Io>(mut io: I) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let role = SocketRole::Relay(RelayPort::new(addr.port()));
        let id = io.register(socket, role).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        peer.send_to(b"ping", addr).unwrap();

        let datagram = (0..100)
            .find_map(|_| {
                io.submit_and_wait(Some(Duration::from_millis(20))).unwrap();
                io.reap()
            })
            .expect("a datagram");
        assert_eq!(datagram.role, role);
        assert_eq!(datagram.from, peer.local_addr().unwrap());
        assert_eq!(datagram.len, 4);
        let slot = io.bufs().slot_mut(&datagram.buf);
        assert_eq!(&slot[RX_START..RX_START + 4], b"ping");
        slot[RX_START - 4..RX_START].copy_from_slice(b"pong");
        io.send(id, datagram.from, datagram.buf, RX_START - 4..RX_START + 4);
        io.flush();
        for _ in 0..100 {
            if io.counters().tx_packets == 1 {
                break;
            }
            io.submit_and_wait(Some(Duration::from_millis(20))).unwrap();
            while let Some(d) = io.reap() {
                io.release(d.buf);
            }
        }
        let mut buf = [0u8; 64];
        let (len, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"pongping");
        assert_eq!(from, addr);
        let counters = io.counters();
        assert_eq!((counters.rx_packets, counters.rx_bytes), (1, 4));
        assert_eq!((counters.tx_packets, counters.tx_bytes), (1, 8));

        io.unregister(id);
        io.unregister(id); // stale: ignored
        io.close();
    }

    /// A relay socket with the smallest receive buffer, flooded before the worker reads it:
    /// every datagram the kernel dropped is counted as `rx_overflow`, exactly (on loopback a
    /// datagram that was sent and not received was dropped at the receiving socket).
    fn overflow_counted<I: Io>(mut io: I) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&socket)
            .set_recv_buffer_size(0)
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let id = io
            .register(socket, SocketRole::Relay(RelayPort::new(addr.port())))
            .unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        const FLOOD: u64 = 200;
        for _ in 0..FLOOD {
            peer.send_to(&[0xA5; 1000], addr).unwrap();
        }
        let mut received = 0;
        let mut marker = false;
        let mut sent_marker = false;
        for _ in 0..200 {
            io.submit_and_wait(Some(Duration::from_millis(20))).unwrap();
            let mut reaped = 0;
            while let Some(datagram) = io.reap() {
                reaped += 1;
                marker |= datagram.len == 6;
                io.release(datagram.buf);
            }
            received += reaped;
            if marker {
                break;
            }
            // The drops are reported with the socket's next datagram: once what fitted was
            // read, a marker.
            if reaped == 0 && received > 0 && !sent_marker {
                peer.send_to(b"marker", addr).unwrap();
                sent_marker = true;
            }
        }
        assert!(marker, "the marker arrives");
        let counters = io.counters();
        assert_eq!(counters.rx_packets, received);
        assert!(
            received < FLOOD,
            "the flood overflowed the socket ({received} received)"
        );
        assert_eq!(counters.rx_overflow, FLOOD + 1 - received);
        io.unregister(id);
        io.close();
    }

    #[test]
    fn epoll_counts_kernel_overflow_drops() {
        let waker = Arc::new(Waker::new().unwrap());
        overflow_counted(epoll::Epoll::new(64, waker, true).unwrap());
    }

    #[test]
    fn uring_counts_kernel_overflow_drops() {
        if let Err(err) = check_uring() {
            assert!(
                std::env::var_os("CI").is_none(),
                "io_uring unavailable in CI: {err:#}"
            );
            eprintln!("skipped: io_uring unavailable: {err:#}");
            return;
        }
        let waker = Arc::new(Waker::new().unwrap());
        overflow_counted(uring::Uring::new(64, waker, true).unwrap());
    }

    #[test]
    fn overflow_totals_are_read_from_control_data() {
        const HDR: usize = size_of::<libc::cmsghdr>();
        let cmsg = |level: i32, kind: i32, value: u32| {
            // SAFETY: all-zero is a valid cmsghdr.
            let mut hdr: libc::cmsghdr = unsafe { std::mem::zeroed() };
            hdr.cmsg_len = HDR + 4;
            hdr.cmsg_level = level;
            hdr.cmsg_type = kind;
            // SAFETY: reading the bytes of a plain C struct.
            let mut bytes: Vec<u8> =
                unsafe { std::slice::from_raw_parts((&raw const hdr).cast::<u8>(), HDR) }.to_vec();
            bytes.extend_from_slice(&value.to_ne_bytes());
            bytes.resize(HDR + 8, 0);
            bytes
        };
        let ovfl = cmsg(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 7);
        assert_eq!(2 * ovfl.len(), CONTROL_LEN);
        assert_eq!(overflow_total(&ovfl), Some(7));
        assert_eq!(overflow_total(&[]), None);
        assert_eq!(overflow_total(&ovfl[..HDR + 2]), None, "cut short");
        // Another message first, then ours.
        let mut two = cmsg(libc::SOL_IP, libc::IP_TOS, 1);
        two.extend_from_slice(&cmsg(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 9));
        assert_eq!(overflow_total(&two), Some(9));
        assert_eq!(overflow_total(&cmsg(libc::SOL_IP, libc::IP_TOS, 1)), None);

        let mut seen = OverflowSeen::default();
        assert_eq!(seen.update(3), 3);
        assert_eq!(seen.update(3), 0);
        assert_eq!(seen.update(10), 7);
        let mut seen = OverflowSeen(u32::MAX - 1);
        assert_eq!(seen.update(2), 4, "the kernel's counter wraps");
    }

    /// Datagram `i` of a test batch: its index in every byte, `len` bytes.
    fn segment_bytes(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 7 + j) as u8).collect()
    }

    /// Polls until `count` datagrams were reaped (or two seconds passed).
    fn reap_n<I: Io>(io: &mut I, count: usize) -> Vec<Datagram> {
        let mut got = Vec::new();
        for _ in 0..100 {
            while let Some(datagram) = io.reap() {
                got.push(datagram);
            }
            if got.len() >= count {
                break;
            }
            io.submit_and_wait(Some(Duration::from_millis(20))).unwrap();
        }
        got
    }

    /// A GSO sender's batch of `full` 1204-byte datagrams and a 500-byte last one arrives as
    /// one datagram each, in order, with its bytes; sent on, to two destinations
    /// interleaved in runs, each arrives once, in order. With `offload` the receive was one
    /// GRO batch and the sends GSO messages (one per run of a destination); without, neither.
    fn gro_gso_relay<I: Io>(mut io: I, offload: bool) {
        const SEGMENT: usize = 1204;
        let full = 20;
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let id = io
            .register(socket, SocketRole::Relay(RelayPort::new(addr.port())))
            .unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sizes: Vec<usize> = (0..full).map(|_| SEGMENT).chain([500]).collect();
        let batch: Vec<u8> = sizes
            .iter()
            .enumerate()
            .flat_map(|(i, &len)| segment_bytes(i, len))
            .collect();
        // Registered sockets start receiving at the next submit; GRO is on already.
        io.submit_and_wait(Some(Duration::ZERO)).unwrap();
        boson_testsupport::udp::send_gso(&sender, addr, &batch, SEGMENT as u16);

        let got = reap_n(&mut io, sizes.len());
        assert_eq!(got.len(), sizes.len(), "one datagram per segment");
        for (i, datagram) in got.iter().enumerate() {
            assert_eq!(datagram.from, sender.local_addr().unwrap());
            assert_eq!(datagram.len, sizes[i], "segment {i}");
            let slot = io.bufs().slot_mut(&datagram.buf);
            assert_eq!(
                slot[RX_START..RX_START + datagram.len],
                segment_bytes(i, sizes[i]),
                "segment {i}"
            );
        }
        let counters = io.counters();
        assert_eq!(counters.rx_packets, sizes.len() as u64);
        assert_eq!(counters.rx_gro_batches, u64::from(offload));

        // Runs: 8 to A, 6 to B, the rest (7, the short one last) to A.
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let dst = |i: usize| if (8..14).contains(&i) { &b } else { &a };
        for (i, datagram) in got.into_iter().enumerate() {
            let len = datagram.len;
            let to = dst(i).local_addr().unwrap();
            io.send(id, to, datagram.buf, RX_START..RX_START + len);
        }
        io.flush();
        for _ in 0..100 {
            if io.counters().tx_packets == sizes.len() as u64 {
                break;
            }
            io.submit_and_wait(Some(Duration::from_millis(20))).unwrap();
            // io_uring counts sends as their completions are reaped.
            while let Some(d) = io.reap() {
                io.release(d.buf);
            }
        }
        let counters = io.counters();
        assert_eq!(counters.tx_packets, sizes.len() as u64);
        assert_eq!(counters.tx_gso_sends, if offload { 3 } else { 0 });
        assert_eq!(counters.tx_failed, 0);
        let mut buf = vec![0u8; 65536];
        for (name, s) in [("A", &a), ("B", &b)] {
            let expect: Vec<usize> = (0..sizes.len())
                .filter(|&i| std::ptr::eq(dst(i), s))
                .collect();
            for i in expect {
                let (len, from) = s.recv_from(&mut buf).unwrap();
                assert_eq!(from, addr);
                assert_eq!(
                    buf[..len],
                    segment_bytes(i, sizes[i]),
                    "{name}: datagram {i}"
                );
            }
        }
        io.unregister(id);
        io.close();
    }

    #[test]
    fn epoll_splits_gro_batches_and_sends_gso() {
        let waker = Arc::new(Waker::new().unwrap());
        gro_gso_relay(epoll::Epoll::new(64, waker, true).unwrap(), true);
    }

    #[test]
    fn uring_splits_gro_batches_and_sends_gso() {
        if let Err(err) = check_uring() {
            assert!(
                std::env::var_os("CI").is_none(),
                "io_uring unavailable in CI: {err:#}"
            );
            eprintln!("skipped: io_uring unavailable: {err:#}");
            return;
        }
        let waker = Arc::new(Waker::new().unwrap());
        gro_gso_relay(uring::Uring::new(64, waker, true).unwrap(), true);
    }

    #[test]
    fn uring_without_offload_relays_a_gso_batch_datagram_by_datagram() {
        if let Err(err) = check_uring() {
            assert!(
                std::env::var_os("CI").is_none(),
                "io_uring unavailable in CI: {err:#}"
            );
            eprintln!("skipped: io_uring unavailable: {err:#}");
            return;
        }
        let waker = Arc::new(Waker::new().unwrap());
        gro_gso_relay(uring::Uring::new(64, waker, false).unwrap(), false);
    }

    #[test]
    fn epoll_without_offload_relays_a_gso_batch_datagram_by_datagram() {
        let waker = Arc::new(Waker::new().unwrap());
        gro_gso_relay(epoll::Epoll::new(64, waker, false).unwrap(), false);
    }

    #[test]
    fn epoll_round_trip() {
        let waker = Arc::new(Waker::new().unwrap());
        round_trip(epoll::Epoll::new(64, waker, true).unwrap());
    }

    #[test]
    fn uring_round_trip() {
        if let Err(err) = check_uring() {
            eprintln!("skipped: io_uring unavailable: {err:#}");
            return;
        }
        let waker = Arc::new(Waker::new().unwrap());
        round_trip(uring::Uring::new(64, waker, true).unwrap());
    }

    #[test]
    fn fallback_hint_names_seccomp_for_eperm() {
        let err = anyhow::Error::new(io::Error::from_raw_os_error(libc::EPERM))
            .context("io_uring_setup failed");
        assert!(hint(&err).contains("seccomp"));
        assert_eq!(hint(&anyhow::anyhow!("other")), "");
    }

    #[test]
    fn socket_ids_go_stale() {
        let mut s = Sockets::new();
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_eq!(a.index, b.index);
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(SocketId::from_u64(b.to_u64()), b);
        assert_eq!(s.ids().collect::<Vec<_>>(), [b]);
    }
}
