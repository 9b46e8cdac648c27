//! The node's relay mode at run time: private (homed on relays, advertising its synthetic
//! address) or public (dialled at its own address), following the reachability service's
//! confirmed verdict ([`ReachStatus::verdict`]).
//!
//! The decision (confirm a contradicting answer through another peer, a pause between
//! switches) is `reach::verdict`; this task carries a switch out everywhere the node's address
//! lives: the relay client (homing, the relay record, the address relayed dials carry), the
//! Pastry core (the `PeerInfo` its messages carry), the punch service, and the node handle.
//! Peers pick the new address up from the record: going private, its first relayed record;
//! going public, a direct record that withdraws it (see `relay/client/switch.rs`).

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

use super::driver::Runtime;
use crate::id::NodeId;
use crate::reach::verdict::ModeSwitch;
use crate::reach::ReachStatus;
use crate::relay::{synthetic_addr, Relays};
use crate::transport::Transport;

/// How long a switch to private waits for its first relay before it advertises the synthetic
/// address anyway (the node cannot be dialled at its own address either way).
const HOMING_WAIT: Duration = Duration::from_secs(10);

/// Whether a node is private or public now, and how often that changed
/// ([`Node::mode`](super::Node::mode)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeStatus {
    /// Whether the node is private: reached through relays, at its synthetic address.
    pub private: bool,
    /// The address the node advertises now.
    pub addr: SocketAddr,
    /// How many times the mode changed at run time.
    pub switches: u64,
    /// The relays the node was homed on when the mode last changed (empty when public).
    pub relays: Vec<NodeId>,
    /// How long the last switch took, from the confirmed verdict to the new address being
    /// advertised (homing included).
    pub switch_took: Option<Duration>,
}

/// What the mode task acts on.
pub(super) struct Setup {
    pub(super) id: NodeId,
    pub(super) relays: Arc<Relays>,
    pub(super) runtime: Weak<Runtime<Transport>>,
    pub(super) reach: watch::Receiver<ReachStatus>,
    /// The punch service's view of the advertised address.
    pub(super) punch_addr: watch::Sender<SocketAddr>,
    pub(super) status: watch::Sender<ModeStatus>,
    /// The address to advertise when public and no peer reports one.
    pub(super) direct: SocketAddr,
    /// Whether the mode follows the verdict (otherwise it stays as started).
    pub(super) follow: bool,
}

/// Starts the mode task.
pub(super) fn spawn(setup: Setup) {
    if !setup.follow {
        return;
    }
    let span = tracing::info_span!("mode", node = %setup.id);
    tokio::spawn(run(setup).instrument(span));
}

async fn run(mut setup: Setup) {
    let mut mode = ModeSwitch::new(setup.status.borrow().private);
    let mut wake_at: Option<Instant> = None;
    loop {
        let wake = wake_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            changed = setup.reach.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(wake), if wake_at.is_some() => {}
        }
        if setup.runtime.strong_count() == 0 {
            return;
        }
        let (verdict, observed) = {
            let reach = setup.reach.borrow_and_update();
            (reach.verdict, reach.observed_addrs.clone())
        };
        wake_at = None;
        match mode.decide(verdict, Instant::now().into_std()) {
            Ok(None) => {}
            Err(at) => wake_at = Some(Instant::from_std(at)),
            Ok(Some(private)) => switch(&setup, private, &observed, mode.switches()).await,
        }
    }
}

/// Carries a switch out: the relays first (so that a record names them before the core
/// advertises the synthetic address), then the core, the punch service and the status.
async fn switch(setup: &Setup, private: bool, observed: &[SocketAddr], switches: u64) {
    let started = Instant::now();
    let addr = if private {
        if let Err(error) = setup.relays.go_private(HOMING_WAIT).await {
            warn!(%error, "turned private but no relay has accepted this node yet");
        }
        synthetic_addr(setup.id)
    } else {
        // The address peers see this node at (the one a dial-back reached), of the family
        // it was started with when there is one.
        let seen = observed
            .iter()
            .find(|addr| addr.is_ipv4() == setup.direct.is_ipv4())
            .or_else(|| observed.first())
            .copied();
        let addr = seen.unwrap_or(setup.direct);
        setup.relays.go_public(addr).await;
        addr
    };
    let Some(runtime) = setup.runtime.upgrade() else {
        return;
    };
    let mut holders = Vec::new();
    runtime.tell_core(|pastry, _| {
        pastry.set_address(addr);
        holders = record_holders(pastry);
    });
    // Linked peers got the record with the switch; the nodes that hold this one in their state
    // without a link would otherwise keep its old address until they next meet it.
    setup.relays.send_own_record(holders);
    let _ = setup.punch_addr.send(addr);
    let relays = if private {
        setup.relays.status().homes.iter().map(|h| h.id).collect()
    } else {
        Vec::new()
    };
    info!(private, %addr, ?relays, "relay mode changed");
    setup.status.send_replace(ModeStatus {
        private,
        addr,
        switches,
        relays,
        switch_took: Some(started.elapsed()),
    });
}

/// The most peers a switch sends its record to besides its linked ones: the leaf set first
/// (they hold this node for certain), then the routing table and the neighbourhood set.
const RECORD_HOLDERS: usize = 64;

/// The peers of this node's state, which are likely to hold it in theirs.
fn record_holders(pastry: &crate::pastry::Pastry) -> Vec<crate::pastry::PeerInfo> {
    let mut peers: Vec<crate::pastry::PeerInfo> = pastry.leaf_set().peers();
    let more = pastry
        .routing_table()
        .iter()
        .chain(pastry.neighbourhood().iter())
        .map(|slot| slot.peer);
    for peer in more {
        if peers.len() >= RECORD_HOLDERS {
            break;
        }
        if !peers.iter().any(|p| p.id == peer.id) {
            peers.push(peer);
        }
    }
    peers.truncate(RECORD_HOLDERS);
    peers
}
