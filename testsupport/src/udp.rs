//! UDP as a batching peer sends it.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;

/// Sends `data` from `socket` to `dst` (IPv4) as one UDP GSO message of `segment`-byte
/// datagrams (`UDP_SEGMENT`; the last may be shorter), as a WireGuard peer sends a batch.
/// Panics unless the kernel takes all of it.
pub fn send_gso(socket: &UdpSocket, dst: SocketAddr, data: &[u8], segment: u16) {
    let SocketAddr::V4(dst) = dst else {
        panic!("send_gso: IPv4 only, not {dst}");
    };
    let mut addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: dst.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*dst.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // Room for one cmsghdr and its u16, 8-aligned.
    let mut control = [0u64; 3];
    // SAFETY: all-zero is a valid cmsghdr.
    let mut hdr: libc::cmsghdr = unsafe { std::mem::zeroed() };
    hdr.cmsg_level = libc::SOL_UDP;
    hdr.cmsg_type = libc::UDP_SEGMENT;
    hdr.cmsg_len = size_of::<libc::cmsghdr>() + 2;
    // SAFETY: the control area holds a cmsghdr and a u16 behind it; unaligned writes.
    unsafe {
        let base = control.as_mut_ptr().cast::<u8>();
        base.cast::<libc::cmsghdr>().write_unaligned(hdr);
        base.add(size_of::<libc::cmsghdr>())
            .cast::<u16>()
            .write_unaligned(segment);
    }
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut addr).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 3]>();
    // SAFETY: every pointer in `msg` is live for the call.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &raw const msg, 0) };
    assert_eq!(
        usize::try_from(sent).ok(),
        Some(data.len()),
        "GSO send: {}",
        std::io::Error::last_os_error()
    );
}
