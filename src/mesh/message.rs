//! The mesh's messages and how they ride inside ordinary node payloads.
//!
//! Mesh messages travel as the payload of routed messages ([`crate::node::Node::route`]) and
//! direct messages ([`crate::node::Node::send_to`]), next to the application's own payloads.
//! They are told apart by a tag: a mesh payload is the 8 bytes [`MAGIC`] followed by a postcard
//! encoding of a [`MeshMessage`]. [`MAGIC`] starts with `0xFF`, a byte that never occurs in
//! UTF-8, so no text payload can be mistaken for a mesh message; a binary payload is taken for
//! one only if it starts with these exact 8 bytes *and* the rest decodes as a mesh message.
//! Anything else is passed to the application untouched. Applications should not start their
//! own binary payloads with [`MAGIC`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::record::SignedRecord;

/// The tag in front of every mesh payload: `0xFF` then `wmesh/1`.
pub const MAGIC: [u8; 8] = [0xFF, b'w', b'm', b'e', b's', b'h', b'/', b'1'];

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
    /// The tagged payload.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let payload = MAGIC.to_vec();
        // Encoding into a Vec only fails for types serde cannot express; ours are plain data.
        match postcard::to_extend(self, payload) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "cannot encode mesh message");
                Vec::new()
            }
        }
    }

    /// The mesh message in `payload`, or `None` if it is not one (an application payload).
    pub(crate) fn decode(payload: &[u8]) -> Option<Self> {
        let body = payload.strip_prefix(&MAGIC)?;
        match postcard::take_from_bytes::<Self>(body) {
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
            assert!(payload.starts_with(&MAGIC));
            assert_eq!(MeshMessage::decode(&payload), Some(message));
        }
    }

    #[test]
    fn application_payloads_are_not_mesh_messages() {
        assert_eq!(MeshMessage::decode(b""), None);
        assert_eq!(MeshMessage::decode(b"hello"), None);
        assert_eq!(MeshMessage::decode("ÿwmesh/1 text".as_bytes()), None);
        // The tag alone, the tag with garbage, and a valid message with trailing bytes.
        assert_eq!(MeshMessage::decode(&MAGIC), None);
        let mut garbage = MAGIC.to_vec();
        garbage.extend_from_slice(&[0xEE; 20]);
        assert_eq!(MeshMessage::decode(&garbage), None);
        let mut trailing = MeshMessage::Probe.encode();
        trailing.push(0);
        assert_eq!(MeshMessage::decode(&trailing), None);
    }
}
