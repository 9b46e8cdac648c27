//! What an operator sees from `wendy node` and the tools around it, with real processes: one
//! `error:` line (and one fatal JSON event) per fatal error, errors that name who refused whom
//! and why, hostnames wherever an address goes, forward listeners bound before joining, a
//! warning for a forwarded name nobody provides, the `services` command, `wendy cert show`,
//! `wendy completions` and `--version` on every command.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wendy::identity::test_fixtures;

use crate::common::process::{keygen, s, wendy, NodeProc};
use crate::common::HANG_GUARD;

fn fixture(name: &str) -> String {
    test_fixtures::path(name).to_str().unwrap().to_owned()
}

/// Runs `wendy node ARGS --events json` to its end with stdin closed, hang-guarded.
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
    let started = Instant::now();
    let mut stdout = Vec::new();
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = err_pipe.read_to_end(&mut buffer);
        buffer
    });
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        while started.elapsed() < HANG_GUARD {
            std::thread::sleep(Duration::from_millis(100));
            if Command::new("kill")
                .args(["-0", &pid.to_string()])
                .stderr(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
            {
                return;
            }
        }
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let _ = out_pipe.read_to_end(&mut stdout);
    let stderr = err_reader.join().unwrap();
    let status = child.wait().unwrap();
    let _ = watchdog.join();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The run failed with exactly one `error:` line on stderr, no WARN line repeating it, and
/// exactly one fatal JSON event on stdout carrying the same message. Returns the message.
fn one_fatal_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line: {stderr}");
    assert!(
        !stderr.contains("WARN"),
        "a WARN line besides the error: {stderr}"
    );
    let fatal: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["fatal"] == true)
        .collect();
    assert_eq!(fatal.len(), 1, "expected one fatal event: {stdout}");
    let message = fatal[0]["message"].as_str().unwrap().to_owned();
    assert_eq!(errors[0], format!("error: {message}"), "{stdout}");
    message
}

#[test]
fn a_taken_port_is_one_error_line_and_one_fatal_event() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "a");
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let message = one_fatal_error(&run_node(&["--listen", &addr, "--key", s(&key)]));
    assert!(
        message.contains(&format!("cannot listen on {addr}")),
        "{message}"
    );
    // A config file error too, before anything else ran.
    let message = one_fatal_error(&run_node(&[
        "--listen",
        "127.0.0.1:0",
        "--key",
        "/nonexistent",
    ]));
    assert!(message.contains("/nonexistent"), "{message}");
}

/// A node of another CA tries to join: it is told the other side has a different CA, in one
/// line, at once; the healthy member prints one warning line for the refusal and no WARN log.
#[test]
fn a_refusal_says_who_refused_whom_and_why_once_on_each_side() {
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
            &fixture("test-ca.crt"),
        ],
    );
    let (_, addr_a) = a.listening();
    a.next_event("joined");
    let started = Instant::now();
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
    let message = one_fatal_error(&out);
    assert!(started.elapsed() < Duration::from_secs(5), "{message}");
    assert!(message.contains(&addr_a), "{message}");
    assert!(message.contains("different CAs"), "{message}");
    assert!(!message.contains("timeout"), "{message}");

    // The member: one event for the refusal, naming the address and that the other side
    // refused; nothing about it on stderr.
    let refusal = a.next_matching("the refusal event", |v| v["event"] == "error");
    let text = refusal["message"].as_str().unwrap();
    assert!(text.contains("refused"), "{text}");
    assert_ne!(refusal["fatal"], true);
    assert!(!a.stderr().contains("refused"), "{}", a.stderr());
}

#[test]
fn an_allow_list_refusal_is_named_in_the_join_error() {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, id_a) = keygen(dir.path(), "a");
    let (key_c, id_c) = keygen(dir.path(), "c");
    let a_s = id_a.to_string();
    let mut a = NodeProc::start(
        "a",
        &[
            "--listen",
            "127.0.0.1:0",
            "--key",
            s(&key_a),
            "--allow",
            &a_s,
        ],
    );
    let (_, addr_a) = a.listening();
    a.next_event("joined");
    let message = one_fatal_error(&run_node(&[
        "--listen",
        "127.0.0.1:0",
        "--key",
        s(&key_c),
        "--join",
        &addr_a,
    ]));
    assert!(message.contains("allow-list"), "{message}");
    assert!(message.contains(&id_c.to_string()), "{message}");
    assert!(!message.contains("raise"), "{message}");
}

#[test]
fn an_address_of_the_other_family_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "a");
    let started = Instant::now();
    let message = one_fatal_error(&run_node(&[
        "--listen",
        "127.0.0.1:0",
        "--key",
        s(&key),
        "--join",
        "[::1]:4000",
    ]));
    assert!(
        message.contains("IPv6") && message.contains("IPv4"),
        "{message}"
    );
    // An IPv6 node joining an IPv4 address (where the host has IPv6 loopback at all).
    if UdpSocket::bind("[::1]:0").is_ok() {
        let message = one_fatal_error(&run_node(&[
            "--listen",
            "[::1]:0",
            "--key",
            s(&key),
            "--join",
            "127.0.0.1:4000",
        ]));
        assert!(
            message.contains("IPv4") && message.contains("IPv6"),
            "{message}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn hostnames_work_for_listen_forward_and_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "a");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "listen = \"localhost:0\"\n").unwrap();
    let mut a = NodeProc::start(
        "a",
        &[
            "--config",
            s(&config),
            "--key",
            s(&key),
            "--forward",
            "localhost:0=web",
        ],
    );
    let (_, addr) = a.listening();
    assert!(
        addr.starts_with("127.0.0.1:") || addr.starts_with("[::1]:"),
        "{addr}"
    );
    a.next_event("joined");
    let forwarding = a.next_event("forwarding");
    let listen = forwarding["listen"].as_str().unwrap();
    assert!(
        listen.starts_with("127.0.0.1:") || listen.starts_with("[::1]:"),
        "{listen}"
    );
}

/// A forward port that is taken stops the node before it joins: the member it would have
/// joined never sees it.
#[test]
fn a_forward_port_clash_stops_the_node_before_it_joins() {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, _) = keygen(dir.path(), "a");
    let (key_b, _) = keygen(dir.path(), "b");
    let mut a = NodeProc::start("a", &["--listen", "127.0.0.1:0", "--key", s(&key_a)]);
    let (_, addr_a) = a.listening();
    a.next_event("joined");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let out = run_node(&[
        "--listen",
        "127.0.0.1:0",
        "--key",
        s(&key_b),
        "--join",
        &addr_a,
        "--forward",
        &format!("{port}=web"),
    ]);
    let message = one_fatal_error(&out);
    assert!(message.contains(&port), "{message}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("\"joined\""), "{stdout}");
    let status = a.status();
    assert_eq!(status["leaf_set"].as_array().unwrap().len(), 0, "{status}");
}

/// `--forward ...=wbe` (a typo of `web`) gets one warning naming the known services, and
/// `services` lists the names.
#[test]
fn a_forwarded_name_nobody_provides_gets_a_warning_and_services_lists_names() {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, _) = keygen(dir.path(), "a");
    let (key_b, _) = keygen(dir.path(), "b");
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = service.local_addr().unwrap().to_string();
    let mut a = NodeProc::start(
        "a",
        &[
            "--listen",
            "127.0.0.1:0",
            "--key",
            s(&key_a),
            "--expose",
            &format!("web={target}"),
        ],
    );
    let (_, addr_a) = a.listening();
    a.next_event("exposed");
    let mut b = NodeProc::start(
        "b",
        &[
            "--listen",
            "127.0.0.1:0",
            "--key",
            s(&key_b),
            "--join",
            &addr_a,
            "--forward",
            "127.0.0.1:0=wbe",
        ],
    );
    b.next_event("forwarding");
    let deadline = Instant::now() + HANG_GUARD;
    while !b.stderr().contains("\"wbe\"") {
        assert!(Instant::now() < deadline, "no warning: {}", b.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr = b.stderr();
    assert_eq!(
        stderr.matches("no node of the mesh provides").count(),
        1,
        "{stderr}"
    );
    a.command("services");
    let answer = a.next_event("services");
    assert_eq!(answer["names"], serde_json::json!(["web"]), "{answer}");
    let status = a.status();
    assert_eq!(status["services"], serde_json::json!(["web"]), "{status}");
}

#[test]
fn cert_show_prints_the_node_id_issuer_validity_and_fingerprint() {
    let out = wendy()
        .args(["cert", "show", &fixture("test-node-a.crt"), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key_id = wendy::identity::Identity::load(&test_fixtures::path("test-node-a.key"))
        .unwrap()
        .node_id();
    assert_eq!(shown["node_id"], key_id.to_string(), "{shown}");
    assert_eq!(shown["ca"], false);
    assert!(shown["issuer"].as_str().unwrap().contains("CN="), "{shown}");
    let fingerprint = shown["sha256_fingerprint"].as_str().unwrap();
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "{fingerprint}");
    let text = wendy()
        .args(["cert", "show", &fixture("test-node-a.crt")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&key_id.to_string()) && text.contains(fingerprint),
        "{text}"
    );
    let missing = wendy()
        .args(["cert", "show", "/nonexistent.crt"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("error: "));
}

/// A certificate with less than a week left starts with a warning that says when it expires.
#[test]
fn a_certificate_about_to_expire_is_warned_about_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "a");
    let ca = dir.path().join("ca");
    let cert = dir.path().join("a.crt");
    assert!(wendy()
        .args(["ca", "init", "--out", s(&ca)])
        .status()
        .unwrap()
        .success());
    let issued = wendy()
        .args([
            "ca",
            "issue",
            "--ca",
            s(&ca),
            "--key",
            s(&key),
            "--out",
            s(&cert),
            "--days",
            "1",
        ])
        .status()
        .unwrap();
    assert!(issued.success());
    let mut a = NodeProc::start(
        "a",
        &[
            "--listen",
            "127.0.0.1:0",
            "--key",
            s(&key),
            "--cert",
            s(&cert),
            "--ca",
            s(&ca.join("ca.crt")),
        ],
    );
    a.next_event("joined");
    let stderr = a.stderr();
    assert!(
        stderr.contains("expires in") && stderr.contains("hours"),
        "{stderr}"
    );
}

#[test]
fn version_and_completions_work_on_every_command() {
    for args in [
        &["--version"][..],
        &["node", "--version"],
        &["sim", "--version"],
    ] {
        let out = wendy().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{args:?}: {text}");
    }
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef wendy"),
        ("fish", "complete -c wendy"),
    ] {
        let out = wendy().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(needle) && text.contains("node"),
            "{shell}: {text}"
        );
    }
}
