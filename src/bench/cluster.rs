//! A cluster of real nodes in this process, on loopback, for the suites that need one.
//!
//! Each node's events are drained by a task (so none is ever dropped for lack of a reader);
//! deliveries and direct messages are passed on, stamped with their arrival time, on one
//! channel ([`Cluster::observed`]) for suites that measure latency.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;

use super::BenchError;
use crate::id::NodeId;
use crate::identity::Identity;
use crate::node::{Delivery, Node, NodeConfig, NodeEvent};
use crate::pastry::ideal_leaf_set;

/// An event a suite may want to time.
#[derive(Debug)]
pub enum Observed {
    /// A routed message arrived at node `at` (its index in [`Cluster::nodes`] when it joined).
    Deliver {
        /// The node's id.
        at: NodeId,
        /// The delivery.
        delivery: Delivery,
        /// When its event was read.
        when: Instant,
    },
    /// A direct message arrived.
    Direct {
        /// The receiving node's id.
        at: NodeId,
        /// The sender.
        from: NodeId,
        /// The payload.
        payload: Vec<u8>,
        /// When its event was read.
        when: Instant,
    },
}

/// Real nodes in this process.
#[derive(Debug)]
pub struct Cluster {
    /// The live nodes, in join order.
    pub nodes: Vec<Node>,
    /// Deliveries and direct messages at any node.
    pub observed: mpsc::UnboundedReceiver<Observed>,
    observed_tx: mpsc::UnboundedSender<Observed>,
    config: NodeConfig,
    rng: ChaCha8Rng,
}

impl Cluster {
    /// An empty cluster whose nodes will use `config`; `seed` picks bootstrap nodes.
    pub fn new(config: NodeConfig, seed: u64) -> Self {
        let (observed_tx, observed) = mpsc::unbounded_channel();
        Self {
            nodes: Vec::new(),
            observed,
            observed_tx,
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The ids of the live nodes.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(Node::id).collect()
    }

    /// Starts a node (not joined) whose events are drained into [`Self::observed`].
    pub async fn spawn_node(&self) -> Result<Node, BenchError> {
        let (node, mut events) = Node::builder(Identity::generate())
            .config(self.config.clone())
            .spawn()
            .await?;
        let tx = self.observed_tx.clone();
        let at = node.id();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let observed = match event {
                    NodeEvent::Deliver(delivery) => Observed::Deliver {
                        at,
                        delivery,
                        when: Instant::now(),
                    },
                    NodeEvent::Direct { from, payload } => Observed::Direct {
                        at,
                        from,
                        payload,
                        when: Instant::now(),
                    },
                    _ => continue,
                };
                // The cluster may be gone; then nobody wants the event.
                let _ = tx.send(observed);
            }
        });
        Ok(node)
    }

    /// Joins `node` through a random member (or starts the overlay if the cluster is empty) and
    /// adds it; returns the time [`Node::join`] took, in ms.
    pub async fn join(&mut self, node: Node) -> Result<f64, BenchError> {
        let bootstrap: Vec<_> = if self.nodes.is_empty() {
            Vec::new()
        } else {
            let via = self.rng.gen_range(0..self.nodes.len());
            vec![self.nodes[via].addr()]
        };
        let started = Instant::now();
        node.join(&bootstrap).await?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        self.nodes.push(node);
        Ok(ms)
    }

    /// Adds nodes one at a time until there are `size`; returns their join times in ms (the
    /// first node's, which joins nobody, excluded).
    pub async fn grow(
        &mut self,
        size: usize,
        progress: super::Progress<'_>,
    ) -> Result<Vec<f64>, BenchError> {
        let mut join_ms = Vec::new();
        let mut last = Instant::now();
        while self.nodes.len() < size {
            let first = self.nodes.is_empty();
            let node = self.spawn_node().await?;
            let ms = self.join(node).await?;
            if !first {
                join_ms.push(ms);
            }
            if last.elapsed() > Duration::from_secs(1) || self.nodes.len() == size {
                progress(&format!("  joined {}/{size} nodes", self.nodes.len()));
                last = Instant::now();
            }
        }
        Ok(join_ms)
    }

    /// Waits until every node's leaf set is the oracle's (the `L/2` nearest live ids on each
    /// side); returns how long that took, or an error after `timeout`.
    pub async fn settle(&self, timeout: Duration) -> Result<Duration, BenchError> {
        let started = Instant::now();
        let ids = self.ids();
        let half = self.config.pastry.leaf_set_size / 2;
        loop {
            let mut wrong = 0;
            for node in &self.nodes {
                let mut leaf_set = node.status().await?.leaf_set;
                leaf_set.sort();
                if leaf_set != ideal_leaf_set(node.id(), ids.iter().copied(), half) {
                    wrong += 1;
                }
            }
            if wrong == 0 {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                return Err(BenchError::Incomplete(format!(
                    "{wrong} of {} leaf sets still differ from the true ones after {timeout:?}",
                    self.nodes.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every node at once (in parallel).
    pub async fn shutdown(self) {
        let stops: Vec<_> = self
            .nodes
            .into_iter()
            .map(|node| tokio::spawn(async move { node.shutdown().await }))
            .collect();
        for stop in stops {
            // A panicked stop task leaves nothing to clean up here.
            let _ = stop.await;
        }
    }
}
