//! Dial amplification: one message naming 2,000 made-up peers at addresses the attacker holds
//! (a routing-table row, a heartbeat's leaf set, a probe's leaf set) may cost the node only a
//! bounded number of dials and bytes towards those addresses, and a bounded amount of memory;
//! the members' own routes keep being delivered.

use std::time::{Duration, Instant};

use wendy::pastry::{Message, PeerInfo};

use super::{assert_within_bounds, measuring, runtime};
use crate::common::hostile::{
    join_all, made_up_peers, mib, scaled, send_pastry, Attacker, DialSinks, ProcCluster, RssPeak,
};

const MADE_UP: usize = 2_000;
const MAX_DIALS: usize = 32;
const MAX_BYTES: u64 = 100_000;
const MAX_RSS_GROWTH_KIB: i64 = 5 * 1024;

#[test]
fn a_peer_list_of_two_thousand_made_up_ids_costs_a_bounded_number_of_dials() {
    let _serial = measuring();
    let rt = runtime();
    let mut cluster = ProcCluster::start(3);
    let window = Duration::from_secs(scaled(6, 10));

    // One message of each kind to its own node, each naming made-up peers at its own sinks,
    // so that the three are counted apart (by sink and by the node's source address).
    let sinks: Vec<DialSinks> = (0..3).map(|_| DialSinks::bind(4)).collect();
    let messages = vec![
        (
            "row_reply",
            Message::RowReply {
                row: 0,
                entries: made_up_peers(MADE_UP, &sinks[0].addrs),
            },
        ),
        (
            "heartbeat",
            Message::Heartbeat {
                leaf_set: made_up_peers(MADE_UP, &sinks[1].addrs),
            },
        ),
        (
            "probe",
            Message::Probe {
                nonce: 1,
                active: true,
                leaf_set: made_up_peers(MADE_UP, &sinks[2].addrs),
                failed: vec![],
            },
        ),
    ];
    let frame_bytes: Vec<usize> = messages
        .iter()
        .map(|(_, m)| {
            wendy::wire::encode(&wendy::wire::Body::Pastry(m.clone()))
                .unwrap()
                .len()
        })
        .collect();

    let attacker = rt.block_on(async { Attacker::new() });
    let links = rt.block_on(async {
        let mut links = Vec::new();
        for member in &cluster.members {
            links.push(attacker.connect(member).await);
        }
        links
    });
    let before: Vec<u64> = cluster.members.iter().map(|m| m.rss_kib()).collect();
    let peaks: Vec<RssPeak> = cluster
        .members
        .iter()
        .map(|m| RssPeak::start(m.pid()))
        .collect();
    rt.block_on(async {
        let sends = links.iter().zip(&messages).map(|(link, (_, message))| {
            let (link, message) = (link.clone(), message.clone());
            async move { send_pastry(&link, message).await }
        });
        join_all(sends).await;
    });

    let (sent, delivered) = route_meanwhile(&mut cluster, window);
    let mut broken = Vec::new();
    for (i, peak) in peaks.into_iter().enumerate() {
        let member = &cluster.members[i];
        let (kind, _) = &messages[i];
        let arrivals = sinks[i].from(member.addr);
        let peak_growth = peak.finish() as i64 - before[i] as i64;
        let end_growth = member.rss_kib() as i64 - before[i] as i64;
        println!(
            "hostile dials: kind={kind} ids={MADE_UP} frame_bytes={} window_s={} dials={} \
             datagrams={} bytes={} rss_before_mib={:.1} rss_peak_growth_mib={:.1} \
             rss_end_growth_mib={:.1}",
            frame_bytes[i],
            window.as_secs(),
            arrivals.dials.len(),
            arrivals.datagrams,
            arrivals.bytes,
            mib(before[i] as i64),
            mib(peak_growth),
            mib(end_growth),
        );
        if arrivals.dials.len() > MAX_DIALS {
            broken.push(format!(
                "{kind}: {} dials to the named addresses (at most {MAX_DIALS})",
                arrivals.dials.len()
            ));
        }
        if arrivals.bytes > MAX_BYTES {
            broken.push(format!(
                "{kind}: {} bytes sent to the named addresses (at most {MAX_BYTES})",
                arrivals.bytes
            ));
        }
        if peak_growth >= MAX_RSS_GROWTH_KIB {
            broken.push(format!(
                "{kind}: RSS grew {:.1} MiB (under {} MiB)",
                mib(peak_growth),
                MAX_RSS_GROWTH_KIB / 1024
            ));
        }
    }
    println!("hostile dials: legit_routes={sent} delivered={delivered}");
    if delivered != sent {
        broken.push(format!(
            "{} of {sent} member routes were not delivered during the attack",
            sent - delivered
        ));
    }
    drop(links);
    assert_within_bounds("dial amplification", &broken);
}

/// Lists a node cannot tell from honest ones by their shape: the same 2,000 made-up ids, cut
/// into heartbeats of a leaf set's size and routing-table rows of one entry per column, sent one
/// after the other on one link. What bounds the cost here is the node's caps on candidates
/// (per message, per naming peer, node-wide) and its dial limits (one dial at a time per
/// address, no dial again soon to an address that failed).
#[test]
fn well_shaped_lists_naming_two_thousand_made_up_ids_cost_a_bounded_number_of_dials() {
    let _serial = measuring();
    let rt = runtime();
    let mut cluster = ProcCluster::start(2);
    let window = Duration::from_secs(scaled(6, 10));
    let sinks = DialSinks::bind(4);
    let attacker = rt.block_on(async { Attacker::new() });
    let own_digit = attacker.id().digit(0);

    let mut messages = Vec::new();
    let mut named = 0;
    let mut pool = made_up_peers(MADE_UP, &sinks.addrs).into_iter();
    while named < MADE_UP {
        // A leaf set's worth (16) in a heartbeat...
        let leaf_set: Vec<PeerInfo> = pool.by_ref().take(16).collect();
        named += leaf_set.len();
        messages.push(Message::Heartbeat { leaf_set });
        // ...and row 0 of a routing table: one made-up id per column but the sender's own.
        let entries: Vec<PeerInfo> = (0..16u8)
            .filter(|&column| column != own_digit)
            .filter_map(|column| {
                pool.next().map(|peer| PeerInfo {
                    id: peer.id.with_digit(0, column),
                    addr: peer.addr,
                })
            })
            .collect();
        named += entries.len();
        messages.push(Message::RowReply { row: 0, entries });
    }
    let count = messages.len();

    let member = &cluster.members[0];
    let link = rt.block_on(attacker.connect(member));
    let before = member.rss_kib();
    let peak = RssPeak::start(member.pid());
    rt.block_on(async {
        for message in messages {
            send_pastry(&link, message).await;
        }
    });

    let (sent, delivered) = route_meanwhile(&mut cluster, window);
    let member = &cluster.members[0];
    let arrivals = sinks.from(member.addr);
    let peak_growth = peak.finish() as i64 - before as i64;
    println!(
        "hostile dials: kind=well_shaped ids={named} messages={count} window_s={} dials={} \
         datagrams={} bytes={} rss_before_mib={:.1} rss_peak_growth_mib={:.1} legit_routes={sent} \
         delivered={delivered}",
        window.as_secs(),
        arrivals.dials.len(),
        arrivals.datagrams,
        arrivals.bytes,
        mib(before as i64),
        mib(peak_growth),
    );
    let mut broken = Vec::new();
    if arrivals.dials.len() > MAX_DIALS {
        broken.push(format!(
            "{} dials to the named addresses (at most {MAX_DIALS})",
            arrivals.dials.len()
        ));
    }
    if arrivals.bytes > MAX_BYTES {
        broken.push(format!(
            "{} bytes sent to the named addresses (at most {MAX_BYTES})",
            arrivals.bytes
        ));
    }
    if peak_growth >= MAX_RSS_GROWTH_KIB {
        broken.push(format!(
            "RSS grew {:.1} MiB (under 5 MiB)",
            mib(peak_growth)
        ));
    }
    if delivered != sent {
        broken.push(format!(
            "{} of {sent} member routes were not delivered during the attack",
            sent - delivered
        ));
    }
    drop(link);
    assert_within_bounds("dial amplification, well-shaped lists", &broken);
}

/// For `window`, every member routes to the next one's id twice a second; returns how many
/// routes were sent and how many of them were delivered (waiting up to 10 s for the last).
fn route_meanwhile(cluster: &mut ProcCluster, window: Duration) -> (usize, usize) {
    let n = cluster.members.len();
    let end = Instant::now() + window;
    let mut sent: Vec<(usize, String)> = Vec::new();
    let mut round = 0;
    while Instant::now() < end {
        for i in 0..n {
            let to = (i + 1) % n;
            let text = format!("legit {round} {i}");
            let key = cluster.members[to].key();
            cluster.members[i].route(key, &text);
            sent.push((to, text));
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let delivered = sent
        .iter()
        .filter(|(to, text)| {
            cluster.members[*to].proc.wait_for(deadline, |v| {
                v["event"] == "deliver" && v["payload"] == **text
            })
        })
        .count();
    (sent.len(), delivered)
}
