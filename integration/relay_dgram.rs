//! The datagram path of relayed links, over real QUIC on loopback: a relayed connection's bulk
//! bytes cross the relay as plain UDP datagrams (the relay's counters show it), and when those
//! datagrams stop arriving the session carries on over its stream.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use wendy::identity::Identity;
use wendy::node::{Events, LinkPath, Node, NodeEvent};
use wendy::relay::{RelayConfig, RelayLimits};

/// The first bytes of a hole-punching probe and of a relay datagram (their wire formats).
const PUNCH_PROBE: &[u8] = b"\xffWndPnch";
const RELAY_DATAGRAM: &[u8] = b"\xffWndRlay";

/// A UDP socket that drops the received datagrams starting with any of its prefixes (a
/// received batch holding one is dropped whole), while `dropping` is set.
#[derive(Debug)]
struct Filter {
    inner: Arc<dyn AsyncUdpSocket>,
    prefixes: Vec<&'static [u8]>,
    dropping: Arc<AtomicBool>,
}

impl Filter {
    fn bind(prefixes: Vec<&'static [u8]>, dropping: Arc<AtomicBool>) -> Arc<Self> {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inner = quinn::TokioRuntime.wrap_udp_socket(udp).unwrap();
        Arc::new(Self {
            inner,
            prefixes,
            dropping,
        })
    }
}

impl AsyncUdpSocket for Filter {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        let count = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(count)) => count,
            other => return other,
        };
        if self.dropping.load(Ordering::SeqCst) {
            for (buf, meta) in bufs.iter().zip(meta.iter_mut()).take(count) {
                let len = meta.len.min(buf.len());
                let stride = meta.stride.clamp(1, len.max(1));
                let hit = (0..len)
                    .step_by(stride)
                    .any(|s| self.prefixes.iter().any(|p| buf[s..len].starts_with(p)));
                if hit {
                    meta.len = 0;
                }
            }
        }
        Poll::Ready(Ok(count))
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Counts what arrives on every incoming stream and answers the count.
async fn sink(mut events: Events) {
    while let Some(event) = events.recv().await {
        if let NodeEvent::Stream { mut stream, .. } = event {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let mut total = 0u64;
                while let Ok(Some(n)) = stream.recv.read(&mut buf).await {
                    total += n as u64;
                }
                let _ = stream.write_all(&total.to_be_bytes()).await;
                let _ = stream.send.finish();
            });
        }
    }
}

/// Sends `bytes` from `from` to `to` on a new stream; returns once `to` has counted them all.
async fn send_bulk(from: &Node, to: &Node, bytes: usize) {
    let mut stream = from
        .open_stream_to(to.id(), to.addr(), "bulk")
        .await
        .unwrap();
    crate::common::write_filler(&mut stream, bytes).await;
    stream.send.finish().unwrap();
    let mut total = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(60), stream.read_exact(&mut total))
        .await
        .expect("the transfer completes")
        .unwrap();
    assert_eq!(u64::from_be_bytes(total), bytes as u64);
}

/// (bytes on the datagram path, bytes on the stream path, datagrams refused) summed over the
/// relays.
fn relayed(relays: &[Node]) -> (u64, u64, u64) {
    relays
        .iter()
        .filter_map(|r| r.relay_status().server)
        .fold((0, 0, 0), |(d, s, r), status| {
            (
                d + status.datagram_bytes_relayed,
                s + status.bytes_relayed - status.datagram_bytes_relayed,
                r + status.datagrams_refused,
            )
        })
}

struct Net {
    relays: Vec<Node>,
    private: Node,
    /// Outside the overlay, linked to the first relay only, private too (a public end would
    /// be dialled by the private node), and deaf to hole-punching probes and their answers: it
    /// reaches the private node through a relay and stays there.
    outsider: Node,
    /// Drops the relay datagrams the private node receives while set.
    private_drops: Arc<AtomicBool>,
}

async fn start(seed: u8) -> Net {
    let unlimited = RelayConfig {
        serve: Some(RelayLimits {
            link_bytes_per_sec: 0,
            total_bytes_per_sec: 0,
            ..RelayLimits::default()
        }),
        ..RelayConfig::default()
    };
    let mut relays: Vec<Node> = Vec::new();
    for i in 0..2u8 {
        let (relay, events) = Node::builder(Identity::from_seed([seed + i; 32]))
            .relay(unlimited.clone())
            .spawn()
            .await
            .unwrap();
        let bootstrap: Vec<SocketAddr> = relays.iter().map(Node::addr).collect();
        relay.join(&bootstrap).await.unwrap();
        tokio::spawn(sink(events));
        relays.push(relay);
    }
    let behind_relays = RelayConfig {
        private: true,
        relays: relays.iter().map(Node::addr).collect(),
        ..RelayConfig::default()
    };
    let private_drops = Arc::new(AtomicBool::new(false));
    let (private, events) = Node::builder(Identity::from_seed([seed + 2; 32]))
        .socket(Filter::bind(
            vec![PUNCH_PROBE, RELAY_DATAGRAM],
            private_drops.clone(),
        ))
        .relay(behind_relays.clone())
        .spawn()
        .await
        .unwrap();
    private.join(&[relays[0].addr()]).await.unwrap();
    tokio::spawn(sink(events));
    let (outsider, events) = Node::builder(Identity::from_seed([seed + 3; 32]))
        .socket(Filter::bind(
            vec![PUNCH_PROBE],
            Arc::new(AtomicBool::new(true)),
        ))
        .relay(behind_relays)
        .spawn()
        .await
        .unwrap();
    tokio::spawn(sink(events));
    outsider
        .send_to(relays[0].id(), relays[0].addr(), b"hello".to_vec())
        .await
        .unwrap();
    Net {
        relays,
        private,
        outsider,
        private_drops,
    }
}

async fn path(from: &Node, to: &Node) -> Option<LinkPath> {
    from.status()
        .await
        .unwrap()
        .connections
        .into_iter()
        .find(|c| c.id == to.id())
        .map(|c| c.path)
}

const BULK: usize = 8 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_connections_bulk_bytes_cross_the_relay_as_datagrams() {
    crate::common::log_from_env();
    let net = start(120).await;
    // The first bytes go over the stream while the datagram path is being proven.
    send_bulk(&net.outsider, &net.private, 1 << 20).await;
    let (datagrams_before, stream_before, _) = relayed(&net.relays);
    send_bulk(&net.outsider, &net.private, BULK).await;
    let (datagrams, stream, refused) = relayed(&net.relays);
    assert_eq!(
        path(&net.outsider, &net.private).await,
        Some(LinkPath::Relay)
    );
    // The bulk bytes cross as datagrams, but not always all: on a loaded machine a stalled end
    // may miss the datagram path's acknowledgement deadline, and the path then goes back to
    // the stream until its next probe is answered (a few keep-alives later).
    assert!(
        datagrams - datagrams_before >= (BULK / 4) as u64,
        "{} bytes on the datagram path, {} on the stream",
        datagrams - datagrams_before,
        stream - stream_before
    );
    assert_eq!(refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_session_falls_back_to_its_stream_when_datagrams_stop_arriving() {
    let net = start(130).await;
    send_bulk(&net.outsider, &net.private, 1 << 20).await;
    send_bulk(&net.outsider, &net.private, 1 << 20).await;
    let (datagrams_before, _, _) = relayed(&net.relays);
    assert!(
        datagrams_before >= 1 << 20,
        "the datagram path was in use before the drop"
    );
    // From now on the private node hears none of the relay's datagrams: the outsider's go
    // unacknowledged and it moves back to the stream.
    net.private_drops.store(true, Ordering::SeqCst);
    let (_, stream_before, _) = relayed(&net.relays);
    send_bulk(&net.outsider, &net.private, BULK).await;
    let (_, stream, _) = relayed(&net.relays);
    assert!(
        stream - stream_before >= BULK as u64,
        "only {} bytes on the stream",
        stream - stream_before
    );
}
