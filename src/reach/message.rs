//! The frames of address discovery and reachability, carried as [`Body::Reach`](crate::wire::Body::Reach).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::id::NodeId;

/// One reachability frame. Requests travel on a bi stream ([`Transport::request`]); each names
/// the answer it expects.
///
/// Append new variants at the end only: the variant index is part of the encoding.
///
/// [`Transport::request`]: crate::transport::Transport::request
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReachMessage {
    /// "Which address do you see me at?" Answered with [`ReachMessage::Observed`].
    Observe,
    /// The address the answering node sees the asker at (its link's remote address).
    Observed {
        /// The asker's address as seen by the answerer.
        addr: SocketAddr,
    },
    /// "Am I reachable?" The answerer asks another node to dial the asker back at the address
    /// the answerer sees it at, and answers [`ReachMessage::CheckResult`].
    Check,
    /// Sent by the node asked a [`ReachMessage::Check`] to another node: dial `peer` at `addr`
    /// with a fresh connection and answer [`ReachMessage::CheckResult`].
    DialBack {
        /// The node to dial (the handshake must prove this id).
        peer: NodeId,
        /// Where the node asked with `Check` sees it.
        addr: SocketAddr,
    },
    /// The outcome of a dial-back.
    CheckResult {
        /// Whether the dial-back's handshake completed.
        reachable: bool,
        /// The address that was dialled.
        addr: SocketAddr,
    },
}

#[cfg(test)]
pub(crate) mod strategy {
    //! Proptest strategy for reachability frames.
    use proptest::prelude::*;

    use super::ReachMessage;
    use crate::id::NodeId;

    pub(crate) fn message() -> impl Strategy<Value = ReachMessage> {
        let addr = (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| std::net::SocketAddr::from((ip, port)));
        prop_oneof![
            Just(ReachMessage::Observe),
            addr.clone()
                .prop_map(|addr| ReachMessage::Observed { addr }),
            Just(ReachMessage::Check),
            (any::<u128>(), addr.clone()).prop_map(|(id, addr)| ReachMessage::DialBack {
                peer: NodeId::from_u128(id),
                addr
            }),
            (any::<bool>(), addr)
                .prop_map(|(reachable, addr)| ReachMessage::CheckResult { reachable, addr }),
        ]
    }
}
