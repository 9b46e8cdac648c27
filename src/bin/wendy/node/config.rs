//! The options of `wendy node`: command-line flags, the TOML config file, and their merge.
//!
//! Everything the node needs to start is resolved here into one [`NodeOptions`], so the run
//! loop never looks at flags or files. New options (the service mesh's `expose` / `forward`)
//! go into [`NodeArgs`], [`FileConfig`] and [`NodeOptions`], merged in [`NodeOptions::resolve`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use wendy::id::NodeId;
use wendy::mesh::{validate_name, validate_target, MeshConfig};
use wendy::node::NodeConfig;
use wendy::relay::{RelayConfig, RelayLimits};

use crate::admin::AdminOptions;

/// Options of `wendy node`. Every flag can also be set in the `--config` file (same name);
/// a flag overrides the file.
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// UDP address to listen on, e.g. 127.0.0.1:4000 or localhost:4000 (port 0 picks a free
    /// port).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// Address other nodes are told to dial (default: the bound address); needed when
    /// listening on 0.0.0.0.
    #[arg(long, value_name = "ADDR")]
    pub(crate) advertise: Option<String>,
    /// This node's private key (from `wendy keygen`).
    #[arg(long, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// This node's certificate issued by the mesh CA (`wendy ca issue`); needs --ca.
    #[arg(long, value_name = "FILE")]
    pub(crate) cert: Option<PathBuf>,
    /// The mesh CA certificate: only nodes with a certificate from this CA are admitted.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Admit only this node id (32 hex digits); repeat for each node. Without --ca and
    /// --allow, any node may connect (open mesh).
    #[arg(long = "allow", value_name = "ID")]
    pub(crate) allow: Vec<String>,
    /// Join the overlay through this node (HOST:PORT); repeat to give fallbacks. Without
    /// --join the node starts a new overlay.
    #[arg(long = "join", value_name = "ADDR")]
    pub(crate) join: Vec<String>,
    /// A TOML file with the same settings (flags override it); see the README.
    #[arg(long, value_name = "FILE.toml")]
    pub(crate) config: Option<PathBuf>,
    /// Output format on stdout: `json` (one object per line) or `text`.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub(crate) events: Option<EventFormat>,
    /// Publish the TCP service at HOST:PORT to the mesh as NAME; repeat for each service.
    #[arg(long = "expose", value_name = "NAME=HOST:PORT")]
    pub(crate) expose: Vec<String>,
    /// Listen on LOCAL_ADDR (TCP) and tunnel each connection to a node exposing NAME; repeat
    /// for each service.
    #[arg(long = "forward", value_name = "LOCAL_ADDR=NAME")]
    pub(crate) forward: Vec<String>,
    /// Serve the admin endpoint (/metrics, /status, a status page) on this TCP address, e.g.
    /// 127.0.0.1:8484; a non-loopback address needs --admin-token.
    #[arg(long, value_name = "ADDR")]
    pub(crate) admin: Option<String>,
    /// A file holding the admin endpoint's bearer token; every request but the page must then
    /// send `Authorization: Bearer TOKEN`.
    #[arg(long, value_name = "FILE")]
    pub(crate) admin_token: Option<PathBuf>,
    /// Serve as a relay for private nodes (only useful on a node with a public address);
    /// limits in the config file's `[relay_limits]` table.
    #[arg(long)]
    pub(crate) relay: bool,
    /// This node cannot be dialled (behind a NAT or firewall): it homes on two relays (the
    /// --join nodes, --relay-via, then relays among its peers), and other nodes reach it
    /// through them. Without it (and without `private` in the config file), a node that
    /// listens on an unspecified address with no --advertise is private when its own address
    /// is a private one (RFC 1918, CGNAT, IPv6 ULA) and its --join node's is not.
    #[arg(long)]
    pub(crate) private: bool,
    /// A relay to home on when private (HOST:PORT); repeat for each.
    #[arg(long = "relay-via", value_name = "ADDR")]
    pub(crate) relay_via: Vec<String>,
}

/// How events are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EventFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The config file. Unknown keys are an error naming the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    listen: Option<String>,
    advertise: Option<String>,
    key: Option<PathBuf>,
    cert: Option<PathBuf>,
    ca: Option<PathBuf>,
    allow: Option<Vec<String>>,
    join: Option<Vec<String>>,
    events: Option<EventFormat>,
    expose: Option<Vec<String>>,
    forward: Option<Vec<String>>,
    #[serde(default)]
    mesh: MeshTable,
    #[serde(default)]
    pastry: PastryTable,
    #[serde(default)]
    timeouts: TimeoutsTable,
    #[serde(default)]
    limits: LimitsTable,
    #[serde(default)]
    admin: AdminTable,
    relay: Option<bool>,
    private: Option<bool>,
    /// Whether the node turns private or public at run time with the reachability verdict.
    follow_reachability: Option<bool>,
    relay_via: Option<Vec<String>>,
    #[serde(default)]
    relay_limits: RelayLimitsTable,
}

/// `[relay_limits]`: what a relay (`relay = true`) carries at most.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayLimitsTable {
    max_links: Option<usize>,
    max_homed: Option<usize>,
    link_bytes_per_sec: Option<u64>,
    total_bytes_per_sec: Option<u64>,
}

/// `[admin]`: the admin endpoint (`--admin`, `--admin-token`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminTable {
    listen: Option<String>,
    token_file: Option<PathBuf>,
}

/// `[mesh]`: the service registry's knobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeshTable {
    replicas: Option<usize>,
    record_ttl_ms: Option<u64>,
}

/// `[pastry]`: the routing core's knobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PastryTable {
    leaf_set_size: Option<usize>,
    neighbourhood_size: Option<usize>,
    proximity: Option<bool>,
    probe_period_ms: Option<u64>,
    probe_timeout_ms: Option<u64>,
    probe_retries: Option<u8>,
    ack_timeout_ms: Option<u64>,
    maintenance_period_ms: Option<u64>,
    max_hops: Option<u8>,
}

/// `[timeouts]`: how long the node waits for things.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutsTable {
    join_ms: Option<u64>,
    connect_ms: Option<u64>,
    idle_ms: Option<u64>,
    keep_alive_ms: Option<u64>,
    request_ms: Option<u64>,
}

/// `[limits]`: resource caps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsTable {
    max_connections: Option<usize>,
    max_message_size: Option<usize>,
    event_capacity: Option<usize>,
    max_handshakes: Option<usize>,
    max_unprotected_links: Option<usize>,
    max_dials_in_flight: Option<usize>,
    link_read_budget: Option<usize>,
    node_read_budget: Option<usize>,
}

/// Everything `wendy node` runs with, flags and file merged and checked.
#[derive(Debug)]
pub(crate) struct NodeOptions {
    pub(crate) listen: SocketAddr,
    pub(crate) advertise: Option<SocketAddr>,
    pub(crate) key: PathBuf,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) allow: Vec<NodeId>,
    pub(crate) join: Vec<String>,
    pub(crate) events: EventFormat,
    pub(crate) config: NodeConfig,
    /// Services to expose: (name, HOST:PORT).
    pub(crate) expose: Vec<(String, String)>,
    /// Services to forward: (local address, name).
    pub(crate) forward: Vec<(SocketAddr, String)>,
    pub(crate) mesh: MeshConfig,
    /// The admin endpoint, if one is asked for.
    pub(crate) admin: Option<AdminOptions>,
    /// Relaying: serving as a relay, being private, relays to home on.
    pub(crate) relay: RelayConfig,
    /// Whether `relay.private` is still to be decided from the addresses (neither --private
    /// nor `private` in the config file said it).
    pub(crate) private_auto: bool,
}

impl NodeOptions {
    /// Reads the config file (if any) and lays the flags over it.
    pub(crate) fn resolve(args: NodeArgs) -> Result<Self, String> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        // Relative paths in the file are relative to the file's directory.
        let base = args
            .config
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let in_file = |path: Option<PathBuf>| path.map(|p| base.join(p));
        let listen = args.listen.or(file.listen).ok_or(
            "no listen address: pass --listen ADDR (e.g. 127.0.0.1:4000) or set `listen` in the \
             config file",
        )?;
        let listen = resolve_addr("--listen", &listen)?;
        let advertise = match args.advertise.or(file.advertise) {
            Some(text) => Some(resolve_addr("--advertise", &text)?),
            None => None,
        };
        let key = args.key.or_else(|| in_file(file.key)).ok_or(
            "no key file: pass --key FILE (create one with `wendy keygen --out FILE`) or set `key` \
             in the config file",
        )?;
        let allow_text = if args.allow.is_empty() {
            file.allow.unwrap_or_default()
        } else {
            args.allow
        };
        let allow = allow_text
            .iter()
            .map(|text| {
                text.parse::<NodeId>()
                    .map_err(|e| format!("invalid --allow id {text:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let join = if args.join.is_empty() {
            file.join.unwrap_or_default()
        } else {
            args.join
        };
        let mut config = crate::node_config();
        apply_tables(&mut config, &file.pastry, &file.timeouts, &file.limits)?;
        let expose = if args.expose.is_empty() {
            file.expose.unwrap_or_default()
        } else {
            args.expose
        };
        let expose = parse_exposes(&expose)?;
        let forward = if args.forward.is_empty() {
            file.forward.unwrap_or_default()
        } else {
            args.forward
        };
        let forward = parse_forwards(&forward)?;
        let mesh = mesh_config(&file.mesh)?;
        let admin_token = args.admin_token.or_else(|| in_file(file.admin.token_file));
        let admin = match (args.admin.or(file.admin.listen), admin_token) {
            (Some(listen), token_file) => Some(AdminOptions {
                listen: resolve_addr("--admin", &listen)?,
                token_file,
            }),
            (None, None) => None,
            (None, Some(path)) => {
                return Err(format!(
                    "--admin-token {} needs --admin ADDR (or `listen` in the config file's \
                     [admin] table), the address to serve the admin endpoint on",
                    path.display()
                ))
            }
        };
        let limits = &file.relay_limits;
        let defaults = RelayLimits::default();
        let relay_limits = RelayLimits {
            max_links: limits.max_links.unwrap_or(defaults.max_links),
            max_homed: limits.max_homed.unwrap_or(defaults.max_homed),
            link_bytes_per_sec: limits
                .link_bytes_per_sec
                .unwrap_or(defaults.link_bytes_per_sec),
            total_bytes_per_sec: limits
                .total_bytes_per_sec
                .unwrap_or(defaults.total_bytes_per_sec),
            ..defaults
        };
        let relay_via = if args.relay_via.is_empty() {
            file.relay_via.unwrap_or_default()
        } else {
            args.relay_via
        };
        let relay = RelayConfig {
            serve: (args.relay || file.relay.unwrap_or(false)).then_some(relay_limits),
            private: args.private || file.private.unwrap_or(false),
            follow_reachability: file.follow_reachability.unwrap_or(true),
            relays: relay_via
                .iter()
                .map(|text| resolve_addr("--relay-via", text))
                .collect::<Result<_, _>>()?,
            ..RelayConfig::default()
        };
        if relay.serve.is_some() && relay.private {
            return Err(
                "--relay and --private exclude each other: a relay must be reachable by others"
                    .into(),
            );
        }
        let private_auto = !args.private && file.private.is_none() && relay.serve.is_none();
        Ok(Self {
            relay,
            private_auto,
            listen,
            advertise,
            key,
            cert: args.cert.or_else(|| in_file(file.cert)),
            ca: args.ca.or_else(|| in_file(file.ca)),
            allow,
            join,
            events: args.events.or(file.events).unwrap_or_default(),
            config,
            expose,
            forward,
            mesh,
            admin,
        })
    }
}

/// Resolves an `IP:PORT` or `HOST:PORT` address (`localhost:4000`) as `--join` does; a
/// hostname with several addresses gives the first the resolver lists.
pub(crate) fn resolve_addr(what: &str, text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let expected = "expected IP:PORT or HOST:PORT, e.g. 127.0.0.1:4000 or localhost:4000";
    let mut found = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("cannot resolve {what} {text:?}: {e} ({expected})"))?;
    found
        .next()
        .ok_or_else(|| format!("{what} {text:?} resolves to no address ({expected})"))
}

/// Parses `--expose NAME=HOST:PORT` values; a name may be exposed once.
fn parse_exposes(values: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut exposes: Vec<(String, String)> = Vec::new();
    for value in values {
        let bad = |why: String| {
            format!(
                "invalid --expose {value:?}: {why}; expected NAME=HOST:PORT, e.g. \
                 web=127.0.0.1:8080"
            )
        };
        let (name, target) = value
            .split_once('=')
            .ok_or_else(|| bad("no '='".to_owned()))?;
        validate_name(name).map_err(|e| bad(e.to_string()))?;
        validate_target(target).map_err(|e| bad(e.to_string()))?;
        if exposes.iter().any(|(n, _)| n == name) {
            return Err(bad(format!("{name:?} is exposed twice")));
        }
        exposes.push((name.to_owned(), target.to_owned()));
    }
    Ok(exposes)
}

/// Parses `--forward LOCAL_ADDR=NAME` values; an address may be used once.
fn parse_forwards(values: &[String]) -> Result<Vec<(SocketAddr, String)>, String> {
    let mut forwards: Vec<(SocketAddr, String)> = Vec::new();
    for value in values {
        let bad = |why: String| {
            format!(
                "invalid --forward {value:?}: {why}; expected LOCAL_ADDR=NAME, e.g. \
                 127.0.0.1:9000=web"
            )
        };
        let (addr, name) = value
            .split_once('=')
            .ok_or_else(|| bad("no '='".to_owned()))?;
        let addr = resolve_addr("--forward", addr).map_err(|_| {
            bad(format!(
                "{addr:?} is not an address (IP:PORT or HOST:PORT) that resolves"
            ))
        })?;
        validate_name(name).map_err(|e| bad(e.to_string()))?;
        if addr.port() != 0 && forwards.iter().any(|(a, _)| *a == addr) {
            return Err(bad(format!("{addr} is used twice")));
        }
        forwards.push((addr, name.to_owned()));
    }
    Ok(forwards)
}

fn mesh_config(table: &MeshTable) -> Result<MeshConfig, String> {
    let mut config = match positive_ms("[mesh] record_ttl_ms", table.record_ttl_ms)? {
        Some(ttl) => MeshConfig::with_ttl(ttl),
        None => MeshConfig::default(),
    };
    if let Some(replicas) = table.replicas {
        if replicas == 0 {
            return Err("[mesh] replicas must be at least 1".to_owned());
        }
        config.replicas = replicas;
    }
    Ok(config)
}

fn load_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    parse_file(&text).map_err(|e| format!("{}:{e}", path.display()))
}

/// Parses config text; the error starts with `LINE:COLUMN: ` when the position is known.
pub(crate) fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim().replace('\n', " ");
        match e.span() {
            Some(span) => {
                let (line, column) = line_and_column(text, span.start);
                format!("{line}:{column}: {message}")
            }
            None => format!(" {message}"),
        }
    })
}

/// 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn apply_tables(
    config: &mut NodeConfig,
    pastry: &PastryTable,
    timeouts: &TimeoutsTable,
    limits: &LimitsTable,
) -> Result<(), String> {
    let p = &mut config.pastry;
    if let Some(size) = pastry.leaf_set_size {
        if size < 2 || size % 2 != 0 {
            return Err(format!(
                "[pastry] leaf_set_size must be an even number >= 2, got {size}"
            ));
        }
        p.leaf_set_size = size;
    }
    set(&mut p.neighbourhood_size, pastry.neighbourhood_size);
    set(&mut p.proximity, pastry.proximity);
    set(
        &mut p.probe_period,
        positive_ms("[pastry] probe_period_ms", pastry.probe_period_ms)?,
    );
    set(
        &mut p.probe_timeout,
        positive_ms("[pastry] probe_timeout_ms", pastry.probe_timeout_ms)?,
    );
    set(&mut p.probe_retries, pastry.probe_retries);
    set(
        &mut p.ack_timeout,
        positive_ms("[pastry] ack_timeout_ms", pastry.ack_timeout_ms)?,
    );
    set(
        &mut p.maintenance_period,
        positive_ms(
            "[pastry] maintenance_period_ms",
            pastry.maintenance_period_ms,
        )?,
    );
    set(&mut p.max_hops, pastry.max_hops);
    set(
        &mut config.pastry.join_timeout,
        positive_ms("[timeouts] join_ms", timeouts.join_ms)?,
    );
    let l = &mut config.limits;
    set(
        &mut l.connect_timeout,
        positive_ms("[timeouts] connect_ms", timeouts.connect_ms)?,
    );
    set(
        &mut l.max_idle_timeout,
        positive_ms("[timeouts] idle_ms", timeouts.idle_ms)?,
    );
    set(
        &mut l.keep_alive,
        positive_ms("[timeouts] keep_alive_ms", timeouts.keep_alive_ms)?,
    );
    set(
        &mut l.request_timeout,
        positive_ms("[timeouts] request_ms", timeouts.request_ms)?,
    );
    set(
        &mut l.max_connections,
        at_least("[limits] max_connections", limits.max_connections, 1)?,
    );
    set(
        &mut l.max_message_size,
        at_least("[limits] max_message_size", limits.max_message_size, 1024)?,
    );
    set(
        &mut l.event_capacity,
        at_least("[limits] event_capacity", limits.event_capacity, 1)?,
    );
    set(
        &mut l.max_handshakes,
        at_least("[limits] max_handshakes", limits.max_handshakes, 1)?,
    );
    set(
        &mut l.max_unprotected_links,
        at_least(
            "[limits] max_unprotected_links",
            limits.max_unprotected_links,
            1,
        )?,
    );
    set(
        &mut l.max_dials_in_flight,
        at_least(
            "[limits] max_dials_in_flight",
            limits.max_dials_in_flight,
            1,
        )?,
    );
    // A larger frame needs read budgets that hold one such frame besides the small ones (the
    // transport's own validation says what is missing when a budget given here is too small).
    let frame_budget = l.max_message_size.saturating_add(1 << 20);
    l.link_read_budget = limits
        .link_read_budget
        .unwrap_or_else(|| l.link_read_budget.max(frame_budget));
    l.node_read_budget = limits
        .node_read_budget
        .unwrap_or_else(|| l.node_read_budget.max(l.link_read_budget));
    if l.keep_alive >= l.max_idle_timeout {
        return Err(format!(
            "[timeouts] keep_alive_ms ({} ms) must be below idle_ms ({} ms)",
            l.keep_alive.as_millis(),
            l.max_idle_timeout.as_millis()
        ));
    }
    Ok(())
}

/// A count from the config file that must be at least `min` (0 would make the node useless).
fn at_least<T>(key: &str, value: Option<T>, min: T) -> Result<Option<T>, String>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    match value {
        Some(v) if v < min => Err(format!("{key} must be at least {min} (got {v})")),
        other => Ok(other),
    }
}

fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

fn positive_ms(name: &str, value: Option<u64>) -> Result<Option<Duration>, String> {
    match value {
        Some(0) => Err(format!("{name} must be above 0")),
        other => Ok(other.map(Duration::from_millis)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err = parse_file("listen = \"127.0.0.1:1\"\nlisten_addr = 3\n").unwrap_err();
        assert!(err.starts_with("2:1: "), "{err}");
        assert!(err.contains("listen_addr"), "{err}");
        let err = parse_file("[pastry]\nleaf_size = 8\n").unwrap_err();
        assert!(
            err.starts_with("2:1: ") && err.contains("leaf_size"),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_reported_on_one_line_with_its_position() {
        let err = parse_file("key = \"a\"\n\nthis is not toml\n").unwrap_err();
        assert!(err.starts_with("3:"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn tables_set_the_node_config() {
        let file = parse_file(
            "[pastry]\nleaf_set_size = 8\nprobe_period_ms = 500\n[timeouts]\njoin_ms = 2000\n\
             connect_ms = 700\n[limits]\nmax_connections = 10\n",
        )
        .unwrap();
        let mut config = NodeConfig::default();
        apply_tables(&mut config, &file.pastry, &file.timeouts, &file.limits).unwrap();
        assert_eq!(config.pastry.leaf_set_size, 8);
        assert_eq!(config.pastry.probe_period, Duration::from_millis(500));
        assert_eq!(config.pastry.join_timeout, Duration::from_secs(2));
        assert_eq!(config.limits.connect_timeout, Duration::from_millis(700));
        assert_eq!(config.limits.max_connections, 10);
    }

    #[test]
    fn services_parse_and_bad_ones_say_what_to_fix() {
        let exposes =
            parse_exposes(&["web=127.0.0.1:8080".into(), "db=localhost:5432".into()]).unwrap();
        assert_eq!(exposes[1], ("db".to_owned(), "localhost:5432".to_owned()));
        for (bad, says) in [
            ("web", "no '='"),
            ("web=127.0.0.1", "expected HOST:PORT"),
            ("we b=127.0.0.1:1", "bad service name"),
            ("=127.0.0.1:1", "bad service name"),
        ] {
            let err = parse_exposes(&[bad.into()]).unwrap_err();
            assert!(
                err.contains(says) && err.contains("NAME=HOST:PORT"),
                "{err}"
            );
        }
        let err = parse_exposes(&["a=h:1".into(), "a=h:2".into()]).unwrap_err();
        assert!(err.contains("twice"), "{err}");
        let forwards = parse_forwards(&["127.0.0.1:9000=web".into()]).unwrap();
        assert_eq!(forwards[0].0, "127.0.0.1:9000".parse().unwrap());
        let err = parse_forwards(&["localhost=web".into()]).unwrap_err();
        assert!(err.contains("LOCAL_ADDR=NAME"), "{err}");
        let forwards = parse_forwards(&["localhost:9000=web".into()]).unwrap();
        assert!(forwards[0].0.ip().is_loopback(), "{forwards:?}");
        let file = parse_file("expose = [\"web=127.0.0.1:80\"]\nforward = [\"127.0.0.1:1=db\"]\n[mesh]\nreplicas = 5\nrecord_ttl_ms = 9000\n").unwrap();
        assert_eq!(file.expose.unwrap().len(), 1);
        let mesh = mesh_config(&file.mesh).unwrap();
        assert_eq!(mesh.replicas, 5);
        assert_eq!(mesh.republish_interval, Duration::from_secs(3));
    }

    /// The README's config example documents the defaults: applying it must change nothing.
    #[test]
    fn the_readme_config_example_shows_the_defaults() {
        let readme = include_str!("../../../../README.md");
        let start = readme.find("**Config file.**").unwrap();
        let block = &readme[start..];
        let block = &block[block.find("```toml\n").unwrap() + 8..];
        let block = &block[..block.find("```").unwrap()];
        let file = parse_file(block).unwrap();
        let mut config = NodeConfig::default();
        apply_tables(&mut config, &file.pastry, &file.timeouts, &file.limits).unwrap();
        assert_eq!(
            format!("{config:?}"),
            format!("{:?}", NodeConfig::default())
        );
    }

    #[test]
    fn useless_limits_are_refused_naming_the_key() {
        for (table, key) in [
            ("[limits]\nmax_connections = 0\n", "max_connections"),
            ("[limits]\nmax_message_size = 10\n", "max_message_size"),
            ("[limits]\nevent_capacity = 0\n", "event_capacity"),
        ] {
            let file = parse_file(table).unwrap();
            let mut config = NodeConfig::default();
            let err =
                apply_tables(&mut config, &file.pastry, &file.timeouts, &file.limits).unwrap_err();
            assert!(err.contains(key) && err.contains("at least"), "{err}");
        }
    }

    #[test]
    fn the_admin_table_sets_the_endpoint_and_a_token_needs_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:0\"\nkey = \"k.pem\"\n[admin]\nlisten = \"127.0.0.1:8484\"\n\
             token_file = \"token\"\n",
        )
        .unwrap();
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            node: NodeArgs,
        }
        let args = |argv: &[&str]| {
            use clap::Parser;
            Cli::try_parse_from(std::iter::once("node").chain(argv.iter().copied()))
                .unwrap()
                .node
        };
        let file = path.to_str().unwrap();
        let options = NodeOptions::resolve(args(&["--config", file])).unwrap();
        let admin = options.admin.unwrap();
        assert_eq!(admin.listen, "127.0.0.1:8484".parse().unwrap());
        assert_eq!(admin.token_file.unwrap(), dir.path().join("token"));

        let no_admin = args(&[
            "--listen",
            "127.0.0.1:0",
            "--key",
            "k.pem",
            "--admin-token",
            "t",
        ]);
        let err = NodeOptions::resolve(no_admin).unwrap_err();
        assert!(err.contains("needs --admin ADDR"), "{err}");
    }

    #[test]
    fn a_config_file_can_keep_the_mode_as_started() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            node: NodeArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let resolve = |text: &str| {
            use clap::Parser;
            let path = dir.path().join("node.toml");
            std::fs::write(
                &path,
                format!("listen = \"127.0.0.1:0\"\nkey = \"k.pem\"\n{text}"),
            )
            .unwrap();
            let argv = ["node", "--config", path.to_str().unwrap()];
            NodeOptions::resolve(Cli::try_parse_from(argv).unwrap().node).unwrap()
        };
        assert!(resolve("").relay.follow_reachability);
        assert!(
            !resolve("follow_reachability = false\n")
                .relay
                .follow_reachability
        );
    }

    #[test]
    fn odd_leaf_set_sizes_are_refused() {
        let file = parse_file("[pastry]\nleaf_set_size = 7\n").unwrap();
        let mut config = NodeConfig::default();
        let err =
            apply_tables(&mut config, &file.pastry, &file.timeouts, &file.limits).unwrap_err();
        assert!(err.contains("leaf_set_size"), "{err}");
    }
}
