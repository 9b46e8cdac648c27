//! The link benchmark: one-way messages between two nodes over the Wendy transport versus raw
//! quinn with the same TLS setup and limits, in the same process and run.
//!
//! Both sides do the same work per message: the sender opens one uni stream, writes the message
//! and finishes the stream, without waiting for delivery (QUIC's stream credit paces it); the
//! receiver accepts the stream and reads it to the end. Wendy adds what it is: the frame
//! encoding, the pool lookup, decoding, and delivery as a [`TransportEvent`]. The clock runs from
//! the first send until the receiver has the last message. Rounds alternate between the two
//! and the best round of each is kept, which damps the noise of a shared machine.
//!
//! Run it in release mode: `cargo run --release -- bench link`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

use crate::identity::{Identity, Validity};
use crate::transport::{
    tls, Admission, BindError, ConfigError, ConnectError, SendError, Transport, TransportConfig,
    TransportEvent,
};
use crate::wire::Body;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkBenchConfig {
    /// Messages per round.
    pub messages: usize,
    /// Application payload bytes per message.
    pub size: usize,
    /// Rounds of each (the best is kept).
    pub rounds: usize,
}

impl Default for LinkBenchConfig {
    fn default() -> Self {
        Self {
            messages: 100_000,
            size: 200,
            rounds: 5,
        }
    }
}

impl LinkBenchConfig {
    /// Small sizes for a smoke run (`--quick`).
    pub fn quick() -> Self {
        Self {
            messages: 5_000,
            size: 200,
            rounds: 1,
        }
    }
}

/// The result of a link benchmark.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkBenchReport {
    /// Messages per round.
    pub messages: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Rounds of each.
    pub rounds: usize,
    /// Best Wendy round, seconds.
    pub ours_seconds: f64,
    /// Wendy messages per second (best round).
    pub ours_msgs_per_s: f64,
    /// Best raw quinn round, seconds.
    pub raw_quinn_seconds: f64,
    /// Raw quinn messages per second (best round).
    pub raw_quinn_msgs_per_s: f64,
    /// `ours_msgs_per_s / raw_quinn_msgs_per_s`.
    pub ratio: f64,
    /// The median over rounds of each round's throughput ratio (less sensitive to one lucky
    /// round than `ratio`).
    pub ratio_median: f64,
    /// Process CPU time in the timed windows of all raw quinn rounds divided by that of all
    /// Wendy rounds (above 1: Wendy used less CPU for the same messages). Little affected by
    /// other load on the machine. Linux only (`/proc/self/stat`, 10 ms ticks); `None` elsewhere.
    pub cpu_ratio: Option<f64>,
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum LinkBenchError {
    /// The Wendy transport could not start.
    #[error("wendy transport: {0}")]
    Bind(#[from] BindError),
    /// The quinn configs for the baseline could not be built.
    #[error("wendy transport: {0}")]
    Config(#[from] ConfigError),
    /// The Wendy transport could not set up its link.
    #[error("wendy transport: {0}")]
    Connect(#[from] ConnectError),
    /// A Wendy send failed.
    #[error("wendy transport: {0}")]
    Send(#[from] SendError),
    /// A certificate could not be made.
    #[error("certificate: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// The raw quinn baseline failed.
    #[error("raw quinn: {0}")]
    Quinn(String),
    /// The receiving side stopped before every message arrived.
    #[error("only {received} of {expected} messages arrived")]
    Incomplete {
        /// Messages received.
        received: usize,
        /// Messages sent.
        expected: usize,
    },
    /// The configuration makes no sense.
    #[error("invalid benchmark: {0}")]
    Invalid(String),
}

fn node_config() -> Result<TransportConfig, LinkBenchError> {
    let identity = Identity::generate();
    let certificate = identity.self_signed_certificate(Validity::days_from_now(1))?;
    let listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = TransportConfig::new(listen, identity, certificate, Admission::Open);
    super::as_shipped(&mut config.limits);
    Ok(config)
}

/// Runs the benchmark (needs a tokio runtime; use a multi-threaded one).
pub async fn run(config: LinkBenchConfig) -> Result<LinkBenchReport, LinkBenchError> {
    if config.messages == 0 || config.rounds == 0 {
        return Err(LinkBenchError::Invalid(
            "messages and rounds must be at least 1".into(),
        ));
    }
    let sender_config = node_config()?;
    let receiver_config = node_config()?;
    let frame_limit = sender_config.limits.max_message_size;
    if config.size + 16 > frame_limit {
        return Err(LinkBenchError::Invalid(format!(
            "size {} exceeds the maximum message size {frame_limit}",
            config.size
        )));
    }
    let mut ours = Duration::MAX;
    let mut raw = Duration::MAX;
    let mut round_ratios = Vec::with_capacity(config.rounds);
    let (mut ours_cpu, mut raw_cpu) = (Some(0u64), Some(0u64));
    for round in 0..config.rounds {
        // Alternate which goes first, so a slow phase of the machine hits both alike.
        let (ours_round, raw_round) = if round % 2 == 0 {
            let ours_round = run_ours(&sender_config, &receiver_config, config).await?;
            let raw_round = run_raw(&sender_config, &receiver_config, config).await?;
            (ours_round, raw_round)
        } else {
            let raw_round = run_raw(&sender_config, &receiver_config, config).await?;
            let ours_round = run_ours(&sender_config, &receiver_config, config).await?;
            (ours_round, raw_round)
        };
        ours = ours.min(ours_round.0);
        raw = raw.min(raw_round.0);
        round_ratios.push(raw_round.0.as_secs_f64() / ours_round.0.as_secs_f64().max(1e-9));
        ours_cpu = ours_cpu
            .zip(ours_round.1)
            .map(|(total, ticks)| total + ticks);
        raw_cpu = raw_cpu.zip(raw_round.1).map(|(total, ticks)| total + ticks);
    }
    round_ratios.sort_by(f64::total_cmp);
    let ratio_median = round_ratios[round_ratios.len() / 2];
    let cpu_ratio = ours_cpu
        .zip(raw_cpu)
        .filter(|(ours, _)| *ours > 0)
        .map(|(ours, raw)| raw as f64 / ours as f64);
    let rate = |elapsed: Duration| config.messages as f64 / elapsed.as_secs_f64().max(1e-9);
    let ours_msgs_per_s = rate(ours);
    let raw_quinn_msgs_per_s = rate(raw);
    Ok(LinkBenchReport {
        messages: config.messages,
        size: config.size,
        rounds: config.rounds,
        ours_seconds: ours.as_secs_f64(),
        ours_msgs_per_s,
        raw_quinn_seconds: raw.as_secs_f64(),
        raw_quinn_msgs_per_s,
        ratio: ours_msgs_per_s / raw_quinn_msgs_per_s,
        ratio_median,
        cpu_ratio,
    })
}

/// A round's wall-clock time and the process CPU time (clock ticks) spent in it.
type Round = (Duration, Option<u64>);

/// CPU ticks between two readings.
fn ticks_between(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    before
        .zip(after)
        .map(|(before, after)| after.saturating_sub(before))
}

/// Process CPU ms per item since `before` (a [`process_cpu_ticks`] reading), `None` without
/// readings or items.
pub(crate) fn cpu_ms_per(before: Option<u64>, items: usize) -> Option<f64> {
    before
        .zip(process_cpu_ticks())
        .filter(|_| items > 0)
        // Linux clock ticks are 10 ms.
        .map(|(before, after)| (after - before) as f64 * 10.0 / items as f64)
}

/// User + system CPU time of this process, in clock ticks, from `/proc/self/stat` (Linux).
pub(crate) fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces): state is
    // field 3, utime field 14, stime field 15.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

async fn run_ours(
    sender_config: &TransportConfig,
    receiver_config: &TransportConfig,
    config: LinkBenchConfig,
) -> Result<Round, LinkBenchError> {
    let (sender, _sender_events) = Transport::bind(sender_config.clone()).await?;
    let (receiver, mut events) = Transport::bind(receiver_config.clone()).await?;
    let (peer, addr) = (receiver.local_id(), receiver.local_addr());
    // The link is set up before the clock starts, as for raw quinn.
    sender.connect(addr, Some(peer)).await?;
    let expected = config.messages;
    let counter = tokio::spawn(async move {
        let mut received = 0;
        while received < expected {
            match events.recv().await {
                Some(TransportEvent::Message { .. }) => received += 1,
                Some(_) => {}
                None => break,
            }
        }
        (received, Instant::now())
    });
    let body = Body::Direct {
        payload: vec![0x5a; config.size].into(),
    };
    let cpu_before = process_cpu_ticks();
    let start = Instant::now();
    for _ in 0..config.messages {
        sender.send(peer, addr, &body).await?;
    }
    let (received, end) = counter
        .await
        .map_err(|error| LinkBenchError::Quinn(error.to_string()))?;
    let cpu = ticks_between(cpu_before, process_cpu_ticks());
    sender.shutdown().await;
    receiver.shutdown().await;
    if received < expected {
        return Err(LinkBenchError::Incomplete { received, expected });
    }
    Ok((end.saturating_duration_since(start), cpu))
}

async fn run_raw(
    sender_config: &TransportConfig,
    receiver_config: &TransportConfig,
    config: LinkBenchConfig,
) -> Result<Round, LinkBenchError> {
    let quinn_error = |error: &dyn std::fmt::Display| LinkBenchError::Quinn(error.to_string());
    let server_config = tls::quinn_server_config(receiver_config)?;
    let client_config =
        tls::quinn_client_config(sender_config, Some(receiver_config.identity.node_id()))?;
    let server = quinn::Endpoint::server(server_config, receiver_config.listen)
        .map_err(|error| quinn_error(&error))?;
    let server_addr = server.local_addr().map_err(|error| quinn_error(&error))?;
    let client =
        quinn::Endpoint::client(sender_config.listen).map_err(|error| quinn_error(&error))?;

    let max = receiver_config.limits.max_message_size;
    let received = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let expected = config.messages;
    let accept = {
        let server = server.clone();
        let received = received.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let Some(incoming) = server.accept().await else {
                return;
            };
            let Ok(conn) = incoming.await else {
                return;
            };
            while let Ok(mut stream) = conn.accept_uni().await {
                let received = received.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    if stream.read_to_end(max).await.is_ok()
                        && received.fetch_add(1, Ordering::Relaxed) + 1 == expected
                    {
                        done.notify_one();
                    }
                });
            }
        })
    };
    let conn = client
        .connect_with(client_config, server_addr, "wendy")
        .map_err(|error| quinn_error(&error))?
        .await
        .map_err(|error| quinn_error(&error))?;
    let payload = bytes::Bytes::from(vec![0x5a; config.size]);
    let cpu_before = process_cpu_ticks();
    let start = Instant::now();
    for _ in 0..config.messages {
        let mut stream = conn.open_uni().await.map_err(|error| quinn_error(&error))?;
        stream
            .write_chunk(payload.clone())
            .await
            .map_err(|error| quinn_error(&error))?;
        stream.finish().map_err(|error| quinn_error(&error))?;
    }
    let finished = tokio::time::timeout(Duration::from_secs(600), done.notified()).await;
    let end = Instant::now();
    let cpu = ticks_between(cpu_before, process_cpu_ticks());
    conn.close(0u32.into(), b"done");
    client.close(0u32.into(), b"done");
    server.close(0u32.into(), b"done");
    accept.abort();
    let got = received.load(Ordering::Relaxed);
    if finished.is_err() || got < expected {
        return Err(LinkBenchError::Incomplete {
            received: got,
            expected,
        });
    }
    Ok((end.saturating_duration_since(start), cpu))
}
