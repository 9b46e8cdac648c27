//! Smoke test of `wendy bench all --quick --json`: every suite runs as a real process and
//! reports its fields, each a finite number (speed is never asserted; BENCHMARKS.md has the
//! figures of full runs).

use std::process::Command;

use serde_json::Value;

/// The fields of the benchmark JSON contract, per suite (tools read them), plus a few more we rely on.
const FIELDS: [(&str, &[&str]); 7] = [
    (
        "link",
        &["ours_msgs_per_s", "raw_quinn_msgs_per_s", "ratio"],
    ),
    (
        "route",
        &[
            "one_hop_p50_ratio",
            "routed_msgs_per_s_per_node",
            "one_hop_one_way_p50_ratio",
            "one_hop_one_way_detached_p50_ratio",
            "one_hop_one_way_mixed_p50_ratio",
            "one_hop_request_response_p50_ratio",
            "routed_hops_vs_raw_mesh",
        ],
    ),
    ("join", &["join_ms_p50_n32", "join_ms_p50_n100"]),
    ("memory", &["rss_mib_per_node", "rss_kib_per_connection"]),
    (
        "idle",
        &[
            "control_msgs_per_node_per_s",
            "control_bytes_per_node_per_s",
        ],
    ),
    ("regions", &["nodes", "routes", "delivered_at_root"]),
    (
        "sim",
        &["mean_hops", "max_hops", "stretch_mean", "wall_seconds"],
    ),
];

#[test]
fn bench_all_quick_json_reports_every_suite_with_finite_figures() {
    let output = Command::new(env!("CARGO_BIN_EXE_wendy"))
        .args(["bench", "all", "--quick", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stderr: {stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one JSON object: {stdout}"
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    let suites = report.as_object().unwrap();
    assert_eq!(suites.len(), FIELDS.len(), "{stdout}");
    for (suite, fields) in FIELDS {
        for field in fields {
            let value = report[suite][field]
                .as_f64()
                .unwrap_or_else(|| panic!("{suite}.{field} missing: {stdout}"));
            assert!(value.is_finite(), "{suite}.{field} = {value}");
        }
    }
    // Figures a run cannot produce unless it really measured something.
    for (suite, field) in [
        ("link", "ours_msgs_per_s"),
        ("route", "routed_msgs_per_s_per_node"),
        ("join", "join_ms_p50_n100"),
        // An idle cluster may send nothing at all in quick mode's few seconds (its rates can
        // be 0), but its links come from the nodes' own status.
        ("idle", "links_per_node"),
        ("sim", "mean_hops"),
    ] {
        assert!(
            report[suite][field].as_f64().unwrap() > 0.0,
            "{suite}.{field}"
        );
    }
    assert_eq!(report["route"]["one_hop"]["samples"], 100);
    for field in ["msgs_per_s", "with_receipt_msgs_per_s"] {
        let rate = report["route"]["raw_quinn_mesh"][field].as_f64();
        assert!(
            rate.is_some_and(|r| r > 0.0),
            "route.raw_quinn_mesh.{field}: {rate:?}"
        );
    }
    assert!(report["sim"]["delivered_correct"].as_u64().unwrap() > 0);
    assert_eq!(
        report["regions"]["delivered_at_root"],
        report["regions"]["routes"]
    );
    // Progress went to stderr, one section per suite.
    for (suite, _) in FIELDS {
        assert!(stderr.contains(&format!("== {suite}")), "stderr: {stderr}");
    }
}

#[test]
fn a_single_suite_prints_a_readable_table() {
    let output = Command::new(env!("CARGO_BIN_EXE_wendy"))
        .args(["bench", "memory", "--quick"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("MiB per node"), "{stdout}");
    assert!(!stdout.trim_start().starts_with('{'), "{stdout}");
}
