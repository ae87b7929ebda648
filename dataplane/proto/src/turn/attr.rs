//! The TURN attributes ([RFC 8656 §18]) as typed [`Attribute`]s, next to the STUN ones in
//! [`crate::stun`].
//!
//! ```text
//! LIFETIME (0x000D)             | seconds (32)                                  |
//! XOR-PEER-ADDRESS (0x0012)     | as XOR-MAPPED-ADDRESS: 0 | family | X-port | X-address |
//! DATA (0x0013)                 | application bytes, padded to 4                |
//! XOR-RELAYED-ADDRESS (0x0016)  | as XOR-MAPPED-ADDRESS                         |
//! REQUESTED-ADDRESS-FAMILY (0x0017) | family (8) | RFFU (24)                    |
//! EVEN-PORT (0x0018)            | R (1) | RFFU (7)                              |
//! REQUESTED-TRANSPORT (0x0019)  | protocol (8) | RFFU (24)                      |
//! CHANNEL-NUMBER (0x000C)       | channel (16) | RFFU (16)                      |
//! RESERVATION-TOKEN (0x0022)    | token (64), opaque to clients                 |
//! ```
//!
//! DONT-FRAGMENT (empty) needs no type: the server only looks at its presence.
//!
//! [RFC 8656 §18]: https://www.rfc-editor.org/rfc/rfc8656#section-18

use std::net::SocketAddr;

use super::ChannelNumber;
use crate::stun::{
    AttrError, AttrType, Attribute, TransactionId, address_value_len, decode_xor_address,
    encode_xor_address,
};

/// LIFETIME: seconds until the allocation expires, requested by the client or granted by the
/// server. [RFC 8656 §18.2](https://www.rfc-editor.org/rfc/rfc8656#section-18.2)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lifetime(pub u32);

impl Attribute<'_> for Lifetime {
    const TYPE: AttrType = AttrType::LIFETIME;

    fn decode(value: &[u8], _: &TransactionId) -> Result<Self, AttrError> {
        let Ok(bytes) = <[u8; 4]>::try_from(value) else {
            return Err(invalid_length(Self::TYPE, value));
        };
        Ok(Self(u32::from_be_bytes(bytes)))
    }

    fn value_len(&self) -> usize {
        4
    }

    fn encode_value(&self, _: &TransactionId, out: &mut [u8]) {
        out.copy_from_slice(&self.0.to_be_bytes());
    }
}

/// Defines a newtype over `SocketAddr` carried XOR-ed like XOR-MAPPED-ADDRESS.
macro_rules! xor_address_attribute {
    ($(#[$doc:meta])* $name:ident, $attr:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub SocketAddr);

        impl Attribute<'_> for $name {
            const TYPE: AttrType = $attr;

            fn decode(value: &[u8], transaction_id: &TransactionId) -> Result<Self, AttrError> {
                let addr = decode_xor_address(Self::TYPE, value, transaction_id)?;
                Ok(Self(addr))
            }

            fn value_len(&self) -> usize {
                address_value_len(&self.0)
            }

            fn encode_value(&self, transaction_id: &TransactionId, out: &mut [u8]) {
                encode_xor_address(&self.0, transaction_id, out);
            }
        }
    };
}

xor_address_attribute!(
    /// XOR-PEER-ADDRESS: a peer's address, in CreatePermission, ChannelBind, Send and Data.
    /// [RFC 8656 §18.3](https://www.rfc-editor.org/rfc/rfc8656#section-18.3)
    XorPeerAddress,
    AttrType::XOR_PEER_ADDRESS
);

xor_address_attribute!(
    /// XOR-RELAYED-ADDRESS: the relayed transport address the server allocated.
    /// [RFC 8656 §18.5](https://www.rfc-editor.org/rfc/rfc8656#section-18.5)
    XorRelayedAddress,
    AttrType::XOR_RELAYED_ADDRESS
);

/// DATA: the application payload of a Send or Data indication, borrowed.
/// [RFC 8656 §18.4](https://www.rfc-editor.org/rfc/rfc8656#section-18.4)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Data<'a>(pub &'a [u8]);

impl<'a> Attribute<'a> for Data<'a> {
    const TYPE: AttrType = AttrType::DATA;

    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        Ok(Self(value))
    }

    fn value_len(&self) -> usize {
        self.0.len()
    }

    fn encode_value(&self, _: &TransactionId, out: &mut [u8]) {
        out.copy_from_slice(self.0);
    }
}

/// REQUESTED-TRANSPORT: the IP protocol number of the relayed transport.
/// [RFC 8656 §18.8](https://www.rfc-editor.org/rfc/rfc8656#section-18.8)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestedTransport(pub u8);

impl RequestedTransport {
    /// UDP, the only transport RFC 8656 defines and the only one this server relays.
    pub const UDP: Self = Self(17);
}

impl Attribute<'_> for RequestedTransport {
    const TYPE: AttrType = AttrType::REQUESTED_TRANSPORT;

    fn decode(value: &[u8], _: &TransactionId) -> Result<Self, AttrError> {
        // The three RFFU bytes are ignored on receipt.
        match value {
            [protocol, _, _, _] => Ok(Self(*protocol)),
            _ => Err(invalid_length(Self::TYPE, value)),
        }
    }

    fn value_len(&self) -> usize {
        4
    }

    fn encode_value(&self, _: &TransactionId, out: &mut [u8]) {
        out.copy_from_slice(&[self.0, 0, 0, 0]);
    }
}

/// REQUESTED-ADDRESS-FAMILY: which family the relayed address should have.
/// [RFC 8656 §18.6](https://www.rfc-editor.org/rfc/rfc8656#section-18.6)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestedAddressFamily(pub u8);

impl RequestedAddressFamily {
    /// IPv4 (the only family this server relays).
    pub const IPV4: Self = Self(0x01);
    /// IPv6.
    pub const IPV6: Self = Self(0x02);
}

impl Attribute<'_> for RequestedAddressFamily {
    const TYPE: AttrType = AttrType::REQUESTED_ADDRESS_FAMILY;

    fn decode(value: &[u8], _: &TransactionId) -> Result<Self, AttrError> {
        match value {
            [family, _, _, _] => Ok(Self(*family)),
            _ => Err(invalid_length(Self::TYPE, value)),
        }
    }

    fn value_len(&self) -> usize {
        4
    }

    fn encode_value(&self, _: &TransactionId, out: &mut [u8]) {
        out.copy_from_slice(&[self.0, 0, 0, 0]);
    }
}

/// EVEN-PORT: ask for an even relay port, and with `reserve` also for the next one to be kept
/// for a later Allocate. [RFC 8656 §18.7](https://www.rfc-editor.org/rfc/rfc8656#section-18.7)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EvenPort {
    /// The R bit: reserve port + 1 and return a RESERVATION-TOKEN.
    pub reserve: bool,
}

impl Attribute<'_> for EvenPort {
    const TYPE: AttrType = AttrType::EVEN_PORT;

    fn decode(value: &[u8], _: &TransactionId) -> Result<Self, AttrError> {
        match value {
            [flags] => Ok(Self {
                reserve: flags & 0x80 != 0,
            }),
            _ => Err(invalid_length(Self::TYPE, value)),
        }
    }

    fn value_len(&self) -> usize {
        1
    }

    fn encode_value(&self, _: &TransactionId, out: &mut [u8]) {
        out[0] = if self.reserve { 0x80 } else { 0 };
    }
}

/// RESERVATION-TOKEN: names the port an Allocate with EVEN-PORT R=1 reserved, for a later
/// Allocate to claim. [RFC 8656 §18.9](https://www.rfc-editor.org/rfc/rfc8656#section-18.9)
///
/// Opaque to clients; this server's tokens are `port (16) | secret (48)`, see
/// [`PortTable`](super::PortTable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationToken(pub [u8; 8]);

impl Attribute<'_> for ReservationToken {
    const TYPE: AttrType = AttrType::RESERVATION_TOKEN;

    fn decode(value: &[u8], _: &TransactionId) -> Result<Self, AttrError> {
        match <[u8; 8]>::try_from(value) {
            Ok(token) => Ok(Self(token)),
            Err(_) => Err(invalid_length(Self::TYPE, value)),
        }
    }

    fn value_len(&self) -> usize {
        8
    }

    fn encode_value(&self, _: &TransactionId, out: &mut [u8]) {
        out.copy_from_slice(&self.0);
    }
}

impl Attribute<'_> for ChannelNumber {
    const TYPE: AttrType = AttrType::CHANNEL_NUMBER;

    fn decode(value: &[u8], _: &TransactionId) -> Result<Self, AttrError> {
        let [hi, lo, _, _] = value else {
            return Err(invalid_length(Self::TYPE, value));
        };
        let raw = u16::from_be_bytes([*hi, *lo]);
        Self::new(raw).ok_or(AttrError::OutOfRange {
            attr: Self::TYPE,
            value: u32::from(raw),
        })
    }

    fn value_len(&self) -> usize {
        4
    }

    fn encode_value(&self, _: &TransactionId, out: &mut [u8]) {
        let [hi, lo] = self.get().to_be_bytes();
        out.copy_from_slice(&[hi, lo, 0, 0]);
    }
}

const fn invalid_length(attr: AttrType, value: &[u8]) -> AttrError {
    AttrError::InvalidLength {
        attr,
        len: value.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: TransactionId = TransactionId::new([0x5A; 12]);

    fn encode<'a, A: Attribute<'a>>(attr: &A) -> Vec<u8> {
        let mut out = vec![0; attr.value_len()];
        attr.encode_value(&TID, &mut out);
        out
    }

    #[test]
    fn fixed_size_attributes_round_trip() {
        assert_eq!(encode(&Lifetime(600)), [0, 0, 0x02, 0x58]);
        assert_eq!(
            Lifetime::decode(&[0, 0, 0x0E, 0x10], &TID),
            Ok(Lifetime(3600))
        );
        assert_eq!(encode(&RequestedTransport::UDP), [17, 0, 0, 0]);
        assert_eq!(
            RequestedTransport::decode(&[6, 1, 2, 3], &TID),
            Ok(RequestedTransport(6))
        );
        assert_eq!(encode(&RequestedAddressFamily::IPV6), [2, 0, 0, 0]);
        assert_eq!(encode(&EvenPort { reserve: true }), [0x80]);
        assert_eq!(
            EvenPort::decode(&[0x7F], &TID),
            Ok(EvenPort { reserve: false })
        );
        let token = ReservationToken([0xC3, 0x51, 1, 2, 3, 4, 5, 6]);
        assert_eq!(encode(&token), token.0);
        assert_eq!(ReservationToken::decode(&token.0, &TID), Ok(token));
        let channel = ChannelNumber::new(0x4001).unwrap();
        assert_eq!(encode(&channel), [0x40, 0x01, 0, 0]);
        assert_eq!(
            ChannelNumber::decode(&[0x40, 0x01, 9, 9], &TID),
            Ok(channel)
        );
    }

    #[test]
    fn bad_lengths_and_ranges_are_errors() {
        for (attr, value) in [
            (AttrType::LIFETIME, &[0u8; 3][..]),
            (AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0, 0][..]),
            (AttrType::EVEN_PORT, &[][..]),
            (AttrType::RESERVATION_TOKEN, &[0; 4][..]),
            (AttrType::CHANNEL_NUMBER, &[0x40, 0x00][..]),
        ] {
            let err = match attr {
                AttrType::LIFETIME => Lifetime::decode(value, &TID).map(|_| ()),
                AttrType::REQUESTED_TRANSPORT => {
                    RequestedTransport::decode(value, &TID).map(|_| ())
                }
                AttrType::EVEN_PORT => EvenPort::decode(value, &TID).map(|_| ()),
                AttrType::RESERVATION_TOKEN => ReservationToken::decode(value, &TID).map(|_| ()),
                _ => ChannelNumber::decode(value, &TID).map(|_| ()),
            };
            assert_eq!(
                err,
                Err(AttrError::InvalidLength {
                    attr,
                    len: value.len()
                })
            );
        }
        for raw in [0x3FFF_u16, 0x8000, 0xFFFF] {
            let [hi, lo] = raw.to_be_bytes();
            assert_eq!(
                ChannelNumber::decode(&[hi, lo, 0, 0], &TID),
                Err(AttrError::OutOfRange {
                    attr: AttrType::CHANNEL_NUMBER,
                    value: u32::from(raw)
                })
            );
        }
    }

    #[test]
    fn xor_addresses_round_trip_both_families() {
        for addr in ["192.0.2.1:32853", "[2001:db8::1]:3478"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let peer = XorPeerAddress(addr);
            let bytes = encode(&peer);
            assert_ne!(&bytes[2..4], &addr.port().to_be_bytes(), "port is XOR-ed");
            assert_eq!(XorPeerAddress::decode(&bytes, &TID), Ok(peer));
            let relayed = XorRelayedAddress(addr);
            assert_eq!(encode(&relayed), bytes, "same layout as XOR-PEER-ADDRESS");
        }
        // XOR-RELAYED-ADDRESS of 192.0.2.1:32853 is the RFC 5769 XOR-MAPPED-ADDRESS vector.
        assert_eq!(
            encode(&XorRelayedAddress("192.0.2.1:32853".parse().unwrap())),
            [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
    }

    #[test]
    fn data_borrows() {
        let payload = b"hello";
        assert_eq!(Data::decode(payload, &TID), Ok(Data(&payload[..])));
        assert_eq!(encode(&Data(payload)), payload);
    }
}
