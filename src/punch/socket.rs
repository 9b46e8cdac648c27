//! [`PunchSocket`]: the node's socket for quinn, around the relay socket, that moves a relayed
//! peer's datagrams onto a punched direct path and back.
//!
//! A relayed peer is addressed by its synthetic address ([`crate::relay::synthetic_addr`]) for
//! the whole life of the QUIC connection. Once a punch has proved a direct address for it, this
//! socket sends that peer's datagrams to the direct address instead, and hands quinn datagrams
//! from the direct address as if they came from the synthetic one. quinn never sees the path
//! change (to it, the path's RTT and loss change): streams in flight carry on, the TLS session
//! stays the same, and falling back to the relay is one map removal.
//!
//! Probes ([`super::probe`]) are taken out of the stream here and passed to the punch service.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use super::probe::Probe;
use crate::relay::{is_synthetic, unmap};

/// Probes waiting for the punch service; past it, more are dropped (they are retried anyway).
const PROBE_QUEUE: usize = 1024;

/// A probe as received: where it came from.
pub(crate) type Received = (SocketAddr, Probe);

#[derive(Debug, Default)]
struct Routes {
    /// Synthetic address -> the direct address its datagrams go to.
    to: HashMap<SocketAddr, SocketAddr>,
    /// Direct address -> the synthetic address its datagrams are handed to quinn from.
    from: HashMap<SocketAddr, SocketAddr>,
}

/// The direct paths the socket uses, shared with the punch service. Addresses are kept
/// unmapped (IPv4 as IPv4).
pub(crate) struct Directs {
    routes: RwLock<Routes>,
    /// Whether any route exists: the common case (none) costs one atomic load per datagram.
    any: AtomicBool,
    probes: mpsc::Sender<Received>,
    /// The socket probes are sent on (the relay socket, around the node's UDP socket).
    sender: Arc<dyn AsyncUdpSocket>,
    ipv6: bool,
    /// Probes dropped: the service's queue was full, or a probe could not be sent.
    dropped: AtomicU64,
}

impl fmt::Debug for Directs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directs")
            .field("routes", &*read(&self.routes))
            .finish_non_exhaustive()
    }
}

fn read(routes: &RwLock<Routes>) -> std::sync::RwLockReadGuard<'_, Routes> {
    // Each critical section is one map operation: a poisoned lock still guards consistent data.
    routes.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(routes: &RwLock<Routes>) -> std::sync::RwLockWriteGuard<'_, Routes> {
    routes.write().unwrap_or_else(PoisonError::into_inner)
}

impl Directs {
    /// Datagrams from `direct` are handed to quinn as from `synthetic` (any other direct
    /// address of the same peer stops being one, except the one it is sent to).
    pub(crate) fn receive_from(&self, direct: SocketAddr, synthetic: SocketAddr) {
        let (direct, synthetic) = (unmap(direct), unmap(synthetic));
        let mut routes = write(&self.routes);
        let sending = routes.to.get(&synthetic).copied();
        routes
            .from
            .retain(|from, to| *to != synthetic || Some(*from) == sending);
        routes.from.insert(direct, synthetic);
        self.any.store(true, Ordering::Release);
    }

    /// Datagrams to `synthetic` go to `direct` (which also becomes a receive route).
    pub(crate) fn send_via(&self, synthetic: SocketAddr, direct: SocketAddr) {
        let (direct, synthetic) = (unmap(direct), unmap(synthetic));
        let mut routes = write(&self.routes);
        routes.to.insert(synthetic, direct);
        routes.from.insert(direct, synthetic);
        self.any.store(true, Ordering::Release);
    }

    /// Datagrams to `synthetic` go through the relay again (those from its direct address
    /// are still taken as the peer's: it may not have noticed yet).
    pub(crate) fn relay_again(&self, synthetic: SocketAddr) {
        write(&self.routes).to.remove(&unmap(synthetic));
    }

    /// Forgets every route of `synthetic`.
    pub(crate) fn forget(&self, synthetic: SocketAddr) {
        let synthetic = unmap(synthetic);
        let mut routes = write(&self.routes);
        routes.to.remove(&synthetic);
        routes.from.retain(|_, to| *to != synthetic);
        self.any.store(
            !routes.to.is_empty() || !routes.from.is_empty(),
            Ordering::Release,
        );
    }

    /// The direct address datagrams to `synthetic` go to now.
    pub(crate) fn sending_to(&self, synthetic: SocketAddr) -> Option<SocketAddr> {
        read(&self.routes).to.get(&unmap(synthetic)).copied()
    }

    /// Sends `probe` to `to` from the node's socket (best effort: a full socket drops it).
    pub(crate) fn send_probe(&self, to: SocketAddr, probe: Probe) {
        let bytes = probe.encode();
        let transmit = Transmit {
            destination: present(self.ipv6, to),
            ecn: None,
            contents: &bytes,
            segment_size: None,
            src_ip: None,
        };
        if self.sender.try_send(&transmit).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Probes dropped (queue full, or the socket could not send).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn take_probe(&self, from: SocketAddr, probe: Probe) {
        if self.probes.try_send((from, probe)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `addr` in the family the socket speaks (IPv4 as IPv4-mapped IPv6 on an IPv6 socket).
fn present(ipv6: bool, addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if ipv6 => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        other => other,
    }
}

/// The node's socket: the relay socket, with punched peers' datagrams on their direct path.
pub struct PunchSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    directs: Arc<Directs>,
}

impl fmt::Debug for PunchSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PunchSocket")
            .field("inner", &self.inner)
            .field("directs", &self.directs)
            .finish()
    }
}

/// Wraps `inner` (the relay socket): the socket, the routes it follows, and the probes it
/// takes out of the stream.
pub(crate) fn wrap(
    inner: Arc<dyn AsyncUdpSocket>,
) -> io::Result<(Arc<PunchSocket>, Arc<Directs>, mpsc::Receiver<Received>)> {
    let ipv6 = inner.local_addr()?.is_ipv6();
    let (probes, probes_rx) = mpsc::channel(PROBE_QUEUE);
    let directs = Arc::new(Directs {
        routes: RwLock::new(Routes::default()),
        any: AtomicBool::new(false),
        probes,
        sender: inner.clone(),
        ipv6,
        dropped: AtomicU64::new(0),
    });
    let socket = PunchSocket {
        inner,
        directs: directs.clone(),
    };
    Ok((Arc::new(socket), directs, probes_rx))
}

impl AsyncUdpSocket for PunchSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if self.directs.any.load(Ordering::Acquire) {
            let destination = unmap(transmit.destination);
            if is_synthetic(destination) {
                if let Some(direct) = self.directs.sending_to(destination) {
                    let direct = Transmit {
                        destination: present(self.directs.ipv6, direct),
                        ecn: transmit.ecn,
                        contents: transmit.contents,
                        segment_size: transmit.segment_size,
                        src_ip: transmit.src_ip,
                    };
                    return self.inner.try_send(&direct);
                }
            }
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let count = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(count)) => count,
                other => return other,
            };
            let mut kept = 0;
            for (buf, meta) in bufs.iter().zip(meta.iter_mut()).take(count) {
                let datagram = &buf[..meta.len.min(buf.len())];
                if datagram.is_empty() {
                    continue;
                }
                if Probe::is_probe(datagram) {
                    let from = unmap(meta.addr);
                    for segment in datagram.chunks(meta.stride.max(1)) {
                        if let Some(probe) = Probe::decode(segment) {
                            self.directs.take_probe(from, probe);
                        }
                    }
                    // An empty datagram: quinn reads nothing from it.
                    meta.len = 0;
                    continue;
                }
                kept += 1;
                if self.directs.any.load(Ordering::Acquire) {
                    let synthetic = read(&self.directs.routes)
                        .from
                        .get(&unmap(meta.addr))
                        .copied();
                    if let Some(synthetic) = synthetic {
                        meta.addr = present(self.directs.ipv6, synthetic);
                    }
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
    use crate::punch::probe::Kind;
    use quinn::Runtime;

    fn socket() -> (
        Arc<PunchSocket>,
        Arc<Directs>,
        mpsc::Receiver<Received>,
        SocketAddr,
    ) {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let inner = quinn::TokioRuntime.wrap_udp_socket(udp).unwrap();
        let (socket, directs, probes) = wrap(inner).unwrap();
        (socket, directs, probes, addr)
    }

    /// Sends as quinn does: waits until the socket is writable, then tries.
    async fn send(socket: &Arc<PunchSocket>, to: SocketAddr, contents: &[u8]) {
        loop {
            writable(socket).await;
            let sent = socket.try_send(&Transmit {
                destination: to,
                ecn: None,
                contents,
                segment_size: None,
                src_ip: None,
            });
            match sent {
                Ok(()) => return,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => panic!("{error}"),
            }
        }
    }

    async fn writable(socket: &Arc<PunchSocket>) {
        let mut poller = socket.clone().create_io_poller();
        std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
            .await
            .unwrap();
    }

    /// The next datagram quinn would read: its source and bytes.
    async fn recv(socket: &PunchSocket) -> (SocketAddr, Vec<u8>) {
        let mut buf = [0u8; 2048];
        std::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            let mut meta = [RecvMeta::default()];
            match socket.poll_recv(cx, &mut bufs, &mut meta) {
                Poll::Ready(Ok(n)) if n > 0 && meta[0].len > 0 => {
                    Poll::Ready((meta[0].addr, bufs[0][..meta[0].len].to_vec()))
                }
                Poll::Ready(Ok(_)) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Poll::Ready(Err(error)) => panic!("{error}"),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_punched_peer_is_reached_directly_and_heard_at_its_synthetic_address() {
        let (a, a_directs, _a_probes, a_addr) = socket();
        let (b, b_directs, _b_probes, b_addr) = socket();
        let b_synthetic: SocketAddr = "240.1.2.3:40000".parse().unwrap();
        let a_synthetic: SocketAddr = "241.3.2.1:40001".parse().unwrap();
        a_directs.send_via(b_synthetic, b_addr);
        b_directs.receive_from(a_addr, a_synthetic);
        send(&a, b_synthetic, b"quic packet").await;
        assert_eq!(recv(&b).await, (a_synthetic, b"quic packet".to_vec()));
        // The path works both ways: what comes back from there is the peer's too.
        send(&b, a_addr, b"answer").await;
        assert_eq!(recv(&a).await, (b_synthetic, b"answer".to_vec()));
        // Sources with no route pass as they are.
        let (c, _c_directs, _c_probes, c_addr) = socket();
        send(&c, a_addr, b"plain").await;
        assert_eq!(recv(&a).await, (c_addr, b"plain".to_vec()));
        a_directs.forget(b_synthetic);
        assert_eq!(a_directs.sending_to(b_synthetic), None);
    }

    #[tokio::test]
    async fn probes_go_to_the_service_and_never_to_quinn() {
        let (a, a_directs, _a_probes, _a_addr) = socket();
        let (b, _b_directs, mut b_probes, b_addr) = socket();
        let probe = Probe {
            kind: Kind::Ping,
            token: 42,
            tx: 7,
        };
        // Probes are best effort: the service repeats them; here, one must leave.
        writable(&a).await;
        a_directs.send_probe(b_addr, probe);
        assert_eq!(a_directs.dropped(), 0);
        // A malformed probe (unknown kind) is dropped: neither quinn nor the service gets it.
        let mut bad = probe.encode();
        bad[8] = 9;
        send(&a, b_addr, &bad).await;
        send(&a, b_addr, b"after").await;
        let (_, bytes) = recv(&b).await;
        assert_eq!(bytes, b"after".to_vec());
        let (_, got) = b_probes.recv().await.unwrap();
        assert_eq!(got, probe);
        assert!(b_probes.try_recv().is_err());
    }
}
