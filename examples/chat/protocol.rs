//! The chat protocol: every message two chat programs exchange, as one enum.
//!
//! Messages travel in two ways over the overlay:
//! - **routed** ([`wendy::node::Node::route`]) to a room's key, when a member does not know (and
//!   need not know) which node is the room's root: [`Wire::Subscribe`], [`Wire::Unsubscribe`],
//!   [`Wire::Post`], [`Wire::Who`];
//! - **direct** ([`wendy::node::Node::send`]) between two nodes that know each other: the
//!   root's answers and its fan-out to the members, and the members' acknowledgements.
//!
//! They are encoded with postcard (compact, versioned by this enum's shape; every program in
//! one chat runs the same build, so no version negotiation is needed for an example).

use serde::{Deserialize, Serialize};
use wendy::id::{Key, NodeId};

/// The overlay key of a room: its rendezvous point is the live node closest to this key.
pub fn room_key(room: &str) -> Key {
    Key::from_name(&format!("room:{room}"))
}

/// The longest line a user may send, in bytes. Keeps a room's copy (up to
/// [`crate::room::HISTORY_MAX`] messages) well inside one overlay message (1 MiB).
pub const MAX_LINE: usize = 2_000;
/// The longest room or user name, in bytes.
pub const MAX_NAME: usize = 64;
/// The most members a root keeps per room, and the most rooms a node hosts or keeps copies
/// of: a peer inventing room names or members cannot make our memory grow without bound.
pub const MAX_MEMBERS: usize = 1_024;
/// See [`MAX_MEMBERS`].
pub const MAX_ROOMS: usize = 1_024;

/// Identifies one chat message, the same across retries, so every receiver can drop copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MsgId {
    /// The node that wrote the message.
    pub sender: NodeId,
    /// Random per run of the program, so a restarted sender (same key file, sequence back at
    /// zero) is not mistaken for its previous run.
    pub incarnation: u64,
    /// Counts the sender's messages in this run.
    pub seq: u64,
}

/// One line a user wrote to a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// The room.
    pub room: String,
    /// Its id (see [`MsgId`]).
    pub id: MsgId,
    /// The writer's display name.
    pub name: String,
    /// The text.
    pub text: String,
}

/// What a [`Wire::Presence`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The member joined the room.
    Joined,
    /// The member left the room.
    Left,
    /// The member stopped refreshing its subscription (its program or node died).
    TimedOut,
}

/// Everything chat programs say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wire {
    /// Member -> root, routed. "I am in this room." Soft state: members repeat it every
    /// [`crate::room::REFRESH`] and the root forgets a member it has not heard from for
    /// [`crate::room::MEMBER_TTL`]. `fresh` is true until the member's first subscription was
    /// welcomed: only a fresh subscriber is announced to the room, and only a subscriber that
    /// is not fresh is sent the root's recent messages (it may have missed them while the
    /// room moved to a new root).
    Subscribe {
        /// The room.
        room: String,
        /// The member's display name.
        name: String,
        /// See above.
        fresh: bool,
    },
    /// Member -> root, routed: the member left the room.
    Unsubscribe {
        /// The room.
        room: String,
    },
    /// Writer -> root, routed: please deliver this to the room. Repeated until [`Wire::PostAck`].
    Post(Post),
    /// Root -> writer, direct: the post reached the room.
    PostAck {
        /// The post's id.
        id: MsgId,
    },
    /// Root -> member, direct: a message of the room. Acknowledged with [`Wire::MessageAck`].
    Message(Post),
    /// Member -> root, direct: the message arrived (sent for every copy, duplicates included).
    MessageAck {
        /// The message's room.
        room: String,
        /// The message's id.
        id: MsgId,
    },
    /// Root -> members, direct: someone came or went.
    Presence {
        /// The room.
        room: String,
        /// The member's display name.
        name: String,
        /// What happened.
        change: Change,
    },
    /// Root -> another node, direct: the room's state. Sent every [`crate::room::REFRESH`] to
    /// the node that would be the root if this one died (so it can carry on at once), and to
    /// the new root when a node closer to the room's key has joined (a hand-over).
    RoomState {
        /// The room.
        room: String,
        /// The members' ids and display names.
        members: Vec<(NodeId, String)>,
        /// The root's recent messages.
        history: Vec<Post>,
    },
    /// Member -> root, routed: who is in the room?
    Who {
        /// The room.
        room: String,
    },
    /// Root -> member, direct: the room's members, as an answer to [`Wire::Who`] or as a
    /// welcome to a new subscriber.
    Members {
        /// The room.
        room: String,
        /// The members' display names, sorted.
        names: Vec<String>,
        /// True when this welcomes a subscription, false when it answers `Who`.
        welcome: bool,
        /// The root's own display name when the root is a member of the room (answers to
        /// `Who` only).
        #[serde(default)]
        root_name: Option<String>,
    },
}

impl Wire {
    /// The postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing this plain enum into a Vec cannot fail (no maps with non-string keys, no
        // custom serializers, unbounded buffer); an empty payload would be dropped as malformed.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a payload; `None` if it is not a chat message (another application's, or junk).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }

    /// Whether every field is within the limits above. Messages from peers that are not are
    /// dropped whole (our own program never sends them).
    pub fn is_within_limits(&self) -> bool {
        let name_ok = |n: &str| n.len() <= MAX_NAME;
        let post_ok = |p: &Post| name_ok(&p.room) && name_ok(&p.name) && p.text.len() <= MAX_LINE;
        match self {
            Self::Subscribe { room, name, .. } => name_ok(room) && name_ok(name),
            Self::Unsubscribe { room } | Self::Who { room } => name_ok(room),
            Self::Post(post) | Self::Message(post) => post_ok(post),
            Self::PostAck { .. } => true,
            Self::MessageAck { room, .. } => name_ok(room),
            Self::Presence { room, name, .. } => name_ok(room) && name_ok(name),
            Self::RoomState {
                room,
                members,
                history,
            } => {
                name_ok(room)
                    && members.len() <= MAX_MEMBERS
                    && members.iter().all(|(_, n)| name_ok(n))
                    && history.len() <= crate::room::HISTORY_MAX
                    && history.iter().all(post_ok)
            }
            Self::Members { room, names, .. } => {
                name_ok(room) && names.len() <= MAX_MEMBERS && names.iter().all(|n| name_ok(n))
            }
        }
    }

    /// Whether this message is addressed to a room (routed to the room's key) rather than to a
    /// node. Routed deliveries are checked against this so a message for one key cannot be
    /// passed off as another's.
    pub fn room_bound(&self) -> Option<&str> {
        match self {
            Self::Subscribe { room, .. }
            | Self::Unsubscribe { room }
            | Self::Who { room }
            | Self::Post(Post { room, .. }) => Some(room),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let post = Post {
            room: "lobby".into(),
            id: MsgId {
                sender: NodeId::from_u128(7),
                incarnation: 1,
                seq: 2,
            },
            name: "alice".into(),
            text: "hi".into(),
        };
        let wire = Wire::Post(post);
        assert_eq!(Wire::decode(&wire.encode()), Some(wire));
        assert_eq!(Wire::decode(b"\xff\xff\xff"), None);
    }
}
