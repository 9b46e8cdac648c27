//! The chat example as its users run it: real `chat` processes over real QUIC on loopback,
//! talking through their stdin and stdout.
//!
//! Three members in room `lobby` and a plain `wendy node` that runs no chat code but is the
//! root of the room's topic (its key is chosen to be the closest of the four to the topic's
//! key). Messages reach every member exactly once; then the root is killed with SIGKILL and
//! messages written around that moment still reach every member exactly once, without anyone
//! doing anything. Two members sharing a display name are shown with short ids, and a root
//! that quits gracefully is replaced at once.
//!
//! Also runs `examples/embed.rs` (the library tour) and checks what it reports.
//!
//! The example binaries are built by `cargo test`; when only this test is selected
//! (`cargo test --release --test integration chat::`) cargo does not build examples, so the test runs
//! `cargo build --example chat --example embed` itself (a no-op when they are up to date).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wendy::id::NodeId;
use wendy::identity::Identity;
use wendy::topics::topic_key;

/// Hang guard for every wait: generous, never a speed assertion.
const HANG_GUARD: Duration = Duration::from_secs(90);

/// The example `name` next to this test binary (target/<profile>/examples/NAME), built first
/// (once per test binary; both examples in one cargo run).
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(build_examples);
    let binary = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.exists(), "{} missing after build", binary.display());
    binary
}

/// Runs `cargo build --example chat --example embed` for this test's profile; returns the
/// examples directory.
fn build_examples() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/integration-<hash> -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile dir name");
    let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    build
        .args([
            "build",
            "--quiet",
            "--example",
            "chat",
            "--example",
            "embed",
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    // Cargo runs this test with variables describing *this* crate (CARGO_PKG_NAME,
    // CARGO_MANIFEST_DIR, ...). Build scripts such as ring's ask to be re-run when those
    // change, so passing them on would rebuild ring here and again in the next outer build.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let per_crate = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_", "CARGO_CFG_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || matches!(
                name,
                "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            );
        if per_crate {
            build.env_remove(name);
        }
    }
    match profile {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let status = build.status().expect("run cargo build --example ...");
    assert!(
        status.success(),
        "cargo build --example chat --example embed failed"
    );
    profile_dir.join("examples")
}

/// One running chat program: its stdin, and every line it has printed so far.
struct Chat {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Chat {
    fn start(binary: &Path, name: &str, key: &Path, room: &str, join: Option<&str>) -> Self {
        let mut command = Command::new(binary);
        command
            .args(["--name", name, "--room", room, "--key"])
            .arg(key)
            .stderr(Stdio::inherit());
        if let Some(addr) = join {
            command.args(["--join", addr]);
        }
        Self::spawn(name, command)
    }

    /// A plain `wendy node` (no chat code), starting a new overlay.
    fn plain_node(key: &Path) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wendy"));
        command
            .args(["node", "--listen", "127.0.0.1:0", "--key"])
            .arg(key)
            .stderr(Stdio::null());
        Self::spawn("plain node", command)
    }

    fn spawn(name: &str, mut command: Command) -> Self {
        command
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("start chat");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            name: name.to_owned(),
            child,
            stdin,
            lines,
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to chat");
        stdin.flush().expect("flush");
    }

    fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many printed lines equal `line`.
    fn count(&self, line: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l == line)
            .count()
    }

    /// Polls until `done` holds for the output (hang-guarded).
    fn wait_for(&self, what: &str, done: impl Fn(&[String]) -> bool) {
        let start = Instant::now();
        while !done(&self.output()) {
            assert!(
                start.elapsed() < HANG_GUARD,
                "hang guard: {} never showed {what}; output:\n{}",
                self.name,
                self.output().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address printed at startup (`... listening on ADDR`, or `listening as ID on ADDR`
    /// for `wendy node`).
    fn address(&self) -> String {
        let is_it = |l: &String| l.contains("listening ") && l.contains(" on ");
        self.wait_for("its address", |out| out.iter().any(is_it));
        let out = self.output();
        let line = out.iter().find(|l| is_it(l)).unwrap();
        line.rsplit(' ').next().unwrap().to_owned()
    }

    /// Asks `/who` until the answer satisfies `done` (as a user would); returns the answer.
    fn who_until(&mut self, done: impl Fn(&str) -> bool) -> String {
        let answers = |out: &[String]| out.iter().filter(|l| l.starts_with("*** in ")).count();
        let start = Instant::now();
        loop {
            let before = answers(&self.output());
            self.say("/who");
            self.wait_for("an answer to /who", |out| answers(out) > before);
            let out = self.output();
            let answer = out.iter().rev().find(|l| l.starts_with("*** in ")).unwrap();
            if done(answer) {
                return answer.clone();
            }
            assert!(
                start.elapsed() < HANG_GUARD,
                "hang guard: {} never got the /who answer; last: {answer}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the program to exit by itself with success.
    fn wait_exit(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}", self.name);
                return;
            }
            assert!(start.elapsed() < HANG_GUARD, "{} did not quit", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        // Never leave a process behind, even when an assertion failed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until every member has printed every line in `expected` (hang-guarded); returns how
/// long that took.
fn wait_all_seen(members: &[Chat], expected: &[String]) -> Duration {
    let start = Instant::now();
    for member in members {
        member.wait_for("every message", |out| {
            expected.iter().all(|e| out.iter().any(|l| l == e))
        });
    }
    start.elapsed()
}

fn assert_each_once(members: &[Chat], expected: &[String]) {
    for member in members {
        for line in expected {
            assert_eq!(
                member.count(line),
                1,
                "{} shows {line:?} not exactly once; output:\n{}",
                member.name,
                member.output().join("\n")
            );
        }
    }
}

/// Key files for `count` new identities, sorted by closeness to the room's topic key (the
/// first is the room's root while it lives); also returns the node ids in that order.
fn keys_by_closeness(dir: &Path, room: &str, count: usize) -> (Vec<PathBuf>, Vec<NodeId>) {
    let key = topic_key(&format!("chat:{room}"));
    let mut identities: Vec<Identity> = (0..count).map(|_| Identity::generate()).collect();
    identities.sort_by(|a, b| key.cmp_closeness(a.node_id(), b.node_id()));
    let paths = identities
        .iter()
        .enumerate()
        .map(|(i, identity)| {
            let path = dir.join(format!("node{i}.key"));
            identity.save(&path, false).unwrap();
            path
        })
        .collect();
    (paths, identities.iter().map(Identity::node_id).collect())
}

fn wait_welcomed(members: &[Chat]) {
    for member in members {
        member.wait_for("its welcome to lobby", |out| {
            out.iter()
                .any(|l| l.starts_with("*** you are in lobby with"))
        });
    }
}

/// Lines each member writes, and the `[lobby] name: text` lines every member must show.
fn write_round(members: &mut [Chat], tag: &str, count: usize) -> Vec<String> {
    let mut expected = Vec::new();
    for i in 0..count {
        for member in members.iter_mut() {
            let text = format!("{tag} {i} from {}", member.name);
            member.say(&text);
            expected.push(format!("[lobby] {}: {text}", member.name));
        }
    }
    expected
}

#[test]
fn a_room_rooted_at_a_plain_node_survives_its_death_and_delivers_each_message_once() {
    let binary = example("chat");
    let dir = tempfile::tempdir().unwrap();

    // Four keys; the one closest to the room's topic key goes to a plain `wendy node`, so
    // that a node with no chat code is the room's root while it lives.
    let (keys, ids) = keys_by_closeness(dir.path(), "lobby", 4);
    let mut root = Chat::plain_node(&keys[0]);
    let bootstrap = root.address();
    let names = ["alice", "bob", "carol"];
    let mut members: Vec<Chat> = names
        .iter()
        .zip(&keys[1..])
        .map(|(name, key)| Chat::start(&binary, name, key, "lobby", Some(&bootstrap)))
        .collect();
    wait_welcomed(&members);
    // `/who` lists the members (once their announcements went round) and names the root, a
    // node that is not in the room.
    let answer = members[0].who_until(|a| a.starts_with("*** in lobby: alice, bob, carol "));
    assert!(
        answer.ends_with(&format!("(root: node {}, not in the room)", ids[0])),
        "{answer}"
    );

    // Round 1: the root is alive.
    let round1 = write_round(&mut members, "before", 3);
    let took = wait_all_seen(&members, &round1);
    eprintln!("round 1: 9 messages at 3 members in {took:?}");

    // Round 2: write, kill the root (SIGKILL) while those messages are in flight, write more.
    let mut round2 = write_round(&mut members, "during", 2);
    root.child.kill().unwrap();
    root.child.wait().unwrap();
    let killed = Instant::now();
    let after = write_round(&mut members, "after", 1);
    let took = wait_all_seen(&members, &after);
    eprintln!(
        "after the plain root's SIGKILL: lines written then reached all 3 members in {took:?}"
    );
    round2.extend(after);
    round2.extend(write_round(&mut members, "after more", 1));
    wait_all_seen(&members, &round2);
    eprintln!(
        "round 2: 12 messages around the root's death at 3 members, all seen {:?} after the kill",
        killed.elapsed()
    );

    // Round 3 under the new root; by the time it is seen, any late duplicate of rounds 1-2
    // (a retry, a replay) would have been shown too.
    let round3 = write_round(&mut members, "later", 1);
    let took = wait_all_seen(&members, &round3);
    eprintln!("round 3: 3 messages under the new root in {took:?}");
    let all: Vec<String> = round1
        .iter()
        .chain(&round2)
        .chain(&round3)
        .cloned()
        .collect();
    assert_each_once(&members, &all);
    for member in &members {
        let out = member.output();
        assert!(
            !out.iter().any(|l| l.starts_with("*** error")),
            "{} printed an error:\n{}",
            member.name,
            out.join("\n")
        );
    }
    // The new root is the next closest node, alice, a member: `/who` names her.
    let answer = members[0].who_until(|a| a.contains(&ids[1].to_string()));
    assert!(
        answer.ends_with(&format!("(root: alice, node {})", ids[1])),
        "{answer}"
    );

    // /quit ends each program cleanly.
    for member in &mut members {
        member.say("/quit");
    }
    for member in &mut members {
        member.wait_exit();
        assert!(member.output().iter().any(|l| l == "*** bye"));
    }
}

#[test]
fn members_sharing_a_name_show_short_ids_and_a_quitting_root_is_replaced_at_once() {
    let binary = example("chat");
    let dir = tempfile::tempdir().unwrap();
    // bob is the root; the two alices are next.
    let (keys, ids) = keys_by_closeness(dir.path(), "lobby", 3);
    let mut bob = Chat::start(&binary, "bob", &keys[0], "lobby", None);
    let bootstrap = bob.address();
    let mut members = vec![
        Chat::start(&binary, "alice", &keys[1], "lobby", Some(&bootstrap)),
        Chat::start(&binary, "alice", &keys[2], "lobby", Some(&bootstrap)),
    ];
    wait_welcomed(&members);
    wait_welcomed(std::slice::from_ref(&bob));
    let short = |id: &NodeId| id.to_string()[..4].to_owned();
    let (a1, a2) = (
        format!("alice#{}", short(&ids[1])),
        format!("alice#{}", short(&ids[2])),
    );
    let mut sorted = [a1.clone(), a2.clone()];
    sorted.sort();
    let listed = format!("*** in lobby: {}, {}, bob ", sorted[0], sorted[1]);
    let answer = bob.who_until(|a| a.starts_with(&listed));
    assert!(
        answer.ends_with(&format!("(root: bob, node {})", ids[0])),
        "{answer}"
    );
    // Every member knows both alices once each has heard the other's announcement; wait
    // for it through /who, then each alice writes.
    for member in &mut members {
        member.who_until(|a| a.starts_with(&listed));
    }
    members[0].say("hello from the first");
    members[1].say("hello from the second");
    let expected = vec![
        format!("[lobby] {a1}: hello from the first"),
        format!("[lobby] {a2}: hello from the second"),
    ];
    let everyone: Vec<&Chat> = members.iter().chain([&bob]).collect();
    for member in everyone {
        member.wait_for("both lines with short ids", |out| {
            expected.iter().all(|e| out.iter().any(|l| l == e))
        });
        for line in &expected {
            assert_eq!(member.count(line), 1, "{}", member.output().join("\n"));
        }
    }

    // The root quits gracefully: the others see it leave, and `/who` names the new root
    // (the first alice, next closest) promptly.
    bob.say("/quit");
    let quit = Instant::now();
    members[0].wait_for("bob leaving", |out| {
        out.iter().any(|l| l == "*** bob left lobby")
    });
    let expected = format!(
        "*** in lobby: {}, {} (root: {a1}, node {})",
        sorted[0], sorted[1], ids[1]
    );
    members[1].who_until(|a| a == expected);
    eprintln!(
        "graceful quit of the root: /who names the new root {:?} after /quit",
        quit.elapsed()
    );
    bob.wait_exit();
}

#[test]
fn embed_example_runs_and_exits_by_itself() {
    let mut child = Command::new(example("embed"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start embed");
    // Drain both pipes while it runs (a full pipe would stall it).
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            panic!("hang guard: embed did not exit by itself");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "embed failed: {stderr}\n{stdout}");
    let has = |needle: &str| stdout.lines().any(|l| l.contains(needle));
    // Each routed greeting arrived at the node whose id it was routed to, stamped by the
    // forward hook of the node it left.
    for i in 1..5 {
        assert!(
            has(&format!(
                "node{i} delivered \"hello node{i} [forwarded by node0]\""
            )),
            "{stdout}"
        );
    }
    assert!(has("the closest node to it"), "{stdout}");
    assert!(has("vetoed a message for"), "{stdout}");
    assert!(has("node1 counts 1 vetoed message"), "{stdout}");
    assert!(
        !has("forbidden"),
        "the vetoed message was delivered: {stdout}"
    );
    assert!(has("sees node4 leave"), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("done"), "{stdout}");
}
