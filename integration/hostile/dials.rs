//! Dial amplification: one message naming 2,000 made-up peers at addresses the attacker holds
//! (a routing-table row, a heartbeat's leaf set, a probe's leaf set) may cost the node only a
//! bounded number of dials and bytes towards those addresses, and a bounded amount of memory;
//! the members' own routes keep being delivered.

use std::time::{Duration, Instant};

use wendy::pastry::Message;

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

    // Meanwhile every member routes to the next one's id, twice a second.
    let end = Instant::now() + window;
    let mut sent: Vec<(usize, String)> = Vec::new();
    let mut round = 0;
    while Instant::now() < end {
        for i in 0..3 {
            let to = (i + 1) % 3;
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
    println!(
        "hostile dials: legit_routes={} delivered={delivered}",
        sent.len()
    );
    if delivered != sent.len() {
        broken.push(format!(
            "{} of {} member routes were not delivered during the attack",
            sent.len() - delivered,
            sent.len()
        ));
    }
    drop(links);
    assert_within_bounds("dial amplification", &broken);
}
