//! A NAT testbed of real kernel networking: network namespaces joined by veth pairs, a public
//! segment (IPv4 and IPv6) on a bridge, and private LANs each behind its own NAT router
//! (nftables `masquerade`: endpoint-independent mapping; `masquerade random`: a new port per
//! destination, i.e. symmetric). Hosts run real `wendy node` processes with `ip netns exec`.
//!
//! Everything lives in namespaces this harness creates, named `wtb<pid>x<n>-<role>`; the host's
//! own interfaces and routes are never touched. [`Testbed`]'s drop deletes them all, and
//! [`Testbed::new`] first deletes the leftovers of runs whose process is gone. Declare the
//! testbed before the nodes it hosts, so the nodes are dropped (killed) first.
//!
//! Addresses: public segment `198.18.0.0/24` and `fd15::/64` (public host `i` at `.10+i`,
//! router `j` at `.100+j`); LAN `j` is `10.15.j.0/24`, its router at `.1`, host `k` at `.10+k`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::process::NodeProc;

/// Namespace names start with this, then the owning process id.
const PREFIX: &str = "wtb";

/// How a LAN's router translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// nftables `masquerade`: a LAN socket keeps one public port whatever it sends to.
    EndpointIndependent,
    /// nftables `masquerade random`: a new random public port per destination.
    Symmetric,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Hosts on the public segment.
    pub public_hosts: usize,
    /// Private LANs: each its NAT and number of hosts.
    pub lans: Vec<(Nat, usize)>,
}

/// One namespace that runs programs.
#[derive(Debug, Clone)]
pub struct Host {
    /// A short name for messages (`pub0`, `lan1h2`).
    pub name: String,
    /// The namespace.
    pub ns: String,
    /// Its IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address (public hosts only).
    pub ipv6: Option<Ipv6Addr>,
}

/// A NAT router between a LAN and the public segment.
#[derive(Debug, Clone)]
pub struct Router {
    /// The namespace.
    pub ns: String,
    /// Its address on the public segment (the address LAN hosts appear at).
    pub public_ipv4: Ipv4Addr,
    /// Its NAT.
    pub nat: Nat,
}

/// A private LAN: its router and hosts.
#[derive(Debug, Clone)]
pub struct Lan {
    /// The NAT router.
    pub router: Router,
    /// The hosts behind it.
    pub hosts: Vec<Host>,
}

/// The built testbed; dropping it deletes every namespace it made.
#[derive(Debug)]
pub struct Testbed {
    namespaces: Vec<String>,
    /// The public hosts.
    pub public: Vec<Host>,
    /// The private LANs.
    pub lans: Vec<Lan>,
}

/// Why the testbed cannot run here (`None`: it can). Tests print it as their one skip line.
pub fn unavailable() -> Option<String> {
    // The effective uid, from /proc (no libc call needed).
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Some("not root".to_owned());
    }
    for tool in ["ip", "nft", "conntrack"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "`{tool}` is missing (install iproute2, nftables and conntrack)"
            ));
        }
    }
    None
}

/// Skips the calling test with one line when the testbed cannot run here.
#[macro_export]
macro_rules! netns_or_skip {
    ($test:expr) => {
        if let Some(why) = $crate::netns::testbed::unavailable() {
            eprintln!(
                "skipped {}: the netns testbed needs root, ip, nft and conntrack ({why})",
                $test
            );
            return;
        }
    };
}

fn run(args: &[&str]) -> Result<Output, String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn run_with_input(args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}\ninput:\n{input}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Deletes namespaces of earlier runs whose process is gone.
fn remove_leftovers() {
    let Ok(list) = run(&["ip", "netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if pid.is_empty() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = run(&["ip", "netns", "delete", name]);
    }
}

impl Testbed {
    /// Builds the testbed of `spec` (as root; see [`unavailable`]).
    pub fn new(spec: &Spec) -> Result<Self, String> {
        static BUILT: AtomicUsize = AtomicUsize::new(0);
        remove_leftovers();
        let tag = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            BUILT.fetch_add(1, Ordering::Relaxed)
        );
        let mut bed = Self {
            namespaces: Vec::new(),
            public: Vec::new(),
            lans: Vec::new(),
        };
        bed.build(&tag, spec)?;
        Ok(bed)
    }

    fn add_ns(&mut self, name: String) -> Result<String, String> {
        run(&["ip", "netns", "add", &name])?;
        self.namespaces.push(name.clone());
        run(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// A veth pair: `inner` in `ns`, `port` in `bridge_ns` on its bridge `br0`.
    fn plug(ns: &str, inner: &str, bridge_ns: &str, port: &str) -> Result<(), String> {
        run(&[
            "ip", "link", "add", "name", inner, "netns", ns, "type", "veth", "peer", "name", port,
            "netns", bridge_ns,
        ])?;
        run(&[
            "ip", "-n", bridge_ns, "link", "set", port, "master", "br0", "up",
        ])?;
        run(&["ip", "-n", ns, "link", "set", inner, "up"])?;
        Ok(())
    }

    fn addr(ns: &str, dev: &str, cidr: &str) -> Result<(), String> {
        if cidr.contains(':') {
            run(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev, "nodad"])?;
        } else {
            run(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev])?;
        }
        Ok(())
    }

    fn build(&mut self, tag: &str, spec: &Spec) -> Result<(), String> {
        let switch = self.add_ns(format!("{tag}-sw"))?;
        run(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &switch, "link", "set", "br0", "up"])?;
        for i in 0..spec.public_hosts {
            let ns = self.add_ns(format!("{tag}-pub{i}"))?;
            Self::plug(&ns, "eth0", &switch, &format!("p{i}"))?;
            let octet = u8::try_from(10 + i).map_err(|_| "too many public hosts")?;
            let ipv4 = Ipv4Addr::new(198, 18, 0, octet);
            let ipv6 = Ipv6Addr::new(0xfd15, 0, 0, 0, 0, 0, 0, u16::from(octet));
            Self::addr(&ns, "eth0", &format!("{ipv4}/24"))?;
            Self::addr(&ns, "eth0", &format!("{ipv6}/64"))?;
            self.public.push(Host {
                name: format!("pub{i}"),
                ns,
                ipv4,
                ipv6: Some(ipv6),
            });
        }
        for (j, &(nat, hosts)) in spec.lans.iter().enumerate() {
            let router_ns = self.add_ns(format!("{tag}-nat{j}"))?;
            Self::plug(&router_ns, "eth0", &switch, &format!("r{j}"))?;
            let octet = u8::try_from(100 + j).map_err(|_| "too many LANs")?;
            let public_ipv4 = Ipv4Addr::new(198, 18, 0, octet);
            Self::addr(&router_ns, "eth0", &format!("{public_ipv4}/24"))?;
            let lan_octet = u8::try_from(j).map_err(|_| "too many LANs")?;
            run(&[
                "ip", "-n", &router_ns, "link", "add", "br0", "type", "bridge",
            ])?;
            run(&["ip", "-n", &router_ns, "link", "set", "br0", "up"])?;
            Self::addr(&router_ns, "br0", &format!("10.15.{lan_octet}.1/24"))?;
            run(&[
                "ip",
                "netns",
                "exec",
                &router_ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])?;
            let masquerade = match nat {
                Nat::EndpointIndependent => "masquerade",
                Nat::Symmetric => "masquerade random",
            };
            // `filter forward` holds the drop rules tests add (`Router::drop`).
            let rules = format!(
                "table ip wendy_nat {{\n\
                   chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n\
                     oifname \"eth0\" {masquerade}\n\
                   }}\n\
                 }}\n\
                 table inet wendy_filter {{\n\
                   chain forward {{ type filter hook forward priority filter; policy accept; }}\n\
                 }}\n"
            );
            run_with_input(
                &["ip", "netns", "exec", &router_ns, "nft", "-f", "-"],
                &rules,
            )?;
            let mut lan = Lan {
                router: Router {
                    ns: router_ns.clone(),
                    public_ipv4,
                    nat,
                },
                hosts: Vec::new(),
            };
            for k in 0..hosts {
                let ns = self.add_ns(format!("{tag}-lan{j}h{k}"))?;
                Self::plug(&ns, "eth0", &router_ns, &format!("h{k}"))?;
                let host_octet = u8::try_from(10 + k).map_err(|_| "too many LAN hosts")?;
                let ipv4 = Ipv4Addr::new(10, 15, lan_octet, host_octet);
                Self::addr(&ns, "eth0", &format!("{ipv4}/24"))?;
                run(&[
                    "ip",
                    "-n",
                    &ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.15.{lan_octet}.1"),
                ])?;
                lan.hosts.push(Host {
                    name: format!("lan{j}h{k}"),
                    ns,
                    ipv4,
                    ipv6: None,
                });
            }
            self.lans.push(lan);
        }
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Deleting a namespace removes its veth ends, bridges and nftables rules with it.
        for ns in self.namespaces.iter().rev() {
            let _ = run(&["ip", "netns", "delete", ns]);
        }
    }
}

impl Host {
    /// A command that runs `program` inside this host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns]).arg(program);
        command
    }

    /// The `wendy` binary inside this host's namespace, without the caller's log settings:
    /// `WENDY_NODE_LOG` (a `RUST_LOG` filter) sets the nodes' own, whose lines a failing test
    /// shows with each node's output.
    pub fn wendy(&self) -> Command {
        let mut command = self.command(env!("CARGO_BIN_EXE_wendy"));
        command.env_remove("RUST_LOG").env_remove("RUST_BACKTRACE");
        if let Ok(filter) = std::env::var("WENDY_NODE_LOG") {
            command.env("RUST_LOG", filter);
        }
        command
    }

    /// Starts `wendy node ARGS --events json` on this host.
    pub fn spawn_node<I>(&self, args: I) -> NodeProc
    where
        I: IntoIterator,
        I::Item: AsRef<std::ffi::OsStr>,
    {
        let mut command = self.wendy();
        command.arg("node").args(args);
        NodeProc::start_command(&self.name, command)
    }

    /// `ip:port` on this host's IPv4 address.
    pub fn v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ipv4), port)
    }

    /// Applies an nftables script (`nft -f -`) in the host's namespace (a firewall on the
    /// host itself).
    pub fn nft(&self, script: &str) -> Result<(), String> {
        run_with_input(&["ip", "netns", "exec", &self.ns, "nft", "-f", "-"], script)
    }
}

impl Router {
    /// Applies an nftables script (`nft -f -`) in the router's namespace.
    pub fn nft(&self, script: &str) -> Result<(), String> {
        run_with_input(&["ip", "netns", "exec", &self.ns, "nft", "-f", "-"], script)
    }

    /// Adds a rule that drops forwarded packets matching `selector` (nftables syntax, e.g.
    /// `ip saddr 198.18.0.10 udp dport 7000`), both ways through the router.
    pub fn drop(&self, selector: &str) -> Result<(), String> {
        let rule = format!("add rule inet wendy_filter forward {selector} drop\n");
        run_with_input(&["ip", "netns", "exec", &self.ns, "nft", "-f", "-"], &rule)
    }

    /// Removes every drop rule added with [`Self::drop`].
    pub fn clear_drops(&self) -> Result<(), String> {
        run(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            "nft",
            "flush",
            "chain",
            "inet",
            "wendy_filter",
            "forward",
        ])
        .map(drop)
    }

    /// Forgets every NAT mapping (the router's conntrack table, with the `conntrack` tool), as
    /// a NAT does when its mappings time out or it reboots.
    pub fn flush_conntrack(&self) -> Result<(), String> {
        run(&["ip", "netns", "exec", &self.ns, "conntrack", "-F"]).map(drop)
    }

    /// The NAT mappings the router holds, as `conntrack -L` prints them.
    pub fn conntrack(&self) -> Result<String, String> {
        run(&["ip", "netns", "exec", &self.ns, "conntrack", "-L"])
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
