//! Joining: the bootstrap dials, the pending join's state, and the check of a claim that this
//! node's identity is already live elsewhere (believed only when a handshake there proves this
//! node's own key).

use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use super::{Driver, Internal};
use crate::id::NodeId;
use crate::node::links::Links;
use crate::node::NodeError;
use crate::pastry::PeerInfo;
use crate::transport::ConnectError;

/// Every bootstrap address failed.
pub(super) struct BootstrapFailed {
    pub(super) tried: Vec<SocketAddr>,
    pub(super) last_addr: SocketAddr,
    pub(super) last_error: ConnectError,
    /// Where a bootstrap's claim that this node's identity is live elsewhere was verified.
    pub(super) identity_in_use: Option<SocketAddr>,
}

/// At most this many claims that this node's identity is live elsewhere are verified per join
/// (each costs a dial).
const MAX_IDENTITY_CHECKS: usize = 4;

pub(super) struct PendingJoin {
    pub(super) reply: oneshot::Sender<Result<(), NodeError>>,
    pub(super) deadline: Instant,
    /// The last handshake refused while joining: a join that then times out was most likely
    /// stopped by it (a member whose allow-list or CA excludes this node), so it is the
    /// join's error rather than the timeout.
    pub(super) refused: Option<(SocketAddr, String)>,
    /// Addresses named by claims that this node's identity is live there, checked or being
    /// checked.
    pub(super) identity_checks: Vec<SocketAddr>,
}

impl<L: Links> Driver<L> {
    pub(super) fn join(
        &mut self,
        bootstrap: Vec<SocketAddr>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    ) {
        if self.stopping {
            let _ = reply.send(Err(NodeError::Closed));
            return;
        }
        if self.pastry.is_active() {
            let _ = reply.send(Ok(()));
            return;
        }
        self.join = Some(PendingJoin {
            reply,
            deadline: Instant::now() + self.join_timeout,
            refused: None,
            identity_checks: Vec::new(),
        });
        let Some((&first, rest)) = bootstrap.split_first() else {
            info!("starting a new overlay");
            let now = self.now();
            self.pastry.bootstrap_alone(now);
            return;
        };
        let rest = rest.to_vec();
        let transport = self.transport.clone();
        let internal = self.internal.clone();
        let me = self.pastry.id();
        tokio::spawn(
            async move {
                let result = dial_first(&transport, me, first, &rest).await;
                let _ = internal.send(Internal::Bootstrapped(result));
            }
            .in_current_span(),
        );
    }

    /// A peer says this node's identity is live at `addr`. Believed only once a handshake
    /// there proves this node's own key, and only while a join is pending (a member that is
    /// already in keeps its place; the newcomer is the one that stops).
    pub(super) fn check_identity_claim(&mut self, addr: SocketAddr) {
        let Some(join) = self.join.as_mut() else {
            debug!(%addr, "ignored a claim that this node's identity is live elsewhere: not joining");
            return;
        };
        if join.identity_checks.contains(&addr) || join.identity_checks.len() >= MAX_IDENTITY_CHECKS
        {
            debug!(%addr, "ignored a claim that this node's identity is live elsewhere: checked already");
            return;
        }
        join.identity_checks.push(addr);
        let transport = self.transport.clone();
        let internal = self.internal.clone();
        let me = self.pastry.id();
        tokio::spawn(
            async move {
                if let Some(addr) = holds_own_key(&transport, me, addr).await {
                    let _ = internal.send(Internal::IdentityProven(addr));
                }
            }
            .in_current_span(),
        );
    }

    /// Another process proved this node's key at `addr`: a pending join fails with
    /// [`NodeError::IdentityInUse`] and the node stops without a word to the overlay.
    pub(super) fn identity_in_use(&mut self, addr: SocketAddr) {
        let Some(join) = self.join.take() else {
            return;
        };
        warn!(%addr, "another process runs this node's key; abandoning the join");
        let _ = join.reply.send(Err(NodeError::IdentityInUse { addr }));
        self.stop();
        let transport = self.transport.clone();
        tokio::spawn(async move { transport.shutdown().await }.in_current_span());
    }
}

/// Dials the bootstrap addresses in order (`first`, then `rest`); the first that completes a
/// handshake is the one.
async fn dial_first<L: Links>(
    transport: &L,
    me: NodeId,
    first: SocketAddr,
    rest: &[SocketAddr],
) -> Result<PeerInfo, BootstrapFailed> {
    let mut addr = first;
    let mut others = rest.iter().copied();
    loop {
        let error = match transport.connect(addr, None).await {
            Ok(id) => return Ok(PeerInfo { id, addr }),
            Err(error) => error,
        };
        if let ConnectError::IdentityInUse { live_at } = error {
            if let Some(proven) = holds_own_key(transport, me, live_at).await {
                return Err(BootstrapFailed {
                    tried: std::iter::once(first).chain(rest.iter().copied()).collect(),
                    last_addr: addr,
                    last_error: error,
                    identity_in_use: Some(proven),
                });
            }
        }
        // The join's error reports the last failure; earlier ones are worth a line at -v.
        info!(%addr, %error, "bootstrap unreachable");
        match others.next() {
            Some(next) => addr = next,
            None => {
                return Err(BootstrapFailed {
                    tried: std::iter::once(first).chain(rest.iter().copied()).collect(),
                    last_addr: addr,
                    last_error: error,
                    identity_in_use: None,
                })
            }
        }
    }
}

/// Whether the node at `addr` proves this node's own key `me` in a handshake (and is not this
/// process): then another process holds this node's identity there.
async fn holds_own_key<L: Links>(
    transport: &L,
    me: NodeId,
    addr: SocketAddr,
) -> Option<SocketAddr> {
    match transport.connect(addr, Some(me)).await {
        Err(ConnectError::SameIdentity(at)) => {
            info!(%at, "verified: another process runs this node's key");
            Some(at)
        }
        outcome => {
            debug!(%addr, ?outcome, "a claim that this node's identity is live there did not hold");
            None
        }
    }
}
