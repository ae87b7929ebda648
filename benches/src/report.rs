//! The runner's results: every round's record, medians per (server, payload, load), ratios
//! between servers, the JSON file that holds them and the Markdown tables printed from them.
//!
//! What every report shares, the TURN runner's here and the node relays' in
//! [`ws_report`](crate::ws_report), is generic over [`Scenario`] (one record) and
//! [`Summary`] (one median): the grouping of records into medians, the failures, the
//! background noise line, the lookup of a median and the cases ratios are computed for.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::generator::{Outcome, Rate};
use crate::maths::{median, ratio};

/// A kind of server a report compares.
pub trait Server: Copy + Ord + 'static {
    /// Every server, in the order rounds visit them.
    const ALL: &'static [Self];
    /// Short name for tables and the plot.
    fn name(self) -> &'static str;
}

/// One scenario of one round, as a report reads it.
pub trait Scenario {
    /// The servers this report compares.
    type Server: Server;
    /// What a scenario measured.
    type Outcome;
    /// Round number, from 1.
    fn round(&self) -> usize;
    /// The server.
    fn server(&self) -> Self::Server;
    /// Bytes per packet (TURN: payload; node relays: packet).
    fn size(&self) -> usize;
    /// Offered load.
    fn rate(&self) -> Rate;
    /// What was measured, unless the scenario failed.
    fn outcome(&self) -> Option<&Self::Outcome>;
    /// Why it failed.
    fn error(&self) -> Option<&str>;
    /// Other tenants' load before this server's turn of the round.
    fn background_busy(&self) -> Option<f64>;
    /// Packets or messages `outcome` delivered.
    fn received(outcome: &Self::Outcome) -> u64;

    /// `round R server SIZE B RATE`: how tables and failures name a scenario.
    fn label(&self) -> String {
        format!(
            "round {} {} {} B {}",
            self.round(),
            self.server().name(),
            self.size(),
            self.rate()
        )
    }
}

/// Medians over the rounds of one (server, size, load), as a report reads them.
pub trait Summary {
    /// The servers this report compares.
    type Server: Server;
    /// The server.
    fn server(&self) -> Self::Server;
    /// Bytes per packet.
    fn size(&self) -> usize;
    /// Offered load.
    fn rate(&self) -> Rate;
    /// Rounds that produced a result.
    fn rounds(&self) -> usize;
    /// p99 one-way latency, µs.
    fn p99_us(&self) -> f64;
}

/// Implements [`Scenario`] for a record type and [`Summary`] for its median type, whose
/// size field is named `$size` (`payload` for TURN, `packet` for the node relays).
macro_rules! scenario_and_summary {
    ($record:ty, $median:ty, $server:ty, $outcome:ty, $size:ident) => {
        impl $crate::report::Scenario for $record {
            type Server = $server;
            type Outcome = $outcome;

            fn round(&self) -> usize {
                self.round
            }

            fn server(&self) -> $server {
                self.server
            }

            fn size(&self) -> usize {
                self.$size
            }

            fn rate(&self) -> Rate {
                self.rate
            }

            fn outcome(&self) -> Option<&$outcome> {
                self.outcome.as_ref()
            }

            fn error(&self) -> Option<&str> {
                self.error.as_deref()
            }

            fn background_busy(&self) -> Option<f64> {
                self.background_busy
            }

            fn received(outcome: &$outcome) -> u64 {
                outcome.received
            }
        }

        impl $crate::report::Summary for $median {
            type Server = $server;

            fn server(&self) -> $server {
                self.server
            }

            fn size(&self) -> usize {
                self.$size
            }

            fn rate(&self) -> Rate {
                self.rate
            }

            fn rounds(&self) -> usize {
                self.rounds
            }

            fn p99_us(&self) -> f64 {
                self.p99_us
            }
        }
    };
}

pub(crate) use scenario_and_summary;

/// A (server, size, load): what medians are taken over.
pub type Case<S> = (S, usize, Rate);

/// The outcomes of `records` per (server, size, load), in the order of the servers' kinds,
/// size, load; a scenario that failed in every round keeps an empty entry.
pub fn group<S: Scenario>(records: &[S]) -> BTreeMap<Case<S::Server>, Vec<&S::Outcome>> {
    let mut groups: BTreeMap<Case<S::Server>, Vec<&S::Outcome>> = BTreeMap::new();
    for record in records {
        let entry = groups
            .entry((record.server(), record.size(), record.rate()))
            .or_default();
        if let Some(outcome) = record.outcome() {
            entry.push(outcome);
        }
    }
    groups
}

/// The median of `f` over `outcomes`, 0 without any.
pub fn median_of<O>(outcomes: &[&O], f: impl Fn(&O) -> f64) -> f64 {
    median(&outcomes.iter().map(|o| f(o)).collect::<Vec<_>>()).unwrap_or(0.0)
}

/// The median of `f` over the outcomes that have it.
pub fn median_maybe<O>(outcomes: &[&O], f: impl Fn(&O) -> Option<f64>) -> Option<f64> {
    median(&outcomes.iter().filter_map(|o| f(o)).collect::<Vec<_>>())
}

/// The scenarios that failed or delivered nothing, each with why; `first_line` keeps only
/// an error's first line (the rest, a server's log, is in the tables).
pub fn silent<S: Scenario>(records: &[S], first_line: bool) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.outcome().is_none_or(|o| S::received(o) == 0))
        .map(|r| {
            let error = r.error();
            let error = if first_line {
                error.and_then(|e| e.lines().next())
            } else {
                error
            };
            format!("{}: {}", r.label(), error.unwrap_or("delivered nothing"))
        })
        .collect()
}

/// The line on other tenants' CPU before each `whose` turn, with a blank line after; empty
/// when the runs did not sample it.
pub fn background_line<S: Scenario>(records: &[S], whose: &str) -> String {
    let background: Vec<f64> = records
        .iter()
        .filter_map(Scenario::background_busy)
        .collect();
    let Some(mid) = median(&background) else {
        return String::new();
    };
    let max = background.iter().copied().fold(0.0, f64::max);
    format!(
        "Other tenants' CPU before each {whose} turn (whole machine): median {:.0}%, max {:.0}%.\n\n",
        mid * 100.0,
        max * 100.0
    )
}

/// The median of `server` at (`size`, `rate`), if it has a result.
pub fn find<M: Summary>(medians: &[M], server: M::Server, size: usize, rate: Rate) -> Option<&M> {
    medians
        .iter()
        .find(|m| m.server() == server && m.size() == size && m.rate() == rate)
        .filter(|m| m.rounds() > 0)
}

/// Every (size, load) of `medians`, sorted, once.
pub fn cases<M: Summary>(medians: &[M]) -> Vec<(usize, Rate)> {
    let mut cases: Vec<(usize, Rate)> = medians.iter().map(|m| (m.size(), m.rate())).collect();
    cases.sort();
    cases.dedup();
    cases
}

/// A TURN server under test.
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
pub enum ServerKind {
    /// `bosonserver run --io-backend uring`.
    BosonUring,
    /// `bosonserver run --io-backend epoll`.
    BosonEpoll,
    /// `bosonserver run --io-backend uring --no-udp-offload`.
    BosonUringNogso,
    /// `bosonserver run --io-backend epoll --no-udp-offload`.
    BosonEpollNogso,
    /// coturn's `turnserver` (Debian's, or whatever `--turnserver` names).
    Coturn,
    /// coturn built from its current source (`benches/coturn-src.sh`), with
    /// `--udp-gso --multiplex-peer`.
    CoturnSrc,
    /// `boson-bench raw-forwarder`.
    Raw,
    /// `boson-bench raw-forwarder --gso`: GRO receives and GSO sends.
    RawGso,
}

impl Server for ServerKind {
    const ALL: &'static [Self] = &[
        Self::BosonUring,
        Self::BosonEpoll,
        Self::BosonUringNogso,
        Self::BosonEpollNogso,
        Self::Coturn,
        Self::CoturnSrc,
        Self::Raw,
        Self::RawGso,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::BosonUring => "boson-uring",
            Self::BosonEpoll => "boson-epoll",
            Self::BosonUringNogso => "boson-uring-nogso",
            Self::BosonEpollNogso => "boson-epoll-nogso",
            Self::Coturn => "coturn",
            Self::CoturnSrc => "coturn-src",
            Self::Raw => "raw",
            Self::RawGso => "raw-gso",
        }
    }
}

impl ServerKind {
    /// The servers a run visits unless told otherwise.
    pub const DEFAULT: [Self; 4] = [Self::BosonUring, Self::BosonEpoll, Self::Coturn, Self::Raw];

    /// Whether this is one of ours.
    pub const fn is_ours(self) -> bool {
        match self {
            Self::BosonUring | Self::BosonEpoll | Self::BosonUringNogso | Self::BosonEpollNogso => {
                true
            }
            Self::Coturn | Self::CoturnSrc | Self::Raw | Self::RawGso => false,
        }
    }
}

/// The machine the run happened on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Processors listed in `/proc/cpuinfo`.
    pub nproc: usize,
    /// `model name` of the first processor.
    pub cpu_model: String,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
}

impl Machine {
    /// Reads `/proc`; unknown fields are empty.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let nproc = cpuinfo
            .lines()
            .filter(|line| line.starts_with("processor"))
            .count();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
            .map(|(_, model)| model.trim().to_owned())
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Self {
            nproc,
            cpu_model,
            kernel,
        }
    }
}

/// One scenario of one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Round number, from 1.
    pub round: usize,
    /// The server.
    pub server: ServerKind,
    /// Payload bytes per packet.
    pub payload: usize,
    /// Offered load.
    pub rate: Rate,
    /// What was measured, unless the scenario failed.
    pub outcome: Option<Outcome>,
    /// Why it failed.
    pub error: Option<String>,
    /// Share of the whole machine busy in the second before this server's turn of the round
    /// (our servers stopped): other tenants' load, a measure of noise.
    pub background_busy: Option<f64>,
}

/// Medians over the rounds of one (server, payload, load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Median {
    /// The server.
    pub server: ServerKind,
    /// Payload bytes per packet.
    pub payload: usize,
    /// Offered load.
    pub rate: Rate,
    /// Rounds that produced a result.
    pub rounds: usize,
    /// Packets per second generated.
    pub sent_pps: f64,
    /// Packets per second delivered to the sink.
    pub delivered_pps: f64,
    /// Share of packets lost.
    pub loss_ratio: f64,
    /// Latency percentiles, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Server CPU per delivered packet, ns.
    pub cpu_ns_per_packet: Option<f64>,
    /// Server CPU seconds per second of the load phase (1.0 = one core busy).
    pub server_cpu_util: Option<f64>,
    /// Share of the server core busy (anything, softirq included).
    pub server_core_busy: Option<f64>,
    /// Share of the server core in softirq.
    pub server_core_softirq: Option<f64>,
    /// Drops at the sink (the generator's side).
    pub sink_drops: f64,
    /// Drops at the server's listener queue.
    pub server_ingress_drops: f64,
}

scenario_and_summary!(Record, Median, ServerKind, Outcome, payload);

/// One of our servers against a reference, for one (payload, load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// Payload bytes.
    pub payload: usize,
    /// Offered load.
    pub rate: Rate,
    /// Ours.
    pub ours: ServerKind,
    /// The reference (coturn or raw).
    pub against: ServerKind,
    /// Delivered pps, ours / reference (above 1: ours relays more).
    pub pps: Option<f64>,
    /// CPU per packet, ours / reference (below 1: ours is cheaper).
    pub cpu_per_packet: Option<f64>,
}

/// Everything one `boson-bench run` produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Seconds of load per scenario.
    pub duration_s: f64,
    /// Flows (allocations) per scenario.
    pub flows: usize,
    /// Every scenario of every round.
    pub records: Vec<Record>,
    /// Medians per (server, payload, load).
    pub medians: Vec<Median>,
    /// Ours against coturn and raw.
    pub ratios: Vec<Ratio>,
}

impl Report {
    /// Builds the medians and ratios from the records.
    pub fn new(
        machine: Machine,
        command: String,
        duration_s: f64,
        flows: usize,
        records: Vec<Record>,
    ) -> Self {
        let medians = medians(&records);
        let ratios = ratios(&medians);
        Self {
            machine,
            command,
            duration_s,
            flows,
            records,
            medians,
            ratios,
        }
    }

    /// The (server, payload, load) combinations that delivered nothing in some round, or failed.
    pub fn silent(&self) -> Vec<String> {
        silent(&self.records, false)
    }

    /// What a smoke run must not see: a combination that delivered nothing or failed, and at
    /// a fixed (low) rate any loss or any datagram that was not ours. Max rate only has to
    /// deliver something: loss there measures capacity, not correctness.
    pub fn smoke_failures(&self) -> Vec<String> {
        let mut failures = self.silent();
        for record in &self.records {
            let (Some(o), Some(_)) = (&record.outcome, record.rate.pps()) else {
                continue;
            };
            let name = record.label();
            if o.lost > 0 {
                failures.push(format!(
                    "{name}: {} of {} packets lost at a fixed rate",
                    o.lost, o.sent
                ));
            }
            if o.foreign > 0 {
                failures.push(format!("{name}: {} foreign datagrams", o.foreign));
            }
        }
        failures
    }

    /// The medians and ratios as Markdown tables.
    pub fn tables(&self) -> String {
        let mut out = background_line(&self.records, "server's");
        let _ = writeln!(
            out,
            "| server | payload | offered | sent pps | delivered pps | loss | p50 µs | p99 µs | p999 µs | server CPU | core busy (softirq) | CPU ns/pkt | sink drops | server drops | rounds |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for m in &self.medians {
            let _ = writeln!(
                out,
                "| {} | {} B | {} | {:.0} | {:.0} | {:.2}% | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.0} | {:.0} | {} |",
                m.server.name(),
                m.payload,
                m.rate,
                m.sent_pps,
                m.delivered_pps,
                m.loss_ratio * 100.0,
                m.p50_us,
                m.p99_us,
                m.p999_us,
                m.server_cpu_util
                    .map_or_else(|| "-".to_owned(), |u| format!("{:.0}%", u * 100.0)),
                m.server_core_busy.zip(m.server_core_softirq).map_or_else(
                    || "-".to_owned(),
                    |(busy, soft)| format!("{:.0}% ({:.0}%)", busy * 100.0, soft * 100.0)
                ),
                m.cpu_ns_per_packet
                    .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}")),
                m.sink_drops,
                m.server_ingress_drops,
                m.rounds,
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| payload | offered | ours | vs | delivered pps ratio | CPU/packet ratio |"
        );
        let _ = writeln!(out, "|---:|---:|---|---|---:|---:|");
        for r in &self.ratios {
            let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
            let _ = writeln!(
                out,
                "| {} B | {} | {} | {} | {} | {} |",
                r.payload,
                r.rate,
                r.ours.name(),
                r.against.name(),
                show(r.pps),
                show(r.cpu_per_packet),
            );
        }
        out
    }
}

/// Medians per (server, payload, load), in the order of [`ServerKind::ALL`], payload, load.
pub fn medians(records: &[Record]) -> Vec<Median> {
    group(records)
        .into_iter()
        .map(|((server, payload, rate), outcomes)| {
            let of = |f: fn(&Outcome) -> f64| median_of(&outcomes, f);
            let maybe = |f: fn(&Outcome) -> Option<f64>| median_maybe(&outcomes, f);
            Median {
                server,
                payload,
                rate,
                rounds: outcomes.len(),
                sent_pps: of(|o| o.sent_pps),
                delivered_pps: of(|o| o.delivered_pps),
                loss_ratio: of(|o| o.loss_ratio),
                p50_us: of(|o| o.latency.p50_us),
                p99_us: of(|o| o.latency.p99_us),
                p999_us: of(|o| o.latency.p999_us),
                cpu_ns_per_packet: maybe(|o| o.cpu_ns_per_packet),
                server_cpu_util: maybe(|o| o.server_cpu_s.map(|cpu| cpu / o.window_s)),
                server_core_busy: maybe(|o| o.server_core_busy),
                server_core_softirq: maybe(|o| o.server_core_softirq),
                sink_drops: of(|o| o.sink_drops as f64),
                server_ingress_drops: of(|o| o.server_ingress_drops as f64),
            }
        })
        .collect()
}

/// Ours (uring, epoll) against coturn and raw, for every (payload, load) both have.
pub fn ratios(medians: &[Median]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for (payload, rate) in cases(medians) {
        for &ours in ServerKind::ALL.iter().filter(|s| s.is_ours()) {
            for against in [
                ServerKind::Coturn,
                ServerKind::CoturnSrc,
                ServerKind::Raw,
                ServerKind::RawGso,
            ] {
                let (Some(a), Some(b)) = (
                    find(medians, ours, payload, rate),
                    find(medians, against, payload, rate),
                ) else {
                    continue;
                };
                out.push(Ratio {
                    payload,
                    rate,
                    ours,
                    against,
                    pps: ratio(Some(a.delivered_pps), Some(b.delivered_pps)),
                    cpu_per_packet: ratio(a.cpu_ns_per_packet, b.cpu_ns_per_packet),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::LatencySummary;

    fn outcome(delivered_pps: f64, cpu_ns: f64) -> Outcome {
        Outcome {
            sent: 100,
            received: 100,
            lost: 0,
            loss_ratio: 0.0,
            reordered: 0,
            foreign: 0,
            send_errors: 0,
            elapsed_s: 1.0,
            window_s: 2.0,
            offered_pps: None,
            sent_pps: delivered_pps,
            delivered_pps,
            latency: LatencySummary::default(),
            sink_drops: 0,
            server_ingress_drops: 0,
            server_cpu_s: Some(0.5),
            cpu_ns_per_packet: Some(cpu_ns),
            server_core_busy: Some(1.0),
            server_core_softirq: Some(0.1),
        }
    }

    fn record(round: usize, server: ServerKind, pps: f64, cpu: f64) -> Record {
        Record {
            round,
            server,
            payload: 100,
            rate: Rate::Max,
            outcome: Some(outcome(pps, cpu)),
            error: None,
            background_busy: Some(0.01),
        }
    }

    #[test]
    fn smoke_fails_on_any_loss_at_a_fixed_rate_only() {
        let machine = || Machine {
            nproc: 2,
            cpu_model: "x".into(),
            kernel: "y".into(),
        };
        let fixed = |lost: u64, foreign: u64| Record {
            rate: Rate::Pps(2_000),
            outcome: Some(Outcome {
                lost,
                received: 100 - lost,
                foreign,
                ..outcome(2_000.0, 1000.0)
            }),
            ..record(1, ServerKind::BosonUring, 0.0, 0.0)
        };
        let lossy_max = Record {
            outcome: Some(Outcome {
                lost: 60,
                received: 40,
                ..outcome(40.0, 1000.0)
            }),
            ..record(1, ServerKind::Coturn, 0.0, 0.0)
        };
        let clean = Report::new(
            machine(),
            "cmd".into(),
            1.0,
            1,
            vec![fixed(0, 0), lossy_max],
        );
        assert_eq!(clean.smoke_failures(), Vec::<String>::new());
        let lossy = Report::new(
            machine(),
            "cmd".into(),
            1.0,
            1,
            vec![fixed(1, 0), fixed(0, 2)],
        );
        assert_eq!(
            lossy.smoke_failures(),
            [
                "round 1 boson-uring 100 B 2k: 1 of 100 packets lost at a fixed rate",
                "round 1 boson-uring 100 B 2k: 2 foreign datagrams",
            ]
        );
        let silent = Report::new(
            machine(),
            "cmd".into(),
            1.0,
            1,
            vec![record(1, ServerKind::Raw, 0.0, 0.0)],
        );
        assert_eq!(silent.smoke_failures().len(), 0, "delivered 100 of 100");
    }

    #[test]
    fn medians_and_ratios_across_rounds() {
        let mut records = Vec::new();
        for (round, (ours, coturn, raw)) in [
            (300.0, 100.0, 400.0),
            (360.0, 90.0, 380.0),
            (330.0, 110.0, 1.0),
        ]
        .into_iter()
        .enumerate()
        {
            records.push(record(round + 1, ServerKind::BosonUring, ours, 1000.0));
            records.push(record(round + 1, ServerKind::Coturn, coturn, 4000.0));
            records.push(record(round + 1, ServerKind::Raw, raw, 800.0));
        }
        // A failed round does not count.
        records.push(Record {
            outcome: None,
            error: Some("boom".into()),
            ..record(4, ServerKind::Coturn, 0.0, 0.0)
        });
        let report = Report::new(
            Machine {
                nproc: 2,
                cpu_model: "x".into(),
                kernel: "y".into(),
            },
            "cmd".into(),
            1.0,
            1,
            records,
        );
        let uring = &report.medians[0];
        assert_eq!(uring.server, ServerKind::BosonUring);
        assert_eq!(uring.delivered_pps, 330.0);
        let coturn = report
            .medians
            .iter()
            .find(|m| m.server == ServerKind::Coturn)
            .unwrap();
        assert_eq!((coturn.rounds, coturn.delivered_pps), (3, 100.0));
        assert_eq!(
            report.ratios.len(),
            2,
            "uring vs coturn and vs raw; no epoll data"
        );
        let vs_coturn = &report.ratios[0];
        assert_eq!(vs_coturn.against, ServerKind::Coturn);
        assert_eq!(vs_coturn.pps, Some(3.3));
        assert_eq!(vs_coturn.cpu_per_packet, Some(0.25));
        let vs_raw = &report.ratios[1];
        assert_eq!(vs_raw.pps, Some(330.0 / 380.0));
        assert_eq!(
            report.silent(),
            vec!["round 4 coturn 100 B max: boom".to_owned()]
        );
        assert!(
            report
                .tables()
                .contains("| boson-uring | coturn | 3.30 | 0.25 |")
        );
    }

    #[test]
    fn reports_round_trip_through_json() {
        let report = Report::new(
            Machine::detect(),
            "cmd".into(),
            1.0,
            1,
            vec![record(1, ServerKind::Raw, 10.0, 1.0)],
        );
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"rate\":\"max\""));
        assert!(json.contains("\"server\":\"raw\""));
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }
}
