//! `wendy status`: a running node's peers, links and services as a table, read from its admin
//! endpoint (`wendy node --admin ADDR`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

use crate::admin::{self, client};
use crate::CmdResult;

/// The address `wendy status` asks when given none (the README's and deploy/'s `--admin`).
pub(crate) const DEFAULT_ADMIN: &str = "127.0.0.1:8484";

/// Options of `wendy status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The node's admin endpoint (its `--admin` address).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADMIN)]
    admin: SocketAddr,
    /// A file holding the admin endpoint's bearer token (its `--admin-token`).
    #[arg(long, value_name = "FILE")]
    admin_token: Option<PathBuf>,
    /// Print the endpoint's JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Health check: print one line and exit 1 unless the node is part of an overlay.
    #[arg(long, conflicts_with = "json")]
    check: bool,
}

/// Runs `wendy status`.
pub(crate) fn run(args: StatusArgs) -> CmdResult {
    let token = match &args.admin_token {
        Some(path) => Some(admin::read_token(path)?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (code, body) = runtime.block_on(client::get(args.admin, "/status", token.as_deref()))?;
    match code {
        200 => {}
        401 => {
            return Err(format!(
                "the admin endpoint at {} wants a token: pass --admin-token FILE",
                args.admin
            )
            .into())
        }
        _ => {
            return Err(format!(
                "the admin endpoint at {} answered {code}: {}",
                args.admin,
                body.trim()
            )
            .into())
        }
    }
    if args.json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let doc: Value = serde_json::from_str(&body).map_err(|e| {
        format!(
            "the admin endpoint at {} sent no status document ({e}); is it a wendy node?",
            args.admin
        )
    })?;
    if args.check {
        let id = doc["id"].as_str().unwrap_or("?");
        if doc["active"].as_bool() != Some(true) {
            return Err(format!("node {id} is not part of an overlay (yet)").into());
        }
        println!("ok: node {id} is active");
        return Ok(());
    }
    print!("{}", render(&doc));
    Ok(())
}

/// The table for a `/status` document.
pub(crate) fn render(doc: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "node {} at {} ({}), wendy {}, up {}",
        s(&doc["id"]),
        s(&doc["addr"]),
        if doc["active"].as_bool() == Some(true) {
            "active"
        } else {
            "not joined"
        },
        s(&doc["version"]),
        duration(n(&doc["uptime_s"]))
    );
    let observed: Vec<String> = doc["observed_addrs"]
        .as_array()
        .map(|addrs| addrs.iter().map(s).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "reachability {}, observed at {}",
        s(&doc["reachability"]),
        if observed.is_empty() {
            "-".to_owned()
        } else {
            observed.join(" ")
        }
    );
    let cert = &doc["certificate"];
    let left = cert["expires_in_s"].as_i64().unwrap_or(0);
    let _ = writeln!(
        out,
        "certificate {}, expires {} ({})",
        s(&cert["kind"]),
        s(&cert["not_after_utc"]),
        if left < 0 {
            format!("EXPIRED {} ago", duration(left.unsigned_abs()))
        } else if left < 7 * 86_400 {
            format!("in {}: renew it soon", duration(left.unsigned_abs()))
        } else {
            format!("in {}", duration(left.unsigned_abs()))
        }
    );
    let empty = Vec::new();
    let list = |v: &Value| v.as_array().unwrap_or(&empty).len();
    let stats = &doc["stats"];
    let _ = writeln!(
        out,
        "leaf set {}, routing table {}, links {}; routed {} delivered {} forwarded {} failed {}",
        list(&doc["leaf_set"]),
        list(&doc["routing_table"]),
        list(&doc["connections"]),
        n(&stats["routed"]),
        n(&stats["delivered"]),
        n(&stats["forwarded"]),
        n(&stats["routes_failed"]),
    );

    let peers = doc["peers"].as_array().unwrap_or(&empty);
    out.push('\n');
    if peers.is_empty() {
        out.push_str("no peers known\n");
    } else {
        let mut rows = vec![[
            "PEER".to_owned(),
            "ADDR".to_owned(),
            "ROLE".to_owned(),
            "RTT".to_owned(),
            "LINK".to_owned(),
            "LAST HEARD".to_owned(),
            "SENT".to_owned(),
            "RECEIVED".to_owned(),
        ]];
        for peer in peers {
            let link = &peer["link"];
            let mut role = Vec::new();
            if let Some(side) = peer["leaf"].as_str() {
                role.push(format!("leaf {side}"));
            }
            if let Some(row) = peer["table_row"].as_u64() {
                role.push(format!("row {row}"));
            }
            if peer["neighbour"].as_bool() == Some(true) {
                role.push("near".to_owned());
            }
            rows.push([
                s(&peer["id"]),
                if peer["addr"].as_str().is_some_and(|a| !a.is_empty()) {
                    s(&peer["addr"])
                } else {
                    "-".to_owned()
                },
                if role.is_empty() {
                    "-".to_owned()
                } else {
                    role.join(", ")
                },
                peer["rtt_ms"]
                    .as_f64()
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2} ms")),
                link["direction"].as_str().map_or_else(
                    || "-".to_owned(),
                    |d| match (link["path"].as_str(), link["via"].as_str()) {
                        (Some("relay"), Some(via)) => {
                            format!("relay {d} via {}", via.get(..8).unwrap_or(via))
                        }
                        (Some("relay"), None) => format!("relay {d}"),
                        _ => format!("direct {d}"),
                    },
                ),
                last_heard(peer),
                link["bytes_sent"]
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), bytes),
                link["bytes_received"]
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), bytes),
            ]);
        }
        table(&mut out, &rows);
    }

    let exposed = doc["exposed"].as_array().unwrap_or(&empty);
    let forwarded = doc["forwarded"].as_array().unwrap_or(&empty);
    out.push('\n');
    if exposed.is_empty() && forwarded.is_empty() {
        out.push_str("no services exposed or forwarded\n");
    } else {
        let mut rows = vec![[
            "SERVICE".to_owned(),
            "ROLE".to_owned(),
            "LOCAL".to_owned(),
            "TUNNELS".to_owned(),
            "FAILURES".to_owned(),
            "LAST ERROR".to_owned(),
        ]];
        for x in exposed {
            rows.push([
                s(&x["name"]),
                "exposed".to_owned(),
                s(&x["target"]),
                n(&x["tunnels"]).to_string(),
                n(&x["target_failures"]).to_string(),
                "-".to_owned(),
            ]);
        }
        for f in forwarded {
            rows.push([
                s(&f["name"]),
                "forwarded".to_owned(),
                s(&f["listen"]),
                n(&f["connections"]).to_string(),
                n(&f["failures"]).to_string(),
                f["last_error"].as_str().unwrap_or("-").to_owned(),
            ]);
        }
        table(&mut out, &rows);
    }
    out
}

/// When the peer was last heard from: its last heartbeat or direct message, else the last
/// stream on its link (marked so).
fn last_heard(peer: &Value) -> String {
    if let Some(ms) = peer["last_heard_ms"].as_u64() {
        return format!("{} ago", duration_ms(ms));
    }
    peer["link"]["idle_ms"].as_u64().map_or_else(
        || "-".to_owned(),
        |ms| format!("{} ago (link)", duration_ms(ms)),
    )
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table<const N: usize>(out: &mut String, rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn duration_ms(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1e3)
    } else {
        duration(ms / 1000)
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_peers_and_services() {
        let doc = serde_json::json!({
            "id": "00000000000000000000000000000001", "addr": "127.0.0.1:4000", "active": true,
            "version": "0.1.0", "uptime_s": 75,
            "certificate": {"kind": "ca", "not_after_utc": "2027-01-15T08:00:00Z",
                            "expires_in_s": 3600},
            "leaf_set": ["00000000000000000000000000000002"], "routing_table": [],
            "connections": [{}], "stats": {"routed": 3},
            "peers": [{"id": "00000000000000000000000000000002", "addr": "127.0.0.1:4001",
                       "leaf": "cw", "neighbour": true, "rtt_ms": 0.4567,
                       "link": {"direction": "out", "bytes_sent": 2048, "bytes_received": 10},
                       "last_heard_ms": 1500}],
            "exposed": [{"name": "web", "target": "127.0.0.1:80", "tunnels": 2,
                         "target_failures": 0}],
            "forwarded": [],
            "reachability": "public", "observed_addrs": ["198.18.0.10:7000"]
        });
        let text = render(&doc);
        assert!(text.contains("up 1m15s"), "{text}");
        assert!(
            text.contains("reachability public, observed at 198.18.0.10:7000"),
            "{text}"
        );
        assert!(text.contains("renew it soon"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("00000000000000000000000000000002"))
            .unwrap();
        for part in [
            "127.0.0.1:4001",
            "leaf cw, near",
            "0.46 ms",
            "1.5s ago",
            "2.0 KiB",
            "10 B",
        ] {
            assert!(row.contains(part), "{part} missing in {row:?}");
        }
        assert!(text.contains("web") && text.contains("exposed"), "{text}");
    }

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 20), "5.0 MiB");
        assert_eq!(duration(3 * 86_400 + 7200), "3d02h");
        assert_eq!(duration_ms(240), "0.2s");
    }
}
