//! The relay role: private nodes home here, and other nodes reach them through here.
//!
//! A private node opens a home stream ([`Body::RelayHome`]); the relay answers one byte
//! ([`ACCEPTED`]) and keeps the stream as the proof that the node is homed, with keep-alives
//! both ways (see `session.rs`). A node that wants to reach a homed node opens a
//! [`Body::RelayConnect`] stream naming it; the relay opens a [`Body::RelayIncoming`] stream to
//! the target over the target's own link, answers [`ACCEPTED`] to the dialer, and from then on
//! copies bytes between the two streams, within its limits. It never reads what it copies: the
//! bytes are QUIC datagrams of the two nodes' end-to-end connection, encrypted by their TLS.
//!
//! A refusal resets the stream with a [`StreamErrorCode`]: `RelayNotARelay` (this node does not
//! relay), `RelayNotHomed` (the target is not homed here), `RelayFull` (no room for another
//! relayed link or homed node), `RelayTargetUnreachable` (the target's link failed).
//!
//! When it pairs the streams, the relay grants each end a token for the link's datagram path
//! (the first frame it writes on each stream; see `dgram.rs`): datagrams with a token, from the
//! address of the link to the node it was given to, go out of the relay's socket to the other
//! end. The link's and the relay's rate limits apply to both paths, and its slot covers both.
//!
//! A relayed link ends when either stream ends (an end's link closed, or the end finished its
//! session) and when it carried nothing but keep-alives for [`RelayLimits::idle`]: the relay
//! follows the frames' lengths (never their contents) to tell the two apart. Its slot is free
//! again at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use super::dgram;
use super::session::{Activity, KEEPALIVE, SILENCE};
use super::socket::Paths;
use crate::id::NodeId;
use crate::transport::{RawStream, StreamErrorCode, Transport};
use crate::wire::Body;

/// The byte a relay writes first on a home or connect stream it accepts.
pub(crate) const ACCEPTED: u8 = 0;

/// A relay's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// The most relayed links (connect streams) carried at once; beyond it a new one is
    /// refused with `RelayFull`. Default 256.
    pub max_links: usize,
    /// The most private nodes homed at once; beyond it a new home is refused with `RelayFull`.
    /// Default 1024.
    pub max_homed: usize,
    /// Bytes per second one relayed link may carry in each direction (0: no limit). Default
    /// 64 MiB/s.
    pub link_bytes_per_sec: u64,
    /// Bytes per second all relayed links together may carry (0: no limit). Default 256 MiB/s.
    pub total_bytes_per_sec: u64,
    /// How long a relayed link may carry only keep-alives before the relay ends it. Default
    /// 90 s: longer than the QUIC keep-alive interval of the connection inside, so only a
    /// link whose connection is gone idles that long.
    pub idle: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_links: 256,
            max_homed: 1024,
            link_bytes_per_sec: 64 << 20,
            total_bytes_per_sec: 256 << 20,
            idle: Duration::from_secs(90),
        }
    }
}

/// What a relay reports (status and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayServerStatus {
    /// Private nodes homed here now.
    pub homed: usize,
    /// Relayed links carried now.
    pub links: usize,
    /// Bytes carried through this relay, both directions, all links (both paths).
    pub bytes_relayed: u64,
    /// Home and connect streams refused (any reason).
    pub refused: u64,
    /// Datagrams forwarded on the datagram path (probes included).
    pub datagrams_relayed: u64,
    /// Bytes of those datagrams (part of `bytes_relayed`).
    pub datagram_bytes_relayed: u64,
    /// Relay datagrams dropped: unknown token, wrong source, malformed, oversized, or over the
    /// rate limits.
    pub datagrams_refused: u64,
}

/// A token bucket: `take` waits until the bytes fit the rate (a burst of 100 ms is free).
#[derive(Debug)]
struct Bucket {
    rate: u64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Self {
            rate,
            state: Mutex::new((rate as f64 / 10.0, Instant::now())),
        }
    }

    /// Takes `bytes` if they fit the rate now (a datagram that does not is dropped).
    fn try_take(&self, bytes: usize) -> bool {
        if self.rate == 0 {
            return true;
        }
        let rate = self.rate as f64;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let (tokens, last) = *state;
        let refilled = (tokens + now.duration_since(last).as_secs_f64() * rate).min(rate / 10.0);
        let fits = refilled >= bytes as f64;
        *state = (
            if fits {
                refilled - bytes as f64
            } else {
                refilled
            },
            now,
        );
        fits
    }

    async fn take(&self, bytes: usize) {
        if self.rate == 0 {
            return;
        }
        let rate = self.rate as f64;
        let wait = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let (tokens, last) = *state;
            let refilled =
                (tokens + now.duration_since(last).as_secs_f64() * rate).min(rate / 10.0);
            let left = refilled - bytes as f64;
            *state = (left, now);
            if left < 0.0 {
                Duration::from_secs_f64(-left / rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The relay role of a node (present only on nodes started as relays).
#[derive(Debug)]
pub(crate) struct RelayServer {
    limits: RelayLimits,
    /// Homed nodes and the address of their link.
    homes: Mutex<HashMap<NodeId, (SocketAddr, u64)>>,
    next_home: AtomicU64,
    links: AtomicUsize,
    bytes: Arc<AtomicU64>,
    refused: AtomicU64,
    total: Arc<Bucket>,
    /// The node's socket state, whose forwarder carries the datagram path.
    paths: Arc<Paths>,
}

impl RelayServer {
    pub(crate) fn new(limits: RelayLimits, paths: Arc<Paths>) -> Self {
        Self {
            limits,
            homes: Mutex::new(HashMap::new()),
            next_home: AtomicU64::new(0),
            links: AtomicUsize::new(0),
            bytes: Arc::new(AtomicU64::new(0)),
            refused: AtomicU64::new(0),
            total: Arc::new(Bucket::new(limits.total_bytes_per_sec)),
            paths,
        }
    }

    pub(crate) fn status(&self) -> RelayServerStatus {
        let counts = &self.paths.forwarder.counts;
        let datagram_bytes = counts.bytes.load(Ordering::Relaxed);
        RelayServerStatus {
            homed: self
                .homes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            links: self.links.load(Ordering::Relaxed),
            bytes_relayed: self.bytes.load(Ordering::Relaxed) + datagram_bytes,
            refused: self.refused.load(Ordering::Relaxed),
            datagrams_relayed: counts.datagrams.load(Ordering::Relaxed),
            datagram_bytes_relayed: datagram_bytes,
            datagrams_refused: counts.dropped.load(Ordering::Relaxed),
        }
    }

    fn refuse(&self, stream: &mut RawStream, code: StreamErrorCode, who: NodeId) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        debug!(%who, ?code, "relay refused a stream");
        stream.reset(code);
    }

    /// Serves a home stream from `node` until it ends or goes silent.
    pub(crate) async fn serve_home(&self, node: NodeId, addr: SocketAddr, mut stream: RawStream) {
        let ticket = self.next_home.fetch_add(1, Ordering::Relaxed);
        {
            let mut homes = self.homes.lock().unwrap_or_else(PoisonError::into_inner);
            if homes.len() >= self.limits.max_homed && !homes.contains_key(&node) {
                drop(homes);
                return self.refuse(&mut stream, StreamErrorCode::RelayFull, node);
            }
            homes.insert(node, (addr, ticket));
        }
        info!(%node, %addr, "node homed on this relay");
        if stream.write_all(&[ACCEPTED]).await.is_ok() {
            keep_alive(&mut stream).await;
        }
        let mut homes = self.homes.lock().unwrap_or_else(PoisonError::into_inner);
        if homes.get(&node).is_some_and(|(_, t)| *t == ticket) {
            homes.remove(&node);
            info!(%node, "node no longer homed on this relay");
        }
    }

    /// Serves a connect stream from `from` (linked at `from_addr`) to `target`: pairs it with a
    /// stream to the target, grants both ends a datagram path, and copies bytes between the
    /// streams until either ends.
    pub(crate) async fn serve_connect(
        &self,
        transport: &Transport,
        from: NodeId,
        from_addr: SocketAddr,
        target: NodeId,
        advertised: SocketAddr,
        mut stream: RawStream,
    ) {
        let home = self
            .homes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&target)
            .map(|(addr, _)| *addr);
        let Some(target_addr) = home else {
            return self.refuse(&mut stream, StreamErrorCode::RelayNotHomed, from);
        };
        let links = self.links.fetch_add(1, Ordering::SeqCst);
        let _count = crate::task::OnDrop::new(|| {
            self.links.fetch_sub(1, Ordering::SeqCst);
        });
        if links >= self.limits.max_links {
            return self.refuse(&mut stream, StreamErrorCode::RelayFull, from);
        }
        let header = Body::RelayIncoming { from, advertised };
        let mut other = match transport.open_stream(target, target_addr, &header).await {
            Ok(other) => other,
            Err(error) => {
                debug!(%target, %error, "relay could not reach a homed node");
                return self.refuse(&mut stream, StreamErrorCode::RelayTargetUnreachable, from);
            }
        };
        let rate = self.limits.link_bytes_per_sec;
        let (a_to_b, b_to_a) = (Arc::new(Bucket::new(rate)), Arc::new(Bucket::new(rate)));
        let activity = Arc::new(Activity::new());
        let allow = |link: &Arc<Bucket>| {
            let (link, total) = (link.clone(), self.total.clone());
            let allow: dgram::Allow =
                Arc::new(move |bytes| link.try_take(bytes) && total.try_take(bytes));
            allow
        };
        let forwarder = &self.paths.forwarder;
        let tokens = forwarder.pair(
            from_addr,
            target_addr,
            allow(&a_to_b),
            allow(&b_to_a),
            activity.clone(),
        );
        let _routes = crate::task::OnDrop::new(|| forwarder.unpair(tokens));
        let mut accepted = vec![ACCEPTED];
        accepted.extend_from_slice(&dgram::grant_frame(tokens.0));
        if stream.write_all(&accepted).await.is_err()
            || other
                .write_all(&dgram::grant_frame(tokens.1))
                .await
                .is_err()
        {
            return;
        }
        debug!(%from, %target, "relaying");
        let (a_write, a_read) = stream.io();
        let (b_write, b_read) = other.io();
        let a_to_b = copy(a_read, b_write, self, &a_to_b, &activity);
        let b_to_a = copy(b_read, a_write, self, &b_to_a, &activity);
        tokio::select! {
            () = a_to_b => {}
            () = b_to_a => {}
            () = activity.idle(self.limits.idle) => {
                debug!(%from, %target, "relayed link idle; ended");
            }
        }
        other.reset(StreamErrorCode::RelayTargetUnreachable);
        stream.reset(StreamErrorCode::RelayTargetUnreachable);
    }
}

/// Echoes keep-alives on a home stream: writes one each [`KEEPALIVE`], returns when the other
/// side has been silent for [`SILENCE`] or the stream ends.
pub(crate) async fn keep_alive(stream: &mut RawStream) {
    let (mut writer, mut reader) = stream.io();
    let write = async {
        loop {
            tokio::time::sleep(KEEPALIVE).await;
            if writer.write_all(&[1]).await.is_err() {
                return;
            }
        }
    };
    let read = async {
        let mut byte = [0u8; 1];
        loop {
            match tokio::time::timeout(SILENCE, reader.read(&mut byte)).await {
                Ok(Ok(1)) => {}
                _ => return,
            }
        }
    };
    tokio::select! {
        () = write => {}
        () = read => {}
    }
}

/// Copies bytes from `reader` to `writer` within the link's and the relay's rates, counting them
/// and noting when datagrams (not keep-alives) cross.
async fn copy(
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    relay: &RelayServer,
    link: &Bucket,
    activity: &Activity,
) {
    let mut frames = Frames::default();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frames.carries_data(&buf[..n]) {
            activity.touch();
        }
        link.take(n).await;
        relay.total.take(n).await;
        if writer.write_all(&buf[..n]).await.is_err() {
            return;
        }
        relay.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Follows the frame boundaries of one direction of a relayed link (see `session.rs`) without
/// reading what the frames carry: only the 2-byte lengths.
#[derive(Debug, Default)]
struct Frames {
    /// The first byte of a length whose second byte has not arrived.
    half: Option<u8>,
    /// Bytes of the current frame's datagram still to come.
    left: usize,
}

impl Frames {
    /// Whether `bytes`, the next bytes of the direction, carry any part of a datagram.
    fn carries_data(&mut self, mut bytes: &[u8]) -> bool {
        let mut data = false;
        while let Some((&first, rest)) = bytes.split_first() {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                self.left -= n;
                bytes = &bytes[n..];
                data = true;
                continue;
            }
            match self.half.take() {
                None => self.half = Some(first),
                Some(high) => self.left = usize::from(u16::from_be_bytes([high, first])),
            }
            bytes = rest;
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_tell_datagrams_from_keep_alives_across_any_split() {
        let mut frames = Frames::default();
        assert!(!frames.carries_data(&[0, 0, 0, 0]));
        assert!(!frames.carries_data(&[0]));
        assert!(!frames.carries_data(&[0]));
        // A 3-byte datagram whose length and body arrive in pieces.
        assert!(!frames.carries_data(&[0]));
        assert!(frames.carries_data(&[3, 9]));
        assert!(frames.carries_data(&[9, 9]));
        // Then keep-alives only: a datagram of zeros ended exactly before them.
        assert!(!frames.carries_data(&[0, 0]));
        assert!(frames.carries_data(&[0, 0, 0, 1, 0, 0, 0]));
        assert!(!frames.carries_data(&[0, 0]));
    }
}
