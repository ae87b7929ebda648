//! io_uring backend, on the `io-uring` crate directly (no runtime on top).
//!
//! # Kernel features used
//!
//! | Feature | Why | Since |
//! |---|---|---|
//! | `IORING_SETUP_SINGLE_ISSUER` + `DEFER_TASKRUN` (if accepted, else a plain ring) | one thread per ring; completions run only when the worker waits, so they batch | 6.1 |
//! | `IORING_FEAT_EXT_ARG` | the wait takes a timeout for the core's next timer, without a timeout SQE | 5.11 |
//! | `IORING_FEAT_NODROP` | completions are never lost if the worker falls behind its budget | 5.5 |
//! | provided buffer ring (`IORING_REGISTER_PBUF_RING`) | the kernel picks a free slot per datagram; no per-receive SQE | 5.19 |
//! | multishot `RECVMSG` (`IORING_RECV_MULTISHOT`) | one SQE receives on a socket until it ends; re-armed then | 6.0 |
//! | `SENDMSG` | a send with a destination address, one SQE per datagram, submitted in batches | 5.3 |
//! | `POLL_ADD` on an eventfd | cross-thread wake-up ([`Waker`]) | 5.1 |
//! | `ASYNC_CANCEL` | stop a socket's multishot receive before closing it | 5.5 |
//!
//! [`probe`] checks every one of them (opcodes through `IORING_REGISTER_PROBE`, and multishot
//! receive by arming one on an unbound socket and cancelling it: older kernels reject it
//! with `EINVAL`), so `Auto` falls back to epoll on any kernel that lacks one.
//!
//! Not used: `SEND_ZC`/`SENDMSG_ZC`. Relay datagrams are at most an MTU, where zero-copy send
//! costs more (page pinning plus a second notification CQE per send) than the copy it saves;
//! it pays off above a few KiB.
//!
//! # Buffers
//!
//! Half of the worker's slots live in the buffer ring (the receive pool); the rest are the
//! free list for replies. A returned slot refills the ring first, so received datagrams that
//! go out again (relayed) come back to the ring when their send completes. The ring entries
//! advertise `SLOT_SIZE - TAILROOM` bytes, `msg_namelen` is [`NAME_LEN`] and `msg_controllen`
//! is [`CONTROL_LEN`] (the socket's drop total, `SO_RXQ_OVFL`, counted as `rx_overflow`),
//! which puts the payload at exactly [`RX_START`] (see the [parent module](super)). When the ring runs dry a
//! multishot receive ends with `ENOBUFS`; the socket is re-armed at the next submit once
//! slots are back.
//!
//! # UDP offload (GRO and GSO)
//!
//! With offload on, sockets get `UDP_GRO` and receive into a second provided buffer ring
//! ([`BGID_GRO`], [`GRO_BUFS`] buffers of 64 KiB and the header areas): a coalesced batch
//! does not fit a slot. Each completion's segments (their size is in the control data) are
//! copied into one slot each and queued for [`reap`](Io::reap), in order, and the large buffer
//! goes back to its ring at once. Sends are queued by [`send`](Io::send) and pushed at the next
//! submit: consecutive sends from one socket to one address of one size (the last may be
//! shorter) become one `SENDMSG` with a `UDP_SEGMENT` control message and one iovec per slot,
//! whose header lives in the first slot's [`SendMeta`] and whose slots are chained through
//! `SendMeta::next`, so the completion returns them all. A GSO send the kernel refuses turns
//! GSO off for that socket (counted, logged once); that group is lost like a send to a full
//! buffer.
//!
//! # Lifetimes of kernel-visible memory
//!
//! Slots, the buffer ring, the shared `msghdr` of the receives and the per-slot `msghdr` of
//! the sends are boxed once and never move. Teardown cancels every operation and waits for
//! the completions; if they do not all arrive within a bound, the memory is leaked rather
//! than freed under the kernel.

use std::io;
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};

use std::collections::VecDeque;

use super::bufs::{MAX_PAYLOAD, SLOT_SIZE, TAILROOM};
use super::{
    BufId, BufPool, CONTROL_LEN, Datagram, GSO_MAX_SEGMENTS, HEADROOM, Io, IoCounters, Offload,
    OverflowSeen, PendingSend, RX_START, RawAddr, SEGMENT_CONTROL_LEN, SocketId, SocketRole,
    Sockets, Waker, decode_addr, enable_offload, enable_overflow_count, gso_group, log_gso_failed,
    parse_control, write_segment_cmsg,
};

/// Size of the source-address area of a multishot `RecvMsg` buffer: holds a `sockaddr_in6`
/// (28 bytes) and, with the control area behind it, makes the payload start at
/// [`RX_START`].
pub(super) const NAME_LEN: usize = HEADROOM - RECVMSG_OUT_LEN;

/// `size_of::<io_uring_recvmsg_out>()`: four `u32`s the kernel writes at the buffer start.
const RECVMSG_OUT_LEN: usize = 16;

/// Submission queue size. A turn queues at most its budget of sends plus re-arms; a full
/// queue is submitted early, so this only bounds syscall batching.
const SQ_ENTRIES: u32 = 1024;

/// Completion queue size: room for a few turns of receives and send completions.
const CQ_ENTRIES: u32 = 8 * SQ_ENTRIES;

/// Buffer group id of the worker's ring of slots.
const BGID: u16 = 0;

/// Buffer group id of the ring of large buffers that GRO sockets receive into.
const BGID_GRO: u16 = 1;

/// Buffers in the GRO ring. A completion's buffer goes back to the ring as soon as its
/// segments are copied out, so a few suffice.
const GRO_BUFS: u16 = 16;

/// Size of one GRO buffer: the `RecvMsg` header, name and control areas ([`RX_START`]
/// bytes) and the largest UDP datagram, rounded up to pages.
const GRO_BUF_LEN: usize = (RX_START + 65_536).next_multiple_of(4096);

/// No further slot in a GSO group's chain.
const CHAIN_END: u16 = u16::MAX;

/// Length the ring advertises per slot: the kernel leaves the tailroom alone.
const RING_BUF_LEN: u32 = (SLOT_SIZE - TAILROOM) as u32;

/// How long teardown waits for cancelled operations, in steps of [`CLOSE_STEP`].
const CLOSE_STEPS: u32 = 200;
const CLOSE_STEP: Duration = Duration::from_millis(10);

/// User data: operation kind in the top 8 bits, a 56-bit payload below.
mod user_data {
    pub(super) const RECV: u64 = 1;
    pub(super) const SEND: u64 = 2;
    pub(super) const WAKE: u64 = 3;
    pub(super) const CANCEL: u64 = 4;
    pub(super) const PROBE: u64 = 5;
    pub(super) const AUX: u64 = 6;
    pub(super) const RECV_GRO: u64 = 7;

    const SHIFT: u32 = 56;

    pub(super) const fn pack(kind: u64, payload: u64) -> u64 {
        (kind << SHIFT) | (payload & ((1 << SHIFT) - 1))
    }

    pub(super) const fn unpack(raw: u64) -> (u64, u64) {
        (raw >> SHIFT, raw & ((1 << SHIFT) - 1))
    }
}

/// Checks that io_uring can run a worker here: sets up a small instance with everything
/// [`Uring::new`] needs, then tears it down.
///
/// This runs on a throwaway thread. A thread that has used a ring gets an io_uring task
/// context, and when the ring is destroyed the kernel's asynchronous exit work queues task
/// work with `TWA_SIGNAL` to every such thread, tens of milliseconds later. On the caller's
/// thread that would make an unrelated blocking syscall with a timeout (say, a `recv` with
/// `SO_RCVTIMEO`) fail with `EINTR`. A thread that has exited is skipped.
pub(crate) fn probe() -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("boson-uring-probe".into())
        .spawn(|| {
            let waker = Arc::new(Waker::new().context("creating an eventfd")?);
            let _uring = Uring::new(64, waker, false)?;
            Ok(())
        })
        .context("spawning the io_uring probe thread")?
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the io_uring probe panicked")))
}

/// The io_uring [`Io`] backend of one worker.
pub(crate) struct Uring {
    ring: IoUring,
    mem: ManuallyDrop<KernelMem>,
    sockets: Sockets<Entry>,
    /// Slots the buffer ring should hold; its entry count.
    ring_target: usize,
    /// Slots pushed to the ring and not yet reported used by a completion.
    in_ring: usize,
    /// Sockets whose receive must be (re-)armed at the next submit.
    rearm: Vec<SocketId>,
    waker: Arc<Waker>,
    wake_armed: bool,
    /// The auxiliary fd (see [`Io::watch_aux`]), whether a poll on it is in flight, and
    /// whether it reported readiness since the last [`Io::take_aux_ready`].
    aux: Option<RawFd>,
    aux_armed: bool,
    aux_ready: bool,
    inflight_recvs: usize,
    inflight_sends: usize,
    /// Sends queued by [`Io::send`], grouped and pushed at the next submit.
    pending: Vec<PendingSend>,
    /// Segments of a GRO receive not yet reaped.
    queue: VecDeque<Datagram>,
    /// Turn GRO and GSO on for every registered socket.
    offload: bool,
    counters: IoCounters,
    closed: bool,
    /// Every operation completed after `close`: `mem` may be freed.
    drained: bool,
}

/// Memory the kernel reads or writes while operations are in flight.
struct KernelMem {
    pool: BufPool,
    bufring: BufRing,
    /// Template of every multishot receive: only `msg_namelen` and `msg_controllen` matter.
    recv_msg: Box<libc::msghdr>,
    /// Per slot: the header, iovecs, destination and control data of the send that slot
    /// heads.
    sends: Box<[SendMeta]>,
    /// The GRO ring and its buffers, with UDP offload on.
    gro: Option<GroRing>,
}

struct SendMeta {
    msg: libc::msghdr,
    /// One per datagram of a GSO group (one for a plain send).
    iovs: [libc::iovec; GSO_MAX_SEGMENTS],
    addr: RawAddr,
    control: [u64; SEGMENT_CONTROL_LEN / 8],
    /// The next slot of the group this slot is in, or [`CHAIN_END`].
    next: u16,
    /// Datagrams in the send this slot heads.
    segments: u16,
    /// The socket it goes from (to turn GSO off there if the kernel refuses it).
    socket: SocketId,
}

/// Large buffers for GRO sockets' receives: a coalesced batch does not fit a slot, so it
/// lands here and is copied out into one slot per segment.
struct GroRing {
    ring: BufRing,
    base: NonNull<u8>,
    layout: std::alloc::Layout,
}

impl GroRing {
    fn new() -> Self {
        let layout = std::alloc::Layout::from_size_align(usize::from(GRO_BUFS) * GRO_BUF_LEN, 4096)
            .unwrap_or_else(|_| unreachable!("1 MiB, page-aligned"));
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout);
        };
        let mut ring = BufRing::new(GRO_BUFS);
        for bid in 0..GRO_BUFS {
            ring.push(bid, Self::ptr(base, bid), GRO_BUF_LEN as u32);
        }
        Self { ring, base, layout }
    }

    fn ptr(base: NonNull<u8>, bid: u16) -> *mut u8 {
        assert!(bid < GRO_BUFS, "GRO buffer {bid} out of range");
        // SAFETY: in bounds of the allocation.
        unsafe { base.as_ptr().add(usize::from(bid) * GRO_BUF_LEN) }
    }

    /// Hands buffer `bid` back to the kernel (visible after `publish`).
    fn recycle(&mut self, bid: u16) {
        let ptr = Self::ptr(self.base, bid);
        self.ring.push(bid, ptr, GRO_BUF_LEN as u32);
    }
}

impl Drop for GroRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

struct Entry {
    socket: UdpSocket,
    role: SocketRole,
    state: RecvState,
    overflow: OverflowSeen,
    offload: Offload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvState {
    /// A multishot receive is in flight.
    Armed,
    /// No receive in flight; queued in `rearm`.
    Idle,
    /// Cancelled; the socket closes when the receive's final completion arrives.
    Closing,
}

impl Uring {
    /// Sets up a ring with a pool of `buffers` slots (a power of two, at least 2).
    pub(crate) fn new(buffers: usize, waker: Arc<Waker>, offload: bool) -> anyhow::Result<Self> {
        let (ring, deferred) = build_ring().context("io_uring_setup failed")?;
        ensure!(
            ring.params().is_feature_ext_arg(),
            "io_uring lacks IORING_FEAT_EXT_ARG (Linux 5.11+)"
        );
        ensure!(
            ring.params().is_feature_nodrop(),
            "io_uring lacks IORING_FEAT_NODROP (Linux 5.5+)"
        );
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .context("IORING_REGISTER_PROBE failed")?;
        for (code, name) in [
            (opcode::RecvMsg::CODE, "RECVMSG"),
            (opcode::SendMsg::CODE, "SENDMSG"),
            (opcode::PollAdd::CODE, "POLL_ADD"),
            (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        ] {
            ensure!(
                probe.is_supported(code),
                "io_uring opcode {name} unsupported"
            );
        }

        let ring_target = buffers / 2;
        let entries = u16::try_from(ring_target).context("buffer ring too large")?;
        ensure!(
            entries.is_power_of_two(),
            "buffer ring size {entries} is not a power of two"
        );
        let mut pool = BufPool::new(buffers);
        let mut bufring = BufRing::new(entries);
        // SAFETY: `bufring` is page-aligned, has `entries` entries, and lives in `mem` until
        // it is unregistered in `Drop` (or leaked).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufring.addr(), entries, BGID, 0)
        }
        .context(
            "registering a provided buffer ring failed (IORING_REGISTER_PBUF_RING, Linux 5.19+)",
        )?;
        for _ in 0..ring_target {
            let buf = pool
                .alloc()
                .unwrap_or_else(|| unreachable!("half the pool"));
            bufring.push(buf.index(), pool.slot_ptr(buf.index()), RING_BUF_LEN);
        }
        bufring.publish();

        // SAFETY: all-zero is a valid msghdr.
        let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_msg.msg_namelen = NAME_LEN as libc::socklen_t;
        recv_msg.msg_controllen = CONTROL_LEN;
        let sends = (0..buffers)
            .map(|_| SendMeta {
                // SAFETY: all-zero is a valid msghdr and iovec.
                msg: unsafe { std::mem::zeroed() },
                // SAFETY: as above.
                iovs: unsafe { std::mem::zeroed() },
                addr: RawAddr::zeroed(),
                control: [0; SEGMENT_CONTROL_LEN / 8],
                next: CHAIN_END,
                segments: 0,
                socket: SocketId::from_u64(0),
            })
            .collect();
        let gro = if offload {
            let gro = GroRing::new();
            // SAFETY: the ring is page-aligned, has GRO_BUFS entries, and lives in `mem`
            // until it is unregistered in `Drop` (or leaked).
            match unsafe {
                ring.submitter().register_buf_ring_with_flags(
                    gro.ring.addr(),
                    GRO_BUFS,
                    BGID_GRO,
                    0,
                )
            } {
                Ok(()) => {
                    gro.ring.publish();
                    Some(gro)
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot register the GRO buffer ring; no GRO on io_uring");
                    None
                }
            }
        } else {
            None
        };

        let mut uring = Self {
            ring,
            mem: ManuallyDrop::new(KernelMem {
                pool,
                bufring,
                recv_msg,
                sends,
                gro,
            }),
            sockets: Sockets::new(),
            ring_target,
            in_ring: ring_target,
            rearm: Vec::with_capacity(64),
            waker,
            wake_armed: false,
            aux: None,
            aux_armed: false,
            aux_ready: false,
            inflight_recvs: 0,
            inflight_sends: 0,
            pending: Vec::with_capacity(SQ_ENTRIES as usize),
            queue: VecDeque::new(),
            offload,
            counters: IoCounters::default(),
            closed: false,
            drained: false,
        };
        uring.verify_multishot()?;
        tracing::debug!(
            defer_taskrun = deferred,
            buffers,
            ring_entries = entries,
            "io_uring ready"
        );
        Ok(uring)
    }

    /// Arms a multishot receive on an unbound socket and cancels it: a kernel without
    /// multishot `RecvMsg` rejects the SQE with `EINVAL` instead.
    fn verify_multishot(&mut self) -> anyhow::Result<()> {
        let socket = UdpSocket::bind("0.0.0.0:0")
            .or_else(|_| UdpSocket::bind("[::]:0"))
            .context("creating a probe socket")?;
        let recv = opcode::RecvMsgMulti::new(
            types::Fd(socket.as_raw_fd()),
            &raw const *self.mem.recv_msg,
            BGID,
        )
        .build()
        .user_data(user_data::pack(user_data::PROBE, 0));
        let cancel = opcode::AsyncCancel::new(user_data::pack(user_data::PROBE, 0))
            .build()
            .user_data(user_data::pack(user_data::PROBE, 1));
        // SAFETY: the msghdr lives in `mem`; the socket outlives the receive (we wait for its
        // final completion below, or leak `mem` and the socket if it never comes).
        unsafe { self.push(&recv) }.context("queueing the probe receive")?;
        self.inflight_recvs += 1;
        // SAFETY: a cancel references no memory.
        unsafe { self.push(&cancel) }.context("queueing the probe cancel")?;

        let mut result = None;
        for _ in 0..CLOSE_STEPS {
            self.enter(1, Some(CLOSE_STEP))
                .context("io_uring_enter failed")?;
            while let Some(cqe) = self.next_cqe() {
                let (kind, payload) = user_data::unpack(cqe.user_data());
                if kind == user_data::PROBE && payload == 0 && !cqueue::more(cqe.flags()) {
                    result = Some(cqe.result());
                }
                if let Some(datagram) = self.complete(&cqe) {
                    self.release(datagram.buf);
                }
            }
            if result.is_some() {
                break;
            }
        }
        let Some(result) = result else {
            std::mem::forget(socket);
            bail!("the multishot receive probe did not complete");
        };
        match -result {
            libc::ECANCELED => Ok(()),
            libc::EINVAL => bail!("multishot RECVMSG unsupported (Linux 6.0+)"),
            errno => Err(io::Error::from_raw_os_error(errno))
                .context("the multishot receive probe failed"),
        }
    }

    /// Queues an SQE, submitting early if the queue is full.
    ///
    /// # Safety
    ///
    /// Memory the SQE points to must stay valid until its (final) completion.
    unsafe fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        // SAFETY: forwarded to the caller.
        if unsafe { self.ring.submission().push(sqe) }.is_ok() {
            return Ok(());
        }
        self.ring.submit()?;
        // SAFETY: as above.
        unsafe { self.ring.submission().push(sqe) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    fn next_cqe(&mut self) -> Option<cqueue::Entry> {
        self.ring.completion().next()
    }

    /// One `io_uring_enter`: submit, and wait for `want` completions or `timeout`.
    fn enter(&self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        let submitter = self.ring.submitter();
        let result = match timeout {
            None => submitter.submit_and_wait(want),
            Some(timeout) => {
                let ts = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&ts);
                submitter.submit_with_args(want, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            // ETIME: the timer is due. EINTR: a signal. EBUSY/EAGAIN: the completion queue is
            // backed up; the worker drains it next.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Processes one completion; returns a datagram for the worker, if it carried one.
    fn complete(&mut self, cqe: &cqueue::Entry) -> Option<Datagram> {
        let (kind, payload) = user_data::unpack(cqe.user_data());
        let flags = cqe.flags();
        if kind == user_data::RECV_GRO {
            let id = SocketId::from_u64(payload);
            if !cqueue::more(flags) {
                self.inflight_recvs -= 1;
                self.recv_ended(id, cqe.result());
            }
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.received_gro(id, cqe.result(), bid);
            }
            return None;
        }
        let buf = cqueue::buffer_select(flags).map(|bid| {
            self.in_ring -= 1;
            BufId::from_kernel(bid)
        });
        match kind {
            user_data::RECV => {
                let id = SocketId::from_u64(payload);
                if !cqueue::more(flags) {
                    self.inflight_recvs -= 1;
                    self.recv_ended(id, cqe.result());
                }
                self.received(id, cqe.result(), buf?)
            }
            user_data::SEND => {
                self.inflight_sends -= 1;
                let head = u16::try_from(payload).unwrap_or_else(|_| unreachable!("slot id"));
                let meta = &self.mem.sends[usize::from(head)];
                let segments = u64::from(meta.segments);
                let socket = meta.socket;
                match u64::try_from(cqe.result()) {
                    Ok(sent) => {
                        self.counters.tx_packets += segments;
                        self.counters.tx_bytes += sent;
                        if segments > 1 {
                            self.counters.tx_gso_sends += 1;
                        }
                    }
                    Err(_) => {
                        let err = io::Error::from_raw_os_error(-cqe.result());
                        self.counters.tx_failed += segments;
                        if segments > 1
                            && matches!(-cqe.result(), libc::EIO | libc::EINVAL | libc::EMSGSIZE)
                        {
                            // The kernel refused the GSO message: no more GSO on this socket
                            // (this group is lost, as a full socket buffer would lose it).
                            log_gso_failed(&err);
                            self.counters.udp_offload_refused += 1;
                            if let Some(entry) = self.sockets.get_mut(socket) {
                                entry.offload.gso = false;
                            }
                        } else {
                            tracing::debug!(%err, "send failed");
                        }
                    }
                }
                // The group's slots, head first.
                let mut slot = head;
                while slot != CHAIN_END {
                    let next =
                        std::mem::replace(&mut self.mem.sends[usize::from(slot)].next, CHAIN_END);
                    self.release(BufId::from_kernel(slot));
                    slot = next;
                }
                None
            }
            user_data::WAKE => {
                self.wake_armed = false;
                self.waker.drain();
                None
            }
            user_data::AUX => {
                self.aux_armed = false;
                self.aux_ready |= cqe.result() >= 0;
                None
            }
            user_data::PROBE if payload == 0 && !cqueue::more(flags) => {
                self.inflight_recvs -= 1;
                self.release(buf?);
                None
            }
            _ => {
                self.release(buf?);
                None
            }
        }
    }

    /// A socket's multishot receive ended: close it if it was cancelled, else re-arm it.
    fn recv_ended(&mut self, id: SocketId, result: i32) {
        let Some(entry) = self.sockets.get_mut(id) else {
            return;
        };
        if entry.state == RecvState::Closing {
            self.sockets.remove(id);
            return;
        }
        entry.state = RecvState::Idle;
        self.rearm.push(id);
        self.counters.rx_rearms += 1;
        if result < 0 && result != -libc::ENOBUFS {
            tracing::debug!(
                err = %io::Error::from_raw_os_error(-result),
                "multishot receive ended; re-arming"
            );
        }
    }

    /// Queues the datagrams of a receive completion on a GRO socket, which carried GRO buffer
    /// `bid`, one slot per segment; the buffer goes straight back to the kernel.
    fn received_gro(&mut self, id: SocketId, result: i32, bid: u16) {
        let role = match self.sockets.get(id) {
            Some(entry) if entry.state != RecvState::Closing => Some(entry.role),
            _ => None,
        };
        let KernelMem {
            pool,
            recv_msg,
            gro,
            ..
        } = &mut *self.mem;
        let Some(gro) = gro else {
            return;
        };
        let (Some(role), Ok(filled)) = (role, usize::try_from(result)) else {
            gro.recycle(bid);
            return;
        };
        // SAFETY: the kernel handed buffer `bid` back with this completion and gets it again
        // only through `recycle` below: nothing else reads or writes it meanwhile.
        let buffer = unsafe {
            std::slice::from_raw_parts(GroRing::ptr(gro.base, bid), filled.min(GRO_BUF_LEN))
        };
        let mut overflow = None;
        if let Ok(out) = types::RecvMsgOut::parse(buffer, recv_msg) {
            let control = parse_control(out.control_data());
            overflow = control.overflow;
            let payload = out.payload_data();
            let segment = control.segment.unwrap_or(payload.len()).max(1);
            let count = payload.len().div_ceil(segment).max(1) as u64;
            match decode_addr(out.name_data()) {
                _ if out.is_payload_truncated() || segment > MAX_PAYLOAD => {
                    self.counters.rx_truncated += count;
                }
                None => {}
                Some(from) => {
                    if count > 1 {
                        self.counters.rx_gro_batches += 1;
                    }
                    for (i, chunk) in payload.chunks(segment).enumerate() {
                        let Some(buf) = pool.alloc() else {
                            self.counters.rx_no_buffer += count - i as u64;
                            break;
                        };
                        pool.slot_mut(&buf)[RX_START..RX_START + chunk.len()]
                            .copy_from_slice(chunk);
                        self.counters.rx_packets += 1;
                        self.counters.rx_bytes += chunk.len() as u64;
                        self.queue.push_back(Datagram {
                            role,
                            from,
                            buf,
                            len: chunk.len(),
                        });
                    }
                }
            }
        }
        gro.recycle(bid);
        if let Some(total) = overflow
            && let Some(entry) = self.sockets.get_mut(id)
        {
            self.counters.rx_overflow += entry.overflow.update(total);
        }
    }

    /// Pushes the queued sends: one SQE per datagram, or per GSO group where the socket
    /// allows.
    fn push_sends(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        let mut start = 0;
        while start < pending.len() {
            let socket = pending[start].socket;
            let entry = self.sockets.get(socket);
            let gso = entry.is_some_and(|e| e.offload.gso);
            let end = if gso {
                let same = pending[start..]
                    .iter()
                    .take_while(|p| p.socket == socket)
                    .count();
                start + gso_group(&pending[start..start + same])
            } else {
                start + 1
            };
            let Some(fd) = entry.map(|e| e.socket.as_raw_fd()) else {
                for send in &pending[start..end] {
                    self.counters.tx_failed += 1;
                    self.release(BufId::from_kernel(send.buf.index()));
                }
                start = end;
                continue;
            };
            let group = &pending[start..end];
            let head = group[0].buf.index();
            let size = group[0].range.len();
            for (i, send) in group.iter().enumerate() {
                let index = send.buf.index();
                let base = self.mem.pool.slot_ptr(index);
                let meta = &mut self.mem.sends[usize::from(head)];
                meta.iovs[i] = libc::iovec {
                    // SAFETY: `range` lies within the slot (asserted in `send`).
                    iov_base: unsafe { base.add(send.range.start) }.cast(),
                    iov_len: send.range.len(),
                };
                let next = group.get(i + 1).map_or(CHAIN_END, |s| s.buf.index());
                self.mem.sends[usize::from(index)].next = next;
            }
            let segments = end - start;
            let meta = &mut self.mem.sends[usize::from(head)];
            let (addr, addr_len) = RawAddr::encode(group[0].dst);
            meta.addr = addr;
            meta.segments = u16::try_from(segments).unwrap_or_else(|_| unreachable!("<= 64"));
            meta.socket = socket;
            meta.msg.msg_name = (&raw mut meta.addr).cast();
            meta.msg.msg_namelen = addr_len;
            meta.msg.msg_iov = meta.iovs.as_mut_ptr();
            meta.msg.msg_iovlen = segments;
            if segments > 1 {
                write_segment_cmsg(&mut meta.control, size);
                meta.msg.msg_control = meta.control.as_mut_ptr().cast();
                meta.msg.msg_controllen = SEGMENT_CONTROL_LEN;
            } else {
                meta.msg.msg_control = std::ptr::null_mut();
                meta.msg.msg_controllen = 0;
            }
            let sqe = opcode::SendMsg::new(types::Fd(fd), &raw const meta.msg)
                .build()
                .user_data(user_data::pack(user_data::SEND, u64::from(head)));
            // SAFETY: the header, iovecs, address, control data and slots belong to this send
            // until its completion returns the slots (`complete`); the socket closes only
            // after its receive is cancelled, which is submitted after this SQE.
            match unsafe { self.push(&sqe) } {
                Ok(()) => self.inflight_sends += 1,
                Err(_) => {
                    self.counters.tx_failed += segments as u64;
                    for send in &pending[start..end] {
                        let index = send.buf.index();
                        self.mem.sends[usize::from(index)].next = CHAIN_END;
                        self.release(BufId::from_kernel(index));
                    }
                }
            }
            start = end;
        }
        // Every slot is the kernel's now or back in the pool: the tokens are spent (the
        // completions re-create them from the chains).
        pending.clear();
        self.pending = pending;
    }

    /// Turns a receive completion that carried slot `buf` into a datagram, or drops it.
    fn received(&mut self, id: SocketId, result: i32, buf: BufId) -> Option<Datagram> {
        let role = match self.sockets.get(id) {
            Some(entry) if entry.state != RecvState::Closing => entry.role,
            _ => {
                self.release(buf);
                return None;
            }
        };
        let Ok(filled) = usize::try_from(result) else {
            self.release(buf);
            return None;
        };
        let parsed = {
            let KernelMem { pool, recv_msg, .. } = &mut *self.mem;
            let slot = pool.slot_mut(&buf);
            let slot = &slot[..filled.min(SLOT_SIZE)];
            match types::RecvMsgOut::parse(slot, recv_msg) {
                Err(()) => None,
                Ok(out) => {
                    let overflow = parse_control(out.control_data()).overflow;
                    if out.is_payload_truncated() {
                        Some((None, overflow))
                    } else {
                        debug_assert_eq!(
                            out.payload_data().as_ptr() as usize - slot.as_ptr() as usize,
                            RX_START,
                            "payload not at RX_START"
                        );
                        let datagram = decode_addr(out.name_data())
                            .map(|from| (from, out.payload_data().len()));
                        Some((datagram, overflow))
                    }
                }
            }
        };
        if let Some((_, Some(total))) = parsed
            && let Some(entry) = self.sockets.get_mut(id)
        {
            self.counters.rx_overflow += entry.overflow.update(total);
        }
        let parsed = parsed.map(|(datagram, _)| datagram);
        match parsed {
            Some(Some((from, len))) => {
                self.counters.rx_packets += 1;
                self.counters.rx_bytes += len as u64;
                Some(Datagram {
                    role,
                    from,
                    buf,
                    len,
                })
            }
            Some(None) => {
                self.counters.rx_truncated += 1;
                self.release(buf);
                None
            }
            None => {
                self.release(buf);
                None
            }
        }
    }

    /// Arms the receives of idle sockets, if the ring has slots for them.
    fn arm_receives(&mut self) {
        if self.rearm.is_empty() {
            return;
        }
        if self.in_ring == 0 {
            // Nothing in flight will refill the ring soon: lend it half the free slots.
            let lend = (self.mem.pool.free_len() / 2).min(self.ring_target);
            for _ in 0..lend {
                let Some(buf) = self.mem.pool.alloc() else {
                    break;
                };
                self.push_to_ring(buf);
            }
            self.mem.bufring.publish();
            if self.in_ring == 0 {
                return;
            }
        }
        let mut rearm = std::mem::take(&mut self.rearm);
        for id in rearm.drain(..) {
            let Some(entry) = self.sockets.get_mut(id) else {
                continue;
            };
            if entry.state != RecvState::Idle {
                continue;
            }
            let (group, kind) = if entry.offload.gro {
                (BGID_GRO, user_data::RECV_GRO)
            } else {
                (BGID, user_data::RECV)
            };
            let sqe = opcode::RecvMsgMulti::new(
                types::Fd(entry.socket.as_raw_fd()),
                &raw const *self.mem.recv_msg,
                group,
            )
            .build()
            .user_data(user_data::pack(kind, id.to_u64()));
            entry.state = RecvState::Armed;
            // SAFETY: the msghdr lives in `mem`; the socket stays open until the receive's
            // final completion (`recv_ended`).
            match unsafe { self.push(&sqe) } {
                Ok(()) => self.inflight_recvs += 1,
                Err(err) => {
                    tracing::warn!(%err, "cannot arm a receive; retrying next turn");
                    if let Some(entry) = self.sockets.get_mut(id) {
                        entry.state = RecvState::Idle;
                    }
                    self.rearm.push(id);
                }
            }
        }
        // Keep the allocation for the next turn.
        if self.rearm.is_empty() {
            self.rearm = rearm;
        }
    }

    fn push_to_ring(&mut self, buf: BufId) {
        let index = buf.index();
        let ptr = self.mem.pool.slot_ptr(index);
        self.mem.bufring.push(index, ptr, RING_BUF_LEN);
        self.in_ring += 1;
    }

    fn arm_aux(&mut self) {
        let Some(fd) = self.aux else {
            return;
        };
        if self.aux_armed || self.closed {
            return;
        }
        let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(user_data::pack(user_data::AUX, 0));
        // SAFETY: a poll references no memory; the kernel holds its own reference to the
        // file until the poll completes.
        match unsafe { self.push(&sqe) } {
            Ok(()) => self.aux_armed = true,
            Err(err) => tracing::warn!(%err, "cannot arm the aux poll; retrying next turn"),
        }
    }

    fn arm_waker(&mut self) {
        if self.wake_armed || self.closed {
            return;
        }
        let sqe = opcode::PollAdd::new(types::Fd(self.waker.raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(user_data::pack(user_data::WAKE, 0));
        // SAFETY: the eventfd is kept alive by `self.waker` until the poll completes.
        match unsafe { self.push(&sqe) } {
            Ok(()) => self.wake_armed = true,
            Err(err) => tracing::warn!(%err, "cannot arm the waker; retrying next turn"),
        }
    }
}

impl Io for Uring {
    fn register(&mut self, socket: UdpSocket, role: SocketRole) -> io::Result<SocketId> {
        if let Err(err) = enable_overflow_count(&socket) {
            tracing::debug!(%err, "SO_RXQ_OVFL refused: this socket's overflow drops go uncounted");
        }
        let mut offload = Offload::default();
        if self.offload {
            let refused;
            (offload, refused) = enable_offload(&socket);
            self.counters.udp_offload_refused += u64::from(refused);
            if offload.gro && self.mem.gro.is_none() {
                // No ring to receive batches into: one datagram per receive.
                let _ = super::set_int_option(&socket, libc::SOL_UDP, libc::UDP_GRO, 0);
                offload.gro = false;
            }
        }
        let id = self.sockets.insert(Entry {
            socket,
            role,
            state: RecvState::Idle,
            overflow: OverflowSeen::default(),
            offload,
        });
        // Armed at the next submit; datagrams queue in the socket meanwhile.
        self.rearm.push(id);
        Ok(id)
    }

    fn unregister(&mut self, id: SocketId) {
        let Some(entry) = self.sockets.get_mut(id) else {
            return;
        };
        match entry.state {
            RecvState::Idle => {
                self.sockets.remove(id);
            }
            RecvState::Closing => {}
            RecvState::Armed => {
                entry.state = RecvState::Closing;
                let kind = if entry.offload.gro {
                    user_data::RECV_GRO
                } else {
                    user_data::RECV
                };
                // Sends queued from this socket go first.
                self.push_sends();
                let sqe = opcode::AsyncCancel::new(user_data::pack(kind, id.to_u64()))
                    .build()
                    .user_data(user_data::pack(user_data::CANCEL, 0));
                // SAFETY: a cancel references no memory.
                if let Err(err) = unsafe { self.push(&sqe) } {
                    tracing::warn!(%err, "cannot cancel a receive; the socket stays open");
                }
            }
        }
    }

    fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.push_sends();
        self.mem.bufring.publish();
        if let Some(gro) = &self.mem.gro {
            gro.ring.publish();
        }
        self.arm_receives();
        self.arm_waker();
        self.arm_aux();
        self.enter(1, timeout)
    }

    fn reap(&mut self) -> Option<Datagram> {
        loop {
            if let Some(datagram) = self.queue.pop_front() {
                return Some(datagram);
            }
            let cqe = self.next_cqe()?;
            if let Some(datagram) = self.complete(&cqe) {
                return Some(datagram);
            }
        }
    }

    fn alloc(&mut self) -> Option<BufId> {
        self.mem.pool.alloc()
    }

    fn release(&mut self, buf: BufId) {
        if self.in_ring < self.ring_target && !self.closed {
            self.push_to_ring(buf);
        } else {
            self.mem.pool.free(buf);
        }
    }

    fn bufs(&mut self) -> &mut BufPool {
        &mut self.mem.pool
    }

    fn send(&mut self, socket: SocketId, dst: SocketAddr, buf: BufId, range: Range<usize>) {
        assert!(range.start <= range.end && range.end <= SLOT_SIZE);
        if self.pending.len() == SQ_ENTRIES as usize {
            self.push_sends();
        }
        self.pending.push(PendingSend {
            socket,
            dst,
            buf,
            range,
        });
    }

    fn flush(&mut self) {}

    fn watch_aux(&mut self, fd: RawFd) -> io::Result<()> {
        self.aux = Some(fd);
        Ok(())
    }

    fn take_aux_ready(&mut self) -> bool {
        std::mem::take(&mut self.aux_ready)
    }

    fn counters(&self) -> IoCounters {
        self.counters
    }

    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.push_sends();
        let ids: Vec<SocketId> = self.sockets.ids().collect();
        for id in ids {
            self.unregister(id);
        }
        self.closed = true;
        self.rearm.clear();
        if self.wake_armed {
            let sqe = opcode::AsyncCancel::new(user_data::pack(user_data::WAKE, 0))
                .build()
                .user_data(user_data::pack(user_data::CANCEL, 0));
            // SAFETY: a cancel references no memory.
            let _ = unsafe { self.push(&sqe) };
        }
        if self.aux_armed {
            let sqe = opcode::AsyncCancel::new(user_data::pack(user_data::AUX, 0))
                .build()
                .user_data(user_data::pack(user_data::CANCEL, 0));
            // SAFETY: a cancel references no memory.
            let _ = unsafe { self.push(&sqe) };
        }
        for _ in 0..CLOSE_STEPS {
            if self.inflight_recvs == 0
                && self.inflight_sends == 0
                && !self.wake_armed
                && !self.aux_armed
            {
                self.drained = true;
                break;
            }
            if let Err(err) = self.enter(1, Some(CLOSE_STEP)) {
                tracing::warn!(%err, "io_uring_enter failed during teardown");
                break;
            }
            while let Some(datagram) = self.reap() {
                self.release(datagram.buf);
            }
        }
        if !self.drained {
            tracing::warn!(
                recvs = self.inflight_recvs,
                sends = self.inflight_sends,
                "io_uring operations still in flight at teardown; leaking their memory"
            );
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        self.close();
        if self.drained {
            let _ = self.ring.submitter().unregister_buf_ring(BGID);
            if self.mem.gro.is_some() {
                let _ = self.ring.submitter().unregister_buf_ring(BGID_GRO);
            }
            // SAFETY: every operation has completed and the ring is unregistered, so the
            // kernel holds no reference into `mem`; it is not used again.
            unsafe { ManuallyDrop::drop(&mut self.mem) };
        } else {
            // Leaked on purpose: the sockets of unfinished operations too.
            for id in self.sockets.ids().collect::<Vec<_>>() {
                if let Some(entry) = self.sockets.remove(id) {
                    std::mem::forget(entry.socket);
                }
            }
        }
    }
}

/// Sets up a ring, single-issuer with deferred task running if the kernel accepts it.
/// Returns whether it did.
fn build_ring() -> io::Result<(IoUring, bool)> {
    let deferred = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(SQ_ENTRIES);
    match deferred {
        Ok(ring) => Ok((ring, true)),
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
            let ring = IoUring::builder()
                .setup_cqsize(CQ_ENTRIES)
                .build(SQ_ENTRIES)?;
            Ok((ring, false))
        }
        Err(err) => Err(err),
    }
}

/// A provided buffer ring: `entries` descriptors the kernel consumes at its head while we
/// append at the tail.
struct BufRing {
    base: NonNull<types::BufRingEntry>,
    layout: std::alloc::Layout,
    mask: u16,
    /// Our tail; published to the kernel by [`publish`](Self::publish).
    tail: u16,
}

impl BufRing {
    fn new(entries: u16) -> Self {
        let layout = std::alloc::Layout::from_size_align(
            usize::from(entries) * size_of::<types::BufRingEntry>(),
            4096,
        )
        .unwrap_or_else(|_| unreachable!("small, page-aligned"));
        // SAFETY: non-zero size (entries >= 1).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(ptr.cast()) else {
            std::alloc::handle_alloc_error(layout);
        };
        Self {
            base,
            layout,
            mask: entries - 1,
            tail: 0,
        }
    }

    fn addr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// Appends a slot (visible to the kernel after `publish`). The caller keeps at most
    /// `entries` slots in the ring, so this never overwrites one the kernel has not consumed.
    fn push(&mut self, bid: u16, addr: *mut u8, len: u32) {
        // SAFETY: the index is masked into the ring; the entry is not the kernel's (see
        // above), and its `resv` field (the shared tail, in entry 0) is not touched.
        let entry = unsafe { &mut *self.base.as_ptr().add(usize::from(self.tail & self.mask)) };
        entry.set_addr(addr as u64);
        entry.set_len(len);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes pushed entries visible to the kernel.
    fn publish(&self) {
        // SAFETY: `tail` points into the ring's first entry, 2-aligned; the kernel only
        // reads it, with acquire ordering.
        unsafe {
            let tail = types::BufRingEntry::tail(self.base.as_ptr()).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.base.as_ptr().cast(), self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let id = SocketId {
            index: 7,
            generation: SocketId::GENERATION_MASK,
        };
        let raw = user_data::pack(user_data::RECV, id.to_u64());
        assert_eq!(user_data::unpack(raw), (user_data::RECV, id.to_u64()));
        assert_eq!(SocketId::from_u64(id.to_u64()), id);
    }

    #[test]
    fn name_and_control_areas_put_the_payload_at_rx_start() {
        const { assert!(RECVMSG_OUT_LEN + NAME_LEN == HEADROOM) };
        const { assert!(RECVMSG_OUT_LEN + NAME_LEN + CONTROL_LEN == RX_START) };
        const { assert!(NAME_LEN >= size_of::<libc::sockaddr_in6>()) };
    }
}
