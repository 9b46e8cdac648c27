//! The service mesh end to end: real nodes over QUIC on loopback, real TCP services and clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wendy::id::NodeId;
use wendy::identity::{Certificate, Identity, MeshCa, Validity};
use wendy::mesh::{service_key, Mesh, MeshConfig, MeshError};
use wendy::node::{Events, Node, NodeBuilder, NodeError, NodeEvent};
use wendy::testing::{DelaySocket, RegionMap};
use wendy::transport::Admission;

use crate::common;
use common::process::NodeProc;
use common::HANG_GUARD;

struct Peer {
    node: Node,
    mesh: Mesh,
    events: Events,
}

impl Peer {
    async fn start(identity: Identity, config: MeshConfig) -> Self {
        Self::start_with(identity, None, Admission::Open, config).await
    }

    async fn start_with(
        identity: Identity,
        certificate: Option<Certificate>,
        admission: Admission,
        config: MeshConfig,
    ) -> Self {
        let builder = Node::builder(identity.clone()).admission(admission);
        Self::spawn(builder, identity, certificate, config).await
    }

    /// A node whose UDP socket delays datagrams as `socket`'s region map says.
    async fn start_in(identity: Identity, socket: Arc<DelaySocket>, config: MeshConfig) -> Self {
        let builder = Node::builder(identity.clone()).socket(socket);
        Self::spawn(builder, identity, None, config).await
    }

    async fn spawn(
        mut builder: NodeBuilder,
        identity: Identity,
        certificate: Option<Certificate>,
        config: MeshConfig,
    ) -> Self {
        if let Some(certificate) = certificate {
            builder = builder.certificate(certificate);
        }
        let (node, events) = builder.spawn().await.expect("spawn node");
        let (mesh, events) = Mesh::new(node.clone(), identity, events, config).expect("mesh");
        Self { node, mesh, events }
    }

    async fn stop(&self) {
        self.mesh.shutdown().await;
        self.node.shutdown().await;
    }

    /// Stops the node at once, without withdrawing anything (a crash, as peers see it).
    async fn crash(&self) {
        self.node.shutdown().await;
    }
}

/// `count` nodes (seeds `first..`) joined into one overlay through the first.
async fn cluster(first: u8, count: u8, config: &MeshConfig) -> Vec<Peer> {
    let mut peers = Vec::new();
    for seed in first..first + count {
        let peer = Peer::start(Identity::from_seed([seed; 32]), config.clone()).await;
        let bootstrap: Vec<SocketAddr> = peers
            .first()
            .map(|p: &Peer| p.node.addr())
            .into_iter()
            .collect();
        peer.node.join(&bootstrap).await.expect("join");
        peers.push(peer);
    }
    peers
}

/// A TCP echo server: echoes as it reads, then closes its side when the client closes its own.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut read, mut write) = tcp.split();
                if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                    let _ = write.shutdown().await;
                }
            });
        }
    });
    addr
}

/// A server that answers only after the client finished sending: it reads to the end, then
/// writes the bytes back reversed and closes.
async fn reply_after_eof_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut data = Vec::new();
                tcp.read_to_end(&mut data).await.unwrap();
                data.reverse();
                tcp.write_all(&data).await.unwrap();
                tcp.shutdown().await.unwrap();
            });
        }
    });
    addr
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Sends `data` through `addr` while reading the echo, half-closes, and returns what came back.
async fn echo_through(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut read, mut write) = tcp.into_split();
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        write.write_all(&data).await?;
        write.shutdown().await?;
        Ok::<_, std::io::Error>(write)
    });
    let mut echoed = Vec::new();
    read.read_to_end(&mut echoed).await?;
    let _write = writer.await.unwrap()?;
    Ok(echoed)
}

/// What a client of a forwarded port sees when no provider is reachable: the connection ends
/// (reset or closed) without a single byte. Returns the bytes read (must be none).
async fn expect_closed(addr: SocketAddr) -> usize {
    let mut tcp = match TcpStream::connect(addr).await {
        Ok(tcp) => tcp,
        // The reset can come so fast that it is reported by the connect itself.
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return 0,
        Err(error) => panic!("the forward listener does not accept: {error}"),
    };
    let _ = tcp.write_all(b"hello?").await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(HANG_GUARD, tcp.read_to_end(&mut buf))
        .await
        .expect("the connection was left hanging instead of being closed");
    match read {
        Ok(_) => buf.len(),
        Err(error) => {
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
            buf.len()
        }
    }
}

/// Polls `condition` until it holds (hang-guarded).
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let wait = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, wait)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what} never happened"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_connections_carry_one_mib_each_intact() {
    let peers = cluster(1, 3, &MeshConfig::default()).await;
    let (provider, consumer) = (&peers[0], &peers[2]);
    provider
        .mesh
        .expose("echo", &echo_server().await.to_string())
        .await
        .unwrap();
    let local = consumer
        .mesh
        .forward("127.0.0.1:0".parse().unwrap(), "echo")
        .await
        .unwrap();

    let mut clients = tokio::task::JoinSet::new();
    for i in 0..50u64 {
        clients.spawn(async move {
            let data = random_bytes(i, 1 << 20);
            let echoed = echo_through(local, &data).await.expect("tunnelled echo");
            (i, echoed == data, echoed.len())
        });
    }
    let mut intact = 0;
    while let Some(result) = tokio::time::timeout(HANG_GUARD, clients.join_next())
        .await
        .expect("hang guard")
    {
        let (i, same, len) = result.unwrap();
        assert!(
            same,
            "connection {i}: {len} bytes came back, not the 1 MiB sent"
        );
        intact += 1;
    }
    assert_eq!(intact, 50);
    let status = consumer.mesh.status();
    assert_eq!(status.forwarded.len(), 1);
    assert_eq!(status.forwarded[0].connections, 50);
    assert_eq!(status.forwarded[0].failures, 0);
    let exposed = provider.mesh.status().exposed;
    assert_eq!(exposed[0].name, "echo");
    assert_eq!(exposed[0].tunnels, 50);
    // Each tunnel carried 1 MiB each way; the counts land when both ends have closed.
    until("both ends count every tunnel's bytes", || {
        let forwarded = &consumer.mesh.status().forwarded[0];
        let exposed = &provider.mesh.status().exposed[0];
        [
            forwarded.bytes_sent,
            forwarded.bytes_received,
            exposed.bytes_sent,
            exposed.bytes_received,
        ] == [50 << 20; 4]
    })
    .await;
    for peer in &peers {
        peer.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_connection_still_receives_the_whole_answer() {
    let peers = cluster(11, 3, &MeshConfig::default()).await;
    let backend = reply_after_eof_server().await;
    peers[0]
        .mesh
        .expose("reverse", &backend.to_string())
        .await
        .unwrap();
    let local = peers[2]
        .mesh
        .forward("127.0.0.1:0".parse().unwrap(), "reverse")
        .await
        .unwrap();
    let data = random_bytes(7, 300_000);
    let mut tcp = TcpStream::connect(local).await.unwrap();
    tcp.write_all(&data).await.unwrap();
    // Our FIN must reach the server (it answers only after end of input) while our read side
    // stays open for the whole answer.
    tcp.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(HANG_GUARD, tcp.read_to_end(&mut answer))
        .await
        .expect("hang guard: the answer never ended")
        .unwrap();
    let mut expected = data;
    expected.reverse();
    assert_eq!(answer.len(), expected.len());
    assert!(answer == expected, "the answer was corrupted");
    for peer in &peers {
        peer.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_provider_is_found_and_a_vanished_one_gives_a_prompt_close() {
    // Short records, so the crashed provider's record does not linger in the registry.
    let config = MeshConfig::with_ttl(Duration::from_secs(6));
    let peers = cluster(21, 3, &config).await;
    let backend = echo_server().await.to_string();
    let provider = &peers[0];
    let consumer = &peers[2];
    provider.mesh.expose("svc", &backend).await.unwrap();
    let local = consumer
        .mesh
        .forward("127.0.0.1:0".parse().unwrap(), "svc")
        .await
        .unwrap();
    assert_eq!(echo_through(local, b"before").await.unwrap(), b"before");

    // The provider crashes; a new provider (new key, new port) exposes the same name.
    provider.crash().await;
    let restarted = Peer::start(Identity::from_seed([29; 32]), config.clone()).await;
    restarted.node.join(&[peers[1].node.addr()]).await.unwrap();
    restarted.mesh.expose("svc", &backend).await.unwrap();
    let echoed = tokio::time::timeout(HANG_GUARD, echo_through(local, b"after restart"))
        .await
        .expect("hang guard")
        .expect("new connections reach the restarted provider");
    assert_eq!(echoed, b"after restart");
    assert_eq!(restarted.mesh.status().exposed[0].tunnels, 1);

    // The provider goes away for good: a new connection is closed without data.
    restarted.stop().await;
    let failures_before = consumer.mesh.status().forwarded[0].failures;
    assert_eq!(expect_closed(local).await, 0);
    let status = consumer.mesh.status();
    assert_eq!(status.forwarded[0].failures, failures_before + 1);
    let error = status.forwarded[0].last_error.clone().unwrap();
    assert!(error.contains("svc"), "unclear error: {error}");
    // A name nobody ever exposed: the same prompt close, with "no provider".
    let nobody = consumer
        .mesh
        .forward("127.0.0.1:0".parse().unwrap(), "nobody-home")
        .await
        .unwrap();
    assert_eq!(expect_closed(nobody).await, 0);
    assert!(matches!(
        consumer.mesh.lookup("nobody-home").await,
        Ok(records) if records.is_empty()
    ));
    let error = consumer.mesh.status().forwarded[1]
        .last_error
        .clone()
        .unwrap();
    assert!(error.contains("no provider"), "unclear error: {error}");
    for peer in &peers[1..] {
        peer.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_move_to_a_closer_node_and_lookups_survive_the_root_dying() {
    // Republishing is pushed far away: only replication can move the records.
    let config = MeshConfig::with_ttl(Duration::from_secs(3600));
    let peers = cluster(31, 5, &config).await;
    let (provider, consumer) = (&peers[0], &peers[1]);
    let ids: Vec<NodeId> = peers.iter().map(|p| p.node.id()).collect();
    // A name whose root is neither the provider nor the consumer.
    let name = (0..)
        .map(|i| format!("db-{i}"))
        .find(|name| {
            let root = service_key(name).closest(ids.iter().copied()).unwrap();
            root != ids[0] && root != ids[1]
        })
        .unwrap();
    let key = service_key(&name);
    provider
        .mesh
        .expose(&name, &echo_server().await.to_string())
        .await
        .unwrap();
    // The root and the next two closest nodes (the oracle's choice) hold it.
    let mut by_closeness: Vec<usize> = (0..peers.len()).collect();
    by_closeness.sort_by(|&a, &b| key.cmp_closeness(ids[a], ids[b]));
    until("the three closest nodes hold the record", || {
        by_closeness[..3]
            .iter()
            .all(|&i| peers[i].mesh.status().records_held == 1)
    })
    .await;

    // The root that took the publication dies: the next closest node, which has the record only
    // because the root replicated it, answers; and the node that is now among the three closest
    // is handed the record.
    let root = by_closeness[0];
    peers[root].crash().await;
    let found = tokio::time::timeout(HANG_GUARD, consumer.mesh.lookup(&name))
        .await
        .expect("hang guard")
        .expect("lookup after the root died");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].provider, provider.node.id());
    until("the new third closest node holds the record", || {
        peers[by_closeness[3]].mesh.status().records_held == 1
    })
    .await;

    // A new node closer to the key than everyone: it becomes root and is handed the record.
    let newcomer_identity = (100u8..=255)
        .map(|seed| Identity::from_seed([seed; 32]))
        .find(|id| {
            let root = key.closest(ids.iter().copied()).unwrap();
            key.is_closer(id.node_id(), root)
        })
        .expect("some seed gives a closer id");
    let newcomer = Peer::start(newcomer_identity, config.clone()).await;
    newcomer.node.join(&[consumer.node.addr()]).await.unwrap();
    until("the new root holds the record", || {
        newcomer.mesh.status().records_held == 1
    })
    .await;

    // This root dies too: a replica answers again.
    newcomer.crash().await;
    let found = tokio::time::timeout(HANG_GUARD, consumer.mesh.lookup(&name))
        .await
        .expect("hang guard")
        .expect("lookup after the root died");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].provider, provider.node.id());
    assert_eq!(found[0].addr, provider.node.addr());
    // And a tunnel through the consumer works.
    let local = consumer
        .mesh
        .forward("127.0.0.1:0".parse().unwrap(), &name)
        .await
        .unwrap();
    assert_eq!(
        echo_through(local, b"still here").await.unwrap(),
        b"still here"
    );
    for (i, peer) in peers.iter().enumerate() {
        if i != root {
            peer.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_ca_certificate_can_neither_expose_nor_reach() {
    let ca = MeshCa::generate("test mesh", Validity::days_from_now(30)).unwrap();
    let admission = Admission::Ca {
        roots: vec![ca.certificate().der().clone()],
    };
    let mut members = Vec::new();
    for seed in 41..44u8 {
        let identity = Identity::from_seed([seed; 32]);
        let certificate = ca
            .issue(&identity.public_key(), Validity::days_from_now(30))
            .unwrap();
        let peer = Peer::start_with(
            identity,
            Some(certificate),
            admission.clone(),
            MeshConfig::default(),
        )
        .await;
        let bootstrap: Vec<SocketAddr> = members
            .first()
            .map(|p: &Peer| p.node.addr())
            .into_iter()
            .collect();
        peer.node.join(&bootstrap).await.unwrap();
        members.push(peer);
    }
    members[0]
        .mesh
        .expose("echo", &echo_server().await.to_string())
        .await
        .unwrap();
    // An admitted node reaches the service.
    let local = members[2]
        .mesh
        .forward("127.0.0.1:0".parse().unwrap(), "echo")
        .await
        .unwrap();
    assert_eq!(echo_through(local, b"member").await.unwrap(), b"member");

    // The outsider has a valid but self-signed certificate.
    let outsider = Peer::start_with(
        Identity::from_seed([49; 32]),
        None,
        admission.clone(),
        MeshConfig::default(),
    )
    .await;
    assert!(outsider.node.join(&[members[0].node.addr()]).await.is_err());
    // Refused in the handshake, it never joined, so it has no overlay to publish to or look
    // anything up in (the admission check itself is the failed join above)...
    let exposed = outsider.mesh.expose("evil", "127.0.0.1:9").await;
    assert!(
        matches!(exposed, Err(MeshError::Node(NodeError::NotJoined))),
        "{exposed:?}"
    );
    let looked_up = outsider.mesh.lookup("echo").await;
    assert!(
        matches!(looked_up, Err(MeshError::Node(NodeError::NotJoined))),
        "{looked_up:?}"
    );
    // ...and a member refuses it even when it knows the member's id and address.
    let direct = outsider
        .node
        .open_stream_to(members[0].node.id(), members[0].node.addr(), "echo")
        .await;
    assert!(
        direct.is_err(),
        "a member accepted a stream from an outsider"
    );
    let outsider_local = outsider
        .mesh
        .forward("127.0.0.1:0".parse().unwrap(), "echo")
        .await
        .unwrap();
    assert_eq!(expect_closed(outsider_local).await, 0);
    assert_eq!(outsider.mesh.status().forwarded[0].failures, 1);
    // The members hold no record from it and opened no tunnel for it.
    assert!(members[1].mesh.lookup("evil").await.unwrap().is_empty());
    assert_eq!(members[0].mesh.status().exposed[0].tunnels, 1);
    outsider.stop().await;
    for peer in &members {
        peer.stop().await;
    }
}

/// The in-band tag that told mesh payloads apart before payloads had a kind.
const OLD_MESH_TAG: [u8; 8] = [0xFF, b'w', b'm', b'e', b's', b'h', b'/', b'1'];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_still_sees_its_own_events() {
    let mut peers = cluster(51, 3, &MeshConfig::default()).await;
    // Mesh traffic: every node's registry sees publishes and lookups.
    peers[0]
        .mesh
        .expose("web", &echo_server().await.to_string())
        .await
        .unwrap();
    assert_eq!(peers[1].mesh.lookup("web").await.unwrap().len(), 1);
    // Application traffic: a routed message and a direct one, both starting with what mesh
    // messages once started with (the 8-byte tag, then a mesh probe): the application's all the
    // same, never taken for the mesh's.
    let routed = [OLD_MESH_TAG.as_slice(), b"\x06app routed"].concat();
    let direct = [OLD_MESH_TAG.as_slice(), b"\x06app direct"].concat();
    let ids: Vec<NodeId> = peers.iter().map(|p| p.node.id()).collect();
    let key = wendy::id::Key::from_name("room:lobby");
    let root = key.closest(ids.iter().copied()).unwrap();
    peers[1].node.route(key, routed.clone()).await.unwrap();
    let target = ids[2];
    peers[0].node.send(target, direct.clone()).await.unwrap();

    let mut seen_routed = false;
    let mut seen_direct = false;
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !(seen_routed && seen_direct) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hang guard: app events missing"
        );
        for peer in &mut peers {
            while let Some(event) = peer.events.try_recv() {
                match event {
                    NodeEvent::Deliver(d) => {
                        assert_eq!(d.payload, routed);
                        assert_eq!(peer.node.id(), root);
                        seen_routed = true;
                    }
                    NodeEvent::Direct { payload, .. } => {
                        assert_eq!(payload, direct);
                        assert_eq!(peer.node.id(), target);
                        seen_direct = true;
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for peer in &peers {
        peer.stop().await;
    }
}

/// A blocking TCP echo server on a thread (for the process test, which has no runtime).
fn blocking_echo_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            std::thread::spawn(move || {
                let mut read = tcp.try_clone().unwrap();
                let mut write = tcp;
                if std::io::copy(&mut read, &mut write).is_ok() {
                    let _ = write.shutdown(std::net::Shutdown::Write);
                }
            });
        }
    });
    addr
}

/// Echoes `data` through `addr` with blocking sockets: writes on a thread, reads here.
fn blocking_echo_through(addr: &str, data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(HANG_GUARD))?;
    let mut write = tcp.try_clone()?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        write.write_all(&data)?;
        write.shutdown(std::net::Shutdown::Write)
    });
    let mut read = tcp;
    let mut echoed = Vec::new();
    let result = read.read_to_end(&mut echoed);
    let _ = writer.join();
    result.map(|_| echoed)
}

#[test]
fn wendy_node_processes_expose_and_forward_in_a_closed_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let ca = MeshCa::generate("cli mesh", Validity::days_from_now(30)).unwrap();
    ca.save(&dir.path().join("meshca"), false).unwrap();
    let ca_cert = path("meshca/ca.crt");
    for name in ["a", "b", "c", "x"] {
        let identity = Identity::generate();
        identity
            .save(&dir.path().join(format!("{name}.key")), false)
            .unwrap();
        let certificate = if name == "x" {
            // The outsider's certificate is self-signed, not from the mesh CA.
            identity.self_signed_certificate(Validity::days_from_now(30))
        } else {
            ca.issue(&identity.public_key(), Validity::days_from_now(30))
        };
        certificate
            .unwrap()
            .save(&dir.path().join(format!("{name}.crt")), false)
            .unwrap();
    }
    let member = |name: &str| {
        vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--key".to_owned(),
            path(&format!("{name}.key")),
            "--cert".to_owned(),
            path(&format!("{name}.crt")),
            "--ca".to_owned(),
            ca_cert.clone(),
        ]
    };
    let echo = blocking_echo_server();
    let mut a_args = member("a");
    a_args.extend(["--expose".to_owned(), format!("echo={echo}")]);
    let mut a = NodeProc::start("a", &a_args);
    let addr_a = a.next_event("listening")["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    a.next_event("joined");
    let exposed = a.next_event("exposed");
    assert_eq!(exposed["name"], "echo");
    assert_eq!(exposed["target"], echo.to_string());

    let mut b_args = member("b");
    b_args.extend(["--join".to_owned(), addr_a.clone()]);
    let mut b = NodeProc::start("b", &b_args);
    b.next_event("joined");

    // c takes its services from the config file.
    std::fs::write(
        dir.path().join("c.toml"),
        format!("join = [\"{addr_a}\"]\nforward = [\"127.0.0.1:0=echo\"]\n"),
    )
    .unwrap();
    let mut c_args = member("c");
    c_args.extend(["--config".to_owned(), path("c.toml")]);
    let mut c = NodeProc::start("c", &c_args);
    let forwarding = c.next_event("forwarding");
    assert_eq!(forwarding["name"], "echo");
    let local = forwarding["listen"].as_str().unwrap().to_owned();

    let data = random_bytes(99, 200_000);
    let echoed = blocking_echo_through(&local, &data).expect("echo through wendy node");
    assert!(echoed == data, "{} bytes came back corrupted", echoed.len());

    let status = c.status();
    assert_eq!(status["forwarded"][0]["name"], "echo");
    assert_eq!(status["forwarded"][0]["listen"], local.as_str());
    assert_eq!(status["forwarded"][0]["connections"], 1);
    let status = a.status();
    assert_eq!(status["exposed"][0]["name"], "echo");
    assert_eq!(status["exposed"][0]["tunnels"], 1);

    // A node without a certificate from the mesh CA cannot join, so it cannot expose or reach.
    let x_args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--key".to_owned(),
        path("x.key"),
        "--join".to_owned(),
        addr_a.clone(),
        "--expose".to_owned(),
        format!("evil={echo}"),
        "--forward".to_owned(),
        "127.0.0.1:0=echo".to_owned(),
    ];
    let mut x = NodeProc::start("x", &x_args);
    let error = x.next_event("error");
    assert_eq!(error["fatal"], true, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("cannot join"),
        "{error}"
    );
    assert!(!x.wait_exit().success());
    assert!(
        !x.printed("exposed") && !x.printed("forwarding"),
        "{}",
        x.context()
    );

    // The provider leaves: a new connection through c is closed without data, promptly.
    a.command("leave");
    a.next_event("left");
    match blocking_echo_through(&local, b"anyone?") {
        Ok(echoed) => assert!(echoed.is_empty(), "{echoed:?}"),
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}"),
    }
    let status = c.status();
    assert_eq!(status["forwarded"][0]["failures"], 1);
    assert!(status["forwarded"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("echo"));
    drop(b);
}

/// A provider whose service is down refuses the tunnel with the code meant for exactly that,
/// and the consumer reports it as such (not as a missing service or a busy provider).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_cannot_reach_its_service_is_reported_as_such() {
    let peers = cluster(71, 2, &MeshConfig::default()).await;
    let (provider, consumer) = (&peers[0], &peers[1]);
    // A port nobody listens on: bound, then released.
    let down = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    provider
        .mesh
        .expose("down", &down.to_string())
        .await
        .unwrap();
    let connected = tokio::time::timeout(HANG_GUARD, consumer.mesh.connect("down"))
        .await
        .expect("hang guard");
    match connected {
        Err(MeshError::Unreachable {
            tried, last_error, ..
        }) => {
            assert_eq!(tried, 1);
            assert!(
                last_error.contains("cannot reach its service"),
                "unclear error: {last_error}"
            );
        }
        other => panic!(
            "expected an unreachable service, got {:?}",
            other.map(|_| ())
        ),
    }
    assert_eq!(provider.mesh.status().exposed[0].target_failures, 1);
    for peer in &peers {
        peer.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_serves_no_more_tunnels_than_allowed() {
    let config = MeshConfig {
        max_provider_tunnels: 1,
        ..MeshConfig::default()
    };
    let peers = cluster(61, 2, &config).await;
    let (provider, consumer) = (&peers[0], &peers[1]);
    provider
        .mesh
        .expose("echo", &echo_server().await.to_string())
        .await
        .unwrap();
    let local = consumer
        .mesh
        .forward("127.0.0.1:0".parse().unwrap(), "echo")
        .await
        .unwrap();
    // One tunnel held open (a round trip proves it is established)...
    let mut held = TcpStream::connect(local).await.unwrap();
    held.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    held.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");
    // ...so the next one is refused and closed, not queued, and the consumer knows why.
    assert_eq!(expect_closed(local).await, 0);
    assert_eq!(provider.mesh.status().exposed[0].target_failures, 1);
    let error = consumer.mesh.status().forwarded[0]
        .last_error
        .clone()
        .unwrap();
    assert!(error.contains("as many tunnels"), "unclear error: {error}");
    // Once the first is closed, tunnels are served again.
    drop(held);
    let wait = async {
        loop {
            if let Ok(echoed) = echo_through(local, b"again").await {
                if echoed == b"again" {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, wait)
        .await
        .expect("hang guard: tunnels never served again");
    for peer in &peers {
        peer.stop().await;
    }
}

/// Providers are ranked by the link's RTT: with one provider 1 ms away and one 80 ms away
/// (emulated by a delaying socket per node), every connection goes to the near one once both
/// RTTs are known. When every provider falls silent, each attempt waits a few of that
/// provider's RTTs (not the whole connect timeout) before the next is tried, and a connection
/// gives up at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_go_to_the_nearest_provider_and_give_up_at_the_deadline() {
    let map = RegionMap::three_regions();
    // Records stay cached: the last connection needs no registry answer.
    let config = MeshConfig {
        lookup_cache: Duration::from_secs(3600),
        ..MeshConfig::default()
    };
    // The fourth member gives up early: its deadline is shorter than one attempt's timeout
    // (a few RTTs plus what a provider's own connection may take, above 300 ms).
    let impatient = MeshConfig {
        connect_timeout: Duration::from_secs(5),
        connect_deadline: Duration::from_millis(250),
        ..config.clone()
    };
    let regions = [0, 0, 2, 1]; // consumer, near provider, far provider, impatient consumer
    let mut peers: Vec<Peer> = Vec::new();
    let mut sockets = Vec::new();
    for (i, region) in regions.into_iter().enumerate() {
        let socket = DelaySocket::bind("127.0.0.1:0".parse().unwrap(), &map, region).unwrap();
        sockets.push(socket.clone());
        let identity = Identity::from_seed([41 + i as u8; 32]);
        let peer_config = if i == 3 { &impatient } else { &config };
        let peer = Peer::start_in(identity, socket, peer_config.clone()).await;
        let bootstrap: Vec<SocketAddr> = peers.first().map(|p| p.node.addr()).into_iter().collect();
        peer.node.join(&bootstrap).await.expect("join");
        peers.push(peer);
    }
    let (consumer, near, far) = (&peers[0], &peers[1], &peers[2]);
    let backend = echo_server().await.to_string();
    near.mesh.expose("svc", &backend).await.unwrap();
    far.mesh.expose("svc", &backend).await.unwrap();
    // A lookup opens links to providers whose RTT is unknown.
    let records = consumer.mesh.lookup("svc").await.unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    let (near_id, far_id) = (near.node.id(), far.node.id());
    until("the consumer knows both providers' RTT", || {
        consumer.node.rtt(near_id).is_some() && consumer.node.rtt(far_id).is_some()
    })
    .await;
    let (near_rtt, far_rtt) = (consumer.node.rtt(near_id), consumer.node.rtt(far_id));
    assert!(near_rtt < far_rtt, "near {near_rtt:?}, far {far_rtt:?}");

    for round in 0..5 {
        let mut stream = consumer.mesh.connect("svc").await.expect("a tunnel");
        stream.send.write_all(b"ping").await.unwrap();
        stream.send.finish().unwrap();
        let echoed = stream.recv.read_to_end(64).await.unwrap();
        assert_eq!(echoed, b"ping", "round {round}");
    }
    assert_eq!(near.mesh.status().exposed[0].tunnels, 5);
    assert_eq!(far.mesh.status().exposed[0].tunnels, 0);

    // Both providers fall silent: the impatient consumer's first attempt spends its whole
    // deadline, and the second provider is not tried.
    let impatient = &peers[3];
    assert_eq!(impatient.mesh.lookup("svc").await.unwrap().len(), 2);
    sockets[1].silence();
    sockets[2].silence();
    match impatient.mesh.connect("svc").await {
        Err(MeshError::Unreachable {
            tried, last_error, ..
        }) => {
            assert_eq!(tried, 1, "{last_error}");
            assert!(last_error.contains("deadline"), "{last_error}");
        }
        Err(other) => panic!("expected Unreachable, got {other}"),
        Ok(_) => panic!("a silent provider accepted a tunnel"),
    }
    // The patient consumer tries both, each for a timeout derived from its RTT: well under a
    // second each, not the 5 s connect timeout.
    match consumer.mesh.connect("svc").await {
        Err(MeshError::Unreachable {
            tried, last_error, ..
        }) => {
            assert_eq!(tried, 2, "{last_error}");
            assert!(
                last_error.starts_with("no tunnel within") && last_error.ends_with("ms"),
                "{last_error}"
            );
        }
        Err(other) => panic!("expected Unreachable, got {other}"),
        Ok(_) => panic!("a silent provider accepted a tunnel"),
    }
    for (i, peer) in peers.iter().enumerate() {
        if i == 1 || i == 2 {
            peer.crash().await;
        } else {
            peer.stop().await;
        }
    }
}

/// A service exposed by a private node (reached only through relays, or over links it dialled
/// itself) is forwarded by another member: concurrent 1 MiB transfers arrive intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_exposed_by_a_private_node_is_forwarded_intact() {
    use wendy::relay::{RelayConfig, RelayLimits};
    let config = MeshConfig::default();
    let mut relays: Vec<Peer> = Vec::new();
    for seed in 90..92u8 {
        let identity = Identity::from_seed([seed; 32]);
        let builder = Node::builder(identity.clone()).relay(RelayConfig {
            serve: Some(RelayLimits::default()),
            ..RelayConfig::default()
        });
        let peer = Peer::spawn(builder, identity, None, config.clone()).await;
        let bootstrap: Vec<SocketAddr> = relays.iter().map(|p| p.node.addr()).take(1).collect();
        peer.node.join(&bootstrap).await.expect("join");
        relays.push(peer);
    }
    let relay_addrs: Vec<SocketAddr> = relays.iter().map(|p| p.node.addr()).collect();
    let identity = Identity::from_seed([92; 32]);
    let builder = Node::builder(identity.clone()).relay(RelayConfig {
        private: true,
        relays: relay_addrs.clone(),
        ..RelayConfig::default()
    });
    let provider = Peer::spawn(builder, identity, None, config.clone()).await;
    provider.node.join(&relay_addrs[..1]).await.expect("join");
    assert!(wendy::relay::is_synthetic(provider.node.addr()));
    let consumer = Peer::start(Identity::from_seed([93; 32]), config).await;
    consumer.node.join(&relay_addrs[1..]).await.expect("join");
    provider
        .mesh
        .expose("echo", &echo_server().await.to_string())
        .await
        .unwrap();
    let local = consumer
        .mesh
        .forward("127.0.0.1:0".parse().unwrap(), "echo")
        .await
        .unwrap();
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..10u64 {
        clients.spawn(async move {
            let data = random_bytes(100 + i, 1 << 20);
            let echoed = echo_through(local, &data).await.expect("tunnelled echo");
            (i, echoed == data)
        });
    }
    while let Some(result) = tokio::time::timeout(HANG_GUARD, clients.join_next())
        .await
        .expect("hang guard")
    {
        let (i, same) = result.unwrap();
        assert!(same, "connection {i} came back altered or short");
    }
    assert_eq!(consumer.mesh.status().forwarded[0].connections, 10);
}
