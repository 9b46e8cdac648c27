//! The mesh's messages.
//!
//! A mesh message is the postcard encoding of a [`MeshMessage`], sent as a routed or direct
//! payload of kind [`PayloadKind::Mesh`](crate::wire::PayloadKind::Mesh): the node runtime
//! keeps such payloads apart from the application's by that kind, written in the payload's
//! envelope ([`crate::wire::envelope`]), so nothing here needs to tell them apart by their bytes.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::record::SignedRecord;

/// The first byte a provider writes on a tunnel once it has connected to the service: after it,
/// the stream carries the service's bytes. A refusal is a stream reset instead (see
/// [`crate::wire::codes::StreamErrorCode`]).
pub(crate) const TUNNEL_ACCEPTED: u8 = 0;

/// What mesh nodes say to each other.
///
/// Append new variants at the end only: the variant index is part of the encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MeshMessage {
    /// Routed to `svc:NAME`: store this record (the root answers [`MeshMessage::Stored`] or
    /// [`MeshMessage::Refused`] directly to `reply_addr`).
    Publish {
        request: u64,
        reply_addr: SocketAddr,
        record: SignedRecord,
    },
    /// Routed to `svc:NAME`: which providers does `name` have? (answer: [`MeshMessage::Found`]).
    Lookup {
        request: u64,
        reply_addr: SocketAddr,
        name: String,
    },
    /// Direct, root to replica (or holder to a node newly among the closest): keep these.
    Replicate { records: Vec<SignedRecord> },
    /// Direct answer to a [`MeshMessage::Publish`]: stored.
    Stored { request: u64 },
    /// Direct answer to a [`MeshMessage::Publish`]: refused, and why.
    Refused { request: u64, reason: String },
    /// Direct answer to a [`MeshMessage::Lookup`]: the records the answering node holds.
    Found {
        request: u64,
        records: Vec<SignedRecord>,
    },
    /// Direct, no answer: opens a link to a provider so its RTT becomes known.
    Probe,
}

impl MeshMessage {
    /// The payload that carries this message.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Encoding into a Vec only fails for types serde cannot express; ours are plain data.
        match postcard::to_allocvec(self) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "cannot encode mesh message");
                Vec::new()
            }
        }
    }

    /// The mesh message in a mesh payload, or `None` if it is not a valid one (a newer peer's
    /// message, or garbage).
    pub(crate) fn decode(payload: &[u8]) -> Option<Self> {
        match postcard::take_from_bytes::<Self>(payload) {
            Ok((message, [])) => Some(message),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::mesh::record::ServiceRecord;

    #[test]
    fn messages_round_trip() {
        let id = Identity::from_seed([3; 32]);
        let record = ServiceRecord::new(&id, "web", "127.0.0.1:1".parse().unwrap(), 10, 1)
            .unwrap()
            .sign(&id)
            .unwrap();
        let messages = [
            MeshMessage::Publish {
                request: 7,
                reply_addr: "[::1]:9".parse().unwrap(),
                record: record.clone(),
            },
            MeshMessage::Lookup {
                request: 8,
                reply_addr: "127.0.0.1:9".parse().unwrap(),
                name: "web".into(),
            },
            MeshMessage::Replicate {
                records: vec![record.clone(), record.clone()],
            },
            MeshMessage::Stored { request: 1 },
            MeshMessage::Refused {
                request: 1,
                reason: "no".into(),
            },
            MeshMessage::Found {
                request: 2,
                records: vec![record],
            },
            MeshMessage::Probe,
        ];
        for message in messages {
            let payload = message.encode();
            assert_eq!(MeshMessage::decode(&payload), Some(message));
        }
    }

    #[test]
    fn garbage_is_not_a_mesh_message() {
        assert_eq!(MeshMessage::decode(b""), None);
        // An unknown variant, and a valid message with trailing bytes.
        assert_eq!(MeshMessage::decode(&[0x7f, 1, 2]), None);
        let mut trailing = MeshMessage::Probe.encode();
        trailing.push(0);
        assert_eq!(MeshMessage::decode(&trailing), None);
    }
}
