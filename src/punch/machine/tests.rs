//! The punch state machine driven step by step on a virtual clock: `now` only ever moves by
//! the service's tick (50 ms), and no test waits for real time.

use super::*;
use crate::relay::synthetic_addr;

/// This node's id: lower than every peer's, so it is the end that offers.
const ME: NodeId = NodeId::from_u128(1);
const TICK: Duration = Duration::from_millis(50);

fn peer(n: u128) -> NodeId {
    NodeId::from_u128(1_000 + n)
}

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, last], port))
}

/// A private node's machine with relayed links to `peers`.
fn private_with(me: NodeId, peers: &[NodeId], now: Instant) -> Machine {
    let mut machine = Machine::new(me, synthetic_addr(me));
    let relayed = peers.iter().map(|&p| (p, synthetic_addr(p))).collect();
    let mut out = Vec::new();
    machine.scan(now, &relayed, &mut out);
    assert!(out.is_empty(), "{out:?}");
    machine
}

fn offers(effects: &[Effect]) -> Vec<NodeId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Offer { peer, .. } => Some(*peer),
            _ => None,
        })
        .collect()
}

/// The pings among `effects`: (destination, token).
fn pings(effects: &[Effect]) -> Vec<(SocketAddr, u64)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Probe { to, probe } if probe.kind == Kind::Ping => Some((*to, probe.token)),
            _ => None,
        })
        .collect()
}

fn ready(from: NodeId, token: u64, addrs: Vec<SocketAddr>) -> PunchMessage {
    PunchMessage::Ready {
        token,
        advertised: synthetic_addr(from),
        addrs,
    }
}

/// Ticks from `from` (exclusive) to `to` (inclusive); the effects with their times.
fn run(machine: &mut Machine, from: Instant, to: Instant) -> Vec<(Instant, Effect)> {
    let mut got = Vec::new();
    let mut now = from;
    while now < to {
        now += TICK;
        let mut out = Vec::new();
        machine.tick(now, &mut out);
        got.extend(out.into_iter().map(|e| (now, e)));
    }
    got
}

/// A link to `p` punched to `direct` at `t0` + 250 ms; the machine, the peer's token and the
/// time of the pong.
fn punched(p: NodeId, direct: SocketAddr, t0: Instant) -> (Machine, u64, Instant) {
    let mut machine = private_with(ME, &[p], t0);
    let mut out = Vec::new();
    machine.tick(t0, &mut out);
    assert_eq!(offers(&out), vec![p]);
    let token = 77;
    let mut out = Vec::new();
    machine.answered(p, Ok(ready(p, token, vec![direct])), t0, &mut out);
    let at = t0 + Duration::from_millis(250);
    let mut out = Vec::new();
    machine.probe(direct, pong(token), at, &mut out);
    assert_eq!(
        out,
        vec![Effect::SendVia {
            synthetic: synthetic_addr(p),
            direct
        }]
    );
    (machine, token, at)
}

fn pong(token: u64) -> Probe {
    Probe {
        kind: Kind::Pong,
        token,
        tx: 9,
    }
}

#[test]
fn failed_offers_are_retried_after_doubling_pauses_until_the_machine_gives_up() {
    let t0 = Instant::now();
    let p = peer(1);
    let mut machine = private_with(ME, &[p], t0);
    let mut out = Vec::new();
    machine.tick(t0, &mut out);
    assert_eq!(offers(&out), vec![p], "the first offer goes at once");
    let mut pauses = Vec::new();
    let mut now = t0;
    loop {
        let mut out = Vec::new();
        machine.answered(p, Err("no answer".to_owned()), now, &mut out);
        assert!(out.is_empty());
        let next = run(&mut machine, now, now + Duration::from_secs(60));
        let Some((at, _)) = next.iter().find(|(_, e)| matches!(e, Effect::Offer { .. })) else {
            break;
        };
        pauses.push(at.duration_since(now).as_millis());
        now = *at;
    }
    // 1 s doubling up to 8 s; the 12th failure is the last.
    assert_eq!(
        pauses,
        vec![1000, 2000, 4000, 8000, 8000, 8000, 8000, 8000, 8000, 8000, 8000]
    );
    assert_eq!(pauses.len() + 1, MAX_ATTEMPTS as usize);
    let (status, _) = machine.status();
    assert_eq!(status.punching, 0);
}

#[test]
fn an_attempt_pings_every_candidate_every_100_ms_and_fails_after_3_s() {
    let t0 = Instant::now();
    let p = peer(1);
    let (a, b) = (addr(101, 7000), addr(101, 7001));
    let mut machine = private_with(ME, &[p], t0);
    machine.tick(t0, &mut Vec::new());
    let mut out = Vec::new();
    machine.answered(p, Ok(ready(p, 5, vec![a, b])), t0, &mut out);
    assert_eq!(
        pings(&out),
        vec![(a, 5), (b, 5)],
        "the first pings go at once"
    );
    let (status, _) = machine.status();
    assert_eq!((status.attempts, status.punching), (1, 1));
    let later = run(&mut machine, t0, t0 + Duration::from_secs(3));
    let later_pings: Vec<_> = later
        .iter()
        .filter_map(|(at, e)| pings(std::slice::from_ref(e)).first().map(|p| (*at, *p)))
        .collect();
    // One round per 100 ms until the attempt runs out: 30 pings per candidate in all.
    assert_eq!(later_pings.len(), 2 * 29);
    for (i, pair) in later_pings.chunks(2).enumerate() {
        let due = t0 + PROBE_EVERY * (u32::try_from(i).unwrap() + 1);
        assert_eq!(pair[0], (due, (a, 5)));
        assert_eq!(pair[1], (due, (b, 5)));
    }
    let (status, _) = machine.status();
    assert_eq!((status.failures, status.punching), (1, 0));
    // The next attempt follows the first pause.
    let next = run(
        &mut machine,
        t0 + PROBE_FOR,
        t0 + PROBE_FOR + Duration::from_secs(2),
    );
    let offered: Vec<_> = next
        .iter()
        .filter(|(_, e)| matches!(e, Effect::Offer { .. }))
        .map(|(at, _)| at.duration_since(t0).as_millis())
        .collect();
    assert_eq!(offered, vec![4000]);
}

#[test]
fn a_direct_path_stays_while_it_answers_and_falls_back_after_700_ms_of_silence() {
    let t0 = Instant::now();
    let p = peer(1);
    let direct = addr(101, 7000);
    let (mut machine, token, at) = punched(p, direct, t0);
    let (status, directs) = machine.status();
    assert_eq!(
        (
            status.direct_links,
            status.successes,
            status.last_time_to_direct_ms
        ),
        (1, 1, Some(250))
    );
    assert!(directs.contains(&p));
    // 10 s of health pings, each answered at once: no fallback.
    let mut now = at;
    let mut last_pong = at;
    let mut health = 0;
    while now < at + Duration::from_secs(10) {
        now += TICK;
        let mut out = Vec::new();
        machine.tick(now, &mut out);
        assert!(!out.iter().any(|e| matches!(e, Effect::RelayAgain { .. })));
        for (to, sent) in pings(&out) {
            assert_eq!((to, sent), (direct, token));
            health += 1;
            machine.probe(to, pong(token), now, &mut Vec::new());
            last_pong = now;
        }
    }
    assert_eq!(health, 50, "one health ping per 200 ms");
    // Then silence: back to the relay 700 ms after the last pong.
    let silent = run(&mut machine, now, now + Duration::from_secs(2));
    let (fell_at, _) = silent
        .iter()
        .find(|(_, e)| {
            *e == Effect::RelayAgain {
                synthetic: synthetic_addr(p),
            }
        })
        .expect("no fallback");
    assert_eq!(fell_at.duration_since(last_pong), DEAD_AFTER);
    assert!(silent
        .iter()
        .any(|(t, e)| t == fell_at && *e == Effect::Reobserve));
    let (status, directs) = machine.status();
    assert_eq!((status.fallbacks, status.direct_links), (1, 0));
    assert!(directs.is_empty());
    // Punching resumes after the first pause.
    let (offer_at, _) = silent
        .iter()
        .find(|(_, e)| matches!(e, Effect::Offer { .. }))
        .expect("no new offer");
    assert_eq!(offer_at.duration_since(*fell_at), FIRST_BACKOFF);
}

#[test]
fn a_ping_from_a_new_source_moves_the_direct_path_once_its_pong_proves_it() {
    let t0 = Instant::now();
    let p = peer(1);
    let (old, new) = (addr(101, 7000), addr(101, 24_379));
    let (mut machine, token, at) = punched(p, old, t0);
    let synthetic = synthetic_addr(p);
    // The peer's NAT rebound: its ping comes from a new port, carrying this node's token.
    let my_token = machine.peers[&p].token;
    let mut out = Vec::new();
    machine.probe(
        new,
        Probe {
            kind: Kind::Ping,
            token: my_token,
            tx: 3,
        },
        at,
        &mut out,
    );
    assert_eq!(
        out[0],
        Effect::ReceiveFrom {
            direct: new,
            synthetic
        },
        "the source is the peer's before the pong leaves"
    );
    assert_eq!(
        out[1],
        Effect::Probe {
            to: new,
            probe: Probe {
                kind: Kind::Pong,
                token: my_token,
                tx: 3
            }
        }
    );
    assert_eq!(
        pings(&out[2..]),
        vec![(new, token)],
        "the new source is tested"
    );
    // Its pong moves the path; no new success is counted (the link was direct).
    let mut out = Vec::new();
    machine.probe(new, pong(token), at + TICK, &mut out);
    assert_eq!(
        out,
        vec![Effect::SendVia {
            synthetic,
            direct: new
        }]
    );
    let health = run(&mut machine, at + TICK, at + Duration::from_millis(500));
    let health: Vec<_> = health
        .iter()
        .flat_map(|(_, e)| pings(std::slice::from_ref(e)))
        .collect();
    assert!(!health.is_empty() && health.iter().all(|(to, _)| *to == new));
    let (status, _) = machine.status();
    assert_eq!((status.successes, status.direct_links), (1, 1));
}

#[test]
fn offers_from_one_peer_closer_than_900_ms_are_refused() {
    let t0 = Instant::now();
    // The peer's id is lower: it offers, this node answers.
    let p = NodeId::from_u128(0);
    let me = peer(1);
    let mut machine = private_with(me, &[p], t0);
    let offer = PunchMessage::Offer {
        token: 5,
        advertised: synthetic_addr(p),
        addrs: vec![addr(100, 7000)],
    };
    let from = synthetic_addr(p);
    let mut out = Vec::new();
    let mine = machine.offered(p, from, &offer, t0, &mut out).unwrap();
    assert_eq!(pings(&out), vec![(addr(100, 7000), 5)]);
    let too_soon = machine.offered(p, from, &offer, t0 + Duration::from_millis(899), &mut out);
    assert_eq!(
        too_soon,
        Err(Refusal {
            code: ErrorCode::Refused,
            why: "offers too frequent".to_owned()
        })
    );
    assert_eq!(
        machine.offered(p, from, &offer, t0 + MIN_OFFER_GAP, &mut Vec::new()),
        Ok(mine)
    );
    // The end with the higher id never offers itself.
    let later = run(&mut machine, t0, t0 + Duration::from_secs(30));
    assert!(offers(&later.into_iter().map(|(_, e)| e).collect::<Vec<_>>()).is_empty());
}

#[test]
fn offers_that_cannot_be_punched_are_refused_with_a_reason() {
    let t0 = Instant::now();
    let p = NodeId::from_u128(0);
    let stranger = NodeId::from_u128(7);
    let mut machine = private_with(peer(1), &[p], t0);
    let offer = |addrs| PunchMessage::Offer {
        token: 5,
        advertised: synthetic_addr(p),
        addrs,
    };
    let code = |r: Result<u64, Refusal>| r.unwrap_err().code;
    let mut out = Vec::new();
    let direct_link = machine.offered(p, addr(100, 7000), &offer(vec![]), t0, &mut out);
    assert_eq!(code(direct_link), ErrorCode::Refused);
    let unknown = machine.offered(
        stranger,
        synthetic_addr(stranger),
        &offer(vec![]),
        t0,
        &mut out,
    );
    assert_eq!(code(unknown), ErrorCode::Refused);
    let too_many = offer(vec![addr(100, 7000); MAX_ADDRS + 1]);
    let too_many = machine.offered(p, synthetic_addr(p), &too_many, t0, &mut out);
    assert_eq!(code(too_many), ErrorCode::BadRequest);
    let answer = machine.offered(p, synthetic_addr(p), &ready(p, 5, vec![]), t0, &mut out);
    assert_eq!(code(answer), ErrorCode::BadRequest);
    assert!(out.is_empty(), "a refused offer starts nothing: {out:?}");
}

#[test]
fn pings_with_an_unknown_token_get_no_answer() {
    let t0 = Instant::now();
    let p = peer(1);
    let mut machine = private_with(ME, &[p], t0);
    let mut out = Vec::new();
    let stray = Probe {
        kind: Kind::Ping,
        token: machine.peers[&p].token.wrapping_add(1),
        tx: 1,
    };
    machine.probe(addr(50, 1234), stray, t0, &mut out);
    machine.probe(addr(50, 1234), pong(12345), t0, &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn at_most_max_punching_links_punch_at_once() {
    let t0 = Instant::now();
    let peers: Vec<NodeId> = (0..20).map(peer).collect();
    let mut machine = private_with(ME, &peers, t0);
    let mut out = Vec::new();
    machine.tick(t0, &mut out);
    let first = offers(&out);
    assert_eq!(first.len(), MAX_PUNCHING);
    assert!(run(&mut machine, t0, t0 + Duration::from_millis(500))
        .iter()
        .all(|(_, e)| !matches!(e, Effect::Offer { .. })));
    // One attempt ends: one waiting link takes its place.
    machine.answered(first[0], Err("no answer".to_owned()), t0, &mut Vec::new());
    let mut out = Vec::new();
    machine.tick(t0 + Duration::from_millis(550), &mut out);
    let next = offers(&out);
    assert_eq!(next.len(), 1);
    assert!(!first.contains(&next[0]));
}

#[test]
fn a_public_peer_is_dialled_and_never_probed() {
    let t0 = Instant::now();
    let p = peer(1);
    let public = addr(10, 7000);
    let mut machine = private_with(ME, &[p], t0);
    machine.tick(t0, &mut Vec::new());
    let mut out = Vec::new();
    let answer = PunchMessage::Ready {
        token: 5,
        advertised: public,
        addrs: vec![public],
    };
    machine.answered(p, Ok(answer), t0, &mut out);
    assert_eq!(
        out,
        vec![Effect::Dial {
            peer: p,
            addr: public
        }]
    );
    let later = run(&mut machine, t0, t0 + Duration::from_secs(30));
    assert!(later.is_empty(), "{later:?}");
    let (status, _) = machine.status();
    assert_eq!((status.dialled_public, status.attempts), (1, 0));
}

#[test]
fn a_link_no_longer_relayed_forgets_its_routes() {
    let t0 = Instant::now();
    let p = peer(1);
    let (mut machine, _, at) = punched(p, addr(101, 7000), t0);
    let mut out = Vec::new();
    machine.scan(at, &HashMap::new(), &mut out);
    assert_eq!(
        out,
        vec![Effect::Forget {
            synthetic: synthetic_addr(p)
        }]
    );
    assert!(!machine.knows(p));
    let (status, directs) = machine.status();
    assert_eq!(status.direct_links, 0);
    assert!(directs.is_empty());
}
