//! An overlay of `wendy node` processes on a [`Testbed`]: public nodes join through the first
//! public host, private nodes as a user behind NAT starts one (`--listen 0.0.0.0:PORT`, no
//! `--advertise`, `--join` naming a public node), and routes checked against the true root.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use wendy::id::{Key, NodeId};
use wendy::identity::Identity;

use super::testbed::{Host, Testbed};
use crate::common::process::NodeProc;

/// The port every node listens on (each host has its own namespace).
pub const PORT: u16 = 7000;

/// One node of the overlay.
pub struct Member {
    /// The host it runs on.
    pub host: Host,
    /// Its id.
    pub id: NodeId,
    /// Whether it sits behind a NAT.
    pub private: bool,
    /// The process.
    pub proc: NodeProc,
    /// When it was started.
    pub started: Instant,
}

/// Every node of a testbed: the public ones first.
pub struct Overlay {
    /// Key and config files.
    pub dir: tempfile::TempDir,
    /// The nodes, public first, then each LAN's in order.
    pub members: Vec<Member>,
}

fn key_file(dir: &tempfile::TempDir, name: &str) -> (PathBuf, NodeId) {
    let path = dir.path().join(format!("{name}.key"));
    let identity = Identity::generate();
    identity.save(&path, false).unwrap();
    (path, identity.node_id())
}

impl Overlay {
    /// Starts a node on every host: the public ones one by one (each waits for `joined`),
    /// then every private one at once. Private nodes get `join_timeout` (`[timeouts] join_ms`)
    /// so that a node whose join fails keeps running to be observed.
    pub fn start(bed: &Testbed, join_timeout: Duration) -> Self {
        Self::start_with(bed, join_timeout, |_| Vec::new())
    }

    /// [`Self::start`], with `extra(host)` added to the arguments of the node on `host`.
    pub fn start_with(
        bed: &Testbed,
        join_timeout: Duration,
        extra: impl Fn(&Host) -> Vec<String>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("private.toml");
        std::fs::write(
            &config,
            format!("[timeouts]\njoin_ms = {}\n", join_timeout.as_millis()),
        )
        .unwrap();
        let bootstrap = bed.public[0].v4(PORT).to_string();
        let mut members = Vec::new();
        for (i, host) in bed.public.iter().enumerate() {
            let (key, id) = key_file(&dir, &host.name);
            let mut args = vec![
                "--listen".to_owned(),
                host.v4(PORT).to_string(),
                "--key".to_owned(),
                key.to_str().unwrap().to_owned(),
                "--relay".to_owned(),
            ];
            if i > 0 {
                args.extend(["--join".to_owned(), bootstrap.clone()]);
            }
            args.extend(extra(host));
            let started = Instant::now();
            let mut proc = host.spawn_node(&args);
            proc.next_event("joined");
            members.push(Member {
                host: host.clone(),
                id,
                private: false,
                proc,
                started,
            });
        }
        for host in bed.lans.iter().flat_map(|lan| &lan.hosts) {
            let (key, id) = key_file(&dir, &host.name);
            let mut args = vec![
                "--listen".to_owned(),
                format!("0.0.0.0:{PORT}"),
                "--join".to_owned(),
                bootstrap.clone(),
                "--key".to_owned(),
                key.to_str().unwrap().to_owned(),
                "--config".to_owned(),
                config.to_str().unwrap().to_owned(),
            ];
            args.extend(extra(host));
            members.push(Member {
                host: host.clone(),
                id,
                private: true,
                proc: host.spawn_node(&args),
                started: Instant::now(),
            });
        }
        Self { dir, members }
    }

    /// Waits until `until` for every node's `joined` line; returns the names of those that
    /// printed it.
    pub fn joined_by(&mut self, until: Instant) -> Vec<String> {
        let mut joined = Vec::new();
        for member in &mut self.members {
            if member.proc.wait_for(until, |v| v["event"] == "joined") {
                joined.push(member.host.name.clone());
            }
        }
        joined
    }

    /// [`Self::joined_by`], failing the test unless every node joined: the message names each
    /// node that did not, with its status and its output so far.
    pub fn all_joined_by(&mut self, until: Instant) {
        let joined = self.joined_by(until);
        if joined.len() == self.members.len() {
            return;
        }
        let missing: Vec<String> = self
            .members
            .iter_mut()
            .filter(|m| !joined.contains(&m.host.name))
            .map(|m| {
                // A node whose join failed for good has exited: it answers no status.
                let fatal = m.proc.seen.iter().any(|v| v["fatal"] == true);
                let status = if fatal {
                    serde_json::Value::Null
                } else {
                    m.proc.status()
                };
                format!(
                    "{} ({}): status {status}\n{}",
                    m.host.name,
                    m.id,
                    m.proc.context()
                )
            })
            .collect();
        panic!(
            "not every node joined: joined {joined:?}; the others:\n{}",
            missing.join("\n")
        );
    }

    /// Waits until each member's leaf set holds every other member (overlays of at most 17
    /// nodes, where a leaf set of 8 a side holds them all).
    pub fn wait_full_leaf_sets(&mut self) {
        let others = self.members.len() - 1;
        for member in &mut self.members {
            member
                .proc
                .status_until("every other node in its leaf set", |s| {
                    s["leaf_set"].as_array().map(Vec::len) == Some(others)
                });
        }
    }

    /// The live node whose id is closest to `key` among `ids` (the true root).
    pub fn root_of(ids: &[NodeId], key: Key) -> NodeId {
        key.closest(ids.iter().copied()).unwrap()
    }

    /// Routes `count` messages from nodes picked in turn to spread keys and checks that each
    /// is delivered once, at its true root. Returns (delivered at the root, misdelivered,
    /// lost).
    pub fn route_and_check(&mut self, count: usize, salt: u64) -> (usize, usize, usize) {
        let ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        let keys = crate::common::cluster::spread_keys(count as u64, salt);
        let mut expected: HashMap<(String, u64), NodeId> = HashMap::new();
        let n = self.members.len();
        for (i, key) in keys.iter().enumerate() {
            let member = &mut self.members[i % n];
            let text = format!("netns-{salt}-{i}");
            member.proc.command(&format!("route {key} {text}"));
            let routed = member.proc.next_event("routed");
            let msg_id = routed["msg_id"].as_u64().unwrap();
            expected.insert((member.id.to_string(), msg_id), Self::root_of(&ids, *key));
        }
        let until = Instant::now() + Duration::from_secs(10);
        let mut at_root = 0;
        let mut wrong = 0;
        let mut seen = 0;
        for member in &mut self.members {
            member.proc.gather(until);
            for line in member.proc.seen.iter().filter(|v| v["event"] == "deliver") {
                let from = line["from"].as_str().unwrap_or("").to_owned();
                let msg_id = line["msg_id"].as_u64().unwrap_or(0);
                if let Some(root) = expected.get(&(from, msg_id)) {
                    seen += 1;
                    if *root == member.id {
                        at_root += 1;
                    } else {
                        wrong += 1;
                    }
                }
            }
        }
        (at_root, wrong, expected.len().saturating_sub(seen))
    }
}
