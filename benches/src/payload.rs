//! What every generated packet carries, so the sink can account for it.
//!
//! ```text
//!  0               4               8                              16                             24
//! +---------------+---------------+------------------------------+------------------------------+---- ...
//! | magic "BNCH"  | flow (u32 BE) | sequence number (u64 BE)     | send time, ns (u64 BE)       | zeros
//! +---------------+---------------+------------------------------+------------------------------+---- ...
//! ```
//!
//! The payload is what the peer sink receives: through TURN it travels as ChannelData (a 4-byte
//! header in front), and the relay strips that header before sending it on. The send time counts
//! from the scenario's [`Epoch`](crate::clock::Epoch). The rest of the payload, up to the packet
//! size the run asks for, is zeros.

/// First four bytes of every payload; tells our packets from anything else reaching a sink.
pub const MAGIC: [u8; 4] = *b"BNCH";

/// Bytes of the stamp at the start of each payload: magic (4) + flow (4) + sequence (8) + send
/// time (8). The smallest payload a run may ask for.
pub const STAMP_LEN: usize = 24;

/// The accounting data in a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Which flow (allocation) sent it: an index into the generator's flows.
    pub flow: u32,
    /// Per-flow sequence number, from 0.
    pub seq: u64,
    /// Send time in nanoseconds since the scenario's epoch.
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp into the first [`STAMP_LEN`] bytes of a payload.
    pub fn encode(&self, out: &mut [u8; STAMP_LEN]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&self.flow.to_be_bytes());
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
        out[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads the stamp at the start of `payload`; `None` if it is too short or lacks the magic.
    pub fn decode(payload: &[u8]) -> Option<Self> {
        let stamp = payload.first_chunk::<STAMP_LEN>()?;
        if stamp[0..4] != MAGIC {
            return None;
        }
        let flow = u32::from_be_bytes(stamp[4..8].try_into().ok()?);
        let seq = u64::from_be_bytes(stamp[8..16].try_into().ok()?);
        let sent_ns = u64::from_be_bytes(stamp[16..24].try_into().ok()?);
        Some(Self { flow, seq, sent_ns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let stamp = Stamp {
            flow: 7,
            seq: 0x0102_0304_0506_0708,
            sent_ns: u64::MAX - 1,
        };
        let mut payload = [0xAAu8; 100];
        stamp.encode(payload.first_chunk_mut().unwrap());
        assert_eq!(&payload[..4], b"BNCH");
        assert_eq!(&payload[4..8], &[0, 0, 0, 7]);
        assert_eq!(&payload[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(payload[24], 0xAA, "bytes after the stamp are left alone");
        assert_eq!(Stamp::decode(&payload), Some(stamp));
        assert_eq!(Stamp::decode(&payload[..STAMP_LEN]), Some(stamp));
    }

    #[test]
    fn short_or_foreign_payloads_are_refused() {
        let mut payload = [0u8; STAMP_LEN];
        Stamp {
            flow: 1,
            seq: 2,
            sent_ns: 3,
        }
        .encode(&mut payload);
        assert_eq!(Stamp::decode(&payload[..STAMP_LEN - 1]), None);
        assert_eq!(Stamp::decode(&[]), None);
        payload[0] = b'X';
        assert_eq!(Stamp::decode(&payload), None);
    }
}
