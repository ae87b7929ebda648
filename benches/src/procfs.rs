//! What `/proc` tells about the server under test: its CPU time (`/proc/PID/stat`) and the
//! datagrams the kernel dropped on a UDP socket's full receive queue (`/proc/net/udp`); and
//! about the generator: the CPU time of its own threads (`/proc/thread-self/schedstat`).

use std::io;
use std::time::Duration;

use anyhow::Context as _;

/// User plus system CPU time of process `pid`, all its threads.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_cpu_ticks(&stat).with_context(|| format!("parsing {path}"))?;
    Ok(ticks_to_duration(ticks, clock_ticks_per_second()))
}

/// `utime + stime` in clock ticks, from the text of `/proc/PID/stat` (`proc(5)`: fields 14
/// and 15). The command name (field 2) is in parentheses and may itself hold spaces and
/// parentheses, so counting starts after the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so utime (14) is index 11, stime (15) 12.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// `ticks` clock ticks as a duration, at `per_second` ticks per second.
pub fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    let per_second = per_second.max(1);
    Duration::from_secs(ticks / per_second)
        + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second)
}

/// `sysconf(_SC_CLK_TCK)`, 100 when unknown.
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Clock ticks one CPU spent, from `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreTicks {
    /// Every state.
    pub total: u64,
    /// Neither idle nor iowait: user, nice, system, irq, softirq, steal.
    pub busy: u64,
    /// Serving soft interrupts (on loopback: delivering the packets sent from this core).
    pub softirq: u64,
}

impl CoreTicks {
    /// Share of `later - self` spent busy and in softirq, 0.0..=1.0 each.
    pub fn fractions(&self, later: &Self) -> (f64, f64) {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return (0.0, 0.0);
        }
        let busy = later.busy.saturating_sub(self.busy) as f64 / total as f64;
        let softirq = later.softirq.saturating_sub(self.softirq) as f64 / total as f64;
        (busy, softirq)
    }
}

/// The ticks of CPU `core` so far.
pub fn core_ticks(core: usize) -> anyhow::Result<CoreTicks> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_core_ticks(&stat, Some(core)).with_context(|| format!("no cpu{core} line in /proc/stat"))
}

/// The ticks of all CPUs together so far.
pub fn machine_ticks() -> anyhow::Result<CoreTicks> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_core_ticks(&stat, None).context("no cpu line in /proc/stat")
}

/// The `cpuN` line (`cpu` for all CPUs with `None`) of `/proc/stat` (`proc(5)`: user nice
/// system idle iowait irq softirq steal guest guest_nice; guest time is already in user and
/// nice).
pub fn parse_core_ticks(stat: &str, core: Option<usize>) -> Option<CoreTicks> {
    let label = core.map_or_else(|| "cpu".to_owned(), |core| format!("cpu{core}"));
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(label.as_str()))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let &[user, nice, system, idle, iowait, irq, softirq, steal] = values.as_slice() else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some(CoreTicks {
        total: busy + idle + iowait,
        busy,
        softirq,
    })
}

/// Datagrams dropped so far by every IPv4 UDP socket bound to local `port` (their receive
/// queues were full), in this network namespace.
pub fn udp_drops(port: u16) -> io::Result<u64> {
    let table = std::fs::read_to_string("/proc/net/udp")?;
    Ok(parse_udp_drops(&table, port))
}

/// The CPU time the calling thread has run, to the nanosecond: the first field of
/// `/proc/thread-self/schedstat` (`sched_info`), which counts only time on a CPU, so a
/// generator thread that other tenants keep off its core is not charged for the wait.
pub fn thread_cpu_time() -> io::Result<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    parse_schedstat(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a malformed schedstat"))
}

/// The run time in a `schedstat` line (`run_ns wait_ns timeslices`).
pub fn parse_schedstat(text: &str) -> Option<Duration> {
    let run = text.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(run))
}

/// Sums the `drops` column (the last) of the rows of a `/proc/net/udp` table whose local
/// address (`HEXIP:HEXPORT`, the second column) has port `port`.
pub fn parse_udp_drops(table: &str, port: u16) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut columns = line.split_whitespace();
            let local = columns.nth(1)?;
            let local_port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            if local_port != port {
                return None;
            }
            columns.next_back()?.parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_time_from_schedstat() {
        assert_eq!(
            parse_schedstat("337228 1200 7\n"),
            Some(Duration::from_nanos(337_228))
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 0 1"), None);
        let before = thread_cpu_time().unwrap();
        let mut spin = 0u64;
        for i in 0..1_000_000u64 {
            spin = std::hint::black_box(spin.wrapping_add(i));
        }
        assert!(thread_cpu_time().unwrap() > before, "{spin}");
    }

    #[test]
    fn cpu_ticks_from_stat() {
        // A comm with spaces and parentheses, as `proc(5)` allows.
        let stat = "4242 (turn server (x)) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    350 125 0 0 20 0 3 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(475));
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2 3"), None, "truncated");
        assert_eq!(parse_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn cpu_time_of_this_process_is_readable() {
        let time = cpu_time(std::process::id()).unwrap();
        assert!(time < Duration::from_secs(24 * 3600));
    }

    #[test]
    fn ticks_convert_exactly() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
        assert_eq!(ticks_to_duration(1, 3), Duration::from_nanos(333_333_333));
        assert_eq!(
            ticks_to_duration(5, 0),
            Duration::from_secs(5),
            "0 Hz read as 1"
        );
    }

    #[test]
    fn core_ticks_from_proc_stat() {
        let stat = "cpu  10 0 10 100 0 0 5 0 0 0\n\
                    cpu0 1 2 3 40 5 6 7 8 0 0\n\
                    cpu1 100 0 50 800 0 0 50 0 0 0\n\
                    intr 12345\n";
        let cpu1 = parse_core_ticks(stat, Some(1)).unwrap();
        assert_eq!(
            cpu1,
            CoreTicks {
                total: 1000,
                busy: 200,
                softirq: 50
            }
        );
        let cpu0 = parse_core_ticks(stat, Some(0)).unwrap();
        assert_eq!((cpu0.busy, cpu0.total), (27, 72));
        assert_eq!(parse_core_ticks(stat, Some(2)), None);
        let all = parse_core_ticks(stat, None).unwrap();
        assert_eq!((all.busy, all.total), (25, 125));
        let later = CoreTicks {
            total: 2000,
            busy: 1100,
            softirq: 150,
        };
        assert_eq!(cpu1.fractions(&later), (0.9, 0.1));
        assert_eq!(later.fractions(&later), (0.0, 0.0));
        assert!(core_ticks(0).is_ok(), "this machine has a cpu0");
        assert!(machine_ticks().is_ok());
    }

    #[test]
    fn udp_drops_by_local_port() {
        let table = "\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  101: 0100007F:0D96 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 111 2 0000000000000000 17
  102: 0100007F:0D96 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 112 2 0000000000000000 3
  103: 00000000:0D97 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 113 2 0000000000000000 99
";
        assert_eq!(
            parse_udp_drops(table, 3478),
            20,
            "both SO_REUSEPORT sockets"
        );
        assert_eq!(parse_udp_drops(table, 3479), 99);
        assert_eq!(parse_udp_drops(table, 1), 0);
        assert_eq!(parse_udp_drops("", 3478), 0);
    }
}
