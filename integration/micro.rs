//! Criterion micro-benchmarks of Wendy's hot paths: the route decision on a full table, wire
//! frame encode/decode (copying, and sharing the payload as a hop does), and leaf-set /
//! routing-table updates.
//!
//! `cargo bench --bench micro` (add `-- --quick` for a fast look). These print timings; no
//! test asserts them.

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wendy::id::{Key, NodeId};
use wendy::pastry::{
    Config, LeafSet, Message, OriginProof, Pastry, PeerInfo, RoutingTable, Time, Transmit,
};
use wendy::wire::{self, Body};

fn peer(rng: &mut ChaCha8Rng) -> PeerInfo {
    PeerInfo {
        id: NodeId::from_u128(rng.gen()),
        addr: SocketAddr::from(([127, 0, 0, 1], rng.gen_range(1024..65535))),
    }
}

/// An active node that has heard from `peers` random nodes and measured them all: its leaf set
/// and routing table are as full as such a network allows (rows 0-2 at 10,000 peers).
fn full_node(peers: usize) -> Pastry {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let me = peer(&mut rng);
    let mut node = Pastry::new(me, Config::default(), 1);
    let mut now = Time::from_millis(1);
    node.bootstrap_alone(now);
    for _ in 0..peers {
        now = Time::from_micros(now.as_micros() + 10);
        node.handle_message(now, peer(&mut rng), Message::Announce { leaf_set: vec![] });
        while let Some(transmit) = node.poll_transmit() {
            if let Transmit::Measure { peer } = transmit {
                let rtt = Duration::from_micros(rng.gen_range(100..100_000));
                node.handle_proximity(now, peer, rtt);
            }
        }
        while node.poll_event().is_some() {}
    }
    node
}

fn route_decision(c: &mut Criterion) {
    let node = full_node(10_000);
    let filled = node.routing_table().len();
    let leaves = node.leaf_set().len();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let keys: Vec<Key> = (0..1024).map(|_| Key::from_u128(rng.gen())).collect();
    let mut i = 0;
    c.bench_function(
        &format!("route decision: next_hop ({filled} table entries, {leaves} leaves)"),
        |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                node.next_hop(std::hint::black_box(keys[i]))
            })
        },
    );
}

fn route_message(payload: usize) -> Body {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    Body::Pastry(Message::Route {
        id: 42,
        key: Key::from_u128(rng.gen()),
        origin: peer(&mut rng),
        hops: 2,
        avoid: vec![],
        payload: vec![0x5a; payload].into(),
        // A signed message, as the node runtime sends them.
        proof: Some(Box::new(OriginProof {
            public_key: [7; 32],
            signature: [8; 64],
        })),
    })
}

fn frames(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let leaf_set: Vec<PeerInfo> = (0..16).map(|_| peer(&mut rng)).collect();
    let bodies = [
        ("route 200 B", route_message(200)),
        ("route 16 KiB", route_message(16 << 10)),
        (
            "heartbeat 16 leaves",
            Body::Pastry(Message::Heartbeat { leaf_set }),
        ),
    ];
    let mut group = c.benchmark_group("wire");
    for (name, body) in &bodies {
        let frame = wire::encode(body).expect("a valid body encodes");
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(format!("encode {name}"), |b| {
            b.iter(|| wire::encode(std::hint::black_box(body)))
        });
        group.bench_function(format!("decode {name}"), |b| {
            b.iter(|| wire::decode(std::hint::black_box(&frame), wire::DEFAULT_MAX_FRAME_SIZE))
        });
        // What a hop does: the payload stays in the frame it came in, and goes out as a
        // chunk of its own (when it is large enough to be worth one).
        group.bench_function(format!("decode shared {name}"), |b| {
            b.iter(|| {
                wire::decode_shared(std::hint::black_box(&frame), wire::DEFAULT_MAX_FRAME_SIZE)
            })
        });
        group.bench_function(format!("encode chunks {name}"), |b| {
            b.iter(|| wire::encode_chunks(std::hint::black_box(body), wire::DEFAULT_MAX_FRAME_SIZE))
        });
    }
    group.finish();
}

fn table_updates(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let me = NodeId::from_u128(rng.gen());
    let candidates: Vec<(PeerInfo, Duration)> = (0..4096)
        .map(|_| {
            (
                peer(&mut rng),
                Duration::from_micros(rng.gen_range(100..100_000)),
            )
        })
        .collect();
    let mut group = c.benchmark_group("tables");
    group.throughput(Throughput::Elements(candidates.len() as u64));
    group.bench_function("routing table: insert 4096 candidates", |b| {
        b.iter_batched(
            || RoutingTable::new(me),
            |mut table| {
                for (peer, rtt) in &candidates {
                    table.insert(*peer, Some(*rtt), 0.1);
                }
                table
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("leaf set (L=16): insert 4096 candidates", |b| {
        b.iter_batched(
            || LeafSet::new(me, 8),
            |mut leaf_set| {
                for (peer, rtt) in &candidates {
                    leaf_set.insert(*peer, Some(*rtt));
                }
                leaf_set
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let mut full = LeafSet::new(me, 8);
    for (peer, rtt) in &candidates {
        full.insert(*peer, Some(*rtt));
    }
    c.bench_function(
        "leaf set (L=16): remove a member and insert it again",
        |b| {
            let members = full.peers();
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % members.len();
                full.remove(members[i].id);
                full.insert(members[i], None)
            })
        },
    );
}

criterion_group!(benches, route_decision, frames, table_updates);
criterion_main!(benches);
