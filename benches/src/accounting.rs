//! What the sinks count: delivered packets per flow, loss, reordering and one-way latency.
//!
//! * **Delivered**: packets with our [`Stamp`](crate::payload::Stamp) that reached a sink.
//! * **Lost**: sent (accepted by the kernel at the sender) minus delivered, at the end of the
//!   drain period. Loopback UDP does not duplicate, so a duplicate would show up as a packet
//!   counted as reordered, never as negative loss (loss saturates at 0).
//! * **Reordered**: packets that arrived after a higher sequence number of the same flow.
//! * **Latency**: receive time minus send time, both on the generator's monotonic clock, in an
//!   HDR histogram with 3 significant digits (so p999 is exact to 0.1%).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histogram records, in nanoseconds (60 s); anything later is clamped.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Sequence accounting of one flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowTracker {
    /// One past the highest sequence number seen.
    next: u64,
    received: u64,
    reordered: u64,
}

impl FlowTracker {
    /// Accounts for a packet with sequence number `seq`.
    pub fn handle(&mut self, seq: u64) {
        self.received += 1;
        if seq < self.next {
            self.reordered += 1;
        } else {
            self.next = seq.saturating_add(1);
        }
    }

    /// Packets seen.
    pub const fn received(&self) -> u64 {
        self.received
    }

    /// Packets that arrived after a higher sequence number.
    pub const fn reordered(&self) -> u64 {
        self.reordered
    }
}

/// Everything the sinks of one scenario count.
#[derive(Debug, Clone)]
pub struct Delivery {
    flows: Vec<FlowTracker>,
    foreign: u64,
    latency: Histogram<u64>,
}

impl Delivery {
    /// Accounting for `flows` flows.
    pub fn new(flows: usize) -> Self {
        let latency = Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
            .unwrap_or_else(|error| unreachable!("constant histogram bounds: {error}"));
        Self {
            flows: vec![FlowTracker::default(); flows],
            foreign: 0,
            latency,
        }
    }

    /// Accounts for a packet of `flow` with sequence `seq`, sent at `sent_ns` and received at
    /// `received_ns` (same epoch). A flow this accounting does not know counts as foreign.
    pub fn handle(&mut self, flow: u32, seq: u64, sent_ns: u64, received_ns: u64) {
        let Some(tracker) = usize::try_from(flow)
            .ok()
            .and_then(|flow| self.flows.get_mut(flow))
        else {
            self.foreign += 1;
            return;
        };
        tracker.handle(seq);
        let latency = received_ns.saturating_sub(sent_ns).clamp(1, MAX_LATENCY_NS);
        self.latency.saturating_record(latency);
    }

    /// Accounts for a datagram that is not one of ours.
    pub fn handle_foreign(&mut self) {
        self.foreign += 1;
    }

    /// Adds what `other` counted (another thread's sinks, for the same flows) to this.
    pub fn merge(&mut self, other: &Self) {
        if self.flows.len() < other.flows.len() {
            self.flows.resize(other.flows.len(), FlowTracker::default());
        }
        for (mine, theirs) in self.flows.iter_mut().zip(&other.flows) {
            mine.next = mine.next.max(theirs.next);
            mine.received += theirs.received;
            mine.reordered += theirs.reordered;
        }
        self.foreign += other.foreign;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    /// Packets delivered, all flows.
    pub fn received(&self) -> u64 {
        self.flows.iter().map(FlowTracker::received).sum()
    }

    /// Packets reordered, all flows.
    pub fn reordered(&self) -> u64 {
        self.flows.iter().map(FlowTracker::reordered).sum()
    }

    /// Datagrams that were not ours, or named an unknown flow.
    pub const fn foreign(&self) -> u64 {
        self.foreign
    }

    /// The latency percentiles.
    pub fn latency(&self) -> LatencySummary {
        LatencySummary::of(&self.latency)
    }
}

/// Latency percentiles in microseconds; all zero when nothing was delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl LatencySummary {
    /// Percentiles of a histogram of nanoseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Self {
            p50_us: us(histogram.value_at_quantile(0.50)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
        }
    }
}

/// Packets lost: sent minus delivered, never negative.
pub const fn lost(sent: u64, received: u64) -> u64 {
    sent.saturating_sub(received)
}

/// Share of sent packets lost, 0.0..=1.0; 0 when nothing was sent.
pub fn loss_ratio(sent: u64, received: u64) -> f64 {
    if sent == 0 {
        0.0
    } else {
        lost(sent, received) as f64 / sent as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_flow_has_no_reordering() {
        let mut flow = FlowTracker::default();
        for seq in 0..10 {
            flow.handle(seq);
        }
        assert_eq!((flow.received(), flow.reordered()), (10, 0));
    }

    #[test]
    fn late_packets_count_as_reordered_and_gaps_as_loss() {
        let mut flow = FlowTracker::default();
        // 0 1 3 2 5 (4 lost)
        for seq in [0, 1, 3, 2, 5] {
            flow.handle(seq);
        }
        assert_eq!(flow.received(), 5);
        assert_eq!(flow.reordered(), 1, "only 2 came after a higher number");
        assert_eq!(lost(6, flow.received()), 1);
        assert!((loss_ratio(6, 5) - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(loss_ratio(0, 0), 0.0);
        assert_eq!(lost(3, 5), 0, "duplicates never make loss negative");
    }

    #[test]
    fn delivery_counts_per_flow_and_foreign() {
        let mut delivery = Delivery::new(2);
        delivery.handle(0, 0, 1_000, 11_000);
        delivery.handle(1, 0, 1_000, 21_000);
        delivery.handle(1, 1, 2_000, 22_000);
        delivery.handle(5, 0, 0, 1);
        delivery.handle_foreign();
        assert_eq!(delivery.received(), 3);
        assert_eq!(delivery.reordered(), 0);
        assert_eq!(delivery.foreign(), 2);
        let latency = delivery.latency();
        assert!((latency.p50_us - 20.0).abs() < 0.05, "{latency:?}");
        assert!((latency.max_us - 20.0).abs() < 0.05, "{latency:?}");
    }

    #[test]
    fn deliveries_of_two_threads_merge() {
        let mut one = Delivery::new(3);
        one.handle(0, 0, 0, 10_000);
        one.handle(0, 1, 0, 10_000);
        let mut two = Delivery::new(3);
        two.handle(2, 0, 0, 30_000);
        two.handle(2, 2, 0, 30_000);
        two.handle(2, 1, 0, 30_000);
        two.handle_foreign();
        one.merge(&two);
        assert_eq!(one.received(), 5);
        assert_eq!(one.reordered(), 1);
        assert_eq!(one.foreign(), 1);
        let latency = one.latency();
        assert!((latency.p50_us - 30.0).abs() < 0.05, "{latency:?}");
        assert!((latency.max_us - 30.0).abs() < 0.05, "{latency:?}");
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_NS, 3).unwrap();
        // 1..=1000 µs, one sample each.
        for us in 1..=1000u64 {
            histogram.record(us * 1_000).unwrap();
        }
        let summary = LatencySummary::of(&histogram);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002;
        assert!(close(summary.p50_us, 500.0), "{summary:?}");
        assert!(close(summary.p99_us, 990.0), "{summary:?}");
        assert!(close(summary.p999_us, 999.0), "{summary:?}");
        assert!(close(summary.max_us, 1000.0), "{summary:?}");
        assert_eq!(
            LatencySummary::of(&Histogram::new(3).unwrap()),
            LatencySummary::default()
        );
    }

    #[test]
    fn latency_is_clamped_not_lost() {
        let mut delivery = Delivery::new(1);
        delivery.handle(0, 0, 10, 5); // received "before" sent: clamps to 1 ns
        delivery.handle(0, 1, 0, u64::MAX); // absurdly late: clamps to the maximum
        assert_eq!(delivery.received(), 2);
        assert!(delivery.latency().max_us >= 59_000_000.0);
    }
}
