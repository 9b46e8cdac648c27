//! Smoke test of `wendy bench link`: it runs and reports the fields tools rely on (its speed is
//! measured by running it in release mode, never asserted here).

use std::process::Command;

#[test]
fn bench_link_json_reports_both_rates_and_their_ratio() {
    let output = Command::new(env!("CARGO_BIN_EXE_wendy"))
        .args([
            "bench",
            "link",
            "--messages",
            "200",
            "--size",
            "64",
            "--rounds",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one JSON object: {stdout}"
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for field in ["ours_msgs_per_s", "raw_quinn_msgs_per_s", "ratio"] {
        let value = report[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} missing: {stdout}"));
        assert!(value.is_finite() && value > 0.0, "{field} = {value}");
    }
    assert_eq!(report["messages"], 200);
    assert_eq!(report["size"], 64);
    let ratio = report["ratio"].as_f64().unwrap();
    let expected = report["ours_msgs_per_s"].as_f64().unwrap()
        / report["raw_quinn_msgs_per_s"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9 * expected.max(1.0));
}

#[test]
fn bench_link_table_names_both_sides() {
    let output = Command::new(env!("CARGO_BIN_EXE_wendy"))
        .args(["bench", "link", "--messages", "100", "--rounds", "1"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("wendy") && stdout.contains("raw quinn") && stdout.contains("ratio"));
}

#[test]
fn bench_link_rejects_zero_messages_with_one_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_wendy"))
        .args(["bench", "link", "--messages", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error:"), "{stderr}");
}
