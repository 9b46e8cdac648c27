//! Protocol tests: whole overlays in the in-memory harness, and route decisions on built state.

use std::collections::HashSet;
use std::time::Duration;

use proptest::prelude::*;

use crate::id::{Key, NodeId};

use super::harness::{hop_bound, Net};
use super::{
    Config, Event, ForwardVerdict, Message, MessageKind, Pastry, PeerInfo, Side, Stats, Time,
    Transmit,
};

mod custody;
mod hedge;
mod hints;
mod hostile;
mod join;
mod liveness;
mod maintenance;
mod membership;
mod origin;
mod route_cache;
mod routing;
mod stats;

fn peer(n: u128) -> PeerInfo {
    PeerInfo {
        id: NodeId::from_u128(n),
        addr: "10.0.0.1:4000".parse().unwrap(),
    }
}

/// What a node handed out since the last drain, from both of its queues.
#[derive(Debug)]
struct Drained {
    transmits: Vec<Transmit>,
    events: Vec<Event>,
}

fn drain(node: &mut Pastry) -> Drained {
    Drained {
        transmits: std::iter::from_fn(|| node.poll_transmit()).collect(),
        events: std::iter::from_fn(|| node.poll_event()).collect(),
    }
}

/// Routes `count` random lookups from random nodes; asserts each is delivered exactly once, at
/// the oracle's root, within the hop bound. Returns the hop counts.
fn check_lookups(net: &mut Net, count: usize) -> Vec<u8> {
    let bound = hop_bound(net.live_ids().len());
    let start = net.delivered.len();
    let mut sent = Vec::new();
    for _ in 0..count {
        let from = net.random_live();
        let key = net.random_key();
        let id = net.route(from, key, b"lookup".to_vec());
        sent.push((net.nodes[from].id(), id, key));
    }
    net.run_for(Duration::from_secs(30));
    let delivered = &net.delivered[start..];
    let mut hops = Vec::new();
    for (origin, id, key) in sent {
        let got: Vec<_> = delivered
            .iter()
            .filter(|d| d.origin == origin && d.id == id)
            .collect();
        assert_eq!(
            got.len(),
            1,
            "lookup for {key} delivered {} times",
            got.len()
        );
        let root = net.oracle_root(key);
        assert_eq!(
            net.nodes[got[0].at].id(),
            root,
            "lookup for {key} misdelivered"
        );
        assert!(
            got[0].hops <= bound,
            "lookup for {key} took {} hops (bound {bound})",
            got[0].hops
        );
        hops.push(got[0].hops);
    }
    hops
}

fn mean(hops: &[u8]) -> f64 {
    hops.iter().map(|&h| f64::from(h)).sum::<f64>() / hops.len() as f64
}

/// A node with proximity off whose state we fill by hand.
fn lone(id: u128) -> Pastry {
    let config = Config {
        proximity: false,
        ..Config::default()
    };
    let mut node = Pastry::new(peer(id), config, 1);
    node.bootstrap_alone(Time::ZERO);
    drain(&mut node);
    node
}

/// Teaches `node` about `p` as a live active peer (a probe from it); returns what `node` did.
fn meet(node: &mut Pastry, p: PeerInfo) -> Drained {
    node.handle_message(
        Time::ZERO,
        p,
        Message::Probe {
            nonce: 1,
            active: true,
            leaf_set: vec![],
            failed: vec![],
        },
    );
    drain(node)
}

fn hex(s: &str) -> u128 {
    s.parse::<NodeId>().unwrap().as_u128()
}
