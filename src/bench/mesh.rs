//! A raw quinn mesh: what the route benchmark's throughput phase could reach if a hop cost
//! nothing but QUIC.
//!
//! As many endpoints as the cluster has nodes, in the same process, with Wendy's TLS setup and
//! limits; each connects to the next [`LINKS_PER_ENDPOINT`] endpoints around a ring (so each
//! holds twice that many connections, as a node holds links to its leaf set and table). Then
//! messages go over randomly chosen connections, one uni stream each, a window of them in flight
//! (the throughput phase's shape). Measured twice:
//! - **one-way**: a message counts once the receiver has read it to the end;
//! - **with a receipt**: the receiver answers each message with a small uni stream back, and the
//!   message counts once the sender has read that answer (a hop and its acknowledgement, the
//!   shape of each of Wendy's hops).
//!
//! A routed message makes about `mean hops` such hops, so these rates over the mean hop count
//! bound the routed rate from above for any design that keeps a QUIC stream per message.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::route::{quinn_error, transport_config};
use super::BenchError;
use crate::transport::tls;

/// Connections each endpoint opens (it accepts as many from the endpoints before it).
pub const LINKS_PER_ENDPOINT: usize = 8;

/// How long any single message may take before the run is declared broken (a hang guard).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A message that counts when it is read.
const ONE_WAY: u8 = 0;
/// A message whose receiver answers with a receipt.
const WANTS_RECEIPT: u8 = 1;
/// The answer; counts when it is read.
const RECEIPT: u8 = 2;

/// The mesh's throughput, each figure from the same process as the route benchmark's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RawMeshThroughput {
    /// Endpoints (the cluster's node count).
    pub endpoints: usize,
    /// Connections in all.
    pub links: usize,
    /// Messages per second, one uni stream each, counted when read.
    pub msgs_per_s: f64,
    /// Process CPU time per message, ms (Linux; `None` elsewhere).
    pub cpu_ms_per_msg: Option<f64>,
    /// Messages per second when each is answered by a receipt stream, counted when the
    /// receipt is read.
    pub with_receipt_msgs_per_s: f64,
    /// Process CPU time per message with its receipt, ms (Linux; `None` elsewhere).
    pub with_receipt_cpu_ms_per_msg: Option<f64>,
}

/// Builds the mesh, measures both rates with `messages` each and `window` in flight, and closes
/// it again.
pub async fn measure(
    endpoints: usize,
    messages: usize,
    window: usize,
    size: usize,
    rng: &mut impl Rng,
) -> Result<RawMeshThroughput, BenchError> {
    let mut mesh = Mesh::start(endpoints).await?;
    let result = async {
        let (msgs_per_s, cpu_ms_per_msg) = mesh.rate(ONE_WAY, messages, window, size, rng).await?;
        let (with_receipt_msgs_per_s, with_receipt_cpu_ms_per_msg) = mesh
            .rate(WANTS_RECEIPT, messages, window, size, rng)
            .await?;
        Ok(RawMeshThroughput {
            endpoints,
            links: mesh.links.len(),
            msgs_per_s,
            cpu_ms_per_msg,
            with_receipt_msgs_per_s,
            with_receipt_cpu_ms_per_msg,
        })
    }
    .await;
    mesh.close();
    result
}

struct Mesh {
    endpoints: Vec<quinn::Endpoint>,
    /// The connecting side of every connection.
    links: Vec<quinn::Connection>,
    /// One unit per message that counted (read, or its receipt read).
    counted: mpsc::UnboundedReceiver<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Mesh {
    async fn start(count: usize) -> Result<Self, BenchError> {
        let (counted_tx, counted) = mpsc::unbounded_channel();
        let mut endpoints = Vec::with_capacity(count);
        let mut addrs: Vec<SocketAddr> = Vec::with_capacity(count);
        let mut client_configs = Vec::with_capacity(count);
        let mut tasks = Vec::new();
        let mut max = 0;
        for _ in 0..count {
            let config = transport_config()?;
            max = config.limits.max_message_size;
            let endpoint =
                quinn::Endpoint::server(tls::quinn_server_config(&config)?, config.listen)
                    .map_err(|e| quinn_error(&e))?;
            addrs.push(endpoint.local_addr().map_err(|e| quinn_error(&e))?);
            tasks.push(tokio::spawn(accept(
                endpoint.clone(),
                counted_tx.clone(),
                max,
            )));
            // Any peer is accepted: the mesh measures QUIC, not admission.
            client_configs.push(tls::quinn_client_config(&config, None)?);
            endpoints.push(endpoint);
        }
        let per = LINKS_PER_ENDPOINT.min(count.saturating_sub(1) / 2).max(1);
        let mut links = Vec::with_capacity(count * per);
        for (from, endpoint) in endpoints.iter().enumerate() {
            for step in 1..=per {
                let to = (from + step) % count;
                if to == from {
                    continue;
                }
                let conn = endpoint
                    .connect_with(client_configs[from].clone(), addrs[to], "wendy")
                    .map_err(|e| quinn_error(&e))?
                    .await
                    .map_err(|e| quinn_error(&e))?;
                tasks.push(tokio::spawn(serve(conn.clone(), counted_tx.clone(), max)));
                links.push(conn);
            }
        }
        Ok(Self {
            endpoints,
            links,
            counted,
            tasks,
        })
    }

    /// Sends `total` messages of `kind` over random links with `window` in flight: messages
    /// per second and process CPU ms per message.
    async fn rate(
        &mut self,
        kind: u8,
        total: usize,
        window: usize,
        size: usize,
        rng: &mut impl Rng,
    ) -> Result<(f64, Option<f64>), BenchError> {
        let mut body = vec![0x5a; size.max(1)];
        body[0] = kind;
        let body = Bytes::from(body);
        let cpu_before = super::link::process_cpu_ticks();
        let started = Instant::now();
        let (mut sent, mut counted) = (0usize, 0usize);
        while counted < total {
            while sent < total && sent - counted < window.max(1) {
                let conn = self.links[rng.gen_range(0..self.links.len())].clone();
                let body = body.clone();
                tokio::spawn(async move { send(&conn, body).await });
                sent += 1;
            }
            tokio::time::timeout(MESSAGE_TIMEOUT, self.counted.recv())
                .await
                .ok()
                .flatten()
                .ok_or_else(|| {
                    BenchError::Incomplete(format!(
                        "{} of {total} mesh messages lost",
                        total - counted
                    ))
                })?;
            counted += 1;
        }
        let rate = total as f64 / started.elapsed().as_secs_f64().max(1e-9);
        Ok((rate, super::link::cpu_ms_per(cpu_before, total)))
    }

    fn close(self) {
        for conn in &self.links {
            conn.close(0u32.into(), b"done");
        }
        for endpoint in &self.endpoints {
            endpoint.close(0u32.into(), b"done");
        }
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Accepts connections and serves each.
async fn accept(endpoint: quinn::Endpoint, counted: mpsc::UnboundedSender<()>, max: usize) {
    while let Some(incoming) = endpoint.accept().await {
        let counted = counted.clone();
        tokio::spawn(async move {
            if let Ok(conn) = incoming.await {
                serve(conn, counted, max).await;
            }
        });
    }
}

/// Reads every uni stream of `conn`: counts messages and receipts, answers the messages that
/// want a receipt.
async fn serve(conn: quinn::Connection, counted: mpsc::UnboundedSender<()>, max: usize) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let (conn, counted) = (conn.clone(), counted.clone());
        tokio::spawn(async move {
            let Ok(message) = recv.read_to_end(max).await else {
                return;
            };
            match message.first() {
                Some(&WANTS_RECEIPT) => {
                    let _ = send(&conn, Bytes::from_static(&[RECEIPT; 16])).await;
                }
                Some(_) => {
                    let _ = counted.send(());
                }
                None => {}
            }
        });
    }
}

/// One message on a fresh uni stream.
async fn send(conn: &quinn::Connection, body: Bytes) -> Result<(), BenchError> {
    let mut stream = conn.open_uni().await.map_err(|e| quinn_error(&e))?;
    stream
        .write_chunk(body)
        .await
        .map_err(|e| quinn_error(&e))?;
    stream.finish().map_err(|e| quinn_error(&e))
}
