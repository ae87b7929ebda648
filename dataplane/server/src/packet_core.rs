//! The protocol core a worker drives: [`PacketCore`], its decisions ([`ClientAction`],
//! [`PeerAction`]), its commands ([`Command`]), its events ([`TurnEvent`]) and the setting
//! changes it is handed ([`CoreUpdate`]).
//!
//! The trait mirrors the sans-IO TURN [`Server`] method for method
//! (`handle_client_input` → [`handle_listener`](PacketCore::handle_listener),
//! `handle_peer_input` → [`handle_relay`](PacketCore::handle_relay),
//! `handle_allocation_failed` → [`handle_relay_failed`](PacketCore::handle_relay_failed), the
//! rest by name) and speaks its action and command types, so the TURN server implements it by
//! delegation. The STUN Binding responder ([`StunServer`]) implements it too: a complete STUN
//! server with no relay ports.

use std::time::Instant;

use boson_dataplane_proto::turn::PeerFilter;
use boson_dataplane_proto::{BindingOutcome, ClientAddr, DropReason, Server, Stats, StunServer};
pub use boson_dataplane_proto::{
    ClientAction, Command, PeerAction, PeerAddr, RelayPort, TurnEvent,
};
use boson_shared::TurnSecret;
use rand_core::RngCore;

/// A setting the control plane changed at run time, handed to every worker's core at the
/// start of its next loop turn (see [`SettingsHandle`](crate::SettingsHandle)). Each carries
/// the whole new value, so only the latest of a kind matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreUpdate {
    /// The TURN REST secrets, newest first ([`Server::set_secrets`]).
    SetSecrets(Vec<TurnSecret>),
    /// Allocations per user ([`Server::set_max_allocations_per_user`]).
    SetMaxAllocationsPerUser(u32),
    /// The peer filter ([`Server::set_peer_filter`]).
    SetPeerFilter(PeerFilter),
    /// Where new Allocates go while draining ([`Server::set_alternate_server`]).
    SetAlternateServer(Option<std::net::SocketAddr>),
}

/// A sans-IO packet core, driven by one worker.
///
/// # Driving contract
///
/// The worker calls, per loop turn:
///
/// 1. [`next_command`](Self::next_command) until `None`, executing each (bind or close a relay
///    socket). It does this after **every** `handle_*` call too, before acting on the
///    returned action, so a relay socket is bound before the reply that announces it is
///    queued. If a `CreateAllocation` from a [`handle_listener`](Self::handle_listener) call
///    cannot be bound, the worker calls [`handle_relay_failed`](Self::handle_relay_failed)
///    and withholds that call's `Reply` (the client retransmits and gets a fresh answer).
/// 2. For each received datagram (up to the worker's budget):
///    [`handle_listener`](Self::handle_listener) for the shared listener socket,
///    [`handle_relay`](Self::handle_relay) for a relay socket, and acts on the returned action.
/// 3. [`poll_timeout`](Self::poll_timeout), to know how long it may sleep.
/// 4. [`handle_timeout`](Self::handle_timeout) when that instant has passed.
/// 5. [`poll_event`](Self::poll_event) until `None`, handing each to the control plane.
///
/// Setting changes reach it through [`handle_update`](Self::handle_update) at the start of a
/// turn, before any datagram of that turn.
///
/// `now` is always read by the shell's clock; cores never read the clock. Datagrams are
/// borrowed from worker-owned buffers for the duration of the call.
pub trait PacketCore {
    /// A datagram from `from` arrived on the listener socket. `packet` is its payload; `out`
    /// (2048 bytes) is a scratch buffer for a reply.
    fn handle_listener(
        &mut self,
        now: Instant,
        from: ClientAddr,
        packet: &[u8],
        out: &mut [u8],
    ) -> ClientAction;

    /// A datagram from `from` arrived on relay socket `port`. The payload is
    /// `buf[HEADROOM..HEADROOM + len]`, and `buf.len() >= HEADROOM + len + 4`: the core may
    /// write an encapsulation header in front of it (and padding after it) in place, and
    /// returns the range of `buf` to forward. See [`HEADROOM`](crate::HEADROOM).
    fn handle_relay(
        &mut self,
        now: Instant,
        port: RelayPort,
        from: PeerAddr,
        buf: &mut [u8],
        len: usize,
    ) -> PeerAction;

    /// The next command for the shell, in the order issued.
    fn next_command(&mut self) -> Option<Command>;

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) must run.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Expires whatever is due at `now`.
    fn handle_timeout(&mut self, now: Instant);

    /// The shell could not bind the relay socket of a
    /// [`Command::CreateAllocation`]; the core frees the allocation.
    fn handle_relay_failed(&mut self, port: RelayPort);

    /// The core's counters, exported per worker by the shell.
    fn stats(&self) -> &Stats;

    /// Graceful shutdown: refuse new work from now on and let what exists run its course.
    /// The default does nothing, for cores that hold nothing to let run out.
    fn start_draining(&mut self) {}

    /// The control plane changed a setting; it applies to what follows. The default ignores
    /// it, for cores without such settings.
    fn handle_update(&mut self, _now: Instant, _update: &CoreUpdate) {}

    /// The stream (TCP or TLS) connection of `client` closed. The default does nothing, for
    /// cores that keep no state per client.
    fn handle_client_closed(&mut self, _now: Instant, _client: ClientAddr) {}

    /// The next event for the control plane, in the order they happened. The default has
    /// none.
    fn poll_event(&mut self) -> Option<TurnEvent> {
        None
    }
}

impl PacketCore for StunServer {
    fn handle_listener(
        &mut self,
        _now: Instant,
        from: ClientAddr,
        packet: &[u8],
        out: &mut [u8],
    ) -> ClientAction {
        match self.handle_datagram(from, packet, out) {
            BindingOutcome::Reply { dst, len } => ClientAction::Reply { dst, len },
            BindingOutcome::Absorb => ClientAction::Absorb,
            BindingOutcome::Drop(reason) => ClientAction::Drop(reason),
        }
    }

    fn handle_relay(
        &mut self,
        _now: Instant,
        _port: RelayPort,
        _from: PeerAddr,
        _buf: &mut [u8],
        _len: usize,
    ) -> PeerAction {
        // Unreachable in practice: this core never asks for a relay socket.
        PeerAction::Drop(DropReason::NoAllocation)
    }

    fn next_command(&mut self) -> Option<Command> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn handle_relay_failed(&mut self, _port: RelayPort) {}

    fn stats(&self) -> &Stats {
        Self::stats(self)
    }
}

impl<R: RngCore> PacketCore for Server<R> {
    fn handle_listener(
        &mut self,
        now: Instant,
        from: ClientAddr,
        packet: &[u8],
        out: &mut [u8],
    ) -> ClientAction {
        self.handle_client_input(now, from, packet, out)
    }

    fn handle_relay(
        &mut self,
        now: Instant,
        port: RelayPort,
        from: PeerAddr,
        buf: &mut [u8],
        len: usize,
    ) -> PeerAction {
        self.handle_peer_input(now, port, from, buf, len)
    }

    fn next_command(&mut self) -> Option<Command> {
        Self::next_command(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Self::poll_timeout(self)
    }

    fn handle_timeout(&mut self, now: Instant) {
        Self::handle_timeout(self, now);
    }

    fn handle_relay_failed(&mut self, port: RelayPort) {
        self.handle_allocation_failed(port);
    }

    fn stats(&self) -> &Stats {
        Self::stats(self)
    }

    /// New Allocates get 403; existing allocations keep relaying until they end.
    fn start_draining(&mut self) {
        Self::start_draining(self);
    }

    fn handle_update(&mut self, now: Instant, update: &CoreUpdate) {
        match update {
            CoreUpdate::SetSecrets(secrets) => {
                if let Err(error) = self.set_secrets(now, secrets.clone()) {
                    tracing::warn!("TURN secrets not changed: {error}");
                }
            }
            CoreUpdate::SetMaxAllocationsPerUser(per_user) => {
                self.set_max_allocations_per_user(now, *per_user);
            }
            CoreUpdate::SetPeerFilter(filter) => self.set_peer_filter(now, filter.clone()),
            CoreUpdate::SetAlternateServer(alternate) => self.set_alternate_server(*alternate),
        }
    }

    fn handle_client_closed(&mut self, now: Instant, client: ClientAddr) {
        Self::handle_client_closed(self, now, client);
    }

    fn poll_event(&mut self) -> Option<TurnEvent> {
        Self::poll_event(self)
    }
}
