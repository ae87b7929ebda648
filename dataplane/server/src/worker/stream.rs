//! The worker's side of TURN over TCP and TLS: frames from [`StreamShell`](crate::turn_stream::StreamShell) go to the core as
//! a stream client's messages, and the core's answers go back over the connection (replies)
//! or out of a relay socket (relayed data), as for the UDP listener; a peer's data for a
//! stream client goes into its connection's queue.

use std::ops::Range;
use std::time::Instant;

use boson_dataplane_proto::ClientAddr;

use super::Worker;
use crate::io::bufs::SLOT_SIZE;
use crate::io::{BufId, CONTROL_LEN, Io, RX_START};
use crate::packet_core::{ClientAction, PacketCore};

impl<C: PacketCore, I: Io> Worker<C, I> {
    /// Runs the stream listeners' part of a turn; returns whether connections wait to be
    /// read again (the next wait must not sleep).
    pub(super) fn stream_turn(&mut self, now: Instant, aux_ready: bool) -> bool {
        let Some(mut stream) = self.stream.take() else {
            return false;
        };
        stream.turn(now, aux_ready, |now, client, frame, reply| {
            self.on_stream_frame(now, client, frame, reply);
        });
        for client in stream.take_closed() {
            self.core.handle_client_closed(now, client);
        }
        self.run_commands();
        let more = stream.has_more();
        self.stream = Some(stream);
        more
    }

    /// Fires the stream listeners' timeouts when due; returns the earlier of `deadline` and
    /// their next one.
    pub(super) fn stream_timeout(
        &mut self,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Option<Instant> {
        let Some(stream) = &mut self.stream else {
            return deadline;
        };
        if stream.poll_timeout().is_some_and(|at| at <= now) {
            stream.handle_timeout(now);
            for client in stream.take_closed() {
                self.core.handle_client_closed(now, client);
            }
            self.run_commands();
        }
        let Some(stream) = &self.stream else {
            return deadline;
        };
        match (deadline, stream.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One frame from a stream client: handled as the UDP listener handles a datagram, the
    /// reply appended to `reply` instead of sent.
    fn on_stream_frame(
        &mut self,
        now: Instant,
        client: ClientAddr,
        frame: &[u8],
        reply: &mut Vec<u8>,
    ) {
        let len = frame.len();
        // The shell bounds frames to a slot's payload area.
        if RX_START + len > SLOT_SIZE {
            self.counters.bad_core_range += 1;
            return;
        }
        let Some(buf) = self.io.alloc() else {
            self.counters.no_tx_buffer += 1;
            return;
        };
        let Some(out) = self.io.alloc() else {
            self.counters.no_tx_buffer += 1;
            self.io.release(buf);
            return;
        };
        let (rx, tx) = self.io.bufs().pair_mut(&buf, &out);
        rx[RX_START..RX_START + len].copy_from_slice(frame);
        let action = self
            .core
            .handle_listener(now, client, &rx[RX_START..RX_START + len], tx);
        // As for a datagram: relay sockets first, and no reply announcing one that failed.
        let failed_before = self.counters.relay_bind_failed;
        self.run_commands();
        let bind_failed = self.counters.relay_bind_failed != failed_before;
        match action {
            ClientAction::Reply { len, .. } if !bind_failed && len <= SLOT_SIZE => {
                reply.extend_from_slice(&self.io.bufs().slot_mut(&out)[..len]);
                self.io.release(buf);
                self.io.release(out);
            }
            ClientAction::Reply { .. } | ClientAction::Absorb => {
                self.io.release(buf);
                self.io.release(out);
            }
            ClientAction::Relay {
                port,
                peer,
                payload,
            } => {
                self.io.release(out);
                self.send_relayed(port, peer, buf, payload, len);
            }
            ClientAction::Drop(reason) => {
                self.io.release(buf);
                self.io.release(out);
                self.drop_log.record(now, self.index, reason, client.get());
            }
        }
    }

    /// A peer's data for a stream client, encapsulated by the core in `buf[range]` (the
    /// range as the core saw the slot, from `CONTROL_LEN` on): into its connection's queue.
    pub(super) fn forward_to_stream(&mut self, dst: ClientAddr, buf: BufId, range: Range<usize>) {
        let range = CONTROL_LEN + range.start..CONTROL_LEN + range.end;
        match &mut self.stream {
            Some(stream) if range.start <= range.end && range.end <= SLOT_SIZE => {
                let frame = &self.io.bufs().slot_mut(&buf)[range];
                stream.forward(dst.get(), frame);
            }
            Some(_) => self.counters.bad_core_range += 1,
            None => self.counters.relay_missing += 1,
        }
        self.io.release(buf);
    }
}
