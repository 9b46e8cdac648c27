//! What both sides measure the same way: the process's resident size and CPU time, the
//! kernel's count of datagrams and bytes sent in this network namespace, percentiles, and the
//! figures one side reports.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The figures of one system, as the issue names them, and what they were derived from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    /// Median time for one node to join the settled cluster, in milliseconds.
    pub join_ms_p50: f64,
    /// Median lookup + delivery of a 200-byte message to the node responsible for a random key.
    pub lookup_ms_p50: f64,
    /// 99th percentile of the same.
    pub lookup_ms_p99: f64,
    /// Protocol messages sent per lookup (see BENCHMARKS.md for what each side counts).
    pub msgs_per_lookup: f64,
    /// Process CPU time (user + system) over the lookup phase, per lookup.
    pub cpu_ms_per_lookup: f64,
    /// Resident size added by the cluster, per node, once it is idle.
    pub rss_mib_per_node: f64,
    /// Bytes sent on loopback per node per second while nobody looks anything up.
    pub idle_bytes_per_node_per_s: Option<f64>,
    /// Lookups delivered to the node truly closest to the key, out of all lookups.
    pub correct_fraction: f64,
    /// Details: sizes, durations and the raw counts behind the figures.
    pub detail: Detail,
}

/// The counts and settings behind [`Figures`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Detail {
    /// Nodes in the cluster during the idle and lookup phases.
    pub nodes: usize,
    /// Median join time while the cluster was built (one node at a time, random bootstrap).
    pub build_join_ms_p50: f64,
    /// How long the cluster took to be settled after the last join, in milliseconds.
    pub settle_ms: f64,
    /// `rss_mib_per_node` before the allocator was asked to give its free memory back.
    pub rss_mib_per_node_untrimmed: f64,
    /// The idle window, in seconds.
    pub idle_window_s: f64,
    /// Datagrams sent per node per second in the idle window.
    pub idle_datagrams_per_node_per_s: Option<f64>,
    /// Lookups made.
    pub lookups: usize,
    /// Lookups that timed out or failed (counted as incorrect, left out of the latencies).
    pub lookups_failed: usize,
    /// Lookups the origin answered itself (it was the closest node).
    pub lookups_local: usize,
    /// UDP datagrams sent per lookup (kernel count over the phase, minus the idle rate).
    pub datagrams_per_lookup: Option<f64>,
    /// Bytes sent on loopback per lookup (kernel count over the phase, minus the idle rate).
    pub bytes_per_lookup: Option<f64>,
    /// Wendy: overlay hops per lookup. libp2p: FIND_NODE requests per lookup.
    pub hops_or_requests_per_lookup: f64,
    /// Wendy: control messages (not routes or their acks) sent over the lookup phase, per
    /// lookup, minus the idle rate. libp2p: identify messages over the phase, per lookup.
    pub side_msgs_per_lookup: f64,
    /// How long the lookup phase took, in seconds.
    pub lookup_phase_s: f64,
    /// Timed joins.
    pub joins: usize,
    /// Joins that failed.
    pub joins_failed: usize,
    /// The figures were taken in a network namespace of their own (kernel counters valid).
    pub own_netns: bool,
}

/// The process's resident size in KiB (`VmRSS`), if readable.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The resident size now, as is and after glibc gave its free heap back to the operating
/// system (`malloc_trim`), in KiB. Both systems are read the same way: the trimmed figure is
/// what the nodes hold, the other also what the allocator kept of their joins' peaks.
pub fn idle_rss() -> Result<(u64, u64), String> {
    let untrimmed = rss_kib().ok_or("VmRSS is not readable (Linux only)")?;
    trim_heap();
    let trimmed = rss_kib().ok_or("VmRSS is not readable (Linux only)")?;
    Ok((untrimmed, trimmed))
}

/// The resident size at the start, with the heap trimmed as in [`idle_rss`].
pub fn baseline_rss() -> Result<u64, String> {
    trim_heap();
    rss_kib().ok_or_else(|| "VmRSS is not readable (Linux only)".to_owned())
}

fn trim_heap() {
    // SAFETY: malloc_trim only releases free heap pages; it touches no live allocation.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `(after - before) KiB` shared by `nodes`, in MiB.
pub fn per_node_mib(after: u64, before: u64, nodes: usize) -> f64 {
    after.saturating_sub(before) as f64 / 1024.0 / nodes.max(1) as f64
}

/// User + system CPU time this process has used.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to a rusage struct.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The kernel's counters of what this network namespace sent: UDP datagrams
/// (`OutDatagrams` in `/proc/net/snmp`) and bytes on `lo` (`/proc/net/dev`, each datagram with
/// its UDP, IP and link headers).
#[derive(Debug, Clone, Copy, Default)]
pub struct Wire {
    /// UDP datagrams sent.
    pub datagrams: u64,
    /// Bytes sent on the loopback interface.
    pub bytes: u64,
}

impl Wire {
    /// Reads the counters, or `None` if they cannot be read.
    pub fn read() -> Option<Self> {
        let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
        let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
        let (names, values) = udp.next().zip(udp.next())?;
        let datagrams = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "OutDatagrams")
            .and_then(|(_, value)| value.parse().ok())?;
        let dev = std::fs::read_to_string("/proc/net/dev").ok()?;
        // `lo: rx_bytes rx_packets (6 more rx fields) tx_bytes ...`
        let bytes = dev
            .lines()
            .find_map(|line| line.trim_start().strip_prefix("lo:"))
            .and_then(|fields| fields.split_whitespace().nth(8))
            .and_then(|value| value.parse().ok())?;
        Some(Self { datagrams, bytes })
    }

    /// What was sent between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            datagrams: self.datagrams.saturating_sub(earlier.datagrams),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}

/// The `q` quantile (0..=1) of `samples` in milliseconds, nearest rank; 0 when empty.
pub fn quantile_ms(samples: &[Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

/// What the idle window and the lookup phase read from the kernel, turned into figures.
#[derive(Debug, Clone, Copy)]
pub struct WireFigures {
    pub idle_bytes_per_node_per_s: Option<f64>,
    pub idle_datagrams_per_node_per_s: Option<f64>,
    pub datagrams_per_lookup: Option<f64>,
    pub bytes_per_lookup: Option<f64>,
}

impl WireFigures {
    /// `idle` was sent by `nodes` in `window`; `lookups` sent `busy` in `phase`, from which the
    /// idle rate over the same time is taken off.
    pub fn new(
        nodes: usize,
        idle: Option<Wire>,
        window: Duration,
        busy: Option<Wire>,
        phase: Duration,
        lookups: usize,
    ) -> Self {
        let per_node_s = |count: u64| count as f64 / nodes.max(1) as f64 / window.as_secs_f64();
        let per_lookup = |busy: u64, idle: u64| {
            let background = idle as f64 / window.as_secs_f64() * phase.as_secs_f64();
            ((busy as f64 - background) / lookups.max(1) as f64).max(0.0)
        };
        Self {
            idle_bytes_per_node_per_s: idle.map(|w| per_node_s(w.bytes)),
            idle_datagrams_per_node_per_s: idle.map(|w| per_node_s(w.datagrams)),
            datagrams_per_lookup: idle
                .zip(busy)
                .map(|(i, b)| per_lookup(b.datagrams, i.datagrams)),
            bytes_per_lookup: idle.zip(busy).map(|(i, b)| per_lookup(b.bytes, i.bytes)),
        }
    }
}

/// The settings of one child run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub nodes: usize,
    pub lookups: usize,
    pub joins: usize,
    pub warmup: Duration,
    pub idle_window: Duration,
    pub seed: u64,
    /// The kernel counters belong to this run alone (its own network namespace).
    pub own_netns: bool,
}

/// The 200-byte payload of lookup `seq`: its sequence number first, so the receiver's event
/// can be matched to the lookup.
pub fn payload(seq: u64) -> Vec<u8> {
    let mut payload = vec![0xa5; 200];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    payload
}

/// The sequence number in the first 8 bytes of a payload.
pub fn seq_of(payload: &[u8]) -> Option<u64> {
    payload
        .get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u64::from_be_bytes)
}

/// Progress for the person watching (stderr; stdout carries the result).
pub fn progress(system: &str, what: &str) {
    eprintln!("[{system}] {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn quantiles_are_nearest_rank_over_sorted_samples() {
        let samples = ms(&[9, 1, 5, 3, 7]);
        assert_eq!(quantile_ms(&samples, 0.5), 5.0);
        assert_eq!(quantile_ms(&samples, 0.99), 9.0);
        assert_eq!(quantile_ms(&samples, 0.0), 1.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn lookup_traffic_has_the_idle_rate_over_the_same_time_taken_off() {
        // 10 nodes sent 600 datagrams in a 60 s idle window (10 per s); 200 lookups over 2 s
        // sent 420: 20 of them were upkeep, 400 were the lookups'.
        let idle = Wire {
            datagrams: 600,
            bytes: 60_000,
        };
        let busy = Wire {
            datagrams: 420,
            bytes: 42_000,
        };
        let figures = WireFigures::new(
            10,
            Some(idle),
            Duration::from_secs(60),
            Some(busy),
            Duration::from_secs(2),
            200,
        );
        assert_eq!(figures.idle_datagrams_per_node_per_s, Some(1.0));
        assert_eq!(figures.idle_bytes_per_node_per_s, Some(100.0));
        assert_eq!(figures.datagrams_per_lookup, Some(2.0));
        assert_eq!(figures.bytes_per_lookup, Some(200.0));
    }

    #[test]
    fn without_kernel_counters_the_wire_figures_are_absent() {
        let figures = WireFigures::new(10, None, Duration::from_secs(60), None, Duration::ZERO, 1);
        assert_eq!(figures.idle_bytes_per_node_per_s, None);
        assert_eq!(figures.datagrams_per_lookup, None);
    }

    #[test]
    fn a_payload_is_200_bytes_and_carries_its_sequence_number() {
        let message = payload(42);
        assert_eq!(message.len(), 200);
        assert_eq!(seq_of(&message), Some(42));
        assert_eq!(seq_of(&message[..7]), None);
    }
}
