//! The RFC 6455 §5 frame codec: headers parsed from, and written into, caller buffers.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! | Masking-key (continued)       |          Payload Data         |
//! +-------------------------------- - - - - - - - - - - - - - - - +
//! ```
//!
//! A header is 2 bytes, plus 2 (16-bit length, 126..=65535) or 8 (64-bit length, most
//! significant bit clear, ≥ 65536), plus 4 if masked. [`FrameHeader::parse`] checks what the
//! wire alone decides (RSV bits, opcode, length encoding, control-frame rules) as soon as the
//! bytes that decide it are present, and answers `Ok(None)` until the whole header is.
//! [`FrameHeader::check_client`] adds the server-side rules: masked, and not above the
//! message cap, so an oversized frame is refused from its header, before its payload arrives.
//! [`FrameHeader::check_server`] is the client-side mirror (unmasked, not above the cap), for
//! a relay host reading a mesh link.
//!
//! Encoding writes server frames (unmasked) in front of a payload the caller already placed
//! after [`MAX_SERVER_HEADER_LEN`] bytes of headroom ([`write_header_before`]), so nothing is
//! copied. [`encode_masked`] writes client frames, for tests and client implementations.

use std::io::Write as _;
use std::ops::Range;

/// Largest header of an unmasked (server) frame: 2 + 8-byte length.
pub const MAX_SERVER_HEADER_LEN: usize = 10;

/// Largest header of a masked (client) frame: 2 + 8-byte length + 4-byte mask.
pub const MAX_CLIENT_HEADER_LEN: usize = 14;

/// Control frames carry at most 125 payload bytes
/// ([RFC 6455 §5.5](https://www.rfc-editor.org/rfc/rfc6455#section-5.5)), so they always use
/// the 7-bit length.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's opcode ([RFC 6455 §5.2](https://www.rfc-editor.org/rfc/rfc6455#section-5.2)).
/// The reserved values 0x3..=0x7 and 0xB..=0xF are refused by the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: UTF-8 text.
    Text,
    /// 0x2: binary data.
    Binary,
    /// 0x8: connection close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// The opcode for the low nibble `bits`, if it is not reserved.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    /// The 4-bit wire value.
    pub const fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, Ping and Pong: the opcodes with the high bit set.
    pub const fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

/// A close status code ([RFC 6455 §7.4](https://www.rfc-editor.org/rfc/rfc6455#section-7.4)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(u16);

impl CloseCode {
    /// 1000: the purpose of the connection was fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the server is going away (also used for an unanswered keepalive).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: a data type the endpoint does not accept (text after authentication, or a
    /// fragmented message).
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1005: "no status code"; only ever a local placeholder, invalid on the wire.
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: "abnormal closure"; only ever a local placeholder, invalid on the wire.
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: text that is not UTF-8 (a text frame or a close reason).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: policy violation (authentication refused or timed out).
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: a message above the size cap.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1015: "TLS handshake failure"; only ever a local placeholder, invalid on the wire.
    pub const TLS_HANDSHAKE: Self = Self(1015);
    /// 4000 (private range): a newer connection of the same node replaced this one. Clients
    /// should not reconnect eagerly on it, or two instances of a node flap forever.
    pub const REPLACED: Self = Self(4000);

    /// Wraps a raw code, valid on the wire or not.
    pub const fn new(code: u16) -> Self {
        Self(code)
    }

    /// The raw code.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// Whether the code may appear in a Close frame: 1000..=1003, 1007..=1014 (the RFC's codes
    /// plus the IANA-registered 1012..=1014), 3000..=4999 (registered and private). 1004,
    /// 1005, 1006, 1015 and every other value are refused with 1002 (§7.4.1, §7.4.2).
    pub const fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A parsed frame header. The payload follows at `header_len`, `payload_len` bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Payload length as declared (at most 2^63 - 1).
    pub payload_len: u64,
    /// Bytes of header before the payload (2..=14).
    pub header_len: usize,
}

/// Why a frame is refused. [`close_code`](Self::close_code) says what to close with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// RSV1..3 set without a negotiated extension (we negotiate none).
    #[error("reserved bits {0:#x} set without an extension")]
    ReservedBits(u8),
    /// A reserved opcode.
    #[error("reserved opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A control frame with more than 125 payload bytes.
    #[error("control frame longer than 125 bytes")]
    ControlTooLong,
    /// A control frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A 16-bit length below 126, or a 64-bit length below 65536 (§5.2: "the minimal number
    /// of bytes MUST be used").
    #[error("payload length {0} not minimally encoded")]
    NonMinimalLength(u64),
    /// A 64-bit length with its most significant bit set.
    #[error("64-bit payload length with the most significant bit set")]
    LengthMsbSet,
    /// A client frame without a mask (§5.1: the server MUST close).
    #[error("client frame is not masked")]
    Unmasked,
    /// A server frame with a mask (§5.1: the client MUST close).
    #[error("server frame is masked")]
    Masked,
    /// A frame above the message cap.
    #[error("frame of {len} bytes above the {max}-byte cap")]
    TooLarge {
        /// Declared payload length.
        len: u64,
        /// The cap.
        max: usize,
    },
}

impl FrameError {
    /// The close code to fail the connection with: 1009 for [`TooLarge`](Self::TooLarge),
    /// 1002 for everything else.
    pub const fn close_code(self) -> CloseCode {
        match self {
            Self::TooLarge { .. } => CloseCode::MESSAGE_TOO_BIG,
            Self::ReservedBits(_)
            | Self::UnknownOpcode(_)
            | Self::ControlTooLong
            | Self::FragmentedControl
            | Self::NonMinimalLength(_)
            | Self::LengthMsbSet
            | Self::Unmasked
            | Self::Masked => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// The output buffer cannot hold what was to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("output buffer too small: {needed} bytes needed")]
pub struct BufferTooSmall {
    /// Bytes the write needed.
    pub needed: usize,
}

impl FrameHeader {
    /// Parses the header at the start of `buf`: `Ok(None)` until the header is complete.
    ///
    /// Errors are reported from the first two bytes where they decide it (RSV, opcode,
    /// control-frame rules), so a bad frame is refused without waiting for more input.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, FrameError> {
        let Some(&[b0, b1]) = buf.first_chunk::<2>() else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let rsv = b0 & 0x70;
        if rsv != 0 {
            return Err(FrameError::ReservedBits(rsv >> 4));
        }
        let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        if opcode.is_control() {
            if !fin {
                return Err(FrameError::FragmentedControl);
            }
            if usize::from(len7) > MAX_CONTROL_PAYLOAD {
                return Err(FrameError::ControlTooLong);
            }
        }
        let (payload_len, len_end) = match len7 {
            126 => {
                let Some(&[l0, l1]) = buf.get(2..4).and_then(|s| s.first_chunk::<2>()) else {
                    return Ok(None);
                };
                let len = u64::from(u16::from_be_bytes([l0, l1]));
                if len < 126 {
                    return Err(FrameError::NonMinimalLength(len));
                }
                (len, 4)
            }
            127 => {
                let Some(bytes) = buf.get(2..10).and_then(|s| s.first_chunk::<8>()) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(*bytes);
                if len >> 63 != 0 {
                    return Err(FrameError::LengthMsbSet);
                }
                if len <= 0xFFFF {
                    return Err(FrameError::NonMinimalLength(len));
                }
                (len, 10)
            }
            short => (u64::from(short), 2),
        };
        let (mask, header_len) = if masked {
            let Some(key) = buf
                .get(len_end..len_end + 4)
                .and_then(|s| s.first_chunk::<4>())
            else {
                return Ok(None);
            };
            (Some(*key), len_end + 4)
        } else {
            (None, len_end)
        };
        Ok(Some(Self {
            fin,
            opcode,
            mask,
            payload_len,
            header_len,
        }))
    }

    /// The server-side rules on a client frame: it is masked, and its payload is at most
    /// `max_payload` bytes.
    pub const fn check_client(&self, max_payload: usize) -> Result<(), FrameError> {
        if self.mask.is_none() {
            return Err(FrameError::Unmasked);
        }
        if self.payload_len > max_payload as u64 {
            return Err(FrameError::TooLarge {
                len: self.payload_len,
                max: max_payload,
            });
        }
        Ok(())
    }

    /// The client-side rules on a server frame: it is not masked, and its payload is at most
    /// `max_payload` bytes.
    pub const fn check_server(&self, max_payload: usize) -> Result<(), FrameError> {
        if self.mask.is_some() {
            return Err(FrameError::Masked);
        }
        if self.payload_len > max_payload as u64 {
            return Err(FrameError::TooLarge {
                len: self.payload_len,
                max: max_payload,
            });
        }
        Ok(())
    }

    /// Header plus payload, if it fits in `usize` (always true after
    /// [`check_client`](Self::check_client)).
    pub fn frame_len(&self) -> Option<usize> {
        usize::try_from(self.payload_len)
            .ok()?
            .checked_add(self.header_len)
    }
}

/// XORs `buf` with the repeating 4-byte `key`, in place: masking and unmasking are the same
/// operation (§5.3). Processes 8 bytes at a time.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let [k0, k1, k2, k3] = key;
    // The key repeats every 4 bytes, so two copies of it mask an 8-byte word starting at any
    // multiple of 4; native byte order on both sides makes endianness irrelevant.
    let key64 = u64::from_ne_bytes([k0, k1, k2, k3, k0, k1, k2, k3]);
    let (words, tail) = buf.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ key64).to_ne_bytes();
    }
    for (byte, k) in tail.iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// Length of the header for a `payload_len`-byte payload: 2, 4 or 10, plus 4 if masked.
pub const fn header_len(payload_len: usize, masked: bool) -> usize {
    let len = if payload_len < 126 {
        2
    } else if payload_len <= 0xFFFF {
        4
    } else {
        10
    };
    if masked { len + 4 } else { len }
}

/// Writes a frame header (FIN set when `fin`) at the start of `out`; returns its length.
pub fn encode_header(
    fin: bool,
    opcode: OpCode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let len = header_len(payload_len, mask.is_some());
    let Some(out) = out.get_mut(..len) else {
        return Err(BufferTooSmall { needed: len });
    };
    out[0] = if fin { 0x80 } else { 0 } | opcode.bits();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len_end = if payload_len < 126 {
        // Below 126, so it fits in 7 bits.
        out[1] = mask_bit | payload_len as u8;
        2
    } else if let Ok(short) = u16::try_from(payload_len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[len_end..len_end + 4].copy_from_slice(&key);
    }
    Ok(len)
}

/// Writes an unmasked, final `opcode` header right before `buf[payload]`, in the headroom the
/// caller left there (at most [`MAX_SERVER_HEADER_LEN`] bytes); returns the whole frame's
/// range. Zero copy: the payload does not move.
pub fn write_header_before(
    buf: &mut [u8],
    payload: Range<usize>,
    opcode: OpCode,
) -> Result<Range<usize>, BufferTooSmall> {
    let payload_len = payload.len();
    let len = header_len(payload_len, false);
    if payload.end > buf.len() || payload.start < len {
        return Err(BufferTooSmall {
            needed: len.max(payload.end),
        });
    }
    let start = payload.start - len;
    encode_header(
        true,
        opcode,
        payload_len,
        None,
        &mut buf[start..payload.start],
    )?;
    Ok(start..payload.end)
}

/// Writes a complete unmasked, final frame (header and a copy of `payload`) into `out`;
/// returns its length. For control frames and tests: relayed data uses
/// [`write_header_before`].
pub fn encode_frame(
    opcode: OpCode,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let header = encode_header(true, opcode, payload.len(), None, out)?;
    let end = header + payload.len();
    let Some(dst) = out.get_mut(header..end) else {
        return Err(BufferTooSmall { needed: end });
    };
    dst.copy_from_slice(payload);
    Ok(end)
}

/// Writes a Close frame with `code` and a UTF-8 `reason` (truncated at a character boundary
/// to fit the 125-byte control payload) into `out`; returns its length.
pub fn encode_close(
    code: CloseCode,
    reason: &str,
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let mut reason_len = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(reason_len) {
        reason_len -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    let mut w = &mut payload[..];
    // Cannot fail: 2 + reason_len <= 125.
    let _ = w.write_all(&code.get().to_be_bytes());
    let _ = w.write_all(&reason.as_bytes()[..reason_len]);
    let len = encode_frame(OpCode::Close, &payload[..2 + reason_len], out)?;
    Ok(len)
}

/// Writes a masked client frame (header and masked copy of `payload`) into `out`; returns its
/// length. For clients and tests: the server never masks.
pub fn encode_masked(
    fin: bool,
    opcode: OpCode,
    mask: [u8; 4],
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let header = encode_header(fin, opcode, payload.len(), Some(mask), out)?;
    let end = header + payload.len();
    let Some(dst) = out.get_mut(header..end) else {
        return Err(BufferTooSmall { needed: end });
    };
    dst.copy_from_slice(payload);
    apply_mask(dst, mask);
    Ok(end)
}

/// What a Close frame's payload says ([RFC 6455 §5.5.1]).
///
/// [RFC 6455 §5.5.1]: https://www.rfc-editor.org/rfc/rfc6455#section-5.5.1
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosePayload<'a> {
    /// The status code; `None` for an empty payload (reported locally as 1005).
    pub code: Option<CloseCode>,
    /// The UTF-8 reason after the code.
    pub reason: &'a str,
}

impl<'a> ClosePayload<'a> {
    /// Parses an unmasked Close payload. A 1-byte payload or a code that is invalid on the
    /// wire is a protocol error (1002); a reason that is not UTF-8 is 1007.
    pub fn parse(payload: &'a [u8]) -> Result<Self, CloseCode> {
        match payload {
            [] => Ok(Self {
                code: None,
                reason: "",
            }),
            [_] => Err(CloseCode::PROTOCOL_ERROR),
            [c0, c1, reason @ ..] => {
                let code = CloseCode::new(u16::from_be_bytes([*c0, *c1]));
                if !code.is_valid_on_wire() {
                    return Err(CloseCode::PROTOCOL_ERROR);
                }
                let reason = std::str::from_utf8(reason).map_err(|_| CloseCode::INVALID_PAYLOAD)?;
                Ok(Self {
                    code: Some(code),
                    reason,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hex_literal::hex;

    use super::*;

    fn parse_ok(buf: &[u8]) -> FrameHeader {
        FrameHeader::parse(buf).unwrap().unwrap()
    }

    #[test]
    fn needs_more_until_the_header_is_complete() {
        let frame = hex!("81 fe 01 00 37 fa 21 3d");
        for cut in 0..frame.len() {
            assert_eq!(FrameHeader::parse(&frame[..cut]), Ok(None), "cut {cut}");
        }
        let header = parse_ok(&frame);
        assert_eq!(header.header_len, 8);
        assert_eq!(header.payload_len, 256);
        assert_eq!(header.mask, Some(hex!("37 fa 21 3d")));
    }

    #[test]
    fn refuses_reserved_bits_and_opcodes_from_two_bytes() {
        for b0 in [0xC2u8, 0xA2, 0x92] {
            assert!(matches!(
                FrameHeader::parse(&[b0, 0x80]),
                Err(FrameError::ReservedBits(_))
            ));
        }
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                FrameHeader::parse(&[0x80 | op, 0x80]),
                Err(FrameError::UnknownOpcode(op))
            );
            assert_eq!(
                FrameError::UnknownOpcode(op).close_code(),
                CloseCode::PROTOCOL_ERROR
            );
        }
    }

    #[test]
    fn control_frames_are_short_and_final() {
        assert_eq!(
            FrameHeader::parse(&[0x09, 0x80]),
            Err(FrameError::FragmentedControl)
        );
        assert_eq!(
            FrameHeader::parse(&[0x89, 0xFE]),
            Err(FrameError::ControlTooLong)
        );
        assert_eq!(
            FrameHeader::parse(&[0x88, 0xFF]),
            Err(FrameError::ControlTooLong)
        );
        assert!(parse_ok(&hex!("89 fd 00 00 00 00")).payload_len == 125);
    }

    #[test]
    fn lengths_must_be_minimal_and_msb_clear() {
        assert_eq!(
            FrameHeader::parse(&hex!("82 7e 00 7d")),
            Err(FrameError::NonMinimalLength(125))
        );
        assert_eq!(parse_ok(&hex!("82 7e 00 7e")).payload_len, 126);
        assert_eq!(
            FrameHeader::parse(&hex!("82 7f 00 00 00 00 00 00 ff ff")),
            Err(FrameError::NonMinimalLength(0xFFFF))
        );
        assert_eq!(
            parse_ok(&hex!("82 7f 00 00 00 00 00 01 00 00")).payload_len,
            0x1_0000
        );
        assert_eq!(
            FrameHeader::parse(&hex!("82 7f 80 00 00 00 00 00 00 00")),
            Err(FrameError::LengthMsbSet)
        );
    }

    #[test]
    fn client_rules_mask_and_cap() {
        let unmasked = parse_ok(&hex!("82 05"));
        assert_eq!(unmasked.check_client(1024), Err(FrameError::Unmasked));
        let big = parse_ok(&hex!("82 ff 00 00 00 00 00 01 00 01 01 02 03 04"));
        let err = big.check_client(65_536).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 65_537,
                max: 65_536
            }
        );
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
        let exact = parse_ok(&hex!("82 ff 00 00 00 00 00 01 00 00 01 02 03 04"));
        assert_eq!(exact.check_client(65_536), Ok(()));
        assert_eq!(exact.frame_len(), Some(65_536 + 14));
    }

    #[test]
    fn server_rules_unmasked_and_cap() {
        let masked = parse_ok(&hex!("82 85 01 02 03 04"));
        assert_eq!(masked.check_server(1024), Err(FrameError::Masked));
        assert_eq!(FrameError::Masked.close_code(), CloseCode::PROTOCOL_ERROR);
        let big = parse_ok(&hex!("82 7f 00 00 00 00 00 01 00 01"));
        assert_eq!(
            big.check_server(65_536),
            Err(FrameError::TooLarge {
                len: 65_537,
                max: 65_536
            })
        );
        assert_eq!(parse_ok(&hex!("82 7e 01 00")).check_server(256), Ok(()));
    }

    #[test]
    fn mask_round_trips_at_every_length() {
        let key = hex!("37 fa 21 3d");
        for len in 0..40 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut buf = original.clone();
            apply_mask(&mut buf, key);
            for (i, (m, o)) in buf.iter().zip(&original).enumerate() {
                assert_eq!(*m, o ^ key[i % 4]);
            }
            apply_mask(&mut buf, key);
            assert_eq!(buf, original);
        }
    }

    #[test]
    fn header_goes_in_front_of_the_payload() {
        let mut buf = [0u8; 10 + 300];
        buf[10..].fill(7);
        let range = write_header_before(&mut buf, 10..310, OpCode::Binary).unwrap();
        assert_eq!(range, 6..310);
        assert_eq!(buf[6..10], hex!("82 7e 01 2c"));
        assert_eq!(
            write_header_before(&mut buf, 3..310, OpCode::Binary),
            Err(BufferTooSmall { needed: 310 })
        );
        assert!(write_header_before(&mut buf, 10..311, OpCode::Binary).is_err());
    }

    #[test]
    fn encoders_report_short_buffers() {
        let mut out = [0u8; 4];
        assert_eq!(
            encode_frame(OpCode::Ping, b"hello", &mut out),
            Err(BufferTooSmall { needed: 7 })
        );
        assert_eq!(
            encode_header(true, OpCode::Binary, 70_000, None, &mut out),
            Err(BufferTooSmall { needed: 10 })
        );
        assert_eq!(
            encode_masked(true, OpCode::Text, [1; 4], b"hi", &mut out),
            Err(BufferTooSmall { needed: 6 })
        );
    }

    #[test]
    fn close_codes_on_the_wire() {
        for valid in [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4000, 4999] {
            assert!(CloseCode::new(valid).is_valid_on_wire(), "{valid}");
        }
        for invalid in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert!(!CloseCode::new(invalid).is_valid_on_wire(), "{invalid}");
        }
        assert_eq!(
            ClosePayload::parse(&[]),
            Ok(ClosePayload {
                code: None,
                reason: ""
            })
        );
        assert_eq!(ClosePayload::parse(&[3]), Err(CloseCode::PROTOCOL_ERROR));
        assert_eq!(
            ClosePayload::parse(&hex!("03 ed")),
            Err(CloseCode::PROTOCOL_ERROR),
            "1005 is invalid on the wire"
        );
        assert_eq!(
            ClosePayload::parse(&hex!("03 e8 ff")),
            Err(CloseCode::INVALID_PAYLOAD)
        );
        assert_eq!(ClosePayload::parse(b"\x03\xe8bye").unwrap().reason, "bye");
    }

    #[test]
    fn close_reason_truncates_at_a_char_boundary() {
        let reason = "é".repeat(100);
        let mut out = [0u8; 200];
        let len = encode_close(CloseCode::NORMAL, &reason, &mut out).unwrap();
        let header = parse_ok(&out[..len]);
        assert!(header.payload_len <= 125);
        let payload = ClosePayload::parse(&out[2..len]).unwrap();
        assert_eq!(payload.code, Some(CloseCode::NORMAL));
        assert_eq!(payload.reason.len(), 122);
    }
}
