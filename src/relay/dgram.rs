//! The datagram path of a relayed link: the end-to-end QUIC packets sent as plain UDP
//! datagrams through the relay's own socket, next to the session's stream.
//!
//! A relay session's stream (see `session.rs`) costs two more QUIC connections per relayed
//! byte (the two links to the relay), each with its own encryption and per-packet work. So once
//! the relay pairs a session it hands each end a random **token** on that end's stream (a
//! [`grant`] frame, the first frame it writes). An end then sends
//! `[MAGIC | token | QUIC packet]` from its node socket to the relay's address (the one its
//! link to the relay uses, so any NAT mapping already exists). The relay's socket takes such
//! datagrams out before quinn sees them ([`Forwarder`]): it checks the token, and that the
//! datagram comes from the address of its authenticated link to the node the token was given
//! to, within the link's rate limits; it writes the other end's token over it and sends it
//! from the same socket to the other end's link address. The other end's socket checks its
//! token and the relay's address, and hands the packet to quinn as from the peer's synthetic
//! address. The packet is the end-to-end connection's, encrypted for the two ends: the relay
//! sees what it saw on the stream path, and a token only ever sends to a linked node.
//!
//! The path is used only once proven: each end sends **probes** (a header and no packet) until
//! the far end says, with an [`ack`] frame on the stream, that it heard datagrams; then the
//! end sends its packets on the datagram path. The far end keeps acknowledging while it hears
//! them; with no ack for [`LANE_SILENCE`] while sending, the end goes back to the stream and
//! probes again. So where the datagrams do not get through (a firewall, an old relay that
//! grants nothing), the session carries on over its stream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::session::Activity;
use crate::id::NodeId;

/// The first bytes of every relay datagram and of the control frames on a session's stream.
/// The first byte, 0xff, marks a QUIC long header and the next four would be its version,
/// `WndR`, which no QUIC version uses: no QUIC packet starts with it (and it differs from the
/// punch probes' `WndP`).
pub(crate) const MAGIC: [u8; 8] = *b"\xffWndRlay";

/// A relay datagram's header: [`MAGIC`] and the 8-byte token.
pub(crate) const HEADER: usize = 16;

/// The largest relay datagram (header included) sent to or forwarded from an IPv4 address:
/// what a 1500-byte Ethernet path carries. quinn's largest packet (1452 bytes) fits with its
/// header.
const MAX_V4: usize = 1472;

/// The same for IPv6 (a 40-byte IP header): larger packets are dropped, as on a path with a
/// smaller MTU, and quinn's path MTU discovery settles below.
const MAX_V6: usize = 1452;

/// How long an end sending on the datagram path waits for the far end's ack before it goes
/// back to the stream.
pub(crate) const LANE_SILENCE: Duration = Duration::from_secs(1);

/// The pause before an unproven path's second probe; each later one waits twice as long, up to
/// the session's keep-alive period. The first probes often reach the far end before it has read
/// its own grant (the relay writes both grants at once), and are dropped there as unknown
/// tokens: at the keep-alive pace the next try would come only 100 ms later, and a bulk
/// transfer that started meanwhile would cross the stream.
const FIRST_PROBE_GAP: Duration = Duration::from_millis(5);

/// The control frames a session's stream carries next to the datagrams (their body starts
/// with [`MAGIC`], which no QUIC datagram does).
const GRANT: u8 = 1;
const ACK: u8 = 2;

/// The largest relay datagram to or from `addr`.
pub(crate) fn max_len(addr: SocketAddr) -> usize {
    if addr.is_ipv4() {
        MAX_V4
    } else {
        MAX_V6
    }
}

/// Why a relay datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DatagramError {
    /// Shorter than the header.
    #[error("relay datagram shorter than its header")]
    Truncated,
    /// Longer than a relay datagram may be.
    #[error("relay datagram too long")]
    Oversized,
    /// Its token belongs to no live session.
    #[error("relay datagram with an unknown token")]
    UnknownToken,
    /// Its token is live but it came from another address than the token's.
    #[error("relay datagram from the wrong address")]
    WrongSource,
    /// Over the relay's rate limits.
    #[error("relay datagram over the rate limit")]
    RateLimited,
}

/// Whether `datagram` is a relay datagram (well formed or not): it then never reaches quinn.
pub(crate) fn is_relay_datagram(datagram: &[u8]) -> bool {
    datagram.starts_with(&MAGIC)
}

/// The token and the packet of a relay datagram from `from`.
pub(crate) fn parse(datagram: &[u8], from: SocketAddr) -> Result<(u64, &[u8]), DatagramError> {
    if datagram.len() < HEADER {
        return Err(DatagramError::Truncated);
    }
    if datagram.len() > max_len(from) {
        return Err(DatagramError::Oversized);
    }
    Ok((token_at(datagram), &datagram[HEADER..]))
}

fn token_at(datagram: &[u8]) -> u64 {
    let mut token = [0u8; 8];
    token.copy_from_slice(&datagram[8..HEADER]);
    u64::from_be_bytes(token)
}

/// Writes `token` over the token of the relay datagram at the start of `datagram`.
pub(crate) fn set_token(datagram: &mut [u8], token: u64) {
    datagram[8..HEADER].copy_from_slice(&token.to_be_bytes());
}

/// Appends a relay datagram carrying `packet` under `token`.
pub(crate) fn push_datagram(out: &mut Vec<u8>, token: u64, packet: &[u8]) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&token.to_be_bytes());
    out.extend_from_slice(packet);
}

/// The body of the frame by which a relay grants an end `token`.
pub(crate) fn grant(token: u64) -> [u8; 17] {
    let mut body = [0u8; 17];
    body[..8].copy_from_slice(&MAGIC);
    body[8] = GRANT;
    body[9..].copy_from_slice(&token.to_be_bytes());
    body
}

/// The whole grant frame (length and body) as the relay writes it on a session's stream.
pub(crate) fn grant_frame(token: u64) -> [u8; 19] {
    let mut frame = [0u8; 19];
    frame[..2].copy_from_slice(&17u16.to_be_bytes());
    frame[2..].copy_from_slice(&grant(token));
    frame
}

/// The body of the frame by which an end says it heard the far end's datagrams.
pub(crate) fn ack() -> [u8; 9] {
    let mut body = [0u8; 9];
    body[..8].copy_from_slice(&MAGIC);
    body[8] = ACK;
    body
}

/// A control frame of a session's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// The relay's grant of a token.
    Grant(u64),
    /// The far end heard datagrams.
    Ack,
    /// Starts with [`MAGIC`] but is neither (ignored).
    Unknown,
}

/// The control frame in a frame's body, or `None` for a datagram.
pub(crate) fn control(body: &[u8]) -> Option<Control> {
    if !body.starts_with(&MAGIC) {
        return None;
    }
    Some(match (body.get(8), body.len()) {
        (Some(&GRANT), 17) => Control::Grant(token_at(&body[1..])),
        (Some(&ACK), 9) => Control::Ack,
        _ => Control::Unknown,
    })
}

/// An end's datagram path of one session: the token the relay granted, the relay's address,
/// and whether the path is proven.
#[derive(Debug)]
pub(crate) struct Lane {
    pub(crate) peer: NodeId,
    /// The relay's address (unmapped): datagrams go there and must come from there.
    pub(crate) relay: SocketAddr,
    pub(crate) token: u64,
    pub(crate) activity: Arc<Activity>,
    start: Instant,
    /// The far end acknowledged this end's datagrams: packets go on the datagram path.
    confirmed: AtomicBool,
    /// A datagram from the far end arrived since the last ack this end sent.
    heard: AtomicBool,
    /// When (ms from `start`, plus one; 0: never) the first datagram sent since the last ack
    /// left.
    unacked_since: AtomicU64,
    last_probe: AtomicU64,
    /// The pause before the next probe, in ms (see [`FIRST_PROBE_GAP`]).
    probe_gap: AtomicU64,
    /// A probe of the far end arrived: it waits for an ack, which the session sends at once
    /// rather than at its next keep-alive.
    probed: tokio::sync::Notify,
    /// Times the path went back to the stream.
    pub(crate) fallbacks: AtomicU64,
}

impl Lane {
    pub(crate) fn new(
        peer: NodeId,
        relay: SocketAddr,
        token: u64,
        activity: Arc<Activity>,
    ) -> Self {
        Self {
            peer,
            relay: super::unmap(relay),
            token,
            activity,
            start: Instant::now(),
            confirmed: AtomicBool::new(false),
            heard: AtomicBool::new(false),
            unacked_since: AtomicU64::new(0),
            last_probe: AtomicU64::new(0),
            probe_gap: AtomicU64::new(FIRST_PROBE_GAP.as_millis() as u64),
            probed: tokio::sync::Notify::new(),
            fallbacks: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// Whether packets go on the datagram path.
    pub(crate) fn confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Relaxed)
    }

    /// A datagram left on the path.
    pub(crate) fn sent(&self) {
        if self.unacked_since.load(Ordering::Relaxed) == 0 {
            let _ = self.unacked_since.compare_exchange(
                0,
                self.now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A datagram (or a probe) of the far end arrived.
    pub(crate) fn heard(&self) {
        self.heard.store(true, Ordering::Relaxed);
    }

    /// A probe of the far end arrived: it is waiting for an ack.
    pub(crate) fn probe_heard(&self) {
        self.heard();
        self.probed.notify_one();
    }

    /// Returns once a probe of the far end arrived (since the last call returned).
    pub(crate) async fn ack_wanted(&self) {
        self.probed.notified().await;
    }

    /// Whether to send an ack now (a datagram arrived since the last one).
    pub(crate) fn take_heard(&self) -> bool {
        self.heard.swap(false, Ordering::Relaxed)
    }

    /// The far end acknowledged: the path works. Returns whether it was unproven until now.
    pub(crate) fn acked(&self) -> bool {
        self.unacked_since.store(0, Ordering::Relaxed);
        !self.confirmed.swap(true, Ordering::Relaxed)
    }

    /// Goes back to the stream if datagrams went unacknowledged for [`LANE_SILENCE`]; returns
    /// whether it did.
    pub(crate) fn check_silence(&self) -> bool {
        let since = self.unacked_since.load(Ordering::Relaxed);
        let silent = since != 0
            && self.now_ms().saturating_sub(since) >= LANE_SILENCE.as_millis() as u64
            && self.confirmed();
        if silent {
            self.confirmed.store(false, Ordering::Relaxed);
            self.unacked_since.store(0, Ordering::Relaxed);
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            self.probe_gap
                .store(FIRST_PROBE_GAP.as_millis() as u64, Ordering::Relaxed);
        }
        silent
    }

    /// Whether an unproven path is due a probe; notes it as sent. The probes after the first
    /// come [`FIRST_PROBE_GAP`] apart, then twice as far each time, and at most `every` apart.
    pub(crate) fn probe_due(&self, every: Duration) -> bool {
        if self.confirmed() {
            return false;
        }
        let now = self.now_ms();
        let last = self.last_probe.load(Ordering::Relaxed);
        let every = every.as_millis() as u64;
        let gap = self.probe_gap.load(Ordering::Relaxed).min(every);
        if last != 0 && now.saturating_sub(last) < gap {
            return false;
        }
        self.last_probe.store(now, Ordering::Relaxed);
        if last != 0 {
            self.probe_gap
                .store(gap.saturating_mul(2).min(every), Ordering::Relaxed);
        }
        true
    }
}

/// Takes a datagram's bytes from the rate limits of its link and of the relay; false: over
/// them.
pub(crate) type Allow = Arc<dyn Fn(usize) -> bool + Send + Sync>;

/// One direction of a relayed link on the relay's datagram path.
pub(crate) struct Route {
    /// Where datagrams with this token must come from (the link to the node it was given to).
    pub(crate) from: SocketAddr,
    /// Where they go (the link to the other end) and under which token.
    pub(crate) to: SocketAddr,
    pub(crate) out_token: u64,
    pub(crate) allow: Allow,
    pub(crate) activity: Arc<Activity>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// What a relay counts on its datagram path.
#[derive(Debug, Default)]
pub(crate) struct ForwardCounts {
    pub(crate) datagrams: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// Where a relay datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forward {
    pub(crate) to: SocketAddr,
    pub(crate) token: u64,
}

/// A relay's datagram routes, by token.
#[derive(Debug, Default)]
pub(crate) struct Forwarder {
    routes: std::sync::RwLock<std::collections::HashMap<u64, Route>>,
    pub(crate) counts: ForwardCounts,
}

impl Forwarder {
    /// Adds the two routes of a relayed link between the nodes linked at `a` and `b`; returns
    /// the tokens granted to `a` and to `b`.
    pub(crate) fn pair(
        &self,
        a: SocketAddr,
        b: SocketAddr,
        a_to_b: Allow,
        b_to_a: Allow,
        activity: Arc<Activity>,
    ) -> (u64, u64) {
        let (a, b) = (super::unmap(a), super::unmap(b));
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        let fresh = || loop {
            let token: u64 = rand::random();
            if token != 0 && !routes.contains_key(&token) {
                return token;
            }
        };
        let (token_a, mut token_b) = (fresh(), fresh());
        while token_b == token_a {
            token_b = fresh();
        }
        routes.insert(
            token_a,
            Route {
                from: a,
                to: b,
                out_token: token_b,
                allow: a_to_b,
                activity: activity.clone(),
            },
        );
        routes.insert(
            token_b,
            Route {
                from: b,
                to: a,
                out_token: token_a,
                allow: b_to_a,
                activity,
            },
        );
        (token_a, token_b)
    }

    /// Removes the routes of the tokens (the relayed link ended).
    pub(crate) fn unpair(&self, tokens: (u64, u64)) {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.remove(&tokens.0);
        routes.remove(&tokens.1);
    }

    /// Where the relay datagram `datagram` from `from` goes, after the checks: its token is
    /// live, it comes from the address the token was given to, and it fits the rate limits.
    /// A refusal is counted.
    pub(crate) fn route(
        &self,
        datagram: &[u8],
        from: SocketAddr,
    ) -> Result<Forward, DatagramError> {
        let checked = self.check(datagram, super::unmap(from));
        match checked {
            Ok(_) => {
                self.counts.datagrams.fetch_add(1, Ordering::Relaxed);
                self.counts
                    .bytes
                    .fetch_add(datagram.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        checked
    }

    fn check(&self, datagram: &[u8], from: SocketAddr) -> Result<Forward, DatagramError> {
        let (token, _) = parse(datagram, from)?;
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        let route = routes.get(&token).ok_or(DatagramError::UnknownToken)?;
        if route.from != from {
            return Err(DatagramError::WrongSource);
        }
        if datagram.len() > max_len(route.to) {
            return Err(DatagramError::Oversized);
        }
        if !(route.allow)(datagram.len()) {
            return Err(DatagramError::RateLimited);
        }
        route.activity.touch();
        Ok(Forward {
            to: route.to,
            token: route.out_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn datagram(token: u64, packet: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_datagram(&mut out, token, packet);
        out
    }

    fn always() -> Allow {
        Arc::new(|_| true)
    }

    #[test]
    fn relay_datagrams_and_control_frames_parse_and_quic_packets_are_not_taken_for_them() {
        let d = datagram(0x0102_0304_0506_0708, b"packet");
        assert!(is_relay_datagram(&d));
        let from = addr("192.0.2.1:7000");
        assert_eq!(parse(&d, from), Ok((0x0102_0304_0506_0708, &b"packet"[..])));
        assert_eq!(parse(&d[..HEADER - 1], from), Err(DatagramError::Truncated));
        assert_eq!(
            parse(&d[..HEADER], from),
            Ok((0x0102_0304_0506_0708, &b""[..]))
        );
        let long = datagram(1, &[0u8; MAX_V6 - HEADER + 1]);
        assert!(parse(&long, from).is_ok(), "fits IPv4");
        assert_eq!(
            parse(&long, addr("[2001:db8::1]:7000")),
            Err(DatagramError::Oversized)
        );
        // A QUIC long header (0xc0-0xff, then a real version) and a short header are not.
        assert!(!is_relay_datagram(&[
            0xff, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9
        ]));
        assert!(!is_relay_datagram(b"\xffWndPnch and so on"));
        assert!(!is_relay_datagram(&[0x40; 40]));

        assert_eq!(control(&grant(77)), Some(Control::Grant(77)));
        assert_eq!(control(&ack()), Some(Control::Ack));
        assert_eq!(control(&grant(77)[..16]), Some(Control::Unknown));
        assert_eq!(control(b"a quic packet"), None);
    }

    #[test]
    fn a_relay_forwards_a_token_only_from_its_node_to_the_other_end_under_its_token() {
        let forwarder = Forwarder::default();
        let (a, b) = (addr("192.0.2.1:7000"), addr("198.51.100.2:7000"));
        let activity = Arc::new(Activity::new());
        let (ta, tb) = forwarder.pair(a, b, always(), always(), activity);
        assert_ne!(ta, tb);
        assert_eq!(
            forwarder.route(&datagram(ta, b"x"), a),
            Ok(Forward { to: b, token: tb })
        );
        assert_eq!(
            forwarder.route(&datagram(tb, b"y"), b),
            Ok(Forward { to: a, token: ta })
        );
        // An IPv4-mapped source is the same address.
        let mapped = SocketAddr::new(
            std::net::IpAddr::V6(std::net::Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
            7000,
        );
        assert!(forwarder.route(&datagram(ta, b"x"), mapped).is_ok());
        // Spoofed: a's token from anyone else (b included) goes nowhere.
        assert_eq!(
            forwarder.route(&datagram(ta, b"x"), addr("203.0.113.9:7000")),
            Err(DatagramError::WrongSource)
        );
        assert_eq!(
            forwarder.route(&datagram(ta, b"x"), b),
            Err(DatagramError::WrongSource)
        );
        assert_eq!(
            forwarder.route(&datagram(ta ^ tb ^ 1, b"x"), a),
            Err(DatagramError::UnknownToken)
        );
        assert_eq!(
            forwarder.route(&datagram(ta, b"x")[..10], a),
            Err(DatagramError::Truncated)
        );
        assert_eq!(
            forwarder.route(&datagram(ta, &[0u8; MAX_V4]), a),
            Err(DatagramError::Oversized)
        );
        assert_eq!(forwarder.counts.datagrams.load(Ordering::Relaxed), 3);
        assert_eq!(forwarder.counts.dropped.load(Ordering::Relaxed), 5);
        forwarder.unpair((ta, tb));
        assert_eq!(
            forwarder.route(&datagram(ta, b"x"), a),
            Err(DatagramError::UnknownToken)
        );
    }

    #[test]
    fn a_relay_drops_datagrams_over_its_rate_limits() {
        let forwarder = Forwarder::default();
        let (a, b) = (addr("192.0.2.1:7000"), addr("198.51.100.2:7000"));
        let budget = Arc::new(AtomicU64::new(100));
        let left = budget.clone();
        let limited: Allow = Arc::new(move |n| {
            left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                l.checked_sub(n as u64)
            })
            .is_ok()
        });
        let (ta, _) = forwarder.pair(a, b, limited, always(), Arc::new(Activity::new()));
        assert!(forwarder.route(&datagram(ta, &[1; 60]), a).is_ok());
        assert_eq!(
            forwarder.route(&datagram(ta, &[1; 60]), a),
            Err(DatagramError::RateLimited)
        );
    }

    #[tokio::test]
    async fn an_unproven_lane_probes_again_soon_and_a_heard_probe_is_answered_at_once() {
        let lane = Lane::new(
            crate::identity::Identity::generate().node_id(),
            addr("192.0.2.1:7000"),
            5,
            Arc::new(Activity::new()),
        );
        let keepalive = Duration::from_millis(100);
        assert!(lane.probe_due(keepalive));
        assert!(!lane.probe_due(keepalive));
        // The first probe may reach the far end before its grant: the next one does not wait
        // for the keep-alive period.
        tokio::time::sleep(FIRST_PROBE_GAP * 3).await;
        assert!(
            lane.probe_due(keepalive),
            "the second probe waited for the keep-alive"
        );
        // A probe from the far end wants its ack now, not at the next keep-alive.
        lane.probe_heard();
        tokio::time::timeout(Duration::from_secs(60), lane.ack_wanted())
            .await
            .expect("a heard probe wakes the session (hang guard)");
        assert!(lane.take_heard());
    }

    #[tokio::test]
    async fn an_unacknowledged_lane_goes_back_to_the_stream_and_probes_again() {
        let lane = Lane::new(
            crate::identity::Identity::generate().node_id(),
            addr("192.0.2.1:7000"),
            5,
            Arc::new(Activity::new()),
        );
        assert!(!lane.confirmed());
        assert!(lane.probe_due(Duration::from_secs(3600)));
        assert!(!lane.probe_due(Duration::from_secs(3600)));
        lane.acked();
        assert!(lane.confirmed());
        assert!(
            !lane.probe_due(Duration::ZERO),
            "a proven lane is not probed"
        );
        lane.sent();
        assert!(!lane.check_silence());
        tokio::time::sleep(LANE_SILENCE + Duration::from_millis(50)).await;
        assert!(lane.check_silence());
        assert!(!lane.confirmed());
        assert_eq!(lane.fallbacks.load(Ordering::Relaxed), 1);
        // An ack in time keeps it.
        lane.acked();
        lane.sent();
        tokio::time::sleep(Duration::from_millis(20)).await;
        lane.acked();
        tokio::time::sleep(LANE_SILENCE).await;
        assert!(!lane.check_silence());
        assert!(lane.confirmed());
    }
}
