//! `wendy node --events json` as a child process, for the tests that drive real processes:
//! every wait is for an output line with a generous hang guard, and the child is killed when
//! its guard drops, so a failing test leaves no process behind.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use wendy::id::NodeId;

use super::HANG_GUARD;

/// The `wendy` binary under test, without the caller's logging settings.
pub fn wendy() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wendy"));
    command.env_remove("RUST_LOG").env_remove("RUST_BACKTRACE");
    command
}

/// A running `wendy node --events json`; killed on drop.
pub struct NodeProc {
    name: String,
    pub child: Child,
    /// The node's stdin; `take` it to close the node's input.
    pub stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every stdout line received so far, parsed.
    pub seen: Vec<Value>,
    /// How many of `seen` `next_matching` has already passed over.
    cursor: usize,
    stderr: Arc<Mutex<String>>,
}

impl NodeProc {
    /// Starts `wendy node ARGS --events json` with piped stdin, stdout and stderr.
    pub fn start<I>(name: &str, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        let mut command = wendy();
        command.arg("node").args(args);
        Self::start_command(name, command)
    }

    /// Starts `command` (a `wendy node ...` command line, possibly wrapped, e.g. in
    /// `ip netns exec`) with `--events json` added and stdin, stdout and stderr piped.
    pub fn start_command(name: &str, mut command: Command) -> Self {
        let mut child = command
            .args(["--events", "json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wendy node");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err_pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Self {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            cursor: 0,
            stderr,
        }
    }

    /// Everything the node printed so far, for failure messages; of the `status` answers
    /// (a test polling the status gets thousands) only the last, and how many came before.
    pub fn context(&self) -> String {
        let last_status = self.seen.iter().rposition(|v| v["event"] == "status");
        let mut skipped = 0;
        let mut lines: Vec<String> = Vec::new();
        for (i, line) in self.seen.iter().enumerate() {
            if line["event"] == "status" && Some(i) != last_status {
                skipped += 1;
                continue;
            }
            if skipped > 0 {
                lines.push(format!("({skipped} earlier status answers left out)"));
                skipped = 0;
            }
            lines.push(line.to_string());
        }
        format!(
            "node {} stdout so far:\n{}\nstderr:\n{}",
            self.name,
            lines.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// Receives one more line (hang-guarded); `None` at end of output.
    pub fn receive(&mut self, deadline: Instant) -> Option<Value> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("{}: stdout line is not JSON ({e}): {line:?}", self.name)
                });
                assert!(
                    value["event"].is_string(),
                    "{}: line without an event name: {line}",
                    self.name
                );
                self.seen.push(value.clone());
                Some(value)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("hang guard: waited {HANG_GUARD:?}\n{}", self.context())
            }
        }
    }

    /// The next line after the cursor that satisfies `pred`; lines before it are passed over
    /// (they stay in `seen`).
    pub fn next_matching(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            while self.cursor < self.seen.len() {
                self.cursor += 1;
                if pred(&self.seen[self.cursor - 1]) {
                    return self.seen[self.cursor - 1].clone();
                }
            }
            if self.receive(deadline).is_none() {
                panic!("output ended before {what}\n{}", self.context());
            }
        }
    }

    /// The next line that is event `name`.
    pub fn next_event(&mut self, name: &str) -> Value {
        self.next_matching(name, |v| v["event"] == name)
    }

    /// Waits for event `name` anywhere in the output, including lines already seen.
    pub fn saw_event(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(found) = self.seen.iter().find(|v| v["event"] == name && pred(v)) {
            return found.clone();
        }
        self.cursor = self.seen.len();
        self.next_matching(name, |v| v["event"] == name && pred(v))
    }

    /// Writes one command line to the node's stdin.
    pub fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to node stdin");
        stdin.flush().unwrap();
    }

    /// Sends `status` and returns the answer.
    pub fn status(&mut self) -> Value {
        self.command("status");
        self.next_event("status")
    }

    /// Polls `status` until `pred` holds (each poll waits for the answer; no sleeps).
    pub fn status_until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            let status = self.status();
            if pred(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hang guard: status never showed {what}; last: {status}\n{}",
                self.context()
            );
        }
    }

    /// Reads the rest of the output and waits for the exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + HANG_GUARD;
        while self.receive(deadline).is_some() {}
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hang guard: no exit\n{}",
                self.context()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the node has written on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The id and address from the `listening` line.
    pub fn listening(&mut self) -> (NodeId, String) {
        let line = self.next_event("listening");
        let id = line["id"].as_str().unwrap().parse().unwrap();
        (id, line["addr"].as_str().unwrap().to_owned())
    }
}

impl NodeProc {
    /// The next line before `until` (kept in `seen` too); `None` when time runs out or the
    /// output ends. Unlike [`Self::receive`], running out of time is an expected outcome.
    pub fn try_receive(&mut self, until: Instant) -> Option<Value> {
        let left = until.saturating_duration_since(Instant::now());
        let line = self.lines.recv_timeout(left).ok()?;
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: stdout line is not JSON ({e}): {line:?}", self.name));
        self.seen.push(value.clone());
        Some(value)
    }

    /// Reads every line the node prints until `until`, or until its output ends.
    pub fn gather(&mut self, until: Instant) {
        while self.try_receive(until).is_some() {}
    }

    /// Waits until `until` for a line satisfying `pred`, including lines already seen.
    pub fn wait_for(&mut self, until: Instant, pred: impl Fn(&Value) -> bool) -> bool {
        if self.seen.iter().any(&pred) {
            return true;
        }
        while let Some(value) = self.try_receive(until) {
            if pred(&value) {
                return true;
            }
        }
        false
    }

    /// Whether the node printed event `name` at any time so far.
    pub fn printed(&self, name: &str) -> bool {
        self.seen.iter().any(|v| v["event"] == name)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary path as a command-line argument.
pub fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Writes a fresh key with `wendy keygen` into `dir` and returns its path and NodeId.
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, NodeId) {
    let path = dir.join(format!("{name}.key"));
    let out = wendy()
        .args(["keygen", "--out", s(&path)])
        .output()
        .expect("run wendy keygen");
    assert!(out.status.success(), "keygen failed: {out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (path, id)
}
