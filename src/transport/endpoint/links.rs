//! The pool's life cycle: registering a verified link (simultaneous-dial rule, cap, eviction),
//! closing duplicate links once drained, and closing idle links.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tracing::{debug, info, warn, Instrument};

use super::{lock, Inner};
use crate::id::NodeId;
use crate::transport::budget::LinkBudget;
use crate::transport::dials::canonical;
use crate::transport::pool::{Insert, Link};
use crate::transport::stream::{write_header, LinkGuard};
use crate::transport::{CloseCode, ConnectError, LinkLostReason, TransportEvent};
use crate::wire::{self, Body};

impl Inner {
    /// Puts a verified link in the pool (applying the simultaneous-dial rule and the cap),
    /// announces it and starts its stream loop. Returns the link to use for `peer`.
    pub(super) async fn register(
        self: &Arc<Self>,
        conn: quinn::Connection,
        peer: NodeId,
        inbound: bool,
    ) -> Result<Arc<Link>, ConnectError> {
        self.one_address_per_identity(&conn, peer).await?;
        let epoch = lock(&self.pool).epoch();
        // Whoever is at the address answers: it is no longer a failed address.
        self.dials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .link_up(conn.remote_address());
        let budget = LinkBudget::new(&self.limits);
        let link = Arc::new(Link::new(conn, peer, inbound, epoch, budget));
        let outcome = lock(&self.pool).insert(link.clone());
        match outcome {
            Insert::Full => {
                link.conn.close(
                    CloseCode::TooManyConnections.to_varint(),
                    b"too many connections",
                );
                Err(ConnectError::TooManyConnections {
                    max: self.limits.max_connections,
                })
            }
            Insert::Duplicate(survivor) => {
                debug!(%peer, inbound, "duplicate link loses the simultaneous-dial rule");
                // Its streams still flow until it drains; the peer learns which one survives
                // from the close code (and applies the same rule itself).
                tokio::spawn(
                    self.clone()
                        .stream_loop(link.clone())
                        .instrument(self.span.clone()),
                );
                tokio::spawn(drain_and_close(link));
                Ok(survivor)
            }
            Insert::Added {
                replaced,
                evicted,
                announce,
            } => {
                if let Some(loser) = replaced {
                    debug!(%peer, "replaced a duplicate link");
                    tokio::spawn(drain_and_close(loser));
                }
                if let Some(evicted) = evicted {
                    info!(peer = %evicted.peer, "evicted least recently used idle link");
                    evicted
                        .conn
                        .close(CloseCode::Evicted.to_varint(), b"evicted");
                    self.emit(TransportEvent::LinkLost {
                        peer: evicted.peer,
                        reason: LinkLostReason::ClosedLocally(CloseCode::Evicted),
                    })
                    .await;
                }
                self.close_excess_idle().await;
                if announce {
                    info!(%peer, addr = %link.addr(), inbound, rtt = ?link.conn.rtt(), "link up");
                    self.emit(TransportEvent::LinkUp {
                        peer,
                        addr: link.addr(),
                        rtt: link.conn.rtt(),
                        inbound,
                    })
                    .await;
                }
                tokio::spawn(
                    self.clone()
                        .stream_loop(link.clone())
                        .instrument(self.span.clone()),
                );
                Ok(link)
            }
        }
    }

    /// One live link address per identity: a new link for `peer` from another address than
    /// its pooled link's is refused with [`CloseCode::IdentityInUse`] (the reason names the
    /// live address) while the pooled link answers a ping; if it does not, the peer is taken
    /// to have restarted elsewhere and the pooled link is closed (its loss reported).
    ///
    /// Runs before the new link is pooled or served, so a refused link never carries a frame.
    async fn one_address_per_identity(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        peer: NodeId,
    ) -> Result<(), ConnectError> {
        let new_addr = canonical(conn.remote_address());
        let Some(old) = lock(&self.pool).get(peer) else {
            return Ok(());
        };
        let live_at = canonical(old.addr());
        if live_at == new_addr {
            return Ok(());
        }
        if crate::relay::is_synthetic(live_at) && !crate::relay::is_synthetic(new_addr) {
            // A direct link replaces a relayed one: it is the better path, and the only one a
            // relay may carry relayed traffic on (relaying over a relayed link would send the
            // relay's datagrams through another relay, possibly back through itself).
            let replaced = {
                let mut pool = lock(&self.pool);
                match pool.get(peer) {
                    Some(link) if link.id() == old.id() => pool.remove(peer),
                    _ => None,
                }
            };
            if let Some(old) = replaced {
                debug!(%peer, relayed = %live_at, direct = %new_addr,
                    "a direct link replaces the relayed one");
                tokio::spawn(drain_and_close(old));
            }
            return Ok(());
        }
        if self.answers_ping(&old).await {
            warn!(%peer, %live_at, refused = %new_addr,
                "refused a second link for an identity that is live at another address");
            conn.close(
                CloseCode::IdentityInUse.to_varint(),
                live_at.to_string().as_bytes(),
            );
            self.add_alias(peer, new_addr, &old);
            return Err(ConnectError::IdentityInUse { live_at });
        }
        let removed = {
            let mut pool = lock(&self.pool);
            match pool.get(peer) {
                Some(link) if link.id() == old.id() => pool.remove(peer),
                _ => None,
            }
        };
        if let Some(old) = removed {
            info!(%peer, old = %live_at, new = %new_addr,
                "the old link of a peer linking from a new address does not answer; replacing it");
            old.conn
                .close(CloseCode::Closed.to_varint(), b"unresponsive");
            self.emit(TransportEvent::LinkLost {
                peer,
                reason: LinkLostReason::ClosedLocally(CloseCode::Closed),
            })
            .await;
        }
        Ok(())
    }

    /// Whether `link` answers a ping within a few of its round trips (at most a second).
    async fn answers_ping(&self, link: &Link) -> bool {
        let timeout =
            (link.conn.rtt() * 3 + Duration::from_millis(250)).min(Duration::from_secs(1));
        let _busy = LinkGuard::new(&link.in_flight);
        let nonce: u64 = rand::random();
        let max = self.limits.max_message_size;
        let exchange = async {
            let frame = wire::encode_bounded(&Body::Ping { nonce }, max).ok()?;
            let (mut send, recv) = link.conn.open_bi().await.ok()?;
            write_header(&mut send, frame).await.ok()?;
            send.finish().ok()?;
            let mut recv = recv;
            let answer = recv.read_to_end(max).await.ok()?;
            match wire::decode(&answer, max).ok()? {
                Body::Pong { nonce: echoed } => Some(echoed == nonce),
                _ => Some(false),
            }
        };
        let answered = tokio::time::timeout(timeout, exchange).await;
        debug!(peer = %link.peer, ?answered, "liveness ping of a pooled link");
        matches!(answered, Ok(Some(true)))
    }

    /// Lets `link` stand for `peer` at `addr` while it is pooled.
    pub(super) fn add_alias(&self, peer: NodeId, addr: SocketAddr, link: &Link) {
        let mut aliases = lock_aliases(&self.aliases);
        let pool = lock(&self.pool);
        // Only aliases of links still pooled are worth keeping: bounded by the pool.
        aliases.retain(|(peer, _), id| pool.get(*peer).is_some_and(|link| link.id() == *id));
        aliases.insert((peer, canonical(addr)), link.id());
    }

    /// The live link standing for `peer` at `addr`, if a link from `addr` was refused because
    /// that link answered (see [`Self::one_address_per_identity`]).
    pub(super) fn alias(&self, peer: NodeId, addr: SocketAddr) -> Option<Arc<Link>> {
        let id = *lock_aliases(&self.aliases).get(&(peer, canonical(addr)))?;
        lock(&self.pool).get(peer).filter(|link| link.id() == id)
    }

    pub(super) async fn idle_reaper(inner: Weak<Self>) {
        // Looks several times per timeout: a link's idle time is counted from the first look
        // that sees it unused (see `Link::idle_for`), so each look adds at most one period.
        let period = match inner.upgrade() {
            Some(inner) => {
                let limits = &inner.limits;
                let shortest = if limits.max_idle_links == usize::MAX {
                    limits.idle_link_timeout
                } else {
                    limits
                        .idle_link_timeout
                        .min(limits.excess_idle_link_timeout)
                };
                (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
            }
            None => return,
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            if inner.closing.load(Ordering::Relaxed) {
                return;
            }
            let idle = lock(&inner.pool).take_idle(inner.limits.idle_link_timeout);
            inner.close_idle(idle).await;
            inner.close_excess_idle().await;
        }
    }

    /// Closes the idle links beyond [`Limits::max_idle_links`] (see
    /// [`Limits::excess_idle_link_timeout`]).
    pub(super) async fn close_excess_idle(&self) {
        let excess = lock(&self.pool).take_excess_idle(
            self.limits.max_idle_links,
            self.limits.excess_idle_link_timeout,
        );
        self.close_idle(excess).await;
    }

    /// Closes links taken from the pool as idle, telling the owner.
    async fn close_idle(&self, links: Vec<Arc<Link>>) {
        if !links.is_empty() && self.limits.release_freed_memory {
            crate::transport::heap::links_closed();
        }
        for link in links {
            info!(peer = %link.peer, "closing idle link");
            link.conn.close(CloseCode::Idle.to_varint(), b"idle");
            self.emit(TransportEvent::LinkLost {
                peer: link.peer,
                reason: LinkLostReason::ClosedLocally(CloseCode::Idle),
            })
            .await;
        }
    }
}

/// Closes a link that lost the simultaneous-dial rule once its streams in progress are done and
/// a few RTTs have passed for frames already written to arrive.
async fn drain_and_close(link: Arc<Link>) {
    let drain = (link.conn.rtt() * 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(drain).await;
        if !link.is_busy() {
            break;
        }
    }
    link.conn
        .close(CloseCode::Duplicate.to_varint(), b"duplicate link");
}

type Aliases = HashMap<(NodeId, SocketAddr), usize>;

fn lock_aliases(aliases: &Mutex<Aliases>) -> MutexGuard<'_, Aliases> {
    aliases.lock().unwrap_or_else(PoisonError::into_inner)
}
