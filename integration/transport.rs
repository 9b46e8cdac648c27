//! Transport integration tests: real nodes, real QUIC over real UDP on loopback.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::{eventually, open_config, Node, HANG_GUARD};
use wendy::id::NodeId;
use wendy::transport::{
    tls, CloseCode, ConnectError, Limits, LinkLostReason, RequestError, SendError, StreamError,
    StreamErrorCode, Transport, TransportEvent,
};
use wendy::wire::{Body, WireError, VERSION};

fn direct(payload: &[u8]) -> Body {
    Body::Direct {
        payload: payload.to_vec().into(),
    }
}

async fn next_message(node: &mut Node) -> (NodeId, Body) {
    node.next_matching(|event| match event {
        TransportEvent::Message { from, body, .. } => Some((from, body)),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn two_nodes_exchange_messages_both_ways() {
    let mut a = Node::open().await;
    let mut b = Node::open().await;
    a.transport
        .send(b.id(), b.addr(), &direct(b"a to b"))
        .await
        .unwrap();
    assert_eq!(next_message(&mut b).await, (a.id(), direct(b"a to b")));
    // B answers over the link A opened (no second dial: still one link each side).
    b.transport
        .send(a.id(), a.addr(), &direct(b"b to a"))
        .await
        .unwrap();
    assert_eq!(next_message(&mut a).await, (b.id(), direct(b"b to a")));
    assert_eq!(a.transport.links().len(), 1);
    assert_eq!(b.transport.links().len(), 1);
}

/// A routed message as a hop passes it on: decoded with its payload left in the frame it came
/// in, then sent again with the payload as a chunk of its own. Over two real links, payloads
/// on both sides of the chunk threshold arrive byte for byte (that the large ones are not
/// copied is checked by the unit tests of `wire::shared`).
#[tokio::test]
async fn a_forwarded_payload_crosses_two_links_intact() {
    use wendy::id::Key;
    use wendy::pastry::{Message, PeerInfo};
    use wendy::wire::shared::SPLICE_MIN;

    let a = Node::open().await;
    let mut b = Node::open().await;
    let mut c = Node::open().await;
    let origin = PeerInfo {
        id: a.id(),
        addr: a.addr(),
    };
    for (i, len) in [0, 200, SPLICE_MIN - 1, SPLICE_MIN, 64 << 10, 900 << 10]
        .into_iter()
        .enumerate()
    {
        let payload: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
        let sent = Body::Pastry(Message::Route {
            id: i as u64,
            key: Key::from_u128(7),
            origin,
            hops: 0,
            avoid: Vec::new(),
            payload: payload.clone().into(),
            proof: None,
        });
        a.transport.send(b.id(), b.addr(), &sent).await.unwrap();
        let (from, at_b) = next_message(&mut b).await;
        assert_eq!(
            (from, &at_b),
            (a.id(), &sent),
            "{len} bytes at the first hop"
        );
        b.transport.send(c.id(), c.addr(), &at_b).await.unwrap();
        let (from, at_c) = next_message(&mut c).await;
        assert_eq!(from, b.id());
        let Body::Pastry(Message::Route { payload: got, .. }) = at_c else {
            panic!("not a routed message: {at_c:?}")
        };
        assert_eq!(got.len(), len);
        assert!(got[..] == payload[..], "{len} bytes changed on the way");
    }
}

#[tokio::test]
async fn link_up_is_announced_before_messages_with_rtt() {
    let a = Node::open().await;
    let mut b = Node::open().await;
    a.transport
        .send(b.id(), b.addr(), &direct(b"hi"))
        .await
        .unwrap();
    let first = tokio::time::timeout(HANG_GUARD, b.events.recv())
        .await
        .unwrap()
        .unwrap();
    match first {
        TransportEvent::LinkUp {
            peer,
            addr,
            rtt,
            inbound,
        } => {
            assert_eq!(peer, a.id());
            assert_eq!(addr, a.addr());
            assert!(inbound);
            assert!(rtt > Duration::ZERO);
        }
        other => panic!("expected LinkUp first, got {other:?}"),
    }
    assert_eq!(next_message(&mut b).await, (a.id(), direct(b"hi")));
    let rtt = a.transport.rtt(b.id()).expect("link has an rtt");
    assert!(rtt > Duration::ZERO);
    let links = a.transport.links();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].peer, b.id());
    assert!(!links[0].inbound);
    assert!(links[0].bytes_sent > 0 && links[0].packets_received > 0);
}

#[tokio::test]
async fn ten_thousand_concurrent_messages_are_each_delivered_exactly_once() {
    const COUNT: u32 = 10_000;
    let a = Node::open().await;
    let mut b = Node::open().await;
    let (peer, addr) = (b.id(), b.addr());
    let mut senders = tokio::task::JoinSet::new();
    for i in 0..COUNT {
        let transport = a.transport.clone();
        senders.spawn(async move { transport.send(peer, addr, &direct(&i.to_be_bytes())).await });
    }
    let mut seen = HashSet::new();
    let mut received = 0;
    while received < COUNT {
        let (from, body) = next_message(&mut b).await;
        assert_eq!(from, a.id());
        let Body::Direct { payload } = body else {
            panic!("unexpected body {body:?}")
        };
        let index = u32::from_be_bytes(payload[..].try_into().unwrap());
        assert!(index < COUNT);
        assert!(seen.insert(index), "message {index} delivered twice");
        received += 1;
    }
    while let Some(result) = senders.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(seen.len(), COUNT as usize);
    // Concurrent senders shared one dial: one link.
    assert_eq!(a.transport.links().len(), 1);
}

#[tokio::test]
async fn request_gets_its_answer_and_an_unanswered_request_fails_fast() {
    let a = Node::open().await;
    let b = Node::open().await;
    let (b_transport, _events) = b.serve();
    let answer = a
        .transport
        .request(
            b_transport.local_id(),
            b_transport.local_addr(),
            &Body::Ping { nonce: 77 },
        )
        .await
        .unwrap();
    assert_eq!(answer, Body::Pong { nonce: 77 });

    // A node that drops the responder: the requester gets NoReply, not a timeout.
    let mut c = Node::open().await;
    let c_id = c.id();
    let c_addr = c.addr();
    let requester = a.transport.clone();
    let request = tokio::spawn(async move {
        requester
            .request(c_id, c_addr, &Body::Ping { nonce: 1 })
            .await
    });
    let reply = c
        .next_matching(|event| match event {
            TransportEvent::Request { reply, .. } => Some(reply),
            _ => None,
        })
        .await;
    drop(reply);
    let error = request.await.unwrap().unwrap_err();
    assert!(
        matches!(
            error,
            RequestError::Stream(StreamError::Refused {
                known: Some(StreamErrorCode::NoReply),
                ..
            })
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn bootstrap_by_address_learns_the_node_id() {
    let a = Node::open().await;
    let b = Node::open().await;
    let learned = a.transport.connect(b.addr(), None).await.unwrap();
    assert_eq!(learned, b.id());
    // Connecting again by address reuses the link.
    assert_eq!(a.transport.connect(b.addr(), None).await.unwrap(), b.id());
    assert_eq!(a.transport.links().len(), 1);
}

#[tokio::test]
async fn dialling_yourself_is_refused() {
    let a = Node::open().await;
    let error = a.transport.connect(a.addr(), None).await.unwrap_err();
    assert!(
        matches!(error, ConnectError::SelfConnection(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn ipv6_loopback_links_work() {
    let mut config_a = open_config();
    config_a.listen = "[::1]:0".parse().unwrap();
    let mut config_b = open_config();
    config_b.listen = "[::1]:0".parse().unwrap();
    let a = Node::bind(config_a).await;
    let mut b = Node::bind(config_b).await;
    assert!(a.addr().is_ipv6());
    a.transport
        .send(b.id(), b.addr(), &direct(b"v6"))
        .await
        .unwrap();
    assert_eq!(next_message(&mut b).await, (a.id(), direct(b"v6")));
}

#[tokio::test]
async fn raw_streams_carry_bytes_after_a_tunnel_header() {
    let a = Node::open().await;
    let mut b = Node::open().await;
    let header = Body::Tunnel {
        service: "echo".into(),
    };
    let mut stream = a
        .transport
        .open_stream(b.id(), b.addr(), &header)
        .await
        .unwrap();
    stream.send.write_all(b"raw bytes").await.unwrap();
    stream.send.finish().unwrap();
    let (from, got_header, mut incoming) = b
        .next_matching(|event| match event {
            TransportEvent::Stream {
                from,
                header,
                stream,
                ..
            } => Some((from, header, stream)),
            _ => None,
        })
        .await;
    assert_eq!(from, a.id());
    assert_eq!(got_header, header);
    let bytes = incoming.recv.read_to_end(1024).await.unwrap();
    assert_eq!(bytes, b"raw bytes");
    incoming.send.write_all(b"back").await.unwrap();
    incoming.send.finish().unwrap();
    let back = stream.recv.read_to_end(1024).await.unwrap();
    assert_eq!(back, b"back");
}

#[tokio::test]
async fn opening_a_stream_without_credit_times_out() {
    let limits = Limits {
        max_concurrent_bi_streams: 1,
        open_stream_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let a = Node::with_limits(limits.clone()).await;
    let mut b = Node::with_limits(limits).await;
    let header = Body::Tunnel {
        service: "hold".into(),
    };
    let _held = a
        .transport
        .open_stream(b.id(), b.addr(), &header)
        .await
        .unwrap();
    let _incoming = b
        .next_matching(|event| match event {
            TransportEvent::Stream { stream, .. } => Some(stream),
            _ => None,
        })
        .await;
    let error = a
        .transport
        .open_stream(b.id(), b.addr(), &header)
        .await
        .unwrap_err();
    assert!(matches!(error, SendError::OpenStreamTimeout), "{error:?}");
}

#[tokio::test]
async fn oversized_message_is_refused_before_sending() {
    let a = Node::open().await;
    let b = Node::open().await;
    let max = a.transport.limits().max_message_size;
    let error = a
        .transport
        .send(b.id(), b.addr(), &direct(&vec![0; max]))
        .await
        .unwrap_err();
    assert!(
        matches!(error, SendError::Encode(WireError::Oversized { .. })),
        "{error:?}"
    );
}

/// A raw quinn client with Wendy's own TLS setup, for writing hand-made frames.
async fn raw_client(server: &Node) -> (quinn::Endpoint, quinn::Connection, NodeId) {
    let config = open_config();
    let id = config.identity.node_id();
    let client_config = tls::quinn_client_config(&config, Some(server.id())).unwrap();
    let endpoint = quinn::Endpoint::client(common::loopback()).unwrap();
    let conn = endpoint
        .connect_with(client_config, server.addr(), "wendy")
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn, id)
}

async fn send_raw_uni(conn: &quinn::Connection, bytes: &[u8]) -> quinn::SendStream {
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.finish().unwrap();
    stream
}

async fn expect_rejected(server: &mut Node, from: NodeId) -> WireError {
    server
        .next_matching(|event| match event {
            TransportEvent::StreamRejected { from: f, error } if f == from => Some(error),
            TransportEvent::Message { body, .. } => panic!("bad frame delivered as {body:?}"),
            _ => None,
        })
        .await
}

async fn expect_good_after(server: &mut Node, conn: &quinn::Connection, from: NodeId) {
    let good = wendy::wire::encode(&direct(b"good")).unwrap();
    send_raw_uni(conn, &good).await;
    assert_eq!(next_message(server).await, (from, direct(b"good")));
}

#[tokio::test]
async fn a_new_link_grows_its_stream_credit_for_a_burst_of_messages() {
    // Unfinished frames are not timed out during the test, so only new credit lets it go on.
    let initial = 16;
    let server = Node::with_limits(Limits {
        stream_read_timeout: HANG_GUARD * 10,
        initial_concurrent_uni_streams: initial,
        ..Limits::default()
    })
    .await;
    let (_endpoint, conn, _) = raw_client(&server).await;
    // A link starts with a small stream credit; a peer that uses it up at once gets the full
    // one. Each stream here holds an unfinished frame, so it stays open: without more credit
    // the opens past the initial credit would wait for ever.
    let burst = initial * 4;
    let mut held = Vec::new();
    for _ in 0..burst {
        let mut stream = tokio::time::timeout(HANG_GUARD, conn.open_uni())
            .await
            .expect("stream credit never came")
            .unwrap();
        stream.write_all(&[VERSION]).await.unwrap();
        held.push(stream);
    }
    assert_eq!(held.len(), burst as usize);
}

#[tokio::test]
async fn malformed_frame_drops_only_its_stream() {
    let mut server = Node::open().await;
    let (_endpoint, conn, id) = raw_client(&server).await;
    // Direct frame whose payload length claims more bytes than follow... then garbage after.
    send_raw_uni(&conn, &[VERSION, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).await;
    assert!(matches!(
        expect_rejected(&mut server, id).await,
        WireError::Malformed(_)
    ));
    expect_good_after(&mut server, &conn, id).await;
}

#[tokio::test]
async fn truncated_frame_drops_only_its_stream() {
    let mut server = Node::open().await;
    let (_endpoint, conn, id) = raw_client(&server).await;
    let frame = wendy::wire::encode(&direct(b"cut short")).unwrap();
    send_raw_uni(&conn, &frame[..frame.len() - 3]).await;
    assert_eq!(expect_rejected(&mut server, id).await, WireError::Truncated);
    expect_good_after(&mut server, &conn, id).await;
}

#[tokio::test]
async fn unknown_version_frame_drops_only_its_stream() {
    let mut server = Node::open().await;
    let (_endpoint, conn, id) = raw_client(&server).await;
    let mut frame = wendy::wire::encode(&direct(b"from the future"))
        .unwrap()
        .to_vec();
    frame[0] = VERSION + 1;
    send_raw_uni(&conn, &frame).await;
    assert_eq!(
        expect_rejected(&mut server, id).await,
        WireError::UnknownVersion(VERSION + 1)
    );
    expect_good_after(&mut server, &conn, id).await;
}

#[tokio::test]
async fn unknown_kind_frame_drops_only_its_stream() {
    let mut server = Node::open().await;
    let (_endpoint, conn, id) = raw_client(&server).await;
    send_raw_uni(&conn, &[VERSION, 42, 1, 2, 3]).await;
    assert_eq!(
        expect_rejected(&mut server, id).await,
        WireError::UnknownKind(42)
    );
    expect_good_after(&mut server, &conn, id).await;
}

#[tokio::test]
async fn oversized_frame_is_stopped_with_its_code() {
    let limits = Limits {
        max_message_size: 1024,
        ..Limits::default()
    };
    let mut server = Node::with_limits(limits).await;
    let (_endpoint, conn, id) = raw_client(&server).await;
    // Larger than the stream receive window, so the server stops the stream before it has
    // received it all (a frame that fits the window may arrive whole before the check).
    let frame = wendy::wire::encode(&direct(&vec![7; 3 << 20])).unwrap();
    let mut stream = conn.open_uni().await.unwrap();
    // The write is cut short by the stop (or not, if it was all buffered).
    let _ = stream.write_all(&frame).await;
    let _ = stream.finish();
    assert!(matches!(
        expect_rejected(&mut server, id).await,
        WireError::Oversized { max: 1024, .. }
    ));
    let code = tokio::time::timeout(HANG_GUARD, stream.stopped())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, Some(StreamErrorCode::Oversized.to_varint()));
    expect_good_after(&mut server, &conn, id).await;
}

#[tokio::test]
async fn bad_request_frame_resets_the_stream_with_its_code() {
    let mut server = Node::open().await;
    let (_endpoint, conn, id) = raw_client(&server).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let bad = [VERSION, 42];
    send.write_all(&(bad.len() as u32).to_be_bytes())
        .await
        .unwrap();
    send.write_all(&bad).await.unwrap();
    send.finish().unwrap();
    let error = recv.read_to_end(1024).await.unwrap_err();
    assert_eq!(
        error,
        quinn::ReadToEndError::Read(quinn::ReadError::Reset(
            StreamErrorCode::UnknownKind.to_varint()
        ))
    );
    assert_eq!(
        expect_rejected(&mut server, id).await,
        WireError::UnknownKind(42)
    );
    expect_good_after(&mut server, &conn, id).await;
}

// ---- pool ----

#[tokio::test]
async fn simultaneous_dials_leave_exactly_one_link_on_both_sides() {
    for _ in 0..5 {
        let a = Node::open().await;
        let b = Node::open().await;
        let (ra, rb) = tokio::join!(
            a.transport.connect(b.addr(), Some(b.id())),
            b.transport.connect(a.addr(), Some(a.id()))
        );
        assert_eq!(ra.unwrap(), b.id());
        assert_eq!(rb.unwrap(), a.id());
        let lower = a.id().min(b.id());
        // The survivor is the link dialled by the lower id: outbound there, inbound at the other.
        let settled = |node: &Node| {
            let links = node.transport.links();
            links.len() == 1 && links[0].inbound == (node.id() != lower)
        };
        eventually(|| settled(&a) && settled(&b)).await;
        // The losing connection is closed on both endpoints, not just left out of the pool.
        eventually(|| a.transport.connection_count() == 1 && b.transport.connection_count() == 1)
            .await;
        // Both ends use the same connection: what one sent the other received.
        let (la, lb) = (a.transport.links(), b.transport.links());
        assert_eq!(la[0].peer, b.id());
        assert_eq!(lb[0].peer, a.id());
        // And it carries traffic both ways.
        let (a_t, mut a_rx) = a.serve();
        let (b_t, _b_rx) = b.serve();
        a_t.send(b_t.local_id(), b_t.local_addr(), &direct(b"x"))
            .await
            .unwrap();
        let answer = b_t
            .request(a_t.local_id(), a_t.local_addr(), &Body::Ping { nonce: 5 })
            .await
            .unwrap();
        assert_eq!(answer, Body::Pong { nonce: 5 });
        // No link was reported lost on A's side through the race.
        while let Ok(event) = a_rx.try_recv() {
            assert!(
                !matches!(event, TransportEvent::LinkLost { .. }),
                "{event:?}"
            );
        }
    }
}

#[tokio::test]
async fn idle_links_are_closed() {
    let limits = Limits {
        idle_link_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let mut a = Node::with_limits(limits.clone()).await;
    let b = Node::with_limits(limits).await;
    a.transport.connect(b.addr(), Some(b.id())).await.unwrap();
    let (peer, reason) = a
        .next_matching(|event| match event {
            TransportEvent::LinkLost { peer, reason } => Some((peer, reason)),
            _ => None,
        })
        .await;
    assert_eq!(peer, b.id());
    assert!(
        matches!(
            reason,
            LinkLostReason::ClosedLocally(CloseCode::Idle)
                | LinkLostReason::ClosedByPeer {
                    code: Some(CloseCode::Idle),
                    ..
                }
        ),
        "{reason:?}"
    );
    assert!(!reason.is_failure());
    eventually(|| a.transport.links().is_empty() && b.transport.links().is_empty()).await;
}

#[tokio::test]
async fn idle_links_beyond_the_cap_close_soon_keeping_the_most_recently_used() {
    let limits = Limits {
        max_idle_links: 1,
        // Long enough that the dials below finish well within it on a loaded machine.
        excess_idle_link_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let mut hub = Node::with_limits(limits).await;
    let mut busy_peer = Node::open().await;
    let tunnel = hub
        .transport
        .open_stream(
            busy_peer.id(),
            busy_peer.addr(),
            &Body::Tunnel {
                service: "hold".into(),
            },
        )
        .await
        .unwrap();
    let _incoming = busy_peer
        .next_matching(|event| match event {
            TransportEvent::Stream { stream, .. } => Some(stream),
            _ => None,
        })
        .await;
    let mut peers = Vec::new();
    for _ in 0..4 {
        let peer = Node::open().await;
        hub.transport
            .connect(peer.addr(), Some(peer.id()))
            .await
            .unwrap();
        peers.push(peer);
    }
    // The first peer's link is used last, so it is the one idle link that stays.
    hub.transport
        .send(peers[0].id(), peers[0].addr(), &direct(b"still talking"))
        .await
        .unwrap();
    let mut closed = HashSet::new();
    while closed.len() < 3 {
        let (peer, reason) = hub
            .next_matching(|event| match event {
                TransportEvent::LinkLost { peer, reason } => Some((peer, reason)),
                _ => None,
            })
            .await;
        assert_eq!(reason, LinkLostReason::ClosedLocally(CloseCode::Idle));
        closed.insert(peer);
    }
    let expected_closed: HashSet<NodeId> = peers[1..].iter().map(Node::id).collect();
    assert_eq!(closed, expected_closed);
    let open: HashSet<NodeId> = hub.transport.links().iter().map(|l| l.peer).collect();
    assert_eq!(open, HashSet::from([busy_peer.id(), peers[0].id()]));
    // The peers' ends learn it too.
    for peer in &peers[1..] {
        eventually(|| peer.transport.links().is_empty()).await;
    }
    drop(tunnel);
}

#[tokio::test]
async fn full_pool_of_busy_links_gives_too_many_connections_and_evicts_idle_ones() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let mut a = Node::with_limits(limits).await;
    let mut b = Node::open().await;
    let c = Node::open().await;
    let busy = a
        .transport
        .open_stream(
            b.id(),
            b.addr(),
            &Body::Tunnel {
                service: "hold".into(),
            },
        )
        .await
        .unwrap();
    let _incoming = b
        .next_matching(|event| match event {
            TransportEvent::Stream { stream, .. } => Some(stream),
            _ => None,
        })
        .await;
    let error = a
        .transport
        .connect(c.addr(), Some(c.id()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::TooManyConnections { max: 1 }),
        "{error:?}"
    );
    // Once the link to B is idle, it is evicted to make room for C.
    drop(busy);
    assert_eq!(
        a.transport.connect(c.addr(), Some(c.id())).await.unwrap(),
        c.id()
    );
    let (peer, reason) = a
        .next_matching(|event| match event {
            TransportEvent::LinkLost { peer, reason } => Some((peer, reason)),
            _ => None,
        })
        .await;
    assert_eq!(peer, b.id());
    assert_eq!(reason, LinkLostReason::ClosedLocally(CloseCode::Evicted));
    let links = a.transport.links();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].peer, c.id());
}

#[tokio::test]
async fn a_killed_peer_produces_link_lost() {
    let limits = Limits {
        keep_alive: Duration::from_millis(100),
        max_idle_timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    let mut a = Node::with_limits(limits.clone()).await;
    // B lives on its own runtime in its own thread; shutting that runtime down kills B without
    // any orderly close, like a killed process (its socket closes, nothing more is sent).
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let node = runtime.block_on(async {
            let mut config = open_config();
            config.limits = limits;
            Transport::bind(config).await.unwrap()
        });
        ready_tx
            .send((node.0.local_id(), node.0.local_addr()))
            .unwrap();
        kill_rx.recv().unwrap();
        runtime.shutdown_background();
        std::mem::forget(node);
    });
    let (b_id, b_addr) = ready_rx.recv().unwrap();
    a.transport.connect(b_addr, Some(b_id)).await.unwrap();
    kill_tx.send(()).unwrap();
    thread.join().unwrap();
    let (peer, reason) = a
        .next_matching(|event| match event {
            TransportEvent::LinkLost { peer, reason } => Some((peer, reason)),
            _ => None,
        })
        .await;
    assert_eq!(peer, b_id);
    assert_eq!(reason, LinkLostReason::TimedOut);
    assert!(reason.is_failure());
    assert!(a.transport.links().is_empty());
}

#[tokio::test]
async fn closing_a_link_reports_it_on_both_sides() {
    let mut a = Node::open().await;
    let mut b = Node::open().await;
    a.transport.connect(b.addr(), Some(b.id())).await.unwrap();
    a.transport.close(b.id()).await;
    let reason = a
        .next_matching(|event| match event {
            TransportEvent::LinkLost { reason, .. } => Some(reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, LinkLostReason::ClosedLocally(CloseCode::Closed));
    let reason = b
        .next_matching(|event| match event {
            TransportEvent::LinkLost { reason, .. } => Some(reason),
            _ => None,
        })
        .await;
    assert!(
        matches!(
            reason,
            LinkLostReason::ClosedByPeer {
                code: Some(CloseCode::Closed),
                ..
            }
        ),
        "{reason:?}"
    );
    assert!(a.transport.links().is_empty());
}

/// Collects formatted log output.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// A current-thread runtime, so the thread-local log subscriber sees every task of the test.
#[tokio::test(flavor = "current_thread")]
async fn a_bad_frame_is_logged_in_one_clear_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut server = Node::open().await;
    let (_endpoint, conn, id) = raw_client(&server).await;
    send_raw_uni(&conn, &[VERSION + 7, 1, 2, 3]).await;
    assert_eq!(
        expect_rejected(&mut server, id).await,
        WireError::UnknownVersion(VERSION + 7)
    );
    expect_good_after(&mut server, &conn, id).await;

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|line| line.contains("stream")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    let line = lines[0];
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&id.to_string()), "names the peer: {line}");
    assert!(
        line.contains(&format!("unknown frame version {}", VERSION + 7)),
        "says what was wrong: {line}"
    );
}

#[tokio::test]
async fn a_restarted_peer_replaces_its_stale_link() {
    use wendy::identity::{Identity, Validity};
    use wendy::transport::Admission;
    // A must have the lower id, so that A's own (now stale) link would win a simultaneous-dial
    // tie against the restarted peer's new link.
    let (a_identity, b_identity) = loop {
        let (a, b) = (Identity::generate(), Identity::generate());
        if a.node_id() < b.node_id() {
            break (a, b);
        }
    };
    let limits = Limits {
        connect_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let certificate = |identity: &Identity| {
        identity
            .self_signed_certificate(Validity::days_from_now(1))
            .unwrap()
    };
    let mut a_config = common::config_with(
        a_identity.clone(),
        certificate(&a_identity),
        Admission::Open,
    );
    a_config.limits = limits.clone();
    let mut a = Node::bind(a_config).await;

    // B's first life, on its own runtime, killed without a word.
    let b_config = common::config_with(
        b_identity.clone(),
        certificate(&b_identity),
        Admission::Open,
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let node = runtime.block_on(Transport::bind(b_config)).unwrap();
        ready_tx.send(node.0.local_addr()).unwrap();
        kill_rx.recv().unwrap();
        runtime.shutdown_background();
        std::mem::forget(node);
    });
    let first_addr = ready_rx.recv().unwrap();
    a.transport
        .connect(first_addr, Some(b_identity.node_id()))
        .await
        .unwrap();
    kill_tx.send(()).unwrap();
    thread.join().unwrap();
    // Longer than any dial takes: B's new link cannot be part of a simultaneous dial.
    tokio::time::sleep(limits.connect_timeout * 2).await;

    // B's second life: same key, new address. It reaches A, and A answers on the new link.
    let mut b_config = common::config_with(
        b_identity.clone(),
        certificate(&b_identity),
        Admission::Open,
    );
    b_config.limits = limits;
    let mut b = Node::bind(b_config).await;
    b.transport
        .send(a.id(), a.addr(), &direct(b"i am back"))
        .await
        .unwrap();
    let (from, from_addr) = a
        .next_matching(|event| match event {
            TransportEvent::Message {
                from, from_addr, ..
            } => Some((from, from_addr)),
            _ => None,
        })
        .await;
    assert_eq!((from, from_addr), (b.id(), b.addr()));
    a.transport
        .send(b.id(), first_addr, &direct(b"welcome back"))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut b).await,
        (a.id(), direct(b"welcome back"))
    );
    let links = a.transport.links();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].addr, b.addr());
}

#[tokio::test]
async fn a_request_without_an_answer_times_out() {
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let a = Node::with_limits(limits).await;
    let mut b = Node::open().await;
    let (b_id, b_addr) = (b.id(), b.addr());
    let requester = a.transport.clone();
    let request = tokio::spawn(async move {
        requester
            .request(b_id, b_addr, &Body::Ping { nonce: 3 })
            .await
    });
    // B holds the responder without answering.
    let _held = b
        .next_matching(|event| match event {
            TransportEvent::Request { reply, .. } => Some(reply),
            _ => None,
        })
        .await;
    let error = request.await.unwrap().unwrap_err();
    assert!(matches!(error, RequestError::Timeout), "{error:?}");
}

#[tokio::test]
async fn a_slow_consumer_applies_backpressure_to_the_sender() {
    const STREAMS: u32 = 16;
    const EVENTS: usize = 4;
    let limits = Limits {
        event_capacity: EVENTS,
        max_concurrent_uni_streams: STREAMS,
        open_stream_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let a = Node::with_limits(limits.clone()).await;
    let mut b = Node::with_limits(limits).await;
    // B reads no events: its channel fills, its stream reader stops accepting, and A runs out
    // of stream credit instead of B buffering without bound.
    let mut sent = 0u32;
    let error = loop {
        match a
            .transport
            .send(b.id(), b.addr(), &direct(&sent.to_be_bytes()))
            .await
        {
            Ok(()) => sent += 1,
            Err(error) => break error,
        }
        assert!(
            sent <= 10 * STREAMS,
            "no backpressure after {sent} messages"
        );
    };
    assert!(matches!(error, SendError::OpenStreamTimeout), "{error:?}");
    assert!(
        sent >= STREAMS,
        "credit for {STREAMS} streams, only {sent} sent"
    );
    // Once B reads, everything sent arrives, in any order, and A can send again.
    let mut seen = HashSet::new();
    while seen.len() < sent as usize {
        let (_, body) = next_message(&mut b).await;
        let Body::Direct { payload } = body else {
            panic!("unexpected {body:?}")
        };
        assert!(seen.insert(u32::from_be_bytes(payload[..].try_into().unwrap())));
    }
    a.transport
        .send(b.id(), b.addr(), &direct(b"after"))
        .await
        .unwrap();
    assert_eq!(next_message(&mut b).await.1, direct(b"after"));
}

#[tokio::test]
async fn after_the_peer_closes_the_link_the_next_send_dials_again() {
    let mut a = Node::open().await;
    let mut b = Node::open().await;
    a.transport
        .send(b.id(), b.addr(), &direct(b"one"))
        .await
        .unwrap();
    assert_eq!(next_message(&mut b).await.1, direct(b"one"));
    b.transport.close(a.id()).await;
    let reason = a
        .next_matching(|event| match event {
            TransportEvent::LinkLost { reason, .. } => Some(reason),
            _ => None,
        })
        .await;
    assert!(!reason.is_failure(), "{reason:?}");
    a.transport
        .send(b.id(), b.addr(), &direct(b"two"))
        .await
        .unwrap();
    assert_eq!(next_message(&mut b).await.1, direct(b"two"));
    assert_eq!(a.transport.links().len(), 1);
}

/// Opens `count` uni streams on `conn` and writes `bytes` on each without ever finishing them;
/// each task ends with the code the receiver stopped its stream with, if it does.
fn unfinished_streams(
    conn: &quinn::Connection,
    count: usize,
    bytes: usize,
) -> Vec<tokio::task::JoinHandle<Option<u64>>> {
    (0..count)
        .map(|_| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let mut stream = conn.open_uni().await.unwrap();
                // A frame header's worth of valid version, then filler that never ends.
                let mut data = vec![0u8; bytes];
                data[0] = VERSION;
                // Never finished: the stream stays open until the receiver stops it.
                match stream.write_all(&data).await {
                    Err(quinn::WriteError::Stopped(code)) => Some(code.into_inner()),
                    Err(error) => panic!("writing failed: {error}"),
                    Ok(()) => match stream.stopped().await {
                        Ok(Some(code)) => Some(code.into_inner()),
                        other => panic!("the stream ended with {other:?}"),
                    },
                }
            })
        })
        .collect()
}

#[tokio::test]
async fn unfinished_streams_hold_no_more_than_the_read_budgets_and_others_still_get_through() {
    const STREAMS: usize = 48;
    let limits = Limits {
        // Nothing is reset for slowness while the test looks.
        stream_read_timeout: Duration::from_secs(120),
        ..Limits::default()
    };
    let mut server = Node::with_limits(limits.clone()).await;
    let (_endpoint, conn, hostile) = raw_client(&server).await;
    let writers = unfinished_streams(&conn, STREAMS, (1 << 20) - 1024);
    // The peer's streams are taken up to what the budgets allow; the frames that cannot wait
    // for the link's large-frame slot without risking its flow control are stopped.
    // (4 MiB window - 1 MiB frame) / 1 MiB per stream = 3 frames wait, one holds the slot.
    const REFUSED_AT_LEAST: usize = STREAMS - 3 - 1;
    eventually(|| writers.iter().filter(|w| w.is_finished()).count() >= REFUSED_AT_LEAST).await;
    // Give any further refusal a moment to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut overloaded = 0;
    let mut waiting = 0;
    for writer in writers {
        if !writer.is_finished() {
            // Waiting unfinished, its bytes in QUIC's window (or blocked by flow control).
            waiting += 1;
            writer.abort();
            continue;
        }
        let code = writer.await.unwrap().and_then(StreamErrorCode::from_u64);
        assert_eq!(code, Some(StreamErrorCode::Overloaded));
        overloaded += 1;
    }
    assert_eq!(overloaded + waiting, STREAMS);
    let status = server.transport.read_budget();
    assert!(
        status.largest_link_held <= limits.link_read_budget,
        "{status:?}"
    );
    assert!(status.node_held <= limits.link_read_budget, "{status:?}");
    assert!(
        status.node_held > 0,
        "the slot holder's frame is being read"
    );
    assert!(
        overloaded >= REFUSED_AT_LEAST,
        "only {overloaded} of {STREAMS} frames refused"
    );
    // Another peer's maximum-size message still arrives meanwhile.
    let other = Node::with_limits(limits.clone()).await;
    let big = direct(&vec![7u8; limits.max_message_size - 64]);
    other
        .transport
        .send(server.id(), server.addr(), &big)
        .await
        .unwrap();
    let (from, body) = server
        .next_matching(|event| match event {
            TransportEvent::Message { from, body, .. } if from != hostile => Some((from, body)),
            _ => None,
        })
        .await;
    assert_eq!((from, body), (other.id(), big));
    // Closing the hostile link gives every byte back.
    conn.close(0u32.into(), b"done");
    eventually(|| server.transport.read_budget().node_held == 0).await;
}

/// A UDP socket that answers nothing and counts what it receives: (datagrams, bytes).
async fn silent_sink() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<(usize, usize)>>,
) {
    let socket = tokio::net::UdpSocket::bind(common::loopback())
        .await
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let counts = std::sync::Arc::new(std::sync::Mutex::new((0, 0)));
    let tally = counts.clone();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 65536];
        while let Ok(n) = socket.recv(&mut buffer).await {
            let mut tally = tally.lock().unwrap();
            tally.0 += 1;
            tally.1 += n;
        }
    });
    (addr, counts)
}

#[tokio::test]
async fn many_ids_named_at_one_silent_address_cost_one_dial() {
    const IDS: usize = 2_000;
    let limits = Limits {
        connect_timeout: Duration::from_millis(1500),
        ..Limits::default()
    };
    let node = Node::with_limits(limits.clone()).await;
    let (sink, received) = silent_sink().await;
    let mut dials = tokio::task::JoinSet::new();
    for i in 0..IDS {
        let transport = node.transport.clone();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        dials.spawn(async move { transport.connect(sink, Some(NodeId::from_bytes(id))).await });
    }
    let (mut timed_out, mut refused) = (0, 0);
    while let Some(result) = dials.join_next().await {
        match result.unwrap() {
            Err(ConnectError::Timeout(addr)) => {
                assert_eq!(addr, sink);
                timed_out += 1;
            }
            Err(ConnectError::DialRefused(wendy::transport::DialRefused::BackingOff {
                addr,
                ..
            })) => {
                assert_eq!(addr, sink);
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // One dial found the address silent; every other id there was refused without a dial.
    assert_eq!((timed_out, refused), (1, IDS - 1));
    assert_eq!(node.transport.dials_in_flight(), 0);
    let (datagrams, bytes) = *received.lock().unwrap();
    // One dial's Initial and its retransmissions (about 1,200 bytes each).
    assert!(datagrams <= 8, "{datagrams} datagrams, {bytes} bytes");
}

#[tokio::test]
async fn dials_in_flight_are_capped_node_wide() {
    const ADDRESSES: usize = 100;
    const CAP: usize = 8;
    let limits = Limits {
        connect_timeout: Duration::from_millis(1500),
        max_dials_in_flight: CAP,
        ..Limits::default()
    };
    let node = Node::with_limits(limits).await;
    let mut sinks = Vec::new();
    for _ in 0..ADDRESSES {
        sinks.push(silent_sink().await);
    }
    let mut dials = tokio::task::JoinSet::new();
    for (addr, _) in &sinks {
        let (transport, addr) = (node.transport.clone(), *addr);
        let id = NodeId::from_bytes(rand_id());
        dials.spawn(async move { transport.connect(addr, Some(id)).await });
    }
    let mut most_in_flight = 0;
    while !dials.is_empty() {
        most_in_flight = most_in_flight.max(node.transport.dials_in_flight());
        tokio::time::sleep(Duration::from_millis(10)).await;
        while dials.try_join_next().is_some() {}
    }
    assert_eq!(most_in_flight, CAP, "the cap is reached, never passed");
    // Dials beyond the cap waited for a slot as long as a dial may take; silent addresses
    // freed none in time, so at most one more round went out and the rest were refused.
    let contacted = sinks
        .iter()
        .filter(|(_, counts)| counts.lock().unwrap().0 > 0)
        .count();
    assert!(
        (CAP..=2 * CAP).contains(&contacted),
        "{contacted} addresses dialled"
    );
}

fn rand_id() -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut id = [0xaa; 16];
    id[..8].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    id
}

#[tokio::test]
async fn links_from_unprotected_peers_are_capped_and_protected_peers_keep_theirs() {
    const CAP: usize = 2;
    let mut server = Node::with_limits(Limits {
        max_unprotected_links: CAP,
        ..Limits::default()
    })
    .await;
    let member = Node::open().await;
    server.transport.protect([member.id()]);
    member
        .transport
        .send(server.id(), server.addr(), &direct(b"member"))
        .await
        .unwrap();
    assert_eq!(next_message(&mut server).await.0, member.id());
    let mut strangers = Vec::new();
    for i in 0..5u8 {
        let stranger = Node::open().await;
        stranger
            .transport
            .send(server.id(), server.addr(), &direct(&[i]))
            .await
            .unwrap();
        assert_eq!(next_message(&mut server).await.0, stranger.id());
        strangers.push(stranger);
        let links = server.transport.links();
        let unprotected = links.iter().filter(|l| l.peer != member.id()).count();
        assert!(unprotected <= CAP, "{unprotected} unprotected links");
        assert!(
            links.iter().any(|l| l.peer == member.id()),
            "the protected peer lost its link"
        );
    }
    // The most recent strangers are the ones kept.
    let last = strangers.last().unwrap().id();
    assert!(server.transport.links().iter().any(|l| l.peer == last));
}

#[tokio::test]
async fn a_handshake_flood_is_bounded_and_a_member_still_gets_through() {
    const FLOOD: usize = 300;
    let limits = Limits {
        max_unprotected_links: 16,
        max_handshakes: 8,
        ..Limits::default()
    };
    let mut server = Node::with_limits(limits).await;
    let member = Node::open().await;
    server.transport.protect([member.id()]);
    // The member is linked already, as a leaf-set neighbour is.
    member
        .transport
        .send(server.id(), server.addr(), &direct(b"before"))
        .await
        .unwrap();
    assert_eq!(next_message(&mut server).await.0, member.id());
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let (id, addr) = (server.id(), server.addr());
        flood.spawn(async move {
            let config = open_config();
            let client_config = tls::quinn_client_config(&config, Some(id)).unwrap();
            let endpoint = quinn::Endpoint::client(common::loopback()).unwrap();
            let connecting = endpoint.connect_with(client_config, addr, "wendy").unwrap();
            if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(5), connecting).await {
                tokio::time::sleep(Duration::from_millis(200)).await;
                conn.close(0u32.into(), b"");
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    member
        .transport
        .send(server.id(), server.addr(), &direct(b"during"))
        .await
        .unwrap();
    let from = server
        .next_matching(|event| match event {
            TransportEvent::Message { from, .. } => Some(from),
            _ => None,
        })
        .await;
    assert_eq!(from, member.id());
    while flood.join_next().await.is_some() {
        assert!(server.transport.links().len() <= 16 + 1);
    }
    assert!(server
        .transport
        .links()
        .iter()
        .any(|l| l.peer == member.id()));
}

/// One identity, one node: a second transport running a live node's key is refused by a
/// third node with `IdentityInUse` naming the live node's address, the live node's link stays
/// up, and a send addressed to the second's address reaches the live node (the second learns
/// of the refusal too).
#[tokio::test]
async fn a_second_link_for_a_live_identity_is_refused_naming_the_live_address() {
    let (hub, mut hub_events) = Node::open().await.serve();
    let config = common::open_config();
    let (first, mut first_events) = Node::bind(config.clone()).await.serve();
    let third_config = config.clone();
    let mut twin = Node::bind(config).await;
    assert_eq!(first.local_id(), twin.id());
    let id = first.local_id();
    first
        .connect(hub.local_addr(), Some(hub.local_id()))
        .await
        .unwrap();

    // The twin's handshake completes before the hub checks the first link; the refusal
    // closes the twin's link at once (or, if it comes first, fails the dial itself).
    match twin
        .transport
        .connect(hub.local_addr(), Some(hub.local_id()))
        .await
    {
        Err(ConnectError::IdentityInUse { live_at }) => assert_eq!(live_at, first.local_addr()),
        Err(other) => panic!("unexpected dial error: {other}"),
        Ok(_) => {
            let (live_at, reported_by) = twin
                .next_matching(|event| match event {
                    TransportEvent::IdentityInUse {
                        live_at,
                        reported_by,
                        ..
                    } => Some((live_at, reported_by)),
                    _ => None,
                })
                .await;
            assert_eq!(live_at, Some(first.local_addr()));
            assert_eq!(reported_by, hub.local_id());
        }
    }
    // The hub keeps the first link, at the first address.
    let links = hub.links();
    let link = links
        .iter()
        .find(|link| link.peer == id)
        .expect("hub link to the live id");
    assert_eq!(link.addr, first.local_addr());
    assert!(first.links().iter().any(|link| link.peer == hub.local_id()));
    // A send naming a third holder's address (one the hub has not heard from): the hub dials
    // it, finds the identity live elsewhere, refuses that link and delivers over the live one.
    let mut third = Node::bind(third_config).await;
    hub.send(id, third.addr(), &direct(b"to the live one"))
        .await
        .unwrap();
    let (from, body) = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Some(TransportEvent::Message { from, body, .. }) = first_events.recv().await {
                return (from, body);
            }
        }
    })
    .await
    .expect("the live node got the message");
    assert_eq!((from, body), (hub.local_id(), direct(b"to the live one")));
    let live_at = third
        .next_matching(|event| match event {
            TransportEvent::IdentityInUse { live_at, .. } => Some(live_at),
            _ => None,
        })
        .await;
    assert_eq!(live_at, Some(first.local_addr()));
    let links = hub.links();
    let to_id: Vec<_> = links.iter().filter(|link| link.peer == id).collect();
    assert_eq!(to_id.len(), 1, "{to_id:?}");
    assert_eq!(to_id[0].addr, first.local_addr());
    // The hub never reported the live node's link lost.
    while let Ok(event) = hub_events.try_recv() {
        if let TransportEvent::LinkLost { peer, reason } = event {
            assert_ne!(peer, id, "hub lost the live link: {reason:?}");
        }
    }
}

/// A restarted process: when the pooled link of an identity no longer answers (its process
/// hangs or died and the link has not timed out yet), a link from the same key at a new
/// address replaces it.
#[tokio::test]
async fn a_new_link_for_an_identity_whose_old_link_is_dead_replaces_it() {
    let (hub, mut hub_events) = Node::open().await.serve();
    let config = common::open_config();
    // The old process: its events are never read, so it answers no request.
    let old = Node::bind(config.clone()).await;
    let id = old.id();
    old.transport
        .connect(hub.local_addr(), Some(hub.local_id()))
        .await
        .unwrap();
    let (new, mut new_events) = Node::bind(config).await.serve();
    new.connect(hub.local_addr(), Some(hub.local_id()))
        .await
        .unwrap();
    // The hub reports the old link gone, then the new one up at the new address.
    let lost = tokio::time::timeout(HANG_GUARD, async {
        loop {
            match hub_events.recv().await {
                Some(TransportEvent::LinkLost { peer, reason }) if peer == id => return reason,
                Some(_) => {}
                None => panic!("hub events ended"),
            }
        }
    })
    .await
    .expect("the old link reported lost");
    assert_eq!(lost, LinkLostReason::ClosedLocally(CloseCode::Closed));
    eventually(|| {
        hub.links()
            .iter()
            .any(|link| link.peer == id && link.addr == new.local_addr())
    })
    .await;
    hub.send(id, new.local_addr(), &direct(b"welcome back"))
        .await
        .unwrap();
    let body = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Some(TransportEvent::Message { body, .. }) = new_events.recv().await {
                return body;
            }
        }
    })
    .await
    .expect("the restarted node got the message");
    assert_eq!(body, direct(b"welcome back"));
    drop(old);
}
