//! Heap allocations inside the relay per relayed packet, counted by a global allocator
//! while the harness is inside a relay call: the numbers behind the allocation notes of the
//! `quic` module doc.

#![allow(clippy::unwrap_used, reason = "tests: a panic is a test failure")]

mod quic_harness;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quic_harness::{IN_RELAY, Sim, config, node};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

fn count() {
    if IN_RELAY.try_with(std::cell::Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Relays `n` packets each way between two clients with at most `window` in flight per
/// direction; returns the relay's allocations per relayed packet.
fn allocations_per_packet(sim: &mut Sim, n: u32, window: u32, len: usize) -> f64 {
    let (a, b) = (0, 1);
    let before = ALLOCS.load(Ordering::Relaxed);
    let (mut sent, mut got) = ([0u32; 2], [0u32; 2]);
    while got != [n, n] {
        for (dir, (from, dest)) in [(a, node(0xB)), (b, node(0xA))].into_iter().enumerate() {
            while sent[dir] < n && sent[dir] - got[dir] < window {
                if sim.clients[from].send(&dest, &vec![7; len]).is_err() {
                    break;
                }
                sent[dir] += 1;
            }
        }
        sim.run_for(Duration::from_millis(1));
        for (dir, to) in [b, a].into_iter().enumerate() {
            got[dir] += sim.clients[to].recvs.len() as u32;
            sim.clients[to].recvs.clear();
        }
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    allocs as f64 / f64::from(2 * n)
}

#[test]
fn relay_allocations_per_packet() {
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    sim.join(1, &cert, node(0xA));
    sim.join(2, &cert, node(0xB));
    // Warm up: congestion windows open, path MTU found, buffers and maps at size.
    allocations_per_packet(&mut sim, 5_000, 16, 1200);

    let small = allocations_per_packet(&mut sim, 20_000, 16, 100);
    let large = allocations_per_packet(&mut sim, 20_000, 16, 1200);
    let burst = allocations_per_packet(&mut sim, 20_000, 40, 1200);
    eprintln!(
        "relay allocations per relayed packet: 100 B {small:.3}, 1200 B {large:.3}, \
         1200 B with a standing queue {burst:.3}"
    );
    assert_eq!(sim.relay.stats().drops.total(), 0);
    // Well under one per packet: the relay's own buffers are reused, and what remains is
    // quinn's amortized bookkeeping. A regression to a per-packet allocation anywhere on
    // the path (in or out) pushes these above 1.
    for per_packet in [small, large, burst] {
        assert!(per_packet < 0.5, "{per_packet:.3} allocations per packet");
    }
}
