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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use super::session::{KEEPALIVE, SILENCE};
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
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_links: 256,
            max_homed: 1024,
            link_bytes_per_sec: 64 << 20,
            total_bytes_per_sec: 256 << 20,
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
    /// Bytes carried through this relay, both directions, all links.
    pub bytes_relayed: u64,
    /// Home and connect streams refused (any reason).
    pub refused: u64,
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
}

impl RelayServer {
    pub(crate) fn new(limits: RelayLimits) -> Self {
        Self {
            limits,
            homes: Mutex::new(HashMap::new()),
            next_home: AtomicU64::new(0),
            links: AtomicUsize::new(0),
            bytes: Arc::new(AtomicU64::new(0)),
            refused: AtomicU64::new(0),
            total: Arc::new(Bucket::new(limits.total_bytes_per_sec)),
        }
    }

    pub(crate) fn status(&self) -> RelayServerStatus {
        RelayServerStatus {
            homed: self
                .homes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            links: self.links.load(Ordering::Relaxed),
            bytes_relayed: self.bytes.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
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

    /// Serves a connect stream from `from` to `target`: pairs it with a stream to the target
    /// and copies bytes between them until either ends.
    pub(crate) async fn serve_connect(
        &self,
        transport: &Transport,
        from: NodeId,
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
        if stream.write_all(&[ACCEPTED]).await.is_err() {
            return;
        }
        debug!(%from, %target, "relaying");
        let a_to_b = copy(
            &mut stream.recv,
            &mut other.send,
            self.limits.link_bytes_per_sec,
            &self.total,
            &self.bytes,
        );
        let b_to_a = copy(
            &mut other.recv,
            &mut stream.send,
            self.limits.link_bytes_per_sec,
            &self.total,
            &self.bytes,
        );
        tokio::select! {
            () = a_to_b => {}
            () = b_to_a => {}
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

/// Copies bytes from `reader` to `writer` within the link's and the relay's rates, counting them.
/// The chunks quinn received are handed on as they are (no copy), several per write.
async fn copy(
    reader: &mut RecvStream,
    writer: &mut SendStream,
    link_rate: u64,
    total: &Bucket,
    counted: &AtomicU64,
) {
    let link = Bucket::new(link_rate);
    let mut chunks = vec![Bytes::new(); 32];
    loop {
        let count = match reader.read_chunks(&mut chunks).await {
            Ok(Some(count)) => count,
            Ok(None) | Err(_) => return,
        };
        let n: usize = chunks[..count].iter().map(Bytes::len).sum();
        link.take(n).await;
        total.take(n).await;
        if writer.write_all_chunks(&mut chunks[..count]).await.is_err() {
            return;
        }
        counted.fetch_add(n as u64, Ordering::Relaxed);
    }
}
