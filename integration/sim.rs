//! Simulator tests on real Pastry nodes (N <= 2,000, fast in release) and the `wendy sim` CLI.

use std::io::Write;
use std::process::Command;

use wendy::node::NodeConfig;
use wendy::pastry::Pastry;
use wendy::sim::{KeyPopularity, Report, Scenario, SimConfig, SimNode, Simulation};

fn run(config: SimConfig) -> Report {
    Simulation::new(config).run(&mut |_| {})
}

fn steady(nodes: usize, lookups: usize, seed: u64) -> SimConfig {
    SimConfig {
        nodes,
        lookups,
        seed,
        ..SimConfig::default()
    }
}

/// ceil(log16 n) + 1.
fn hop_bound(n: usize) -> u32 {
    let mut digits = 0;
    let mut reach = 1usize;
    while reach < n {
        reach *= 16;
        digits += 1;
    }
    digits + 1
}

fn assert_all_correct(report: &Report) {
    assert_eq!(
        (
            report.delivered_correct,
            report.lost,
            report.misdelivered,
            report.duplicates
        ),
        (report.lookups as u64, 0, 0, 0),
        "{report}"
    );
    assert_eq!(report.join_failures, 0, "{report}");
}

#[test]
fn the_simulator_runs_the_configuration_a_node_ships() {
    let simulated = Pastry::protocol_config(&SimConfig::default().protocol);
    assert_eq!(simulated, NodeConfig::default().pastry);
}

#[test]
fn lookups_reach_the_root_within_the_hop_bound_500() {
    let report = run(steady(500, 2_000, 1));
    assert_all_correct(&report);
    assert!(report.max_hops <= hop_bound(500), "{report}");
    assert!(report.mean_hops < 3.0, "{report}");
    assert_eq!(report.leaf_sets_wrong, 0, "{report}");
}

#[test]
fn lookups_reach_the_root_within_the_hop_bound_2000_with_proximity() {
    let report = run(steady(2_000, 4_000, 2));
    assert_all_correct(&report);
    assert!(report.max_hops <= hop_bound(2_000), "{report}");
    assert_eq!(report.leaf_sets_wrong, 0, "{report}");
    // Proximity routing keeps routes close to the direct path.
    assert!(report.stretch_mean < 2.0, "{report}");
    assert!(report.join_msgs_per_node > 0.0);
    assert!(report.control_msgs_per_node_per_s > 0.0);
}

#[test]
fn proximity_shortens_routes() {
    let with = run(steady(1_500, 2_000, 6));
    let mut config = steady(1_500, 2_000, 6);
    config.protocol.proximity = false;
    let without = run(config);
    assert_all_correct(&with);
    assert_all_correct(&without);
    assert!(
        with.stretch_of_means < 0.7 * without.stretch_of_means,
        "with proximity:\n{with}\nwithout:\n{without}"
    );
}

#[test]
fn same_seed_gives_the_same_json() {
    let config = SimConfig {
        jitter: 0.1,
        ..steady(300, 500, 7)
    };
    let a = run(config.clone()).deterministic_part();
    let b = run(config).deterministic_part();
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    let c = run(steady(300, 500, 8)).deterministic_part();
    assert_ne!(a, c);
}

#[test]
fn same_seed_gives_the_same_json_under_churn_loss_and_jitter() {
    let config = SimConfig {
        jitter: 0.2,
        loss: 0.01,
        scenario: Scenario::Churn {
            median_session_s: 60.0,
            duration_s: 300.0,
        },
        ..steady(200, 1_000, 9)
    };
    let a = run(config.clone()).deterministic_part();
    let b = run(config).deterministic_part();
    assert!(a.churn.as_ref().is_some_and(|c| c.arrivals > 100));
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
}

#[test]
fn no_lookup_is_lost_when_a_tenth_fails_silently() {
    let config = SimConfig {
        scenario: Scenario::Failure { fraction: 0.1 },
        ..steady(1_000, 3_000, 3)
    };
    let report = run(config);
    let failure = report.failure.clone().expect("failure section");
    assert_eq!(failure.failed, 100);
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.misdelivered, 0, "{report}");
    assert_eq!(failure.dead_leaf_entries_after_repair, 0, "{report}");
    assert_eq!(report.leaf_sets_wrong, 0, "{report}");
    assert!(
        failure.mean_hops_after <= failure.mean_hops_before * 1.05,
        "{report}"
    );
    // About 52 here: notices, the replacement members' probes (which carry the second account
    // of each failure), table repair. A probe of the dead node by every holder that was told
    // cost about 74.
    let repair = report.repair_msgs_per_failed_node.expect("repair figure");
    assert!(
        repair < 60.0,
        "{repair} repair messages per failed node\n{report}"
    );
}

#[test]
fn steady_state_control_traffic_is_low() {
    // Two minutes to settle, then ten minutes of one lookup a second, over which control
    // traffic is measured.
    let config = SimConfig {
        warmup_s: 120.0,
        lookup_window_s: 600.0,
        ..steady(100, 600, 10)
    };
    let overhead = config.overhead_bytes as f64;
    let report = run(config);
    assert_all_correct(&report);
    let msgs = report.control_msgs_per_node_per_s;
    assert!(msgs < 0.5, "{report}");
    // The encoded messages alone: the simulator adds a transport overhead to each.
    let encoded_bytes = report.control_bytes_per_node_per_s - msgs * overhead;
    assert!(encoded_bytes < 900.0, "{encoded_bytes} B/s\n{report}");
    assert_eq!(report.leaf_sets_wrong, 0, "{report}");
}

#[test]
fn lookups_survive_heavy_churn() {
    // Median session 84 s (Bamboo's hardest), 150 nodes, 4 minutes, 2 lookups per second.
    let config = SimConfig {
        scenario: Scenario::Churn {
            median_session_s: 84.0,
            duration_s: 240.0,
        },
        ..steady(150, 480, 12)
    };
    let report = run(config);
    let churn = report.churn.clone().expect("churn section");
    // About 150 * 240 / (84 / ln 2) = 297 departures: most of the first population.
    assert!(churn.departures > 150, "{report}");
    assert!(churn.correct_fraction >= 0.99, "{report}");
    assert!(report.misdelivered <= 1, "{report}");
}

#[test]
fn churn_smoke() {
    let config = SimConfig {
        scenario: Scenario::Churn {
            median_session_s: 84.0,
            duration_s: 600.0,
        },
        ..steady(300, 2_000, 4)
    };
    let report = run(config);
    let churn = report.churn.clone().expect("churn section");
    assert!(churn.arrivals > 500 && churn.departures > 500, "{report}");
    assert!(churn.correct_fraction >= 0.99, "{report}");
}

fn wendy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wendy"))
}

#[test]
fn cli_prints_one_json_object() {
    let out = wendy()
        .args([
            "sim",
            "--nodes",
            "100",
            "--lookups",
            "200",
            "--seed",
            "5",
            "--json",
        ])
        .args(["--model", "regions", "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "nodes",
        "lookups",
        "delivered_correct",
        "lost",
        "misdelivered",
        "mean_hops",
        "max_hops",
        "hops_histogram",
        "stretch_mean",
        "join_msgs_per_node",
        "repair_msgs_per_failed_node",
        "control_msgs_per_node_per_s",
        "control_bytes_per_node_per_s",
        "wall_seconds",
        "peak_rss_mib",
    ] {
        assert!(json.get(field).is_some(), "missing {field}: {json}");
    }
    assert_eq!(json["nodes"], 100);
    assert_eq!(json["lookups"], 200);
    assert_eq!(json["delivered_correct"], 200);
    assert_eq!(json["model"], "regions");
}

#[test]
fn cli_reads_a_latency_matrix_and_reports_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.txt");
    let mut f = std::fs::File::create(&good).unwrap();
    writeln!(f, "0 20 150\n20 0 140\n150 140 0").unwrap();
    let out = wendy()
        .args(["sim", "--nodes", "60", "--lookups", "100", "--quiet"])
        .arg("--latency-matrix")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("model matrix"), "{text}");
    assert!(text.contains("correct 100"), "{text}");

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "0 20\n20 x\n").unwrap();
    let out = wendy()
        .args(["sim", "--nodes", "10", "--lookups", "1", "--latency-matrix"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.contains("line 2, column 4") && err.contains("not a number"),
        "{err}"
    );
}

#[test]
fn cli_rejects_conflicting_scenarios() {
    let out = wendy()
        .args([
            "sim",
            "--nodes",
            "10",
            "--lookups",
            "1",
            "--fail-fraction",
            "0.1",
        ])
        .args(["--churn-median-s", "60", "--duration-s", "100"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

#[test]
fn rows_opened_after_a_node_joined_are_filled_before_the_lookups() {
    // Nodes that joined while the overlay was small ask again for rows with holes as it grows,
    // and a newcomer that is the first of its row-1 branch a node hears of is passed on to the
    // row. Without both: 369 row-1 holes (a slot is empty although a node qualifies) of about
    // 72,000 filled slots when the lookups start; with them about 40.
    let mut config = steady(2_000, 2_000, 3);
    config.trace_routes = true;
    let report = run(config);
    assert_all_correct(&report);
    let tables = report.tables.as_ref().expect("tables with trace_routes");
    let shallow: u64 = tables.holes_at_start_by_row.iter().take(2).sum();
    assert!(shallow < 100, "{report}");
    // Stretch by direct delay covers every delivered lookup.
    let share: f64 = tables.stretch_by_direct_ms.iter().map(|b| b.share).sum();
    assert!((share - 1.0).abs() < 1e-9, "{report}");
}

#[test]
fn oracle_tables_give_perfect_proximity_below_row_0() {
    let mut config = steady(1_500, 1_500, 4);
    config.trace_routes = true;
    config.oracle_tables = true;
    let oracle = run(config);
    assert_all_correct(&oracle);
    let perfect = &oracle
        .tables
        .as_ref()
        .expect("tables")
        .proximity_ratio_by_row;
    for (row, ratio) in perfect.iter().enumerate().skip(1) {
        assert!(*ratio < 1.02, "row {row}: {ratio}\n{oracle}");
    }
    let mut config = steady(1_500, 1_500, 4);
    config.trace_routes = true;
    let built = run(config);
    let ratios = &built
        .tables
        .as_ref()
        .expect("tables")
        .proximity_ratio_by_row;
    // The flag is what made the tables perfect: the protocol's own are measurably farther.
    assert!(ratios[1] > perfect[1], "{built}");
}

#[test]
fn repeated_zipf_keys_go_straight_to_their_root() {
    let config = SimConfig {
        key_popularity: KeyPopularity::Zipf { keys: 50, s: 1.0 },
        ..steady(500, 3_000, 5)
    };
    let report = run(config);
    assert_all_correct(&report);
    assert_eq!(report.key_popularity, "zipf keys=50 s=1");
    assert!(report.repeat_lookups > 300, "{report}");
    // A cached route takes one hop; at 500 nodes row 0 is sparse, so the neighbour hints
    // cover every slot and first routes go straight to the root too.
    assert!(report.stretch_repeat_mean < 1.05, "{report}");
    assert!(report.stretch_first_mean < 1.1, "{report}");
    assert!(report.stretch_p95 >= report.stretch_median, "{report}");
    assert_eq!(report.stretch_ratio_of_means, report.stretch_of_means);
    assert_eq!(
        report.stretch_below_one_fraction, None,
        "only with a matrix"
    );
}

#[test]
fn cli_rejects_a_bad_zipf_popularity_and_idle_window() {
    let out = wendy()
        .args(["sim", "--nodes", "10", "--lookups", "1"])
        .args(["--key-popularity", "zipf", "--zipf-s=-1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--zipf-s"), "{err}");
    let out = wendy()
        .args(["bench", "idle", "--no-netns", "--window-s", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--window-s must be a positive number"),
        "{err}"
    );
}
