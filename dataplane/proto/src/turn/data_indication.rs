//! Writing a Data indication around a peer's payload in place ([RFC 8656 §11.4]), for peers
//! without a channel.
//!
//! The shell receives the payload at `buf[HEADROOM..HEADROOM + len]`; the header goes right
//! before it and the padding right after, so nothing is copied:
//!
//! ```text
//!   start                                                      HEADROOM
//!     │ STUN header (20)  │ XOR-PEER-ADDRESS TLV (4 + 8 or 20) │ DATA TLV header (4) │ payload │ pad to 4 │
//!     │ 0x0017, length,   │ 0x0012, 8|20, 0, family,           │ 0x0013, len         │         │ zeros    │
//!     │ cookie, random id │ X-port, X-address                  │                     │         │          │
//! ```
//!
//! IPv4 peers start at `HEADROOM - 36`, IPv6 peers at `HEADROOM - 48 = 0`.
//!
//! [RFC 8656 §11.4]: https://www.rfc-editor.org/rfc/rfc8656#section-11.4

use std::net::SocketAddr;
use std::ops::Range;

use super::HEADROOM;
use crate::stats::DropReason;
use crate::stun::{
    ATTR_HEADER_LEN, AttrType, Class, HEADER_LEN, MAGIC_COOKIE, MAX_BODY_LEN, MessageType, Method,
    TransactionId, address_value_len, encode_xor_address, padded_len,
};

/// Writes the Data indication header before `buf[HEADROOM..HEADROOM + len]` and the padding
/// after it; returns the range of `buf` holding the whole message.
pub(crate) fn encapsulate(
    buf: &mut [u8],
    len: usize,
    peer: SocketAddr,
    transaction_id: TransactionId,
) -> Result<Range<usize>, DropReason> {
    let addr_len = address_value_len(&peer);
    let header_len = HEADER_LEN + ATTR_HEADER_LEN + addr_len + ATTR_HEADER_LEN;
    let start = HEADROOM - header_len;
    let end = HEADROOM + padded_len(len);
    let body = end - start - HEADER_LEN;
    let (Ok(body16), Ok(len16), true) = (
        u16::try_from(body),
        u16::try_from(len),
        body <= MAX_BODY_LEN,
    ) else {
        return Err(DropReason::PayloadTooLarge);
    };
    let Some(message) = buf.get_mut(start..end) else {
        return Err(DropReason::BufferTooSmall);
    };
    let (header, rest) = message.split_at_mut(HEADER_LEN);
    let message_type = MessageType::new(Method::DATA, Class::Indication);
    header[0..2].copy_from_slice(&message_type.as_u16().to_be_bytes());
    header[2..4].copy_from_slice(&body16.to_be_bytes());
    header[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    header[8..20].copy_from_slice(transaction_id.as_bytes());

    let (peer_tlv, rest) = rest.split_at_mut(ATTR_HEADER_LEN + addr_len);
    peer_tlv[0..2].copy_from_slice(&AttrType::XOR_PEER_ADDRESS.as_u16().to_be_bytes());
    // `addr_len` is 8 or 20.
    peer_tlv[2..4].copy_from_slice(&(addr_len as u16).to_be_bytes());
    encode_xor_address(&peer, &transaction_id, &mut peer_tlv[ATTR_HEADER_LEN..]);

    let (data_tlv, payload) = rest.split_at_mut(ATTR_HEADER_LEN);
    data_tlv[0..2].copy_from_slice(&AttrType::DATA.as_u16().to_be_bytes());
    data_tlv[2..4].copy_from_slice(&len16.to_be_bytes());
    payload[len..].fill(0);
    Ok(start..end)
}

#[cfg(test)]
mod tests {
    use hex_literal::hex;

    use super::*;
    use crate::stun::Message;
    use crate::turn::attr::{Data, XorPeerAddress};

    const TID: TransactionId = TransactionId::new([
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ]);

    #[test]
    fn ipv4_peer_byte_for_byte() {
        let mut buf = [0xEE; HEADROOM + 8];
        buf[HEADROOM..HEADROOM + 5].copy_from_slice(b"hello");
        let range = encapsulate(&mut buf, 5, "192.0.2.1:32853".parse().unwrap(), TID).unwrap();
        assert_eq!(range, 12..HEADROOM + 8);
        assert_eq!(
            buf[range.clone()],
            hex!(
                "0017 0018 2112a442 b7e7a701bc34d686fa87dfae" // Data indication, length 24
                "0012 0008 0001 a147 e112a643"                // XOR-PEER-ADDRESS 192.0.2.1:32853
                "0013 0005 68656c6c6f 000000"                 // DATA "hello" + padding
            )
        );
        assert!(
            buf[..12].iter().all(|&b| b == 0xEE),
            "headroom before is untouched"
        );
        let message = Message::parse(&buf[range]).unwrap();
        assert_eq!(
            message.get::<XorPeerAddress>(),
            Ok(Some(XorPeerAddress("192.0.2.1:32853".parse().unwrap())))
        );
        assert_eq!(message.get::<Data<'_>>(), Ok(Some(Data(b"hello"))));
    }

    #[test]
    fn ipv6_peer_fills_the_headroom() {
        let mut buf = [0u8; HEADROOM + 4];
        buf[HEADROOM..].copy_from_slice(b"abcd");
        let peer: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        let range = encapsulate(&mut buf, 4, peer, TID).unwrap();
        assert_eq!(range, 0..HEADROOM + 4);
        let message = Message::parse(&buf[range]).unwrap();
        assert_eq!(
            message.get::<XorPeerAddress>(),
            Ok(Some(XorPeerAddress(peer)))
        );
        assert_eq!(message.get::<Data<'_>>(), Ok(Some(Data(b"abcd"))));
    }

    #[test]
    fn size_limits() {
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut buf = [0u8; HEADROOM + 5];
        assert_eq!(
            encapsulate(&mut buf, 5, peer, TID),
            Err(DropReason::BufferTooSmall),
            "no room for padding"
        );
        let mut big = vec![0u8; HEADROOM + 70_000];
        assert_eq!(
            encapsulate(&mut big, 65_535, peer, TID),
            Err(DropReason::PayloadTooLarge)
        );
        assert!(encapsulate(&mut big, MAX_BODY_LEN - 16, peer, TID).is_ok());
        assert_eq!(
            encapsulate(&mut big, MAX_BODY_LEN - 15, peer, TID),
            Err(DropReason::PayloadTooLarge)
        );
    }
}
