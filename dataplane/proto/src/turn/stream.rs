//! STUN and TURN over a byte stream (TCP, TLS): where one message ends and the next begins,
//! and the limits a stream listener holds each connection and each source address to.
//! [RFC 8489 §6.2.2](https://www.rfc-editor.org/rfc/rfc8489#section-6.2.2),
//! [RFC 8656 §12.5](https://www.rfc-editor.org/rfc/rfc8656#section-12.5)
//!
//! ```text
//! stream:  | STUN message | ChannelData + pad | STUN message | ...
//!
//! STUN:        00xxxxxx ........ | Length (2) | 2112A442 | ...   20 + Length bytes,
//!                                                                 Length a multiple of 4
//! ChannelData: 01xxxxxx ........ | Length (2) | data ...  | pad   4 + Length rounded up to 4
//!                                                                 (padding is mandatory over
//!                                                                 a stream, RFC 8656 §12.5)
//! ```
//!
//! Over a stream there is no datagram boundary to fall back on: a frame's length comes only
//! from its header, so one wrong length would shift every later frame. [`frame_len`] therefore
//! checks everything a header can be checked for before trusting its length (the top bits,
//! STUN's magic cookie and 4-byte length, the size bound; any channel number the top bits
//! allow, 0x4000..=0x7FFF, is taken, as [`ChannelNumber`](super::ChannelNumber) takes them
//! over UDP: RFC 5766 clients such as coturn's use the upper half), and [`Reassembler`] reports the first header that fails as a [`CloseReason`]: the
//! connection is closed and the reason counted, never guessed past. A length that passes these
//! checks but lies is caught one frame later, when the bytes it claimed end inside what
//! should be the next header, or by the TURN server when the message does not parse. What
//! a connection may hold buffered is bounded by the largest frame, so a peer that sends a
//! header and stops holds at most that until the idle timeout closes it.
//!
//! This module is sans-IO like the rest of the crate: the shell reads into
//! [`Reassembler::spare`], reports the count with [`Reassembler::handle_read`], and hands each
//! frame from [`Reassembler::poll_frame`] to [`Server::handle_client_input`](super::Server) as
//! if it were a datagram. Frames toward the client get their ChannelData padding from
//! [`stream_padding`].
//!
//! TCP allocations (RFC 6062, REQUESTED-TRANSPORT TCP) are not supported: the relayed side is
//! always UDP, and such an Allocate gets 442 (Unsupported Transport Protocol).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::stun::{HEADER_LEN, MAGIC_COOKIE, MAX_BODY_LEN};

/// Bytes of a frame header that decide its length: 4 for ChannelData; STUN needs its cookie
/// too, so 8.
const STUN_PREFIX: usize = 8;

/// The largest frame a connection may send: a STUN message with the largest body. ChannelData
/// (at most 4 + 65535 + 1) is smaller.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_BODY_LEN;

/// Why a stream connection is closed. Stable labels for the drop counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CloseReason {
    /// A frame starting with top bits `0b10` or `0b11`: neither STUN nor ChannelData (a TLS
    /// record on a plain port, HTTP, noise).
    NotStunOrChannelData,
    /// A STUN header without the magic cookie.
    BadMagicCookie,
    /// A STUN Message Length that is not a multiple of 4.
    UnalignedLength,
    /// A frame longer than the connection's bound.
    FrameTooLong,
    /// The connection stayed idle (no complete frame) past the idle timeout.
    Idle,
    /// The TLS handshake did not finish within the handshake timeout.
    HandshakeTimeout,
    /// The source address already holds its connection cap.
    TooManyConnections,
}

impl CloseReason {
    /// The label for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotStunOrChannelData => "stream_not_stun",
            Self::BadMagicCookie => "stream_bad_magic_cookie",
            Self::UnalignedLength => "stream_unaligned_length",
            Self::FrameTooLong => "stream_frame_too_long",
            Self::Idle => "stream_idle",
            Self::HandshakeTimeout => "stream_handshake_timeout",
            Self::TooManyConnections => "stream_too_many_connections",
        }
    }
}

/// The length of the frame `stream` starts with, padding included: `Ok(None)` while the header
/// is incomplete, an error as soon as the bytes present rule the header out.
pub fn frame_len(stream: &[u8], max_frame: usize) -> Result<Option<usize>, CloseReason> {
    let Some(&first) = stream.first() else {
        return Ok(None);
    };
    let is_stun = match first >> 6 {
        0b00 => true,
        0b01 => false,
        _ => return Err(CloseReason::NotStunOrChannelData),
    };
    let Some(&[_, _, l0, l1]) = stream.first_chunk::<4>() else {
        return Ok(None);
    };
    let length = usize::from(u16::from_be_bytes([l0, l1]));
    let total = if is_stun {
        if length % 4 != 0 {
            return Err(CloseReason::UnalignedLength);
        }
        // Check the cookie byte by byte as it arrives, so garbage closes early.
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let have = &stream[4..stream.len().min(STUN_PREFIX)];
        if have.iter().zip(cookie).any(|(a, b)| *a != b) {
            return Err(CloseReason::BadMagicCookie);
        }
        if have.len() < cookie.len() {
            return Ok(None);
        }
        HEADER_LEN + length
    } else {
        (4 + length).next_multiple_of(4)
    };
    if total > max_frame {
        return Err(CloseReason::FrameTooLong);
    }
    Ok(Some(total))
}

/// The ChannelData padding a frame of `len` bytes needs before it goes out on a stream (0 for
/// STUN, whose length is always a multiple of 4).
pub const fn stream_padding(len: usize) -> usize {
    len.next_multiple_of(4) - len
}

/// One connection's receive side: a fixed buffer the shell reads into, cut into frames.
///
/// ```text
/// loop {
///     let n = socket.read(reassembler.spare())?;        // or a completion into spare()
///     reassembler.handle_read(n);
///     while let Some(frame) = reassembler.poll_frame() {
///         match frame {
///             Ok(frame) => { /* server.handle_client_input(now, client, frame, out) */ }
///             Err(reason) => { /* count reason, close */ }
///         }
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Reassembler {
    buf: Box<[u8]>,
    /// Start of the first unconsumed byte.
    start: usize,
    /// End of the received bytes.
    end: usize,
    /// Length of the frame last returned, released by the next call.
    consumed: usize,
    failed: Option<CloseReason>,
    max_frame: usize,
}

impl Reassembler {
    /// A reassembler whose frames may be up to `max_frame` bytes (at least a STUN header,
    /// at most [`MAX_FRAME_LEN`]); it holds at most that much.
    pub fn new(max_frame: usize) -> Self {
        let max_frame = max_frame.clamp(HEADER_LEN, MAX_FRAME_LEN);
        Self {
            buf: vec![0; max_frame].into_boxed_slice(),
            start: 0,
            end: 0,
            consumed: 0,
            failed: None,
            max_frame,
        }
    }

    /// Where the next read goes: never empty while the connection is usable (the buffered
    /// partial frame is moved to the front first). Empty once a [`CloseReason`] was returned.
    pub fn spare(&mut self) -> &mut [u8] {
        self.release();
        if self.failed.is_some() {
            return &mut [];
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`spare`](Self::spare).
    pub fn handle_read(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next complete frame, borrowed until the next call; an error once, after which the
    /// connection must be closed; `None` when more bytes are needed.
    pub fn poll_frame(&mut self) -> Option<Result<&[u8], CloseReason>> {
        self.release();
        if self.failed.is_some() {
            return None;
        }
        let buffered = &self.buf[self.start..self.end];
        match frame_len(buffered, self.max_frame) {
            Ok(Some(len)) if len <= buffered.len() => {
                let frame = self.start..self.start + len;
                self.consumed = len;
                Some(Ok(&self.buf[frame]))
            }
            Ok(_) => None,
            Err(reason) => {
                self.failed = Some(reason);
                Some(Err(reason))
            }
        }
    }

    /// Bytes received and not yet returned as a frame: a partial frame.
    pub const fn buffered(&self) -> usize {
        self.end - self.start - self.consumed
    }

    fn release(&mut self) {
        self.start += self.consumed;
        self.consumed = 0;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

/// What a stream listener holds connections to, with each default's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamLimits {
    /// The largest frame, and so the receive buffer of each connection. Default
    /// [`MAX_FRAME_LEN`]: a STUN message may be that long, and TURN clients send no longer.
    pub max_frame: usize,
    /// Connections one IP address (IPv6: its /64) may hold at once. Default 64: a host behind
    /// one NAT runs a few WebRTC clients, each with a connection or two.
    pub max_connections_per_ip: u32,
    /// How long a connection may go without delivering a complete frame. Default 5 minutes,
    /// the longest a TURN allocation goes without a Refresh (RFC 8656 §3.8: 10 minutes
    /// lifetime, refreshed well before) after its channels' keepalives.
    pub idle_timeout: Duration,
    /// How long the TLS handshake may take. Default 10 s.
    pub handshake_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_frame: MAX_FRAME_LEN,
            max_connections_per_ip: 64,
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Counts open connections per source (an IPv4 address or an IPv6 /64) against a cap. Only
/// sources with a connection take an entry, so the table is bounded by the open connections.
#[derive(Debug)]
pub struct ConnectionCap {
    per_source: HashMap<IpAddr, u32>,
    max: u32,
}

impl ConnectionCap {
    /// A cap of `max` connections per source.
    pub fn new(max: u32) -> Self {
        Self {
            per_source: HashMap::new(),
            max,
        }
    }

    /// Counts a new connection from `ip`, or refuses it when its source is at the cap.
    pub fn try_open(&mut self, ip: IpAddr) -> Result<(), CloseReason> {
        let count = self.per_source.entry(source(ip)).or_insert(0);
        if *count >= self.max {
            if *count == 0 {
                self.per_source.remove(&source(ip));
            }
            return Err(CloseReason::TooManyConnections);
        }
        *count += 1;
        Ok(())
    }

    /// A connection from `ip` counted by [`try_open`](Self::try_open) closed.
    pub fn close(&mut self, ip: IpAddr) {
        let key = source(ip);
        if let Some(count) = self.per_source.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_source.remove(&key);
            }
        }
    }

    /// Sources holding at least one connection.
    pub fn sources(&self) -> usize {
        self.per_source.len()
    }
}

/// The source a connection counts against: the address, or an IPv6 address's /64 (one
/// subscriber's prefix). An IPv4-mapped address (a dual-stack socket's view of an IPv4
/// client) is its IPv4 address, not one /64 for every IPv4 client.
fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        ip @ IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(body: usize) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&u16::try_from(body).unwrap().to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend(std::iter::repeat_n(0xAB, body));
        m
    }

    fn channel_data(len: usize) -> Vec<u8> {
        let mut m = vec![0x40, 0x01];
        m.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        m.extend(std::iter::repeat_n(0xCD, len));
        m.extend(std::iter::repeat_n(0, stream_padding(m.len())));
        m
    }

    /// Feeds `stream` in chunks of `chunk` bytes; returns the frames and the close reason.
    fn run(stream: &[u8], chunk: usize, max: usize) -> (Vec<Vec<u8>>, Option<CloseReason>) {
        let mut r = Reassembler::new(max);
        let mut frames = Vec::new();
        let mut rest = stream;
        loop {
            while let Some(frame) = r.poll_frame() {
                match frame {
                    Ok(frame) => frames.push(frame.to_vec()),
                    Err(reason) => return (frames, Some(reason)),
                }
            }
            if rest.is_empty() {
                return (frames, None);
            }
            let spare = r.spare();
            assert!(!spare.is_empty(), "a usable connection always has room");
            let n = chunk.min(rest.len()).min(spare.len());
            spare[..n].copy_from_slice(&rest[..n]);
            r.handle_read(n);
            rest = &rest[n..];
        }
    }

    #[test]
    fn frames_come_out_whole_whatever_the_read_sizes() {
        let frames = [
            stun(0),
            channel_data(5),
            stun(8),
            channel_data(0),
            channel_data(4),
        ];
        let stream: Vec<u8> = frames.concat();
        for chunk in [1, 2, 3, 5, 7, 19, 20, 21, 64, 4096] {
            let (got, closed) = run(&stream, chunk, MAX_FRAME_LEN);
            assert_eq!(closed, None, "chunk {chunk}");
            assert_eq!(got, frames, "chunk {chunk}");
        }
        assert_eq!(
            channel_data(5).len(),
            12,
            "ChannelData is padded to 4 on a stream"
        );
    }

    #[test]
    fn a_partial_frame_waits_within_the_bound() {
        let mut r = Reassembler::new(64);
        let frame = stun(8);
        r.spare()[..10].copy_from_slice(&frame[..10]);
        r.handle_read(10);
        assert!(r.poll_frame().is_none());
        assert_eq!(r.buffered(), 10);
        let spare = r.spare();
        assert_eq!(spare.len(), 54);
        spare[..18].copy_from_slice(&frame[10..]);
        r.handle_read(18);
        assert_eq!(r.poll_frame().unwrap().unwrap(), &frame[..]);
        assert_eq!(r.buffered(), 0);
        assert!(r.poll_frame().is_none());
        assert_eq!(r.spare().len(), 64, "consumed bytes are released");
    }

    #[test]
    fn bad_headers_close_with_their_reason() {
        let mut no_cookie = stun(0);
        no_cookie[5] ^= 1;
        let mut unaligned = stun(0);
        unaligned[3] = 2;
        let cases: [(&str, Vec<u8>, CloseReason); 6] = [
            (
                "top bits 0b10",
                vec![0x80, 0, 0, 0],
                CloseReason::NotStunOrChannelData,
            ),
            (
                "a TLS ClientHello on the plain port (0x16 looks like STUN)",
                vec![0x16, 0x03, 0x01, 0x00, 0x50],
                CloseReason::BadMagicCookie,
            ),
            (
                "HTTP ('G' reads as channel 0x4745, 'T ' as 21536 bytes)",
                b"GET / HTTP/1.1\r\n".to_vec(),
                CloseReason::FrameTooLong,
            ),
            ("no cookie", no_cookie, CloseReason::BadMagicCookie),
            (
                "unaligned STUN length",
                unaligned,
                CloseReason::UnalignedLength,
            ),
            (
                "STUN longer than the bound",
                stun(48),
                CloseReason::FrameTooLong,
            ),
        ];
        for (name, bytes, reason) in cases {
            for chunk in [1, 3, 64] {
                let (frames, closed) = run(&bytes, chunk, 64);
                assert!(frames.is_empty(), "{name}");
                assert_eq!(closed, Some(reason), "{name}, chunk {chunk}");
            }
        }
        // RFC 5766's channel numbers above 0x4FFF are ChannelData too (coturn's client uses
        // them), as the server takes them over UDP.
        let upper = vec![0x6D, 0x56, 0x00, 0x04, 1, 2, 3, 4];
        assert_eq!(run(&upper, 3, 64), (vec![upper.clone()], None));
        // After the error the connection takes nothing more.
        let mut r = Reassembler::new(64);
        r.spare()[0] = 0xFF;
        r.handle_read(1);
        assert_eq!(r.poll_frame(), Some(Err(CloseReason::NotStunOrChannelData)));
        assert!(r.poll_frame().is_none());
        assert!(r.spare().is_empty());
    }

    #[test]
    fn a_lying_length_is_caught_at_the_next_header() {
        // A STUN header claiming 4 bytes fewer than it carries: its tail becomes the next
        // "header", which is checked, not trusted.
        let mut liar = stun(8);
        liar[3] = 4;
        let stream = [liar, stun(0)].concat();
        let (frames, closed) = run(&stream, 7, MAX_FRAME_LEN);
        assert_eq!(
            frames.len(),
            1,
            "the lying frame itself goes to the server to judge"
        );
        assert_eq!(closed, Some(CloseReason::NotStunOrChannelData));
        // ChannelData claiming the largest length: a bounded buffer refuses it at once.
        let (frames, closed) = run(&[0x40, 0x00, 0xFF, 0xFF, 1, 2], 2, 1024);
        assert!(frames.is_empty());
        assert_eq!(closed, Some(CloseReason::FrameTooLong));
    }

    #[test]
    fn the_cap_counts_per_source_and_forgets_closed_ones() {
        let mut cap = ConnectionCap::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert!(cap.try_open(a).is_ok());
        assert!(cap.try_open(a).is_ok());
        assert_eq!(cap.try_open(a), Err(CloseReason::TooManyConnections));
        assert!(cap.try_open(v6a).is_ok());
        assert!(cap.try_open(v6b).is_ok(), "the same /64");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            cap.try_open(mapped),
            Err(CloseReason::TooManyConnections),
            "a mapped IPv4 address counts as the IPv4 address"
        );
        assert_eq!(cap.try_open(v6a), Err(CloseReason::TooManyConnections));
        assert_eq!(cap.sources(), 2);
        cap.close(a);
        assert!(cap.try_open(a).is_ok());
        for ip in [a, a, v6a, v6b] {
            cap.close(ip);
        }
        assert_eq!(cap.sources(), 0, "no entry outlives its connections");
        let mut none = ConnectionCap::new(0);
        assert_eq!(none.try_open(a), Err(CloseReason::TooManyConnections));
        assert_eq!(none.sources(), 0);
    }
}
