//! The IP addresses of this host's network interfaces (`getifaddrs`), read once at start so
//! the TURN peer filter knows every address of the host as its own, not only the relay and
//! listener addresses: a client must not reach the host's services on any of them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Every IPv4 and IPv6 address of every interface, loopback included, deduplicated, in the
/// kernel's order.
pub fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: plain call with a valid out-pointer; the result is checked, and the list it
    // returns is freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let entry = unsafe { &*cursor };
        let addr = entry.ifa_addr;
        if !addr.is_null() {
            // SAFETY: a non-null ifa_addr points to a sockaddr whose family field is valid.
            let family = i32::from(unsafe { (*addr).sa_family });
            let ip = match family {
                libc::AF_INET => {
                    // SAFETY: AF_INET says the sockaddr is a sockaddr_in.
                    let sin = unsafe { addr.cast::<libc::sockaddr_in>().read_unaligned() };
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))))
                }
                libc::AF_INET6 => {
                    // SAFETY: AF_INET6 says the sockaddr is a sockaddr_in6.
                    let sin6 = unsafe { addr.cast::<libc::sockaddr_in6>().read_unaligned() };
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            };
            if let Some(ip) = ip
                && !addresses.contains(&ip)
            {
                addresses.push(ip);
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_among_the_interface_addresses() {
        let addresses = interface_addresses().unwrap();
        assert!(
            addresses.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addresses:?}"
        );
        let mut unique = addresses.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), addresses.len());
    }
}
