//! `wendy node` as a user and other tools run it: real processes on loopback, driven through
//! stdin, checked from their JSON lines on stdout and their one-line errors on stderr.
//!
//! Every wait is for an event, with a generous hang guard (never a speed assertion); every
//! child is killed when its guard drops, so a failing test leaves no process behind.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;
use wendy::id::{Key, NodeId};
use wendy::identity::test_fixtures;

use crate::common;
use common::process::{keygen, s, wendy, NodeProc};
use common::HANG_GUARD;

fn ids(value: &Value) -> HashSet<NodeId> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect()
}

fn set(list: &[NodeId]) -> HashSet<NodeId> {
    list.iter().copied().collect()
}

#[test]
fn three_nodes_join_route_send_report_status_and_leave() {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, id_a) = keygen(dir.path(), "a");
    let (key_b, id_b) = keygen(dir.path(), "b");
    let (key_c, id_c) = keygen(dir.path(), "c");

    let mut a = NodeProc::start("a", &["--listen", "127.0.0.1:0", "--key", s(&key_a)]);
    let (listened_a, addr_a) = a.listening();
    assert_eq!(listened_a, id_a, "the id is the key's NodeId");
    let joined = a.next_event("joined");
    assert_eq!(joined["id"], id_a.to_string());
    assert!(ids(&joined["leaf_set"]).is_empty(), "{joined}");

    let mut b = NodeProc::start(
        "b",
        &[
            "--listen",
            "127.0.0.1:0",
            "--key",
            s(&key_b),
            "--join",
            &addr_a,
        ],
    );
    assert_eq!(b.listening().0, id_b);
    let joined = b.next_event("joined");
    assert_eq!(joined["id"], id_b.to_string());
    assert_eq!(ids(&joined["leaf_set"]), set(&[id_a]), "{joined}");
    // The bootstrap node hears of the newcomer.
    a.saw_event("node_joined", |v| v["id"] == id_b.to_string());
    a.status_until("b in the leaf set", |st| {
        ids(&st["leaf_set"]) == set(&[id_b])
    });

    let mut c = NodeProc::start(
        "c",
        &[
            "--listen",
            "127.0.0.1:0",
            "--key",
            s(&key_c),
            "--join",
            &addr_a,
        ],
    );
    assert_eq!(c.listening().0, id_c);
    let joined = c.next_event("joined");
    assert_eq!(joined["id"], id_c.to_string());
    // The root of C's join already knew both others.
    assert_eq!(ids(&joined["leaf_set"]), set(&[id_a, id_b]), "{joined}");

    a.saw_event("node_joined", |v| v["id"] == id_c.to_string());

    // Every leaf set settles to the other two; routing-table entries get measured RTTs.
    let nodes = [id_a, id_b, id_c];
    for (node, me) in [(&mut a, id_a), (&mut b, id_b), (&mut c, id_c)] {
        let others: HashSet<NodeId> = nodes.iter().copied().filter(|&id| id != me).collect();
        let status = node.status_until("both others in the leaf set, all RTTs measured", |st| {
            ids(&st["leaf_set"]) == others
                && st["routing_table"]
                    .as_array()
                    .is_some_and(|rt| !rt.is_empty() && rt.iter().all(|e| e["rtt_ms"].is_f64()))
        });
        assert_eq!(status["id"], me.to_string());
        assert!(status["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
        for entry in status["routing_table"].as_array().unwrap() {
            let id: NodeId = entry["id"].as_str().unwrap().parse().unwrap();
            assert!(others.contains(&id), "{entry}");
            assert!(entry["rtt_ms"].as_f64().unwrap() >= 0.0, "{entry}");
            let row = entry["row"].as_u64().unwrap() as usize;
            assert_eq!(row, me.shared_prefix_len(id), "{entry}");
            assert_eq!(entry["col"].as_u64().unwrap(), u64::from(id.digit(row)));
        }
        let linked: HashSet<NodeId> = status["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(!linked.is_empty() && linked.is_subset(&others), "{status}");
    }

    // Route from C to a key whose true root is another node: just past B's id, unless that
    // is closer to someone else, in which case just past A's.
    let (key, root) = [id_b, id_a]
        .iter()
        .map(|&id| (Key::from_u128(id.as_u128().wrapping_add(1)), id))
        .find(|(key, id)| key.closest(nodes) == Some(*id))
        .expect("one of two ids is the root of the key just past it");
    assert_ne!(root, id_c);
    c.command(&format!("route {key} hello  over the overlay"));
    let routed = c.next_event("routed");
    assert_eq!(routed["key"], key.to_string());
    let (root_proc, bystander) = if root == id_b {
        (&mut b, &mut a)
    } else {
        (&mut a, &mut b)
    };
    let delivered = root_proc.next_event("deliver");
    assert_eq!(delivered["key"], key.to_string());
    assert_eq!(delivered["from"], id_c.to_string());
    assert_eq!(delivered["payload"], "hello  over the overlay");
    // C's leaf set holds the root: one hop.
    assert_eq!(delivered["hops"], 1, "{delivered}");
    assert_eq!(delivered["msg_id"], routed["msg_id"]);
    assert_eq!(bystander.status()["stats"]["delivered"], 0);
    assert_eq!(c.status()["stats"]["delivered"], 0);

    // A direct message.
    a.command(&format!("send {id_c} straight to you"));
    a.next_event("sent");
    let direct = c.next_event("direct");
    assert_eq!(direct["from"], id_a.to_string());
    assert_eq!(direct["payload"], "straight to you");

    // A bad command is an error event; the node keeps serving.
    a.command("fly to the moon");
    let error = a.next_event("error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("unknown command"),
        "{error}"
    );
    a.command("route nothex hi");
    a.next_event("error");
    assert_eq!(a.status()["id"], id_a.to_string());

    // B leaves gracefully: it says so and exits 0; A and C see it go.
    b.command("leave");
    b.next_event("left");
    assert!(b.wait_exit().success(), "{}", b.context());
    a.next_matching("node_left of b", |v| {
        v["event"] == "node_left" && v["id"] == id_b.to_string()
    });
    c.next_matching("node_left of b", |v| {
        v["event"] == "node_left" && v["id"] == id_b.to_string()
    });

    // End of stdin does not stop C: it still sees A leave, and then leaves on SIGTERM.
    drop(c.stdin.take());
    a.command("leave");
    assert!(a.wait_exit().success(), "{}", a.context());
    c.next_matching("node_left of a", |v| {
        v["event"] == "node_left" && v["id"] == id_a.to_string()
    });
    let killed = Command::new("kill")
        .args(["-TERM", &c.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    c.next_event("left");
    assert!(c.wait_exit().success(), "{}", c.context());

    // Exactly one delivery in all the output, at the root.
    let deliveries: usize = [&a, &b, &c]
        .iter()
        .map(|n| n.seen.iter().filter(|v| v["event"] == "deliver").count())
        .sum();
    assert_eq!(deliveries, 1);
}

fn fixture(name: &str) -> String {
    test_fixtures::path(name).to_str().unwrap().to_owned()
}

#[test]
fn a_closed_mesh_refuses_a_node_certified_by_another_ca() {
    let ca = fixture("test-ca.crt");
    let mut a = NodeProc::start(
        "a",
        &[
            "--listen",
            "127.0.0.1:0",
            "--key",
            &fixture("test-node-a.key"),
            "--cert",
            &fixture("test-node-a.crt"),
            "--ca",
            &ca,
        ],
    );
    let (_, addr_a) = a.listening();
    a.next_event("joined");
    let mut b = NodeProc::start(
        "b",
        &[
            "--listen",
            "127.0.0.1:0",
            "--key",
            &fixture("test-node-b.key"),
            "--cert",
            &fixture("test-node-b.crt"),
            "--ca",
            &ca,
            "--join",
            &addr_a,
        ],
    );
    b.next_event("joined");

    // A node whose certificate comes from another CA (and which trusts that CA) starts, but
    // no member admits it.
    let out = run_node(&[
        "--listen",
        "127.0.0.1:0",
        "--key",
        &fixture("test-wrong-ca.key"),
        "--cert",
        &fixture("test-wrong-ca.crt"),
        "--ca",
        &fixture("test-other-ca.crt"),
        "--join",
        &addr_a,
    ]);
    let line = fails_with_one_error_line(&out, "cannot join");
    assert!(line.contains(&addr_a), "{line}");
    // It names who refused whom and why: the member's CA is not the one of this node.
    assert!(line.contains("refused the peer"), "{line}");
    assert!(line.contains("different CAs"), "{line}");
    // Its JSON output says so too, and it never joined.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("\"joined\""), "{stdout}");
    assert!(stdout.contains("\"fatal\":true"), "{stdout}");

    // The members kept their overlay: A's leaf set is still just B.
    let b_id = wendy::identity::Identity::load(&test_fixtures::path("test-node-b.key"))
        .unwrap()
        .node_id();
    let status = a.status_until("b in the leaf set", |st| {
        ids(&st["leaf_set"]).contains(&b_id)
    });
    assert_eq!(ids(&status["leaf_set"]), set(&[b_id]), "{status}");
}

#[test]
fn an_allow_list_admits_only_listed_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, id_a) = keygen(dir.path(), "a");
    let (key_b, id_b) = keygen(dir.path(), "b");
    let (key_c, _) = keygen(dir.path(), "c");
    let (a_s, b_s) = (id_a.to_string(), id_b.to_string());
    let mut a = NodeProc::start(
        "a",
        &[
            "--listen",
            "127.0.0.1:0",
            "--key",
            s(&key_a),
            "--allow",
            &a_s,
            "--allow",
            &b_s,
        ],
    );
    let (_, addr_a) = a.listening();
    a.next_event("joined");
    let mut b = NodeProc::start(
        "b",
        &[
            "--listen",
            "127.0.0.1:0",
            "--key",
            s(&key_b),
            "--allow",
            &a_s,
            "--allow",
            &b_s,
            "--join",
            &addr_a,
        ],
    );
    let joined = b.next_event("joined");
    assert_eq!(ids(&joined["leaf_set"]), set(&[id_a]));
    let out = run_node(&[
        "--listen",
        "127.0.0.1:0",
        "--key",
        s(&key_c),
        "--join",
        &addr_a,
    ]);
    fails_with_one_error_line(&out, "cannot join");
}

/// Runs `wendy node` to completion with stdin closed (for error paths).
fn run_node(args: &[&str]) -> Output {
    let mut child = wendy()
        .arg("node")
        .args(args)
        .args(["--events", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wendy node");
    // Guard against a hang: kill the child if it outlives the guard.
    let pid = child.id();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(HANG_GUARD) == Err(RecvTimeoutError::Timeout) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut out_pipe = child.stdout.take().unwrap();
    let err_pipe = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut err_pipe = err_pipe;
        let mut buffer = Vec::new();
        let _ = err_pipe.read_to_end(&mut buffer);
        buffer
    });
    let _ = out_pipe.read_to_end(&mut stdout);
    stderr.extend(err_reader.join().unwrap());
    let status = child.wait().unwrap();
    let _ = done.send(());
    watchdog.join().unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The process failed; its stderr ends with exactly one `error: ` line (log lines may precede
/// it) that mentions `needle`. Returns that line.
fn fails_with_one_error_line(out: &Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "unexpectedly succeeded; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line: {stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    assert!(errors[0].contains(needle), "{stderr:?} lacks {needle:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    errors[0].to_owned()
}

#[test]
fn startup_errors_are_one_line_that_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, _) = keygen(d, "node");
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "not a pem at all\n").unwrap();
    let listen = ["--listen", "127.0.0.1:0"];
    let exposed = d.join("exposed.key");
    std::fs::copy(&key, &exposed).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        // Garbage is refused for what it holds, not for its mode.
        std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let with = |extra: &[&str]| {
        let mut args: Vec<&str> = listen.to_vec();
        args.extend_from_slice(extra);
        run_node(&args)
    };

    let missing = d.join("missing.key");
    let line = fails_with_one_error_line(&with(&["--key", s(&missing)]), "does not exist");
    assert!(line.contains("wendy keygen"), "{line}");
    fails_with_one_error_line(&with(&["--key", s(&garbage)]), "garbage.pem");
    let line = fails_with_one_error_line(&with(&["--key", s(&exposed)]), "exposed.key");
    assert!(line.contains("accessible by other users"), "{line}");
    assert!(line.contains("chmod 600"), "{line}");
    fails_with_one_error_line(&run_node(&["--key", s(&key)]), "--listen");

    let ca = fixture("test-ca.crt");
    let node_a_key = fixture("test-node-a.key");
    let line = fails_with_one_error_line(
        &with(&["--key", &node_a_key, "--cert", s(&garbage), "--ca", &ca]),
        "garbage.pem",
    );
    assert!(line.contains("--cert"), "{line}");
    let line = fails_with_one_error_line(
        &with(&[
            "--key",
            &fixture("test-node-b.key"),
            "--cert",
            &fixture("test-node-a.crt"),
            "--ca",
            &ca,
        ]),
        "is for node",
    );
    assert!(line.contains("wendy ca issue"), "{line}");
    fails_with_one_error_line(
        &with(&[
            "--key",
            &node_a_key,
            "--cert",
            &fixture("test-node-a.crt"),
            "--ca",
            s(&garbage),
        ]),
        "--ca must be the mesh CA",
    );
    fails_with_one_error_line(
        &with(&[
            "--key",
            &node_a_key,
            "--cert",
            &fixture("test-node-a.crt"),
            "--ca",
            &fixture("test-node-b.crt"),
        ]),
        "is not a CA certificate",
    );
    fails_with_one_error_line(
        &with(&["--key", &node_a_key, "--cert", &fixture("test-node-a.crt")]),
        "needs --ca",
    );
    fails_with_one_error_line(
        &with(&[
            "--key",
            &fixture("test-wrong-ca.key"),
            "--cert",
            &fixture("test-wrong-ca.crt"),
            "--ca",
            &ca,
        ]),
        "is not issued by the CA",
    );
    fails_with_one_error_line(
        &with(&[
            "--key",
            &fixture("test-expired.key"),
            "--cert",
            &fixture("test-expired.crt"),
            "--ca",
            &ca,
        ]),
        "expired",
    );
    fails_with_one_error_line(&with(&["--key", s(&key), "--allow", "abc"]), "--allow");
}

#[test]
fn a_port_in_use_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "node");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let line = fails_with_one_error_line(
        &run_node(&["--listen", &addr, "--key", s(&key)]),
        &format!("cannot listen on {addr}"),
    );
    assert!(line.contains("--listen"), "{line}");
}

#[test]
fn no_reachable_bootstrap_names_the_addresses_and_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "node");
    // Two UDP sockets that never answer (held open so nobody else takes the ports).
    let silent: Vec<_> = (0..2)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<String> = silent
        .iter()
        .map(|sock| sock.local_addr().unwrap().to_string())
        .collect();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[timeouts]\nconnect_ms = 300\n").unwrap();
    let line = fails_with_one_error_line(
        &run_node(&[
            "--config",
            s(&config),
            "--listen",
            "127.0.0.1:0",
            "--key",
            s(&key),
            "--join",
            &addrs[0],
            "--join",
            &addrs[1],
        ]),
        "no bootstrap node reachable",
    );
    assert!(
        line.contains(&addrs[0]) && line.contains(&addrs[1]),
        "{line}"
    );
    assert!(line.contains("connect timeout 0.3s"), "{line}");
}

#[test]
fn config_file_errors_name_the_line_or_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "node");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nkey = [oops\n").unwrap();
    let line = fails_with_one_error_line(
        &run_node(&["--config", s(&config), "--key", s(&key)]),
        "node.toml:2:",
    );
    assert!(line.contains("node.toml"), "{line}");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n\n[pastry]\nleaf_size = 8\n",
    )
    .unwrap();
    let line = fails_with_one_error_line(
        &run_node(&["--config", s(&config), "--key", s(&key)]),
        "node.toml:4:",
    );
    assert!(line.contains("leaf_size"), "{line}");
    fails_with_one_error_line(
        &run_node(&[
            "--config",
            s(&dir.path().join("absent.toml")),
            "--key",
            s(&key),
        ]),
        "cannot read config file",
    );
}

#[test]
fn a_config_file_runs_a_node_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let conf_dir = dir.path().join("conf");
    std::fs::create_dir(&conf_dir).unwrap();
    let (_, id) = keygen(&conf_dir, "node");
    let config = conf_dir.join("node.toml");
    // The key path is relative to the file; `events = "text"` is overridden by the flag.
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nkey = \"node.key\"\nevents = \"text\"\n\n[pastry]\n\
         leaf_set_size = 8\nprobe_period_ms = 5000\n\n[timeouts]\njoin_ms = 20000\n",
    )
    .unwrap();
    let mut node = NodeProc::start("cfg", &["--config", s(&config)]);
    assert_eq!(node.listening().0, id);
    node.next_event("joined");
    node.command("leave");
    node.next_event("left");
    assert!(node.wait_exit().success(), "{}", node.context());
}

#[test]
fn without_events_json_the_lines_are_for_humans() {
    let dir = tempfile::tempdir().unwrap();
    let (key, id) = keygen(dir.path(), "node");
    let mut child = wendy()
        .args(["node", "--listen", "127.0.0.1:0", "--key", s(&key)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn wendy node");
    // Killed on drop if an assertion fails.
    struct Guard(Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut guard = Guard(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || lines.recv_timeout(HANG_GUARD).expect("a line (hang guard)");
    let first = next();
    assert!(
        first.starts_with(&format!("listening as {id} on 127.0.0.1:")),
        "{first}"
    );
    assert_eq!(
        next(),
        format!("joined the overlay as {id}; leaf set: (empty)")
    );
    writeln!(stdin, "status").unwrap();
    // `status` is JSON in both formats.
    let status: Value = loop {
        let line = next();
        if let Ok(value) = serde_json::from_str::<Value>(&line) {
            break value;
        }
    };
    assert_eq!(status["id"], id.to_string());
    writeln!(stdin, "leave").unwrap();
    assert_eq!(next(), format!("left the overlay ({id}); exiting"));
    assert!(guard.0.wait().unwrap().success());
}

/// A tool that stops reading stdout (a full pipe) must not freeze the node: output lines are
/// dropped and counted instead, and `leave` on stdin still ends it gracefully.
#[test]
fn an_undrained_stdout_does_not_stop_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "a");
    let mut child = wendy()
        .args(["node", "--listen", "127.0.0.1:0", "--key", s(&key)])
        .args(["--events", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stdin = child.stdin.take().unwrap();
    // Never read: far more output than a pipe holds (64 KiB on Linux).
    let _stdout = child.stdout.take().unwrap();
    let mut child = Kill(child);
    // From a thread: a frozen node stops reading stdin too, and the hang guard below must
    // still fire.
    std::thread::spawn(move || {
        let text = "x".repeat(1000);
        for i in 0..4000u32 {
            writeln!(stdin, "route {:032x} {text}", u128::from(i) << 96)?;
        }
        writeln!(stdin, "leave")?;
        stdin.flush()
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < HANG_GUARD,
            "the node did not leave while its stdout was not read"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
