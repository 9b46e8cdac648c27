//! Helpers of the hostile-peer tests: a raw quinn client that speaks Wendy's wire format and
//! lies, the one place those tests build routed messages, UDP sinks that count the QUIC
//! dials a node sends to addresses the attacker named, a small cluster of `wendy node`
//! processes, and the resident memory of a process.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use wendy::id::{Key, NodeId};
use wendy::identity::{Identity, Validity};
use wendy::pastry::{route_digest, Message, OriginProof, PeerInfo};
use wendy::transport::{tls, Admission, TransportConfig};
use wendy::wire::{envelope, Body, PayloadKind};

use super::process::NodeProc;

/// Whether the run asks for the full-size attacks (`WENDY_HOSTILE_SCALE=full`, the sizes
/// BENCHMARKS.md reports) instead of the CI-sized ones.
pub fn full_scale() -> bool {
    std::env::var("WENDY_HOSTILE_SCALE").is_ok_and(|v| v == "full")
}

/// `ci` in a normal run, `full` with `WENDY_HOSTILE_SCALE=full`.
pub fn scaled<T>(ci: T, full: T) -> T {
    if full_scale() {
        full
    } else {
        ci
    }
}

// ---- the attacker ----

/// A peer admitted in open mode (a fresh self-signed key) that writes hand-made frames on raw
/// QUIC streams. Create it inside a tokio runtime.
pub struct Attacker {
    pub identity: Identity,
    config: TransportConfig,
    pub endpoint: quinn::Endpoint,
}

impl Attacker {
    pub fn new() -> Self {
        let identity = Identity::generate();
        let certificate = identity
            .self_signed_certificate(Validity::days_from_now(1))
            .unwrap();
        let config = TransportConfig::new(
            super::loopback(),
            identity.clone(),
            certificate,
            Admission::Open,
        );
        let endpoint = quinn::Endpoint::client(super::loopback()).unwrap();
        Self {
            identity,
            config,
            endpoint,
        }
    }

    pub fn id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// The attacker as the nodes it connects to see it (they take its address from the link).
    pub fn peer(&self) -> PeerInfo {
        PeerInfo {
            id: self.id(),
            addr: self.endpoint.local_addr().unwrap(),
        }
    }

    /// A link to `node` with Wendy's own TLS setup; whatever the node sends back on it is read
    /// and dropped (pings are answered), so the node never waits on the attacker's buffers.
    pub async fn connect(&self, node: &Member) -> quinn::Connection {
        let client = tls::quinn_client_config(&self.config, Some(node.id)).unwrap();
        let conn = self
            .endpoint
            .connect_with(client, node.addr, "wendy")
            .unwrap()
            .await
            .unwrap_or_else(|e| panic!("attacker cannot reach {}: {e}", node.name));
        drain_incoming(conn.clone());
        conn
    }
}

/// A client config for a brand-new open-mode identity (a fresh key and self-signed
/// certificate) that expects to reach `expected`.
pub fn fresh_client_config(expected: NodeId) -> quinn::ClientConfig {
    let identity = Identity::generate();
    let certificate = identity
        .self_signed_certificate(Validity::days_from_now(1))
        .unwrap();
    let config = TransportConfig::new(super::loopback(), identity, certificate, Admission::Open);
    tls::quinn_client_config(&config, Some(expected)).unwrap()
}

/// Reads and drops every stream `conn`'s peer opens; answers pings so the link looks healthy.
pub fn drain_incoming(conn: quinn::Connection) {
    let uni = conn.clone();
    tokio::spawn(async move {
        while let Ok(mut stream) = uni.accept_uni().await {
            tokio::spawn(async move {
                let _ = stream.read_to_end(usize::MAX).await;
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            tokio::spawn(async move {
                let Ok(frame) = recv.read_to_end(1 << 20).await else {
                    return;
                };
                if let Ok(Body::Ping { nonce }) =
                    wendy::wire::decode(&frame, wendy::wire::DEFAULT_MAX_FRAME_SIZE)
                {
                    let pong = wendy::wire::encode(&Body::Pong { nonce }).unwrap();
                    let _ = send.write_all(&pong).await;
                    let _ = send.finish();
                }
            });
        }
    });
}

/// Sends `msg` on its own uni stream, as a node would, and waits (briefly) until the node has
/// read it to the end, so what the test does next happens after the node saw it.
pub async fn send_pastry(conn: &quinn::Connection, msg: Message) {
    let frame = wendy::wire::encode(&Body::Pastry(msg)).unwrap();
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&frame).await.unwrap();
    stream.finish().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.stopped()).await;
}

/// Runs the futures concurrently to completion (on the current runtime).
pub async fn join_all<F>(futures: impl IntoIterator<Item = F>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for future in futures {
        set.spawn(future);
    }
    while set.join_next().await.is_some() {}
}

/// A routed message as `sender` would put it on a link: the one place the hostile tests build
/// [`Message::Route`], so a change of its format (signed origins) is made here only.
///
/// `origin` is who the message claims to come from. The sender can prove only its own identity
/// (it holds no other key), so a message whose `origin` is not `sender`'s id is a forgery, and
/// it is signed with `sender`'s key, which does not match.
pub fn route_message(
    sender: &Identity,
    origin: PeerInfo,
    id: u64,
    key: Key,
    hops: u8,
    text: &str,
) -> Message {
    // The sender signs with the only key it holds: for any `origin` but its own id, the proof's
    // key does not hash to the claimed origin.
    let payload = envelope::wrap(PayloadKind::Application, text.as_bytes());
    let signer = sender.origin_signer();
    let digest = route_digest(origin.id, id, key, &payload);
    Message::Route {
        id,
        key,
        origin,
        hops,
        avoid: Vec::new(),
        proof: Some(Box::new(OriginProof {
            public_key: signer.public_key(),
            signature: signer.sign(&digest),
        })),
        payload,
    }
}

/// `count` made-up peers with random ids, spread over `addrs` (addresses the attacker holds).
pub fn made_up_peers(count: usize, addrs: &[SocketAddr]) -> Vec<PeerInfo> {
    (0..count)
        .map(|i| PeerInfo {
            id: NodeId::from_bytes(rand::random()),
            addr: addrs[i % addrs.len()],
        })
        .collect()
}

// ---- counting dials ----

/// What arrived at a set of UDP sockets from one source address.
#[derive(Debug, Default, Clone)]
pub struct Arrivals {
    pub datagrams: u64,
    pub bytes: u64,
    /// Destination connection ids of QUIC Initial packets: one per connection attempt (a
    /// client keeps its first DCID for every retransmission of its Initial).
    pub dials: HashSet<Vec<u8>>,
}

/// UDP sockets on loopback that count every datagram sent to them, by source address, until
/// dropped. They never answer, so every dial to them times out.
pub struct DialSinks {
    pub addrs: Vec<SocketAddr>,
    arrivals: Arc<Mutex<HashMap<SocketAddr, Arrivals>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DialSinks {
    pub fn bind(count: usize) -> Self {
        let arrivals = Arc::new(Mutex::new(HashMap::<SocketAddr, Arrivals>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..count {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            addrs.push(socket.local_addr().unwrap());
            let (arrivals, stop) = (arrivals.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buffer = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut buffer) else {
                        continue;
                    };
                    let mut arrivals = arrivals.lock().unwrap();
                    let seen = arrivals.entry(from).or_default();
                    seen.datagrams += 1;
                    seen.bytes += len as u64;
                    if let Some(dcid) = initial_dcid(&buffer[..len]) {
                        seen.dials.insert(dcid.to_vec());
                    }
                }
            }));
        }
        Self {
            addrs,
            arrivals,
            stop,
            threads,
        }
    }

    /// What `source` sent to these sockets so far.
    pub fn from(&self, source: SocketAddr) -> Arrivals {
        self.arrivals
            .lock()
            .unwrap()
            .get(&source)
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for DialSinks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The destination connection id of a datagram that starts with a QUIC version 1 Initial
/// packet (RFC 9000 section 17.2: long header, type 0, version, DCID length, DCID).
fn initial_dcid(datagram: &[u8]) -> Option<&[u8]> {
    let first = *datagram.first()?;
    let long_header = first & 0x80 != 0;
    let initial = (first & 0x30) >> 4 == 0;
    let version = datagram.get(1..5)?;
    if !long_header || !initial || version != [0, 0, 0, 1] {
        return None;
    }
    let len = usize::from(*datagram.get(5)?);
    datagram.get(6..6 + len)
}

// ---- memory ----

/// The resident set size of process `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    try_rss_kib(pid).unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

fn try_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

/// The highest resident set size of `pid` sampled every 100 ms until the sampler is stopped.
pub struct RssPeak {
    peak: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RssPeak {
    pub fn start(pid: u32) -> Self {
        let peak = Arc::new(Mutex::new(rss_kib(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = try_rss_kib(pid) {
                        let mut peak = peak.lock().unwrap();
                        *peak = (*peak).max(rss);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the peak in KiB.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let peak = *self.peak.lock().unwrap();
        peak
    }
}

// ---- a cluster of `wendy node` processes ----

/// One `wendy node` process of a [`ProcCluster`].
pub struct Member {
    pub name: &'static str,
    pub id: NodeId,
    pub addr: SocketAddr,
    pub key: PathBuf,
    pub proc: NodeProc,
}

impl Member {
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    pub fn peer(&self) -> PeerInfo {
        PeerInfo {
            id: self.id,
            addr: self.addr,
        }
    }

    pub fn key(&self) -> Key {
        Key::from(self.id)
    }

    /// Routes `text` to `key` with the `route` command; the message id the node gave it.
    pub fn route(&mut self, key: Key, text: &str) -> u64 {
        self.proc.command(&format!("route {key} {text}"));
        let routed = self.proc.next_event("routed");
        routed["msg_id"].as_u64().unwrap()
    }
}

/// `wendy node` processes on loopback in one overlay, with their key files.
pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
}

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

impl ProcCluster {
    /// Starts `n` nodes (the first starts the overlay, the others join through it) and waits
    /// until every leaf set holds all the others.
    pub fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut members: Vec<Member> = Vec::new();
        for name in NAMES.iter().take(n) {
            let key = dir.path().join(format!("{name}.key"));
            Identity::generate().save(&key, false).unwrap();
            let mut args = vec![
                "--listen".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--key".to_owned(),
                key.to_str().unwrap().to_owned(),
            ];
            if let Some(first) = members.first() {
                args.extend(["--join".to_owned(), first.addr.to_string()]);
            }
            let mut proc = NodeProc::start(name, &args);
            let (id, addr) = proc.listening();
            proc.next_event("joined");
            members.push(Member {
                name,
                id,
                addr: addr.parse().unwrap(),
                key,
                proc,
            });
        }
        let all: HashSet<NodeId> = members.iter().map(|m| m.id).collect();
        for member in &mut members {
            let me = member.id;
            member
                .proc
                .status_until("every other node in the leaf set", |st| {
                    let leaf: HashSet<NodeId> = st["leaf_set"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().parse().unwrap())
                        .collect();
                    leaf.len() + 1 == all.len()
                        && leaf.iter().all(|id| *id != me && all.contains(id))
                });
        }
        Self { dir, members }
    }

    /// Reads every node's output until `until`.
    pub fn gather_until(&mut self, until: Instant) {
        for member in &mut self.members {
            member.proc.gather(until);
        }
    }

    /// Every event named `name` any node printed so far, with the printing node's name.
    pub fn events(&self, name: &str) -> Vec<(&'static str, Value)> {
        self.members
            .iter()
            .flat_map(|m| {
                m.proc
                    .seen
                    .iter()
                    .filter(|v| v["event"] == name)
                    .map(|v| (m.name, v.clone()))
            })
            .collect()
    }
}

/// The id strings of a JSON list.
pub fn id_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
