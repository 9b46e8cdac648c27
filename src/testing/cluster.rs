//! An in-process cluster of real nodes on loopback: the one the demo, the benchmarks and the
//! integration tests start, so none of them writes its own.
//!
//! Every node's events are read by a task as soon as they come (none is dropped for lack of a
//! reader) and merged, stamped with where and when they were read, into one channel
//! ([`Cluster::next_event`]). [`Cluster::settle`] waits until every leaf set is the oracle's.
//!
//! ```no_run
//! use std::time::Duration;
//! use wendy::node::NodeConfig;
//! use wendy::testing::{Cluster, Via};
//!
//! # async fn demo() -> Result<(), wendy::testing::ClusterError> {
//! let mut cluster = Cluster::new(1);
//! cluster.grow(16, &NodeConfig::default(), Via::Random, &mut |_| {}).await?;
//! cluster.settle(Duration::from_secs(30)).await?;
//! cluster.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;

use crate::id::NodeId;
use crate::identity::Identity;
use crate::node::{Events, Node, NodeBuilder, NodeConfig, NodeError, NodeEvent};
use crate::pastry::ideal_leaf_set;

/// One node event, where and when the cluster read it.
#[derive(Debug)]
pub struct Observed {
    /// The node that emitted it.
    pub at: NodeId,
    /// When its event was read.
    pub when: Instant,
    /// The event.
    pub event: NodeEvent,
}

/// Which member a joining node bootstraps through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The first member.
    First,
    /// A member chosen by the cluster's seeded RNG.
    Random,
    /// The member at this index of [`Cluster::nodes`].
    Member(usize),
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A node failed to start, join or answer.
    #[error("node: {0}")]
    Node(#[from] NodeError),
    /// A node was asked to join through a member that does not exist.
    #[error("no member {index} to join through (the cluster has {size})")]
    NoSuchMember {
        /// The index asked for.
        index: usize,
        /// Members in the cluster.
        size: usize,
    },
    /// Leaf sets still differed from the oracle's when the time ran out.
    #[error(
        "{mismatched} of {nodes} leaf sets still differ from the true ones after {after:?} \
         (first: {first})"
    )]
    Unsettled {
        /// Nodes whose leaf set differs.
        mismatched: usize,
        /// Nodes checked.
        nodes: usize,
        /// How long the cluster was given.
        after: Duration,
        /// The first of those nodes, what its leaf set lacks and what it holds that it should
        /// not.
        first: String,
    },
}

/// A node whose leaf set differs from the oracle's, with what it holds and what it should.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafMismatch {
    /// The node.
    pub node: NodeId,
    /// Its leaf set, sorted.
    pub holds: Vec<NodeId>,
    /// The oracle's leaf set, sorted.
    pub ideal: Vec<NodeId>,
}

/// Real nodes in this process, in join order.
#[derive(Debug)]
pub struct Cluster {
    /// The members, in join order.
    pub nodes: Vec<Node>,
    events: mpsc::UnboundedReceiver<Observed>,
    events_tx: mpsc::UnboundedSender<Observed>,
    leaf_half: usize,
    rng: ChaCha8Rng,
    /// Which events are kept for [`Self::next_event`]; the others are read and dropped.
    keep: fn(&NodeEvent) -> bool,
}

impl Cluster {
    /// An empty cluster; `seed` drives [`Via::Random`]. Leaf sets are checked against the
    /// default leaf-set size (see [`Self::with_leaf_set_size`]).
    pub fn new(seed: u64) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Self {
            nodes: Vec::new(),
            events,
            events_tx,
            leaf_half: NodeConfig::default().pastry.leaf_set_size / 2,
            rng: ChaCha8Rng::seed_from_u64(seed),
            keep: |_| true,
        }
    }

    /// Keeps only the events `keep` accepts for [`Self::next_event`] (from nodes started after
    /// this call): a cluster whose other events nobody reads must not hold them (a benchmark of
    /// memory or of deliveries).
    pub fn with_event_filter(mut self, keep: fn(&NodeEvent) -> bool) -> Self {
        self.keep = keep;
        self
    }

    /// Checks leaf sets of size `size` (`size / 2` each side) in [`Self::settle`].
    pub fn with_leaf_set_size(mut self, size: usize) -> Self {
        self.leaf_half = size / 2;
        self
    }

    /// The members' ids, in join order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(Node::id).collect()
    }

    /// Starts a node from `builder` (not joined) whose events are merged into the cluster's.
    pub async fn spawn(&self, builder: NodeBuilder) -> Result<Node, ClusterError> {
        let (node, events) = builder.spawn().await?;
        self.watch(&node, events);
        Ok(node)
    }

    /// Merges `node`'s events into the cluster's (for nodes started elsewhere).
    pub fn watch(&self, node: &Node, mut events: Events) {
        let tx = self.events_tx.clone();
        let at = node.id();
        let keep = self.keep;
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if !keep(&event) {
                    continue;
                }
                let observed = Observed {
                    at,
                    when: Instant::now(),
                    event,
                };
                if tx.send(observed).is_err() {
                    break;
                }
            }
        });
    }

    /// Joins `node` through the member `via` picks (or starts the overlay if the cluster is
    /// empty) and adds it; returns how long [`Node::join`] took.
    pub async fn join(&mut self, node: Node, via: Via) -> Result<Duration, ClusterError> {
        let bootstrap = match (self.nodes.len(), via) {
            (0, _) => Vec::new(),
            (_, Via::First) => vec![self.nodes[0].addr()],
            (size, Via::Random) => vec![self.nodes[self.rng.gen_range(0..size)].addr()],
            (size, Via::Member(index)) => vec![self
                .nodes
                .get(index)
                .ok_or(ClusterError::NoSuchMember { index, size })?
                .addr()],
        };
        let started = Instant::now();
        node.join(&bootstrap).await?;
        let took = started.elapsed();
        self.nodes.push(node);
        Ok(took)
    }

    /// [`Self::spawn`] then [`Self::join`].
    pub async fn add(&mut self, builder: NodeBuilder, via: Via) -> Result<Duration, ClusterError> {
        let node = self.spawn(builder).await?;
        self.join(node, via).await
    }

    /// Adds nodes with fresh identities and `config`, one at a time, until there are `size`.
    /// Returns their join times (the first node's, which joins nobody, excluded); `progress`
    /// hears the member count after each join.
    pub async fn grow(
        &mut self,
        size: usize,
        config: &NodeConfig,
        via: Via,
        progress: &mut (dyn FnMut(usize) + Send),
    ) -> Result<Vec<Duration>, ClusterError> {
        let mut joins = Vec::with_capacity(size.saturating_sub(self.nodes.len()));
        while self.nodes.len() < size {
            let first = self.nodes.is_empty();
            let builder = Node::builder(Identity::generate()).config(config.clone());
            let took = self.add(builder, via).await?;
            if !first {
                joins.push(took);
            }
            progress(self.nodes.len());
        }
        Ok(joins)
    }

    /// The next event of any member, or `None` once `timeout` passed without one.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Observed> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// The members whose leaf set differs from the oracle's over the members' ids.
    pub async fn leaf_mismatches(&self) -> Result<Vec<LeafMismatch>, ClusterError> {
        leaf_mismatches(&self.nodes, &self.ids(), self.leaf_half).await
    }

    /// Waits until every member's leaf set is the oracle's (the `L/2` nearest live ids on
    /// each side); returns how long that took, or [`ClusterError::Unsettled`] after `timeout`.
    pub async fn settle(&self, timeout: Duration) -> Result<Duration, ClusterError> {
        settle(&self.nodes, &self.ids(), self.leaf_half, timeout).await
    }

    /// Stops every member at once (in parallel).
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

/// The sequence number a test or benchmark put in the first 8 bytes of a payload (big-endian),
/// if the payload is that long.
pub fn seq_of(payload: &[u8]) -> Option<u64> {
    payload
        .get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u64::from_be_bytes)
}

/// The nodes of `nodes` whose leaf set differs from the oracle's over `population` with
/// `half` ids each side.
pub async fn leaf_mismatches(
    nodes: &[Node],
    population: &[NodeId],
    half: usize,
) -> Result<Vec<LeafMismatch>, ClusterError> {
    let mut mismatched = Vec::new();
    for node in nodes {
        let mut holds = node.status().await?.leaf_set;
        holds.sort();
        let ideal = ideal_leaf_set(node.id(), population.iter().copied(), half);
        if holds != ideal {
            mismatched.push(LeafMismatch {
                node: node.id(),
                holds,
                ideal,
            });
        }
    }
    Ok(mismatched)
}

/// Polls every 10 ms until no leaf set of `nodes` differs from the oracle's over
/// `population`; returns how long that took, or [`ClusterError::Unsettled`] after `timeout`.
pub async fn settle(
    nodes: &[Node],
    population: &[NodeId],
    half: usize,
    timeout: Duration,
) -> Result<Duration, ClusterError> {
    let started = Instant::now();
    loop {
        let mismatches = leaf_mismatches(nodes, population, half).await?;
        let Some(first) = mismatches.first() else {
            return Ok(started.elapsed());
        };
        if started.elapsed() >= timeout {
            let lacks: Vec<&NodeId> = first
                .ideal
                .iter()
                .filter(|id| !first.holds.contains(id))
                .collect();
            let extra: Vec<&NodeId> = first
                .holds
                .iter()
                .filter(|id| !first.ideal.contains(id))
                .collect();
            return Err(ClusterError::Unsettled {
                mismatched: mismatches.len(),
                nodes: nodes.len(),
                after: timeout,
                first: format!("{} lacks {lacks:?}, holds {extra:?} too", first.node),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
