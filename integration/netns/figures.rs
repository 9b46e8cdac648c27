//! Relay figures on the NAT testbed for BENCHMARKS.md (`cargo test --release --test
//! integration netns::figures -- --ignored --nocapture`, as root).
//!
//! The nodes run in this process, each on a UDP socket made inside its host's namespace, so
//! every datagram crosses the kernel's veths, bridges and (for the private node) the NAT:
//! - relays R on pub0 and pub1, the private node X on lan0h0 behind the endpoint-independent
//!   NAT, homed on both;
//! - two nodes on pub2: P1, which reaches X only through a relay (X never dialled it, and X's
//!   NAT drops what crosses it to or from P1's port, so neither hole punching nor a direct dial
//!   moves the link off the relay), and P2, which X dials directly (its NAT lets the answers
//!   in).
//!
//! So "relayed" and "direct" are paths between the same two hosts, pub2 and lan0h0, and the
//! bulk bytes flow from pub2 to lan0h0 in both: P1 writes into a stream it opened to X; X
//! opens a stream to P2 and asks P2 to write.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::Runtime;
use wendy::identity::Identity;
use wendy::node::{Events, Node, NodeEvent};
use wendy::relay::{RelayConfig, RelayLimits};
use wendy::transport::RawStream;

use super::inside::within;
use super::testbed::{Host, Nat, Spec, Testbed};
use crate::netns_or_skip;

/// Bytes of one bulk transfer.
const BULK: usize = 64 << 20;
/// The first byte of a request: what the accepting side does with the stream.
const SINK: u8 = 0;
const SOURCE: u8 = 1;

/// A UDP socket made on `host` (bound to `ip:port` there) for a node of this process.
fn socket_on(host: &Host, addr: SocketAddr) -> Arc<dyn quinn::AsyncUdpSocket> {
    let socket = within(host, move || std::net::UdpSocket::bind(addr).unwrap());
    quinn::TokioRuntime.wrap_udp_socket(socket).unwrap()
}

async fn spawn_on(host: &Host, addr: SocketAddr, seed: u8, relay: RelayConfig) -> (Node, Events) {
    Node::builder(Identity::from_seed([seed; 32]))
        .socket(socket_on(host, addr))
        .relay(relay)
        .spawn()
        .await
        .unwrap()
}

/// Serves every incoming stream: SINK counts what it reads and answers the count; SOURCE
/// writes the number of bytes asked for.
async fn serve(mut events: Events) {
    while let Some(event) = events.recv().await {
        if let NodeEvent::Stream { mut stream, .. } = event {
            tokio::spawn(async move {
                let mut request = [0u8; 9];
                if stream.read_exact(&mut request).await.is_err() {
                    return;
                }
                let count = u64::from_be_bytes(request[1..].try_into().unwrap());
                if request[0] == SINK {
                    let mut buf = vec![0u8; 1 << 16];
                    let mut total = 0u64;
                    while let Ok(Some(n)) = stream.recv.read(&mut buf).await {
                        total += n as u64;
                    }
                    let _ = stream.write_all(&total.to_be_bytes()).await;
                } else {
                    let chunk = vec![7u8; 1 << 16];
                    let mut left = count as usize;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if stream.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                }
                let _ = stream.send.finish();
            });
        }
    }
}

/// One transfer of `bytes` toward the opener's peer (SINK) or from it (SOURCE), on a new
/// stream; returns the time from opening the stream to the last byte's acknowledgement.
async fn transfer(stream: &mut RawStream, mode: u8, bytes: usize) -> Duration {
    let started = Instant::now();
    let mut request = [mode; 9];
    request[1..].copy_from_slice(&(bytes as u64).to_be_bytes());
    stream.write_all(&request).await.unwrap();
    if mode == SINK {
        crate::common::write_filler(stream, bytes).await;
        stream.send.finish().unwrap();
        let mut total = [0u8; 8];
        stream.read_exact(&mut total).await.unwrap();
        assert_eq!(u64::from_be_bytes(total), bytes as u64);
    } else {
        stream.send.finish().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        while let Ok(Some(n)) = stream.recv.read(&mut buf).await {
            total += n;
        }
        assert_eq!(total, bytes);
    }
    started.elapsed()
}

struct Path<'a> {
    name: &'static str,
    from: &'a Node,
    to: &'a Node,
    mode: u8,
}

impl Path<'_> {
    async fn open(&self) -> RawStream {
        self.from
            .open_stream_to(self.to.id(), self.to.addr(), "figures")
            .await
            .unwrap()
    }

    /// (median round trip of 30, QUIC RTT after them, best throughput of 3 in MiB/s)
    async fn measure(&self) -> (Duration, Duration, f64) {
        let mut trips = Vec::new();
        for _ in 0..30 {
            let mut stream = self.open().await;
            trips.push(transfer(&mut stream, SINK, 8).await);
        }
        trips.sort();
        let rtt = self.from.rtt(self.to.id()).unwrap_or_default();
        let mut best = 0.0f64;
        let mut cpu = 0.0f64;
        for _ in 0..3 {
            let mut stream = self.open().await;
            let cpu_before = cpu_secs();
            let took = transfer(&mut stream, self.mode, BULK).await;
            cpu = cpu.max(cpu_secs() - cpu_before);
            best = best.max(BULK as f64 / took.as_secs_f64() / f64::from(1 << 20));
        }
        let dropped =
            self.from.relay_status().datagrams_dropped + self.to.relay_status().datagrams_dropped;
        println!(
            "netns figures {}: stream round trip median {:?}, QUIC rtt {rtt:?}, throughput {best:.1} MiB/s (best of 3 x 64 MiB), \
             process CPU per 64 MiB up to {cpu:.2} s, datagrams dropped by the ends' sockets {dropped}",
            self.name, trips[15]
        );
        (trips[15], rtt, best)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand for BENCHMARKS.md"]
async fn figures() {
    netns_or_skip!("figures");
    let bed = Testbed::new(&Spec {
        public_hosts: 3,
        lans: vec![(Nat::EndpointIndependent, 1)],
    })
    .unwrap();
    let unlimited = RelayConfig {
        serve: Some(RelayLimits {
            link_bytes_per_sec: 0,
            total_bytes_per_sec: 0,
            ..RelayLimits::default()
        }),
        ..RelayConfig::default()
    };
    let (r0, r0_events) = spawn_on(
        &bed.public[0],
        bed.public[0].v4(7000),
        170,
        unlimited.clone(),
    )
    .await;
    let (r1, r1_events) = spawn_on(&bed.public[1], bed.public[1].v4(7000), 171, unlimited).await;
    r0.join(&[]).await.unwrap();
    r1.join(&[r0.addr()]).await.unwrap();
    let pub2 = &bed.public[2];
    let (p1, p1_events) = spawn_on(pub2, pub2.v4(7000), 172, RelayConfig::default()).await;
    let (p2, p2_events) = spawn_on(pub2, pub2.v4(7001), 173, RelayConfig::default()).await;
    p2.join(&[r0.addr()]).await.unwrap();
    // P1 stays out of the overlay (X never learns of it, so never dials it) and is linked to
    // the first relay only, before X exists.
    p1.send_to(r0.id(), r0.addr(), b"hello".to_vec())
        .await
        .unwrap();
    for events in [r0_events, r1_events, p1_events, p2_events] {
        tokio::spawn(serve(events));
    }

    // P1's path to X must stay relayed: hole punching (or X dialling the public P1) would
    // move it onto the direct path. The NAT drops what crosses it to or from P1's port.
    let router = &bed.lans[0].router;
    router
        .drop(&format!("ip daddr {} udp dport 7000", pub2.ipv4))
        .unwrap();
    router
        .drop(&format!("ip saddr {} udp sport 7000", pub2.ipv4))
        .unwrap();
    let lan = &bed.lans[0].hosts[0];
    let started = Instant::now();
    let (x, x_events) = spawn_on(
        lan,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7000),
        174,
        RelayConfig {
            private: true,
            relays: vec![r0.addr(), r1.addr()],
            ..RelayConfig::default()
        },
    )
    .await;
    tokio::spawn(serve(x_events));
    x.join(&[r0.addr()]).await.unwrap();
    let joined = started.elapsed();
    while x.relay_status().homes.is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let homed = started.elapsed();
    // Reachable: the first round trip P1 completes through a relay.
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            let mut stream = p1.open_stream_to(x.id(), x.addr(), "figures").await.ok()?;
            Some(transfer(&mut stream, SINK, 8).await)
        })
        .await;
        if let Ok(Some(_)) = attempt {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "X never became reachable"
        );
    }
    let reachable = started.elapsed();
    println!(
        "netns figures: private node joined {} ms, homed on its first relay {} ms, first relayed round trip done {} ms after its start",
        joined.as_millis(),
        homed.as_millis(),
        reachable.as_millis()
    );

    let relayed = Path {
        name: "relayed (pub2 -> relay pub0 -> NAT -> lan0h0)",
        from: &p1,
        to: &x,
        mode: SINK,
    };
    let direct = Path {
        name: "direct (pub2 -> NAT -> lan0h0)",
        from: &x,
        to: &p2,
        mode: SOURCE,
    };
    let (relayed_trip, relayed_rtt, relayed_bulk) = relayed.measure().await;
    let (direct_trip, direct_rtt, direct_bulk) = direct.measure().await;
    let via = p1.status().await.unwrap();
    let path = via
        .connections
        .iter()
        .find(|c| c.id == x.id())
        .map(|c| format!("{:?}", c.path));
    assert_eq!(
        path.as_deref(),
        Some("Relay"),
        "P1's link to X left the relay"
    );
    // The relayed bytes crossed the relays' datagram path (see docs/relays.md), not only
    // their session streams.
    let (mut datagram_bytes, mut all_bytes) = (0, 0);
    for relay in [&r0, &r1] {
        if let Some(server) = relay.relay_status().server {
            datagram_bytes += server.datagram_bytes_relayed;
            all_bytes += server.bytes_relayed;
        }
    }
    println!(
        "netns figures: relays carried {all_bytes} bytes, {datagram_bytes} of them on the datagram path"
    );
    assert!(
        datagram_bytes >= 3 * BULK as u64,
        "the relayed bulk bytes did not take the datagram path"
    );
    println!(
        "netns figures: relayed / direct: round trip x{:.2}, QUIC rtt x{:.2}, throughput ratio {:.2}",
        relayed_trip.as_secs_f64() / direct_trip.as_secs_f64(),
        relayed_rtt.as_secs_f64() / direct_rtt.as_secs_f64().max(1e-9),
        relayed_bulk / direct_bulk
    );
}

/// CPU time this process has used (user and system), from `/proc/self/stat` (in clock ticks
/// of 1/100 s, Linux's `USER_HZ`): every node of the figures runs in this process, so it is
/// the CPU the path costs, relay included.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name (which may hold spaces) in parentheses; utime and
    // stime are the 14th and 15th fields of the line.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}
