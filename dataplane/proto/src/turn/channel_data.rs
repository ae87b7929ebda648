//! ChannelData: the 4-byte framing that replaces a 36-byte Send/Data indication once a channel
//! is bound. [RFC 8656 §12.4](https://www.rfc-editor.org/rfc/rfc8656#section-12.4)
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Channel Number        |            Length             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! /                       Application Data                        /
//! /                                                               /
//! |                                                               |
//! |                               +-------------------------------+
//! |                               |  padding to 4 (optional on UDP)
//! +-------------------------------+
//! ```
//!
//! The channel number's top two bits are `0b01`, which is how [`crate::stun::classify`] tells
//! ChannelData from STUN on the shared port. Length counts the application data only. Over UDP
//! the padding is optional ([RFC 8656 §12.5]), so a datagram may end right after the data or
//! carry up to 3 padding bytes; anything shorter than the declared length, or longer than the
//! padding allows, is dropped.
//!
//! [RFC 8656 §12.5]: https://www.rfc-editor.org/rfc/rfc8656#section-12.5

use std::ops::Range;

use super::ChannelNumber;
use crate::stats::DropReason;

/// Channel number (2) + length (2).
pub const HEADER_LEN: usize = 4;

/// A parsed ChannelData frame: the channel and where its payload sits in the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelData {
    /// The channel the frame was sent on.
    pub number: ChannelNumber,
    /// The application data: `datagram[payload]`.
    pub payload: Range<usize>,
}

impl ChannelData {
    /// Parses the header of a ChannelData datagram and checks its length. Never copies.
    pub fn parse(datagram: &[u8]) -> Result<Self, DropReason> {
        let Some(&[n0, n1, l0, l1]) = datagram.first_chunk::<HEADER_LEN>() else {
            return Err(DropReason::ChannelDataTruncated);
        };
        let raw = u16::from_be_bytes([n0, n1]);
        let Some(number) = ChannelNumber::new(raw) else {
            // Outside 0x4000..=0x7FFF it is not ChannelData at all.
            return Err(DropReason::NotStun);
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let end = HEADER_LEN + len;
        if end > datagram.len() {
            return Err(DropReason::ChannelDataTruncated);
        }
        if datagram.len() - end > 3 {
            return Err(DropReason::ChannelDataTrailingBytes);
        }
        Ok(Self {
            number,
            payload: HEADER_LEN..end,
        })
    }
}

/// Writes a ChannelData header for `number` and a `len`-byte payload.
pub fn encode_header(number: ChannelNumber, len: u16) -> [u8; HEADER_LEN] {
    let [n0, n1] = number.get().to_be_bytes();
    let [l0, l1] = len.to_be_bytes();
    [n0, n1, l0, l1]
}

#[cfg(test)]
mod tests {
    use hex_literal::hex;

    use super::*;

    #[test]
    fn parses_with_and_without_padding() {
        let frame = hex!("4001 0005 68656c6c6f");
        let parsed = ChannelData::parse(&frame).unwrap();
        assert_eq!(parsed.number.get(), 0x4001);
        assert_eq!(&frame[parsed.payload.clone()], b"hello");
        let padded = hex!("4001 0005 68656c6c6f 000000");
        assert_eq!(ChannelData::parse(&padded), Ok(parsed));
        let empty = hex!("4FFF 0000");
        assert_eq!(ChannelData::parse(&empty).unwrap().payload, 4..4);
    }

    #[test]
    fn length_checks() {
        assert_eq!(
            ChannelData::parse(&hex!("4001 00")),
            Err(DropReason::ChannelDataTruncated)
        );
        assert_eq!(
            ChannelData::parse(&hex!("4001 0006 68656c6c6f")),
            Err(DropReason::ChannelDataTruncated),
            "header length larger than the datagram"
        );
        assert_eq!(
            ChannelData::parse(&hex!("4001 0001 68 000000 00")),
            Err(DropReason::ChannelDataTrailingBytes)
        );
        // RFC 5766's upper channels are ChannelData too (see `ChannelNumber`).
        assert_eq!(
            ChannelData::parse(&hex!("7FFF 0000")).map(|c| c.number.get()),
            Ok(0x7FFF)
        );
        assert_eq!(
            ChannelData::parse(&hex!("8000 0000")),
            Err(DropReason::NotStun)
        );
        assert_eq!(
            ChannelData::parse(&hex!("0001 0000")),
            Err(DropReason::NotStun)
        );
    }

    #[test]
    fn header_bytes() {
        let number = ChannelNumber::new(0x4ABC).unwrap();
        assert_eq!(encode_header(number, 0x0102), hex!("4ABC 0102"));
    }
}
