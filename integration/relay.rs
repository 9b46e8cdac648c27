//! Relays over real QUIC on loopback: a node forced private (it drops datagrams from any
//! address it did not send to first, as behind a NAT) joins through relays, is reached
//! through them with end-to-end TLS, and re-homes when a relay dies; a relay's limits and
//! relay records are checked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wendy::id::Key;
use wendy::identity::Identity;
use wendy::node::{Events, LinkPath, Node, NodeConfig, NodeEvent};
use wendy::relay::{
    synthetic_addr, RelayConfig, RelayEntry, RelayLimits, RelayRecord, SignedRelayRecord,
};
use wendy::testing::{DelaySocket, RegionMap};
use wendy::transport::{
    Admission, Limits, RawStreamError, StreamErrorCode, Transport, TransportConfig,
};
use wendy::wire::Body;

fn relay_config(limits: RelayLimits) -> RelayConfig {
    RelayConfig {
        serve: Some(limits),
        ..RelayConfig::default()
    }
}

/// Spawns a node that is private (as behind a NAT) and homes on `relays`, with `config` for the
/// rest of its relay settings.
async fn private_node(
    identity: Identity,
    relays: &[SocketAddr],
    config: RelayConfig,
) -> (Node, Events) {
    Node::builder(identity)
        .relay(RelayConfig {
            private: true,
            relays: relays.to_vec(),
            ..config
        })
        .spawn()
        .await
        .unwrap()
}

struct Net {
    relays: Vec<(Node, Events, Arc<DelaySocket>)>,
    public: (Node, Events),
    private: (Node, Events),
    /// A node outside the overlay, linked to the first relay only: it can reach the private
    /// node only through a relay (the overlay's members may hold direct links the private
    /// node dialled).
    outsider: Node,
}

/// Three relays, one public node, one private node homed on two of the relays (with `private`
/// for the rest of its relay settings).
async fn start_with(limits: RelayLimits, private: RelayConfig) -> Net {
    let map = RegionMap::new(vec![vec![Duration::ZERO]]);
    let mut relays = Vec::new();
    for i in 0..3u8 {
        let socket = DelaySocket::bind("127.0.0.1:0".parse().unwrap(), &map, 0).unwrap();
        let (node, events) = Node::builder(Identity::from_seed([150 + i; 32]))
            .socket(socket.clone())
            .relay(relay_config(limits))
            .spawn()
            .await
            .unwrap();
        let bootstrap: Vec<SocketAddr> = relays
            .iter()
            .map(|(n, _, _): &(Node, _, _)| n.addr())
            .collect();
        node.join(&bootstrap).await.unwrap();
        relays.push((node, events, socket));
    }
    let relay_addrs: Vec<SocketAddr> = relays.iter().map(|(n, _, _)| n.addr()).collect();
    let (public, public_events) = Node::builder(Identity::from_seed([160; 32]))
        .spawn()
        .await
        .unwrap();
    public.join(&relay_addrs[..1]).await.unwrap();
    let (private, private_events) =
        private_node(Identity::from_seed([161; 32]), &relay_addrs, private).await;
    private.join(&relay_addrs[..1]).await.unwrap();
    let (outsider, _) = Node::builder(Identity::from_seed([162; 32]))
        .spawn()
        .await
        .unwrap();
    let first = &relays[0].0;
    outsider
        .send_to(first.id(), first.addr(), b"hello".to_vec())
        .await
        .unwrap();
    Net {
        outsider,
        relays,
        public: (public, public_events),
        private: (private, private_events),
    }
}

/// [`start_with`] with the default settings of the private node.
async fn start(limits: RelayLimits) -> Net {
    start_with(limits, RelayConfig::default()).await
}

async fn next_direct(
    events: &mut Events,
    within: Duration,
) -> Option<(wendy::id::NodeId, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(NodeEvent::Direct { from, payload })) => return Some((from, payload.to_vec())),
            Ok(Some(_)) => {}
            _ => return None,
        }
    }
}

/// Sends `payload` from `from` to `to` by id and address, and waits for it to arrive.
async fn send_and_see_it_arrive(from: &Node, to: &Node, to_events: &mut Events, payload: &[u8]) {
    from.send_to(to.id(), to.addr(), payload.to_vec())
        .await
        .unwrap();
    let (sender, arrived) = next_direct(to_events, Duration::from_secs(10))
        .await
        .expect("the direct message arrives");
    assert_eq!((sender, arrived.as_slice()), (from.id(), payload));
}

async fn next_delivery(events: &mut Events, key: Key, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(NodeEvent::Deliver(delivery))) if delivery.key == key => return true,
            Ok(Some(_)) => {}
            _ => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_node_is_reached_through_a_relay_with_end_to_end_tls() {
    let Net {
        relays,
        public: (public, _public_events),
        private: (private, mut private_events),
        outsider,
    } = start(RelayLimits::default()).await;
    let relay_ids: Vec<_> = relays.iter().map(|(n, _, _)| n.id()).collect();
    assert_eq!(private.addr(), synthetic_addr(private.id()));
    let status = private.relay_status();
    assert_eq!(status.homes.len(), 2, "homed on two relays: {status:?}");

    // The public node dials the private one by its id: the handshake succeeds only if the key
    // at the other end hashes to the private node's id, so the relay cannot be the TLS peer.
    outsider
        .send_to(private.id(), private.addr(), b"through the relay".to_vec())
        .await
        .unwrap();
    let (from, payload) = next_direct(&mut private_events, Duration::from_secs(10))
        .await
        .expect("the direct message arrives at the private node");
    assert_eq!(from, outsider.id());
    assert_eq!(payload, b"through the relay");
    let link = outsider
        .status()
        .await
        .unwrap()
        .connections
        .into_iter()
        .find(|c| c.id == private.id())
        .expect("a link to the private node");
    assert_eq!(link.path, LinkPath::Relay);
    assert!(
        link.via.is_some_and(|via| relay_ids.contains(&via)),
        "{link:?}"
    );
    assert_eq!(serde_json::to_value(link.path).unwrap(), "relay");
    let homes: Vec<_> = status.homes.iter().map(|h| h.id).collect();
    assert_eq!(private.status().await.unwrap().relays, homes);

    // Routes to the private node's own id are delivered to it.
    let key = private.id().to_key();
    public.route(key, b"to the root".to_vec()).await.unwrap();
    assert!(next_delivery(&mut private_events, key, Duration::from_secs(10)).await);

    // The relay carried the bytes and counted them.
    let carried: u64 = relays
        .iter()
        .filter_map(|(n, _, _)| n.relay_status().server)
        .map(|s| s.bytes_relayed)
        .sum();
    assert!(carried > 0);
}

/// UDP bytes both ways on all of `node`'s links.
async fn link_bytes(node: &Node) -> u64 {
    node.status()
        .await
        .unwrap()
        .connections
        .iter()
        .map(|c| c.bytes_sent + c.bytes_received)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_private_nodes_exchange_messages_and_routes_through_a_relay_and_idle_quietly() {
    let Net {
        relays,
        private: (first, mut first_events),
        ..
    } = start(RelayLimits::default()).await;
    let relay_addrs: Vec<SocketAddr> = relays.iter().map(|(n, _, _)| n.addr()).collect();
    let (second, mut second_events) = private_node(
        Identity::from_seed([163; 32]),
        &relay_addrs,
        RelayConfig::default(),
    )
    .await;
    second.join(&relay_addrs[1..2]).await.unwrap();

    // Neither can be dialled: each reaches the other by id, through a relay.
    second
        .send_to(first.id(), first.addr(), b"private to private".to_vec())
        .await
        .unwrap();
    let (from, payload) = next_direct(&mut first_events, Duration::from_secs(10))
        .await
        .expect("the direct message arrives");
    assert_eq!(
        (from, payload.as_slice()),
        (second.id(), &b"private to private"[..])
    );
    first
        .send_to(second.id(), second.addr(), b"and back".to_vec())
        .await
        .unwrap();
    let (from, payload) = next_direct(&mut second_events, Duration::from_secs(10))
        .await
        .expect("the answer arrives");
    assert_eq!((from, payload.as_slice()), (first.id(), &b"and back"[..]));
    let status = first.status().await.unwrap();
    let link = status
        .connections
        .iter()
        .find(|c| c.id == second.id())
        .expect("a link between the private nodes");
    // The link starts relayed; on one loopback the two can also punch through to each other,
    // and then it is direct on the same connection (see `crate::punch`).
    assert!(
        link.path == LinkPath::Relay || status.punch.successes >= 1,
        "{link:?} {:?}",
        status.punch
    );

    // Routes to each one's id are delivered to it.
    for (from, to, events) in [
        (&first, &second, &mut second_events),
        (&second, &first, &mut first_events),
    ] {
        let key = to.id().to_key();
        from.route(key, b"to the private root".to_vec())
            .await
            .unwrap();
        assert!(
            next_delivery(events, key, Duration::from_secs(10)).await,
            "a route to {} arrives",
            to.id()
        );
    }

    // Idle, a private node's links carry keep-alives only (relay home streams, relayed
    // sessions, QUIC and Pastry's heartbeats): a few hundred bytes a second, not a loop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = link_bytes(&first).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = link_bytes(&first).await.saturating_sub(before);
    println!("relay: a private node's links carried {idle} bytes in 10 s of idling");
    assert!(idle < 64 << 10, "{idle} bytes in 10 s of idling");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_node_rehomes_when_its_relay_dies_and_is_reached_again() {
    let Net {
        relays,
        public: (public, _public_events),
        private: (private, mut private_events),
        outsider,
    } = start(RelayLimits::default()).await;
    send_and_see_it_arrive(&outsider, &private, &mut private_events, b"before").await;
    let via = outsider
        .status()
        .await
        .unwrap()
        .connections
        .into_iter()
        .find(|c| c.id == private.id())
        .and_then(|c| c.via)
        .expect("a relayed link");
    // The relay in use goes silent, as a host that died.
    let (dead, _, socket) = relays.iter().find(|(n, _, _)| n.id() == via).unwrap();
    socket.silence();
    let killed = Instant::now();
    let key = private.id().to_key();
    let mut rehomed = None;
    let mut routed = None;
    let mut reached = None;
    while killed.elapsed() < Duration::from_secs(20)
        && (rehomed.is_none() || routed.is_none() || reached.is_none())
    {
        let homes = private.relay_status().homes;
        if rehomed.is_none() && homes.len() == 2 && homes.iter().all(|h| h.id != dead.id()) {
            rehomed = Some(killed.elapsed());
        }
        if rehomed.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if routed.is_none() {
            let _ = public.route(key, b"after".to_vec()).await;
            if next_delivery(&mut private_events, key, Duration::from_millis(300)).await {
                routed = Some(killed.elapsed());
            }
        }
        if reached.is_none() {
            let payload = b"after the relay died".to_vec();
            let sent = tokio::time::timeout(
                Duration::from_secs(1),
                outsider.send_to(private.id(), private.addr(), payload),
            )
            .await;
            if matches!(sent, Ok(Ok(())))
                && next_direct(&mut private_events, Duration::from_millis(300))
                    .await
                    .is_some()
            {
                reached = Some(killed.elapsed());
            }
        }
    }
    let rehomed = rehomed.expect("re-homed on two live relays");
    let routed = routed.expect("routes reach the private node again");
    let reached = reached.expect("the outsider reaches the private node through another relay");
    println!(
        "relay killed: re-homed after {rehomed:?}, routes delivered after {routed:?}, \
         relayed link carries again after {reached:?}"
    );
    let reached = reached.max(routed).max(rehomed);
    assert!(reached < Duration::from_secs(10), "took {reached:?}");
}

/// Waits until `done` holds, at most `within`; returns how long it took.
async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// A node outside the overlay whose unused links close after a second, linked to `relay`.
async fn outsider_with_short_links(relay: &Node) -> (Node, Events) {
    let config = NodeConfig {
        limits: Limits {
            idle_link_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
        ..NodeConfig::default()
    };
    let (node, events) = Node::builder(Identity::generate())
        .config(config)
        .spawn()
        .await
        .unwrap();
    node.send_to(relay.id(), relay.addr(), b"hello".to_vec())
        .await
        .unwrap();
    (node, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_sessions_end_with_their_connection_or_an_end_and_free_the_relays_slot() {
    // One relay and one private node homed on it, and no overlay: every relayed link is the
    // test's own.
    let (relay, _relay_events) = Node::builder(Identity::generate())
        .relay(relay_config(RelayLimits::default()))
        .spawn()
        .await
        .unwrap();
    let (private, mut private_events) = private_node(
        Identity::generate(),
        &[relay.addr()],
        RelayConfig::default(),
    )
    .await;
    let server = |relay: &Node| relay.relay_status().server.unwrap();
    until("homed", Duration::from_secs(10), || {
        server(&relay).homed == 1
    })
    .await;
    let sessions = |node: &Node| node.relay_status().sessions;

    // The connection inside the session closes (unused for a second) while both ends stay up:
    // the session ends on both nodes and the relay's slot is free.
    let (outsider, _outsider_events) = outsider_with_short_links(&relay).await;
    send_and_see_it_arrive(&outsider, &private, &mut private_events, b"relayed").await;
    assert_eq!(server(&relay).links, 1);
    assert_eq!((sessions(&outsider), sessions(&private)), (1, 1));
    let closed = until(
        "sessions end with their connection",
        Duration::from_secs(15),
        || server(&relay).links == 0 && sessions(&outsider) == 0 && sessions(&private) == 0,
    )
    .await;
    println!("relay: sessions ended {closed:?} after the relayed message (link idle timeout 1 s)");

    // A new connection gets a new session; then the dialer goes away.
    send_and_see_it_arrive(&outsider, &private, &mut private_events, b"relayed").await;
    assert_eq!(server(&relay).links, 1);
    outsider.shutdown().await;
    let gone = until(
        "sessions end when the dialer goes",
        Duration::from_secs(15),
        || server(&relay).links == 0 && sessions(&private) == 0,
    )
    .await;
    println!("relay: sessions ended {gone:?} after the dialer shut down");

    // The private node goes away: the dialer's session ends and the relay forgets the node.
    let (outsider, _outsider_events) = outsider_with_short_links(&relay).await;
    send_and_see_it_arrive(&outsider, &private, &mut private_events, b"relayed").await;
    private.shutdown().await;
    let gone = until(
        "sessions end when the private node goes",
        Duration::from_secs(15),
        || server(&relay).links == 0 && server(&relay).homed == 0 && sessions(&outsider) == 0,
    )
    .await;
    println!("relay: sessions ended {gone:?} after the private node shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_node_refreshes_its_record_and_holders_drop_it_once_expired() {
    const TTL: Duration = Duration::from_secs(3);
    let Net {
        relays,
        public: (public, _public_events),
        private: (private, mut private_events),
        ..
    } = start_with(
        RelayLimits::default(),
        RelayConfig {
            record_ttl: TTL,
            ..RelayConfig::default()
        },
    )
    .await;
    until(
        "the public node holds the record",
        Duration::from_secs(10),
        || public.relay_status().records == 1,
    )
    .await;

    // Three lifetimes later the record is still held, and a node that asks for it now gets
    // a valid one: the private node signed and sent new ones.
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(public.relay_status().records, 1);
    let (outsider, _outsider_events) = outsider_with_short_links(&relays[0].0).await;
    send_and_see_it_arrive(&outsider, &private, &mut private_events, b"late").await;

    // The private node goes away and nobody signs its record again: holders drop it once it
    // expires, and a node that dials the private node's address dials no relay on its word.
    private.shutdown().await;
    let dropped = until("holders drop the expired record", TTL * 3, || {
        public.relay_status().records == 0
            && relays.iter().all(|(n, _, _)| n.relay_status().records == 0)
            && outsider.relay_status().sessions == 0
    })
    .await;
    println!("relay: holders dropped the record {dropped:?} after its node stopped (ttl {TTL:?})");
    let refused = |relays: &[(Node, Events, Arc<DelaySocket>)]| -> u64 {
        relays
            .iter()
            .filter_map(|(n, _, _)| n.relay_status().server)
            .map(|s| s.refused)
            .sum()
    };
    // A dial that took the record just before it expired has been refused by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = refused(&relays);
    let (late, _late_events) = outsider_with_short_links(&relays[0].0).await;
    let dial = tokio::time::timeout(
        Duration::from_secs(15),
        late.send_to(private.id(), private.addr(), b"too late".to_vec()),
    )
    .await;
    assert!(!matches!(dial, Ok(Ok(()))), "{dial:?}");
    assert_eq!(
        refused(&relays),
        before,
        "a relay was asked on an expired record"
    );
}

/// A raw QUIC client that speaks the relay protocol.
async fn client() -> Transport {
    let identity = Identity::generate();
    let certificate = identity
        .self_signed_certificate(wendy::identity::Validity::days_from_now(1))
        .unwrap();
    let config = TransportConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        identity,
        certificate,
        Admission::Open,
    );
    Transport::bind(config).await.unwrap().0
}

/// Opens a relay stream with `header` to `to` and reads the relay's answer: `Ok(())` if it
/// accepted, else the code it reset the stream with.
async fn relay_answer(
    client: &Transport,
    to: &Node,
    header: Body,
) -> (
    Result<(), Option<StreamErrorCode>>,
    wendy::transport::RawStream,
) {
    let mut stream = client
        .open_stream(to.id(), to.addr(), &header)
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    let result = match stream.read_exact(&mut answer).await {
        Ok(()) => {
            assert_eq!(answer[0], 0);
            Ok(())
        }
        Err(RawStreamError::Reset { known, .. }) => Err(known),
        Err(other) => panic!("unexpected answer: {other}"),
    };
    (result, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_refuses_beyond_its_limits_and_unknown_targets_with_their_codes() {
    // One relay with room for one relayed link and one homed node, one private node homed on
    // it, and no overlay traffic: every relayed link below is the test's own.
    let (relay, _relay_events) = Node::builder(Identity::generate())
        .relay(relay_config(RelayLimits {
            max_links: 1,
            max_homed: 1,
            ..RelayLimits::default()
        }))
        .spawn()
        .await
        .unwrap();
    let (private, _private_events) = private_node(
        Identity::generate(),
        &[relay.addr()],
        RelayConfig::default(),
    )
    .await;
    let started = Instant::now();
    while relay.relay_status().server.unwrap().homed == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "never homed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (a, b) = (client().await, client().await);
    let connect = |client: &Transport, target| Body::RelayConnect {
        target,
        advertised: client.local_addr(),
    };
    let (first, _held) = relay_answer(&a, &relay, connect(&a, private.id())).await;
    assert_eq!(first, Ok(()));
    let (second, _) = relay_answer(&b, &relay, connect(&b, private.id())).await;
    assert_eq!(second, Err(Some(StreamErrorCode::RelayFull)));
    let (home, _) = relay_answer(&b, &relay, Body::RelayHome).await;
    assert_eq!(home, Err(Some(StreamErrorCode::RelayFull)));
    let (unknown, _) = relay_answer(&b, &relay, connect(&b, Identity::generate().node_id())).await;
    assert_eq!(unknown, Err(Some(StreamErrorCode::RelayNotHomed)));
    let status = relay.relay_status().server.unwrap();
    assert_eq!((status.links, status.homed, status.refused), (1, 1, 3));
    // A node that does not relay says so.
    let (plain, _plain_events) = Node::builder(Identity::generate()).spawn().await.unwrap();
    let (not_relay, _) = relay_answer(&b, &plain, connect(&b, private.id())).await;
    assert_eq!(not_relay, Err(Some(StreamErrorCode::RelayNotARelay)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_oversized_relay_records_are_refused_by_name() {
    let (node, mut events) = Node::builder(Identity::generate()).spawn().await.unwrap();
    node.join(&[]).await.unwrap();
    let identity = Identity::generate();
    let certificate = identity
        .self_signed_certificate(wendy::identity::Validity::days_from_now(1))
        .unwrap();
    let (client, _events) = Transport::bind(TransportConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        identity.clone(),
        certificate,
        Admission::Open,
    ))
    .await
    .unwrap();
    let victim = Identity::generate();
    let relays = vec![RelayEntry {
        id: identity.node_id(),
        addr: client.local_addr(),
    }];
    let now = wendy::mesh::unix_ms_now();
    let forged = RelayRecord::new(&victim, relays.clone(), 1, now + 60_000).sign(&identity);
    let expired = RelayRecord::new(&victim, relays, 1, now - 1).sign(&victim);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (forged.encode(), "bad signature"),
        (expired.encode(), "expired"),
        (vec![0u8; 600], "exceeds the maximum"),
    ];
    for (record, expected) in cases {
        client
            .send(node.id(), node.addr(), &Body::RelayRecord { record })
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let message = loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(NodeEvent::Error(message))) if message.contains("relay record") => {
                    break message
                }
                Ok(Some(_)) => {}
                _ => panic!("no refusal for a record that should say {expected:?}"),
            }
        };
        assert!(message.contains(expected), "{message}");
    }
    assert_eq!(node.relay_status().records_rejected, 3);
    let _ = SignedRelayRecord::decode_verified;
}

/// Figures for BENCHMARKS.md (`cargo test --release --test integration relay::figures --
/// --ignored --nocapture`): the QUIC RTT and the throughput of one raw stream, from one public
/// node to a private node through a relay and to a public node directly, in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand for BENCHMARKS.md"]
async fn figures() {
    const BYTES: usize = 64 << 20;
    let Net {
        relays,
        private: (private, private_events),
        outsider,
        ..
    } = start(RelayLimits {
        link_bytes_per_sec: 0,
        total_bytes_per_sec: 0,
        ..RelayLimits::default()
    })
    .await;
    let mut relays = relays;
    let (direct, direct_events, _socket) = relays.remove(2);
    let direct = &direct;
    async fn sink(mut events: Events) {
        while let Some(event) = events.recv().await {
            if let NodeEvent::Stream { mut stream, .. } = event {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1 << 16];
                    let mut total = 0usize;
                    while let Ok(Some(n)) = stream.recv.read(&mut buf).await {
                        total += n;
                    }
                    let _ = stream.write_all(&(total as u64).to_be_bytes()).await;
                    let _ = stream.send.finish();
                });
            }
        }
    }
    tokio::spawn(sink(private_events));
    tokio::spawn(sink(direct_events));
    let mut results = Vec::new();
    for (name, to) in [("relayed", &private), ("direct", direct)] {
        // Round trips first, on an idle path: a stream that carries 8 bytes and gets its
        // 8-byte answer (the QUIC RTT after bulk transfers counts the queues they filled).
        let mut trips = Vec::new();
        for _ in 0..30 {
            let started = Instant::now();
            let mut stream = outsider
                .open_stream_to(to.id(), to.addr(), "sink")
                .await
                .unwrap();
            stream.write_all(&[1; 8]).await.unwrap();
            stream.send.finish().unwrap();
            let mut total = [0u8; 8];
            stream.read_exact(&mut total).await.unwrap();
            trips.push(started.elapsed());
        }
        trips.sort();
        let quic_rtt = outsider.rtt(to.id()).unwrap();
        println!(
            "{name}: stream round trip median {:?}, QUIC rtt {quic_rtt:?}",
            trips[15]
        );
        let rtts = [trips[15]];
        let mut best = 0.0f64;
        for _ in 0..3 {
            let mut stream = outsider
                .open_stream_to(to.id(), to.addr(), "sink")
                .await
                .unwrap();
            let chunk = vec![7u8; 1 << 16];
            let started = Instant::now();
            for _ in 0..BYTES / chunk.len() {
                stream.write_all(&chunk).await.unwrap();
            }
            stream.send.finish().unwrap();
            let mut total = [0u8; 8];
            stream.read_exact(&mut total).await.unwrap();
            let secs = started.elapsed().as_secs_f64();
            assert_eq!(u64::from_be_bytes(total), BYTES as u64);
            best = best.max(BYTES as f64 / secs / (1 << 20) as f64);
        }
        let rtt = rtts.iter().min().unwrap();
        println!("{name}: throughput {best:.1} MiB/s (best of 3 x 64 MiB)");
        results.push((*rtt, best));
    }
    println!(
        "relayed / direct: round trip x{:.2}, throughput ratio {:.2}",
        results[0].0.as_secs_f64() / results[1].0.as_secs_f64(),
        results[0].1 / results[1].1
    );
}

/// `wendy node --relay` and `--private` as an operator runs them: the private node listens on
/// 0.0.0.0 with no --advertise, homes on both relays, and the status (stdin JSON) shows
/// `relays`, each connection's `path` and `via`, and the relay's counts.
#[test]
fn wendy_node_relay_and_private_flags_show_in_the_status() {
    use crate::common::process::{keygen, s, NodeProc};
    let dir = tempfile::tempdir().unwrap();
    let (key_r1, id_r1) = keygen(dir.path(), "r1");
    let (key_r2, id_r2) = keygen(dir.path(), "r2");
    let (key_x, _) = keygen(dir.path(), "x");
    let listen = ["--listen", "127.0.0.1:0"];
    let mut r1 = NodeProc::start(
        "r1",
        [&listen[..], &["--key", s(&key_r1), "--relay"]].concat(),
    );
    let (_, addr_r1) = r1.listening();
    let mut r2 = NodeProc::start(
        "r2",
        [
            &listen[..],
            &["--key", s(&key_r2), "--relay", "--join", &addr_r1],
        ]
        .concat(),
    );
    let (_, addr_r2) = r2.listening();
    r2.next_event("joined");
    let mut x = NodeProc::start(
        "x",
        [
            "--listen",
            "0.0.0.0:0",
            "--key",
            s(&key_x),
            "--private",
            "--join",
            &addr_r1,
            "--relay-via",
            &addr_r2,
        ],
    );
    x.next_event("joined");
    let status = x.status_until("homed on both relays", |status| {
        status["relays"].as_array().is_some_and(|r| r.len() == 2)
    });
    let relays: Vec<&str> = status["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(relays.contains(&id_r1.to_string().as_str()), "{status}");
    assert!(relays.contains(&id_r2.to_string().as_str()), "{status}");
    for connection in status["connections"].as_array().unwrap() {
        assert!(
            matches!(connection["path"].as_str(), Some("direct" | "relay")),
            "{connection}"
        );
        assert!(connection.get("via").is_some(), "{connection}");
    }
    let relay = r1.status_until("the relay counts its homed node", |status| {
        status["relay"]["homed"].as_u64() == Some(1)
    });
    assert!(relay["relays"].as_array().unwrap().is_empty(), "{relay}");
}
