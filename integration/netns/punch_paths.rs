//! A punched link under stress on the NAT testbed: a bulk transfer whose direct path is cut
//! half-way carries on through the relay and returns to the direct path, and a NAT that really
//! changes its external port during traffic loses no node and no message.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

use super::inside::within;
use super::overlay::{Overlay, PORT};
use super::punch::{
    direct_pair, is_direct, left_events, link_to, overlay_with, received, status_within, stream,
    testbed,
};
use super::testbed::{Host, Nat, Router, Spec};
use crate::netns_or_skip;

/// The sink service's port on the provider's host.
const SINK_PORT: u16 = 5001;
/// The consumer's forwarded port (on its own loopback).
const FORWARD_PORT: u16 = 9001;
const MIB: u64 = 1 << 20;
const TRANSFER_BYTES: u64 = 50 * MIB;
/// Bytes the sink must have read before the cut, and again during it.
const BEFORE_CUT: u64 = 10 * MIB;
const DURING_CUT: u64 = 10 * MIB;
/// The sender's pace: the transfer takes 5 s unhindered, so that it runs before, during and
/// after a cut of 2 s.
const PACE: u64 = 10 * MIB;

/// A TCP service on `host`: it reads a connection to its end, then answers with the blake3
/// hash of what it read and its length (big-endian u64) and closes. `read` counts the bytes
/// it has read, over all connections.
fn sink_server(host: &Host, port: u16, read: Arc<AtomicU64>) {
    let listener = within(host, move || TcpListener::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            let read = read.clone();
            std::thread::spawn(move || {
                let mut hasher = blake3::Hasher::new();
                let mut buf = vec![0u8; 64 << 10];
                let mut len = 0u64;
                loop {
                    match tcp.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            hasher.update(&buf[..n]);
                            len += n as u64;
                            read.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
                let mut answer = hasher.finalize().as_bytes().to_vec();
                answer.extend_from_slice(&len.to_be_bytes());
                let _ = tcp.write_all(&answer);
            });
        }
    });
}

/// Sends `data` to the sink behind `addr` from inside `host`'s namespace, at most `pace`
/// bytes a second if given; the sink's answer (hash, length).
fn send_to_sink(
    host: &Host,
    addr: SocketAddr,
    data: &[u8],
    pace: Option<u64>,
) -> std::io::Result<([u8; 32], u64)> {
    let mut tcp = within(host, move || TcpStream::connect(addr))?;
    let started = Instant::now();
    let mut sent = 0u64;
    for chunk in data.chunks(256 << 10) {
        tcp.write_all(chunk)?;
        sent += chunk.len() as u64;
        if let Some(pace) = pace {
            let due = Duration::from_secs_f64(sent as f64 / pace as f64);
            std::thread::sleep(due.saturating_sub(started.elapsed()));
        }
    }
    tcp.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)?;
    if answer.len() != 40 {
        return Err(std::io::Error::other(format!(
            "the sink answered {} bytes, not 40",
            answer.len()
        )));
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&answer[..32]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&answer[32..]);
    Ok((hash, u64::from_be_bytes(len)))
}

/// Bytes all relays (the public nodes) have carried so far.
fn relayed_bytes(overlay: &mut Overlay) -> u64 {
    overlay
        .members
        .iter_mut()
        .filter(|m| !m.private)
        .map(|m| {
            m.proc.status()["relay"]["bytes_relayed"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum()
}

/// Waits (polling every 50 ms) until `read` reaches `at_least` or `within` passes.
fn wait_read(read: &AtomicU64, at_least: u64, within: Duration) -> bool {
    let until = Instant::now() + within;
    while read.load(Ordering::Relaxed) < at_least {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn a_transfer_whose_direct_path_is_cut_carries_on_through_the_relay_intact() {
    netns_or_skip!("a_transfer_whose_direct_path_is_cut_carries_on_through_the_relay_intact");
    let bed = testbed(&Spec {
        public_hosts: 2,
        lans: vec![(Nat::EndpointIndependent, 1), (Nat::EndpointIndependent, 1)],
    });
    // A (LAN 0) provides the sink; B (LAN 1) reaches it through the overlay.
    let provider_host = bed.lans[0].hosts[0].clone();
    let consumer_host = bed.lans[1].hosts[0].clone();
    let read = Arc::new(AtomicU64::new(0));
    sink_server(&provider_host, SINK_PORT, read.clone());
    let mut overlay = overlay_with(&bed, |host| {
        if host.name == provider_host.name {
            vec!["--expose".to_owned(), format!("sink=127.0.0.1:{SINK_PORT}")]
        } else if host.name == consumer_host.name {
            vec![
                "--forward".to_owned(),
                format!("127.0.0.1:{FORWARD_PORT}=sink"),
            ]
        } else {
            Vec::new()
        }
    });
    let (a, b) = (2, 3);
    let (a_id, b_id) = (overlay.members[a].id, overlay.members[b].id);
    let local: SocketAddr = format!("127.0.0.1:{FORWARD_PORT}").parse().unwrap();

    // The provider's record reaches its root after the joins settle; until then a tunnel
    // is refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = b"is the sink there?";
        match send_to_sink(&consumer_host, local, probe, None) {
            Ok((hash, len)) if hash == *blake3::hash(probe).as_bytes() && len == 18 => break,
            outcome => assert!(
                Instant::now() < deadline,
                "no tunnel to the sink within 30 s (last: {outcome:?})\n{}",
                overlay.members[b].proc.context()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, direct) = status_within(&mut overlay.members[b], Duration::from_secs(15), |s| {
        is_direct(s, a_id)
    });
    assert!(
        direct,
        "the consumer's link to the provider never went direct: {status}"
    );

    let mut data = vec![0u8; usize::try_from(TRANSFER_BYTES).unwrap()];
    rand_chacha::ChaCha8Rng::seed_from_u64(16).fill_bytes(&mut data);
    let sent_hash = *blake3::hash(&data).as_bytes();
    let before = read.load(Ordering::Relaxed);
    // The direct path carries the transfer until the cut: the relays' count before it starts
    // stands for their count at the cut.
    let relayed_at_cut = relayed_bytes(&mut overlay);
    let (done_tx, done_rx) = mpsc::channel();
    let started = Instant::now();
    {
        let host = consumer_host.clone();
        std::thread::spawn(move || {
            let outcome = send_to_sink(&host, local, &data, Some(PACE));
            let _ = done_tx.send((outcome, Instant::now()));
        });
    }

    assert!(
        wait_read(&read, before + BEFORE_CUT, Duration::from_secs(60)),
        "the first {BEFORE_CUT} bytes did not arrive within 60 s ({} did)",
        read.load(Ordering::Relaxed) - before
    );
    // Cut A's router off B's (the relays stay reachable).
    let router_b = bed.lans[1].router.public_ipv4;
    let router_a = &bed.lans[0].router;
    router_a.drop(&format!("ip daddr {router_b}")).unwrap();
    router_a.drop(&format!("ip saddr {router_b}")).unwrap();
    let cut = Instant::now();
    let read_at_cut = read.load(Ordering::Relaxed);
    let (status, relayed) = status_within(&mut overlay.members[a], Duration::from_secs(10), |s| {
        link_to(s, b_id).is_some_and(|c| c["path"] == "relay")
    });
    let fell_back = cut.elapsed();
    assert!(relayed, "A never fell back to the relay: {status}");
    assert!(
        wait_read(&read, read_at_cut + DURING_CUT, Duration::from_secs(60)),
        "the transfer stalled during the cut: {} bytes in 60 s\n{}",
        read.load(Ordering::Relaxed) - read_at_cut,
        overlay.members[a].proc.context()
    );
    // The cut holds for 2 s at least (the transfer may end meanwhile).
    std::thread::sleep(Duration::from_secs(2).saturating_sub(cut.elapsed()));
    let read_during_cut = read.load(Ordering::Relaxed) - read_at_cut;
    let cut_for = cut.elapsed();
    let relayed_during_cut = relayed_bytes(&mut overlay) - relayed_at_cut;
    router_a.clear_drops().unwrap();
    let lifted = Instant::now();
    let read_at_lift = read.load(Ordering::Relaxed);
    let (status, direct) = status_within(&mut overlay.members[a], Duration::from_secs(20), |s| {
        is_direct(s, b_id)
    });
    let back = lifted.elapsed();

    let (outcome, finished) = done_rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| {
            panic!(
                "the transfer did not end within 120 s of the lift ({} of {TRANSFER_BYTES} \
                 bytes read)",
                read.load(Ordering::Relaxed) - before
            )
        });
    let (hash, len) = outcome.unwrap_or_else(|e| {
        panic!(
            "the transfer failed: {e}\n{}\n{}",
            overlay.members[b].proc.context(),
            overlay.members[a].proc.context()
        )
    });
    let took = finished.duration_since(started);
    let a_status = overlay.members[a].proc.status();
    let b_status = overlay.members[b].proc.status();
    println!(
        "netns punch transfer: 50 MiB B->A through the mesh, paced at 10 MiB/s (5000 ms \
         unhindered), in {} ms ({:.1} MiB/s); cut after \
         {} MiB; relay path in use at A {} ms after the drop rule; {:.1} MiB read by the sink \
         during the {} ms cut ({:.1} MiB relayed by the relays meanwhile); direct again {} ms \
         after the lift ({:.1} MiB read after the lift); fallbacks A {} B {}; punch attempts \
         A {} B {}",
        took.as_millis(),
        TRANSFER_BYTES as f64 / MIB as f64 / took.as_secs_f64(),
        (read_at_cut - before) / MIB,
        fell_back.as_millis(),
        read_during_cut as f64 / MIB as f64,
        cut_for.as_millis(),
        relayed_during_cut as f64 / MIB as f64,
        back.as_millis(),
        (before + TRANSFER_BYTES).saturating_sub(read_at_lift) as f64 / MIB as f64,
        a_status["punch"]["fallbacks"],
        b_status["punch"]["fallbacks"],
        a_status["punch"]["attempts"],
        b_status["punch"]["attempts"],
    );
    assert_eq!(len, TRANSFER_BYTES, "length at the sink");
    assert_eq!(hash, sent_hash, "checksum at the sink");
    assert!(direct, "A-B never returned to direct: {status}");
    assert!(
        a_status["punch"]["fallbacks"].as_u64() >= Some(1),
        "no fallback counted at A: {a_status}"
    );
    for member in &overlay.members {
        let left = left_events(member);
        assert!(left.is_empty(), "{}: node_left: {left:?}", member.host.name);
    }
}

/// Makes `router` map its LAN's flows to ports in `range` (`"20000-29999"`) from now on.
fn remap_ports(router: &Router, range: &str) {
    let rules = format!(
        "flush chain ip wendy_nat postrouting\n\
         add rule ip wendy_nat postrouting oifname \"eth0\" meta l4proto udp masquerade to :{range}\n\
         add rule ip wendy_nat postrouting oifname \"eth0\" masquerade\n"
    );
    router
        .nft(&rules)
        .unwrap_or_else(|e| panic!("nft refused the port range: {e}"));
}

/// The external ports `router` maps `host`'s node socket to now, from its conntrack table.
fn external_ports(router: &Router, host: &Host) -> Vec<u16> {
    let table = router.conntrack().unwrap();
    let src = format!("src={}", host.ipv4);
    let sport = format!("sport={PORT}");
    let mut ports: Vec<u16> = table
        .lines()
        .filter(|line| line.starts_with("udp"))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // The original tuple first, the reply tuple second: the reply's destination port
            // is the external port.
            let first_src = fields.iter().position(|f| f.starts_with("src="))?;
            if fields[first_src] != src || !fields.contains(&sport.as_str()) {
                return None;
            }
            fields
                .iter()
                .filter_map(|f| f.strip_prefix("dport="))
                .nth(1)?
                .parse()
                .ok()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[test]
fn a_nat_that_changes_the_external_port_during_traffic_loses_no_node_or_message() {
    netns_or_skip!("a_nat_that_changes_the_external_port_during_traffic_loses_no_node_or_message");
    let (bed, mut overlay, a, b) = direct_pair();
    let b_id = overlay.members[b].id;
    let router = &bed.lans[0].router;
    let a_host = bed.lans[0].hosts[0].clone();
    let before = external_ports(router, &a_host);
    // The node's own port, and now and then a second one: masquerade picks another port for a
    // flow that clashes with one already mapped.
    assert!(
        before.contains(&PORT),
        "A's mapping before the change: {before:?}"
    );
    stream(&mut overlay, a, b, "pre", 20, Duration::from_millis(50));
    let fallbacks_before = overlay.members[a].proc.status()["punch"]["fallbacks"].clone();
    // The router forgets its mappings and, for the flows that follow, picks ports from
    // another range: A's node is seen at a new port by every peer.
    remap_ports(router, "20000-29999");
    router.flush_conntrack().unwrap();
    let changed = Instant::now();
    // Sends every 50 ms, A's status read between them: when its link to B leaves the direct
    // path, and when it is direct again (at least 40 sends, at most 20 s).
    let (mut left_direct, mut direct_again) = (None, None);
    let mut posts = 0;
    while posts < 40 || (direct_again.is_none() && changed.elapsed() < Duration::from_secs(20)) {
        overlay.members[a]
            .proc
            .command(&format!("send {b_id} post-{posts}"));
        posts += 1;
        let status = overlay.members[a].proc.status();
        match (left_direct, is_direct(&status, b_id)) {
            (None, false) => left_direct = Some(changed.elapsed()),
            (Some(_), true) if direct_again.is_none() => direct_again = Some(changed.elapsed()),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Routed messages from every node, A's port change still settling.
    let (at_root, wrong, lost) = overlay.route_and_check(300, 16);
    stream(&mut overlay, a, b, "late", 20, Duration::from_millis(50));
    let (status, direct) = status_within(&mut overlay.members[a], Duration::from_secs(20), |s| {
        is_direct(s, b_id)
    });
    let back = changed.elapsed();
    let after = external_ports(router, &a_host);
    let got = received(
        &mut overlay.members[b],
        "",
        Instant::now() + Duration::from_secs(5),
    );
    let sends = got
        .iter()
        .filter(|p| p.starts_with("pre-") || p.starts_with("post-") || p.starts_with("late-"))
        .count();
    let sent = 20 + posts + 20;
    let b_status = overlay.members[b].proc.status();
    println!(
        "netns punch rebinding: A's external port {before:?} -> {after:?} during traffic; {sends} \
         of {sent} sends delivered; routes {at_root} at the root, {wrong} elsewhere, {lost} lost \
         of 300; A's link to B off the direct path at {:?} ms, direct again at {:?} ms after \
         the change (status read every 50 ms; direct at the end: {direct}, {} ms); fallbacks \
         at A {fallbacks_before} -> {}, at B {}",
        left_direct.map(|t| t.as_millis()),
        direct_again.map(|t| t.as_millis()),
        back.as_millis(),
        status["punch"]["fallbacks"],
        b_status["punch"]["fallbacks"]
    );
    // A flow whose packet crossed the router while its rules were swapped may keep its old
    // port; the node's flows that the flush reset are in the new range.
    assert!(
        after
            .iter()
            .any(|p| (20000..30000).contains(p) && !before.contains(p)),
        "the router did not move A to a new port in the new range: {before:?} -> {after:?}"
    );
    assert_eq!(sends, sent, "lost sends across the port change");
    assert_eq!(
        (at_root, wrong, lost),
        (300, 0, 0),
        "routes across the port change"
    );
    for member in &overlay.members {
        let left = left_events(member);
        assert!(left.is_empty(), "{}: node_left: {left:?}", member.host.name);
    }
    assert!(direct, "A-B never went direct again: {status}");
}
