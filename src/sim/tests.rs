//! Event-loop tests against a stand-in protocol with global knowledge (one-hop routing).
//!
//! The stand-in routes every lookup straight to the key's root among the nodes it has seen
//! join (including ones that later died), so the loop's bookkeeping can be checked exactly:
//! one hop, stretch 1, lost lookups exactly when the root died, probe traffic at a known rate.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::net::{addr_of, index_of};
use super::*;
use crate::id::{Key, NodeId};
use crate::pastry::{Event, Message, PeerInfo};

type Members = Rc<RefCell<BTreeMap<u128, PeerInfo>>>;

const PROBE_PERIOD_US: u64 = 10_000_000;

struct StandIn {
    me: PeerInfo,
    members: Members,
    active: bool,
    next_id: u64,
    next_probe: Option<u64>,
    out: Vec<Effect>,
}

impl StandIn {
    fn activate(&mut self, now: u64) {
        self.active = true;
        self.members
            .borrow_mut()
            .insert(self.me.id.as_u128(), self.me);
        self.next_probe = Some(now + PROBE_PERIOD_US);
        self.out.push(Effect::Event(Event::Joined));
    }

    fn successor(&self) -> Option<PeerInfo> {
        let members = self.members.borrow();
        let me = self.me.id.as_u128();
        members
            .range(me + 1..)
            .chain(members.range(..me))
            .next()
            .map(|(_, p)| *p)
    }
}

impl SimNode for StandIn {
    type Config = Members;

    fn protocol_config(_: &ProtocolOptions) -> Members {
        Members::default()
    }

    fn create(me: PeerInfo, members: &Members, _seed: u64) -> Self {
        Self {
            me,
            members: members.clone(),
            active: false,
            next_id: 0,
            next_probe: None,
            out: Vec::new(),
        }
    }

    fn bootstrap_alone(&mut self, now: u64) {
        self.activate(now);
    }

    fn join(&mut self, _now: u64, via: PeerInfo) {
        self.out.push(Effect::Send {
            to: via,
            msg: Message::Join {
                id: 0,
                joiner: self.me,
                next_row: 0,
                hops: 0,
            },
        });
    }

    fn route(&mut self, _now: u64, key: Key, payload: Vec<u8>) -> u64 {
        self.next_id += 1;
        let root = {
            let members = self.members.borrow();
            let id = key
                .closest(members.keys().map(|&id| NodeId::from_u128(id)))
                .expect("at least this node");
            members[&id.as_u128()]
        };
        if root == self.me {
            self.out.push(Effect::Deliver {
                key,
                origin: self.me.id,
                id: self.next_id,
                hops: 0,
                payload: payload.into(),
            });
        } else {
            self.out.push(Effect::Send {
                to: root,
                msg: Message::Route {
                    id: self.next_id,
                    key,
                    origin: self.me,
                    hops: 1,
                    avoid: Vec::new(),
                    payload: payload.into(),
                    proof: None,
                },
            });
        }
        self.next_id
    }

    fn handle_message(&mut self, now: u64, from: PeerInfo, msg: Message) {
        match msg {
            Message::Join { joiner, .. } => {
                assert_eq!(joiner, from, "the simulator passes the real sender");
                self.out.push(Effect::Send {
                    to: joiner,
                    msg: Message::JoinState {
                        rows: Vec::new(),
                        neighbourhood: Vec::new(),
                        leaf_set: Some(Vec::new()),
                    },
                });
            }
            Message::JoinState { .. } => self.activate(now),
            Message::Route {
                id,
                key,
                origin,
                hops,
                payload,
                ..
            } => {
                // Moves this node's deadline later, so the driver's queued timer event goes
                // stale and must be re-armed rather than fired early.
                if let Some(at) = self.next_probe.as_mut() {
                    *at += 1_000;
                }
                self.out.push(Effect::Send {
                    to: from,
                    msg: Message::RouteAck {
                        origin: origin.id,
                        id,
                        done: true,
                    },
                });
                self.out.push(Effect::Deliver {
                    key,
                    origin: origin.id,
                    id,
                    hops,
                    payload,
                });
            }
            Message::Probe { nonce, .. } => self.out.push(Effect::Send {
                to: from,
                msg: Message::ProbeReply {
                    nonce,
                    active: true,
                    leaf_set: Vec::new(),
                    failed: vec![],
                },
            }),
            _ => {}
        }
    }

    fn handle_proximity(&mut self, _: u64, _: PeerInfo, _: u64) {}

    fn handle_link_down(&mut self, _: u64, _: NodeId) {}

    fn handle_timeout(&mut self, now: u64) {
        // The driver must never call this before the deadline it was given.
        assert!(
            self.next_probe.is_some_and(|at| now >= at),
            "handle_timeout at {now} before the deadline {:?}",
            self.next_probe
        );
        if let Some(at) = self.next_probe {
            if now >= at {
                self.next_probe = Some(at + PROBE_PERIOD_US);
                if let Some(to) = self.successor() {
                    self.out.push(Effect::Send {
                        to,
                        msg: Message::Probe {
                            nonce: now,
                            active: true,
                            failed: vec![],
                            leaf_set: Vec::new(),
                        },
                    });
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<u64> {
        self.next_probe
    }

    fn poll_effect(&mut self) -> Option<Effect> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.remove(0))
        }
    }

    fn is_active(&self) -> bool {
        self.active
    }

    fn table_peers(&self) -> Vec<PeerInfo> {
        Vec::new()
    }

    fn leaf_peers(&self) -> Vec<PeerInfo> {
        // Its successor only: in a failure run, some of these point at dead nodes.
        self.successor().into_iter().collect()
    }
}

fn run(config: SimConfig) -> Report {
    let members = StandIn::protocol_config(&config.protocol);
    Simulation::<StandIn>::with_protocol(config, members).run(&mut |_| {})
}

fn steady(nodes: usize, lookups: usize, seed: u64) -> SimConfig {
    SimConfig {
        nodes,
        lookups,
        seed,
        ..SimConfig::default()
    }
}

#[test]
fn fake_addresses_are_unique_and_invertible() {
    for index in [0, 1, 255, 256, 65_535, 1 << 24, (1 << 24) + 7, 200_000_000] {
        assert_eq!(index_of(addr_of(index)), Some(index), "{index}");
    }
    assert_ne!(addr_of(1), addr_of(1 << 24));
    assert_eq!(index_of("127.0.0.1:7000".parse().unwrap()), None);
    assert_eq!(index_of("10.0.0.1:80".parse().unwrap()), None);
}

#[test]
fn steady_run_checks_every_delivery_against_the_oracle() {
    let report = run(steady(200, 1_000, 3));
    assert_eq!(report.nodes, 200);
    assert_eq!(report.lookups, 1_000);
    assert_eq!(report.delivered_correct, 1_000);
    assert_eq!(
        (report.lost, report.misdelivered, report.duplicates),
        (0, 0, 0)
    );
    // One hop to the root, zero when the origin is the root (about 1 in 200).
    assert_eq!(report.max_hops, 1);
    assert_eq!(report.hops_histogram.iter().sum::<u64>(), 1_000);
    assert!(
        report.hops_histogram[1] > 980,
        "{:?}",
        report.hops_histogram
    );
    // A one-hop route takes exactly the direct delay.
    assert!(
        (report.stretch_mean - 1.0).abs() < 1e-6,
        "{}",
        report.stretch_mean
    );
    // Each join is one Join and one JoinState.
    assert!((report.join_msgs_per_node - 2.0).abs() < 1e-9);
    // Every node probes once per 10 s and gets a reply: 0.2 msgs/s (the nodes' probes are
    // nearly synchronous, so a round at the window's edge may fall either side).
    let rate = report.control_msgs_per_node_per_s;
    assert!((rate - 0.2).abs() < 0.04, "{rate}");
    assert!(report.control_bytes_per_node_per_s > rate * 60.0);
    assert!(report.ack_msgs_per_node_per_s > 0.0);
    assert_eq!(report.msgs_by_kind["join"].msgs, 199);
    assert_eq!(
        report.msgs_by_kind["route_ack"].msgs,
        report.hops_histogram[1]
    );
    assert!(report.wall_seconds > 0.0 && report.peak_rss_mib > 0.0);
    assert!(report.to_string().contains("lookups 1000: correct 1000"));
}

#[test]
fn same_seed_same_report_other_seed_other_report() {
    let a = run(steady(150, 300, 11)).deterministic_part();
    let b = run(steady(150, 300, 11)).deterministic_part();
    let c = run(steady(150, 300, 12)).deterministic_part();
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    assert_ne!(a, c);
}

#[test]
fn failure_run_counts_lookups_to_dead_roots_as_lost() {
    let config = SimConfig {
        scenario: Scenario::Failure { fraction: 0.2 },
        repair_window_s: 30.0,
        ..steady(300, 900, 5)
    };
    let report = run(config);
    let failure = report.failure.expect("failure section");
    assert_eq!(failure.failed, 60);
    // The stand-in never learns of failures: about 20% of later lookups go to dead roots.
    assert_eq!(failure.lost_by_phase[0], 0);
    for phase in 1..3 {
        let lost = failure.lost_by_phase[phase];
        assert!((20..120).contains(&lost), "phase {phase}: {lost}");
    }
    assert_eq!(report.lost, failure.lost_by_phase.iter().sum::<u64>());
    assert_eq!(report.delivered_correct + report.lost, 900);
    // It also never repairs, so no repair traffic beyond the baseline (probes to dead nodes
    // still count as sent).
    let repair = report.repair_msgs_per_failed_node.expect("repair figure");
    assert!(repair.abs() < 5.0, "{repair}");
    assert!(failure.dead_leaf_entries_after_repair > 0);
    assert!(report.dead_leaf_entries > 0);
}

#[test]
fn churn_run_keeps_the_population_and_replaces_nodes() {
    let config = SimConfig {
        scenario: Scenario::Churn {
            median_session_s: 60.0,
            duration_s: 600.0,
        },
        ..steady(100, 500, 9)
    };
    let report = run(config);
    let churn = report.churn.expect("churn section");
    // About 100 * 600 / (60 / ln 2) = 693 of each.
    assert!((450..950).contains(&churn.arrivals), "{}", churn.arrivals);
    assert!(
        (450..950).contains(&churn.departures),
        "{}",
        churn.departures
    );
    assert!(
        (70.0..130.0).contains(&churn.mean_live_nodes),
        "{}",
        churn.mean_live_nodes
    );
    assert_eq!(report.lookups, 500);
    assert!(churn.correct_fraction > 0.0 && churn.correct_fraction <= 1.0);
}
