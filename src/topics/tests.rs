//! The topics state driven by hand: one node's [`Tree`] with a made-up overlay view.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::message::{Cursor, Published, TopicWire};
use super::tree::{Action, Tree, View};
use super::{topic_key, TopicsConfig};
use crate::id::{Key, NodeId};
use crate::identity::Identity;
use crate::pastry::PeerInfo;

struct FakeView {
    /// What `next_hop` answers for every key.
    next: Option<Option<PeerInfo>>,
}

impl View for FakeView {
    fn next_hop(&self, _key: Key) -> Option<Option<PeerInfo>> {
        self.next
    }
    fn closest_leaves(&self, _key: Key, _n: usize) -> Vec<PeerInfo> {
        Vec::new()
    }
    fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        Some(addr_of(id))
    }
}

fn addr_of(id: NodeId) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], (id.as_u128() % 60_000) as u16 + 1024))
}

fn peer(n: u128) -> PeerInfo {
    let id = NodeId::from_u128(n);
    PeerInfo {
        id,
        addr: addr_of(id),
    }
}

fn tree(identity: &Identity) -> Tree {
    Tree::new(TopicsConfig::default(), identity.origin_signer(), 1)
}

fn root_view() -> FakeView {
    FakeView { next: Some(None) }
}

fn sends(tree: &mut Tree) -> Vec<(NodeId, TopicWire)> {
    std::mem::take(&mut tree.out)
        .into_iter()
        .filter_map(|a| match a {
            Action::Send { to, msg } => Some((to.id, msg)),
            Action::Route { .. } | Action::Suspect(_) => None,
        })
        .collect()
}

fn join(topic: &str) -> TopicWire {
    TopicWire::Join {
        topic: topic.into(),
        redirects: 0,
    }
}

/// The root's acknowledgements this node sent since the last look.
fn acks(tree: &mut Tree) -> Vec<u64> {
    std::mem::take(&mut tree.out)
        .into_iter()
        .filter_map(|a| match a {
            Action::Route {
                msg: TopicWire::Ack { seq, .. },
                ..
            } => Some(seq),
            _ => None,
        })
        .collect()
}

/// A subscriber that had messages `1..=delivered` from its parent and the old root's copies of
/// `1..=copies`, made root when that parent (the old root) is gone.
fn root_after_take_over(
    now: Instant,
    msg: &dyn Fn(u64) -> Published,
    delivered: u64,
    copies: u64,
) -> Tree {
    let me = Identity::generate();
    let parent = peer(5);
    let mut tree = subscriber(&me, parent);
    let via = FakeView {
        next: Some(Some(parent)),
    };
    for seq in 1..=delivered {
        tree.on_data(now, parent.id, msg(seq), &via);
    }
    let held: Vec<Published> = (1..=copies).map(msg).collect();
    let heads = vec![Cursor {
        stream: held[0].stream,
        next: copies + 1,
    }];
    tree.on_replica(now, "t", held, &heads);
    tree.peer_gone(now, parent.id, &root_view());
    assert!(tree.place("t").is_some_and(|p| p.root));
    tree.out.clear();
    tree
}

#[test]
fn a_node_with_max_children_pushes_a_newcomer_down_to_one_of_them() {
    let me = Identity::generate();
    let mut tree = tree(&me);
    let now = Instant::now();
    for n in 1..=16 {
        tree.on_tree(now, NodeId::from_u128(n), join("t"), &root_view());
    }
    let accepted = sends(&mut tree)
        .into_iter()
        .filter(|(_, m)| matches!(m, TopicWire::Accepted { .. }))
        .count();
    assert_eq!(accepted, 16);
    tree.on_tree(now, NodeId::from_u128(17), join("t"), &root_view());
    let answer = sends(&mut tree);
    match &answer[..] {
        [(to, TopicWire::Redirect { to: under, .. })] => {
            assert_eq!(*to, NodeId::from_u128(17));
            assert!((1..=16).contains(&under.as_u128()));
        }
        other => panic!("expected a redirect, got {other:?}"),
    }
    assert_eq!(tree.place("t").map(|p| p.children.len()), Some(16));
}

#[test]
fn a_join_past_max_topics_is_refused_with_the_reason() {
    let me = Identity::generate();
    let config = TopicsConfig {
        max_topics: 1,
        ..TopicsConfig::default()
    };
    let mut tree = Tree::new(config, me.origin_signer(), 1);
    let now = Instant::now();
    tree.on_tree(now, NodeId::from_u128(1), join("a"), &root_view());
    tree.on_tree(now, NodeId::from_u128(1), join("b"), &root_view());
    let answers = sends(&mut tree);
    assert!(matches!(&answers[0].1, TopicWire::Accepted { .. }));
    match &answers[1].1 {
        TopicWire::Refused { reason, .. } => assert!(reason.contains("1 topics"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(tree.stats.refused, 1);
}

/// A subscriber attached under `parent`.
fn subscriber(identity: &Identity, parent: PeerInfo) -> Tree {
    let mut tree = tree(identity);
    let now = Instant::now();
    let via = FakeView {
        next: Some(Some(parent)),
    };
    assert!(tree.subscribe(now, "t", &via));
    tree.on_tree(
        now,
        parent.id,
        TopicWire::Accepted {
            topic: "t".into(),
            path: vec![parent.id],
            heads: Vec::new(),
        },
        &via,
    );
    tree.out.clear();
    tree
}

#[test]
fn a_subscriber_delivers_each_message_once_and_in_order_whatever_the_arrival_order() {
    let me = Identity::generate();
    let parent = peer(5);
    let mut tree = subscriber(&me, parent);
    let publisher = Identity::generate().origin_signer();
    let msg = |seq| Published::sign(&publisher, "t", 9, seq, vec![seq as u8]);
    let view = FakeView {
        next: Some(Some(parent)),
    };
    let now = Instant::now();
    for seq in [1, 3, 2, 2, 1, 5, 4, 3] {
        tree.on_data(now, parent.id, msg(seq), &view);
    }
    let delivered: Vec<u64> = tree.delivered.iter().map(|m| m.seq).collect();
    assert_eq!(delivered, vec![1, 2, 3, 4, 5]);
    assert!(tree.delivered.iter().all(|m| m.from == publisher.node_id()));
    assert_eq!(tree.stats.duplicates, 3);
}

#[test]
fn a_subscriber_whose_held_messages_fill_their_bound_still_takes_the_ones_that_close_the_gap() {
    let me = Identity::generate();
    let parent = peer(5);
    let mut tree = subscriber(&me, parent);
    let publisher = Identity::generate().origin_signer();
    let msg = |seq| Published::sign(&publisher, "t", 9, seq, vec![seq as u8]);
    let view = FakeView {
        next: Some(Some(parent)),
    };
    let now = Instant::now();
    let max_held = tree.config.max_in_flight as u64 * 4;
    let last = max_held + 40;
    tree.on_data(now, parent.id, msg(1), &view);
    // Message 2 is lost on the way; far more than the bound comes past the gap, the later
    // ones first (as a parent's stream and a replay interleave).
    for seq in (3..=last).rev() {
        tree.on_data(now, parent.id, msg(seq), &view);
    }
    assert_eq!(tree.delivered.len(), 1, "nothing past the gap is delivered");
    // The gap closes (a fetch, or a retry): what is held goes out, in order, and the rest
    // comes again.
    tree.on_data(now, parent.id, msg(2), &view);
    for seq in 3..=last {
        tree.on_data(now, parent.id, msg(seq), &view);
    }
    let delivered: Vec<u64> = tree.delivered.iter().map(|m| m.seq).collect();
    assert_eq!(delivered, (1..=last).collect::<Vec<_>>());
}

#[test]
fn a_message_from_a_node_that_is_not_the_parent_or_badly_signed_is_not_delivered() {
    let me = Identity::generate();
    let parent = peer(5);
    let mut tree = subscriber(&me, parent);
    let view = FakeView {
        next: Some(Some(parent)),
    };
    let publisher = Identity::generate().origin_signer();
    let now = Instant::now();
    // From a stranger: refused, and the stranger is told to let go.
    let stranger = NodeId::from_u128(6);
    tree.on_data(
        now,
        stranger,
        Published::sign(&publisher, "t", 9, 1, b"x".to_vec()),
        &view,
    );
    assert!(tree.delivered.is_empty());
    assert!(sends(&mut tree)
        .iter()
        .any(|(to, m)| *to == stranger && matches!(m, TopicWire::Leave { .. })));
    // From the parent, but changed on the way (or forged in the publisher's name).
    let mut changed = Published::sign(&publisher, "t", 9, 1, b"x".to_vec());
    changed.payload = b"y".to_vec();
    tree.on_data(now, parent.id, changed, &view);
    assert!(tree.delivered.is_empty());
    assert_eq!(tree.stats.refused, 2);
}

#[test]
fn the_root_accepts_a_publishers_messages_in_order_and_acknowledges_the_highest() {
    let me = Identity::generate();
    let mut tree = tree(&me);
    let now = Instant::now();
    let publisher = Identity::generate().origin_signer();
    let key = topic_key("t");
    let publish = |seq| TopicWire::Publish {
        msg: Published::sign(&publisher, "t", 9, seq, vec![]),
        first_unacked: 1,
    };
    tree.on_routed(now, publisher.node_id(), key, publish(2), &root_view());
    assert_eq!(acks(&mut tree), vec![0], "2 waits for 1");
    tree.on_routed(now, publisher.node_id(), key, publish(1), &root_view());
    assert_eq!(acks(&mut tree), vec![2]);
    tree.on_routed(now, publisher.node_id(), key, publish(1), &root_view());
    assert_eq!(
        acks(&mut tree),
        vec![2],
        "a retry is acknowledged again, not taken twice"
    );
    assert_eq!(tree.stats.accepted_as_root, 2);
    // Only the publisher itself can publish its stream.
    let forger = NodeId::from_u128(77);
    tree.on_routed(now, forger, key, publish(3), &root_view());
    assert_eq!(tree.stats.accepted_as_root, 2);
    assert_eq!(tree.stats.refused, 1);
}

#[test]
fn a_parent_that_leaves_makes_its_child_join_again_at_once_around_it() {
    let me = Identity::generate();
    let parent = peer(5);
    let other = peer(6);
    let mut tree = subscriber(&me, parent);
    let now = Instant::now();
    // Routing still leads to the leaving parent: the child waits for it to be forgotten.
    let stale = FakeView {
        next: Some(Some(parent)),
    };
    tree.on_tree(
        now,
        parent.id,
        TopicWire::Leave { topic: "t".into() },
        &stale,
    );
    assert!(sends(&mut tree).is_empty());
    let place = tree.place("t").expect("still subscribed");
    assert_eq!(place.parent, None);
    // Routing moved on: the next tick joins the new next hop, without waiting for a timeout.
    let moved = FakeView {
        next: Some(Some(other)),
    };
    tree.tick_tree(now + Duration::from_millis(1), &moved);
    let joins = sends(&mut tree);
    assert!(
        joins
            .iter()
            .any(|(to, m)| *to == other.id && matches!(m, TopicWire::Join { .. })),
        "{joins:?}"
    );
}

#[test]
fn a_silent_parent_is_replaced_after_the_parent_timeout() {
    let me = Identity::generate();
    let parent = peer(5);
    let other = peer(6);
    let mut tree = subscriber(&me, parent);
    let timeout = TopicsConfig::default().parent_timeout;
    let now = Instant::now();
    let moved = FakeView {
        next: Some(Some(other)),
    };
    tree.tick_tree(now + timeout / 2, &moved);
    assert!(
        sends(&mut tree).iter().all(|(to, _)| *to == parent.id),
        "a refresh to the parent only"
    );
    tree.tick_tree(now + timeout + Duration::from_millis(1), &moved);
    assert!(sends(&mut tree)
        .iter()
        .any(|(to, m)| *to == other.id && matches!(m, TopicWire::Join { .. })));
    assert_eq!(tree.stats.repairs, 1);
}

/// The session of the routed publish the tree last queued.
fn routed_session(tree: &mut Tree) -> u64 {
    std::mem::take(&mut tree.out)
        .into_iter()
        .find_map(|a| match a {
            Action::Route {
                msg: TopicWire::Publish { msg, .. },
                ..
            } => Some(msg.stream.session),
            _ => None,
        })
        .expect("a routed publish")
}

#[test]
fn a_publisher_keeps_its_numbers_and_a_forgotten_one_starts_a_new_stream() {
    let me = Identity::generate();
    let mut tree = tree(&me);
    let root = NodeId::from_u128(7);
    let mine = Key::from(me.node_id());
    let ack = |session, seq| TopicWire::Ack {
        topic: "news".to_owned(),
        session,
        seq,
    };
    let t0 = Instant::now();
    assert_eq!(tree.publish(t0, "news", b"one".to_vec()), Some(1));
    let first = routed_session(&mut tree);
    tree.on_routed(t0, root, mine, ack(first, 1), &root_view());
    assert_eq!(tree.accepted("news"), 1);

    // Acknowledged and idle for a minute: the numbers go on in the same stream.
    let later = t0 + Duration::from_secs(60);
    tree.tick_tree(later, &root_view());
    assert_eq!(tree.accepted("news"), 1);
    assert_eq!(tree.publish(later, "news", b"two".to_vec()), Some(2));
    assert_eq!(routed_session(&mut tree), first);
    tree.on_routed(later, root, mine, ack(first, 2), &root_view());

    // Past the retention the state is forgotten: numbers start again, in a new stream, so
    // subscribers do not take the new messages for copies of the old ones.
    let much_later = later + TopicsConfig::default().retain_for + Duration::from_secs(1);
    tree.tick_tree(much_later, &root_view());
    assert_eq!(tree.accepted("news"), 0);
    assert_eq!(tree.publish(much_later, "news", b"three".to_vec()), Some(1));
    assert_ne!(routed_session(&mut tree), first);
}

/// What a root answers a subscriber's fetch with: the sequence numbers of the replayed
/// messages.
fn replayed(tree: &mut Tree) -> Vec<u64> {
    std::mem::take(&mut tree.out)
        .into_iter()
        .filter_map(|a| match a {
            Action::Route {
                msg: TopicWire::Replay { msgs, .. },
                ..
            } => Some(msgs.into_iter().map(|m| m.seq)),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn a_subtree_cut_off_while_more_than_max_retained_messages_went_by_gets_them_all() {
    // The defect this guards against: a subtree under a forwarder that died detects it after
    // the parent timeout; meanwhile the new root took more than `max_retained` messages, its
    // window moved past what the subtree had, and the subtree's fetch could never fill the gap.
    let me = Identity::generate();
    let mut root = tree(&me);
    let start = Instant::now();
    let publisher = Identity::generate().origin_signer();
    let key = topic_key("t");
    let config = TopicsConfig::default();
    let count = config.max_retained as u64 * 3;
    for seq in 1..=count {
        let now = start + Duration::from_millis(seq);
        let msg = TopicWire::Publish {
            msg: Published::sign(&publisher, "t", 9, seq, vec![0; 16]),
            first_unacked: seq,
        };
        root.on_routed(now, publisher.node_id(), key, msg, &root_view());
    }
    root.out.clear();
    // A subscriber that had the first 100 asks, within the repair window: every later one.
    let subscriber = NodeId::from_u128(42);
    let fetch = TopicWire::Fetch {
        topic: "t".into(),
        cursors: vec![super::message::Cursor {
            stream: super::message::Stream {
                publisher: publisher.node_id(),
                session: 9,
            },
            next: 101,
        }],
    };
    let soon = start + Duration::from_secs(3);
    root.on_routed(soon, subscriber, key, fetch.clone(), &root_view());
    assert_eq!(replayed(&mut root), (101..=count).collect::<Vec<_>>());
    // Past the repair window, the window is back to `max_retained` at the next message.
    let late = start + config.repair_window + Duration::from_secs(1);
    let msg = TopicWire::Publish {
        msg: Published::sign(&publisher, "t", 9, count + 1, vec![0; 16]),
        first_unacked: count + 1,
    };
    root.on_routed(late, publisher.node_id(), key, msg, &root_view());
    root.out.clear();
    root.on_routed(late, subscriber, key, fetch, &root_view());
    assert_eq!(replayed(&mut root).len(), config.max_retained);
}

#[test]
fn a_publisher_sends_acknowledged_messages_again_to_a_root_that_lacks_them() {
    // A root acknowledged 1..=5 and died before its copies reached the next root, which has
    // 1..=3: the new root's answer says so, and the publisher sends 4 and 5 again.
    let me = Identity::generate();
    let mut tree = tree(&me);
    let root = peer(7);
    let via = FakeView {
        next: Some(Some(root)),
    };
    let now = Instant::now();
    for n in 1..=6u8 {
        tree.publish(now, "t", vec![n]).expect("room");
    }
    let session = routed_session(&mut tree);
    tree.out.clear();
    let ack = |seq| TopicWire::Ack {
        topic: "t".into(),
        session,
        seq,
    };
    let mine = Key::from(me.node_id());
    tree.on_routed(now, root.id, mine, ack(5), &via);
    assert!(tree.out.is_empty());
    assert_eq!(tree.accepted("t"), 5);
    let later = now + Duration::from_secs(2);
    tree.on_routed(later, NodeId::from_u128(8), mine, ack(3), &via);
    let again: Vec<u64> = std::mem::take(&mut tree.out)
        .into_iter()
        .filter_map(|a| match a {
            Action::Route {
                msg: TopicWire::Publish { msg, .. },
                ..
            } => Some(msg.seq),
            _ => None,
        })
        .collect();
    assert_eq!(again, vec![4, 5]);
}

#[test]
fn a_subscriber_that_becomes_root_through_its_join_acknowledges_only_what_its_window_holds() {
    // The old root accepted 1..=5 and sent them down the tree, but only 1..=3 of its copies
    // reached this subscriber before it died. Routing now makes the subscriber the root: it
    // acknowledges 3, not the 5 its parent told it of, so the publisher sends 4 and 5 again.
    let publisher = Identity::generate().origin_signer();
    let msg = |seq| Published::sign(&publisher, "t", 9, seq, vec![seq as u8]);
    let now = Instant::now();
    let mut tree = root_after_take_over(now, &msg, 5, 3);
    let publish = TopicWire::Publish {
        msg: msg(6),
        first_unacked: 6,
    };
    tree.on_routed(
        now,
        publisher.node_id(),
        topic_key("t"),
        publish,
        &root_view(),
    );
    assert_eq!(acks(&mut tree), vec![3]);
}

#[test]
fn a_replay_from_a_root_with_a_hole_in_its_window_skips_nothing() {
    // The subscriber has 1..=5. A root that took over holds 1..=3 and, past a hole, 8 and 9
    // (the old root's copies of 4..=7 were lost with it; the publisher sends them again). Its
    // answer to a fetch from 6 holds 8 and 9, with the head 4: 6 and 7 are not lost, they
    // come later, and the subscriber delivers 6..=9 in order.
    let me = Identity::generate();
    let parent = peer(5);
    let mut tree = subscriber(&me, parent);
    let publisher = Identity::generate().origin_signer();
    let msg = |seq| Published::sign(&publisher, "t", 9, seq, vec![seq as u8]);
    let view = FakeView {
        next: Some(Some(parent)),
    };
    let now = Instant::now();
    for seq in 1..=5 {
        tree.on_data(now, parent.id, msg(seq), &view);
    }
    let stream = msg(1).stream;
    let heads = vec![Cursor { stream, next: 4 }];
    let replay = TopicWire::Replay {
        topic: "t".into(),
        msgs: vec![msg(8), msg(9)],
        heads,
    };
    tree.on_routed(now, parent.id, Key::from(me.node_id()), replay, &view);
    assert_eq!(tree.stats.lost, 0);
    assert_eq!(
        tree.delivered.len(),
        5,
        "nothing past the hole is delivered yet"
    );
    for seq in 6..=9 {
        tree.on_data(now, parent.id, msg(seq), &view);
    }
    let delivered: Vec<u64> = tree.delivered.iter().map(|m| m.seq).collect();
    assert_eq!(delivered, (1..=9).collect::<Vec<_>>());
}

#[test]
fn a_replay_whose_window_starts_past_the_cursor_skips_what_the_root_no_longer_holds() {
    // The root's window holds 8..=12 (head 13); the subscriber, cut off for long, is at 6:
    // 6 and 7 are gone for good, and it goes on from 8.
    let me = Identity::generate();
    let parent = peer(5);
    let mut tree = subscriber(&me, parent);
    let publisher = Identity::generate().origin_signer();
    let msg = |seq| Published::sign(&publisher, "t", 9, seq, vec![seq as u8]);
    let view = FakeView {
        next: Some(Some(parent)),
    };
    let now = Instant::now();
    for seq in 1..=5 {
        tree.on_data(now, parent.id, msg(seq), &view);
    }
    let stream = msg(1).stream;
    let heads = vec![Cursor { stream, next: 13 }];
    let replay = TopicWire::Replay {
        topic: "t".into(),
        msgs: (8..=12).map(msg).collect(),
        heads,
    };
    tree.on_routed(now, parent.id, Key::from(me.node_id()), replay, &view);
    assert_eq!(tree.stats.lost, 2);
    let delivered: Vec<u64> = tree.delivered.iter().map(|m| m.seq).collect();
    assert_eq!(delivered, [1, 2, 3, 4, 5, 8, 9, 10, 11, 12]);
}

#[test]
fn a_root_far_behind_the_publisher_still_acknowledges_what_it_holds() {
    // The old root accepted up to 100 and died; the subscriber that takes over holds 1..=3.
    // The publisher's next message is more than `max_in_flight` past that, too far to hold,
    // but the root acknowledges 3 all the same: otherwise the publisher never learns to send
    // 4..=100 again, and the stream stops for good.
    let publisher = Identity::generate().origin_signer();
    let msg = |seq| Published::sign(&publisher, "t", 9, seq, vec![seq as u8]);
    let now = Instant::now();
    let mut tree = root_after_take_over(now, &msg, 3, 3);
    let far = 4 + tree.config.max_in_flight as u64 + 10;
    let publish = TopicWire::Publish {
        msg: msg(far),
        first_unacked: far,
    };
    tree.on_routed(
        now,
        publisher.node_id(),
        topic_key("t"),
        publish,
        &root_view(),
    );
    assert_eq!(acks(&mut tree), vec![3]);
    assert_eq!(tree.stats.accepted_as_root, 0);
}
