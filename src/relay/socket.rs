//! [`RelaySocket`]: the node's UDP socket for quinn, with relayed peers behind synthetic
//! addresses.
//!
//! quinn sees one socket. A datagram to a real address goes to the wrapped socket; a datagram
//! to a synthetic address ([`super::synthetic_addr`], in `240.0.0.0/5`, which no host uses)
//! goes into the relay session of the peer behind it, which carries it over this node's QUIC
//! link to a relay (see `session.rs`). Datagrams that come out of a session are handed to
//! quinn as if they came from the peer's synthetic address. So the QUIC connection to a relayed
//! peer is an ordinary end-to-end one: its packets are already encrypted when they enter a
//! session, and the relay only ever sees them as opaque bytes.
//!
//! The same socket implements the private switch ([`Paths::set_private`]): a private node takes
//! datagrams from real addresses only if it sent to that address before, as a NAT or a
//! stateful firewall does, so a peer that never heard from it cannot dial it directly.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use super::session::push_frame;
use super::{is_synthetic, synthetic_addr, unmap};
use crate::id::NodeId;

/// Transmits (each one datagram, or a GSO batch of them) a session may queue before the socket
/// drops more (as a full link would).
pub(crate) const SESSION_QUEUE: usize = 512;

/// Relayed datagrams waiting for quinn to read them.
const INBOUND_QUEUE: usize = 2048;

/// A session's outgoing side: the datagrams quinn sends to the peer go here, already framed
/// for the session's stream (`session::push_frame`), one buffer per transmit.
pub(crate) type SessionSender = mpsc::Sender<Bytes>;

/// A session wanted by quinn (a datagram went to a relayed peer with no session yet): the
/// relay client opens one and drains `outgoing`.
pub(crate) struct WantedSession {
    /// The peer.
    pub(crate) peer: NodeId,
    /// The datagrams to send, the first already queued.
    pub(crate) outgoing: mpsc::Receiver<Bytes>,
}

/// What the socket and the node's relay client share: which synthetic address is which peer,
/// the open sessions, and the private switch.
pub(crate) struct Paths {
    /// Relayed peers by synthetic address (from verified relay records and incoming sessions).
    peers: Mutex<HashMap<SocketAddr, NodeId>>,
    /// Open sessions, by peer.
    sessions: Mutex<HashMap<NodeId, SessionSender>>,
    inbound_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    inbound_rx: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    wanted: mpsc::UnboundedSender<WantedSession>,
    private: AtomicBool,
    /// Real addresses this node sent to (what a NAT would let answers in from).
    sent_to: Mutex<HashSet<SocketAddr>>,
    /// Datagrams dropped: no session room, unknown synthetic address, or the private filter.
    dropped: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a single map operation: a poisoned lock still guards
    // consistent data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for Paths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Paths")
            .field("private", &self.is_private())
            .field("sessions", &lock(&self.sessions).len())
            .finish_non_exhaustive()
    }
}

impl Paths {
    /// New shared state and the receiver of wanted sessions.
    pub(crate) fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<WantedSession>) {
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (wanted, wanted_rx) = mpsc::unbounded_channel();
        let paths = Arc::new(Self {
            peers: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            inbound_tx,
            inbound_rx: Mutex::new(inbound_rx),
            wanted,
            private: AtomicBool::new(false),
            sent_to: Mutex::new(HashSet::new()),
            dropped: AtomicU64::new(0),
        });
        (paths, wanted_rx)
    }

    /// Makes the node private (`true`): datagrams from real addresses it never sent to are
    /// dropped, as behind a NAT. The reachability check, or an operator, sets it.
    pub(crate) fn set_private(&self, private: bool) {
        self.private.store(private, Ordering::SeqCst);
    }

    /// Whether the node is private.
    pub(crate) fn is_private(&self) -> bool {
        self.private.load(Ordering::SeqCst)
    }

    /// Makes `peer`'s synthetic address lead to it.
    pub(crate) fn learn(&self, peer: NodeId) {
        lock(&self.peers).insert(synthetic_addr(peer), peer);
    }

    /// The relayed peer behind a synthetic address.
    pub(crate) fn peer_at(&self, addr: SocketAddr) -> Option<NodeId> {
        lock(&self.peers).get(&unmap(addr)).copied()
    }

    /// Installs a session's sender for `peer` (replacing an older one).
    pub(crate) fn open_session(&self, peer: NodeId, sender: SessionSender) {
        self.learn(peer);
        lock(&self.sessions).insert(peer, sender);
    }

    /// Forgets `peer`'s session if it is still the one given (a newer one stays).
    pub(crate) fn close_session(&self, peer: NodeId, sender: &SessionSender) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(&peer).is_some_and(|s| s.same_channel(sender)) {
            sessions.remove(&peer);
        }
    }

    /// Forgets `peer`'s session, whichever it is (its opener gave up).
    pub(crate) fn drop_session(&self, peer: NodeId) {
        lock(&self.sessions).remove(&peer);
    }

    /// Hands a datagram that came out of `peer`'s session to quinn. Waits while quinn is
    /// behind (the session's stream then flow-controls the relay).
    pub(crate) async fn deliver(&self, peer: NodeId, datagram: Bytes) -> bool {
        self.inbound_tx
            .send((synthetic_addr(peer), datagram))
            .await
            .is_ok()
    }

    /// Datagrams the socket dropped (no room in a session, an unknown synthetic address, or
    /// the private filter).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues framed datagrams for the relayed peer at `addr`, asking for a session if there is
    /// none.
    fn send_relayed(&self, addr: SocketAddr, framed: Bytes) {
        let Some(peer) = self.peer_at(addr) else {
            self.drop_one();
            return;
        };
        let mut sessions = lock(&self.sessions);
        if let Some(sender) = sessions.get(&peer) {
            if sender.try_send(framed).is_err() {
                self.drop_one();
            }
            return;
        }
        let (sender, outgoing) = mpsc::channel(SESSION_QUEUE);
        // A fresh channel has room for one.
        let _ = sender.try_send(framed);
        if self.wanted.send(WantedSession { peer, outgoing }).is_ok() {
            sessions.insert(peer, sender);
        } else {
            self.drop_one();
        }
    }
}

/// The node's socket: it sends datagrams for synthetic addresses (relayed peers) over relay
/// sessions and everything else over the UDP socket it wraps.
pub struct RelaySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    paths: Arc<Paths>,
    ipv6: bool,
}

impl fmt::Debug for RelaySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelaySocket")
            .field("inner", &self.inner)
            .field("paths", &self.paths)
            .finish()
    }
}

impl RelaySocket {
    /// Wraps `inner` (the node's real socket).
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, paths: Arc<Paths>) -> io::Result<Self> {
        let ipv6 = inner.local_addr()?.is_ipv6();
        Ok(Self { inner, paths, ipv6 })
    }

    /// A synthetic source address in the family quinn expects from this socket.
    fn present(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.ipv6 => {
                SocketAddr::new(std::net::IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            other => other,
        }
    }

    fn poll_relayed(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<usize> {
        let mut inbound = lock(&self.paths.inbound_rx);
        let mut filled = 0;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            let next = if filled == 0 {
                match inbound.poll_recv(cx) {
                    Poll::Ready(Some(next)) => next,
                    _ => break,
                }
            } else {
                match inbound.try_recv() {
                    Ok(next) => next,
                    Err(_) => break,
                }
            };
            let (from, datagram) = next;
            if datagram.len() > buf.len() {
                self.paths.drop_one();
                continue;
            }
            buf[..datagram.len()].copy_from_slice(&datagram);
            *meta = RecvMeta::default();
            meta.addr = self.present(from);
            meta.len = datagram.len();
            meta.stride = datagram.len();
            filled += 1;
        }
        if filled == 0 {
            Poll::Pending
        } else {
            Poll::Ready(filled)
        }
    }
}

impl AsyncUdpSocket for RelaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let destination = unmap(transmit.destination);
        if !is_synthetic(destination) {
            if self.paths.is_private() {
                lock(&self.paths.sent_to).insert(destination);
            }
            return self.inner.try_send(transmit);
        }
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        // One buffer for the whole transmit (a GSO batch is several datagrams), framed here so
        // that the session hands it to its stream without another copy.
        let mut framed = BytesMut::with_capacity(
            transmit.contents.len() + 2 * transmit.contents.len().div_ceil(segment),
        );
        for datagram in transmit.contents.chunks(segment) {
            push_frame(&mut framed, datagram);
        }
        if !framed.is_empty() {
            self.paths.send_relayed(destination, framed.freeze());
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(filled) = self.poll_relayed(cx, bufs, meta) {
            return Poll::Ready(Ok(filled));
        }
        loop {
            let count = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(count)) => count,
                other => return other,
            };
            if !self.paths.is_private() {
                return Poll::Ready(Ok(count));
            }
            let sent_to = lock(&self.paths.sent_to);
            let mut kept = 0;
            for meta in meta.iter_mut().take(count) {
                if sent_to.contains(&unmap(meta.addr)) {
                    kept += 1;
                } else {
                    // An empty datagram: quinn reads nothing from it.
                    meta.len = 0;
                    self.paths.drop_one();
                }
            }
            if kept > 0 {
                return Poll::Ready(Ok(count));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
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
