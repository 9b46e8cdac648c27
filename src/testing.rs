//! Test support: a UDP socket that emulates a wide-area network on loopback.
//!
//! This machine has no `tc netem`, so the integration tests, the benchmarks and the simulator
//! comparison give each node a [`DelaySocket`] instead of a plain UDP socket
//! ([`NodeBuilder::socket`](crate::node::NodeBuilder::socket),
//! [`TransportConfig::socket`](crate::transport::TransportConfig::socket)). It implements quinn's
//! [`AsyncUdpSocket`]: every outgoing datagram is held for the one-way delay between the sender's
//! region and the destination's region (half the configured round-trip time), so QUIC's own RTT
//! estimate sees the emulated distances. A socket can also be [silenced](DelaySocket::silence):
//! from then on it drops every datagram in both directions, which is what its peers see when a
//! host dies or its network goes away (no QUIC close, only silence).
//!
//! Nothing here is used by a production node: it is behind the `testing` feature, which the
//! crate's tests and examples turn on, so that they all use the one implementation.
//!
//! ```no_run
//! use std::time::Duration;
//! use wendy::identity::Identity;
//! use wendy::node::Node;
//! use wendy::testing::{DelaySocket, RegionMap};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let map = RegionMap::three_regions();
//! let socket = DelaySocket::bind("127.0.0.1:0".parse()?, &map, 2)?;
//! let (node, _events) = Node::builder(Identity::generate())
//!     .socket(socket.clone())
//!     .spawn()
//!     .await?;
//! // ... later: the node's host "dies" without a word.
//! socket.silence();
//! # Ok(())
//! # }
//! ```

mod cluster;

pub use cluster::{
    leaf_mismatches, seq_of, settle, Cluster, ClusterError, LeafMismatch, Observed, Via,
};

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::ReadBuf;

/// Which region each address is in, and the round-trip time between every pair of regions.
///
/// Shared by all the [`DelaySocket`]s of one emulated network (cheap to clone: clones share
/// the table). A destination that is not in the table gets no delay.
#[derive(Clone)]
pub struct RegionMap {
    inner: Arc<MapInner>,
}

struct MapInner {
    /// `rtt[a][b]`: the round-trip time between regions `a` and `b`.
    rtt: Vec<Vec<Duration>>,
    regions: RwLock<HashMap<SocketAddr, usize>>,
}

impl fmt::Debug for RegionMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionMap")
            .field("rtt", &self.inner.rtt)
            .finish_non_exhaustive()
    }
}

impl RegionMap {
    /// A map with `rtt[a][b]` the round-trip time between regions `a` and `b` (made symmetric:
    /// the larger of `rtt[a][b]` and `rtt[b][a]` counts; a missing entry counts as zero).
    /// Regions are numbered from 0; there are as many as `rtt` has rows.
    pub fn new(rtt: Vec<Vec<Duration>>) -> Self {
        let n = rtt.len();
        let entry = |a: usize, b: usize| rtt[a].get(b).copied().unwrap_or_default();
        let symmetric = (0..n)
            .map(|a| (0..n).map(|b| entry(a, b).max(entry(b, a))).collect())
            .collect();
        Self {
            inner: Arc::new(MapInner {
                rtt: symmetric,
                regions: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Three regions: 1 ms round trip inside a region, 25 ms between regions 0 and 1, 80 ms
    /// between region 2 and the others.
    pub fn three_regions() -> Self {
        let ms = Duration::from_millis;
        Self::new(vec![
            vec![ms(1), ms(25), ms(80)],
            vec![ms(25), ms(1), ms(80)],
            vec![ms(80), ms(80), ms(1)],
        ])
    }

    /// How many regions the map has.
    pub fn region_count(&self) -> usize {
        self.inner.rtt.len()
    }

    /// Puts `addr` in `region` (the sockets of this map do it for their own address).
    pub fn assign(&self, addr: SocketAddr, region: usize) {
        self.inner
            .regions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr, region);
    }

    /// The region of `addr`, if it is in the map.
    pub fn region_of(&self, addr: SocketAddr) -> Option<usize> {
        self.inner
            .regions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&addr)
            .copied()
    }

    /// The emulated round-trip time between two regions (zero for a region out of range).
    pub fn rtt(&self, a: usize, b: usize) -> Duration {
        self.inner
            .rtt
            .get(a)
            .and_then(|row| row.get(b))
            .copied()
            .unwrap_or_default()
    }

    /// The emulated round-trip time between two addresses (zero if either is not in the map).
    pub fn rtt_between(&self, a: SocketAddr, b: SocketAddr) -> Duration {
        match (self.region_of(a), self.region_of(b)) {
            (Some(a), Some(b)) => self.rtt(a, b),
            _ => Duration::ZERO,
        }
    }
}

/// A loopback UDP socket for quinn that delays each outgoing datagram by the one-way delay
/// (half the RTT) between its region and the destination's, and can be silenced to emulate a
/// dead host. See the [module docs](self).
///
/// Datagrams are sent one at a time (no GSO) and without ECN marks.
pub struct DelaySocket {
    io: Arc<tokio::net::UdpSocket>,
    local_addr: SocketAddr,
    region: usize,
    map: RegionMap,
    silenced: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    /// The delay lines' thread (see [`Self::serve_lines`]).
    lines: mpsc::Sender<Delayed>,
}

/// A datagram waiting in a delay line.
struct Delayed {
    due: Instant,
    /// The destination's region: its delay line.
    line: usize,
    destination: SocketAddr,
    contents: Vec<u8>,
}

impl fmt::Debug for DelaySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelaySocket")
            .field("local_addr", &self.local_addr)
            .field("region", &self.region)
            .field("silenced", &self.is_silenced())
            .finish_non_exhaustive()
    }
}

impl DelaySocket {
    /// Binds a UDP socket at `addr` (port 0 picks a free one), puts its address in `region` of
    /// `map`, and returns it ready for [`NodeBuilder::socket`](crate::node::NodeBuilder::socket).
    /// Call it inside a tokio runtime.
    pub fn bind(addr: SocketAddr, map: &RegionMap, region: usize) -> io::Result<Arc<Self>> {
        let std_socket = std::net::UdpSocket::bind(addr)?;
        std_socket.set_nonblocking(true)?;
        let sender = std_socket.try_clone()?;
        let io = tokio::net::UdpSocket::from_std(std_socket)?;
        let local_addr = io.local_addr()?;
        map.assign(local_addr, region);
        let io = Arc::new(io);
        let silenced = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let (lines, queue) = mpsc::channel();
        let (line_count, line_silenced, line_dropped) =
            (map.region_count(), silenced.clone(), dropped.clone());
        std::thread::Builder::new()
            .name("delay-lines".into())
            .spawn(move || {
                Self::serve_lines(queue, line_count, &sender, &line_silenced, &line_dropped);
            })?;
        Ok(Arc::new(Self {
            io,
            local_addr,
            region,
            map: map.clone(),
            silenced,
            dropped,
            lines,
        }))
    }

    /// Sends each delayed datagram when it is due; ends with the socket.
    ///
    /// One delay line per destination region: the delay to a region is constant, so each line
    /// is FIFO (datagrams keep their order, like on a real path). One thread serves the lines
    /// of a socket and waits on its queue with a timeout until the earliest is due: a thread's
    /// timed wait wakes within tens of microseconds, where a tokio timer fires on the next
    /// millisecond tick (up to a whole millisecond late, added to every emulated hop).
    fn serve_lines(
        queue: mpsc::Receiver<Delayed>,
        line_count: usize,
        io: &std::net::UdpSocket,
        silenced: &AtomicBool,
        dropped: &AtomicU64,
    ) {
        let mut lines: Vec<VecDeque<Delayed>> = (0..line_count).map(|_| VecDeque::new()).collect();
        loop {
            let earliest = lines
                .iter()
                .enumerate()
                .filter_map(|(i, line)| line.front().map(|d| (d.due, i)))
                .min();
            let received = match earliest {
                Some((due, i)) => {
                    let now = Instant::now();
                    if due <= now {
                        if let Some(datagram) = lines[i].pop_front() {
                            if silenced.load(Ordering::SeqCst) {
                                dropped.fetch_add(1, Ordering::Relaxed);
                            } else {
                                // Like a real network, a datagram that cannot be sent (a full
                                // buffer) is simply lost.
                                let _ = io.send_to(&datagram.contents, datagram.destination);
                            }
                        }
                        continue;
                    }
                    queue.recv_timeout(due - now)
                }
                None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(datagram) => match lines.get_mut(datagram.line) {
                    Some(line) => line.push_back(datagram),
                    None => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Err(RecvTimeoutError::Timeout) => {}
                // The socket is gone: so is its host.
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// The region this socket is in.
    pub fn region(&self) -> usize {
        self.region
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// From now on, drops every datagram in both directions (also those still being delayed):
    /// the peers see a host that died, not a closed connection.
    pub fn silence(&self) {
        self.silenced.store(true, Ordering::SeqCst);
    }

    /// Whether [`Self::silence`] was called.
    pub fn is_silenced(&self) -> bool {
        self.silenced.load(Ordering::SeqCst)
    }

    /// Datagrams dropped because the socket is silenced (either direction).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn one_way_delay(&self, destination: SocketAddr) -> Duration {
        self.map
            .region_of(destination)
            .map_or(Duration::ZERO, |region| {
                self.map.rtt(self.region, region) / 2
            })
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

impl AsyncUdpSocket for DelaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller { socket: self })
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if self.is_silenced() {
            // A dead host's packets go nowhere; to quinn the send succeeded.
            self.drop_one();
            return Ok(());
        }
        let destination = transmit.destination;
        let delay = self.one_way_delay(destination);
        if delay.is_zero() {
            return self
                .io
                .try_send_to(transmit.contents, destination)
                .map(drop);
        }
        // A delay is only non-zero for a destination in the map, so its region is known.
        let Some(line) = self.map.region_of(destination) else {
            self.drop_one();
            return Ok(());
        };
        let datagram = Delayed {
            due: Instant::now() + delay,
            line,
            destination,
            contents: transmit.contents.to_vec(),
        };
        if self.lines.send(datagram).is_err() {
            self.drop_one();
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(meta)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        loop {
            let mut read = ReadBuf::new(&mut buf[..]);
            let from = match self.io.poll_recv_from(cx, &mut read) {
                Poll::Ready(Ok(from)) => from,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            };
            if self.is_silenced() {
                self.drop_one();
                continue;
            }
            let len = read.filled().len();
            *meta = RecvMeta::default();
            meta.addr = from;
            meta.len = len;
            meta.stride = len;
            return Poll::Ready(Ok(1));
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

/// Wakes quinn when the socket can take another datagram.
#[derive(Debug)]
struct WritablePoller {
    socket: Arc<DelaySocket>,
}

impl UdpPoller for WritablePoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.io.poll_send_ready(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_symmetric_and_unknown_addresses_are_not_delayed() {
        let ms = Duration::from_millis;
        let map = RegionMap::new(vec![vec![ms(1), ms(10)], vec![ms(30), ms(2)]]);
        assert_eq!(map.rtt(0, 1), ms(30));
        assert_eq!(map.rtt(1, 0), ms(30));
        let ragged = RegionMap::new(vec![vec![ms(1)], vec![ms(4), ms(2)]]);
        assert_eq!(ragged.rtt(0, 1), ms(4));
        assert_eq!(ragged.rtt(0, 2), Duration::ZERO);
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        map.assign(a, 0);
        map.assign(b, 1);
        assert_eq!(map.rtt_between(a, b), ms(30));
        assert_eq!(map.rtt_between(a, c), Duration::ZERO);
    }

    #[tokio::test]
    async fn datagrams_arrive_no_sooner_than_their_delay_and_in_order() {
        let ms = Duration::from_millis;
        let map = RegionMap::new(vec![vec![ms(1), ms(30)], vec![ms(30), ms(1)]]);
        let socket = DelaySocket::bind("127.0.0.1:0".parse().unwrap(), &map, 0).unwrap();
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // A hang guard: a lost datagram fails the test instead of blocking it.
        receiver
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let to = receiver.local_addr().unwrap();
        map.assign(to, 1);
        let sent = Instant::now();
        for n in 0..3u8 {
            let contents = [n];
            let transmit = Transmit {
                destination: to,
                ecn: None,
                contents: &contents,
                segment_size: None,
                src_ip: None,
            };
            socket.try_send(&transmit).unwrap();
        }
        let mut buf = [0u8; 8];
        for n in 0..3u8 {
            let (len, _) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..len], &[n]);
            assert!(
                sent.elapsed() >= ms(15),
                "released before its one-way delay"
            );
        }
    }
}
