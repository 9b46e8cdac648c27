//! The runtime's concurrency on in-memory links ([`FakeLinks`]): no sockets, no QUIC, the real
//! Pastry core. A message handed to the fake goes to the receiver's [`Inbox`] on a delivery task,
//! as a transport reader task would hand it; a test can hold a node's deliveries and feed them
//! itself to place an event between an input and its follow-up.
//!
//! Timeouts here are hang guards only: every assertion is about what happens, not how fast.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::driver::{self, Runtime, Setup};
use super::links::Links;
use super::{Command, Counters, ForwardAction, ForwardHook, NodeConfig, NodeError, NodeEvent};
use crate::id::{Key, NodeId};
use crate::pastry::{Message, PeerInfo};
use crate::task::step_aside;
use crate::transport::{ConnectError, Inbox, LinkInfo, LinkLostReason, SendError, TransportEvent};
use crate::wire::{envelope, Body, PayloadKind, WireError};

/// Long enough for anything here to finish on a loaded machine; reached only by a hang.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// An address whose dial never finishes (a black hole).
const BLACK_HOLE: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 9, 9)),
    9,
);

/// The in-memory network: who is at which address, and whether their links are up.
#[derive(Default)]
struct Net {
    members: Mutex<HashMap<NodeId, Member>>,
    /// Every send that failed: sender, receiver, what.
    failed_sends: Mutex<Vec<(NodeId, NodeId, Body)>>,
}

struct Member {
    addr: SocketAddr,
    up: bool,
    deliveries: mpsc::UnboundedSender<TransportEvent>,
}

impl Net {
    fn member(
        &self,
        id: NodeId,
    ) -> Option<(SocketAddr, bool, mpsc::UnboundedSender<TransportEvent>)> {
        let members = self.members.lock().unwrap();
        members
            .get(&id)
            .map(|m| (m.addr, m.up, m.deliveries.clone()))
    }

    fn at(&self, addr: SocketAddr) -> Option<(NodeId, bool)> {
        let members = self.members.lock().unwrap();
        members
            .iter()
            .find(|(_, m)| m.addr == addr)
            .map(|(id, m)| (*id, m.up))
    }

    fn set_up(&self, id: NodeId, up: bool) {
        if let Some(member) = self.members.lock().unwrap().get_mut(&id) {
            member.up = up;
        }
    }
}

/// [`Links`] on the in-memory [`Net`]: a send to an up peer is delivered, anything involving a
/// down peer (or the down node itself) fails as an unreachable peer would.
#[derive(Clone)]
struct FakeLinks {
    me: PeerInfo,
    net: Arc<Net>,
    inbox: Arc<OnceLock<Weak<dyn Inbox>>>,
    shut_down: Arc<AtomicBool>,
}

impl FakeLinks {
    fn unreachable(&self, peer: NodeId) -> Option<SocketAddr> {
        let me_up = self.net.member(self.me.id).is_some_and(|(_, up, _)| up);
        match self.net.member(peer) {
            Some((_, true, _)) if me_up => None,
            Some((addr, _, _)) => Some(addr),
            None => Some(BLACK_HOLE),
        }
    }
}

impl Links for FakeLinks {
    fn send(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        body: &Body,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        let result = match (self.unreachable(peer), self.net.member(peer)) {
            (None, Some((_, _, deliveries))) => {
                let _ = deliveries.send(TransportEvent::Message {
                    from: self.me.id,
                    from_addr: self.me.addr,
                    body: body.clone(),
                });
                Ok(())
            }
            _ => {
                let failed = (self.me.id, peer, body.clone());
                self.net.failed_sends.lock().unwrap().push(failed);
                Err(SendError::Connect(ConnectError::Timeout(addr)))
            }
        };
        std::future::ready(result)
    }

    fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> impl Future<Output = Result<NodeId, ConnectError>> + Send {
        let found = self.net.at(addr);
        let me_up = self.net.member(self.me.id).is_some_and(|(_, up, _)| up);
        async move {
            if addr == BLACK_HOLE {
                std::future::pending::<()>().await;
            }
            match found {
                Some((id, true)) if me_up && expected.map_or(true, |e| e == id) => Ok(id),
                _ => Err(ConnectError::Timeout(addr)),
            }
        }
    }

    fn rtt(&self, peer: NodeId) -> Option<Duration> {
        self.unreachable(peer)
            .is_none()
            .then_some(Duration::from_millis(1))
    }

    fn links(&self) -> Vec<LinkInfo> {
        Vec::new()
    }

    /// Every reachable member counts as linked: the in-memory network has no handshakes.
    fn link_addr(&self, peer: NodeId) -> Option<SocketAddr> {
        match self.unreachable(peer) {
            None => self.net.member(peer).map(|(addr, _, _)| addr),
            Some(_) => None,
        }
    }

    fn set_inbox(&self, inbox: Weak<dyn Inbox>) {
        let _ = self.inbox.set(inbox);
    }

    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        self.shut_down.store(true, Ordering::SeqCst);
        self.net.set_up(self.me.id, false);
        std::future::ready(())
    }
}

/// One node's runtime on the fake network, with the ends a test drives it by.
struct TestNode {
    me: PeerInfo,
    runtime: Arc<Runtime<FakeLinks>>,
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<NodeEvent>,
    transport_events: mpsc::Sender<TransportEvent>,
    counters: Arc<Counters>,
    /// While set, deliveries go to `held` instead of the runtime.
    hold: Arc<AtomicBool>,
    held: mpsc::UnboundedReceiver<TransportEvent>,
}

/// Settings that make a silent peer declared dead soon (the defaults take tens of seconds).
fn config() -> NodeConfig {
    let mut config = NodeConfig::default();
    config.pastry.probe_timeout = Duration::from_millis(200);
    config.pastry.probe_retries = 1;
    config.pastry.ack_timeout = Duration::from_millis(200);
    config
}

fn start(net: &Arc<Net>, n: u8) -> TestNode {
    start_with_hook(net, n, None)
}

fn start_with_hook(net: &Arc<Net>, n: u8, forward: Option<Arc<ForwardHook>>) -> TestNode {
    let me = PeerInfo {
        id: Key::from_name(&format!("node {n}")).to_node_id(),
        addr: SocketAddr::from(([10, 0, 0, n], 4000)),
    };
    let links = FakeLinks {
        me,
        net: net.clone(),
        inbox: Arc::new(OnceLock::new()),
        shut_down: Arc::new(AtomicBool::new(false)),
    };
    let (deliveries, mut delivery_rx) = mpsc::unbounded_channel();
    net.members.lock().unwrap().insert(
        me.id,
        Member {
            addr: me.addr,
            up: true,
            deliveries,
        },
    );
    let hold = Arc::new(AtomicBool::new(false));
    let (held_tx, held) = mpsc::unbounded_channel();
    // The transport's reader task: hands each message to the inbox and settles after stepping
    // aside, as `Transport` does.
    let inbox = links.inbox.clone();
    let holding = hold.clone();
    tokio::spawn(async move {
        while let Some(event) = delivery_rx.recv().await {
            if holding.load(Ordering::SeqCst) {
                let _ = held_tx.send(event);
                continue;
            }
            let Some(inbox) = inbox.get().and_then(Weak::upgrade) else {
                return;
            };
            if inbox.event(event) {
                step_aside().await;
                inbox.settle();
            }
        }
    });
    let (commands, command_rx) = mpsc::channel(16);
    let (events_tx, events) = mpsc::channel(1024);
    let (transport_events, transport_rx) = mpsc::channel(1024);
    let counters = Arc::new(Counters::default());
    let runtime = driver::spawn(Setup {
        me,
        config: config(),
        seed: u64::from(n),
        transport: links,
        transport_events: transport_rx,
        commands: command_rx,
        events: events_tx,
        counters: counters.clone(),
        forward,
        origin_auth: None,
        reach: None,
        punch: None,
        relays: None,
    });
    TestNode {
        me,
        runtime,
        commands,
        events,
        transport_events,
        counters,
        hold,
        held,
    }
}

impl TestNode {
    /// Sends a join command; the receiver answers when the join is done.
    async fn start_join(
        &self,
        bootstrap: &[SocketAddr],
    ) -> oneshot::Receiver<Result<(), NodeError>> {
        let (reply, answer) = oneshot::channel();
        // A stopped node's task has dropped its end: the reply is then dropped with the command.
        let _ = self
            .commands
            .send(Command::Join {
                bootstrap: bootstrap.to_vec(),
                reply,
            })
            .await;
        answer
    }

    async fn join(&self, bootstrap: &[SocketAddr]) -> Result<(), NodeError> {
        let answer = self.start_join(bootstrap).await;
        guard(answer).await.unwrap()
    }

    fn leaf_set(&self) -> Vec<NodeId> {
        self.runtime.status().unwrap().leaf_set
    }

    /// The next event `pick` accepts, skipping others.
    async fn next_event<T>(&mut self, mut pick: impl FnMut(NodeEvent) -> Option<T>) -> T {
        guard(async {
            loop {
                let event = self.events.recv().await.expect("events ended");
                if let Some(found) = pick(event) {
                    return found;
                }
            }
        })
        .await
    }
}

async fn guard<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .expect("hang guard")
}

/// Two nodes: `a` started the overlay and `b` joined through it.
async fn pair() -> (Arc<Net>, TestNode, TestNode) {
    let net = Arc::new(Net::default());
    let a = start(&net, 1);
    let b = start(&net, 2);
    a.join(&[]).await.unwrap();
    b.join(&[a.me.addr]).await.unwrap();
    (net, a, b)
}

/// Runs a future to completion on a plain thread (no tokio context).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_a_member_completes_and_each_holds_the_other_in_its_leaf_set() {
    let (_net, mut a, mut b) = pair().await;
    let leaf_set = b
        .next_event(|event| match event {
            NodeEvent::Joined { leaf_set } => Some(leaf_set),
            _ => None,
        })
        .await;
    assert_eq!(leaf_set, vec![a.me.id]);
    a.next_event(|event| matches!(event, NodeEvent::NodeJoined(id) if id == b.me.id).then_some(()))
        .await;
    assert_eq!(a.leaf_set(), vec![b.me.id]);
    assert_eq!(b.leaf_set(), vec![a.me.id]);
    // A second join of an active node answers at once.
    b.join(&[a.me.addr]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_called_from_a_plain_thread_is_delivered_at_the_root() {
    let (_net, a, mut b) = pair().await;
    let runtime = a.runtime.clone();
    let key = Key::from(b.me.id);
    let routed = std::thread::spawn(move || {
        (0..10u8)
            .map(|i| block_on(runtime.route(key, PayloadKind::Application, &[i])))
            .collect::<Vec<_>>()
    });
    let routed = guard(tokio::task::spawn_blocking(move || routed.join().unwrap()))
        .await
        .unwrap();
    assert!(routed.iter().all(Result::is_ok), "{routed:?}");
    let mut payloads = Vec::new();
    while payloads.len() < 10 {
        let delivery = b
            .next_event(|event| match event {
                NodeEvent::Deliver(delivery) => Some(delivery),
                _ => None,
            })
            .await;
        assert_eq!(delivery.origin, a.me.id);
        payloads.push(delivery.payload[0]);
    }
    payloads.sort_unstable();
    assert_eq!(payloads, (0..10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_answers_calls_in_flight_with_closed_and_ends_the_events() {
    let net = Arc::new(Net::default());
    let a = start(&net, 1);
    let mut b = start(&net, 2);
    a.join(&[]).await.unwrap();
    // A join that waits on a dial that never finishes.
    let joining = b.start_join(&[BLACK_HOLE]).await;
    // Callers on plain threads, routing until the node refuses them.
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let runtime = b.runtime.clone();
            std::thread::spawn(move || loop {
                match block_on(runtime.route(Key::from_name("k"), PayloadKind::Application, &[1])) {
                    Err(NodeError::NotJoined) => std::thread::yield_now(),
                    other => return other,
                }
            })
        })
        .collect();
    b.runtime.stop();
    // Answered Closed, or dropped unread if the task stopped before it took the command:
    // `Node::join` reads a dropped reply as Closed too.
    let joined = guard(joining).await;
    assert!(
        matches!(joined, Ok(Err(NodeError::Closed)) | Err(_)),
        "{joined:?}"
    );
    for caller in callers {
        let answer = guard(tokio::task::spawn_blocking(move || caller.join().unwrap()))
            .await
            .unwrap();
        assert!(matches!(answer, Err(NodeError::Closed)), "{answer:?}");
    }
    assert!(matches!(b.runtime.status(), Err(NodeError::Closed)));
    assert!(matches!(
        b.runtime.address_of(a.me.id),
        Err(NodeError::Closed)
    ));
    // A join after the stop is refused too (or finds the task gone).
    let late = b.start_join(&[a.me.addr]).await;
    assert!(matches!(
        guard(late).await,
        Ok(Err(NodeError::Closed)) | Err(_)
    ));
    // The application's events end.
    guard(async { while b.events.recv().await.is_some() {} }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_lost_while_sends_are_deferred_settles_them_and_the_peer_is_declared_gone() {
    let (net, a, mut b) = pair().await;
    // B's reader hands its messages to the test from now on.
    b.hold.store(true, Ordering::SeqCst);
    let key = Key::from(b.me.id);
    let id = a
        .runtime
        .route(key, PayloadKind::Application, b"last words")
        .await
        .unwrap();
    // Feed B until the routed message is delivered: its ack to A is then held back until the
    // follow-up (settle) runs.
    let follow_up = guard(async {
        loop {
            let event = b.held.recv().await.unwrap();
            // Earlier events (joined, leaf set changed, ...) are read first, so a delivery
            // read below is the one this input made.
            while b.events.try_recv().is_ok() {}
            let follow_up = Inbox::event(&*b.runtime, event);
            while let Ok(event) = b.events.try_recv() {
                if let NodeEvent::Deliver(delivery) = event {
                    assert_eq!(delivery.id, id);
                    return follow_up;
                }
            }
        }
    })
    .await;
    assert!(
        follow_up,
        "a delivery holds its ack back until the follow-up"
    );
    // Before the follow-up runs, the link to A is lost.
    net.set_up(a.me.id, false);
    b.transport_events
        .send(TransportEvent::LinkLost {
            peer: a.me.id,
            reason: LinkLostReason::TimedOut,
        })
        .await
        .unwrap();
    Inbox::settle(&*b.runtime);
    // The held-back ack was attempted (and failed); A is declared gone.
    let ack_attempted = net
        .failed_sends
        .lock()
        .unwrap()
        .iter()
        .any(|(from, to, body)| {
            *from == b.me.id
                && *to == a.me.id
                && match body {
                    Body::Pastry(msg) => is_ack_of(msg, id),
                    Body::PastryBatch(messages) => messages.iter().any(|msg| is_ack_of(msg, id)),
                    _ => false,
                }
        });
    assert!(ack_attempted, "the held-back ack was not sent");
    assert!(b.counters.snapshot().send_failures >= 1);
    b.next_event(|event| matches!(event, NodeEvent::NodeLeft(id) if id == a.me.id).then_some(()))
        .await;
    assert!(b.leaf_set().is_empty());
    // B keeps working: it is alone, so a route is delivered at B itself.
    b.hold.store(false, Ordering::SeqCst);
    b.runtime
        .route(key, PayloadKind::Application, b"alone")
        .await
        .unwrap();
    let delivery = b
        .next_event(|event| match event {
            NodeEvent::Deliver(delivery) => Some(delivery),
            _ => None,
        })
        .await;
    assert_eq!(delivery.payload, &b"alone"[..]);
}

#[tokio::test]
async fn an_invalid_config_is_refused_before_anything_binds() {
    use crate::pastry::ConfigError;
    use crate::transport::LimitsError;

    // A port that is free now: a node that validated too late would hold it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap();
    let mut odd_leaf_set = NodeConfig::default();
    odd_leaf_set.pastry.leaf_set_size = 7;
    let mut keep_alive_too_late = NodeConfig::default();
    keep_alive_too_late.limits.keep_alive = keep_alive_too_late.limits.max_idle_timeout;
    let cases = [
        (
            odd_leaf_set,
            super::NodeConfigError::Pastry(ConfigError::LeafSetSize(7)),
        ),
        (
            keep_alive_too_late,
            super::NodeConfigError::Limits(LimitsError::KeepAlive {
                keep_alive: Duration::from_secs(60),
                idle: Duration::from_secs(60),
            }),
        ),
    ];
    for (config, expected) in cases {
        let refused = super::Node::builder(crate::identity::Identity::generate())
            .config(config)
            .listen(port)
            .spawn()
            .await;
        match refused {
            Err(NodeError::Config(error)) => assert_eq!(error, expected),
            Err(other) => panic!("expected a config error, got {other}"),
            Ok(_) => panic!("an invalid config was accepted"),
        }
    }
    std::net::UdpSocket::bind(port).expect("the port was left free");
}

/// What an application would send to make the mesh act, if payloads had no kind: the old
/// in-band mesh tag and a mesh probe, and a forged envelope of kind `Mesh`.
fn forged_mesh_payloads() -> Vec<Vec<u8>> {
    let old_tag = [0xFF, b'w', b'm', b'e', b's', b'h', b'/', b'1', 6];
    vec![
        old_tag.to_vec(),
        envelope::wrap(PayloadKind::Mesh, &[6]).to_vec(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_payload_is_the_applications_whatever_its_bytes() {
    let (_net, a, mut b) = pair().await;
    let (mesh_tx, mut mesh) = mpsc::channel(16);
    b.runtime.subscribe(PayloadKind::Mesh, mesh_tx).unwrap();
    let key = Key::from(b.me.id);
    for forged in forged_mesh_payloads() {
        // Routed, as `Node::route` sends it.
        a.runtime
            .route(key, PayloadKind::Application, &forged)
            .await
            .unwrap();
        let delivery = b
            .next_event(|event| match event {
                NodeEvent::Deliver(delivery) => Some(delivery),
                _ => None,
            })
            .await;
        assert_eq!(delivery.payload, forged);
        // Direct, as `Node::send` sends it.
        let direct = Body::Direct {
            payload: envelope::wrap(PayloadKind::Application, &forged),
        };
        Inbox::event(
            &*b.runtime,
            TransportEvent::Message {
                from: a.me.id,
                from_addr: a.me.addr,
                body: direct,
            },
        );
        let payload = b
            .next_event(|event| match event {
                NodeEvent::Direct { from, payload } if from == a.me.id => Some(payload),
                _ => None,
            })
            .await;
        assert_eq!(payload, forged);
    }
    // The mesh's own kind reaches the subscriber, out of its envelope, and not the application.
    a.runtime
        .route(key, PayloadKind::Mesh, b"mesh")
        .await
        .unwrap();
    let got = guard(mesh.recv()).await.unwrap();
    assert!(
        matches!(&got, NodeEvent::Deliver(d) if d.payload == b"mesh"[..] && d.origin == a.me.id),
        "{got:?}"
    );
    // Nothing forged reached the subscriber before it, and the application saw no mesh payload.
    assert!(mesh.try_recv().is_err());
    while let Ok(event) = b.events.try_recv() {
        assert!(
            !matches!(event, NodeEvent::Deliver(_) | NodeEvent::Direct { .. }),
            "{event:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_of_an_unknown_kind_is_dropped_alone_and_reported_with_its_sender() {
    let (_net, a, mut b) = pair().await;
    let unknown = vec![0xff, 0x07, 1, 2, 3];
    let from_a = |body| TransportEvent::Message {
        from: a.me.id,
        from_addr: a.me.addr,
        body,
    };
    let routed = Body::Pastry(Message::Route {
        id: u64::MAX,
        key: Key::from(b.me.id),
        origin: a.me,
        hops: 0,
        avoid: Vec::new(),
        payload: unknown.clone().into(),
        proof: None,
    });
    let expected = WireError::UnknownPayloadKind(0x3ff).to_string();
    for body in [
        Body::Direct {
            payload: unknown.into(),
        },
        routed,
    ] {
        Inbox::event(&*b.runtime, from_a(body));
        let error = b
            .next_event(|event| match event {
                NodeEvent::Error(error) => Some(error),
                NodeEvent::Deliver(_) | NodeEvent::Direct { .. } => panic!("{event:?}"),
                _ => None,
            })
            .await;
        assert!(error.contains(&a.me.id.to_string()), "{error}");
        assert!(error.contains(&expected), "{error}");
    }
    assert_eq!(b.counters.snapshot().frames_rejected, 2);
    // The node keeps serving: the next messages are delivered.
    a.runtime
        .route(Key::from(b.me.id), PayloadKind::Application, b"after")
        .await
        .unwrap();
    let delivery = b
        .next_event(|event| match event {
            NodeEvent::Deliver(delivery) => Some(delivery),
            _ => None,
        })
        .await;
    assert_eq!(delivery.payload, &b"after"[..]);
}

/// Three nodes where B passes on what A hands it for C's key: B runs `hook`, if any.
async fn forwarding_trio(hook: Option<Arc<ForwardHook>>) -> (TestNode, TestNode, TestNode) {
    let net = Arc::new(Net::default());
    let a = start(&net, 1);
    let b = start_with_hook(&net, 2, hook);
    let c = start(&net, 3);
    a.join(&[]).await.unwrap();
    b.join(&[a.me.addr]).await.unwrap();
    c.join(&[a.me.addr]).await.unwrap();
    guard(async {
        while !b.leaf_set().contains(&c.me.id) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    (a, b, c)
}

/// A routed message `id` from A for C's key, as B receives it from A.
fn from_a_for_c(
    a: &TestNode,
    c: &TestNode,
    id: u64,
    kind: PayloadKind,
    payload: &[u8],
) -> TransportEvent {
    TransportEvent::Message {
        from: a.me.id,
        from_addr: a.me.addr,
        body: Body::Pastry(Message::Route {
            id,
            key: Key::from(c.me.id),
            origin: a.me,
            hops: 0,
            avoid: Vec::new(),
            payload: envelope::wrap(kind, payload),
            proof: None,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forward_hook_sees_and_changes_only_application_payloads() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook_seen = seen.clone();
    let hook: Arc<ForwardHook> = Arc::new(move |_info, payload: &mut Vec<u8>| {
        hook_seen.lock().unwrap().push(payload.clone());
        payload.extend_from_slice(b" (seen)");
        ForwardAction::Continue
    });
    let (a, b, mut c) = forwarding_trio(Some(hook)).await;
    let (mesh_tx, mut mesh) = mpsc::channel(16);
    c.runtime.subscribe(PayloadKind::Mesh, mesh_tx).unwrap();
    // Messages from A for C's key handed to B, which forwards them to C.
    let via_b =
        |id: u64, kind: PayloadKind, payload: &[u8]| from_a_for_c(&a, &c, id, kind, payload);
    Inbox::event(&*b.runtime, via_b(1, PayloadKind::Mesh, b"mesh"));
    let got = guard(mesh.recv()).await.unwrap();
    assert!(
        matches!(&got, NodeEvent::Deliver(d) if d.payload == b"mesh"[..]),
        "{got:?}"
    );
    Inbox::event(&*b.runtime, via_b(2, PayloadKind::Application, b"app"));
    let delivery = c
        .next_event(|event| match event {
            NodeEvent::Deliver(delivery) => Some(delivery),
            _ => None,
        })
        .await;
    assert_eq!(delivery.payload, &b"app (seen)"[..]);
    assert_eq!(*seen.lock().unwrap(), vec![b"app".to_vec()]);
}

/// `forwarded` counts the messages a node passed on, with a hook or without one (then the core
/// forwards without asking), and never the ones the hook vetoed.
#[tokio::test]
async fn forwards_are_counted_with_a_hook_and_without_one() {
    let veto_apps: Arc<ForwardHook> = Arc::new(|_info, payload: &mut Vec<u8>| {
        if payload.starts_with(b"app") {
            ForwardAction::Veto
        } else {
            ForwardAction::Continue
        }
    });
    for (hook, forwarded, vetoed) in [(None, 3, 0), (Some(veto_apps), 1, 2)] {
        let (a, b, mut c) = forwarding_trio(hook).await;
        let before = b.counters.snapshot();
        for (id, payload) in [(1, &b"app 1"[..]), (2, b"other"), (3, b"app 2")] {
            let route = from_a_for_c(&a, &c, id, PayloadKind::Application, payload);
            Inbox::event(&*b.runtime, route);
        }
        // C gets what B passed on.
        for _ in 0..forwarded {
            c.next_event(|event| match event {
                NodeEvent::Deliver(delivery) => Some(delivery),
                _ => None,
            })
            .await;
        }
        let after = b.counters.snapshot();
        assert_eq!(after.forwarded - before.forwarded, forwarded);
        assert_eq!(after.vetoed - before.vetoed, vetoed);
    }
}

fn is_ack_of(msg: &Message, id: u64) -> bool {
    matches!(msg, Message::RouteAck { id: acked, .. } if *acked == id)
}
