//! Binding the dataplane's sockets: the UDP listeners and relay sockets of the TURN side and
//! the TCP listeners of the node relay, with the options every worker's copy shares.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, Socket, Type};

/// Receive buffer asked for on listener sockets: absorbs bursts while a worker handles a
/// turn. The kernel caps it at `net.core.rmem_max`.
const LISTENER_RCVBUF: usize = 4 << 20;

/// Receive buffer asked for on relay sockets. One relay socket carries the peers' traffic of
/// one allocation, which arrives in bursts too (a browser's data channels, a WireGuard peer's
/// batches); the system default (`net.core.rmem_default`, about 208 KiB) overflowed under a
/// browser's load. A quarter of the listener's: a worker may hold thousands of these, and
/// the kernel charges only what is queued. Capped by `net.core.rmem_max` as well.
const RELAY_RCVBUF: usize = 1 << 20;

/// Whether the short receive buffer of a listener, resp. relay, socket was logged (once per
/// process: every socket of the kind gets the same cap).
static LISTENER_RCVBUF_SHORT: AtomicBool = AtomicBool::new(false);
static RELAY_RCVBUF_SHORT: AtomicBool = AtomicBool::new(false);

/// Binds a UDP socket, with SO_REUSEPORT for listeners (every worker binds the same port and
/// the kernel spreads clients over them by 4-tuple hash), and a larger receive buffer than
/// the system's default ([`LISTENER_RCVBUF`], [`RELAY_RCVBUF`]). An IPv6 wildcard accepts
/// IPv4 too.
pub(crate) fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
        size_recv_buffer(&socket, LISTENER_RCVBUF, "listener", &LISTENER_RCVBUF_SHORT);
    } else {
        size_recv_buffer(&socket, RELAY_RCVBUF, "relay", &RELAY_RCVBUF_SHORT);
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Asks for a `wanted`-byte receive buffer and reads back what the kernel granted: it caps
/// the request at `net.core.rmem_max` (and reports twice what it grants, its bookkeeping
/// share included). Best effort: a smaller buffer only means earlier drops under bursts
/// (counted as `rx_overflow`), so a short one is logged once per kind, not refused.
fn size_recv_buffer(socket: &Socket, wanted: usize, kind: &str, logged: &AtomicBool) {
    let granted = socket
        .set_recv_buffer_size(wanted)
        .and_then(|()| socket.recv_buffer_size())
        .map(|reported| reported / 2);
    match granted {
        Ok(granted) if granted >= wanted => {}
        outcome => {
            if !logged.swap(true, Ordering::Relaxed) {
                let granted = outcome.map_or_else(|err| err.to_string(), |g| format!("{g} bytes"));
                tracing::warn!(
                    kind,
                    wanted,
                    %granted,
                    "UDP {kind} sockets get a smaller receive buffer than asked for; raise \
                     net.core.rmem_max to at least {wanted} for fewer drops under bursts"
                );
            }
        }
    }
}

/// Binds a TCP listener (non-blocking, SO_REUSEPORT: every worker binds the same port). An
/// IPv6 wildcard accepts IPv4 too.
pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relay sockets get [`RELAY_RCVBUF`] where `net.core.rmem_max` allows it, and what it
    /// allows otherwise; never the system default.
    #[test]
    fn relay_sockets_get_a_sized_receive_buffer() {
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let socket = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let granted = socket2::SockRef::from(&socket).recv_buffer_size().unwrap() / 2;
        assert_eq!(granted, RELAY_RCVBUF.min(rmem_max));
        let listener = bind_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let granted = socket2::SockRef::from(&listener)
            .recv_buffer_size()
            .unwrap()
            / 2;
        assert_eq!(granted, LISTENER_RCVBUF.min(rmem_max));
    }
}
