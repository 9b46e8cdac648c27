//! Grouping the core's sends into frames: the small control messages one batch of sends has for
//! the same peer share one [`Body::PastryBatch`] frame, so one QUIC stream, instead of one
//! stream each.
//!
//! The common case is a root that delivers a routed message: its `done` acknowledgement and its
//! answer to the origin (`RootAnswer`) go to the same node (the origin, when it sent the message
//! straight to the root) at the same moment. Routed messages themselves, and everything else,
//! go alone: their size depends on what they carry, and they are not per-message overhead.

use crate::pastry::{Message, PeerInfo};
use crate::transport::Limits;
use crate::wire::{Body, MAX_PASTRY_BATCH};

/// Most encoded bytes (estimated from above) one batch may carry: every build accepts frames of
/// [`Limits::MIN_MESSAGE_SIZE`], with room left for the version byte and the length varints.
const BATCH_BYTES: usize = Limits::MIN_MESSAGE_SIZE - 64;

/// An upper bound on a batchable message's encoding, or `None` for a message that goes alone.
fn batchable_size(msg: &Message) -> Option<usize> {
    // A peer: a 16-byte id and a socket address (at most 19 bytes for IPv6, with its tag).
    const PEER: usize = 40;
    match msg {
        // Tag, origin (16), id (a varint of at most 10), done.
        Message::RouteAck { .. } => Some(32),
        Message::ProofWanted { .. } => Some(16),
        // Tag, id, key (16), the leaf set's length and its peers.
        Message::RootAnswer { leaf_set, .. } => Some(32 + PEER * leaf_set.len()),
        // Tag, origin (16), id, key (16), the root, the leaf set's length and its peers.
        Message::RootAnswerRelay { leaf_set, .. } => Some(48 + PEER * (1 + leaf_set.len())),
        _ => None,
    }
}

/// Turns the core's sends, in order, into frames: each batch of control messages for one peer
/// goes where its first message was, every other message alone where it was.
pub(super) fn frames(mut sends: Vec<(PeerInfo, Message)>) -> Vec<(PeerInfo, Body)> {
    // The common case (one message forwarded, or one routed) needs no grouping.
    if sends.len() == 1 {
        return sends
            .pop()
            .map(|(to, msg)| vec![(to, Body::Pastry(msg))])
            .unwrap_or_default();
    }
    // (peer, messages, estimated bytes; None for a message that goes alone)
    let mut slots: Vec<(PeerInfo, Vec<Message>, Option<usize>)> = Vec::with_capacity(sends.len());
    for (to, msg) in sends {
        let Some(size) = batchable_size(&msg) else {
            slots.push((to, vec![msg], None));
            continue;
        };
        let open = slots.iter_mut().find(|(peer, messages, bytes)| {
            peer.id == to.id
                && messages.len() < MAX_PASTRY_BATCH
                && bytes.is_some_and(|bytes| bytes + size <= BATCH_BYTES)
        });
        match open {
            Some((_, messages, bytes)) => {
                messages.push(msg);
                *bytes = bytes.map(|bytes| bytes + size);
            }
            None => slots.push((to, vec![msg], Some(size))),
        }
    }
    slots
        .into_iter()
        .map(|(to, messages, _)| {
            let body = match <[Message; 1]>::try_from(messages) {
                Ok([only]) => Body::Pastry(only),
                Err(messages) => Body::PastryBatch(messages),
            };
            (to, body)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Key, NodeId};
    use crate::wire;

    fn peer(n: u128) -> PeerInfo {
        PeerInfo {
            id: NodeId::from_u128(n),
            addr: ([127, 0, 0, 1], 4000 + n as u16).into(),
        }
    }

    fn ack(id: u64) -> Message {
        Message::RouteAck {
            origin: NodeId::from_u128(1),
            id,
            done: true,
        }
    }

    fn answer(id: u64, leaf_set: usize) -> Message {
        Message::RootAnswer {
            id,
            key: Key::from_u128(id.into()),
            leaf_set: (0..leaf_set as u128).map(|n| peer(100 + n)).collect(),
        }
    }

    #[test]
    fn a_roots_ack_and_answer_to_one_origin_share_a_frame() {
        let frames = frames(vec![(peer(1), ack(7)), (peer(1), answer(7, 0))]);
        assert_eq!(
            frames,
            vec![(peer(1), Body::PastryBatch(vec![ack(7), answer(7, 0)]))]
        );
    }

    #[test]
    fn a_lone_message_goes_in_a_plain_frame() {
        assert_eq!(
            frames(vec![(peer(1), ack(7))]),
            vec![(peer(1), Body::Pastry(ack(7)))]
        );
        assert_eq!(frames(Vec::new()), Vec::new());
    }

    #[test]
    fn other_messages_keep_their_own_frames_in_order() {
        let leave = Message::Leave {
            leaf_set: Vec::new(),
        };
        let heartbeat = Message::Heartbeat {
            leaf_set: Vec::new(),
        };
        let frames = frames(vec![
            (peer(2), heartbeat.clone()),
            (peer(1), ack(7)),
            (peer(2), leave.clone()),
            (peer(1), answer(7, 0)),
            (peer(3), ack(8)),
        ]);
        assert_eq!(
            frames,
            vec![
                (peer(2), Body::Pastry(heartbeat)),
                (peer(1), Body::PastryBatch(vec![ack(7), answer(7, 0)])),
                (peer(2), Body::Pastry(leave)),
                (peer(3), Body::Pastry(ack(8))),
            ]
        );
    }

    #[test]
    fn every_batch_fits_the_smallest_frame_any_node_accepts() {
        let mut sends = Vec::new();
        for id in 0..200 {
            sends.push((peer(1), ack(id)));
            sends.push((peer(1), answer(id, 16)));
        }
        let frames = frames(sends);
        let mut carried = 0;
        for (_, body) in &frames {
            let frame = wire::encode(body).unwrap();
            assert!(
                frame.len() <= Limits::MIN_MESSAGE_SIZE,
                "{} bytes",
                frame.len()
            );
            carried += match body {
                Body::PastryBatch(messages) => {
                    assert!(messages.len() <= MAX_PASTRY_BATCH);
                    messages.len()
                }
                _ => 1,
            };
        }
        assert_eq!(carried, 400);
        let acks_only: Vec<_> = (0..200).map(|id| (peer(1), ack(id))).collect();
        let frames = super::frames(acks_only);
        assert!(frames.len() >= 200 / MAX_PASTRY_BATCH);
        assert!(frames.len() < 200 / 4);
    }
}
