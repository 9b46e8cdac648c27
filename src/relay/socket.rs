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
//! Relay datagrams (`dgram.rs`) are taken out of the stream here too, before quinn sees them:
//! on a relay, those of its relayed links are checked and sent on to the other end; on an end,
//! those of its sessions are handed to quinn as from the peer's synthetic address (received
//! batches, several datagrams of one size in one buffer, are sorted datagram by datagram). A
//! peer whose session's datagram path is proven gets its packets sent on that path.
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
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use super::dgram::{self, Forwarder, Lane, HEADER};
use super::{is_synthetic, synthetic_addr, unmap};
use crate::id::NodeId;

/// Datagrams a session may queue before the socket drops more (as a full link would).
pub(crate) const SESSION_QUEUE: usize = 512;

/// Relayed datagrams waiting for quinn to read them.
const INBOUND_QUEUE: usize = 2048;

/// A session's outgoing side: the datagrams quinn sends to the peer go here.
pub(crate) type SessionSender = mpsc::Sender<Bytes>;

/// The session that carries a peer's datagrams.
struct Session {
    sender: SessionSender,
    /// This node opened it (quinn sent to the peer first); otherwise the peer did, through a
    /// relay.
    outbound: bool,
    /// Its datagram path, once the relay granted one.
    lane: Option<Arc<Lane>>,
}

/// Which session a running session task serves, to find whether its datagram path carries
/// this node's packets to the peer.
pub(crate) enum Side {
    /// The session this node opened to the peer.
    Outbound,
    /// A session the peer opened, with the sender the socket knows it by.
    Incoming(SessionSender),
}

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
    sessions: Mutex<HashMap<NodeId, Session>>,
    inbound_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    inbound_rx: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    wanted: mpsc::UnboundedSender<WantedSession>,
    private: AtomicBool,
    /// Real addresses this node sent to (what a NAT would let answers in from).
    sent_to: Mutex<HashSet<SocketAddr>>,
    /// Datagrams dropped: no session room, unknown synthetic address, or the private filter.
    dropped: AtomicU64,
    /// The datagram paths of this node's sessions, by token.
    lanes: RwLock<HashMap<u64, Arc<Lane>>>,
    /// A relay's datagram routes (empty on other nodes).
    pub(crate) forwarder: Forwarder,
    /// The wrapped socket, for probes (set when the socket is made).
    socket: OnceLock<(Arc<dyn AsyncUdpSocket>, bool)>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a single map operation: a poisoned lock still guards
    // consistent data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// `addr` in the family of a socket (IPv4 as IPv4-mapped IPv6 on an IPv6 socket).
fn present(ipv6: bool, addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if ipv6 => {
            SocketAddr::new(std::net::IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        other => other,
    }
}

/// What one segment of a received buffer is.
enum Segment {
    /// A QUIC datagram: quinn's.
    Quic,
    /// A packet of this node's session on `lane`.
    Mine(Arc<Lane>),
    /// A relayed link's datagram, to send on.
    Forward(dgram::Forward),
    /// Taken: a probe, or dropped.
    Gone,
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
            lanes: RwLock::new(HashMap::new()),
            forwarder: Forwarder::default(),
            socket: OnceLock::new(),
        });
        (paths, wanted_rx)
    }

    /// Makes the node private (`true`): datagrams from real addresses it never sent to are
    /// dropped, as behind a NAT. Set at start for a node configured private; a node that turns
    /// private at run time leaves it off (its network filters already, and the dial-backs
    /// that find it reachable again must get through).
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

    /// Installs the sender of a session `peer` opened, replacing an older one, unless this
    /// node's own live session to `peer` is to stay (`keep_outbound`).
    ///
    /// When both ends dial each other through relays at once, each gets the other's session
    /// while opening its own. Both ends keep the same one of the two, the session opened by the
    /// lower id (`keep_outbound` on that node): the other closes, and nothing is left carrying
    /// datagrams at one end that the other end has dropped. The session that is not installed
    /// still hands quinn what arrives on it until it ends.
    ///
    /// Returns whether it was installed.
    pub(crate) fn open_session(
        &self,
        peer: NodeId,
        sender: SessionSender,
        keep_outbound: bool,
    ) -> bool {
        self.learn(peer);
        let mut sessions = lock(&self.sessions);
        let keep = sessions
            .get(&peer)
            .is_some_and(|s| keep_outbound && s.outbound && !s.sender.is_closed());
        if !keep {
            sessions.insert(
                peer,
                Session {
                    sender,
                    outbound: false,
                    lane: None,
                },
            );
        }
        !keep
    }

    /// Forgets `peer`'s session if it is still the one given (a newer one stays).
    pub(crate) fn close_session(&self, peer: NodeId, sender: &SessionSender) {
        let mut sessions = lock(&self.sessions);
        if sessions
            .get(&peer)
            .is_some_and(|s| s.sender.same_channel(sender))
        {
            sessions.remove(&peer);
        }
    }

    /// Forgets the session this node opened to `peer` (its opener gave up or ended it); one
    /// the peer opened stays.
    pub(crate) fn drop_outbound(&self, peer: NodeId) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(&peer).is_some_and(|s| s.outbound) {
            sessions.remove(&peer);
        }
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

    /// Takes datagrams on `lane`'s token (from its relay) as its peer's; if `side` is the
    /// session the socket sends the peer's packets to, they take the lane once it is proven.
    pub(crate) fn attach_lane(&self, lane: Arc<Lane>, side: &Side) {
        write(&self.lanes).insert(lane.token, lane.clone());
        let mut sessions = lock(&self.sessions);
        if let Some(session) = sessions.get_mut(&lane.peer) {
            let ours = match side {
                Side::Outbound => session.outbound,
                Side::Incoming(sender) => session.sender.same_channel(sender),
            };
            if ours {
                session.lane = Some(lane);
            }
        }
    }

    /// Forgets `lane` (its session ended).
    pub(crate) fn detach_lane(&self, lane: &Arc<Lane>) {
        write(&self.lanes).remove(&lane.token);
        let mut sessions = lock(&self.sessions);
        if let Some(session) = sessions.get_mut(&lane.peer) {
            if session.lane.as_ref().is_some_and(|l| Arc::ptr_eq(l, lane)) {
                session.lane = None;
            }
        }
    }

    /// Sends a probe on `lane` (a header without a packet), best effort.
    pub(crate) fn send_probe(&self, lane: &Lane) {
        let Some((socket, ipv6)) = self.socket.get() else {
            return;
        };
        let mut probe = Vec::with_capacity(HEADER);
        dgram::push_datagram(&mut probe, lane.token, &[]);
        let transmit = Transmit {
            destination: present(*ipv6, lane.relay),
            ecn: None,
            contents: &probe,
            segment_size: None,
            src_ip: None,
        };
        // A lost probe is sent again by the lane's probe schedule (soon at first, then at the
        // keep-alive period).
        if let Err(error) = socket.try_send(&transmit) {
            tracing::debug!(peer = %lane.peer, relay = %lane.relay, %error, "relay datagram probe not sent");
        }
    }

    /// The proven datagram path to the relayed peer at `addr`, if any.
    fn lane_to(&self, addr: SocketAddr) -> Option<Arc<Lane>> {
        let peer = self.peer_at(addr)?;
        let sessions = lock(&self.sessions);
        let session = sessions.get(&peer)?;
        session
            .lane
            .as_ref()
            .filter(|lane| lane.confirmed() && !session.sender.is_closed())
            .cloned()
    }

    fn lane_for(&self, token: u64) -> Option<Arc<Lane>> {
        read(&self.lanes).get(&token).cloned()
    }

    /// Queues a datagram for the relayed peer at `addr`, asking for a session if there is none.
    fn send_relayed(&self, addr: SocketAddr, datagram: Bytes) {
        let Some(peer) = self.peer_at(addr) else {
            self.drop_one();
            return;
        };
        let mut sessions = lock(&self.sessions);
        if let Some(session) = sessions.get(&peer).filter(|s| !s.sender.is_closed()) {
            if session.sender.try_send(datagram).is_err() {
                self.drop_one();
            }
            return;
        }
        let (sender, outgoing) = mpsc::channel(SESSION_QUEUE);
        // A fresh channel has room for one.
        let _ = sender.try_send(datagram);
        if self.wanted.send(WantedSession { peer, outgoing }).is_ok() {
            sessions.insert(
                peer,
                Session {
                    sender,
                    outbound: true,
                    lane: None,
                },
            );
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
        let _ = paths.socket.set((inner.clone(), ipv6));
        Ok(Self { inner, paths, ipv6 })
    }

    /// An address in the family quinn expects from this socket.
    fn present(&self, addr: SocketAddr) -> SocketAddr {
        present(self.ipv6, addr)
    }

    /// Sends quinn's `transmit` on `lane`: each packet behind the lane's header, to the relay,
    /// in one batch as quinn gave it.
    fn send_on_lane(&self, lane: &Lane, transmit: &Transmit<'_>) -> io::Result<()> {
        let contents = transmit.contents;
        let segment = transmit.segment_size.unwrap_or(contents.len()).max(1);
        if segment + HEADER > dgram::max_len(lane.relay) {
            // Too long for the path: lost, as on a path with a smaller MTU (quinn's path MTU
            // discovery then stays below).
            self.paths.drop_one();
            return Ok(());
        }
        let count = contents.len().div_ceil(segment);
        let mut framed = Vec::with_capacity(contents.len() + count * HEADER);
        for packet in contents.chunks(segment) {
            dgram::push_datagram(&mut framed, lane.token, packet);
        }
        let framed = Transmit {
            destination: self.present(lane.relay),
            ecn: transmit.ecn,
            contents: &framed,
            segment_size: (count > 1).then_some(segment + HEADER),
            src_ip: None,
        };
        self.inner.try_send(&framed)?;
        lane.sent();
        lane.activity.touch();
        Ok(())
    }

    /// What the segment `datagram` from `from` (unmapped) is; notes probes and drops.
    fn classify(&self, datagram: &[u8], from: SocketAddr) -> Segment {
        if !dgram::is_relay_datagram(datagram) {
            return Segment::Quic;
        }
        let token = match dgram::parse(datagram, from) {
            Ok((token, _)) => token,
            Err(_) => {
                self.paths.drop_one();
                return Segment::Gone;
            }
        };
        if let Some(lane) = self.paths.lane_for(token) {
            if lane.relay != from {
                self.paths.drop_one();
                return Segment::Gone;
            }
            lane.activity.hear();
            if datagram.len() == HEADER {
                lane.probe_heard();
                return Segment::Gone;
            }
            lane.heard();
            lane.activity.touch();
            return Segment::Mine(lane);
        }
        match self.paths.forwarder.route(datagram, from) {
            Ok(forward) => Segment::Forward(forward),
            Err(_) => {
                self.paths.drop_one();
                Segment::Gone
            }
        }
    }

    /// Sends relay datagrams on (`contents`: one, or several of `stride` bytes).
    fn forward(&self, forward: dgram::Forward, contents: &[u8], stride: usize) {
        let batch = stride * self.inner.max_transmit_segments().max(1);
        for chunk in contents.chunks(batch) {
            let transmit = Transmit {
                destination: self.present(forward.to),
                ecn: None,
                contents: chunk,
                segment_size: (chunk.len() > stride).then_some(stride),
                src_ip: None,
            };
            // The relay never waits for its socket: a datagram it cannot send is lost, as on
            // any congested path, and the ends' congestion control slows down.
            if self.inner.try_send(&transmit).is_err() {
                self.paths.drop_one();
            }
        }
    }

    /// Takes the relay datagrams out of one received buffer (`meta.len` bytes, in segments of
    /// `meta.stride`): sends on a relay's, hands this node's sessions' to quinn as from their
    /// peers, and leaves quinn the QUIC datagrams.
    fn sort(&self, buf: &mut [u8], meta: &mut RecvMeta) {
        let len = meta.len.min(buf.len());
        if len == 0 {
            return;
        }
        let stride = match meta.stride {
            0 => len,
            stride => stride.min(len),
        };
        let starts = || (0..len).step_by(stride);
        let end = |start: usize| (start + stride).min(len);
        if !starts().any(|s| dgram::is_relay_datagram(&buf[s..end(s)])) {
            return;
        }
        let from = unmap(meta.addr);
        let segments: Vec<Segment> = starts()
            .map(|s| self.classify(&buf[s..end(s)], from))
            .collect();
        // The usual batches: all of one session's packets, or all to forward to one end.
        if let Some(Segment::Mine(lane)) = segments.first() {
            if segments
                .iter()
                .all(|s| matches!(s, Segment::Mine(l) if Arc::ptr_eq(l, lane)))
            {
                let mut kept = 0;
                for s in starts() {
                    buf.copy_within(s + HEADER..end(s), kept);
                    kept += end(s) - s - HEADER;
                }
                meta.len = kept;
                meta.stride = stride - HEADER;
                meta.addr = self.present(synthetic_addr(lane.peer));
                return;
            }
        }
        if let Some(Segment::Forward(forward)) = segments.first() {
            if segments
                .iter()
                .all(|s| matches!(s, Segment::Forward(f) if f == forward))
            {
                for s in starts() {
                    dgram::set_token(&mut buf[s..end(s)], forward.token);
                }
                self.forward(*forward, &buf[..len], stride);
                meta.len = 0;
                return;
            }
        }
        // A mixed batch: QUIC datagrams stay (moved up so the segments stay `stride` apart:
        // only the last may be shorter), the others go one by one.
        let mut kept = 0;
        for (s, segment) in starts().zip(segments) {
            let e = end(s);
            match segment {
                Segment::Quic => {
                    buf.copy_within(s..e, kept);
                    kept += e - s;
                }
                Segment::Mine(lane) => {
                    let packet = Bytes::copy_from_slice(&buf[s + HEADER..e]);
                    if self
                        .paths
                        .inbound_tx
                        .try_send((synthetic_addr(lane.peer), packet))
                        .is_err()
                    {
                        self.paths.drop_one();
                    }
                }
                Segment::Forward(forward) => {
                    dgram::set_token(&mut buf[s..e], forward.token);
                    self.forward(forward, &buf[s..e], e - s);
                }
                Segment::Gone => {}
            }
        }
        meta.len = kept;
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
        if is_synthetic(destination) {
            if let Some(lane) = self.paths.lane_to(destination) {
                return self.send_on_lane(&lane, transmit);
            }
        } else {
            if self.paths.is_private() {
                lock(&self.paths.sent_to).insert(destination);
            }
            return self.inner.try_send(transmit);
        }
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for datagram in transmit.contents.chunks(segment) {
            self.paths
                .send_relayed(destination, Bytes::copy_from_slice(datagram));
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
            for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()).take(count) {
                self.sort(buf, meta);
            }
            if !self.paths.is_private() {
                return Poll::Ready(Ok(count));
            }
            let sent_to = lock(&self.paths.sent_to);
            let mut kept = 0;
            for meta in meta.iter_mut().take(count) {
                let from = unmap(meta.addr);
                if meta.len == 0 {
                    continue;
                }
                if sent_to.contains(&from) || is_synthetic(from) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    /// A node that has asked for a session to `peer` (quinn sent it a datagram) and the
    /// receiver its opener drains.
    fn with_outbound() -> (Arc<Paths>, NodeId, mpsc::Receiver<Bytes>) {
        let (paths, mut wanted) = Paths::new();
        let peer = Identity::generate().node_id();
        paths.learn(peer);
        paths.send_relayed(synthetic_addr(peer), Bytes::from_static(b"first"));
        let mut session = wanted.try_recv().expect("a session was asked for");
        assert_eq!(session.peer, peer);
        assert_eq!(
            session.outgoing.try_recv().unwrap(),
            Bytes::from_static(b"first")
        );
        (paths, peer, session.outgoing)
    }

    #[test]
    fn the_lower_id_keeps_its_own_session_when_both_ends_dial_at_once() {
        let (paths, peer, mut outbound) = with_outbound();
        let (sender, mut incoming) = mpsc::channel(8);
        assert!(!paths.open_session(peer, sender, true));
        paths.send_relayed(synthetic_addr(peer), Bytes::from_static(b"second"));
        assert_eq!(outbound.try_recv().unwrap(), Bytes::from_static(b"second"));
        assert!(incoming.try_recv().is_err());
    }

    #[test]
    fn the_higher_id_moves_to_the_peers_session_and_its_own_closes() {
        let (paths, peer, mut outbound) = with_outbound();
        let (sender, mut incoming) = mpsc::channel(8);
        assert!(paths.open_session(peer, sender, false));
        paths.send_relayed(synthetic_addr(peer), Bytes::from_static(b"second"));
        assert_eq!(incoming.try_recv().unwrap(), Bytes::from_static(b"second"));
        // Its opener sees the channel closed and finishes the stream.
        assert!(matches!(
            outbound.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        // The opener's clean-up leaves the installed session alone.
        paths.drop_outbound(peer);
        paths.send_relayed(synthetic_addr(peer), Bytes::from_static(b"third"));
        assert_eq!(incoming.try_recv().unwrap(), Bytes::from_static(b"third"));
    }

    /// A relay socket around a real UDP socket, with a datagram path (token 7) from the relay
    /// at `relay` for the returned peer.
    fn with_lane(relay: SocketAddr) -> (RelaySocket, Arc<Paths>, NodeId) {
        use quinn::Runtime;
        let (paths, _wanted) = Paths::new();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inner = quinn::TokioRuntime.wrap_udp_socket(udp).unwrap();
        let socket = RelaySocket::new(inner, paths.clone()).unwrap();
        let peer = Identity::generate().node_id();
        let activity = Arc::new(super::super::session::Activity::new());
        paths.attach_lane(
            Arc::new(Lane::new(peer, relay, 7, activity)),
            &Side::Outbound,
        );
        (socket, paths, peer)
    }

    fn relay_datagram(token: u64, packet: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        dgram::push_datagram(&mut out, token, packet);
        out
    }

    #[tokio::test]
    async fn a_received_batch_of_one_sessions_datagrams_reaches_quinn_as_the_peers_packets() {
        let relay: SocketAddr = "192.0.2.1:7000".parse().unwrap();
        let (socket, paths, peer) = with_lane(relay);
        // Three datagrams in one buffer, 116 bytes apart, the last shorter (as GRO gives them).
        let mut buf = relay_datagram(7, &[1; 100]);
        buf.extend(relay_datagram(7, &[2; 100]));
        buf.extend(relay_datagram(7, &[3; 40]));
        let mut meta = RecvMeta {
            addr: relay,
            len: buf.len(),
            stride: 116,
            ..RecvMeta::default()
        };
        socket.sort(&mut buf, &mut meta);
        assert_eq!((meta.len, meta.stride), (240, 100));
        assert_eq!(meta.addr, synthetic_addr(peer));
        assert_eq!(&buf[..100], &[1; 100]);
        assert_eq!(&buf[100..200], &[2; 100]);
        assert_eq!(&buf[200..240], &[3; 40]);
        assert_eq!(paths.dropped(), 0);
    }

    #[tokio::test]
    async fn a_mixed_batch_keeps_quic_for_quinn_and_drops_spoofed_and_unknown_datagrams() {
        let relay: SocketAddr = "192.0.2.1:7000".parse().unwrap();
        let (socket, paths, peer) = with_lane(relay);
        // A QUIC packet, one of the session's, one with an unknown token, a truncated one.
        let mut buf = vec![0x40; 30];
        buf.extend(relay_datagram(7, &[9; 14]));
        buf.extend(relay_datagram(8, &[9; 14]));
        buf.extend(&dgram::MAGIC);
        let mut meta = RecvMeta {
            addr: relay,
            len: buf.len(),
            stride: 30,
            ..RecvMeta::default()
        };
        socket.sort(&mut buf, &mut meta);
        assert_eq!(
            (meta.len, meta.addr),
            (30, relay),
            "only the QUIC packet stays"
        );
        assert_eq!(&buf[..30], &[0x40; 30]);
        assert_eq!(paths.dropped(), 2);
        let (from, packet) = lock(&paths.inbound_rx).try_recv().unwrap();
        assert_eq!((from, &packet[..]), (synthetic_addr(peer), &[9u8; 14][..]));

        // The session's token from another address than its relay's is dropped.
        let mut spoofed = relay_datagram(7, &[9; 14]);
        let mut meta = RecvMeta {
            addr: "192.0.2.2:7000".parse().unwrap(),
            len: spoofed.len(),
            stride: spoofed.len(),
            ..RecvMeta::default()
        };
        socket.sort(&mut spoofed, &mut meta);
        assert_eq!(meta.len, 0);
        assert_eq!(paths.dropped(), 3);
        assert!(lock(&paths.inbound_rx).try_recv().is_err());
    }

    #[test]
    fn a_closed_session_is_replaced_by_a_new_one_on_the_next_datagram() {
        let (paths, mut wanted) = Paths::new();
        let peer = Identity::generate().node_id();
        let (sender, incoming) = mpsc::channel(8);
        assert!(paths.open_session(peer, sender, true));
        drop(incoming);
        paths.send_relayed(synthetic_addr(peer), Bytes::from_static(b"again"));
        let mut session = wanted.try_recv().expect("a new session was asked for");
        assert_eq!(
            session.outgoing.try_recv().unwrap(),
            Bytes::from_static(b"again")
        );
    }
}
