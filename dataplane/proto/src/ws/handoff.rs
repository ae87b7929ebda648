//! The records one core's relay hands another through their single-producer single-consumer
//! ring: a finished RECV frame for a node on the receiving core, node presence, where a
//! host's mesh link is, and a mesh peer's GONE for a node of the receiving core.
//!
//! ```text
//! kind       layout                                     meaning
//! 0 FRAME    [0][dest NodeId: 16][RECV frame: 0..]      deliver to dest
//! 1 ARRIVE   [1][NodeId: 16][epoch: u64 LE]             a session of the node is on the sender
//! 2 LEAVE    [2][NodeId: 16][epoch: u64 LE]             that session ended
//! 3 MESH_UP  [3][HostId: 16]                            the sender holds the host's mesh link
//! 4 MESH_DOWN[4][HostId: 16]                            it no longer does
//! 5 GONE     [5][src NodeId: 16][dest NodeId: 16]       tell src (here) that dest is gone
//! ```
//!
//! Both ends are the same binary, so a record that does not parse is a bug; the shell counts
//! it as undecodable on the ring and skips it.

use boson_shared::{HostId, NodeId};

/// Bytes of the longest header ([`CoreRecord::Gone`]); a FRAME's frame follows its header.
pub const MAX_HEADER_LEN: usize = 1 + 16 + 16;

const FRAME: u8 = 0;
const ARRIVE: u8 = 1;
const LEAVE: u8 = 2;
const MESH_UP: u8 = 3;
const MESH_DOWN: u8 = 4;
const GONE: u8 = 5;

/// One cross-core record, borrowing a FRAME's frame from the bytes it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreRecord<'a> {
    /// A finished RECV frame for `dest`.
    Frame {
        /// The node it is for.
        dest: NodeId,
        /// The whole WebSocket frame, header included.
        frame: &'a [u8],
    },
    /// A session of `node` with session epoch `epoch` is on the sending core.
    Arrive {
        /// The node.
        node: NodeId,
        /// Its session's host-wide epoch.
        epoch: u64,
    },
    /// The session of `node` with `epoch` on the sending core ended.
    Leave {
        /// The node.
        node: NodeId,
        /// Its session's host-wide epoch.
        epoch: u64,
    },
    /// The sending core holds the mesh session of this host.
    MeshUp(HostId),
    /// The sending core no longer holds the mesh session of this host.
    MeshDown(HostId),
    /// Another host found `dest` connected nowhere there: tell `src`, on the receiving core.
    Gone {
        /// Our node that sent to `dest`.
        src: NodeId,
        /// The node that is gone.
        dest: NodeId,
    },
}

/// Why bytes are not a [`CoreRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// No kind byte.
    #[error("empty cross-core record")]
    Empty,
    /// A kind byte no record has.
    #[error("unknown cross-core record kind {0}")]
    UnknownKind(u8),
    /// The record's length does not fit its kind.
    #[error("cross-core record of kind {kind} has {len} bytes")]
    Length {
        /// The kind byte.
        kind: u8,
        /// The record's length.
        len: usize,
    },
}

impl<'a> CoreRecord<'a> {
    /// Parses one record, borrowing a FRAME's frame from `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RecordError> {
        let (&kind, rest) = bytes.split_first().ok_or(RecordError::Empty)?;
        let length = RecordError::Length {
            kind,
            len: bytes.len(),
        };
        let id = |at: usize| -> Result<[u8; 16], RecordError> {
            rest.get(at..at + 16)
                .and_then(|b| b.try_into().ok())
                .ok_or(length)
        };
        let exact = |len: usize| {
            if rest.len() == len {
                Ok(())
            } else {
                Err(length)
            }
        };
        let epoch = || -> Result<u64, RecordError> {
            exact(24)?;
            rest.get(16..24)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or(length)
        };
        Ok(match kind {
            FRAME => Self::Frame {
                dest: NodeId::from_bytes(id(0)?),
                frame: &rest[16..],
            },
            ARRIVE => Self::Arrive {
                node: NodeId::from_bytes(id(0)?),
                epoch: epoch()?,
            },
            LEAVE => Self::Leave {
                node: NodeId::from_bytes(id(0)?),
                epoch: epoch()?,
            },
            MESH_UP | MESH_DOWN => {
                exact(16)?;
                let host = HostId::from_bytes(id(0)?);
                if kind == MESH_UP {
                    Self::MeshUp(host)
                } else {
                    Self::MeshDown(host)
                }
            }
            GONE => {
                exact(32)?;
                Self::Gone {
                    src: NodeId::from_bytes(id(0)?),
                    dest: NodeId::from_bytes(id(16)?),
                }
            }
            other => return Err(RecordError::UnknownKind(other)),
        })
    }

    /// Writes the record's header into `header` and returns it with the bytes that follow
    /// it (a FRAME's frame, else nothing): the two parts of one gathered ring push, so the
    /// frame is copied once, into the ring.
    pub fn encode<'h>(&self, header: &'h mut [u8; MAX_HEADER_LEN]) -> (&'h [u8], &'a [u8]) {
        let (kind, first, second, body): (u8, &[u8; 16], &[u8], &'a [u8]) = match self {
            Self::Frame { dest, frame } => (FRAME, dest.as_bytes(), &[], frame),
            Self::Arrive { node, .. } => (ARRIVE, node.as_bytes(), &[], &[]),
            Self::Leave { node, .. } => (LEAVE, node.as_bytes(), &[], &[]),
            Self::MeshUp(host) => (MESH_UP, host.as_bytes(), &[], &[]),
            Self::MeshDown(host) => (MESH_DOWN, host.as_bytes(), &[], &[]),
            Self::Gone { src, dest } => (GONE, src.as_bytes(), dest.as_bytes(), &[]),
        };
        header[0] = kind;
        header[1..17].copy_from_slice(first);
        let mut len = 17;
        let epoch = match self {
            Self::Arrive { epoch, .. } | Self::Leave { epoch, .. } => Some(epoch.to_le_bytes()),
            Self::Frame { .. } | Self::MeshUp(_) | Self::MeshDown(_) | Self::Gone { .. } => None,
        };
        for tail in [second, epoch.as_ref().map_or(&[][..], |e| &e[..])] {
            header[len..len + tail.len()].copy_from_slice(tail);
            len += tail.len();
        }
        (&header[..len], body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    fn round_trip(record: CoreRecord<'_>) -> Vec<u8> {
        let mut header = [0; MAX_HEADER_LEN];
        let (head, body) = record.encode(&mut header);
        let bytes = [head, body].concat();
        assert_eq!(CoreRecord::parse(&bytes), Ok(record));
        bytes
    }

    #[test]
    fn every_kind_round_trips_in_its_documented_layout() {
        let node = NodeId::from_bytes(id(1));
        let other = NodeId::from_bytes(id(2));
        let host = HostId::from_bytes(id(3));
        let frame = [0x82, 3, 2, 9, 9];
        let bytes = round_trip(CoreRecord::Frame {
            dest: node,
            frame: &frame,
        });
        assert_eq!(bytes, [&[0][..], &id(1), &frame].concat());
        let bytes = round_trip(CoreRecord::Arrive {
            node,
            epoch: 0x0102_0304_0506_0708,
        });
        assert_eq!(
            bytes,
            [&[1][..], &id(1), &[8, 7, 6, 5, 4, 3, 2, 1]].concat()
        );
        let bytes = round_trip(CoreRecord::Leave { node, epoch: 7 });
        assert_eq!(bytes, [&[2][..], &id(1), &7u64.to_le_bytes()].concat());
        assert_eq!(
            round_trip(CoreRecord::MeshUp(host)),
            [&[3][..], &id(3)].concat()
        );
        assert_eq!(
            round_trip(CoreRecord::MeshDown(host)),
            [&[4][..], &id(3)].concat()
        );
        let bytes = round_trip(CoreRecord::Gone {
            src: node,
            dest: other,
        });
        assert_eq!(bytes, [&[5][..], &id(1), &id(2)].concat());
        assert_eq!(bytes.len(), MAX_HEADER_LEN);
        // A FRAME may carry an empty frame (the hub rejects it, not the codec).
        round_trip(CoreRecord::Frame {
            dest: node,
            frame: &[],
        });
    }

    #[test]
    fn malformed_records_are_refused_by_name() {
        assert_eq!(CoreRecord::parse(&[]), Err(RecordError::Empty));
        assert_eq!(
            CoreRecord::parse(&[6; 17]),
            Err(RecordError::UnknownKind(6))
        );
        for (bytes, kind) in [
            ([&[0][..], &[1; 15]].concat(), 0),
            ([&[1][..], &[1; 16], &[0; 7]].concat(), 1),
            ([&[2][..], &[1; 16], &[0; 9]].concat(), 2),
            ([&[3][..], &[1; 17]].concat(), 3),
            ([&[4][..], &[1; 15]].concat(), 4),
            ([&[5][..], &[1; 31]].concat(), 5),
        ] {
            assert_eq!(
                CoreRecord::parse(&bytes),
                Err(RecordError::Length {
                    kind,
                    len: bytes.len()
                }),
                "{bytes:?}"
            );
        }
    }
}
