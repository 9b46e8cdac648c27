//! One relay session: the datagrams between this node and one relayed peer, carried on a QUIC
//! stream to (or from) a relay.
//!
//! Framing, the same on every leg (the relay copies the bytes as they are): a 2-byte big-endian
//! length, then that many bytes of one QUIC datagram of the end-to-end connection. A length of
//! zero is a keep-alive. An idle session sends one every [`KEEPALIVE`] and counts as dead after
//! [`SILENCE`] with nothing heard. A session that carried a datagram within [`ACTIVE_FOR`] is
//! *active*: each end then sends a keep-alive every [`ACTIVE_KEEPALIVE`] it sends nothing
//! else, and [`ACTIVE_SILENCE`] without a byte from the far end ends it (its silence counted
//! from the datagram that woke it, at the earliest). So a relay that dies under a session in use
//! is noticed well before the Pastry core, whose probes ride that session, would take the
//! peer behind it for dead; the dialer then moves the session to another relay. (The QUIC idle
//! timeout of the link to the relay is a minute.)
//!
//! A session lives only as long as the connection inside it needs it: it ends when its stream
//! breaks (the link to the relay is gone), when the node stops it ([`Stop`]: the inner
//! connection closed), and when no datagram crossed it either way for its idle time (only
//! keep-alives: the inner connection, whose own keep-alives are far more frequent than that,
//! is gone). An ended session finishes its stream, so the relay frees the link's slot too.
//!
//! Next to the datagrams, the stream carries control frames whose body starts with
//! [`dgram::MAGIC`] (no QUIC datagram does): the relay's grant of a token for the session's
//! datagram path (its first frame), and the acks by which each end tells the other that its
//! datagrams arrive on that path (see `dgram.rs`). An end whose datagram path is proven sends
//! its packets there and the stream carries keep-alives and acks only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::debug;

use super::dgram::{self, Control, Lane};
use super::socket::{Paths, SessionSender, Side};
use crate::id::NodeId;
use crate::transport::RawStream;

/// How often an idle session (and a home stream) sends a keep-alive.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(1);

/// How long an idle session (or a home stream) may stay silent before it counts as dead.
pub(crate) const SILENCE: Duration = Duration::from_secs(3);

/// How long after a datagram crossed it (either way) a session counts as active.
pub(crate) const ACTIVE_FOR: Duration = Duration::from_secs(2);

/// How often an active session sends a keep-alive when it has nothing else to send.
pub(crate) const ACTIVE_KEEPALIVE: Duration = Duration::from_millis(100);

/// How long an active session may stay silent before it counts as dead: four keep-alive
/// periods, so a far end late by a few scheduling hiccups on a loaded host is not cut off, and
/// well under the core's probe timeout on a fast link (three RTTs plus 250 ms, then twice
/// that), so the session moves to another relay before the peer is declared dead.
pub(crate) const ACTIVE_SILENCE: Duration = Duration::from_millis(400);

/// How often the silence watch looks.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// The socket dropped the session (the node is shutting down).
    Closed,
    /// The stream failed or went silent: the relay or the peer is gone.
    Broken,
    /// The node stopped it: the connection inside it closed.
    Stopped,
    /// No datagram crossed it for its idle time, only keep-alives.
    Idle,
}

/// The node's handle to end a running session (a stop sent before the session waits for it
/// still counts).
#[derive(Debug, Default)]
pub(crate) struct Stop(Notify);

impl Stop {
    pub(crate) fn stop(&self) {
        self.0.notify_one();
    }
}

/// When a datagram last crossed a session (either way), and when this end last heard from the
/// far end.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    heard_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            heard_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A datagram crossed.
    pub(crate) fn touch(&self) {
        let now = self.now_ms();
        let before = self.last_ms.fetch_max(now, Ordering::Relaxed);
        if now.saturating_sub(before) >= ACTIVE_FOR.as_millis() as u64 {
            // Waking from idle: the far end still sends keep-alives at the idle pace until it
            // sees this datagram, so the active silence counts from now.
            self.heard_ms.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Bytes came from the far end.
    pub(crate) fn hear(&self) {
        self.heard_ms.fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether a datagram crossed within [`ACTIVE_FOR`].
    fn active(&self) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        self.now_ms().saturating_sub(last) < ACTIVE_FOR.as_millis() as u64
    }

    /// How often this end sends a keep-alive when it has nothing else to send.
    fn keepalive(&self) -> Duration {
        if self.active() {
            ACTIVE_KEEPALIVE
        } else {
            KEEPALIVE
        }
    }

    /// Returns once the far end has been silent for [`ACTIVE_SILENCE`] while the session is
    /// active, or for [`SILENCE`].
    async fn silent(&self) {
        loop {
            let limit = if self.active() {
                ACTIVE_SILENCE
            } else {
                SILENCE
            };
            let heard = self.heard_ms.load(Ordering::Relaxed);
            if self.now_ms().saturating_sub(heard) >= limit.as_millis() as u64 {
                return;
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }

    /// Returns once no datagram has crossed for `idle`.
    pub(super) async fn idle(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.start + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Carries datagrams both ways until the stream breaks or goes silent, the node stops the
/// session, or it idles for `idle`; then finishes this end of the stream.
/// `relay` is the address of this node's link to the relay.
pub(crate) async fn run(
    paths: Arc<Paths>,
    peer: NodeId,
    relay: SocketAddr,
    outgoing: &mut mpsc::Receiver<Bytes>,
    stream: &mut RawStream,
    stop: &Stop,
    idle: Duration,
) -> SessionEnd {
    let ends = Ends {
        paths: &paths,
        peer,
        relay,
        side: Side::Outbound,
    };
    run_as(ends, outgoing, stream, stop, idle).await
}

/// Who a session runs between, and which of the node's sessions with the peer it is.
struct Ends<'a> {
    paths: &'a Paths,
    peer: NodeId,
    /// The address of this node's link to the relay.
    relay: SocketAddr,
    side: Side,
}

async fn run_as(
    ends: Ends<'_>,
    outgoing: &mut mpsc::Receiver<Bytes>,
    stream: &mut RawStream,
    stop: &Stop,
    idle: Duration,
) -> SessionEnd {
    let end = {
        let (writer, reader) = stream.io();
        carry(writer, reader, &ends, outgoing, stop, idle).await
    };
    // The relay sees the finish and frees the relayed link (a broken stream is gone already).
    let _ = stream.send.finish();
    end
}

async fn carry(
    writer: impl AsyncWrite + Unpin,
    reader: impl AsyncRead + Unpin,
    ends: &Ends<'_>,
    outgoing: &mut mpsc::Receiver<Bytes>,
    stop: &Stop,
    idle: Duration,
) -> SessionEnd {
    let activity = Arc::new(Activity::new());
    let lane = OnceLock::new();
    let end = tokio::select! {
        end = pump_out(writer, outgoing, &activity, ends.paths, &lane) => end,
        () = pump_in(reader, ends, &activity, &lane) => SessionEnd::Broken,
        () = activity.silent() => SessionEnd::Broken,
        () = stop.0.notified() => SessionEnd::Stopped,
        () = activity.idle(idle) => SessionEnd::Idle,
    };
    if let Some(lane) = lane.get() {
        ends.paths.detach_lane(lane);
    }
    end
}

/// The datagram path's share of a write on the stream: an ack if the far end's datagrams
/// arrived since the last one, a probe while the path is unproven, and the fallback to the
/// stream when this end's datagrams go unacknowledged.
fn tend_lane(buf: &mut Vec<u8>, lane: &OnceLock<Arc<Lane>>, paths: &Paths, activity: &Activity) {
    let Some(lane) = lane.get() else {
        return;
    };
    if lane.take_heard() {
        tracing::trace!(peer = %lane.peer, "acknowledging relay datagrams");
        push_frame(buf, &dgram::ack());
    }
    if lane.check_silence() {
        debug!(peer = %lane.peer, relay = %lane.relay, "relay datagrams unacknowledged; back on the stream");
    }
    if lane.probe_due(activity.keepalive()) {
        tracing::trace!(peer = %lane.peer, "probing the relay datagram path");
        paths.send_probe(lane);
    }
}

async fn pump_out(
    mut writer: impl AsyncWrite + Unpin,
    outgoing: &mut mpsc::Receiver<Bytes>,
    activity: &Activity,
    paths: &Paths,
    lane: &OnceLock<Arc<Lane>>,
) -> SessionEnd {
    let mut buf = Vec::with_capacity(64 << 10);
    loop {
        buf.clear();
        // A probe of the far end is answered at once: it waits for the ack to use the path.
        let probed = async {
            match lane.get() {
                Some(lane) => lane.ack_wanted().await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            received = outgoing.recv() => Ok(received),
            () = tokio::time::sleep(activity.keepalive()) => Err(()),
            () = probed => Err(()),
        };
        match next {
            Ok(Some(datagram)) => {
                push_frame(&mut buf, &datagram);
                // Batch what is already queued into one write.
                while buf.len() < 48 << 10 {
                    match outgoing.try_recv() {
                        Ok(datagram) => push_frame(&mut buf, &datagram),
                        Err(_) => break,
                    }
                }
                activity.touch();
            }
            Ok(None) => return SessionEnd::Closed,
            Err(_) => {}
        }
        tend_lane(&mut buf, lane, paths, activity);
        if buf.is_empty() {
            buf.extend_from_slice(&[0, 0]);
        }
        if writer.write_all(&buf).await.is_err() {
            return SessionEnd::Broken;
        }
    }
}

fn push_frame(buf: &mut Vec<u8>, datagram: &[u8]) {
    // Datagrams longer than a frame can say are not QUIC's (its packets are far smaller).
    let Ok(len) = u16::try_from(datagram.len()) else {
        return;
    };
    if len == 0 {
        return;
    }
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(datagram);
}

async fn pump_in(
    reader: impl AsyncRead + Unpin,
    ends: &Ends<'_>,
    activity: &Arc<Activity>,
    lane: &OnceLock<Arc<Lane>>,
) {
    // The silence watch (`Activity::silent`) ends a session whose far end went quiet.
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    // Only the first frame can be the relay's grant: it writes it before anything it copies,
    // so a grant later on comes from the peer and is ignored.
    let mut first = true;
    loop {
        let may_grant = std::mem::take(&mut first);
        let mut len = [0u8; 2];
        if reader.read_exact(&mut len).await.is_err() {
            return;
        }
        activity.hear();
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 {
            continue;
        }
        let mut datagram = BytesMut::zeroed(len);
        if reader.read_exact(&mut datagram).await.is_err() {
            return;
        }
        activity.hear();
        match dgram::control(&datagram) {
            None => {}
            Some(Control::Grant(token)) if may_grant => {
                let granted = Arc::new(Lane::new(ends.peer, ends.relay, token, activity.clone()));
                ends.paths.attach_lane(granted.clone(), &ends.side);
                ends.paths.send_probe(&granted);
                let _ = lane.set(granted);
                continue;
            }
            Some(Control::Ack) => {
                if let Some(lane) = lane.get() {
                    if lane.acked() {
                        debug!(peer = %lane.peer, relay = %lane.relay, "relay datagram path proven");
                    }
                }
                continue;
            }
            Some(_) => continue,
        }
        activity.touch();
        if !ends.paths.deliver(ends.peer, datagram.freeze()).await {
            return;
        }
    }
}

/// A session `peer` opened, installed in the socket (or not: see [`Paths::open_session`]
/// for `keep_outbound`) and ready to [`Incoming::run`].
pub(crate) struct Incoming {
    sender: SessionSender,
    outgoing: mpsc::Receiver<Bytes>,
    /// Whether it carries this node's datagrams to the peer.
    pub(crate) installed: bool,
}

impl Incoming {
    pub(crate) fn install(paths: &Paths, peer: NodeId, keep_outbound: bool) -> Self {
        let (sender, outgoing) = mpsc::channel(super::socket::SESSION_QUEUE);
        let installed = paths.open_session(peer, sender.clone(), keep_outbound);
        Self {
            sender,
            outgoing,
            installed,
        }
    }

    /// Runs the session on `stream`, from the relay at `relay` (the address of this node's link
    /// to it); returns how it ended (it is gone from the socket by then).
    pub(crate) async fn run(
        mut self,
        paths: Arc<Paths>,
        peer: NodeId,
        relay: SocketAddr,
        stream: &mut RawStream,
        stop: &Stop,
        idle: Duration,
    ) -> SessionEnd {
        let ends = Ends {
            paths: &paths,
            peer,
            relay,
            side: Side::Incoming(self.sender.clone()),
        };
        let end = run_as(ends, &mut self.outgoing, stream, stop, idle).await;
        close(&paths, peer, &self.sender);
        end
    }
}

/// Forgets a session in the socket.
pub(crate) fn close(paths: &Paths, peer: NodeId, sender: &SessionSender) {
    paths.close_session(peer, sender);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    /// The far end of a session as the relay would carry it: a keep-alive, or a datagram if
    /// `data`, every `every`; it reads what the session sends.
    async fn far_end(io: tokio::io::DuplexStream, every: Duration, data: bool) {
        let (mut reader, mut writer) = tokio::io::split(io);
        tokio::spawn(async move {
            let mut sink = vec![0u8; 4096];
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let frame: &[u8] = if data { &[0, 3, 1, 2, 3] } else { &[0, 0] };
        while writer.write_all(frame).await.is_ok() {
            tokio::time::sleep(every).await;
        }
    }

    async fn session(every: Duration, data: bool, idle: Duration, stop: &Stop) -> SessionEnd {
        let (paths, _wanted) = Paths::new();
        let peer = Identity::generate().node_id();
        let (ours, theirs) = tokio::io::duplex(64 << 10);
        tokio::spawn(far_end(theirs, every, data));
        let (_sender, mut outgoing) = mpsc::channel(8);
        let (reader, writer) = tokio::io::split(ours);
        let ends = Ends {
            paths: &paths,
            peer,
            relay: "127.0.0.1:1".parse().unwrap(),
            side: Side::Outbound,
        };
        carry(writer, reader, &ends, &mut outgoing, stop, idle).await
    }

    #[tokio::test]
    async fn a_session_that_carries_only_keep_alives_ends_once_idle() {
        let idle = Duration::from_millis(500);
        let started = Instant::now();
        let end = session(Duration::from_millis(100), false, idle, &Stop::default()).await;
        assert_eq!(end, SessionEnd::Idle);
        assert!(started.elapsed() >= idle);
    }

    #[tokio::test]
    async fn datagrams_keep_a_session_open_until_the_node_stops_it() {
        let stop = Arc::new(Stop::default());
        let stopper = stop.clone();
        let idle = Duration::from_secs(2);
        tokio::spawn(async move {
            tokio::time::sleep(idle * 2).await;
            stopper.stop();
        });
        let started = Instant::now();
        let end = session(Duration::from_millis(100), true, idle, &stop).await;
        assert_eq!(end, SessionEnd::Stopped);
        assert!(started.elapsed() >= idle * 2);
    }

    #[tokio::test]
    async fn an_active_session_whose_far_end_goes_silent_breaks_before_the_idle_silence() {
        // The far end sends one datagram, then nothing (its relay died). The node stops the
        // session at ACTIVE_FOR, short of SILENCE: only the active watch ends it before that.
        let stop = Arc::new(Stop::default());
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ACTIVE_FOR).await;
            stopper.stop();
        });
        let hour = Duration::from_secs(3600);
        let end = session(hour, true, hour, &stop).await;
        assert_eq!(end, SessionEnd::Broken);
    }

    #[tokio::test]
    async fn a_stop_sent_before_the_session_runs_still_ends_it() {
        let stop = Stop::default();
        stop.stop();
        let end = session(KEEPALIVE, false, Duration::from_secs(3600), &stop).await;
        assert_eq!(end, SessionEnd::Stopped);
    }
}
