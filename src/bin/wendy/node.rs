//! `wendy node`: run one Wendy node, driven by commands on stdin, reporting events on stdout.
//!
//! Layout: [`config`] merges flags and the TOML file into one `NodeOptions`; [`trust`] loads
//! and checks the key, certificate and CA; [`output`] owns the stdout contract (JSON lines or
//! text); [`commands`] parses stdin. This file is the run loop: start, join, then serve stdin
//! commands, node events and signals until `leave`, SIGINT or SIGTERM.
//!
//! Service mesh: the node's events go through a [`Mesh`], which handles registry messages and
//! tunnels (raw streams) and passes every other event on; `--expose` / `--forward` services
//! start once the node has joined, and are withdrawn when it leaves.

mod commands;
mod config;
mod output;
mod trust;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use wendy::id::NodeId;
use wendy::mesh::Mesh;
use wendy::node::{Node, NodeError, NodeEvent};
use wendy::transport::{BindError, ConnectError};

use crate::admin::{AdminState, BoundAdmin, CertificateInfo, Observed};
use crate::CmdResult;
use commands::StdinCommand;
pub(crate) use config::NodeArgs;
use config::{EventFormat, NodeOptions};
pub(crate) use output::StatusOut;
use output::{Out, Printer};

/// Runs `wendy node` until it leaves; errors are one line for `main` to print, and with
/// `--events json` also one fatal event on stdout, whatever stage they come from.
pub(crate) fn run(args: NodeArgs) -> CmdResult {
    // The flag's format until the config file has been read (it may be what fails).
    let mut format = args.events.unwrap_or_default();
    let result = (|| -> CmdResult {
        let options = NodeOptions::resolve(args)?;
        format = options.events;
        let trust = trust::load(&options)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let result = runtime.block_on(serve(options, trust));
        // The stdin reader thread may be blocked in a read: do not wait for it.
        runtime.shutdown_background();
        result
    })();
    result.map_err(|e| fatal(Printer::new(format), format, e.to_string()))
}

/// Signals that end the node gracefully.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, String> {
        let install = |kind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
        Ok(Self {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

async fn serve(options: NodeOptions, trust: trust::Trust) -> CmdResult {
    let printer = Printer::new(options.events);
    let started = (Instant::now(), SystemTime::now());
    let mut signals = Signals::install()?;
    let bootstrap = resolve_join(&options.join, options.listen).await?;
    // Bound before the node starts: a taken port or a missing token stops it before it joins.
    let admin = match &options.admin {
        Some(admin) => Some(BoundAdmin::bind(admin).await?),
        None => None,
    };
    let certificate = certificate_info(&trust, &options);
    let identity = trust.identity.clone();
    let towards = address_towards(options.listen, &bootstrap);
    let mut relay = options.relay.clone();
    if options.private_auto && options.advertise.is_none() {
        relay.private = towards.is_some_and(|own| behind_nat(own.ip(), &bootstrap));
    }
    let mut builder = Node::builder(trust.identity)
        .listen(options.listen)
        .admission(trust.admission)
        .config(options.config.clone())
        .relay(relay);
    if let Some(addr) = options.advertise.or(towards) {
        builder = builder.advertise(addr);
    }
    if let Some(certificate) = trust.certificate {
        builder = builder.certificate(certificate);
    }
    let (node, events) = builder
        .spawn()
        .await
        .map_err(|e| spawn_error(e, options.listen))?;
    let me = node.id();
    let (mesh, mut events) = Mesh::new(node.clone(), identity, events, options.mesh.clone())
        .map_err(|e| format!("cannot start the service mesh: {e}"))?;
    if node.addr().ip().is_unspecified() {
        tracing::warn!(
            addr = %node.addr(),
            "listening on an unspecified address: other hosts cannot dial it; pass --advertise \
             with this host's reachable address"
        );
    }
    printer.print(&Out::Listening {
        id: me.to_string(),
        addr: node.addr().to_string(),
    });
    // A `reachability` line whenever it becomes known or changes (before and after the join).
    let mut reach = node.reachability();
    tokio::spawn(async move {
        let mut shown = (wendy::reach::Reachability::Unknown, Vec::new());
        while reach.changed().await.is_ok() {
            let status = reach.borrow_and_update().clone();
            let now = (status.reachability, status.observed_addrs.clone());
            // The channel also changes with counters; print only what the line shows.
            if status.reachability != wendy::reach::Reachability::Unknown && now != shown {
                printer.print(&Out::reachability(&status));
                shown = now;
            }
        }
    });
    // A `mode` line whenever the node turns private or public at run time.
    let mut mode = node.mode();
    tokio::spawn(async move {
        while mode.changed().await.is_ok() {
            let status = mode.borrow_and_update().clone();
            printer.print(&Out::mode(&status));
        }
    });
    let observed = Observed::default();
    if let Some(admin) = admin {
        let addr = admin.local_addr()?;
        admin.serve(AdminState {
            node: node.clone(),
            mesh: mesh.clone(),
            listen: options.listen,
            started: started.0,
            started_at: started.1,
            certificate,
            observed: observed.clone(),
            output_dropped: output::dropped_lines,
        });
        tracing::info!(%addr, "admin endpoint: http://{addr}/");
        printer.print(&Out::Admin {
            addr: addr.to_string(),
        });
    }

    // The forward listeners are bound before joining: a taken port stops the node before the
    // others see it join (connections that arrive before the join are reset).
    let forwards = match bind_forwards(&mesh, &options).await {
        Ok(forwards) => forwards,
        Err(message) => {
            mesh.shutdown().await;
            node.shutdown().await;
            return Err(message.into());
        }
    };

    // Join, printing the events that arrive meanwhile (the `joined` event among them).
    let mut saw_joined = false;
    let joined = {
        let join = node.join(&bootstrap);
        tokio::pin!(join);
        loop {
            tokio::select! {
                // The join's own error first: a failed join may also end the event stream.
                biased;
                result = &mut join => break result.map_err(|e| join_error(e, me, &options)),
                event = events.recv() => match event {
                    Some(event) => {
                        saw_joined |= matches!(event, NodeEvent::Joined { .. });
                        on_event(me, event, printer, &observed);
                    }
                    None => break Err("the node stopped while joining".to_owned()),
                },
                () = signals.recv() => break Err("interrupted before the node joined".to_owned()),
            }
        }
    };
    if let Err(message) = joined {
        mesh.shutdown().await;
        node.shutdown().await;
        return Err(message.into());
    }
    if options.events == EventFormat::Text {
        eprintln!("{}", commands::USAGE);
    }

    // The `joined` line comes before the services' own lines (it may still be on its way
    // through the mesh's event hand-over; it is not waited for long).
    if !saw_joined {
        let wait = async {
            while let Some(event) = events.recv().await {
                let joined = matches!(event, NodeEvent::Joined { .. });
                on_event(me, event, printer, &observed);
                if joined {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
    }
    if let Err(message) = start_services(&mesh, &options, &forwards, printer).await {
        mesh.shutdown().await;
        node.shutdown().await;
        return Err(message.into());
    }
    warn_unknown_services(&mesh, &forwards);

    let mut stdin = spawn_stdin_reader();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = stdin.recv(), if stdin_open => match line {
                Some(line) => match commands::parse(&line) {
                    Ok(Some(StdinCommand::Leave)) => break,
                    Ok(Some(command)) => on_command(&mesh, command, printer).await,
                    Ok(None) => {}
                    Err(message) => printer.print(&Out::error(message)),
                },
                // End of stdin does not stop the node: it runs until `leave` or a signal.
                None => stdin_open = false,
            },
            event = events.recv() => match event {
                Some(event) => on_event(me, event, printer, &observed),
                None => return Err("the node stopped unexpectedly".into()),
            },
            () = signals.recv() => break,
        }
    }
    mesh.shutdown().await;
    node.leave()
        .await
        .map_err(|e| format!("leaving failed: {e}"))?;
    printer.print(&Out::Left { id: me.to_string() });
    printer.flush();
    Ok(())
}

/// Prints a fatal error as a JSON event too (tools reading stdout see why the node exits), and
/// returns it for the one-line message on stderr.
fn fatal(printer: Printer, format: EventFormat, message: String) -> Box<dyn std::error::Error> {
    if format == EventFormat::Json {
        printer.print(&Out::Error {
            message: message.clone(),
            fatal: true,
            from_node: false,
        });
    }
    printer.flush();
    message.into()
}

fn on_event(me: NodeId, event: NodeEvent, printer: Printer, observed: &Observed) {
    match &event {
        NodeEvent::Heartbeat { from } | NodeEvent::Direct { from, .. } => observed.heard(*from),
        _ => {}
    }
    if let Some(out) = Out::from_event(me, &event) {
        printer.print(&out);
    }
}

/// Binds the listeners of `--forward` (each one's bound address and service name); the first
/// failure is fatal (a node that silently lacks a service it was asked for is worse than one
/// that exits).
async fn bind_forwards(
    mesh: &Mesh,
    options: &NodeOptions,
) -> Result<Vec<(SocketAddr, String)>, String> {
    let mut bound = Vec::new();
    for (listen, name) in &options.forward {
        if listen.ip().is_unspecified() {
            tracing::warn!(
                %listen,
                "forwarding on an unspecified address: anyone who can reach this host can use \
                 service {name:?} without mesh admission; prefer 127.0.0.1"
            );
        }
        let local = mesh.forward(*listen, name).await.map_err(|e| {
            format!("cannot forward {listen}={name}: {e}; pick another local address")
        })?;
        bound.push((local, name.clone()));
    }
    Ok(bound)
}

/// Exposes the services of `--expose` (the first failure is fatal) and prints the forwards
/// bound before the join.
async fn start_services(
    mesh: &Mesh,
    options: &NodeOptions,
    forwards: &[(SocketAddr, String)],
    printer: Printer,
) -> Result<(), String> {
    for (name, target) in &options.expose {
        mesh.expose(name, target)
            .await
            .map_err(|e| format!("cannot expose {name}={target}: {e}"))?;
        printer.print(&Out::Exposed {
            name: name.clone(),
            target: target.clone(),
        });
    }
    for (local, name) in forwards {
        printer.print(&Out::Forwarding {
            listen: local.to_string(),
            name: name.clone(),
        });
    }
    Ok(())
}

/// Looks each forwarded service up once the node has joined, and warns once about a name no
/// provider is known for: most often a typo, which would otherwise show only as every
/// connection being reset.
fn warn_unknown_services(mesh: &Mesh, forwards: &[(SocketAddr, String)]) {
    for (local, name) in forwards {
        let (local, name, mesh) = (*local, name.clone(), mesh.clone());
        tokio::spawn(async move {
            let providers = mesh.lookup(&name).await.map(|records| records.len());
            if matches!(
                providers,
                Ok(0) | Err(wendy::mesh::MeshError::NoProvider(_))
            ) {
                let known = mesh.known_services();
                let known = if known.is_empty() {
                    "none yet".to_owned()
                } else {
                    known.join(", ")
                };
                tracing::warn!(
                    "--forward {local}={name}: no node of the mesh provides a service named \
                     {name:?} (names known to this node: {known}); check the name, or start \
                     its provider with --expose {name}=HOST:PORT"
                );
            }
        });
    }
}

async fn on_command(mesh: &Mesh, command: StdinCommand, printer: Printer) {
    let node = mesh.node();
    match command {
        StdinCommand::Route { key, text } => match node.route(key, text.into_bytes()).await {
            Ok(msg_id) => printer.print(&Out::Routed {
                key: key.to_string(),
                msg_id,
            }),
            Err(e) => printer.print(&Out::error(format!("route: {e}"))),
        },
        StdinCommand::Send { to, text } => {
            // A send may wait for a connection: do it aside so events keep flowing.
            let node = node.clone();
            tokio::spawn(async move {
                match node.send(to, text.into_bytes()).await {
                    Ok(()) => printer.print(&Out::Sent { to: to.to_string() }),
                    Err(e) => printer.print(&Out::error(format!("send: {e}"))),
                }
            });
        }
        StdinCommand::Status => match node.status().await {
            Ok(status) => {
                let status = StatusOut::new(&status).with_mesh(mesh.status());
                printer.print(&Out::Status(Box::new(status)));
            }
            Err(e) => printer.print(&Out::error(format!("status: {e}"))),
        },
        StdinCommand::Services => printer.print(&Out::Services {
            names: mesh.known_services(),
        }),
        StdinCommand::Subscribe { topic } => match node.topics().subscribe(&topic).await {
            Ok(()) => printer.print(&Out::Subscribed { topic }),
            Err(e) => printer.print(&Out::error(format!("subscribe: {e}"))),
        },
        StdinCommand::Unsubscribe { topic } => match node.topics().unsubscribe(&topic).await {
            Ok(()) => printer.print(&Out::Unsubscribed { topic }),
            Err(e) => printer.print(&Out::error(format!("unsubscribe: {e}"))),
        },
        StdinCommand::Publish { topic, text } => {
            // A publish may wait for the root's acknowledgements: aside, so events keep flowing.
            let node = node.clone();
            tokio::spawn(async move {
                match node.topics().publish(&topic, text.into_bytes()).await {
                    Ok(seq) => printer.print(&Out::Published { topic, seq }),
                    Err(e) => printer.print(&Out::error(format!("publish: {e}"))),
                }
            });
        }
        // Handled by the run loop (it ends the loop).
        StdinCommand::Leave => {}
    }
}

/// The node's certificate for the admin endpoint: the CA-issued one, or the self-signed one the
/// node makes as it starts (valid for `self_signed_days` from now).
fn certificate_info(trust: &trust::Trust, options: &NodeOptions) -> CertificateInfo {
    let self_signed = || {
        let days = u64::from(options.config.self_signed_days);
        CertificateInfo::new(
            "self-signed",
            SystemTime::now() + Duration::from_secs(days * 86_400),
        )
    };
    match &trust.certificate {
        // `trust::load` has checked the validity; it parses.
        Some(cert) => cert.validity().map_or_else(
            |_| self_signed(),
            |v| CertificateInfo::new("ca", v.not_after),
        ),
        None => self_signed(),
    }
}

/// Reads stdin lines on a plain thread (a blocking read cannot be cancelled; this thread
/// simply ends with the process). The channel closes at end of input.
fn spawn_stdin_reader() -> mpsc::Receiver<String> {
    let (lines, receiver) = mpsc::channel(64);
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut stdin = std::io::stdin().lock();
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match stdin.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer).into_owned();
                    if lines.blocking_send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    receiver
}

/// The address to advertise when listening on an unspecified address with no `--advertise`:
/// the local address the kernel would send from towards the first bootstrap node (no packet is
/// sent), with the listening port (0: the port bound). Never `0.0.0.0`, which other nodes would
/// dial as themselves. Behind a NAT this is the LAN address; what others see is learned by
/// address discovery (`observed_addrs`).
fn address_towards(listen: SocketAddr, bootstrap: &[SocketAddr]) -> Option<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return None;
    }
    let first = bootstrap.first()?;
    let probe = std::net::UdpSocket::bind(SocketAddr::new(listen.ip(), 0)).ok()?;
    probe.connect(first).ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(SocketAddr::new(ip, listen.port()))
}

/// Whether a node whose own address is `own` sits behind a NAT as seen from `bootstrap`: its
/// address is one the Internet does not route (RFC 1918, CGNAT 100.64/10, IPv6 ULA) while the
/// node it joins through has one that it does. Nodes of one LAN joining each other stay direct.
fn behind_nat(own: IpAddr, bootstrap: &[SocketAddr]) -> bool {
    fn unroutable(ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                v4.is_private() || (a == 100 && (64..128).contains(&b))
            }
            IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
        }
    }
    fn routable(ip: IpAddr) -> bool {
        !unroutable(ip) && !ip.is_loopback() && !ip.is_unspecified()
    }
    unroutable(own) && bootstrap.first().is_some_and(|first| routable(first.ip()))
}

/// Resolves `--join HOST:PORT` values to socket addresses this node can dial: those of the
/// IP family it listens on (a socket bound to an IPv4 address cannot reach IPv6 ones, nor one
/// bound to an IPv6 address other than `[::]` IPv4 ones). A value with no such address is an
/// error at once rather than a dial that can only time out.
async fn resolve_join(join: &[String], listen: SocketAddr) -> Result<Vec<SocketAddr>, String> {
    let dialable = |addr: &SocketAddr| match listen {
        SocketAddr::V4(_) => addr.is_ipv4(),
        SocketAddr::V6(v6) => v6.ip().is_unspecified() || addr.is_ipv6(),
    };
    let mut addrs = Vec::new();
    for text in join {
        let found: Vec<SocketAddr> = tokio::net::lookup_host(text.as_str())
            .await
            .map_err(|e| format!("cannot resolve --join {text:?}: {e} (expected HOST:PORT)"))?
            .collect();
        let usable: Vec<SocketAddr> = found.iter().copied().filter(dialable).collect();
        if usable.is_empty() {
            let (theirs, ours, example) = if listen.is_ipv4() {
                ("IPv6", "IPv4", "[::]:0")
            } else {
                ("IPv4", "IPv6", "0.0.0.0:0 or [::]:0")
            };
            let found = found
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(format!(
                "cannot join {text} ({found}): it is an {theirs} address and this node listens \
                 on {ours} ({listen}); listen on an address of its family (e.g. --listen \
                 {example}) or join through an {ours} address"
            ));
        }
        addrs.extend(usable);
    }
    Ok(addrs)
}

fn spawn_error(e: NodeError, listen: SocketAddr) -> String {
    match e {
        NodeError::Bind(BindError::Socket { source, .. }) => format!(
            "cannot listen on {listen}: {source}; another process (maybe another wendy node) \
             may be using it: pick another --listen address"
        ),
        other => format!("cannot start the node: {other}"),
    }
}

fn join_error(e: NodeError, me: NodeId, options: &NodeOptions) -> String {
    match e {
        NodeError::NoBootstrapReachable {
            tried,
            last_addr,
            last_error,
        } => match *last_error {
            ConnectError::Auth(_) | ConnectError::RefusedByPeer(_) => format!(
                "cannot join through {tried}: {last_addr}: {last_error} (this node's id: {me})"
            ),
            ConnectError::Timeout(_) => format!(
                "cannot join: no bootstrap node reachable at {tried} (connect timeout {}): \
                 {last_addr}: {last_error}; check the --join addresses and that a node runs \
                 there",
                seconds(options.config.limits.connect_timeout)
            ),
            _ => format!(
                "cannot join: no bootstrap node reachable at {tried}: {last_addr}: \
                 {last_error}; check the --join addresses and that a node runs there"
            ),
        },
        NodeError::JoinRefused { addr, reason } => {
            format!("cannot join: a member at {addr} refused this node ({me}): {reason}")
        }
        error @ NodeError::IdentityInUse { .. } => {
            format!("cannot join as {me}: {error}")
        }
        NodeError::JoinTimeout(limit) => format!(
            "cannot join: the overlay did not accept this node within {}; check the bootstrap \
             nodes or raise [timeouts] join_ms in the config file",
            seconds(limit)
        ),
        other => format!("cannot join: {other}"),
    }
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_lan_address_joining_a_routable_one_is_behind_nat() {
        let public = addrs(&["198.18.0.1:7000"]);
        assert!(behind_nat("10.15.0.2".parse().unwrap(), &public));
        assert!(behind_nat("192.168.1.5".parse().unwrap(), &public));
        assert!(behind_nat("100.64.3.4".parse().unwrap(), &public));
        assert!(behind_nat(
            "fd00::5".parse().unwrap(),
            &addrs(&["[2001:db8::1]:7000"])
        ));
    }

    #[test]
    fn nodes_of_one_lan_or_one_host_stay_direct() {
        let lan = addrs(&["10.15.0.1:7000"]);
        assert!(!behind_nat("10.15.0.2".parse().unwrap(), &lan));
        let loopback = addrs(&["127.0.0.1:7000"]);
        assert!(!behind_nat("127.0.0.1".parse().unwrap(), &loopback));
        let public = addrs(&["198.18.0.1:7000"]);
        assert!(!behind_nat("198.18.0.2".parse().unwrap(), &public));
        assert!(!behind_nat("10.15.0.2".parse().unwrap(), &[]));
    }
}
