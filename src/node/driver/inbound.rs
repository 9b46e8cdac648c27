//! What the transport hands the runtime: link events, one-way frames, requests and raw
//! streams, each passed to the core, a subscriber, the relays or the reachability service.

use std::net::SocketAddr;

use tracing::debug;

use super::Driver;
use crate::id::NodeId;
use crate::node::links::Links;
use crate::node::{bump, NodeEvent};
use crate::pastry::{Message, PeerInfo, Time};
use crate::transport::{ConnectError, TransportEvent};
use crate::wire::Body;

impl<L: Links> Driver<L> {
    fn on_pastry(&mut self, now: Time, from: NodeId, from_addr: SocketAddr, msg: Message) {
        if matches!(msg, Message::Heartbeat { .. }) {
            self.emit(NodeEvent::Heartbeat { from });
        }
        let addr = match &self.relays {
            Some(relays) => relays.dialable(from, from_addr),
            None => from_addr,
        };
        let peer = PeerInfo { id: from, addr };
        self.pastry.handle_message(now, peer, msg);
    }

    /// A relay record changed whether `node` is relayed (it turned private or public): the
    /// core measures it again at the address that reaches it now (its synthetic one, or its
    /// direct link's), or its tables would keep the old one until the next sample.
    fn remeasure(&mut self, node: NodeId, relayed: bool) {
        if !self.pastry.knows(node) {
            return;
        }
        let addr = if relayed {
            Some(crate::relay::synthetic_addr(node))
        } else {
            self.transport
                .link_addr(node)
                .filter(|addr| !crate::relay::is_synthetic(*addr))
        };
        if let Some(addr) = addr {
            self.measure(PeerInfo { id: node, addr });
        }
    }

    pub(super) fn on_transport(&mut self, event: TransportEvent) {
        if self.stopping {
            return;
        }
        let now = self.now();
        match event {
            TransportEvent::LinkUp {
                peer, addr, rtt, ..
            } => {
                let addr = match &self.relays {
                    Some(relays) => {
                        relays.on_link_up(peer, addr);
                        relays.dialable(peer, addr)
                    }
                    None => addr,
                };
                // A fresh handshake is a free proximity sample.
                self.pastry
                    .handle_proximity(now, PeerInfo { id: peer, addr }, rtt);
            }
            TransportEvent::LinkLost { peer, reason } => {
                if let Some(relays) = &self.relays {
                    relays.on_link_lost(peer);
                }
                if reason.is_failure() {
                    debug!(%peer, ?reason, "link lost");
                    self.pastry.handle_link_down(now, peer);
                }
            }
            TransportEvent::Message {
                from,
                from_addr,
                body,
            } => match body {
                Body::Pastry(msg) => self.on_pastry(now, from, from_addr, msg),
                Body::PastryBatch(messages) => {
                    for msg in messages {
                        self.on_pastry(now, from, from_addr, msg);
                    }
                }
                Body::Direct { payload } => {
                    bump(&self.counters.direct_received);
                    self.hand_over(from, "direct message", payload, |payload| {
                        NodeEvent::Direct { from, payload }
                    });
                }
                Body::RelayRecord { record } => {
                    match self.relays.as_ref().map(|r| r.on_record(from, &record)) {
                        Some(Err(error)) => self.emit(NodeEvent::Error(format!(
                            "refused a relay record from {from}: {error}"
                        ))),
                        Some(Ok(Some((node, relayed)))) => self.remeasure(node, relayed),
                        _ => {}
                    }
                }
                other => debug!(%from, kind = other.kind_name(), "ignored one-way frame"),
            },
            TransportEvent::Request {
                from,
                from_addr,
                body: Body::Reach(message),
                reply,
            } if self.reach.is_some() => {
                let request = crate::reach::Request {
                    from,
                    from_addr,
                    message,
                    reply,
                };
                // A full queue drops the request (its stream is reset unanswered): the cost of
                // a flood stays bounded by the queue.
                if let Some(reach) = &self.reach {
                    if reach.try_send(request).is_err() {
                        debug!(%from, "reachability request dropped: queue full");
                    }
                }
            }
            TransportEvent::Request {
                from,
                from_addr,
                body: Body::Punch(message),
                reply,
            } if self.punch.is_some() => {
                let request = crate::punch::Request {
                    from,
                    from_addr,
                    message,
                    reply,
                };
                // A full queue drops the request (its stream is reset unanswered).
                if let Some(punch) = &self.punch {
                    if punch.try_send(request).is_err() {
                        debug!(%from, "punch request dropped: queue full");
                    }
                }
            }
            TransportEvent::Request {
                from, body, reply, ..
            } => {
                let answer = match body {
                    Body::Ping { nonce } => Body::Pong { nonce },
                    Body::RelayRecordQuery { node } => self
                        .relays
                        .as_ref()
                        .and_then(|relays| relays.record_for(node))
                        .map_or_else(
                            || Body::Error {
                                code: crate::wire::ErrorCode::Unavailable as u16,
                                message: format!("no relay record for {node}"),
                            },
                            |record| Body::RelayRecord { record },
                        ),
                    other => Body::Error {
                        code: crate::wire::ErrorCode::Unsupported as u16,
                        message: format!("{} is not a request", other.kind_name()),
                    },
                };
                debug!(%from, "answering request");
                tokio::spawn(async move {
                    let _ = reply.reply(&answer).await;
                });
            }
            TransportEvent::Stream {
                from,
                from_addr,
                header,
                stream,
            } => {
                let unclaimed = match &self.relays {
                    Some(relays) => relays.on_stream(from, from_addr, header, stream),
                    None => Some((header, stream)),
                };
                match unclaimed {
                    None => {}
                    Some((Body::Tunnel { service }, stream)) => self.emit(NodeEvent::Stream {
                        from,
                        service,
                        stream,
                    }),
                    Some((other, _)) => debug!(%from, kind = other.kind_name(), "ignored stream"),
                }
            }
            TransportEvent::StreamRejected { from, error } => {
                bump(&self.counters.frames_rejected);
                self.emit(NodeEvent::Error(format!("bad frame from {from}: {error}")));
            }
            TransportEvent::IdentityInUse {
                live_at,
                reported_by,
                reported_from,
            } => match live_at {
                Some(addr) => self.check_identity_claim(addr),
                None => debug!(%reported_by, %reported_from,
                    "a peer refused our link as a second holder of our identity, naming no address"),
            },
            TransportEvent::HandshakeFailed { addr, error } => {
                self.counters.handshake_failures.count(&error);
                let message = match &error {
                    ConnectError::Auth(why) => format!("refused a link from {addr}: {why}"),
                    ConnectError::RefusedByPeer(_) => format!("{addr} refused a link: {error}"),
                    other => format!("incoming link from {addr} failed: {other}"),
                };
                self.note_refusal(addr, &error);
                self.emit(NodeEvent::Error(message));
            }
        }
    }
}
