//! The chat protocol: what a member publishes on a room's topic, as one enum.
//!
//! A room is the topic [`room_topic`]`(ROOM)` ([`wendy::topics`]): members subscribe to it and
//! publish on it; the topic's root (whichever node that is, chat or not) orders, keeps and fans
//! out the messages. The sender of a message is the topic message's verified `from` (the
//! publisher's node id); what a message says about its sender is only its display name.
//!
//! Messages are encoded with postcard (compact, versioned by this enum's shape; every program
//! in one chat runs the same build, so no version negotiation is needed for an example).

use serde::{Deserialize, Serialize};

/// The longest line a user may send, in bytes.
pub const MAX_LINE: usize = 2_000;
/// The longest room or user name, in bytes.
pub const MAX_NAME: usize = 64;
/// The most members one room's table holds: a peer inventing members cannot make memory grow
/// without bound (announcements from more members are ignored until some expire).
pub const MAX_MEMBERS: usize = 256;

/// The topic of a room.
pub fn room_topic(room: &str) -> String {
    format!("chat:{room}")
}

/// The room a topic is for, if it is a room's topic.
pub fn topic_room(topic: &str) -> Option<&str> {
    topic.strip_prefix("chat:")
}

/// What a presence announcement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Presence {
    /// The member has just joined the room.
    Joined,
    /// The member is still in the room (sent every [`crate::client::PRESENCE_EVERY`]).
    Here,
    /// The member leaves the room.
    Left,
}

/// One message on a room's topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wire {
    /// A member announces its display name and presence.
    Presence {
        /// The sender's display name.
        name: String,
        /// What it announces.
        presence: Presence,
    },
    /// A line a member wrote (it announces the sender's display name too).
    Line {
        /// The sender's display name.
        name: String,
        /// The text.
        text: String,
    },
}

impl Wire {
    /// The postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding an enum of strings into a growable buffer cannot fail; an empty payload
        // would be dropped by every receiver as undecodable.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a message; `None` for bytes that are not a chat message or break the limits
    /// (a name or a line too long, a blank name).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let msg: Self = postcard::from_bytes(bytes).ok()?;
        let (name, text) = match &msg {
            Self::Presence { name, .. } => (name, ""),
            Self::Line { name, text } => (name, text.as_str()),
        };
        let ok = !name.trim().is_empty() && name.len() <= MAX_NAME && text.len() <= MAX_LINE;
        ok.then_some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_oversized_fields_are_refused() {
        let line = Wire::Line {
            name: "alice".into(),
            text: "hello".into(),
        };
        assert_eq!(Wire::decode(&line.encode()), Some(line));
        let long = Wire::Line {
            name: "alice".into(),
            text: "x".repeat(MAX_LINE + 1),
        };
        assert_eq!(Wire::decode(&long.encode()), None);
        let blank = Wire::Presence {
            name: " ".into(),
            presence: Presence::Here,
        };
        assert_eq!(Wire::decode(&blank.encode()), None);
        assert_eq!(Wire::decode(b"not chat"), None);
    }

    #[test]
    fn a_room_maps_to_its_topic_and_back() {
        assert_eq!(room_topic("lobby"), "chat:lobby");
        assert_eq!(topic_room(&room_topic("lobby")), Some("lobby"));
        assert_eq!(topic_room("news"), None);
    }
}
