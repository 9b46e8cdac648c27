//! The service mesh across two NATs on the testbed: a TCP echo service on a host behind the
//! endpoint-independent NAT, exposed by the `wendy node` there, reached through `--forward` on
//! a node behind the symmetric NAT. Neither can dial the other, so the tunnel runs over a
//! relayed link (or whatever path the nodes find), end to end encrypted.

use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

use super::inside::{echo_server, echo_through};
use super::overlay::Overlay;
use super::testbed::{Nat, Spec, Testbed};
use crate::netns_or_skip;

/// The echo service's port on the provider's host.
const SERVICE_PORT: u16 = 5000;
/// The consumer's forwarded port (on its own loopback).
const FORWARD_PORT: u16 = 9000;
const TRANSFERS: usize = 20;
const TRANSFER_BYTES: usize = 1 << 20;

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

#[test]
fn a_service_behind_one_nat_is_reached_from_behind_another_intact() {
    netns_or_skip!("a_service_behind_one_nat_is_reached_from_behind_another_intact");
    let bed = Testbed::new(&Spec {
        public_hosts: 2,
        lans: vec![(Nat::EndpointIndependent, 1), (Nat::Symmetric, 1)],
    })
    .unwrap();
    let provider_host = bed.lans[0].hosts[0].clone();
    let consumer_host = bed.lans[1].hosts[0].clone();
    let service = echo_server(&provider_host, SERVICE_PORT);
    let mut overlay = Overlay::start_with(&bed, Duration::from_secs(30), |host| {
        if host.name == provider_host.name {
            vec![
                "--expose".to_owned(),
                format!("echo=127.0.0.1:{SERVICE_PORT}"),
            ]
        } else if host.name == consumer_host.name {
            vec![
                "--forward".to_owned(),
                format!("127.0.0.1:{FORWARD_PORT}=echo"),
            ]
        } else {
            Vec::new()
        }
    });
    overlay.all_joined_by(Instant::now() + Duration::from_secs(30));
    let (provider, consumer) = overlay.members.split_at_mut(3);
    let provider = &mut provider[2];
    let consumer = &mut consumer[0];
    let exposed = provider.proc.saw_event("exposed", |_| true);
    assert_eq!(exposed["name"], "echo");
    let forwarding = consumer.proc.saw_event("forwarding", |_| true);
    assert_eq!(forwarding["name"], "echo");
    let local = format!("127.0.0.1:{FORWARD_PORT}").parse().unwrap();

    // The provider's record reaches its root after the join settles: until then a connection
    // through the forward is closed without data. Time how long the first echo takes to work.
    let first_started = Instant::now();
    let deadline = first_started + Duration::from_secs(30);
    loop {
        let probe = b"is the echo there?".to_vec();
        match echo_through(&consumer_host, local, probe.clone()) {
            Ok(echoed) if echoed == probe => break,
            outcome => assert!(
                Instant::now() < deadline,
                "no echo through the forward within 30 s (last: {outcome:?}; service {service})\n{}\n{}",
                consumer.proc.context(),
                provider.proc.context()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let first_echo = first_started.elapsed();

    let started = Instant::now();
    let transfers: Vec<_> = (0..TRANSFERS)
        .map(|i| {
            let host = consumer_host.clone();
            std::thread::spawn(move || {
                let data = random_bytes(i as u64, TRANSFER_BYTES);
                let sent = blake3::hash(&data);
                let echoed = echo_through(&host, local, data);
                (sent, echoed)
            })
        })
        .collect();
    let results: Vec<_> = transfers.into_iter().map(|t| t.join().unwrap()).collect();
    let failed: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, (_, echoed))| echoed.as_ref().err().map(|e| format!("{i}: {e}")))
        .collect();
    if !failed.is_empty() {
        let status = consumer.proc.status();
        panic!(
            "transfers failed: {failed:?}\nconsumer's forward: {}\nprovider: {}\n{}",
            status["forwarded"],
            provider.proc.status()["exposed"],
            consumer.proc.context()
        );
    }
    for (i, (sent, echoed)) in results.into_iter().enumerate() {
        let echoed = echoed.unwrap();
        assert_eq!(echoed.len(), TRANSFER_BYTES, "transfer {i}: length");
        assert_eq!(blake3::hash(&echoed), sent, "transfer {i}: checksum");
    }
    let elapsed = started.elapsed();

    let status = consumer.proc.status();
    assert_eq!(status["forwarded"][0]["failures"], 0, "{status}");
    let provider_id = provider.id.to_string();
    let path = status["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == provider_id.as_str())
        .map(|c| c["path"].clone())
        .unwrap_or_default();
    let exposed = provider.proc.status();
    assert!(
        exposed["exposed"][0]["tunnels"].as_u64().unwrap() > TRANSFERS as u64,
        "{exposed}"
    );
    println!(
        "netns mesh: first echo {} ms after the joins; {TRANSFERS} x 1 MiB echoed intact in {} ms \
         ({:.1} MiB/s each way), the consumer's link to the provider: {path}",
        first_echo.as_millis(),
        elapsed.as_millis(),
        (TRANSFERS * TRANSFER_BYTES) as f64 / elapsed.as_secs_f64() / f64::from(1 << 20)
    );
}
