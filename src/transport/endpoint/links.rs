//! The pool's life cycle: registering a verified link (simultaneous-dial rule, cap, eviction),
//! closing duplicate links once drained, and closing idle links.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{debug, info, Instrument};

use super::{lock, Inner};
use crate::id::NodeId;
use crate::transport::budget::LinkBudget;
use crate::transport::pool::{Insert, Link};
use crate::transport::{CloseCode, ConnectError, LinkLostReason, TransportEvent};

impl Inner {
    /// Puts a verified link in the pool (applying the simultaneous-dial rule and the cap),
    /// announces it and starts its stream loop. Returns the link to use for `peer`.
    pub(super) async fn register(
        self: &Arc<Self>,
        conn: quinn::Connection,
        peer: NodeId,
        inbound: bool,
    ) -> Result<Arc<Link>, ConnectError> {
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
