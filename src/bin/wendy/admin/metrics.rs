//! `/metrics`: one [`Snapshot`] in the OpenMetrics text format (which Prometheus scrapes), every
//! name prefixed `wendy_`.
//!
//! The node keeps its own counters (atomics on its hot paths); this module only reads them at
//! scrape time, through a `prometheus-client` collector, so a node without `--admin` pays
//! nothing for metrics. Counters named `_total` only ever grow while the process runs; the
//! per-link byte counts are gauges, since a link's bytes leave the sum when the link closes.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use wendy::node::{LinkFailures, ROUTE_LATENCY_BOUNDS_S};

use super::document::Snapshot;

/// The content type of the text `prometheus-client` writes.
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics of `snapshot` as text.
pub(super) fn render(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("wendy");
    registry.register_collector(Box::new(SnapshotMetrics(snapshot)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct SnapshotMetrics(Snapshot);

/// A counter family with labels, one value per label set.
fn counter<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter without labels.
fn counter1(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

/// A gauge family with labels.
fn gauge<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(L, i64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// A gauge without labels.
fn gauge1(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn int(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

fn failures(failures: &LinkFailures) -> [([(&'static str, &'static str); 1], u64); 5] {
    [
        ([("reason", "not_admitted")], failures.not_admitted),
        ([("reason", "refused_by_peer")], failures.refused_by_peer),
        ([("reason", "timeout")], failures.timeout),
        (
            [("reason", "too_many_connections")],
            failures.too_many_connections,
        ),
        ([("reason", "other")], failures.other),
    ]
}

impl Collector for SnapshotMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let status = &s.status;
        let stats = &status.stats;
        let id = status.id.to_string();
        let version = env!("CARGO_PKG_VERSION");
        gauge(
            &mut e,
            "build_info",
            "This node's id and the wendy version (always 1)",
            &[([("version", version), ("node_id", id.as_str())], 1)],
        )?;
        gauge1(
            &mut e,
            "uptime_seconds",
            "Seconds since the node started",
            int(s.uptime.as_secs()),
        )?;
        gauge1(
            &mut e,
            "active",
            "1 while the node is part of an overlay",
            i64::from(status.active),
        )?;
        gauge1(
            &mut e,
            "certificate_expiry_timestamp_seconds",
            "When this node's certificate expires (Unix time)",
            int(s.certificate.not_after),
        )?;

        // Routing state and links.
        gauge1(
            &mut e,
            "leaf_set_size",
            "Nodes in the leaf set",
            int(status.leaf_set.len()),
        )?;
        gauge1(
            &mut e,
            "routing_table_entries",
            "Filled routing-table slots",
            int(status.routing_table.len()),
        )?;
        gauge1(
            &mut e,
            "neighbourhood_size",
            "Nodes in the neighbourhood set",
            int(status.neighbourhood.len()),
        )?;
        let inbound = status.connections.iter().filter(|c| c.inbound).count();
        let outbound = status.connections.len() - inbound;
        gauge(
            &mut e,
            "links",
            "Open QUIC links, by who dialled",
            &[
                ([("direction", "inbound")], int(inbound)),
                ([("direction", "outbound")], int(outbound)),
            ],
        )?;
        let sent: u64 = status.connections.iter().map(|c| c.bytes_sent).sum();
        let received: u64 = status.connections.iter().map(|c| c.bytes_received).sum();
        gauge(
            &mut e,
            "link_bytes",
            "UDP bytes carried by the links open now",
            &[
                ([("direction", "sent")], int(sent)),
                ([("direction", "received")], int(received)),
            ],
        )?;

        // Routed messages.
        counter(
            &mut e,
            "routed_messages",
            "Routed messages by what happened to them here",
            &[
                ([("outcome", "originated")], stats.routed),
                ([("outcome", "delivered")], stats.delivered),
                ([("outcome", "forwarded")], stats.forwarded),
                ([("outcome", "vetoed")], stats.vetoed),
                ([("outcome", "failed")], stats.routes_failed),
                ([("outcome", "rerouted")], status.reroutes),
                ([("outcome", "hedged")], status.hedges),
                ([("outcome", "rerouted_afresh")], status.fresh_rounds),
                ([("outcome", "duplicate")], status.duplicates_suppressed),
            ],
        )?;
        let mut hops = e.encode_descriptor(
            "route_hops",
            "Hops taken by the routed messages delivered here",
            None,
            MetricType::Histogram,
        )?;
        let last = stats.delivered_by_hops.len() - 1;
        let buckets: Vec<(f64, u64)> = stats
            .delivered_by_hops
            .iter()
            .enumerate()
            .map(|(i, n)| {
                // The last bucket also holds every longer route: it is the +Inf bucket.
                let bound = if i == last { f64::MAX } else { i as f64 };
                (bound, *n)
            })
            .collect();
        let count = stats.delivered_by_hops.iter().sum();
        hops.encode_histogram::<Vec<(&str, &str)>>(
            stats.delivered_hops_sum as f64,
            count,
            &buckets,
            None,
        )?;
        let mut latency = e.encode_descriptor(
            "route_latency_seconds",
            "Routes of messages originated here, from the first send to the root's answer \
             (the route plus one direct hop back)",
            None,
            MetricType::Histogram,
        )?;
        let buckets: Vec<(f64, u64)> = stats
            .route_latency_buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = ROUTE_LATENCY_BOUNDS_S.get(i).copied().unwrap_or(f64::MAX);
                (bound, *n)
            })
            .collect();
        latency.encode_histogram::<Vec<(&str, &str)>>(
            stats.route_latency_sum_us as f64 / 1e6,
            stats.route_latency_buckets.iter().sum(),
            &buckets,
            None,
        )?;
        counter1(
            &mut e,
            "route_cache_sends",
            "Own messages sent straight to a cached root",
            status.route_cache_hits,
        )?;
        counter1(
            &mut e,
            "route_cache_stale",
            "Of those, the ones another node answered for (a detour, never a wrong delivery)",
            status.route_cache_stale,
        )?;
        gauge1(
            &mut e,
            "route_cache_roots",
            "Roots held in the route cache",
            int(status.route_cache_roots),
        )?;
        let by_path = |path| int(status.connections.iter().filter(|c| c.path == path).count());
        gauge(
            &mut e,
            "links_by_path",
            "Open QUIC links, by the path their datagrams take now (a punched link counts as direct)",
            &[
                ([("path", "direct")], by_path(wendy::node::LinkPath::Direct)),
                ([("path", "relay")], by_path(wendy::node::LinkPath::Relay)),
            ],
        )?;
        let punch = &status.punch;
        counter1(
            &mut e,
            "punch_attempts",
            "Hole-punch attempts this node probed in",
            punch.attempts,
        )?;
        counter1(
            &mut e,
            "punch_successes",
            "Hole-punch attempts that found a direct path",
            punch.successes,
        )?;
        counter1(
            &mut e,
            "punch_failures",
            "Hole-punch attempts that found none (the link stays relayed)",
            punch.failures,
        )?;
        counter1(
            &mut e,
            "punch_fallbacks",
            "Punched direct paths that stopped answering (the link went back to its relay)",
            punch.fallbacks,
        )?;
        gauge1(
            &mut e,
            "punch_time_to_direct_median_ms",
            "Median time from a relayed link's first sight to its direct path (-1: none yet)",
            punch.median_time_to_direct_ms.map_or(-1, int),
        )?;
        gauge1(
            &mut e,
            "hints_held",
            "Leaf sets held of nodes in sparse routing-table slots (neighbour hints)",
            int(status.hints_held),
        )?;
        counter1(
            &mut e,
            "hint_probes",
            "Probes sent to sparse rows' entries for their neighbours",
            status.hint_probes,
        )?;
        counter1(
            &mut e,
            "hints_learned",
            "Neighbour hints kept",
            status.hints_learned,
        )?;
        counter1(
            &mut e,
            "hints_refused",
            "Neighbour hints refused: the neighbours spanned more than this node's leaf set",
            status.hints_refused,
        )?;
        gauge1(
            &mut e,
            "reachable_public",
            "1 if another node dialled this node back (public), 0 if not or not yet known",
            i64::from(status.reachability == wendy::reach::Reachability::Public),
        )?;
        gauge1(
            &mut e,
            "in_custody",
            "Routed messages passed on and not yet acknowledged onwards",
            int(status.in_custody),
        )?;
        counter1(
            &mut e,
            "direct_messages_received",
            "Direct (unrouted) messages received",
            stats.direct_received,
        )?;

        // Overlay maintenance and membership.
        counter1(
            &mut e,
            "control_messages_sent",
            "Overlay maintenance messages sent (joins, probes, heartbeats, repairs)",
            status.control_msgs_sent,
        )?;
        counter1(
            &mut e,
            "control_bytes_sent",
            "Estimated bytes of those messages",
            status.control_bytes_sent,
        )?;
        counter(
            &mut e,
            "membership_changes",
            "Nodes that joined this node's routing state or left its leaf set",
            &[
                ([("change", "joined")], stats.nodes_joined),
                ([("change", "left")], stats.nodes_left),
            ],
        )?;

        // Failures.
        counter(
            &mut e,
            "dial_failures",
            "Links this node dialled that failed, by reason",
            &failures(&stats.dial_failures),
        )?;
        counter(
            &mut e,
            "handshake_failures",
            "Incoming links that failed in the handshake, by reason",
            &failures(&stats.handshake_failures),
        )?;
        counter1(
            &mut e,
            "send_failures",
            "Messages that could not be sent to a peer",
            stats.send_failures,
        )?;
        counter1(
            &mut e,
            "frames_rejected",
            "Frames from peers dropped as malformed, oversized or of an unknown version",
            stats.frames_rejected,
        )?;
        counter(
            &mut e,
            "events_dropped",
            "Events dropped because their reader did not keep up, by layer",
            &[
                ([("layer", "node")], stats.events_dropped),
                ([("layer", "mesh")], s.mesh.events_dropped),
                ([("layer", "output")], s.output_dropped),
            ],
        )?;

        // Service mesh.
        let mut tunnels: Vec<([(&str, &str); 2], u64)> = Vec::new();
        let mut tunnel_failures: Vec<([(&str, &str); 2], u64)> = Vec::new();
        let mut tunnel_bytes: Vec<([(&str, &str); 3], u64)> = Vec::new();
        for x in &s.mesh.exposed {
            let labels = [("service", x.name.as_str()), ("role", "exposed")];
            tunnels.push((labels, x.tunnels));
            tunnel_failures.push((labels, x.target_failures));
            tunnel_bytes.push(([labels[0], labels[1], ("direction", "sent")], x.bytes_sent));
            tunnel_bytes.push((
                [labels[0], labels[1], ("direction", "received")],
                x.bytes_received,
            ));
        }
        for f in &s.mesh.forwarded {
            let labels = [("service", f.name.as_str()), ("role", "forwarded")];
            tunnels.push((labels, f.connections));
            tunnel_failures.push((labels, f.failures));
            tunnel_bytes.push(([labels[0], labels[1], ("direction", "sent")], f.bytes_sent));
            tunnel_bytes.push((
                [labels[0], labels[1], ("direction", "received")],
                f.bytes_received,
            ));
        }
        counter(
            &mut e,
            "mesh_tunnels",
            "Service-mesh tunnels opened, by service and this node's role",
            &tunnels,
        )?;
        counter(
            &mut e,
            "mesh_tunnel_failures",
            "Service-mesh tunnels that failed (no provider reached, target down)",
            &tunnel_failures,
        )?;
        counter(
            &mut e,
            "mesh_tunnel_bytes",
            "Bytes carried by service-mesh tunnels that ended cleanly, by direction",
            &tunnel_bytes,
        )?;
        gauge1(
            &mut e,
            "mesh_records_held",
            "Service records held as a registry root or replica",
            int(s.mesh.records_held),
        )?;
        counter1(
            &mut e,
            "mesh_records_refused",
            "Service records refused (bad signature, wrong place, store full)",
            s.mesh.records_refused,
        )?;
        Ok(())
    }
}
