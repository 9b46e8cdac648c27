//! What topic nodes say to each other, and the publisher's signature on every message.
//!
//! A topic message is the postcard encoding of a [`TopicWire`], sent as a routed or direct
//! payload of kind [`PayloadKind::Topic`](crate::wire::PayloadKind::Topic).

use serde::{Deserialize, Serialize};

use crate::id::{Key, NodeId};
use crate::identity::{OriginSigner, OriginVerifier};

/// The longest topic name, in bytes.
pub const MAX_TOPIC_NAME: usize = 128;

/// The most ids a path to the root may list (deeper trees are cut: a longer path is refused).
pub(crate) const MAX_PATH: usize = 32;

/// The most cursors (publisher streams) one message may list.
pub(crate) const MAX_CURSORS: usize = 1024;

/// A publisher's stream in a topic: the publisher and the session (random per start of the
/// publisher's topics service), and a sequence number in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Stream {
    pub(crate) publisher: NodeId,
    pub(crate) session: u64,
}

/// Where a stream stands: `next` is the first sequence number not yet had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cursor {
    pub(crate) stream: Stream,
    pub(crate) next: u64,
}

/// One published message, signed by its publisher: a forwarder can neither change it nor make
/// one up in another publisher's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Published {
    pub(crate) topic: String,
    pub(crate) stream: Stream,
    pub(crate) seq: u64,
    pub(crate) payload: Vec<u8>,
    pub(crate) public_key: [u8; 32],
    /// 64 bytes (serde has no 64-byte arrays).
    pub(crate) signature: Vec<u8>,
}

impl Published {
    /// Signs a new message.
    pub(crate) fn sign(
        signer: &OriginSigner,
        topic: &str,
        session: u64,
        seq: u64,
        payload: Vec<u8>,
    ) -> Self {
        let stream = Stream {
            publisher: signer.node_id(),
            session,
        };
        let digest = digest(topic, stream, seq, &payload);
        Self {
            topic: topic.to_owned(),
            stream,
            seq,
            payload,
            public_key: signer.public_key(),
            signature: signer.sign(&digest).to_vec(),
        }
    }

    /// Checks the publisher's signature (and that its key is the publisher's).
    pub(crate) fn verify(&self, verifier: &mut OriginVerifier) -> Result<(), &'static str> {
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| "signature is not 64 bytes")?;
        let digest = digest(&self.topic, self.stream, self.seq, &self.payload);
        verifier
            .verify(self.stream.publisher, &self.public_key, &digest, &signature)
            .map_err(|_| "bad publisher signature")
    }

    /// Bytes this message holds in a retained window.
    pub(crate) fn size(&self) -> usize {
        self.payload.len() + self.topic.len() + 160
    }
}

fn digest(topic: &str, stream: Stream, seq: u64, payload: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("wendy topic message v1");
    hasher.update(&(topic.len() as u64).to_le_bytes());
    hasher.update(topic.as_bytes());
    hasher.update(&u128::from(stream.publisher).to_le_bytes());
    hasher.update(&stream.session.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    *hasher.finalize().as_bytes()
}

/// What topic nodes say to each other.
///
/// Append new variants at the end only: the variant index is part of the encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum TopicWire {
    /// Direct, child to parent: take me as a child (or, from a child already taken: I am
    /// alive). `redirects` counts the parents that pushed this join down.
    Join { topic: String, redirects: u8 },
    /// Direct, parent to child: taken. `path` runs from the root to the parent; `heads` are
    /// the streams' next sequence numbers as far as the parent knows.
    Accepted {
        topic: String,
        path: Vec<NodeId>,
        heads: Vec<Cursor>,
    },
    /// Direct, parent to child: full; join `to`, one of my children, instead.
    Redirect {
        topic: String,
        to: NodeId,
        addr: std::net::SocketAddr,
        redirects: u8,
    },
    /// Direct, parent to child: refused (too many topics here, too many redirects).
    Refused { topic: String, reason: String },
    /// Direct, either way: the link in the tree is cut (a child unsubscribed, or a parent
    /// leaves: its children join again at once).
    Leave { topic: String },
    /// Routed to the topic's key: accept this message. `first_unacked` is the publisher's
    /// oldest message not yet acknowledged (where a root that has not seen the stream starts).
    Publish { msg: Published, first_unacked: u64 },
    /// Routed to the publisher's id: the root has every message of the stream up to `seq`.
    Ack {
        topic: String,
        session: u64,
        seq: u64,
    },
    /// Direct, parent to child: a message, down the tree.
    Data { msg: Published },
    /// Routed to the topic's key: send me the retained messages past these cursors (all of a
    /// stream not listed).
    Fetch { topic: String, cursors: Vec<Cursor> },
    /// Routed to the subscriber's id: retained messages, and the root's heads.
    Replay {
        topic: String,
        msgs: Vec<Published>,
        heads: Vec<Cursor>,
    },
    /// Direct, root to the nodes next in line to be root: keep these (the retained window and
    /// the heads), to take over with them.
    Replica {
        topic: String,
        msgs: Vec<Published>,
        heads: Vec<Cursor>,
    },
}

impl TopicWire {
    /// The payload that carries this message.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Encoding into a Vec only fails for types serde cannot express; ours are plain data.
        postcard::to_allocvec(self).unwrap_or_else(|error| {
            tracing::error!(%error, "cannot encode topic message");
            Vec::new()
        })
    }

    /// Decodes a payload and checks the bounds every message must keep.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let msg: Self = postcard::from_bytes(bytes).map_err(|e| format!("malformed: {e}"))?;
        msg.check()?;
        Ok(msg)
    }

    /// The topic the message is about.
    pub(crate) fn topic(&self) -> &str {
        match self {
            Self::Join { topic, .. }
            | Self::Accepted { topic, .. }
            | Self::Redirect { topic, .. }
            | Self::Refused { topic, .. }
            | Self::Leave { topic }
            | Self::Ack { topic, .. }
            | Self::Fetch { topic, .. }
            | Self::Replay { topic, .. }
            | Self::Replica { topic, .. } => topic,
            Self::Publish { msg, .. } | Self::Data { msg } => &msg.topic,
        }
    }

    fn check(&self) -> Result<(), String> {
        check_name(self.topic()).map_err(|e| e.to_string())?;
        let bounded = |n: usize, what: &str, max: usize| {
            if n > max {
                Err(format!("{n} {what} (at most {max})"))
            } else {
                Ok(())
            }
        };
        match self {
            Self::Accepted { path, heads, .. } => {
                bounded(path.len(), "path ids", MAX_PATH)?;
                bounded(heads.len(), "heads", MAX_CURSORS)
            }
            Self::Fetch { cursors, .. } => bounded(cursors.len(), "cursors", MAX_CURSORS),
            Self::Replay { topic, msgs, heads } | Self::Replica { topic, msgs, heads } => {
                bounded(heads.len(), "heads", MAX_CURSORS)?;
                if msgs.iter().any(|m| &m.topic != topic) {
                    return Err("a replayed message of another topic".into());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Why a topic name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicNameError {
    /// The name is empty.
    #[error("a topic name cannot be empty")]
    Empty,
    /// The name is too long.
    #[error("a topic name is at most {MAX_TOPIC_NAME} bytes (got {0})")]
    TooLong(usize),
    /// The name holds whitespace or control characters.
    #[error("a topic name cannot hold whitespace or control characters")]
    BadCharacter,
}

/// Checks a topic name: 1 to [`MAX_TOPIC_NAME`] bytes, no whitespace or control characters.
pub fn check_name(name: &str) -> Result<(), TopicNameError> {
    if name.is_empty() {
        return Err(TopicNameError::Empty);
    }
    if name.len() > MAX_TOPIC_NAME {
        return Err(TopicNameError::TooLong(name.len()));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TopicNameError::BadCharacter);
    }
    Ok(())
}

/// The overlay key of a topic: `Key::from_name("topic:" + name)`; its root is the live node
/// closest to it.
pub fn topic_key(name: &str) -> Key {
    Key::from_name(&format!("topic:{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn a_message_changed_on_the_way_fails_its_signature() {
        let identity = Identity::generate();
        let signer = identity.origin_signer();
        let msg = Published::sign(&signer, "lobby", 7, 1, b"hi".to_vec());
        let mut verifier = OriginVerifier::new();
        assert_eq!(msg.verify(&mut verifier), Ok(()));
        let mut changed = msg.clone();
        changed.payload = b"ho".to_vec();
        assert!(changed.verify(&mut verifier).is_err());
        let mut renumbered = msg.clone();
        renumbered.seq = 2;
        assert!(renumbered.verify(&mut verifier).is_err());
        // Another node's key cannot sign in this publisher's name.
        let forger = Identity::generate().origin_signer();
        let mut forged = Published::sign(&forger, "lobby", 7, 1, b"hi".to_vec());
        forged.stream.publisher = msg.stream.publisher;
        assert!(forged.verify(&mut verifier).is_err());
    }

    #[test]
    fn messages_over_the_bounds_are_refused() {
        let fetch = TopicWire::Fetch {
            topic: "t".into(),
            cursors: vec![
                Cursor {
                    stream: Stream {
                        publisher: NodeId::from_u128(1),
                        session: 1
                    },
                    next: 1
                };
                MAX_CURSORS + 1
            ],
        };
        let err = TopicWire::decode(&fetch.encode()).unwrap_err();
        assert!(err.contains("cursors"), "{err}");
        let bad_name = TopicWire::Leave {
            topic: "a b".into(),
        };
        assert!(TopicWire::decode(&bad_name.encode()).is_err());
        assert!(TopicWire::decode(&[0xff, 0xff]).is_err());
    }
}
