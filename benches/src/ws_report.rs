//! The WebSocket runner's results: every round's record, medians per (server, packet, load),
//! ours / baseline ratios, the JSON file that holds them, the Markdown tables printed from
//! them, and the smoke run's checks.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::generator::Rate;
use crate::maths::ratio;
use crate::relay_load::RelayOutcome;
use crate::report::{
    Machine, Scenario, Server, background_line, cases, find, group, median_maybe, median_of,
    scenario_and_summary, silent,
};

/// A node relay under test: over WebSocket or over QUIC.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum WsServerKind {
    /// `bosonserver run --relay-listen`: our relay, over WebSocket.
    BosonWs,
    /// `boson-bench ws-baseline`: the tokio-tungstenite relay.
    WsBaseline,
    /// `bosonserver run --relay-listen`: our relay, over QUIC (UDP, the same port number).
    BosonQuic,
    /// `boson-bench quic-baseline`: the quinn relay.
    QuicBaseline,
}

impl Server for WsServerKind {
    const ALL: &'static [Self] = &[
        Self::BosonWs,
        Self::WsBaseline,
        Self::BosonQuic,
        Self::QuicBaseline,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::BosonWs => "boson-ws",
            Self::WsBaseline => "ws-baseline",
            Self::BosonQuic => "boson-quic",
            Self::QuicBaseline => "quic-baseline",
        }
    }
}

impl WsServerKind {
    /// The comparisons a report makes when both sides have results: each of ours against
    /// its baseline, and our QUIC relay against our WebSocket relay.
    pub const COMPARISONS: [(Self, Self); 3] = [
        (Self::BosonWs, Self::WsBaseline),
        (Self::BosonQuic, Self::QuicBaseline),
        (Self::BosonQuic, Self::BosonWs),
    ];

    /// Whether the relay is driven over QUIC.
    pub const fn is_quic(self) -> bool {
        matches!(self, Self::BosonQuic | Self::QuicBaseline)
    }
}

/// One scenario of one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsRecord {
    /// Round number, from 1.
    pub round: usize,
    /// The relay.
    pub server: WsServerKind,
    /// Packet bytes per message.
    pub packet: usize,
    /// Offered load, messages per second.
    pub rate: Rate,
    /// What was measured, unless the scenario failed.
    pub outcome: Option<RelayOutcome>,
    /// Why it failed.
    pub error: Option<String>,
    /// Share of the whole machine busy just before this relay's turn of the round (ours
    /// stopped): other tenants' load.
    pub background_busy: Option<f64>,
}

/// Medians over the rounds of one (server, packet, load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsMedian {
    /// The relay.
    pub server: WsServerKind,
    /// Packet bytes per message.
    pub packet: usize,
    /// Offered load.
    pub rate: Rate,
    /// Rounds that produced a result.
    pub rounds: usize,
    /// Messages per second sent.
    pub sent_mps: f64,
    /// Messages per second delivered.
    pub delivered_mps: f64,
    /// Packet MB (10^6 bytes) per second delivered.
    pub delivered_mbps: f64,
    /// Share of messages lost.
    pub loss_ratio: f64,
    /// Latency percentiles, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Relay CPU per delivered message, ns.
    pub cpu_ns_per_message: Option<f64>,
    /// Relay CPU seconds per second of the load phase (1.0 = one core busy).
    pub server_cpu_util: Option<f64>,
    /// Share of the relay core busy (anything, softirq included).
    pub server_core_busy: Option<f64>,
    /// Share of the generator's time that moved no byte.
    pub generator_idle: f64,
    /// The generator's busy time per message, ns.
    pub generator_ns_per_message: Option<f64>,
    /// The generator's CPU time per message, ns.
    #[serde(default)]
    pub generator_cpu_ns_per_message: Option<f64>,
    /// UDP datagrams dropped at the generator's sockets (QUIC only).
    #[serde(default)]
    pub generator_drops: Option<f64>,
    /// UDP datagrams dropped at the relay's socket (QUIC only).
    #[serde(default)]
    pub relay_drops: Option<f64>,
    /// PEER_GONE notices.
    pub peer_gone: f64,
    /// Connections the relay closed.
    pub closed: f64,
}

scenario_and_summary!(WsRecord, WsMedian, WsServerKind, RelayOutcome, packet);

/// One relay against another (one of [`WsServerKind::COMPARISONS`]), for one (packet, load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsRatio {
    /// The numerator: ours. (Reports written before QUIC have neither field: they compared
    /// boson-ws with ws-baseline only.)
    #[serde(default = "boson_ws")]
    pub ours: WsServerKind,
    /// The denominator.
    #[serde(default = "ws_baseline")]
    pub vs: WsServerKind,
    /// Packet bytes.
    pub packet: usize,
    /// Offered load.
    pub rate: Rate,
    /// Delivered messages/s (and so MB/s), ours / vs: above 1, ours relays more.
    pub delivered: Option<f64>,
    /// CPU per message, ours / vs: below 1, ours is cheaper.
    pub cpu_per_message: Option<f64>,
    /// p99 latency, ours / vs: below 1, ours is faster.
    pub p99: Option<f64>,
}

const fn boson_ws() -> WsServerKind {
    WsServerKind::BosonWs
}

const fn ws_baseline() -> WsServerKind {
    WsServerKind::WsBaseline
}

/// Everything one `boson-bench run --ws` produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsReport {
    /// Where it ran.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Seconds of load per scenario.
    pub duration_s: f64,
    /// Sender/receiver pairs per scenario.
    pub pairs: usize,
    /// Generator threads.
    pub threads: usize,
    /// Worker threads of each relay.
    pub workers: usize,
    /// Every scenario of every round.
    pub records: Vec<WsRecord>,
    /// Medians per (server, packet, load).
    pub medians: Vec<WsMedian>,
    /// Ours against the baselines, and QUIC against WebSocket.
    pub ratios: Vec<WsRatio>,
}

/// The settings a report records besides its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsRunInfo {
    /// Where it ran.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Generator threads.
    pub threads: usize,
    /// Relay worker threads.
    pub workers: usize,
}

impl WsReport {
    /// Builds the medians and ratios from the records.
    pub fn new(info: WsRunInfo, duration_s: f64, records: Vec<WsRecord>) -> Self {
        let medians = medians(&records);
        let ratios = ratios(&medians);
        Self {
            machine: info.machine,
            command: info.command,
            duration_s,
            pairs: info.pairs,
            threads: info.threads,
            workers: info.workers,
            records,
            medians,
            ratios,
        }
    }

    /// The scenarios that failed or delivered nothing.
    pub fn silent(&self) -> Vec<String> {
        // The first line only: the full error, with the relay's log, is in the tables.
        silent(&self.records, true)
    }

    /// What a smoke run must not see: failures, and at fixed rates any loss, a sending rate
    /// more than 20% off the offered one, latency of zero or above a second, PEER_GONE,
    /// closed connections or foreign messages; at max rate, nothing delivered or
    /// inconsistent figures.
    pub fn smoke_failures(&self) -> Vec<String> {
        let mut failures = self.silent();
        for record in &self.records {
            let Some(o) = &record.outcome else { continue };
            let name = record.label();
            let mut fail = |what: String| failures.push(format!("{name}: {what}"));
            if o.closed > 0 || o.foreign > 0 || o.peer_gone > 0 {
                fail(format!(
                    "{} connections closed, {} foreign messages, {} PEER_GONE",
                    o.closed, o.foreign, o.peer_gone
                ));
            }
            if o.received > o.sent {
                fail(format!("{} delivered but {} sent", o.received, o.sent));
            }
            let mbps = o.delivered_mps * record.packet as f64 / 1e6;
            if (o.delivered_mbps - mbps).abs() > 1e-6 * mbps.max(1.0) {
                fail(format!(
                    "{} MB/s for {} msg/s",
                    o.delivered_mbps, o.delivered_mps
                ));
            }
            let Some(offered) = record.rate.pps() else {
                continue;
            };
            if o.lost > 0 {
                fail(format!(
                    "{} of {} messages lost at a fixed rate",
                    o.lost, o.sent
                ));
            }
            let off = (o.sent_mps - offered as f64).abs() / offered as f64;
            if off > 0.2 {
                fail(format!("sent {:.0} msg/s of {offered} offered", o.sent_mps));
            }
            if o.received > 0 && !(o.latency.p50_us > 0.0 && o.latency.p99_us < 1e6) {
                fail(format!(
                    "latency p50 {} µs, p99 {} µs",
                    o.latency.p50_us, o.latency.p99_us
                ));
            }
        }
        failures
    }

    /// The medians, ratios, per-round throughput at max rate and errors as Markdown.
    pub fn tables(&self) -> String {
        let mut out = background_line(&self.records, "relay's");
        let _ = writeln!(
            out,
            "| server | packet | offered | sent msg/s | delivered msg/s | MB/s | loss | p50 µs | p99 µs | p999 µs | server CPU | CPU ns/msg | gen idle | gen ns/msg | gen CPU ns/msg | gen drops | relay drops | PEER_GONE | closed | rounds |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let show = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or_else(|| "-".to_owned(), f);
        for m in &self.medians {
            if m.rounds == 0 {
                let _ = writeln!(
                    out,
                    "| {} | {} B | {} | failed in every round (see Errors) |{} 0 |",
                    m.server.name(),
                    m.packet,
                    m.rate,
                    " - |".repeat(15)
                );
                continue;
            }
            let _ = writeln!(
                out,
                "| {} | {} B | {} | {:.0} | {:.0} | {:.1} | {:.2}% | {:.1} | {:.1} | {:.1} | {} | {} | {:.0}% | {} | {} | {} | {} | {:.0} | {:.0} | {} |",
                m.server.name(),
                m.packet,
                m.rate,
                m.sent_mps,
                m.delivered_mps,
                m.delivered_mbps,
                m.loss_ratio * 100.0,
                m.p50_us,
                m.p99_us,
                m.p999_us,
                show(m.server_cpu_util, &|u| format!("{:.0}%", u * 100.0)),
                show(m.cpu_ns_per_message, &|c| format!("{c:.0}")),
                m.generator_idle * 100.0,
                show(m.generator_ns_per_message, &|c| format!("{c:.0}")),
                show(m.generator_cpu_ns_per_message, &|c| format!("{c:.0}")),
                show(m.generator_drops, &|d| format!("{d:.0}")),
                show(m.relay_drops, &|d| format!("{d:.0}")),
                m.peer_gone,
                m.closed,
                m.rounds,
            );
        }
        let _ = writeln!(out);
        if self.ratios.is_empty() {
            let _ = writeln!(out, "No ratios: they need results of both relays.\n");
        } else {
            let _ = writeln!(
                out,
                "| ours | vs | packet | offered | delivered msg/s and MB/s, ours / vs | CPU/msg ratio | p99 ratio |"
            );
            let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
        }
        for r in &self.ratios {
            let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} B | {} | {} | {} | {} |",
                r.ours.name(),
                r.vs.name(),
                r.packet,
                r.rate,
                show(r.delivered),
                show(r.cpu_per_message),
                show(r.p99),
            );
        }
        let _ = writeln!(out);
        out.push_str(&self.rounds_at_max());
        let mut errors: Vec<String> = self
            .records
            .iter()
            .filter_map(|r| {
                let error = r.error.as_ref()?;
                Some(format!("* {}: {error}", r.server.name()))
            })
            .collect();
        errors.dedup();
        if !errors.is_empty() {
            let _ = writeln!(out, "\nErrors:\n{}", errors.join("\n"));
        }
        out
    }

    /// Delivered thousands of messages per second at max rate, per round: the noise.
    fn rounds_at_max(&self) -> String {
        let rounds = self.records.iter().map(|r| r.round).max().unwrap_or(0);
        let mut out = String::from("| server | packet |");
        for round in 1..=rounds {
            let _ = write!(out, " round {round} |");
        }
        out.push_str("\n|---|---:|");
        out.push_str(&"---:|".repeat(rounds));
        out.push('\n');
        let mut rows: BTreeMap<(WsServerKind, usize), Vec<String>> = BTreeMap::new();
        for record in self.records.iter().filter(|r| r.rate == Rate::Max) {
            let row = rows
                .entry((record.server, record.packet))
                .or_insert_with(|| vec!["-".to_owned(); rounds]);
            if let Some(o) = &record.outcome
                && let Some(cell) = row.get_mut(record.round.saturating_sub(1))
            {
                *cell = format!("{:.0}k", o.delivered_mps / 1_000.0);
            }
        }
        for ((server, packet), cells) in rows {
            let _ = writeln!(
                out,
                "| {} | {packet} B | {} |",
                server.name(),
                cells.join(" | ")
            );
        }
        out
    }
}

/// Medians per (server, packet, load), in the order of [`WsServerKind::ALL`], packet, load.
pub fn medians(records: &[WsRecord]) -> Vec<WsMedian> {
    group(records)
        .into_iter()
        .map(|((server, packet, rate), outcomes)| {
            let of = |f: fn(&RelayOutcome) -> f64| median_of(&outcomes, f);
            let maybe = |f: fn(&RelayOutcome) -> Option<f64>| median_maybe(&outcomes, f);
            WsMedian {
                server,
                packet,
                rate,
                rounds: outcomes.len(),
                sent_mps: of(|o| o.sent_mps),
                delivered_mps: of(|o| o.delivered_mps),
                delivered_mbps: of(|o| o.delivered_mbps),
                loss_ratio: of(|o| o.loss_ratio),
                p50_us: of(|o| o.latency.p50_us),
                p99_us: of(|o| o.latency.p99_us),
                p999_us: of(|o| o.latency.p999_us),
                cpu_ns_per_message: maybe(|o| o.cpu_ns_per_message),
                server_cpu_util: maybe(|o| o.server_cpu_s.map(|cpu| cpu / o.window_s)),
                server_core_busy: maybe(|o| o.server_core_busy),
                generator_idle: of(|o| o.generator_idle),
                generator_ns_per_message: maybe(|o| o.generator_ns_per_message),
                generator_cpu_ns_per_message: maybe(|o| o.generator_cpu_ns_per_message),
                generator_drops: maybe(|o| o.generator_drops.map(|d| d as f64)),
                relay_drops: maybe(|o| o.relay_drops.map(|d| d as f64)),
                peer_gone: of(|o| o.peer_gone as f64),
                closed: of(|o| o.closed as f64),
            }
        })
        .collect()
}

/// Every comparison of [`WsServerKind::COMPARISONS`], for every (packet, load) both sides
/// have results for, in that order.
pub fn ratios(medians: &[WsMedian]) -> Vec<WsRatio> {
    let cases = cases(medians);
    WsServerKind::COMPARISONS
        .into_iter()
        .flat_map(|(ours, vs)| {
            cases
                .iter()
                .map(move |&(packet, rate)| (ours, vs, packet, rate))
        })
        .filter_map(|(ours, vs, packet, rate)| {
            let a = find(medians, ours, packet, rate)?;
            let b = find(medians, vs, packet, rate)?;
            Some(WsRatio {
                ours,
                vs,
                packet,
                rate,
                delivered: ratio(Some(a.delivered_mps), Some(b.delivered_mps)),
                cpu_per_message: ratio(a.cpu_ns_per_message, b.cpu_ns_per_message),
                p99: ratio(Some(a.p99_us), Some(b.p99_us)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::LatencySummary;

    fn outcome(rate: Rate, delivered_mps: f64, cpu_ns: f64) -> RelayOutcome {
        let sent = (delivered_mps * 2.0) as u64;
        RelayOutcome {
            sent,
            received: sent,
            lost: 0,
            loss_ratio: 0.0,
            reordered: 0,
            foreign: 0,
            peer_gone: 0,
            closed: 0,
            write_stalls: 0,
            generator_idle: 0.5,
            generator_ns_per_message: Some(cpu_ns / 2.0),
            generator_cpu_s: Some(1.0),
            generator_cpu_ns_per_message: Some(cpu_ns / 4.0),
            generator_drops: None,
            relay_drops: None,
            elapsed_s: 2.0,
            window_s: 2.5,
            offered_mps: rate.pps(),
            sent_mps: delivered_mps,
            received_in_window: sent,
            delivered_mps,
            delivered_mbps: delivered_mps * 100.0 / 1e6,
            latency: LatencySummary {
                p50_us: 20.0,
                p99_us: cpu_ns / 10.0,
                p999_us: 500.0,
                max_us: 900.0,
            },
            server_cpu_s: Some(1.0),
            cpu_ns_per_message: Some(cpu_ns),
            server_core_busy: Some(0.9),
            server_core_softirq: Some(0.1),
        }
    }

    fn record(round: usize, server: WsServerKind, rate: Rate, mps: f64, cpu: f64) -> WsRecord {
        WsRecord {
            round,
            server,
            packet: 100,
            rate,
            outcome: Some(outcome(rate, mps, cpu)),
            error: None,
            background_busy: Some(0.02),
        }
    }

    fn info() -> WsRunInfo {
        WsRunInfo {
            machine: Machine {
                nproc: 2,
                cpu_model: "x".into(),
                kernel: "y".into(),
            },
            command: "cmd".into(),
            pairs: 2,
            threads: 1,
            workers: 1,
        }
    }

    #[test]
    fn medians_and_ratios_across_rounds() {
        let mut records = Vec::new();
        for (round, (ours, base)) in [(300e3, 100e3), (360e3, 90e3), (330e3, 110e3)]
            .into_iter()
            .enumerate()
        {
            records.push(record(
                round + 1,
                WsServerKind::BosonWs,
                Rate::Max,
                ours,
                1000.0,
            ));
            records.push(record(
                round + 1,
                WsServerKind::WsBaseline,
                Rate::Max,
                base,
                4000.0,
            ));
        }
        records.push(WsRecord {
            outcome: None,
            error: Some("bosonserver does not serve the WebSocket relay: x".into()),
            ..record(4, WsServerKind::BosonWs, Rate::Max, 0.0, 0.0)
        });
        let report = WsReport::new(info(), 2.0, records);
        let ours = &report.medians[0];
        assert_eq!(ours.server, WsServerKind::BosonWs);
        assert_eq!((ours.rounds, ours.delivered_mps), (3, 330e3));
        assert_eq!(report.ratios.len(), 1);
        let r = &report.ratios[0];
        assert_eq!(r.delivered, Some(3.3));
        assert_eq!(r.cpu_per_message, Some(0.25));
        assert_eq!(r.p99, Some(0.25));
        assert_eq!(report.silent().len(), 1);
        let tables = report.tables();
        assert!(tables.contains("| boson-ws | 100 B | max |"), "{tables}");
        assert!(
            tables.contains("| boson-ws | ws-baseline | 100 B | max | 3.30 | 0.25 | 0.25 |"),
            "{tables}"
        );
        assert!(
            tables.contains("| boson-ws | 100 B | 300k | 360k | 330k | - |"),
            "{tables}"
        );
        assert!(
            tables.contains("* boson-ws: bosonserver does not serve the WebSocket relay: x"),
            "{tables}"
        );
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<WsReport>(&json).unwrap(), report);
    }

    #[test]
    fn quic_is_compared_with_its_baseline_and_with_websocket() {
        let mut records = Vec::new();
        for (server, mps, cpu) in [
            (WsServerKind::BosonQuic, 200e3, 2000.0),
            (WsServerKind::QuicBaseline, 100e3, 4000.0),
            (WsServerKind::BosonWs, 400e3, 500.0),
        ] {
            records.push(record(1, server, Rate::Max, mps, cpu));
        }
        let mut quic = record(1, WsServerKind::BosonQuic, Rate::Pps(20_000), 20e3, 3000.0);
        if let Some(o) = quic.outcome.as_mut() {
            o.generator_drops = Some(7);
            o.relay_drops = Some(9);
        }
        records.push(quic);
        let report = WsReport::new(info(), 1.0, records);
        let pairs: Vec<_> = report
            .ratios
            .iter()
            .map(|r| (r.ours, r.vs, r.rate, r.delivered, r.cpu_per_message))
            .collect();
        assert_eq!(
            pairs,
            [
                (
                    WsServerKind::BosonQuic,
                    WsServerKind::QuicBaseline,
                    Rate::Max,
                    Some(2.0),
                    Some(0.5)
                ),
                (
                    WsServerKind::BosonQuic,
                    WsServerKind::BosonWs,
                    Rate::Max,
                    Some(0.5),
                    Some(4.0)
                ),
            ],
            "no WebSocket baseline, and no partner for the fixed rate"
        );
        let tables = report.tables();
        assert!(
            tables.contains("| boson-quic | quic-baseline | 100 B | max | 2.00 | 0.50 |"),
            "{tables}"
        );
        assert!(
            tables.contains("| 50% | 1500 | 750 | 7 | 9 | 0 | 0 | 1 |"),
            "the drops at both ends: {tables}"
        );
        assert!(
            tables.contains("| 50% | 250 | 125 | - | - | 0 | 0 | 1 |"),
            "none measured over WebSocket: {tables}"
        );
    }

    #[test]
    fn reports_written_before_quic_still_read() {
        let report: WsReport = serde_json::from_str(include_str!("../results-ws.json")).unwrap();
        assert!(!report.ratios.is_empty());
        assert!(
            report
                .ratios
                .iter()
                .all(|r| (r.ours, r.vs) == (WsServerKind::BosonWs, WsServerKind::WsBaseline))
        );
        assert!(report.medians.iter().all(|m| m.generator_drops.is_none()));
    }

    #[test]
    fn no_ratio_without_both_relays() {
        let records = vec![record(1, WsServerKind::WsBaseline, Rate::Max, 1e5, 1e3)];
        let report = WsReport::new(info(), 1.0, records);
        assert!(report.ratios.is_empty());
        assert_eq!(report.medians.len(), 1);
    }

    #[test]
    fn smoke_checks_catch_loss_pacing_and_noise() {
        let good = record(1, WsServerKind::WsBaseline, Rate::Pps(2_000), 2_000.0, 1e3);
        let report = WsReport::new(info(), 1.0, vec![good.clone()]);
        assert_eq!(report.smoke_failures(), Vec::<String>::new());

        let mut lossy = good.clone();
        if let Some(o) = lossy.outcome.as_mut() {
            o.received -= 1;
            o.lost = 1;
        }
        let mut slow = good.clone();
        if let Some(o) = slow.outcome.as_mut() {
            o.sent_mps = 1_000.0;
        }
        let mut gone = good.clone();
        if let Some(o) = gone.outcome.as_mut() {
            o.peer_gone = 1;
        }
        let mut mbps = good;
        if let Some(o) = mbps.outcome.as_mut() {
            o.delivered_mbps *= 2.0;
        }
        let mut max_silent = record(1, WsServerKind::WsBaseline, Rate::Max, 0.0, 1e3);
        if let Some(o) = max_silent.outcome.as_mut() {
            o.received = 0;
        }
        for (bad, what) in [
            (lossy, "lost"),
            (slow, "offered"),
            (gone, "PEER_GONE"),
            (mbps, "MB/s"),
            (max_silent, "delivered nothing"),
        ] {
            let report = WsReport::new(info(), 1.0, vec![bad]);
            let failures = report.smoke_failures();
            assert!(
                failures.iter().any(|f| f.contains(what)),
                "{what}: {failures:?}"
            );
        }
    }
}
