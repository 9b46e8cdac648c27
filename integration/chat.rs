//! The chat example as its users run it: real `chat` processes over real QUIC on loopback,
//! talking through their stdin and stdout.
//!
//! Three members in room `lobby` and a fourth node that is not in the room but is its root
//! (its key is chosen to be the closest of the four to `Key::from_name("room:lobby")`; it is
//! a chat process sitting in another room). Messages reach every member exactly once; then the
//! root is killed with SIGKILL and messages written around that moment still reach every
//! member exactly once, without anyone doing anything.
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

use wendy::id::Key;
use wendy::identity::Identity;

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
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(addr) = join {
            command.args(["--join", addr]);
        }
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

    /// The address printed at startup (`... listening on ADDR`).
    fn address(&self) -> String {
        self.wait_for("its address", |out| {
            out.iter().any(|l| l.contains(" listening on "))
        });
        let out = self.output();
        let line = out.iter().find(|l| l.contains(" listening on ")).unwrap();
        line.rsplit(' ').next().unwrap().to_owned()
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
fn room_survives_its_root_and_delivers_each_message_once() {
    let binary = example("chat");
    let dir = tempfile::tempdir().unwrap();

    // Four keys; the one closest to the room's key goes to the node that is not in the room,
    // so that it is the room's root while it lives.
    let room_key = Key::from_name("room:lobby");
    let mut identities: Vec<Identity> = (0..4).map(|_| Identity::generate()).collect();
    identities.sort_by(|a, b| room_key.cmp_closeness(a.node_id(), b.node_id()));
    let keys: Vec<PathBuf> = identities
        .iter()
        .enumerate()
        .map(|(i, identity)| {
            let path = dir.path().join(format!("node{i}.key"));
            identity.save(&path, false).unwrap();
            path
        })
        .collect();

    let mut root = Chat::start(&binary, "root", &keys[0], "elsewhere", None);
    let bootstrap = root.address();
    root.wait_for("the new overlay", |out| {
        out.iter().any(|l| l == "*** started a new overlay")
    });
    let names = ["alice", "bob", "carol"];
    let mut members: Vec<Chat> = names
        .iter()
        .zip(&keys[1..])
        .map(|(name, key)| Chat::start(&binary, name, key, "lobby", Some(&bootstrap)))
        .collect();
    for member in &members {
        member.wait_for("its welcome to lobby", |out| {
            out.iter()
                .any(|l| l.starts_with("*** you are in lobby with"))
        });
    }
    // Each welcome comes from the root after it added the member, and the root is the same
    // node throughout (the closest of all four is there from the start): the root knows all
    // three now. `/who` shows it (asked until the answer lists everyone, as a user would),
    // and names the root.
    let whos = |out: &[String]| {
        out.iter()
            .filter(|l| l.starts_with("*** in lobby: "))
            .count()
    };
    loop {
        let before = whos(&members[0].output());
        members[0].say("/who");
        members[0].wait_for("an answer to /who", |out| whos(out) > before);
        let out = members[0].output();
        let answer = out
            .iter()
            .rev()
            .find(|l| l.starts_with("*** in lobby: "))
            .unwrap();
        if answer.starts_with("*** in lobby: alice, bob, carol ") {
            let root_id = identities[0].node_id();
            assert!(
                answer.ends_with(&format!("(root: node {root_id}, not in the room)")),
                "{answer}"
            );
            break;
        }
    }

    // Round 1: the root is alive.
    let round1 = write_round(&mut members, "before", 3);
    let took = wait_all_seen(&members, &round1);
    eprintln!("round 1: 9 messages at 3 members in {took:?}");

    // Round 2: write, kill the root (SIGKILL) while those messages are in flight, write more.
    let mut round2 = write_round(&mut members, "during", 2);
    root.child.kill().unwrap();
    root.child.wait().unwrap();
    let killed = Instant::now();
    round2.extend(write_round(&mut members, "after", 2));
    wait_all_seen(&members, &round2);
    eprintln!(
        "round 2: 12 messages around the root's death at 3 members {:?} after the kill",
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

    // /quit ends each program cleanly.
    for member in &mut members {
        member.say("/quit");
    }
    for member in &mut members {
        let start = Instant::now();
        loop {
            if let Some(status) = member.child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}", member.name);
                break;
            }
            assert!(start.elapsed() < HANG_GUARD, "{} did not quit", member.name);
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(member.output().iter().any(|l| l == "*** bye"));
    }
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
