//! The identity CLI as a user runs it: the real `wendy` binary, real files, real `openssl`.

use std::path::Path;
use std::process::{Command, Output};

fn wendy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wendy"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run wendy")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// The command succeeded; returns its stdout.
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\nstderr: {}",
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

/// The command failed with exactly one `error: ...` line on stderr mentioning `needle`.
fn fails_with_one_line(out: Output, needle: &str) {
    assert!(
        !out.status.success(),
        "unexpectedly succeeded: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got: {err:?}");
    assert!(lines[0].starts_with("error: "), "{err:?}");
    assert!(
        lines[0].contains(needle),
        "{err:?} does not mention {needle:?}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err:?}"
    );
}

fn is_node_id(text: &str) -> bool {
    text.len() == 32
        && text
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl binary must be installed")
}

#[test]
fn keygen_prints_the_id_that_wendy_id_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let printed = ok(wendy(&["keygen", "--out", s(&key)]));
    let id = printed.trim_end();
    assert!(is_node_id(id), "{printed:?}");
    assert_eq!(printed, format!("{id}\n"));
    assert_eq!(ok(wendy(&["id", s(&key)])), printed);

    let other = dir.path().join("other.key");
    assert_ne!(ok(wendy(&["keygen", "--out", s(&other)])), printed);
}

#[cfg(unix)]
#[test]
fn key_file_is_private_and_openssl_reads_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    ok(wendy(&["keygen", "--out", s(&key)]));
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    let out = openssl(&["pkey", "-in", s(&key), "-noout"]);
    assert!(out.status.success(), "openssl: {}", stderr(&out));
}

#[test]
fn ca_issued_certificate_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("mesh/ca");
    let key = dir.path().join("node.key");
    let crt = dir.path().join("node.crt");
    ok(wendy(&["ca", "init", "--out", s(&ca)]));
    assert!(ca.join("ca.key").is_file() && ca.join("ca.crt").is_file());
    let id = ok(wendy(&["keygen", "--out", s(&key)]));
    let issued = ok(wendy(&[
        "ca",
        "issue",
        "--ca",
        s(&ca),
        "--key",
        s(&key),
        "--out",
        s(&crt),
        "--days",
        "30",
    ]));
    assert_eq!(issued, id, "ca issue prints the node id");

    let ca_crt = ca.join("ca.crt");
    let out = openssl(&["verify", "-CAfile", s(&ca_crt), s(&crt)]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: OK\n", s(&crt)),
        "{}",
        stderr(&out)
    );
    let out = openssl(&["x509", "-in", s(&crt), "-noout", "-ext", "subjectAltName"]);
    assert!(
        stdout(&out).contains(&format!("DNS:{}.wendy", id.trim_end())),
        "{}",
        stdout(&out)
    );
    let out = openssl(&["pkey", "-in", s(&ca.join("ca.key")), "-noout"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn overwrite_is_refused_then_allowed_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let first = ok(wendy(&["keygen", "--out", s(&key)]));
    fails_with_one_line(wendy(&["keygen", "--out", s(&key)]), "--force");
    assert_eq!(
        ok(wendy(&["id", s(&key)])),
        first,
        "refused keygen changed the file"
    );
    let second = ok(wendy(&["keygen", "--out", s(&key), "--force"]));
    assert_ne!(second, first);
    assert_eq!(ok(wendy(&["id", s(&key)])), second);

    let ca = dir.path().join("ca");
    ok(wendy(&["ca", "init", "--out", s(&ca)]));
    let ca_crt = std::fs::read(ca.join("ca.crt")).unwrap();
    fails_with_one_line(wendy(&["ca", "init", "--out", s(&ca)]), "already exists");
    assert_eq!(std::fs::read(ca.join("ca.crt")).unwrap(), ca_crt);
    ok(wendy(&["ca", "init", "--out", s(&ca), "--force"]));
    assert_ne!(std::fs::read(ca.join("ca.crt")).unwrap(), ca_crt);

    let crt = dir.path().join("node.crt");
    let issue = |extra: &[&str]| {
        let mut args = vec![
            "ca",
            "issue",
            "--ca",
            s(&ca),
            "--key",
            s(&key),
            "--out",
            s(&crt),
        ];
        args.extend_from_slice(extra);
        wendy(&args)
    };
    ok(issue(&[]));
    fails_with_one_line(issue(&[]), "node.crt");
    ok(issue(&["--force"]));
}

#[test]
fn bad_inputs_give_one_error_line_and_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "this is not a key\n").unwrap();
    fails_with_one_line(wendy(&["id", s(&garbage)]), "garbage.key");

    let missing = dir.path().join("missing.key");
    fails_with_one_line(wendy(&["id", s(&missing)]), "missing.key");

    let key = dir.path().join("node.key");
    ok(wendy(&["keygen", "--out", s(&key)]));
    let no_ca = dir.path().join("no-ca");
    let crt = dir.path().join("node.crt");
    let out = wendy(&[
        "ca",
        "issue",
        "--ca",
        s(&no_ca),
        "--key",
        s(&key),
        "--out",
        s(&crt),
    ]);
    fails_with_one_line(out, "wendy ca init");
    assert!(!crt.exists());

    // The CA is fine but the node key is garbage.
    let ca = dir.path().join("ca");
    ok(wendy(&["ca", "init", "--out", s(&ca)]));
    let out = wendy(&[
        "ca",
        "issue",
        "--ca",
        s(&ca),
        "--key",
        s(&garbage),
        "--out",
        s(&crt),
    ]);
    fails_with_one_line(out, "garbage.key");

    // Missing arguments and a nonsensical --days are one line too.
    fails_with_one_line(wendy(&["keygen"]), "--out");
    let out = wendy(&[
        "ca",
        "issue",
        "--ca",
        s(&ca),
        "--key",
        s(&key),
        "--out",
        s(&crt),
        "--days",
        "0",
    ]);
    fails_with_one_line(out, "--days");

    // Writing into a directory that does not exist names the path.
    let nowhere = dir.path().join("no/such/dir/node.key");
    fails_with_one_line(wendy(&["keygen", "--out", s(&nowhere)]), "node.key");
}
