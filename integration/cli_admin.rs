//! The admin endpoint of `wendy node --admin` and `wendy status`, as an operator uses them: real
//! node processes on loopback, read over HTTP, by `wendy status`, and by a headless browser.
//!
//! Every wait is for an event or an answer, with a hang guard (never a speed assertion).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wendy::id::NodeId;

use crate::common;
use common::process::{keygen, s, wendy, NodeProc};
use common::HANG_GUARD;

/// One GET over a fresh connection; returns the status code and the body.
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the admin endpoint");
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        unchunk(body)
    } else {
        body.to_owned()
    };
    (code, body)
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

fn status_doc(addr: SocketAddr) -> Value {
    let (code, body) = get(addr, "/status", None);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `/status` until `pred` holds.
fn status_until(addr: SocketAddr, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let doc = status_doc(addr);
        if pred(&doc) {
            return doc;
        }
        assert!(
            Instant::now() < deadline,
            "hang guard: /status never showed {what}; last: {doc}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that `text` is in the Prometheus / OpenMetrics text format: comments are `# HELP`,
/// `# TYPE`, `# UNIT` or the final `# EOF`, every sample is `name{labels} value` of a declared
/// family. Returns the samples, keyed by name and labels as written.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut families: Vec<(String, String)> = Vec::new();
    let mut samples = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "no # EOF line");
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts
                .next()
                .unwrap_or_else(|| panic!("bad comment {line:?}"));
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "{line:?}");
            assert!(name.starts_with("wendy_"), "unprefixed name in {line:?}");
            if kind == "TYPE" {
                let metric_type = parts.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "info"].contains(&metric_type),
                    "{line:?}"
                );
                families.push((name.to_owned(), metric_type.to_owned()));
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                    assert!(!key.is_empty() && !value.contains('\n'), "{line:?}");
                }
            }
        }
        let family = families
            .last()
            .unwrap_or_else(|| panic!("{line:?} before any TYPE"));
        let suffixes: &[&str] = match family.1.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_sum", "_count", "_bucket", "_created"],
            _ => &[""],
        };
        assert!(
            suffixes.iter().any(|s| name == format!("{}{s}", family.0)),
            "{line:?} is not of family {family:?}"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// The node's admin address from its `admin` event.
fn admin_addr(node: &mut NodeProc) -> SocketAddr {
    node.next_event("admin")["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Three nodes with admin endpoints on free ports, all in each other's leaf sets.
struct Trio {
    _dir: tempfile::TempDir,
    nodes: Vec<(NodeProc, NodeId, SocketAddr)>,
}

fn trio() -> Trio {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    let mut bootstrap = None;
    for name in ["a", "b", "c"] {
        let (key, id) = keygen(dir.path(), name);
        let mut args = vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--key".to_owned(),
            s(&key).to_owned(),
            "--admin".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        if let Some(addr) = &bootstrap {
            args.extend(["--join".to_owned(), String::clone(addr)]);
        }
        let mut node = NodeProc::start(name, &args);
        let (_, addr) = node.listening();
        let admin = admin_addr(&mut node);
        node.next_event("joined");
        bootstrap.get_or_insert(addr);
        nodes.push((node, id, admin));
    }
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.1).collect();
    for (_, me, admin) in &nodes {
        status_until(*admin, "the two others in the leaf set", |doc| {
            let leaves = doc["leaf_set"].as_array().unwrap();
            ids.iter()
                .filter(|id| *id != me)
                .all(|id| leaves.iter().any(|l| l == &id.to_string()))
        });
    }
    Trio { _dir: dir, nodes }
}

#[test]
fn metrics_and_status_show_a_routed_message_and_the_peers() {
    let mut trio = trio();
    let id_a = trio.nodes[0].1;
    let admin_a = trio.nodes[0].2;
    let (id_b, admin_b) = (trio.nodes[1].1, trio.nodes[1].2);

    let before = parse_metrics(&get(admin_a, "/metrics", None).1);
    assert_eq!(
        before["wendy_routed_messages_total{outcome=\"delivered\"}"],
        0.0
    );
    assert_eq!(before["wendy_active"], 1.0);
    // A healthy trio copies nothing to a second hop and routes nothing afresh.
    for outcome in ["hedged", "rerouted_afresh"] {
        let key = format!("wendy_routed_messages_total{{outcome=\"{outcome}\"}}");
        assert_eq!(before.get(&key), Some(&0.0), "{key}");
    }
    assert_eq!(
        before["wendy_links{direction=\"inbound\"}"]
            + before["wendy_links{direction=\"outbound\"}"],
        2.0
    );

    // B routes to A's own id: A is that key's root.
    let b = &mut trio.nodes[1].0;
    b.command(&format!("route {id_a} hello"));
    b.next_event("routed");
    let a = &mut trio.nodes[0].0;
    let deliver = a.next_event("deliver");
    let hops = deliver["hops"].as_u64().unwrap();

    let (code, text) = get(admin_a, "/metrics", None);
    assert_eq!(code, 200);
    let after = parse_metrics(&text);
    assert_eq!(
        after["wendy_routed_messages_total{outcome=\"delivered\"}"], 1.0,
        "{text}"
    );
    assert_eq!(after["wendy_route_hops_count"], 1.0, "{text}");
    assert_eq!(after["wendy_route_hops_sum"], hops as f64, "{text}");
    assert_eq!(
        after[&format!("wendy_route_hops_bucket{{le=\"{hops}.0\"}}")],
        1.0,
        "{text}"
    );
    assert!(after["wendy_control_messages_sent_total"] > 0.0, "{text}");
    assert!(
        after["wendy_membership_changes_total{change=\"joined\"}"] >= 2.0,
        "{text}"
    );
    assert!(
        after["wendy_certificate_expiry_timestamp_seconds"] > 1.7e9,
        "{text}"
    );
    let sender = parse_metrics(&get(admin_b, "/metrics", None).1);
    assert_eq!(
        sender["wendy_routed_messages_total{outcome=\"originated\"}"],
        1.0
    );
    // The root's answer times the route at its origin (it follows the delivery).
    let mut timed = sender;
    for _ in 0..200 {
        if timed["wendy_route_latency_seconds_count"] >= 1.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        timed = parse_metrics(&get(admin_b, "/metrics", None).1);
    }
    assert_eq!(timed["wendy_route_latency_seconds_count"], 1.0);
    assert!(timed["wendy_route_latency_seconds_sum"] > 0.0);

    let doc = status_doc(admin_a);
    assert_eq!(doc["id"], id_a.to_string());
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["active"], true);
    assert!(doc["uptime_s"].is_u64(), "{doc}");
    assert_eq!(doc["listen"], "127.0.0.1:0");
    assert!(
        doc["addr"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{doc}"
    );
    assert_eq!(doc["certificate"]["kind"], "self-signed");
    // A self-signed certificate is valid for 365 days from the start.
    let left = doc["certificate"]["expires_in_s"].as_i64().unwrap();
    assert!((364 * 86_400..=365 * 86_400).contains(&left), "{doc}");
    assert!(doc["certificate"]["not_after_utc"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(doc["stats"]["delivered"], 1);
    // Neighbour hints: the status and /metrics report the same counters.
    let metrics = parse_metrics(&get(admin_a, "/metrics", None).1);
    for (field, metric) in [
        ("hints_held", "wendy_hints_held"),
        ("hint_probes", "wendy_hint_probes_total"),
        ("hints_learned", "wendy_hints_learned_total"),
        ("hints_refused", "wendy_hints_refused_total"),
    ] {
        let value = doc[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} missing: {doc}"));
        assert!(metrics.contains_key(metric), "{metric} missing");
        assert!(metrics[metric] >= value as f64, "{metric} below {field}");
    }
    // The stdin `status` object's fields are all there too.
    for field in [
        "leaf_set",
        "routing_table",
        "neighbourhood",
        "connections",
        "exposed",
        "forwarded",
    ] {
        assert!(doc[field].is_array(), "{field} missing: {doc}");
    }
    let peer_b = doc["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id_b.to_string())
        .unwrap_or_else(|| panic!("b missing from peers: {doc}"));
    assert!(
        peer_b["leaf"] == "cw" || peer_b["leaf"] == "ccw",
        "{peer_b}"
    );
    assert!(peer_b["rtt_ms"].as_f64().unwrap() > 0.0, "{peer_b}");
    assert!(
        peer_b["link"]["bytes_received"].as_u64().unwrap() > 0,
        "{peer_b}"
    );

    assert_eq!(get(admin_a, "/health", None), (200, "ok\n".to_owned()));
    let (code, page) = get(admin_a, "/", None);
    assert_eq!(code, 200);
    assert!(page.contains("<svg id=\"ring\""), "{page}");
    for outside in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!page.contains(outside), "the page loads {outside}...");
    }
    assert_eq!(get(admin_a, "/nope", None).0, 404);
}

#[test]
fn wendy_status_prints_a_table_naming_the_peers() {
    let trio = trio();
    let (id_a, admin_a) = (trio.nodes[0].1, trio.nodes[0].2);
    let out = wendy()
        .args(["status", "--admin", &admin_a.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.starts_with(&format!("node {id_a} at 127.0.0.1:")),
        "{text}"
    );
    assert!(
        text.contains("(active)") && text.contains("certificate self-signed"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("PEER ") && l.contains("RTT") && l.contains("LAST HEARD")),
        "{text}"
    );
    for (_, id, _) in &trio.nodes[1..] {
        let row = text
            .lines()
            .find(|l| l.starts_with(&id.to_string()))
            .unwrap_or_else(|| panic!("no row for {id}:\n{text}"));
        assert!(
            row.contains("127.0.0.1:") && row.contains("leaf") && row.contains(" ms"),
            "{row}"
        );
    }

    let out = wendy()
        .args(["status", "--json", "--admin", &admin_a.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["id"], id_a.to_string());

    // Nothing listening: one line that says what to check.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unused = free.local_addr().unwrap();
    drop(free);
    let out = wendy()
        .args(["status", "--admin", &unused.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot reach the admin endpoint") && stderr.contains("--admin"),
        "{stderr}"
    );
}

#[test]
fn a_non_loopback_admin_address_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "a");
    let out = wendy()
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--key",
            s(&key),
            "--admin",
            "0.0.0.0:0",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("non-loopback") && errors[0].contains("--admin-token FILE"),
        "{stderr}"
    );

    // With a token file it serves, and only to requests that carry the token.
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "0123456789abcdef\n").unwrap();
    let mut node = NodeProc::start(
        "a",
        &[
            "--listen",
            "127.0.0.1:0",
            "--key",
            s(&key),
            "--admin",
            "0.0.0.0:0",
            "--admin-token",
            s(&token),
        ],
    );
    node.listening();
    let port = admin_addr(&mut node).port();
    node.next_event("joined");
    let admin = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(admin, "/status", None).0, 401);
    assert_eq!(get(admin, "/metrics", Some("wrong")).0, 401);
    assert_eq!(get(admin, "/status", Some("0123456789abcdef")).0, 200);
    assert_eq!(get(admin, "/metrics", Some("0123456789abcdef")).0, 200);
    // The page is static; its script sends the token from the URL's #token=.
    assert_eq!(get(admin, "/", None).0, 200);

    let out = wendy()
        .args(["status", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--admin-token FILE"),
        "{stderr}"
    );
    let out = wendy()
        .args([
            "status",
            "--admin",
            &admin.to_string(),
            "--admin-token",
            s(&token),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Debian's chromium, if installed (`.ci/run` installs it).
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Runs headless chromium on `url` with `extra` arguments; returns its stdout.
fn run_chromium(chromium: &Path, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Lets the page's fetch of /status finish before the DOM is taken.
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", s(profile.path())))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + HANG_GUARD;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("hang guard: chromium did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

#[test]
fn the_status_page_draws_the_leaf_set_and_links_in_a_browser() {
    let Some(chromium) = chromium() else {
        eprintln!("skipped: chromium is not installed (apt-get install chromium); the status page was not checked in a browser");
        return;
    };
    let trio = trio();
    let (id_a, admin_a) = (trio.nodes[0].1, trio.nodes[0].2);
    let url = format!("http://{admin_a}/");
    let dom = run_chromium(&chromium, &url, &["--dump-dom"]);
    assert!(
        dom.contains(&format!("<span class=\"id\" id=\"node-id\">{id_a}</span>")),
        "{dom}"
    );
    assert!(
        dom.contains("updated "),
        "the page never read /status:\n{dom}"
    );
    let section = |id: &str| {
        let start = dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id}"));
        let end = dom[start..]
            .find("</table>")
            .map_or(dom.len(), |e| start + e);
        &dom[start..end]
    };
    let leaf_set = section("leaf-set");
    let links = section("links");
    let ring = &dom[dom.find("id=\"ring\"").unwrap()..dom.find("</svg>").unwrap()];
    for (_, id, _) in &trio.nodes[1..] {
        let attr = format!("data-id=\"{id}\"");
        assert!(
            leaf_set.contains(&attr),
            "leaf {id} not in the leaf-set table:\n{leaf_set}"
        );
        assert!(
            links.contains(&attr),
            "link to {id} not in the links table:\n{links}"
        );
        assert!(
            ring.contains(&format!("class=\"leaf\" {attr}")),
            "leaf {id} not on the ring:\n{ring}"
        );
        assert!(
            ring.contains(&format!("class=\"link\" {attr}")),
            "no line to {id} on the ring:\n{ring}"
        );
    }
    assert!(
        links.contains(" ms<"),
        "no RTT in the links table:\n{links}"
    );
    assert!(
        links.contains("KiB<"),
        "no byte counts in the links table:\n{links}"
    );
    assert_eq!(ring.matches("class=\"self\"").count(), 1, "{ring}");
}
