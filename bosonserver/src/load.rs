//! The relay host's bandwidth load, from the dataplane's byte counters: a pure meter fed a
//! sample of the counters' sum with the time it was read, answering the rate over the last
//! window (the host heartbeat interval) in Mbit/s.
//!
//! Which bytes count: the payload TURN relayed in both directions
//! (`relayed_to_peer_bytes`, `relayed_to_client_bytes`) and the WireGuard bytes the node
//! relay (WebSocket and QUIC) carried (`ws_bytes_relayed`). Each relayed byte is counted
//! once, on the way in, which is what `--relay-bandwidth` is compared against: "relayed
//! traffic, both directions together".

use std::collections::VecDeque;
use std::time::Duration;

use boson_control::clock::UnixMillis;
use boson_dataplane::WorkerStatsSnapshot;

/// The relayed bytes of every worker together, monotonic while the dataplane runs.
pub(crate) fn relayed_bytes(stats: &[WorkerStatsSnapshot]) -> u64 {
    stats
        .iter()
        .map(|worker| {
            let c = &worker.counters;
            c.relayed_to_peer_bytes
                .saturating_add(c.relayed_to_client_bytes)
                .saturating_add(c.ws_bytes_relayed)
        })
        .fold(0, u64::saturating_add)
}

/// The rate of a monotonic byte counter over a sliding window.
///
/// Feed it [`BandwidthMeter::handle_sample`] at any cadence (the binary does every second);
/// it keeps the samples of the last `window` plus the newest one older than that, and
/// answers the rate between that oldest sample and the newest. So the answer covers the
/// window once the meter has run that long, and the time since the first sample before.
/// A counter that goes backwards (the dataplane restarted) starts the meter over.
#[derive(Debug)]
pub(crate) struct BandwidthMeter {
    window: Duration,
    samples: VecDeque<(UnixMillis, u64)>,
}

impl BandwidthMeter {
    /// A meter averaging over `window`.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Records that the counter read `bytes` at `now`; returns the rate in Mbit/s (0 until
    /// there are two samples at distinct times).
    pub(crate) fn handle_sample(&mut self, now: UnixMillis, bytes: u64) -> f64 {
        if let Some(&(at, last)) = self.samples.back()
            && (bytes < last || now < at)
        {
            self.samples.clear();
        }
        self.samples.push_back((now, bytes));
        let horizon = now.saturating_sub(self.window);
        // Drop samples while the next one still reaches back to the horizon.
        while self.samples.len() > 2 && self.samples[1].0 <= horizon {
            self.samples.pop_front();
        }
        let (Some(&(first_at, first)), Some(&(last_at, last))) =
            (self.samples.front(), self.samples.back())
        else {
            return 0.0;
        };
        let millis = last_at.0.saturating_sub(first_at.0);
        if millis <= 0 {
            return 0.0;
        }
        // Bytes per millisecond × 8 bits / 1000 = Mbit/s.
        let bytes = last.saturating_sub(first) as f64;
        bytes * 8.0 / 1000.0 / millis as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> UnixMillis {
        UnixMillis(1_800_000_000_000 + ms)
    }

    #[test]
    fn the_rate_is_bytes_over_the_window() {
        let mut meter = BandwidthMeter::new(Duration::from_secs(5));
        assert_eq!(meter.handle_sample(at(0), 0), 0.0, "one sample: no rate");
        // 125 000 bytes a second is 1 Mbit/s.
        let mut rate = 0.0;
        for s in 1..=10 {
            rate = meter.handle_sample(at(s * 1000), u64::try_from(s).unwrap() * 125_000);
        }
        assert!((rate - 1.0).abs() < 1e-9, "{rate}");
        // Traffic stops: the rate falls to 0 once the window holds no more of it.
        for s in 11..=14 {
            rate = meter.handle_sample(at(s * 1000), 1_250_000);
            assert!(rate > 0.0 && rate < 1.0, "{s}: {rate}");
        }
        rate = meter.handle_sample(at(15_000), 1_250_000);
        assert_eq!(rate, 0.0);
        // A burst of 5 Mbit in the last second of a 5 s window averages 1 Mbit/s.
        rate = meter.handle_sample(at(16_000), 1_250_000 + 625_000);
        assert!((rate - 1.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn it_keeps_only_the_window() {
        let mut meter = BandwidthMeter::new(Duration::from_secs(2));
        for s in 0..100 {
            meter.handle_sample(at(s * 1000), 0);
        }
        assert!(meter.samples.len() <= 3, "{}", meter.samples.len());
    }

    #[test]
    fn a_counter_going_backwards_starts_over() {
        let mut meter = BandwidthMeter::new(Duration::from_secs(5));
        meter.handle_sample(at(0), 10_000_000);
        meter.handle_sample(at(1000), 20_000_000);
        assert_eq!(meter.handle_sample(at(2000), 5), 0.0, "restarted");
        let rate = meter.handle_sample(at(3000), 5 + 125_000);
        assert!((rate - 1.0).abs() < 1e-9, "{rate}");
        // The clock stepping back also starts over, rather than dividing by a negative.
        assert_eq!(meter.handle_sample(at(1000), 500_000), 0.0);
    }
}
