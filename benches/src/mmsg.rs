//! Batched UDP I/O: `sendmmsg(2)` and `recvmmsg(2)` over IPv4 sockets, one system call per
//! batch, so neither the generator nor the raw forwarder pays a syscall per packet.
//!
//! This is the only module with `unsafe` code. Both types rebuild their `mmsghdr`/`iovec`
//! arrays on every call from buffers they own or borrow for the duration of the call, so no
//! pointer outlives the data it points to.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::ptr;

/// How [`RecvBatch::recv`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Return at once, with 0 packets if none are queued (`MSG_DONTWAIT`).
    No,
    /// Block until at least one packet arrives, or the socket's read timeout passes
    /// (`MSG_WAITFORONE`); then take whatever else is queued.
    ForOne,
}

/// Up to `count` receive buffers of `slot` bytes each, filled by one `recvmmsg`.
pub struct RecvBatch {
    buf: Vec<u8>,
    slot: usize,
    lens: Vec<usize>,
    sources: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Control data per receive (the `UDP_GRO` segment size), `u64`s for alignment.
    controls: Vec<[u64; 4]>,
    /// The GRO segment size of each receive, 0 for a single datagram.
    segments: Vec<usize>,
    filled: usize,
}

/// Turns on `UDP_GRO` on `socket`: a receive may then hold a run of one sender's datagrams
/// (see [`RecvBatch::datagrams`]).
pub fn enable_gro(socket: &impl AsRawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: plain setsockopt on a live fd with a c_int option value.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            ptr::from_ref(&one).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The `UDP_GRO` segment size in a receive's control data, if any.
fn gro_segment(control: &[u8]) -> Option<usize> {
    const HDR: usize = size_of::<libc::cmsghdr>();
    let mut rest = control;
    while rest.len() >= HDR {
        // SAFETY: `rest` holds at least a cmsghdr; read_unaligned copes with any alignment.
        let hdr = unsafe { rest.as_ptr().cast::<libc::cmsghdr>().read_unaligned() };
        let len = hdr.cmsg_len;
        if len < HDR || len > rest.len() {
            return None;
        }
        if hdr.cmsg_level == libc::SOL_UDP && hdr.cmsg_type == libc::UDP_GRO {
            let value = rest.get(HDR..HDR + 4)?;
            return usize::try_from(i32::from_ne_bytes(value.try_into().ok()?)).ok();
        }
        rest = rest.get(len.next_multiple_of(size_of::<usize>())..)?;
    }
    None
}

impl RecvBatch {
    /// `count` buffers of `slot` bytes (datagrams longer than `slot` are truncated).
    pub fn new(count: usize, slot: usize) -> Self {
        let count = count.max(1);
        Self {
            buf: vec![0; count * slot],
            slot,
            lens: vec![0; count],
            sources: vec![zeroed_sockaddr_in(); count],
            iovs: Vec::with_capacity(count),
            hdrs: Vec::with_capacity(count),
            controls: vec![[0; 4]; count],
            segments: vec![0; count],
            filled: 0,
        }
    }

    /// Receives up to `count` datagrams from `socket`; returns how many. A timeout, an
    /// interrupted call or (with [`Wait::No`]) an empty queue is `Ok(0)`.
    pub fn recv(&mut self, socket: &impl AsRawFd, wait: Wait) -> io::Result<usize> {
        let count = self.lens.len();
        self.filled = 0;
        self.iovs.clear();
        self.hdrs.clear();
        let base = self.buf.as_mut_ptr();
        for i in 0..count {
            self.iovs.push(libc::iovec {
                // SAFETY: `i * slot` is within `buf` (its length is `count * slot`).
                iov_base: unsafe { base.add(i * self.slot) }.cast(),
                iov_len: self.slot,
            });
        }
        let sources = self.sources.as_mut_ptr();
        let iovs = self.iovs.as_mut_ptr();
        let controls = self.controls.as_mut_ptr();
        for i in 0..count {
            let mut hdr = zeroed_mmsghdr();
            // SAFETY (the `add`s): `i < count`, the length of `sources`, `iovs` and
            // `controls`.
            hdr.msg_hdr.msg_name = unsafe { sources.add(i) }.cast();
            hdr.msg_hdr.msg_namelen = sockaddr_in_len();
            hdr.msg_hdr.msg_iov = unsafe { iovs.add(i) };
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = unsafe { controls.add(i) }.cast();
            hdr.msg_hdr.msg_controllen = size_of::<[u64; 4]>();
            self.hdrs.push(hdr);
        }
        let flags = match wait {
            Wait::No => libc::MSG_DONTWAIT,
            Wait::ForOne => libc::MSG_WAITFORONE,
        };
        let vlen = u32::try_from(count).unwrap_or(u32::MAX);
        // SAFETY: `hdrs` holds `count` headers whose name and iovec pointers point into
        // `sources`, `iovs` and `buf`, all owned by `self`, alive and not moved until the call
        // returns; each iovec covers `slot` bytes inside `buf`.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                vlen,
                flags,
                ptr::null_mut(),
            )
        };
        let Ok(received) = usize::try_from(received) else {
            return quiet_error(io::Error::last_os_error());
        };
        for i in 0..received {
            self.lens[i] =
                usize::try_from(self.hdrs[i].msg_len).map_or(0, |len| len.min(self.slot));
            let control_len = self.hdrs[i]
                .msg_hdr
                .msg_controllen
                .min(size_of::<[u64; 4]>());
            // SAFETY: the kernel wrote `control_len` bytes of control data there.
            let control = unsafe {
                std::slice::from_raw_parts(self.controls[i].as_ptr().cast::<u8>(), control_len)
            };
            self.segments[i] = gro_segment(control).unwrap_or(0);
        }
        self.filled = received;
        Ok(received)
    }

    /// Datagrams received by the last [`recv`](Self::recv).
    pub const fn len(&self) -> usize {
        self.filled
    }

    /// Whether the last [`recv`](Self::recv) got nothing.
    pub const fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// The `i`th datagram of the last receive (empty past [`len`](Self::len)).
    pub fn packet(&self, i: usize) -> &[u8] {
        if i >= self.filled {
            return &[];
        }
        &self.buf[i * self.slot..i * self.slot + self.lens[i]]
    }

    /// The datagrams of the `i`th receive: one, or with GRO the run it holds.
    pub fn datagrams(&self, i: usize) -> std::slice::Chunks<'_, u8> {
        let packet = self.packet(i);
        let segment = self
            .segments
            .get(i)
            .copied()
            .filter(|&s| s > 0 && i < self.filled)
            .unwrap_or(packet.len())
            .max(1);
        packet.chunks(segment)
    }

    /// Where the `i`th datagram came from, if it was IPv4.
    pub fn source(&self, i: usize) -> Option<SocketAddrV4> {
        let addr = self.sources.get(i).filter(|_| i < self.filled)?;
        if i32::from(addr.sin_family) != libc::AF_INET {
            return None;
        }
        Some(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        ))
    }
}

/// Scratch space for `sendmmsg`: the caller passes the packets, borrowed for one call.
pub struct SendBatch {
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    dst: libc::sockaddr_in,
}

impl SendBatch {
    /// Room for `count` packets per call (more are sent by later calls).
    pub fn new(count: usize) -> Self {
        Self {
            iovs: Vec::with_capacity(count.max(1)),
            hdrs: Vec::with_capacity(count.max(1)),
            dst: zeroed_sockaddr_in(),
        }
    }

    /// Sends `packets` (at most the batch's count; the rest are ignored) on `socket`, to `dst`
    /// or, if `None`, to the address the socket is connected to. Returns how many the kernel
    /// took, from the first; a full send buffer or an interrupted call is `Ok(0)`.
    pub fn send<'p>(
        &mut self,
        socket: &impl AsRawFd,
        dst: Option<SocketAddrV4>,
        packets: impl IntoIterator<Item = &'p [u8]>,
    ) -> io::Result<usize> {
        let capacity = self.iovs.capacity();
        self.iovs.clear();
        self.hdrs.clear();
        for packet in packets.into_iter().take(capacity) {
            self.iovs.push(libc::iovec {
                // sendmmsg only reads through this pointer.
                iov_base: packet.as_ptr().cast_mut().cast(),
                iov_len: packet.len(),
            });
        }
        if self.iovs.is_empty() {
            return Ok(0);
        }
        let name = match dst {
            Some(dst) => {
                self.dst = sockaddr_in(dst);
                ptr::from_mut(&mut self.dst).cast()
            }
            None => ptr::null_mut(),
        };
        let namelen = if dst.is_some() { sockaddr_in_len() } else { 0 };
        let iovs = self.iovs.as_mut_ptr();
        for i in 0..self.iovs.len() {
            let mut hdr = zeroed_mmsghdr();
            hdr.msg_hdr.msg_name = name;
            hdr.msg_hdr.msg_namelen = namelen;
            // SAFETY: `i` is below the length of `iovs`.
            hdr.msg_hdr.msg_iov = unsafe { iovs.add(i) };
            hdr.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(hdr);
        }
        let vlen = u32::try_from(self.hdrs.len()).unwrap_or(u32::MAX);
        // SAFETY: every header points at one iovec in `iovs` and (optionally) at `self.dst`,
        // both owned by `self`; every iovec points at a packet borrowed for `'p`, which outlives
        // this call. The kernel only reads the packets.
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                vlen,
                libc::MSG_DONTWAIT,
            )
        };
        self.iovs.clear();
        self.hdrs.clear();
        match usize::try_from(sent) {
            Ok(sent) => Ok(sent),
            Err(_) => quiet_error(io::Error::last_os_error()),
        }
    }
}

/// Sends `packets` (all of `segment` bytes but the last, which may be shorter; at most 64
/// and 65,000 bytes in all) on `socket`, to `dst` or, if `None`, to the address it is
/// connected to, as one UDP GSO message: the kernel splits it into the datagrams. Returns
/// how many went (all or, with a full send buffer or an interrupted call, none).
pub fn send_gso<'p>(
    socket: &impl AsRawFd,
    dst: Option<SocketAddrV4>,
    packets: impl IntoIterator<Item = &'p [u8]>,
    segment: usize,
    iovs: &mut Vec<libc::iovec>,
) -> io::Result<usize> {
    iovs.clear();
    for packet in packets {
        iovs.push(libc::iovec {
            // sendmsg only reads through this pointer.
            iov_base: packet.as_ptr().cast_mut().cast(),
            iov_len: packet.len(),
        });
    }
    if iovs.is_empty() {
        return Ok(0);
    }
    let mut control = [0u64; 3];
    // SAFETY: all-zero is a valid cmsghdr.
    let mut cmsg: libc::cmsghdr = unsafe { mem::zeroed() };
    cmsg.cmsg_level = libc::SOL_UDP;
    cmsg.cmsg_type = libc::UDP_SEGMENT;
    cmsg.cmsg_len = size_of::<libc::cmsghdr>() + size_of::<u16>();
    let segment = u16::try_from(segment).map_err(|_| io::Error::other("segment too large"))?;
    // SAFETY: `control` holds a cmsghdr and a u16 behind it; unaligned writes.
    unsafe {
        let base = control.as_mut_ptr().cast::<u8>();
        base.cast::<libc::cmsghdr>().write_unaligned(cmsg);
        base.add(size_of::<libc::cmsghdr>())
            .cast::<u16>()
            .write_unaligned(segment);
    }
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    let mut name = dst.map(sockaddr_in);
    if let Some(name) = name.as_mut() {
        msg.msg_name = ptr::from_mut(name).cast();
        msg.msg_namelen = sockaddr_in_len();
    }
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = iovs.len();
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 3]>();
    // SAFETY: the header points at `iovs` (packets borrowed for `'p`), `control` and `name`,
    // alive for the call; the kernel only reads them.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &raw const msg, libc::MSG_DONTWAIT) };
    let count = iovs.len();
    iovs.clear();
    match usize::try_from(sent) {
        Ok(_) => Ok(count),
        Err(_) => quiet_error(io::Error::last_os_error()),
    }
}

/// `Ok(0)` for the errors that only mean "nothing this time".
fn quiet_error(error: io::Error) -> io::Result<usize> {
    let nothing = matches!(
        error.raw_os_error(),
        Some(libc::EAGAIN | libc::EINTR | libc::ETIMEDOUT | libc::ENOBUFS)
    );
    if nothing { Ok(0) } else { Err(error) }
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    let mut raw = zeroed_sockaddr_in();
    raw.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default();
    raw.sin_port = addr.port().to_be();
    raw.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    raw
}

fn sockaddr_in_len() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).unwrap_or(0)
}

fn zeroed_sockaddr_in() -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is a plain C struct of integers; all zeros is a valid value.
    unsafe { mem::zeroed() }
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct of integers and raw pointers; all zeros (null
    // pointers, zero lengths) is a valid value.
    unsafe { mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Duration;

    use super::*;

    fn v4(socket: &UdpSocket) -> SocketAddrV4 {
        match socket.local_addr().unwrap() {
            std::net::SocketAddr::V4(addr) => addr,
            std::net::SocketAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
        }
    }

    #[test]
    fn a_batch_goes_out_and_comes_back_in_order() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let packets: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let mut send = SendBatch::new(4);
        let sent = send
            .send(
                &sender,
                Some(v4(&receiver)),
                packets.iter().map(Vec::as_slice),
            )
            .unwrap();
        assert_eq!(sent, 4, "at most the batch's count");

        let mut recv = RecvBatch::new(8, 64);
        let mut got = Vec::new();
        while got.len() < 4 {
            let n = recv.recv(&receiver, Wait::ForOne).unwrap();
            assert!(n > 0, "timed out");
            for i in 0..recv.len() {
                assert_eq!(recv.source(i), Some(v4(&sender)));
                got.push(recv.packet(i).to_vec());
            }
        }
        assert_eq!(got, packets[..4]);
        assert_eq!(recv.packet(99), &[] as &[u8]);
    }

    #[test]
    fn a_gso_batch_arrives_as_one_gro_receive_and_splits_back() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        enable_gro(&receiver).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.connect(receiver.local_addr().unwrap()).unwrap();
        let packets: Vec<Vec<u8>> = (0..10u8)
            .map(|i| vec![i; if i == 9 { 30 } else { 100 }])
            .collect();
        let mut iovs = Vec::new();
        let sent = send_gso(
            &sender,
            None,
            packets.iter().map(Vec::as_slice),
            100,
            &mut iovs,
        )
        .unwrap();
        assert_eq!(sent, 10);
        let mut recv = RecvBatch::new(4, 65_536);
        let mut got = Vec::new();
        let mut receives = 0;
        while got.len() < 10 {
            let n = recv.recv(&receiver, Wait::ForOne).unwrap();
            assert!(n > 0, "timed out");
            receives += n;
            for i in 0..recv.len() {
                got.extend(recv.datagrams(i).map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got, packets);
        assert_eq!(receives, 1, "one coalesced receive");
    }

    #[test]
    fn empty_queue_without_waiting_is_zero() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut recv = RecvBatch::new(4, 64);
        assert_eq!(recv.recv(&receiver, Wait::No).unwrap(), 0);
        assert!(recv.is_empty());
    }

    #[test]
    fn connected_sockets_need_no_destination() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.connect(receiver.local_addr().unwrap()).unwrap();
        let mut send = SendBatch::new(2);
        assert_eq!(send.send(&sender, None, [&b"ab"[..]]).unwrap(), 1);
        let mut recv = RecvBatch::new(2, 1);
        assert_eq!(recv.recv(&receiver, Wait::ForOne).unwrap(), 1);
        assert_eq!(recv.packet(0), b"a", "truncated to the slot");
    }
}
