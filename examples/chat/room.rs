//! A room as its root node keeps it: the members (soft state), the fan-out of each message to
//! every member, and a short history for members that arrive after a change of root.
//!
//! Pure logic, no IO and no clock: the caller passes `now` in and carries out the returned
//! sends (the same style as Wendy's own `pastry` core), so the rules below are easy to follow
//! and to test.
//!
//! # How a room survives its root
//!
//! The root is whichever live node is closest to the room's key; members never address it by
//! name but route to the key. When the root dies, the overlay delivers the next routed message
//! to the next closest node, which starts hosting the room from nothing:
//! - members re-subscribe every [`REFRESH`], so the new root knows them all within a refresh;
//! - writers repeat a [`Wire::Post`] until a root acknowledges it, and a root acknowledges only
//!   once every member it knows has acknowledged the message (or missed its first chance), so a
//!   post caught in the old root's death is posted again;
//! - the root copies its members and recent messages to the node that would succeed it every
//!   [`REFRESH`] ([`Wire::RoomState`]), so the successor fans out to everyone at once;
//! - the new root keeps what it was posted for [`HISTORY_TTL`] and sends it to every
//!   subscriber it did not know that is not a newcomer: members that re-subscribe after the
//!   change get what was said while the root did not know them yet;
//! - every receiver drops copies by [`MsgId`], so retries and replays never show twice;
//! - a root that starts from nothing waits [`SETTLE`] before welcoming newcomers, so that the
//!   welcome names everyone already there.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use wendy::id::NodeId;

use crate::protocol::{Change, MsgId, Post, Wire, MAX_MEMBERS};

/// How often members re-subscribe to their rooms.
pub const REFRESH: Duration = Duration::from_secs(2);
/// A member not heard from for this long has left (three refreshes and some slack).
pub const MEMBER_TTL: Duration = Duration::from_millis(7_000);
/// How long the root waits for a member's [`Wire::MessageAck`] before sending again.
pub const ACK_WAIT: Duration = Duration::from_millis(500);
/// Sends of one message to one member before the root gives up on that member.
pub const MAX_SENDS: u32 = 3;
/// How long the root keeps messages for members it did not know yet.
pub const HISTORY_TTL: Duration = Duration::from_secs(10);
/// How long a root that starts hosting a room from nothing (no copy from a previous root)
/// waits before welcoming newcomers: one refresh and some slack, so that it has heard from
/// the members already there and the welcome and the announcements name everyone.
pub const SETTLE: Duration = Duration::from_millis(2_500);
/// At most this many messages of history per room.
pub const HISTORY_MAX: usize = 256;

/// A direct message the root wants sent.
pub type Send = (NodeId, Wire);

/// A bounded set of recently seen values: remembers the last `capacity`, forgets the oldest.
#[derive(Debug)]
pub struct Recent<T> {
    set: HashSet<T>,
    order: VecDeque<T>,
    capacity: usize,
}

impl<T: Copy + Eq + Hash> Recent<T> {
    /// An empty set that remembers `capacity` values.
    pub fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Adds `value`; returns false if it was already there (a duplicate).
    pub fn insert(&mut self, value: T) -> bool {
        if !self.set.insert(value) {
            return false;
        }
        self.order.push_back(value);
        if self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        true
    }

    /// Whether `value` was seen recently.
    pub fn contains(&self, value: &T) -> bool {
        self.set.contains(value)
    }
}

struct Member {
    name: String,
    expires: Instant,
}

/// One message being delivered to the members the root knew when it arrived.
struct Fanout {
    /// Who posted it (to be acknowledged).
    writer: NodeId,
    post: Post,
    /// Members that have not acknowledged it yet: how often it was sent and when last.
    waiting: HashMap<NodeId, (u32, Instant)>,
    writer_acked: bool,
}

/// The root's state of one room.
pub struct RoomHost {
    room: String,
    members: HashMap<NodeId, Member>,
    history: VecDeque<(Instant, Post)>,
    fanouts: HashMap<MsgId, Fanout>,
    /// Posts fully delivered: a writer's late retry is acknowledged again, not fanned out.
    done: Recent<MsgId>,
    /// Until when newcomers wait for their welcome (see [`SETTLE`]).
    settling_until: Instant,
    /// Newcomers that subscribed while settling, in order.
    waiting_welcome: Vec<NodeId>,
    /// When the overlay last routed a message for the room here (see [`RoomHost::is_routed_here`]).
    last_routed: Option<Instant>,
}

impl RoomHost {
    /// A room with no members yet, hosted from `now` on. Call [`RoomHost::merge`] at once if
    /// a previous root's copy is at hand (then nobody waits, see [`SETTLE`]).
    pub fn new(room: &str, now: Instant) -> Self {
        Self {
            room: room.to_owned(),
            members: HashMap::new(),
            history: VecDeque::new(),
            fanouts: HashMap::new(),
            done: Recent::new(4096),
            last_routed: None,
            settling_until: now + SETTLE,
            waiting_welcome: Vec::new(),
        }
    }

    /// Records that the overlay routed a message for this room to this node.
    pub fn routed_here(&mut self, now: Instant) {
        self.last_routed = Some(now);
    }

    /// Whether the overlay still routes the room's messages here: members refresh every
    /// [`REFRESH`], so a root hears from them at least that often. When this turns false the
    /// room has moved to another node (one closer to the key joined).
    pub fn is_routed_here(&self, now: Instant) -> bool {
        self.last_routed
            .is_some_and(|t| now.duration_since(t) < REFRESH + REFRESH / 2)
    }

    /// The members' names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.members.values().map(|m| m.name.clone()).collect();
        names.sort();
        names
    }

    /// Whether the room holds nothing worth keeping (no members, nothing in flight or recent).
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && self.fanouts.is_empty() && self.history.is_empty()
    }

    /// The room's state, for the successor or a new root ([`Wire::RoomState`]).
    pub fn state(&self) -> Wire {
        Wire::RoomState {
            room: self.room.clone(),
            members: self
                .members
                .iter()
                .map(|(&id, m)| (id, m.name.clone()))
                .collect(),
            history: self.history.iter().map(|(_, post)| post.clone()).collect(),
        }
    }

    /// Adds a previous root's state: its members (without announcing them: they are not new)
    /// and its recent messages (for members that re-subscribe late). The messages are not
    /// marked delivered: a writer's retry is fanned out again, in case the previous root died
    /// before reaching everyone.
    pub fn merge(&mut self, now: Instant, members: Vec<(NodeId, String)>, history: Vec<Post>) {
        // With the previous root's members known there is nothing to wait for.
        self.settling_until = now;
        for (id, name) in members {
            if self.members.len() >= MAX_MEMBERS {
                break;
            }
            self.members.entry(id).or_insert(Member {
                name,
                expires: now + MEMBER_TTL,
            });
        }
        for post in history {
            if !self.history.iter().any(|(_, p)| p.id == post.id) {
                self.history.push_back((now, post));
            }
        }
        while self.history.len() > HISTORY_MAX {
            self.history.pop_front();
        }
    }

    /// A member (re-)subscribed.
    pub fn subscribe(
        &mut self,
        now: Instant,
        from: NodeId,
        name: String,
        fresh: bool,
    ) -> Vec<Send> {
        let mut out = Vec::new();
        let expires = now + MEMBER_TTL;
        if let Some(member) = self.members.get_mut(&from) {
            member.expires = expires;
            member.name = name;
            if fresh && !self.waiting_welcome.contains(&from) {
                // Still fresh: our welcome was lost, say it again.
                out.push((from, self.members_msg(true)));
            }
            return out;
        }
        if self.members.len() >= MAX_MEMBERS {
            return out; // full: the newcomer gets no welcome and keeps asking
        }
        self.members.insert(from, Member { name, expires });
        if fresh {
            self.waiting_welcome.push(from);
            if now >= self.settling_until {
                out.extend(self.welcome_newcomers());
            }
        } else {
            // A member we did not know but who is not new: the room has moved to us, or we
            // had timed it out. Give it what it may have missed (it drops what it has seen).
            for (_, post) in &self.history {
                out.push((from, Wire::Message(post.clone())));
            }
            out.push((from, self.members_msg(true)));
        }
        out
    }

    /// Welcomes the newcomers waiting for it, and announces each to the members that were
    /// there before (newcomers welcomed together see each other in their welcome).
    fn welcome_newcomers(&mut self) -> Vec<Send> {
        let mut out = Vec::new();
        let newcomers = std::mem::take(&mut self.waiting_welcome);
        for newcomer in &newcomers {
            let Some(name) = self.members.get(newcomer).map(|m| m.name.clone()) else {
                continue; // left again meanwhile
            };
            out.push((*newcomer, self.members_msg(true)));
            for &member in self.members.keys() {
                if !newcomers.contains(&member) {
                    out.push((member, self.presence(&name, Change::Joined)));
                }
            }
        }
        out
    }

    /// A member left.
    pub fn unsubscribe(&mut self, from: NodeId) -> Vec<Send> {
        let Some(gone) = self.members.remove(&from) else {
            return Vec::new();
        };
        self.forget_member(from)
            .into_iter()
            .chain(
                self.members
                    .keys()
                    .map(|&m| (m, self.presence(&gone.name, Change::Left))),
            )
            .collect()
    }

    /// A writer posted a message: deliver it to every member, acknowledge it to the writer.
    pub fn post(&mut self, now: Instant, writer: NodeId, post: Post) -> Vec<Send> {
        let id = post.id;
        if self.done.contains(&id) {
            return vec![(writer, Wire::PostAck { id })];
        }
        if let Some(fanout) = self.fanouts.get(&id) {
            // A retry while we are still delivering: only answer once we have answered.
            return match fanout.writer_acked {
                true => vec![(writer, Wire::PostAck { id })],
                false => Vec::new(),
            };
        }
        self.history.push_back((now, post.clone()));
        if self.history.len() > HISTORY_MAX {
            self.history.pop_front();
        }
        let mut out: Vec<Send> = self
            .members
            .keys()
            .map(|&m| (m, Wire::Message(post.clone())))
            .collect();
        let waiting = self.members.keys().map(|&m| (m, (1, now))).collect();
        self.fanouts.insert(
            id,
            Fanout {
                writer,
                post,
                waiting,
                writer_acked: false,
            },
        );
        out.extend(self.settle(id));
        out
    }

    /// A member acknowledged a message.
    pub fn message_ack(&mut self, from: NodeId, id: MsgId) -> Vec<Send> {
        match self.fanouts.get_mut(&id) {
            Some(fanout) => {
                fanout.waiting.remove(&from);
                self.settle(id)
            }
            // A replayed message, or a late duplicate: nothing waits for it.
            None => Vec::new(),
        }
    }

    /// The answer to `/who`, sent by the room's root `host` (named when it is a member).
    pub fn who(&self, from: NodeId, host: NodeId) -> Vec<Send> {
        let mut answer = self.members_msg(false);
        if let Wire::Members { root_name, .. } = &mut answer {
            *root_name = self.members.get(&host).map(|m| m.name.clone());
        }
        vec![(from, answer)]
    }

    /// Time passes: expire silent members, send unacknowledged messages again, drop old
    /// history.
    pub fn tick(&mut self, now: Instant) -> Vec<Send> {
        let mut out = Vec::new();
        if now >= self.settling_until && !self.waiting_welcome.is_empty() {
            out.extend(self.welcome_newcomers());
        }
        let expired: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| m.expires <= now)
            .map(|(&id, _)| id)
            .collect();
        // If nobody has subscribed here for a while, the members are not gone: the room has
        // moved to a node closer to its key (a newcomer), and they subscribe there. Forget
        // them quietly instead of telling everyone that everyone left.
        let still_root = self.is_routed_here(now);
        for id in expired {
            if let Some(gone) = self.members.remove(&id) {
                out.extend(self.forget_member(id));
                if still_root {
                    for &member in self.members.keys() {
                        out.push((member, self.presence(&gone.name, Change::TimedOut)));
                    }
                }
            }
        }
        let ids: Vec<MsgId> = self.fanouts.keys().copied().collect();
        for id in ids {
            if let Some(fanout) = self.fanouts.get_mut(&id) {
                // Give up on a member once its last chance has passed unanswered.
                fanout.waiting.retain(|_, (sends, last)| {
                    *sends < MAX_SENDS || now.duration_since(*last) < ACK_WAIT
                });
                for (&member, (sends, last)) in fanout.waiting.iter_mut() {
                    if *sends < MAX_SENDS && now.duration_since(*last) >= ACK_WAIT {
                        *sends += 1;
                        *last = now;
                        out.push((member, Wire::Message(fanout.post.clone())));
                    }
                }
            }
            out.extend(self.settle(id));
        }
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= HISTORY_TTL)
        {
            self.history.pop_front();
        }
        out
    }

    /// Acknowledges the writer once every member acknowledged the message or missed its first
    /// chance (a slow or dead member must not hold the writer up), and finishes the fan-out
    /// once nobody is waited for.
    fn settle(&mut self, id: MsgId) -> Vec<Send> {
        let mut out = Vec::new();
        let Some(fanout) = self.fanouts.get_mut(&id) else {
            return out;
        };
        let all_tried = fanout.waiting.values().all(|&(sends, _)| sends >= 2);
        if !fanout.writer_acked && all_tried {
            fanout.writer_acked = true;
            out.push((fanout.writer, Wire::PostAck { id }));
        }
        if fanout.waiting.is_empty() {
            self.fanouts.remove(&id);
            self.done.insert(id);
        }
        out
    }

    /// Stops waiting for a member's acknowledgements (it left).
    fn forget_member(&mut self, id: NodeId) -> Vec<Send> {
        let ids: Vec<MsgId> = self.fanouts.keys().copied().collect();
        let mut out = Vec::new();
        for msg in ids {
            if let Some(fanout) = self.fanouts.get_mut(&msg) {
                fanout.waiting.remove(&id);
            }
            out.extend(self.settle(msg));
        }
        out
    }

    fn members_msg(&self, welcome: bool) -> Wire {
        Wire::Members {
            room: self.room.clone(),
            names: self.names(),
            welcome,
            root_name: None,
        }
    }

    fn presence(&self, name: &str, change: Change) -> Wire {
        Wire::Presence {
            room: self.room.clone(),
            name: name.to_owned(),
            change,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> NodeId {
        NodeId::from_u128(n)
    }

    fn post(writer: NodeId, seq: u64) -> Post {
        Post {
            room: "lobby".into(),
            id: MsgId {
                sender: writer,
                incarnation: 1,
                seq,
            },
            name: "w".into(),
            text: format!("line {seq}"),
        }
    }

    /// A host that knows `members` already (as after a hand-over: nobody waits to settle).
    fn host_with(now: Instant, members: &[NodeId]) -> RoomHost {
        let mut host = RoomHost::new("lobby", now);
        let members = members.iter().map(|&m| (m, format!("m{m}"))).collect();
        host.merge(now, members, Vec::new());
        host
    }

    fn acks_to(out: &[Send], writer: NodeId) -> usize {
        out.iter()
            .filter(|(to, msg)| *to == writer && matches!(msg, Wire::PostAck { .. }))
            .count()
    }

    fn messages_to(out: &[Send]) -> Vec<NodeId> {
        let mut to: Vec<NodeId> = out
            .iter()
            .filter(|(_, msg)| matches!(msg, Wire::Message(_)))
            .map(|(to, _)| *to)
            .collect();
        to.sort();
        to
    }

    #[test]
    fn writer_is_acknowledged_once_every_member_has_the_message() {
        let t0 = Instant::now();
        let (a, b) = (id(1), id(2));
        let mut host = host_with(t0, &[a, b]);
        let p = post(a, 0);
        let out = host.post(t0, a, p.clone());
        assert_eq!(messages_to(&out), vec![a, b]);
        assert_eq!(acks_to(&out, a), 0);
        assert_eq!(acks_to(&host.message_ack(a, p.id), a), 0);
        assert_eq!(acks_to(&host.message_ack(b, p.id), a), 1);
        // A late retry of the writer is acknowledged again, not delivered again.
        let out = host.post(t0, a, p);
        assert_eq!(acks_to(&out, a), 1);
        assert!(messages_to(&out).is_empty());
    }

    #[test]
    fn a_silent_member_does_not_hold_the_writer_up() {
        let t0 = Instant::now();
        let (a, b) = (id(1), id(2));
        let mut host = host_with(t0, &[a, b]);
        let p = post(a, 0);
        host.post(t0, a, p.clone());
        host.message_ack(a, p.id);
        // b missed its first chance: it gets the message again and the writer its answer.
        let out = host.tick(t0 + ACK_WAIT);
        assert_eq!(messages_to(&out), vec![b]);
        assert_eq!(acks_to(&out, a), 1);
        // After MAX_SENDS the root stops trying.
        let mut sends = 2;
        let mut t = t0 + ACK_WAIT;
        for _ in 0..5 {
            t += ACK_WAIT;
            sends += messages_to(&host.tick(t)).len();
        }
        assert_eq!(sends, MAX_SENDS as usize);
    }

    #[test]
    fn a_new_root_with_a_copy_fans_out_at_once_and_redelivers_retries() {
        let t0 = Instant::now();
        let (a, b, c) = (id(1), id(2), id(3));
        let old = post(a, 0);
        let mut host = RoomHost::new("lobby", t0);
        let members = vec![(a, "a".into()), (b, "b".into()), (c, "c".into())];
        host.merge(t0, members, vec![old.clone()]);
        assert_eq!(messages_to(&host.post(t0, b, post(b, 0))), vec![a, b, c]);
        // The old root may have died before reaching everyone: a retry is delivered again
        // (receivers drop copies).
        assert_eq!(messages_to(&host.post(t0, a, old)), vec![a, b, c]);
    }

    #[test]
    fn merging_copies_keeps_each_message_once() {
        let t0 = Instant::now();
        let a = id(1);
        let mut host = RoomHost::new("lobby", t0);
        let (p0, p1) = (post(a, 0), post(a, 1));
        host.merge(t0, vec![(a, "a".into())], vec![p0.clone()]);
        host.merge(t0, vec![(a, "a".into())], vec![p0.clone(), p1.clone()]);
        let Wire::RoomState {
            members, history, ..
        } = host.state()
        else {
            panic!("state is a RoomState");
        };
        assert_eq!(members.len(), 1);
        assert_eq!(history, vec![p0, p1]);
    }

    #[test]
    fn a_root_from_nothing_welcomes_newcomers_once_it_knows_the_room() {
        let t0 = Instant::now();
        let (newcomer, old_member) = (id(1), id(2));
        let mut host = RoomHost::new("lobby", t0);
        let p = post(old_member, 0);
        host.post(t0, old_member, p.clone());
        assert!(host.subscribe(t0, newcomer, "new".into(), true).is_empty());
        // A member that was there before re-subscribes: welcomed (silently, it is not new)
        // and given the recent messages it may have missed.
        let out = host.subscribe(t0 + REFRESH, old_member, "old".into(), false);
        assert!(out.contains(&(old_member, Wire::Message(p))));
        // Settled: the newcomer's welcome names the old member, who is told of the newcomer.
        let out = host.tick(t0 + SETTLE);
        let welcome = Wire::Members {
            room: "lobby".into(),
            names: vec!["new".into(), "old".into()],
            welcome: true,
            root_name: None,
        };
        assert!(out.contains(&(newcomer, welcome)), "{out:?}");
        let joined = Wire::Presence {
            room: "lobby".into(),
            name: "new".into(),
            change: Change::Joined,
        };
        assert!(out.contains(&(old_member, joined)), "{out:?}");
    }

    #[test]
    fn members_time_out_but_a_room_that_moved_away_is_dropped_quietly() {
        let t0 = Instant::now();
        let (a, b) = (id(1), id(2));
        let mut host = host_with(t0, &[a, b]);
        host.routed_here(t0);
        // b keeps refreshing, a goes silent: a times out and b is told.
        let mut t = t0;
        while t < t0 + MEMBER_TTL {
            t += REFRESH;
            host.routed_here(t);
            host.subscribe(t, b, "b".into(), false);
        }
        let out = host.tick(t);
        let timed_out = Wire::Presence {
            room: "lobby".into(),
            name: format!("m{a}"),
            change: Change::TimedOut,
        };
        assert_eq!(out, vec![(b, timed_out)]);
        // Nothing is routed here any more (the room moved): b expires without a word.
        let out = host.tick(t + MEMBER_TTL + REFRESH);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(host.names(), Vec::<String>::new());
    }
}
