//! [`Links`]: what the node's runtime needs of its transport, so that the runtime can run on an
//! in-memory fake in tests as well as on the QUIC [`Transport`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

use crate::id::NodeId;
use crate::transport::{ConnectError, Inbox, LinkInfo, SendError, Transport};
use crate::wire::Body;

/// The links to peers a node's runtime uses: one-way sends, dials (which measure the RTT),
/// link snapshots, shutdown, and where incoming messages go.
///
/// Incoming link events, requests and streams come on the event channel given to the runtime
/// at spawn time; one-way messages come through the [`Inbox`] set here. Used by static
/// dispatch (the runtime is generic over it), so the route path pays nothing for it.
pub(crate) trait Links: Clone + Send + Sync + 'static {
    /// Sends `body` one-way to `peer`, dialling `addr` if there is no link; resolves once the
    /// frame is handed to the network.
    fn send(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        body: &Body,
    ) -> impl Future<Output = Result<(), SendError>> + Send;

    /// Like [`Self::send`], but resolves only once the peer has acknowledged the whole frame:
    /// for the last messages before [`Self::shutdown`], which drops what is not delivered yet.
    fn send_acknowledged(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        body: &Body,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        self.send(peer, addr, body)
    }

    /// Ensures a link to `addr` (to `expected`, if given) and returns the peer's verified id.
    fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> impl Future<Output = Result<NodeId, ConnectError>> + Send;

    /// The link's smoothed RTT, if there is a link to `peer`.
    fn rtt(&self, peer: NodeId) -> Option<Duration>;

    /// A snapshot of every link.
    fn links(&self) -> Vec<LinkInfo>;

    /// The address of the link to `peer`, if there is one (without the statistics of
    /// [`Self::links`]).
    fn link_addr(&self, peer: NodeId) -> Option<SocketAddr> {
        self.links()
            .into_iter()
            .find(|link| link.peer == peer)
            .map(|link| link.addr)
    }

    /// Hands every one-way message read from now on to `inbox`.
    fn set_inbox(&self, inbox: Weak<dyn Inbox>);

    /// Closes every link; the event channel ends.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;

    /// Tells the links which peers the node's routing state holds (they keep their links
    /// first when links are capped). Replaces the previous set.
    fn protect(&self, _peers: Vec<NodeId>) {}
}

impl Links for Transport {
    fn send(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        body: &Body,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        Self::send(self, peer, addr, body)
    }

    fn send_acknowledged(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        body: &Body,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        Self::send_acknowledged(self, peer, addr, body)
    }

    fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> impl Future<Output = Result<NodeId, ConnectError>> + Send {
        Self::connect(self, addr, expected)
    }

    fn rtt(&self, peer: NodeId) -> Option<Duration> {
        Self::rtt(self, peer)
    }

    fn links(&self) -> Vec<LinkInfo> {
        Self::links(self)
    }

    fn link_addr(&self, peer: NodeId) -> Option<SocketAddr> {
        Self::link_addr(self, peer)
    }

    fn set_inbox(&self, inbox: Weak<dyn Inbox>) {
        Self::set_inbox(self, inbox);
    }

    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        Self::shutdown(self)
    }

    fn protect(&self, peers: Vec<NodeId>) {
        Self::protect(self, peers);
    }
}

/// The core's view of which peers the node holds links to (see [`crate::pastry::LinkView`]).
pub(super) struct LinkedPeers<L>(pub(super) L);

impl<L: Links> crate::pastry::LinkView for LinkedPeers<L> {
    fn is_linked(&self, peer: NodeId) -> bool {
        self.0.link_addr(peer).is_some()
    }
}

impl<L> std::fmt::Debug for LinkedPeers<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkedPeers")
    }
}
