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
//! * Sends: queued by [`send`](Io::send), flushed at the end of each turn with one `sendmmsg` per
//!   run of consecutive sends on the same socket. A full socket buffer (`EAGAIN`) drops the
//!   rest of the run, counted in `tx_failed`: UDP has no back-pressure to propagate.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use super::bufs::{MAX_PAYLOAD, SLOT_SIZE};
use super::{
    BufId, BufPool, CONTROL_LEN, Datagram, Io, IoCounters, OverflowSeen, RX_START, RawAddr,
    SocketId, SocketRole, Sockets, Waker, decode_addr, enable_overflow_count, overflow_total,
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
    rx: Box<MsgBatch>,
    pending: Vec<PendingSend>,
    tx: Box<MsgBatch>,
    counters: IoCounters,
}

struct Entry {
    socket: UdpSocket,
    role: SocketRole,
    overflow: OverflowSeen,
}

struct PendingSend {
    socket: SocketId,
    dst: SocketAddr,
    buf: BufId,
    range: Range<usize>,
}

/// Headers for one `recvmmsg`/`sendmmsg` call; rebuilt per call, boxed so the pointers
/// between them stay put.
struct MsgBatch {
    hdrs: [libc::mmsghdr; BATCH],
    iovs: [libc::iovec; BATCH],
    names: [RawAddr; BATCH],
    /// Control data of each receive (`SO_RXQ_OVFL`); `u64`s for the `cmsghdr` alignment.
    controls: [[u64; CONTROL_LEN / 8]; BATCH],
}

impl MsgBatch {
    fn new() -> Box<Self> {
        // SAFETY: all-zero is a valid value of these plain C structs.
        Box::new(unsafe { std::mem::zeroed() })
    }

    /// Points header `i` at iovec `i` and address `i`, and with `control` at control area
    /// `i` (receives).
    fn link(&mut self, i: usize, namelen: libc::socklen_t, control: bool) {
        // SAFETY: all-zero is a valid msghdr.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut self.names[i]).cast();
        msg.msg_namelen = namelen;
        msg.msg_iov = &raw mut self.iovs[i];
        msg.msg_iovlen = 1;
        if control {
            msg.msg_control = (&raw mut self.controls[i]).cast();
            msg.msg_controllen = CONTROL_LEN;
        }
        self.hdrs[i] = libc::mmsghdr {
            msg_hdr: msg,
            msg_len: 0,
        };
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
    /// Sets up an epoll instance with a pool of `buffers` slots.
    pub(crate) fn new(buffers: usize, waker: Arc<Waker>) -> io::Result<Self> {
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
            rx: MsgBatch::new(),
            pending: Vec::with_capacity(MAX_PENDING),
            tx: MsgBatch::new(),
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
        while self.rx_bufs.len() < BATCH {
            let Some(buf) = self.pool.alloc() else { break };
            self.rx_bufs.push(buf);
        }
        let n = self.rx_bufs.len();
        if n == 0 {
            return Batch::NoBuffers;
        }
        for (i, buf) in self.rx_bufs.iter().enumerate() {
            self.rx.iovs[i] = libc::iovec {
                // SAFETY: RX_START + MAX_PAYLOAD lies within the slot.
                iov_base: unsafe { self.pool.slot_ptr(buf.index()).add(RX_START) }.cast(),
                iov_len: MAX_PAYLOAD,
            };
            self.rx.link(i, RawAddr::LEN as libc::socklen_t, true);
        }
        // SAFETY: `n` headers point at live iovecs, address buffers and slots we own.
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
        for (i, buf) in self.rx_bufs.drain(..got).enumerate() {
            let hdr = &self.rx.hdrs[i];
            let control_len = hdr.msg_hdr.msg_controllen.min(CONTROL_LEN);
            // SAFETY: the kernel wrote `control_len` bytes of control data into `controls[i]`.
            let control = unsafe {
                std::slice::from_raw_parts(
                    (&raw const self.rx.controls[i]).cast::<u8>(),
                    control_len,
                )
            };
            overflow = overflow_total(control).or(overflow);
            if hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.counters.rx_truncated += 1;
                self.pool.free(buf);
                continue;
            }
            let name_len = (hdr.msg_hdr.msg_namelen as usize).min(RawAddr::LEN);
            // SAFETY: the kernel wrote `name_len` bytes of a sockaddr into `names[i]`.
            let name = unsafe {
                std::slice::from_raw_parts((&raw const self.rx.names[i]).cast::<u8>(), name_len)
            };
            let Some(from) = decode_addr(name) else {
                self.pool.free(buf);
                continue;
            };
            let len = hdr.msg_len as usize;
            self.counters.rx_packets += 1;
            self.counters.rx_bytes += len as u64;
            self.queue.push_back(Datagram {
                role,
                from,
                buf,
                len,
            });
        }
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

    /// Sends every queued datagram and frees its slot.
    fn send_pending(&mut self) {
        let mut start = 0;
        while start < self.pending.len() {
            let socket = self.pending[start].socket;
            let mut end = start + 1;
            while end < self.pending.len()
                && end - start < BATCH
                && self.pending[end].socket == socket
            {
                end += 1;
            }
            self.send_run(socket, start..end);
            start = end;
        }
        for send in self.pending.drain(..) {
            self.pool.free(send.buf);
        }
    }

    /// `sendmmsg` of `pending[run]`, all from `socket`.
    fn send_run(&mut self, socket: SocketId, run: Range<usize>) {
        let n = run.len();
        let Some(fd) = self.sockets.get(socket).map(|e| e.socket.as_raw_fd()) else {
            self.counters.tx_failed += n as u64;
            return;
        };
        for (i, send) in self.pending[run].iter().enumerate() {
            let (addr, addr_len) = RawAddr::encode(send.dst);
            self.tx.names[i] = addr;
            self.tx.iovs[i] = libc::iovec {
                // SAFETY: the range lies within the slot (checked in `send`).
                iov_base: unsafe { self.pool.slot_ptr(send.buf.index()).add(send.range.start) }
                    .cast(),
                iov_len: send.range.len(),
            };
            self.tx.link(i, addr_len, false);
        }
        let mut done = 0;
        while done < n {
            // SAFETY: headers `done..n` point at live iovecs, addresses and slots.
            let ret = unsafe {
                libc::sendmmsg(
                    fd,
                    self.tx.hdrs.as_mut_ptr().add(done),
                    (n - done) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            let Ok(sent) = usize::try_from(ret) else {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN | libc::ENOBUFS) => {
                        self.counters.tx_failed += (n - done) as u64;
                        return;
                    }
                    _ => {
                        // This message failed (e.g. unreachable); the rest may not.
                        tracing::debug!(%err, "sendmmsg failed");
                        self.counters.tx_failed += 1;
                        done += 1;
                    }
                }
                continue;
            };
            for hdr in &self.tx.hdrs[done..done + sent] {
                self.counters.tx_packets += 1;
                self.counters.tx_bytes += u64::from(hdr.msg_len);
            }
            done += sent;
        }
    }
}

impl Io for Epoll {
    fn register(&mut self, socket: UdpSocket, role: SocketRole) -> io::Result<SocketId> {
        socket.set_nonblocking(true)?;
        if let Err(err) = enable_overflow_count(&socket) {
            tracing::debug!(%err, "SO_RXQ_OVFL refused: this socket's overflow drops go uncounted");
        }
        let fd = socket.as_raw_fd();
        let id = self.sockets.insert(Entry {
            socket,
            role,
            overflow: OverflowSeen::default(),
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
