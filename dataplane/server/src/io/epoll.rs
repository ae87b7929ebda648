//! epoll backend: the fallback where io_uring is unavailable (old kernels, Docker's default
//! seccomp profile, `kernel.io_uring_disabled`).
//!
//! It uses `libc` directly rather than mio: the surface needs only `epoll_wait` on a handful
//! of fds plus `recvmmsg`/`sendmmsg`, which mio does not wrap, so mio would add a dependency
//! without removing any unsafe code.
//!
//! * Sockets are non-blocking and registered level-triggered, so a socket the worker did not
//!   drain within its budget is reported again by the next (zero-timeout) wait.
//! * Receives: `recvmmsg` of up to [`BATCH`] datagrams per call, each into a free slot at
//!   [`RX_START`], queued for [`reap`](Io::reap); the control data of each carries the
//!   socket's drop total (`SO_RXQ_OVFL`), counted as `rx_overflow`.
//! * GRO (with UDP offload on, the default): a socket with `UDP_GRO` may receive many
//!   datagrams of one sender in one go, with their segment size in the control data. Each
//!   receive gets a second iovec behind its slot, a 64 KiB spill area, so a coalesced batch
//!   fits; the first segment stays in its slot and every further one is copied from slot and
//!   spill into a slot of its own, so the worker sees one [`Datagram`] per segment, in order.
//!   A GRO socket receives at most as many batches per call as the free slots can hold.
//! * Sends: queued by [`send`](Io::send), flushed at the end of each turn with one `sendmmsg` per
//!   run of consecutive sends on the same socket. A full socket buffer (`EAGAIN`) drops the
//!   rest of the run, counted in `tx_failed`: UDP has no back-pressure to propagate.
//! * GSO: within a run, consecutive sends to one address of one size (the last may be
//!   shorter) become one message with a `UDP_SEGMENT` control message, its iovecs pointing
//!   at each slot's range: the kernel splits it into the datagrams again, and no payload is
//!   copied. A GSO send the kernel refuses turns GSO off for that socket (counted, logged
//!   once) and the group goes again datagram by datagram.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use super::bufs::{MAX_PAYLOAD, SLOT_SIZE};
use super::{
    BufId, BufPool, CONTROL_LEN, Datagram, GSO_MAX_SEGMENTS, Io, IoCounters, Offload, OverflowSeen,
    PendingSend, RX_START, RawAddr, SocketId, SocketRole, Sockets, Waker, decode_addr,
    enable_offload, enable_overflow_count, gso_group, log_gso_failed, parse_control,
    write_segment_cmsg,
};

/// Datagrams per `recvmmsg`/`sendmmsg` call.
const BATCH: usize = 32;

/// Readiness events per `epoll_wait`.
const MAX_EVENTS: usize = 256;

/// Sends queued before a forced flush: a turn's budget of sends normally fits.
const MAX_PENDING: usize = 1024;

/// epoll data of the waker; socket ids use at most 56 bits.
const WAKE_TOKEN: u64 = u64::MAX;

/// epoll data of the auxiliary fd.
const AUX_TOKEN: u64 = u64::MAX - 1;

/// Spill area per receive of a GRO socket: with the slot's payload area in front of it,
/// room for the largest UDP datagram (a GRO batch is at most that too).
const SPILL_LEN: usize = 65_536;

/// Control data of a GSO send: `CMSG_SPACE(2)` for the `u16` segment size.
const TX_CONTROL_LEN: usize = super::SEGMENT_CONTROL_LEN;

/// The epoll [`Io`] backend of one worker.
pub(crate) struct Epoll {
    epfd: OwnedFd,
    pool: BufPool,
    sockets: Sockets<Entry>,
    waker: Arc<Waker>,
    /// The auxiliary fd reported readiness since the last [`Io::take_aux_ready`].
    aux_ready: bool,
    events: Vec<libc::epoll_event>,
    /// Sockets reported readable by the last wait; `cursor` is the next to read.
    ready: Vec<SocketId>,
    cursor: usize,
    /// Received datagrams not yet reaped (at most one batch).
    queue: VecDeque<Datagram>,
    /// Slots reserved for the next `recvmmsg`.
    rx_bufs: Vec<BufId>,
    rx: Box<RxBatch>,
    /// Second iovec of each receive on a GRO socket ([`SPILL_LEN`] bytes each); allocated
    /// with the first GRO socket.
    spill: Vec<u8>,
    pending: Vec<PendingSend>,
    tx: Box<TxBatch>,
    /// Turn GRO and GSO on for every registered socket.
    offload: bool,
    counters: IoCounters,
}

struct Entry {
    socket: UdpSocket,
    role: SocketRole,
    overflow: OverflowSeen,
    offload: Offload,
}

/// Headers for one `recvmmsg` call; rebuilt per call, boxed so the pointers between them
/// stay put.
struct RxBatch {
    hdrs: [libc::mmsghdr; BATCH],
    /// The slot's payload area and, on a GRO socket, the spill area.
    iovs: [[libc::iovec; 2]; BATCH],
    names: [RawAddr; BATCH],
    /// Control data of each receive (`SO_RXQ_OVFL`, `UDP_GRO`); `u64`s for the `cmsghdr`
    /// alignment.
    controls: [[u64; CONTROL_LEN / 8]; BATCH],
}

impl RxBatch {
    fn new() -> Box<Self> {
        // SAFETY: all-zero is a valid value of these plain C structs.
        Box::new(unsafe { std::mem::zeroed() })
    }

    /// Points header `i` at its iovecs (`iovlen` of them), address and control area.
    fn link(&mut self, i: usize, iovlen: usize) {
        // SAFETY: all-zero is a valid msghdr.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut self.names[i]).cast();
        msg.msg_namelen = RawAddr::LEN as libc::socklen_t;
        msg.msg_iov = self.iovs[i].as_mut_ptr();
        msg.msg_iovlen = iovlen;
        msg.msg_control = (&raw mut self.controls[i]).cast();
        msg.msg_controllen = CONTROL_LEN;
        self.hdrs[i] = libc::mmsghdr {
            msg_hdr: msg,
            msg_len: 0,
        };
    }
}

/// Headers for one `sendmmsg` call: up to [`BATCH`] messages, each one datagram or a GSO
/// group of up to [`GSO_MAX_SEGMENTS`] (one iovec per datagram).
struct TxBatch {
    hdrs: [libc::mmsghdr; BATCH],
    iovs: [libc::iovec; BATCH * GSO_MAX_SEGMENTS],
    names: [RawAddr; BATCH],
    controls: [[u64; TX_CONTROL_LEN / 8]; BATCH],
    /// Datagrams in each message.
    segments: [usize; BATCH],
    /// Index into the run of each message's first datagram.
    first: [usize; BATCH],
}

impl TxBatch {
    fn new() -> Box<Self> {
        // SAFETY: all-zero is a valid value of these plain C structs and integers.
        Box::new(unsafe { std::mem::zeroed() })
    }
}

/// How a `recvmmsg` call went.
enum Batch {
    /// Every slot was filled: more may be waiting.
    Full,
    /// The socket is drained (or failed).
    Drained,
    /// No free slot to receive into.
    NoBuffers,
}

impl Epoll {
    /// Sets up an epoll instance with a pool of `buffers` slots; with `offload`, every
    /// registered socket gets UDP GRO and GSO where the kernel allows.
    pub(crate) fn new(buffers: usize, waker: Arc<Waker>, offload: bool) -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let this = Self {
            epfd,
            pool: BufPool::new(buffers),
            sockets: Sockets::new(),
            waker,
            aux_ready: false,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS],
            ready: Vec::with_capacity(MAX_EVENTS),
            cursor: 0,
            queue: VecDeque::with_capacity(BATCH),
            rx_bufs: Vec::with_capacity(BATCH),
            rx: RxBatch::new(),
            spill: Vec::new(),
            pending: Vec::with_capacity(MAX_PENDING),
            tx: TxBatch::new(),
            offload,
            counters: IoCounters::default(),
        };
        this.ctl(libc::EPOLL_CTL_ADD, this.waker.raw_fd(), WAKE_TOKEN)?;
        Ok(this)
    }

    fn ctl(&self, op: i32, fd: i32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: plain syscall on live fds; the event is read during the call only.
        if unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &raw mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One `recvmmsg` on socket `id` into free slots, queueing what arrived.
    fn recv_batch(&mut self, id: SocketId) -> Batch {
        let Some(entry) = self.sockets.get(id) else {
            return Batch::Drained;
        };
        let fd = entry.socket.as_raw_fd();
        let role = entry.role;
        let gro = entry.offload.gro;
        // A GRO receive may need a slot for each of its segments.
        let want = if gro {
            ((self.pool.free_len() + self.rx_bufs.len()) / GSO_MAX_SEGMENTS).clamp(1, BATCH)
        } else {
            BATCH
        };
        while self.rx_bufs.len() < want {
            let Some(buf) = self.pool.alloc() else { break };
            self.rx_bufs.push(buf);
        }
        let n = self.rx_bufs.len().min(want);
        if n == 0 {
            return Batch::NoBuffers;
        }
        if gro && self.spill.is_empty() {
            self.spill = vec![0; BATCH * SPILL_LEN];
        }
        for (i, buf) in self.rx_bufs[..n].iter().enumerate() {
            self.rx.iovs[i][0] = libc::iovec {
                // SAFETY: RX_START + MAX_PAYLOAD lies within the slot.
                iov_base: unsafe { self.pool.slot_ptr(buf.index()).add(RX_START) }.cast(),
                iov_len: MAX_PAYLOAD,
            };
            if gro {
                self.rx.iovs[i][1] = libc::iovec {
                    iov_base: self.spill[i * SPILL_LEN..].as_mut_ptr().cast(),
                    iov_len: SPILL_LEN,
                };
            }
            self.rx.link(i, if gro { 2 } else { 1 });
        }
        // SAFETY: `n` headers point at live iovecs, address buffers, control areas, slots
        // we own and the spill area.
        let ret = unsafe {
            libc::recvmmsg(
                fd,
                self.rx.hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let Ok(got) = usize::try_from(ret) else {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EINTR) => Batch::Full,
                Some(libc::EAGAIN) => Batch::Drained,
                _ => {
                    tracing::debug!(%err, "recvmmsg failed");
                    Batch::Drained
                }
            };
        };
        // The kernel's drop total only grows: the batch's last report is the newest.
        let mut overflow = None;
        let mut bufs = std::mem::take(&mut self.rx_bufs);
        for (i, buf) in bufs.drain(..got).enumerate() {
            let hdr = &self.rx.hdrs[i];
            let control_len = hdr.msg_hdr.msg_controllen.min(CONTROL_LEN);
            // SAFETY: the kernel wrote `control_len` bytes of control data into `controls[i]`.
            let control = unsafe {
                std::slice::from_raw_parts(
                    (&raw const self.rx.controls[i]).cast::<u8>(),
                    control_len,
                )
            };
            let control = parse_control(control);
            overflow = control.overflow.or(overflow);
            let truncated = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let name_len = (hdr.msg_hdr.msg_namelen as usize).min(RawAddr::LEN);
            let len = hdr.msg_len as usize;
            // SAFETY: the kernel wrote `name_len` bytes of a sockaddr into `names[i]`.
            let name = unsafe {
                std::slice::from_raw_parts((&raw const self.rx.names[i]).cast::<u8>(), name_len)
            };
            let Some(from) = decode_addr(name) else {
                self.pool.free(buf);
                continue;
            };
            let segment = control.segment.unwrap_or(len).max(1);
            if truncated || segment > MAX_PAYLOAD {
                self.counters.rx_truncated += len.div_ceil(segment).max(1) as u64;
                self.pool.free(buf);
                continue;
            }
            if len <= segment {
                self.counters.rx_packets += 1;
                self.counters.rx_bytes += len as u64;
                self.queue.push_back(Datagram {
                    role,
                    from,
                    buf,
                    len,
                });
                continue;
            }
            self.counters.rx_gro_batches += 1;
            self.split_gro(i, role, from, buf, len, segment);
        }
        self.rx_bufs = bufs;
        if let Some(total) = overflow
            && let Some(entry) = self.sockets.get_mut(id)
        {
            self.counters.rx_overflow += entry.overflow.update(total);
        }
        if got == n {
            Batch::Full
        } else {
            Batch::Drained
        }
    }

    /// Queues the segments of GRO receive `i` (`len` bytes in slot `buf` from [`RX_START`]
    /// on, then in its spill area) as one datagram each: the first stays in `buf`, the others
    /// are copied into slots of their own.
    fn split_gro(
        &mut self,
        i: usize,
        role: SocketRole,
        from: SocketAddr,
        buf: BufId,
        len: usize,
        segment: usize,
    ) {
        let spill = &self.spill[i * SPILL_LEN..(i + 1) * SPILL_LEN];
        // The first segment stays in `buf` and goes in front of the others.
        let first_at = self.queue.len();
        let mut offset = segment;
        while offset < len {
            let seg_len = segment.min(len - offset);
            let Some(out) = self.pool.alloc() else {
                self.counters.rx_no_buffer += (len - offset).div_ceil(segment) as u64;
                break;
            };
            let (src, dst) = self.pool.pair_mut(&buf, &out);
            let dst = &mut dst[RX_START..RX_START + seg_len];
            // The segment's bytes: what is left of the slot's payload area, then the spill.
            let in_slot = MAX_PAYLOAD.saturating_sub(offset).min(seg_len);
            if in_slot > 0 {
                dst[..in_slot].copy_from_slice(&src[RX_START + offset..][..in_slot]);
            }
            let spill_start = (offset + in_slot).saturating_sub(MAX_PAYLOAD);
            dst[in_slot..].copy_from_slice(&spill[spill_start..spill_start + seg_len - in_slot]);
            self.counters.rx_packets += 1;
            self.counters.rx_bytes += seg_len as u64;
            self.queue.push_back(Datagram {
                role,
                from,
                buf: out,
                len: seg_len,
            });
            offset += segment;
        }
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += segment as u64;
        self.queue.insert(
            first_at,
            Datagram {
                role,
                from,
                buf,
                len: segment,
            },
        );
    }

    /// Sends every queued datagram and frees its slot.
    fn send_pending(&mut self) {
        let mut start = 0;
        while start < self.pending.len() {
            let socket = self.pending[start].socket;
            let mut end = start + 1;
            while end < self.pending.len() && self.pending[end].socket == socket {
                end += 1;
            }
            self.send_run(socket, start..end);
            start = end;
        }
        for send in self.pending.drain(..) {
            self.pool.free(send.buf);
        }
    }

    /// `sendmmsg` of `pending[run]`, all from `socket`: consecutive datagrams to one address
    /// of one size as one GSO message where the socket allows.
    fn send_run(&mut self, socket: SocketId, run: Range<usize>) {
        let Some(entry) = self.sockets.get(socket) else {
            self.counters.tx_failed += run.len() as u64;
            return;
        };
        let fd = entry.socket.as_raw_fd();
        let gso = entry.offload.gso;
        let mut next = run.start;
        while next < run.end {
            // Up to BATCH messages from `next` on.
            let mut msgs = 0;
            let mut iov = 0;
            while msgs < BATCH && next < run.end {
                let first = &self.pending[next];
                let size = first.range.len();
                let end = if gso {
                    next + gso_group(&self.pending[next..run.end])
                } else {
                    next + 1
                };
                let (addr, addr_len) = RawAddr::encode(first.dst);
                self.tx.names[msgs] = addr;
                let iov_start = iov;
                for send in &self.pending[next..end] {
                    self.tx.iovs[iov] = libc::iovec {
                        // SAFETY: the range lies within the slot (checked in `send`).
                        iov_base: unsafe {
                            self.pool.slot_ptr(send.buf.index()).add(send.range.start)
                        }
                        .cast(),
                        iov_len: send.range.len(),
                    };
                    iov += 1;
                }
                // SAFETY: all-zero is a valid msghdr.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_name = (&raw mut self.tx.names[msgs]).cast();
                msg.msg_namelen = addr_len;
                msg.msg_iov = &raw mut self.tx.iovs[iov_start];
                msg.msg_iovlen = end - next;
                if end - next > 1 {
                    let control = &mut self.tx.controls[msgs];
                    write_segment_cmsg(control, size);
                    msg.msg_control = control.as_mut_ptr().cast();
                    msg.msg_controllen = TX_CONTROL_LEN;
                }
                self.tx.hdrs[msgs] = libc::mmsghdr {
                    msg_hdr: msg,
                    msg_len: 0,
                };
                self.tx.segments[msgs] = end - next;
                self.tx.first[msgs] = next;
                msgs += 1;
                next = end;
            }
            let mut done = 0;
            while done < msgs {
                // SAFETY: headers `done..msgs` point at live iovecs, addresses, control data
                // and slots.
                let ret = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.tx.hdrs.as_mut_ptr().add(done),
                        (msgs - done) as u32,
                        libc::MSG_DONTWAIT,
                    )
                };
                let Ok(sent) = usize::try_from(ret) else {
                    let err = io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EINTR) => {}
                        Some(libc::EAGAIN | libc::ENOBUFS) => {
                            self.counters.tx_failed += (self.tx.first[done]..run.end).len() as u64;
                            return;
                        }
                        Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE)
                            if self.tx.segments[done] > 1 =>
                        {
                            // The kernel refused the GSO message: no more GSO on this socket,
                            // and the rest of the run again, one datagram per message.
                            log_gso_failed(&err);
                            self.counters.udp_offload_refused += 1;
                            if let Some(entry) = self.sockets.get_mut(socket) {
                                entry.offload.gso = false;
                            }
                            let rest = self.tx.first[done]..run.end;
                            self.send_run(socket, rest);
                            return;
                        }
                        _ => {
                            // This message failed (e.g. unreachable); the rest may not.
                            tracing::debug!(%err, "sendmmsg failed");
                            self.counters.tx_failed += self.tx.segments[done] as u64;
                            done += 1;
                        }
                    }
                    continue;
                };
                for m in done..done + sent {
                    let segments = self.tx.segments[m];
                    self.counters.tx_packets += segments as u64;
                    self.counters.tx_bytes += u64::from(self.tx.hdrs[m].msg_len);
                    if segments > 1 {
                        self.counters.tx_gso_sends += 1;
                    }
                }
                done += sent;
            }
        }
    }
}

impl Io for Epoll {
    fn register(&mut self, socket: UdpSocket, role: SocketRole) -> io::Result<SocketId> {
        socket.set_nonblocking(true)?;
        if let Err(err) = enable_overflow_count(&socket) {
            tracing::debug!(%err, "SO_RXQ_OVFL refused: this socket's overflow drops go uncounted");
        }
        let mut offload = Offload::default();
        if self.offload {
            let refused;
            (offload, refused) = enable_offload(&socket);
            self.counters.udp_offload_refused += u64::from(refused);
        }
        let fd = socket.as_raw_fd();
        let id = self.sockets.insert(Entry {
            socket,
            role,
            overflow: OverflowSeen::default(),
            offload,
        });
        if let Err(err) = self.ctl(libc::EPOLL_CTL_ADD, fd, id.to_u64()) {
            self.sockets.remove(id);
            return Err(err);
        }
        Ok(id)
    }

    fn unregister(&mut self, id: SocketId) {
        // Sends queued to this socket go out first, in order.
        self.send_pending();
        if let Some(entry) = self.sockets.remove(id) {
            let _ = self.ctl(libc::EPOLL_CTL_DEL, entry.socket.as_raw_fd(), 0);
        }
    }

    fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.send_pending();
        let timeout_ms = match timeout {
            _ if !self.queue.is_empty() => 0,
            None => -1,
            Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
        };
        self.ready.clear();
        self.cursor = 0;
        // SAFETY: the event buffer is live and its length is passed.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                MAX_EVENTS as i32,
                timeout_ms,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                return Ok(());
            }
            return Err(err);
        };
        for event in &self.events[..n] {
            let token = event.u64;
            if token == WAKE_TOKEN {
                self.waker.drain();
            } else if token == AUX_TOKEN {
                self.aux_ready = true;
            } else {
                self.ready.push(SocketId::from_u64(token));
            }
        }
        Ok(())
    }

    fn reap(&mut self) -> Option<Datagram> {
        loop {
            if let Some(datagram) = self.queue.pop_front() {
                return Some(datagram);
            }
            let id = *self.ready.get(self.cursor)?;
            match self.recv_batch(id) {
                Batch::Full => {}
                Batch::Drained => self.cursor += 1,
                Batch::NoBuffers => return None,
            }
        }
    }

    fn alloc(&mut self) -> Option<BufId> {
        self.pool.alloc()
    }

    fn release(&mut self, buf: BufId) {
        self.pool.free(buf);
    }

    fn bufs(&mut self) -> &mut BufPool {
        &mut self.pool
    }

    fn send(&mut self, socket: SocketId, dst: SocketAddr, buf: BufId, range: Range<usize>) {
        assert!(range.start <= range.end && range.end <= SLOT_SIZE);
        if self.pending.len() == MAX_PENDING {
            self.send_pending();
        }
        self.pending.push(PendingSend {
            socket,
            dst,
            buf,
            range,
        });
    }

    fn flush(&mut self) {
        self.send_pending();
    }

    fn watch_aux(&mut self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, AUX_TOKEN)
    }

    fn take_aux_ready(&mut self) -> bool {
        std::mem::take(&mut self.aux_ready)
    }

    fn counters(&self) -> IoCounters {
        self.counters
    }

    fn close(&mut self) {
        self.send_pending();
        let ids: Vec<SocketId> = self.sockets.ids().collect();
        for id in ids {
            self.unregister(id);
        }
        while let Some(datagram) = self.queue.pop_front() {
            self.pool.free(datagram.buf);
        }
        for buf in self.rx_bufs.drain(..) {
            self.pool.free(buf);
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        self.close();
    }
}
