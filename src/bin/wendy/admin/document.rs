//! The `/status` document: the stdin `status` object (its fields are a contract, see
//! `node::output`) with what an operator asks first added: version, uptime, addresses,
//! certificate expiry, and `peers`, one entry per known node with its place in the routing
//! state, its link's RTT and bytes, and when it was last heard from.
//!
//! [`Snapshot`] is read once per request and feeds both `/status` and `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use wendy::id::NodeId;
use wendy::mesh::MeshStatus;
use wendy::node::{ConnectionStatus, Status};

use super::AdminState;
use crate::node::StatusOut;

/// The node's certificate, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CertificateInfo {
    /// `ca` (issued by the mesh CA) or `self-signed` (open mesh).
    pub(crate) kind: &'static str,
    /// The end of its validity, in seconds since the Unix epoch.
    pub(crate) not_after: u64,
}

impl CertificateInfo {
    /// A certificate valid until `not_after`.
    pub(crate) fn new(kind: &'static str, not_after: SystemTime) -> Self {
        Self {
            kind,
            not_after: unix_seconds(not_after),
        }
    }
}

/// Everything one request reads, taken at one moment.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) status: Status,
    pub(crate) mesh: MeshStatus,
    pub(crate) uptime: Duration,
    pub(crate) now_unix: u64,
    pub(crate) certificate: CertificateInfo,
    pub(crate) output_dropped: u64,
    /// Time since each peer was last heard from, for the peers of `status`.
    pub(crate) heard: BTreeMap<NodeId, Duration>,
}

impl Snapshot {
    pub(crate) fn take(state: &AdminState, status: Status) -> Self {
        let now = Instant::now();
        let heard = known_ids(&status)
            .filter_map(|id| state.observed.since(id, now).map(|d| (id, d)))
            .collect();
        Self {
            mesh: state.mesh.status(),
            uptime: now.saturating_duration_since(state.started),
            now_unix: unix_seconds(SystemTime::now()),
            certificate: state.certificate.clone(),
            output_dropped: (state.output_dropped)(),
            heard,
            status,
        }
    }

    /// Seconds until the certificate expires (negative once it has).
    pub(crate) fn certificate_expires_in(&self) -> i64 {
        let to = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        to(self.certificate.not_after) - to(self.now_unix)
    }
}

/// Every node id the status names.
fn known_ids(status: &Status) -> impl Iterator<Item = NodeId> + '_ {
    status
        .leaf_set
        .iter()
        .copied()
        .chain(status.routing_table.iter().map(|p| p.id))
        .chain(status.neighbourhood.iter().map(|p| p.id))
        .chain(status.connections.iter().map(|c| c.id))
}

/// The `/status` JSON.
#[derive(Debug, Serialize)]
pub(crate) struct Document {
    /// The `wendy` version.
    version: &'static str,
    #[serde(flatten)]
    status: StatusOut,
    /// The address the node was told to listen on (`addr` is the one it advertises).
    listen: String,
    /// Seconds since the node started.
    uptime_s: u64,
    /// When the node started, in seconds since the Unix epoch.
    started_at: u64,
    certificate: CertificateDoc,
    /// Every node this node knows, once each, closest on the ring first.
    peers: Vec<PeerDoc>,
    reroutes: u64,
    /// Routed messages copied to a second next hop, and own messages routed afresh.
    hedges: u64,
    fresh_rounds: u64,
    duplicates_suppressed: u64,
    in_custody: usize,
    /// Roots held in the route cache.
    route_cache_roots: usize,
    /// Own messages sent straight to a cached root, and those another node answered for.
    route_cache_hits: u64,
    route_cache_stale: u64,
    /// Neighbour hints held, probes sent for them, and answers kept and refused.
    hints_held: usize,
    hint_probes: u64,
    hints_learned: u64,
    hints_refused: u64,
    /// Events the service mesh dropped because the run loop did not keep up.
    mesh_events_dropped: u64,
    /// Records the service mesh refused.
    records_refused: u64,
    /// Output lines dropped because stdout was not read.
    output_dropped: u64,
}

#[derive(Debug, Serialize)]
struct CertificateDoc {
    #[serde(flatten)]
    info: CertificateInfo,
    /// `not_after` as an RFC 3339 UTC time.
    not_after_utc: String,
    /// Seconds left (negative once expired).
    expires_in_s: i64,
}

/// One known node.
#[derive(Debug, Serialize)]
struct PeerDoc {
    id: String,
    addr: String,
    /// `ccw` or `cw` if the node is in the leaf set (the side it sits on).
    #[serde(skip_serializing_if = "Option::is_none")]
    leaf: Option<&'static str>,
    /// Its routing-table row, if it is in the table.
    #[serde(skip_serializing_if = "Option::is_none")]
    table_row: Option<usize>,
    /// Its routing-table column (its digit at `table_row`).
    #[serde(skip_serializing_if = "Option::is_none")]
    table_col: Option<u8>,
    /// Whether it is in the neighbourhood set.
    neighbour: bool,
    /// The RTT in milliseconds: the link's, else the one the routing state holds.
    rtt_ms: Option<f64>,
    /// The open link, if any.
    link: Option<LinkDoc>,
    /// Milliseconds since its last heartbeat or direct message here.
    last_heard_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct LinkDoc {
    /// `in` (the peer dialled) or `out`.
    direction: &'static str,
    rtt_ms: f64,
    bytes_sent: u64,
    bytes_received: u64,
    idle_ms: u64,
    /// `direct` or `relay`.
    path: wendy::node::LinkPath,
    /// The relay carrying a relayed link, or null.
    via: Option<String>,
}

impl Document {
    pub(crate) fn new(state: &AdminState, snapshot: &Snapshot) -> Self {
        let status = &snapshot.status;
        let uptime_s = snapshot.uptime.as_secs();
        Self {
            version: env!("CARGO_PKG_VERSION"),
            status: StatusOut::new(status).with_mesh(snapshot.mesh.clone()),
            listen: state.listen.to_string(),
            uptime_s,
            started_at: unix_seconds(state.started_at),
            certificate: CertificateDoc {
                info: snapshot.certificate.clone(),
                not_after_utc: rfc3339(snapshot.certificate.not_after),
                expires_in_s: snapshot.certificate_expires_in(),
            },
            peers: peers(snapshot),
            reroutes: status.reroutes,
            hedges: status.hedges,
            fresh_rounds: status.fresh_rounds,
            duplicates_suppressed: status.duplicates_suppressed,
            in_custody: status.in_custody,
            route_cache_roots: status.route_cache_roots,
            route_cache_hits: status.route_cache_hits,
            route_cache_stale: status.route_cache_stale,
            hints_held: status.hints_held,
            hint_probes: status.hint_probes,
            hints_learned: status.hints_learned,
            hints_refused: status.hints_refused,
            mesh_events_dropped: snapshot.mesh.events_dropped,
            records_refused: snapshot.mesh.records_refused,
            output_dropped: snapshot.output_dropped,
        }
    }
}

fn peers(snapshot: &Snapshot) -> Vec<PeerDoc> {
    let status = &snapshot.status;
    let me = status.id;
    let mut peers: BTreeMap<NodeId, PeerDoc> = BTreeMap::new();
    for p in &status.routing_table {
        let row = me.shared_prefix_len(p.id);
        let peer = add(&mut peers, snapshot, p.id, p.addr.to_string(), p.rtt_ms);
        if row < 32 {
            peer.table_row = Some(row);
            peer.table_col = Some(p.id.digit(row));
        }
    }
    for p in &status.neighbourhood {
        add(&mut peers, snapshot, p.id, p.addr.to_string(), p.rtt_ms).neighbour = true;
    }
    for c in &status.connections {
        add(&mut peers, snapshot, c.id, c.addr.to_string(), None);
    }
    for &id in &status.leaf_set {
        let addr = link_of(status, id).map_or_else(String::new, |c| c.addr.to_string());
        let peer = add(&mut peers, snapshot, id, addr, None);
        peer.leaf = Some(if me.precedes(id) { "cw" } else { "ccw" });
    }
    let mut peers: Vec<PeerDoc> = peers.into_values().collect();
    peers.sort_by_key(|p| {
        p.id.parse::<NodeId>()
            .map_or(u128::MAX, |id| me.ring_distance(id))
    });
    peers
}

/// The entry of `id` in `peers`, made on first sight.
fn add<'a>(
    peers: &'a mut BTreeMap<NodeId, PeerDoc>,
    snapshot: &Snapshot,
    id: NodeId,
    addr: String,
    state_rtt: Option<f64>,
) -> &'a mut PeerDoc {
    let peer = peers.entry(id).or_insert_with(|| PeerDoc {
        id: id.to_string(),
        addr,
        leaf: None,
        table_row: None,
        table_col: None,
        neighbour: false,
        rtt_ms: None,
        link: link_of(&snapshot.status, id).map(link_doc),
        last_heard_ms: snapshot.heard.get(&id).map(|d| millis(*d)),
    });
    if peer.rtt_ms.is_none() {
        peer.rtt_ms = peer
            .link
            .as_ref()
            .map(|l| l.rtt_ms)
            .or(state_rtt.map(round3));
    }
    peer
}

fn link_of(status: &Status, id: NodeId) -> Option<&ConnectionStatus> {
    status.connections.iter().find(|c| c.id == id)
}

fn link_doc(c: &ConnectionStatus) -> LinkDoc {
    LinkDoc {
        direction: if c.inbound { "in" } else { "out" },
        rtt_ms: round3(c.rtt_ms),
        bytes_sent: c.bytes_sent,
        bytes_received: c.bytes_received,
        idle_ms: c.idle_ms,
        path: c.path,
        via: c.via.map(|id| id.to_string()),
    }
}

/// Milliseconds to three decimals: what a reader can use, not float noise.
fn round3(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn rfc3339(secs: u64) -> String {
    let format = time::format_description::well_known::Rfc3339;
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("@{secs}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
    }
}
