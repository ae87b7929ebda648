//! Model checks of the ring and seqlock protocols: loom runs each closure under every
//! interleaving (up to a preemption bound) and every outcome the memory model allows for
//! the relaxed loads, so a missing Acquire/Release shows up as stale bytes or a torn
//! snapshot. Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p boson-channel --release --lib loom
//! ```

use std::sync::Arc;

use loom::thread;

use crate::layout::{Incarnation, RingRegion};
use crate::mem::Mem;
use crate::ring::{Consumer, Producer, PushError, Ring};
use crate::stats::{StatsBlock, StatsWriter, block_words};
use crate::sync::spin;

/// A tiny ring: the control block's words, then 32 data bytes (four words), so three
/// messages of 8 + 16 + 16 frame bytes cannot all be in it at once and the last wraps.
fn tiny_ring() -> Ring {
    let mem = Arc::new(Mem::zeroed(256 + 32));
    Ring::new(
        mem,
        RingRegion {
            control: 0,
            data: 256,
            capacity: 32,
        },
    )
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

#[test]
fn loom_spsc_ring_delivers_in_order_across_the_wrap() {
    model(|| {
        let ring = tiny_ring();
        let messages: [&[u8]; 3] = [b"a", b"0123456789ab", b"wxyz!"];
        let mut producer = Producer::new(ring.clone());
        let sender = thread::spawn(move || {
            for message in messages {
                loop {
                    match producer.push(message) {
                        Ok(()) => break,
                        Err(PushError::Full) => spin(),
                        Err(other) => panic!("push failed: {other:?}"),
                    }
                }
            }
        });
        let mut consumer = Consumer::new(ring.clone());
        let mut out = Vec::new();
        for expected in messages {
            loop {
                match consumer.pop(&mut out) {
                    Ok(true) => break,
                    Ok(false) => spin(),
                    Err(corruption) => panic!("corrupt: {corruption}"),
                }
            }
            assert_eq!(out, expected);
        }
        sender.join().unwrap();
        let status = ring.status();
        assert_eq!(
            (status.committed, status.consumed, status.depth_bytes),
            (3, 3, 0)
        );
    });
}

#[test]
fn loom_gathered_messages_drain_in_place_across_the_wrap() {
    model(|| {
        let ring = tiny_ring();
        // Parts that end mid-word; the second and third messages cannot both be in the ring,
        // and the third wraps, so the drain's single head store must free the space.
        let messages: [&[&[u8]]; 3] = [&[b"a"], &[b"0123", b"456", b"789ab"], &[b"wx", b"yz!"]];
        let mut producer = Producer::new(ring.clone());
        let sender = thread::spawn(move || {
            for parts in messages {
                loop {
                    match producer.push_parts(parts) {
                        Ok(()) => break,
                        Err(PushError::Full) => spin(),
                        Err(other) => panic!("push failed: {other:?}"),
                    }
                }
            }
        });
        let mut consumer = Consumer::new(ring.clone());
        let mut received = Vec::new();
        while received.len() < messages.len() {
            let drained = consumer
                .drain(|record| {
                    let mut bytes = vec![0; record.len()];
                    record.read(0, &mut bytes).unwrap();
                    received.push(bytes);
                })
                .unwrap();
            if drained == 0 {
                spin();
            }
        }
        sender.join().unwrap();
        let expected: Vec<Vec<u8>> = messages.iter().map(|parts| parts.concat()).collect();
        assert_eq!(received, expected);
        let status = ring.status();
        assert_eq!(
            (status.committed, status.consumed, status.depth_bytes),
            (3, 3, 0)
        );
    });
}

#[test]
fn loom_consumer_restart_resumes_from_the_shared_head() {
    model(|| {
        let ring = tiny_ring();
        let mut producer = Producer::new(ring.clone());
        let sender = thread::spawn(move || {
            for message in [&b"one"[..], b"two", b"three"] {
                while producer.push(message).is_err() {
                    spin();
                }
            }
        });
        let mut received = Vec::new();
        let mut out = Vec::new();
        // Three consumers in turn, each taking one message, as a consumer that is killed
        // after each message and re-attached would.
        for _ in 0..3 {
            let mut consumer = Consumer::new(ring.clone());
            while !consumer.pop(&mut out).unwrap() {
                spin();
            }
            received.push(out.clone());
        }
        sender.join().unwrap();
        assert_eq!(received, [&b"one"[..], b"two", b"three"]);
    });
}

#[test]
fn loom_stats_snapshots_are_never_torn() {
    model(|| {
        let mem = Arc::new(Mem::zeroed(block_words(2) * 8));
        let block = StatsBlock::new(mem, 0, 2);
        let mut writer = StatsWriter::new(block.clone(), Incarnation(7));
        let publisher = thread::spawn(move || {
            for n in 1..=2 {
                writer.publish(n, &[n, n]).unwrap();
            }
        });
        // Ok or Contended; never a mix of two publishes, never a half-written copy. (One
        // read: a second one makes the model ten times slower and adds no new ordering.)
        if let Ok(snapshot) = block.read() {
            let n = snapshot.heartbeat;
            assert_eq!(snapshot.values, [n, n]);
            if n > 0 {
                assert_eq!(snapshot.incarnation, Incarnation(7));
            }
        }
        publisher.join().unwrap();
        let last = block.read().unwrap();
        assert_eq!((last.heartbeat, last.values.as_slice()), (2, &[2, 2][..]));
        assert_eq!(last.publishes, 2);
    });
}
