//! The crate's own routed and direct payloads: the layers of Wendy above the node (the service
//! mesh) send and receive theirs through these, under their own [`PayloadKind`], so that they
//! never mix with the application's (see [`crate::wire::envelope`]). Applications cannot reach
//! these: [`Node::route`] and [`Node::send`] always send [`PayloadKind::Application`].

use std::net::SocketAddr;

use tokio::sync::mpsc;

use super::{Node, NodeError, NodeEvent};
use crate::id::{Key, NodeId};
use crate::wire::{envelope, Body, PayloadKind};

impl Node {
    /// [`Node::route`] for a payload of `kind`.
    pub(crate) async fn route_kind(
        &self,
        key: Key,
        kind: PayloadKind,
        payload: &[u8],
    ) -> Result<u64, NodeError> {
        self.shared.runtime.route(key, kind, payload).await
    }

    /// [`Node::send`] for a payload of `kind`.
    pub(crate) async fn send_kind(
        &self,
        to: NodeId,
        kind: PayloadKind,
        payload: &[u8],
    ) -> Result<(), NodeError> {
        let addr = self.shared.runtime.address_of(to)?;
        self.send_to_kind(to, addr, kind, payload).await
    }

    /// [`Node::send_to`] for a payload of `kind`.
    pub(crate) async fn send_to_kind(
        &self,
        to: NodeId,
        addr: SocketAddr,
        kind: PayloadKind,
        payload: &[u8],
    ) -> Result<(), NodeError> {
        let body = Body::Direct {
            payload: envelope::wrap(kind, payload),
        };
        self.shared.transport.send(to, addr, &body).await?;
        Ok(())
    }

    /// The routed and direct payloads of `kind` that arrive from now on, as
    /// [`NodeEvent::Deliver`] and [`NodeEvent::Direct`] (out of their envelope), on a channel
    /// of `capacity` (when it is full, the newest is dropped and counted in
    /// [`NodeStats::events_dropped`](super::NodeStats::events_dropped)). A new subscription to
    /// the same kind replaces this one. `kind` is not [`PayloadKind::Application`], whose
    /// payloads always go to the node's [`Events`](super::Events).
    pub(crate) fn subscribe(
        &self,
        kind: PayloadKind,
        capacity: usize,
    ) -> Result<mpsc::Receiver<NodeEvent>, NodeError> {
        let (to, from) = mpsc::channel(capacity.max(1));
        self.shared.runtime.subscribe(kind, to)?;
        Ok(from)
    }
}

/// The topics layer's view of its node, held weakly: the node's handles own the node, and the
/// topics task must not keep it running once they are gone.
pub(super) struct TopicPort(pub(super) std::sync::Weak<super::Shared>);

type Boxed<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl crate::topics::Port for TopicPort {
    fn next_hop(&self, key: Key) -> Option<Option<crate::pastry::PeerInfo>> {
        self.0.upgrade()?.runtime.next_hop(key).ok()
    }

    fn closest_leaves(&self, key: Key, n: usize) -> Vec<crate::pastry::PeerInfo> {
        self.0
            .upgrade()
            .map(|shared| shared.runtime.closest_leaves(key, n))
            .unwrap_or_default()
    }

    fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        self.0.upgrade()?.runtime.address_of(id).ok()
    }

    fn route(&self, key: Key, payload: Vec<u8>) -> Boxed<Result<(), String>> {
        let shared = self.0.upgrade();
        Box::pin(async move {
            let shared = shared.ok_or_else(|| "the node is shut down".to_owned())?;
            shared
                .runtime
                .route(key, PayloadKind::Topic, &payload)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn send(&self, to: crate::pastry::PeerInfo, payload: Vec<u8>) -> Boxed<Result<(), bool>> {
        let shared = self.0.upgrade();
        Box::pin(async move {
            let shared = shared.ok_or(false)?;
            let body = Body::Direct {
                payload: envelope::wrap(PayloadKind::Topic, &payload),
            };
            shared
                .transport
                .send(to.id, to.addr, &body)
                .await
                .map_err(|error| super::driver::is_peer_failure(&error))
        })
    }

    fn link_down(&self, peer: NodeId) {
        if let Some(shared) = self.0.upgrade() {
            shared.runtime.link_down(peer);
        }
    }
}
