//! What flows along a topic's tree: a publisher's numbered messages routed to the root, the
//! root's acknowledgements, its fan-out down the tree and its copies to the nodes next in
//! line, and a subscriber's in-order, exactly-once delivery with fetches of what it missed.

use std::collections::HashMap;
use std::time::Instant;

use super::message::{Cursor, Published, Stream, TopicWire};
use super::tree::{leave_to, Action, Reader, Topic, Tree, View};
use super::{topic_key, TopicMessage, REPLICAS};
use crate::id::{Key, NodeId};
use crate::pastry::PeerInfo;

/// Bytes of retained messages one replay carries at most (a larger window goes in several).
const REPLAY_CHUNK: usize = 256 * 1024;

/// A publisher keeps this many times `max_in_flight` of its acknowledged messages, for a new
/// root whose copies stop short of what the old root acknowledged.
const ACKED_KEPT: usize = 4;

/// How far below a stream's head a new root looks for holes in its window: a publisher sends
/// again at most this many messages an earlier root acknowledged, so an older hole never fills
/// and must not hold the stream back.
pub(super) fn resend_span(max_in_flight: usize) -> u64 {
    (max_in_flight * ACKED_KEPT) as u64
}

impl Tree {
    /// A new message of this node's in `name`: numbered, signed and routed to the root. The
    /// caller checked [`Tree::can_publish`].
    pub(crate) fn publish(&mut self, now: Instant, name: &str, payload: Vec<u8>) -> Option<u64> {
        let fresh_session = self.session;
        let signer = self.signer.clone();
        let retain_for = self.config.retain_for;
        let t = self.topic_mut(name)?;
        let started = t.publisher.next_seq == 1;
        if started {
            t.publisher.session = fresh_session;
        }
        let session = t.publisher.session;
        let seq = t.publisher.next_seq;
        t.publisher.next_seq += 1;
        t.publisher.kept_until = Some(now + retain_for);
        let msg = Published::sign(&signer, name, session, seq, payload);
        let first_unacked = t.publisher.unacked.keys().next().copied().unwrap_or(seq);
        t.publisher.unacked.insert(seq, (msg.clone(), now));
        let key = t.key;
        if started {
            self.session = self.session.wrapping_add(1);
        }
        self.out.push(Action::Route {
            key,
            msg: TopicWire::Publish { msg, first_unacked },
        });
        Some(seq)
    }

    /// Whether a new message of `name` can go now (fewer than `max_in_flight` unacknowledged);
    /// `None` if this node cannot hold one more topic.
    pub(crate) fn can_publish(&mut self, name: &str) -> Option<bool> {
        let max = self.config.max_in_flight;
        self.topic_mut(name)
            .map(|t| t.publisher.unacked.len() < max)
    }

    /// The highest number up to which the root acknowledged this node's messages in `name`.
    pub(crate) fn accepted(&self, name: &str) -> u64 {
        self.topics.get(name).map_or(0, |t| {
            let p = &t.publisher;
            p.unacked.keys().next().copied().unwrap_or(p.next_seq) - 1
        })
    }

    /// A message routed to `key` that arrived here, its root, from `origin` (verified by the
    /// overlay).
    pub(crate) fn on_routed(
        &mut self,
        now: Instant,
        origin: NodeId,
        key: Key,
        msg: TopicWire,
        view: &dyn View,
    ) {
        let topic_matches = key == topic_key(msg.topic());
        match msg {
            TopicWire::Publish { msg, first_unacked } => {
                if !topic_matches || origin != msg.stream.publisher || !self.verified(&msg) {
                    self.stats.refused += 1;
                    return;
                }
                self.on_publish(now, msg, first_unacked, view);
            }
            TopicWire::Fetch { topic, cursors } if topic_matches => {
                self.on_fetch(now, origin, &topic, &cursors);
            }
            TopicWire::Ack {
                topic,
                session,
                seq,
            } if key == Key::from(self.me) => self.on_ack(now, &topic, session, seq),
            TopicWire::Replay { topic, msgs, heads } if key == Key::from(self.me) => {
                self.on_replay(now, &topic, msgs, &heads);
            }
            _ => self.stats.refused += 1,
        }
    }

    /// The root has every message of the stream up to `seq`.
    fn on_ack(&mut self, now: Instant, name: &str, session: u64, seq: u64) {
        let max_kept = self.config.max_in_flight * ACKED_KEPT;
        let retry = self.config.retry;
        let Some(t) = self.topics.get_mut(name) else {
            return;
        };
        let p = &mut t.publisher;
        if session != p.session {
            return;
        }
        let rest = p.unacked.split_off(&seq.saturating_add(1));
        for (_, (msg, _)) in std::mem::replace(&mut p.unacked, rest) {
            p.acked.push_back(msg);
        }
        while p.acked.len() > max_kept {
            p.acked.pop_front();
        }
        let first_unacked = p.unacked.keys().next().copied().unwrap_or(p.next_seq);
        let resent_lately = p
            .resent_at
            .is_some_and(|at| now.saturating_duration_since(at) < retry);
        if seq.saturating_add(1) >= first_unacked || resent_lately {
            return;
        }
        // This root stands behind what an earlier root acknowledged: the copies of the last
        // messages were lost with that root. It gets them again (and can then take the rest).
        p.resent_at = Some(now);
        let key = t.key;
        for msg in p.acked.iter().filter(|m| m.seq > seq) {
            self.stats.retries += 1;
            self.out.push(Action::Route {
                key,
                msg: TopicWire::Publish {
                    msg: msg.clone(),
                    first_unacked: seq.saturating_add(1),
                },
            });
        }
    }

    fn verified(&mut self, msg: &Published) -> bool {
        msg.payload.len() <= self.config.max_payload && msg.verify(&mut self.verifier).is_ok()
    }

    /// Marks this node the root of `name` (a routed topic message arrived here).
    fn become_root(&mut self, now: Instant, name: &str) {
        let Some(t) = self.topics.get_mut(name) else {
            return;
        };
        if t.root {
            return;
        }
        tracing::debug!(topic = name, "root of the topic");
        t.root = true;
        t.joining = None;
        t.path.clear();
        if let Some(parent) = t.parent.take() {
            self.out.push(Action::Send {
                to: parent.peer,
                msg: TopicWire::Leave {
                    topic: name.to_owned(),
                },
            });
        }
        t.heads_from_window();
        t.kept_until = Some(now + self.config.retain_for);
        if t.subscribed {
            self.catch_up_from_window(name);
        }
    }

    fn on_publish(&mut self, now: Instant, msg: Published, first_unacked: u64, view: &dyn View) {
        let name = msg.topic.clone();
        let max_publishers = self.config.max_publishers;
        let max_in_flight = self.config.max_in_flight as u64;
        if self.topic_mut(&name).is_none() {
            self.stats.refused += 1;
            return;
        }
        self.become_root(now, &name);
        let Some(t) = self.topics.get_mut(&name) else {
            return;
        };
        let stream = msg.stream;
        if !t.heads.contains_key(&stream) {
            if t.heads.len() >= max_publishers {
                self.stats.refused += 1;
                return;
            }
            // A stream this root has not seen starts where the publisher's unacknowledged
            // messages do: everything before was acknowledged by a root before this one.
            t.heads.insert(stream, first_unacked.clamp(1, msg.seq));
        } else {
            let head = t.heads.get(&stream).copied().unwrap_or(1);
            if first_unacked > head.saturating_add(max_in_flight * ACKED_KEPT as u64) {
                // Behind by more than the publisher keeps of what earlier roots acknowledged:
                // those cannot come again; the stream goes on from where the publisher stands.
                t.heads.insert(stream, first_unacked);
                if let Some(queue) = t.pending.get_mut(&stream) {
                    *queue = queue.split_off(&first_unacked);
                }
            }
        }
        let next = t.heads.get(&stream).copied().unwrap_or(1);
        if msg.seq >= next {
            if msg.seq - next >= max_in_flight {
                // Too far ahead to hold; still acknowledged below, so that a publisher whose
                // earlier root accepted more than this one holds sends those messages again.
                self.stats.refused += 1;
            } else {
                t.pending.entry(stream).or_default().insert(msg.seq, msg);
            }
        }
        loop {
            let Some(t) = self.topics.get_mut(&name) else {
                return;
            };
            let next = t.heads.get(&stream).copied().unwrap_or(1);
            let Some(queue) = t.pending.get_mut(&stream) else {
                break;
            };
            let Some(ready) = queue.remove(&next) else {
                break;
            };
            if queue.is_empty() {
                t.pending.remove(&stream);
            }
            self.commit(now, ready, view);
        }
        let Some(t) = self.topics.get_mut(&name) else {
            return;
        };
        let acked = t.heads.get(&stream).copied().unwrap_or(1) - 1;
        self.out.push(Action::Route {
            key: Key::from(stream.publisher),
            msg: TopicWire::Ack {
                topic: name,
                session: stream.session,
                seq: acked,
            },
        });
    }

    /// The root takes a message in: into the window, down the tree, to the nodes next in line.
    fn commit(&mut self, now: Instant, msg: Published, view: &dyn View) {
        let name = msg.topic.clone();
        let Some(t) = self.topics.get_mut(&name) else {
            return;
        };
        t.heads.insert(msg.stream, msg.seq + 1);
        t.retain(now, msg.clone());
        t.trim_window(now, &self.config);
        t.kept_until = Some(now + self.config.retain_for);
        self.stats.accepted_as_root += 1;
        for to in view.closest_leaves(t.key, REPLICAS) {
            self.out.push(Action::Send {
                to,
                msg: TopicWire::Replica {
                    topic: name.clone(),
                    msgs: vec![msg.clone()],
                    heads: vec![Cursor {
                        stream: msg.stream,
                        next: msg.seq + 1,
                    }],
                },
            });
        }
        self.fan_out(&name, &msg);
        self.receive(now, msg);
    }

    /// Sends a message to every child.
    fn fan_out(&mut self, name: &str, msg: &Published) {
        let Some(t) = self.topics.get(name) else {
            return;
        };
        let children = t.children.len() as u64;
        self.stats.max_fanout = self.stats.max_fanout.max(children);
        self.stats.data_sent += children;
        for (id, child) in &t.children {
            self.out.push(Action::Send {
                to: PeerInfo {
                    id: *id,
                    addr: child.addr,
                },
                msg: TopicWire::Data { msg: msg.clone() },
            });
        }
    }

    /// A message down the tree from `from`, which must be this node's parent.
    pub(crate) fn on_data(&mut self, now: Instant, from: NodeId, msg: Published, view: &dyn View) {
        let name = msg.topic.clone();
        let max_publishers = self.config.max_publishers;
        let Some(t) = self.topics.get_mut(&name) else {
            self.out.push(leave_to(view, from, &name));
            return;
        };
        if !t.parent.as_ref().is_some_and(|p| p.peer.id == from) {
            // A parent this node left, or a node that never was one.
            self.stats.refused += 1;
            if !t.root {
                self.out.push(leave_to(view, from, &name));
            }
            return;
        }
        if !self.verified(&msg) {
            self.stats.refused += 1;
            return;
        }
        let Some(t) = self.topics.get_mut(&name) else {
            return;
        };
        if let Some(parent) = t.parent.as_mut() {
            parent.heard = now;
        }
        let head = Cursor {
            stream: msg.stream,
            next: msg.seq + 1,
        };
        t.merge_heads(&[head], max_publishers);
        self.fan_out(&name, &msg);
        self.receive(now, msg);
    }

    /// The window and heads of a root, for this node to take over with if it becomes root.
    pub(crate) fn on_replica(
        &mut self,
        now: Instant,
        name: &str,
        msgs: Vec<Published>,
        heads: &[Cursor],
    ) {
        let max_publishers = self.config.max_publishers;
        // Messages held already were checked when they came: a root handing its window over
        // again (routing that disagrees for a while about who is root) costs no second check
        // of each signature.
        let held: std::collections::HashSet<(Stream, u64)> = self
            .topics
            .get(name)
            .map(|t| t.window.iter().map(|m| (m.stream, m.seq)).collect())
            .unwrap_or_default();
        let mut checked = Vec::with_capacity(msgs.len());
        for msg in msgs {
            if held.contains(&(msg.stream, msg.seq)) {
                continue;
            }
            if self.verified(&msg) {
                checked.push(msg);
            } else {
                self.stats.refused += 1;
            }
        }
        let retain_for = self.config.retain_for;
        let config = self.config.clone();
        let Some(t) = self.topic_mut(name) else {
            self.stats.refused += 1;
            return;
        };
        // A stream seen here already goes on only as far as the messages held reach (below):
        // heads from a node's data (a root handing over) can run ahead of its window, and a
        // head past a hole would make this node, once root, skip messages it never had.
        let unknown: Vec<Cursor> = heads
            .iter()
            .filter(|h| !t.heads.contains_key(&h.stream))
            .copied()
            .collect();
        t.merge_heads(&unknown, max_publishers);
        let mut added = false;
        for msg in checked {
            let known = t
                .window
                .iter()
                .any(|m| m.stream == msg.stream && m.seq == msg.seq);
            if !known {
                added = true;
                t.retain(now, msg);
            }
        }
        if added {
            // In each stream's order (copies can come out of order); arrival times go with
            // their messages.
            let mut both: Vec<(Published, Instant)> =
                t.window.drain(..).zip(t.window_at.drain(..)).collect();
            both.sort_by_key(|(m, _)| (m.stream, m.seq));
            for (msg, at) in both {
                t.window.push_back(msg);
                t.window_at.push_back(at);
            }
        }
        let held: std::collections::HashSet<(Stream, u64)> =
            t.window.iter().map(|m| (m.stream, m.seq)).collect();
        for (stream, next) in t.heads.iter_mut() {
            while held.contains(&(*stream, *next)) {
                *next += 1;
            }
        }
        t.trim_window(now, &config);
        t.kept_until = Some(now + retain_for);
    }

    fn on_fetch(&mut self, now: Instant, origin: NodeId, name: &str, cursors: &[Cursor]) {
        if self.topics.contains_key(name) {
            self.become_root(now, name);
        }
        let (msgs, heads) = match self.topics.get(name) {
            Some(t) => {
                let wanted = |m: &&Published| {
                    cursors
                        .iter()
                        .find(|c| c.stream == m.stream)
                        .map_or(true, |c| m.seq >= c.next)
                };
                let msgs: Vec<Published> = t.window.iter().filter(wanted).cloned().collect();
                tracing::debug!(topic = name, %origin, msgs = msgs.len(), heads = ?t.heads(),
                    "answering a fetch");
                (msgs, t.heads())
            }
            None => (Vec::new(), Vec::new()),
        };
        // In chunks; the one with the heads, sent last, holds the oldest messages, so that it
        // tells the subscriber where the window starts in each stream it lists.
        let key = Key::from(origin);
        let mut chunks: Vec<Vec<Published>> = vec![Vec::new()];
        let mut bytes = 0;
        for msg in msgs {
            if bytes >= REPLAY_CHUNK {
                chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += msg.size();
            if let Some(chunk) = chunks.last_mut() {
                chunk.push(msg);
            }
        }
        let mut chunks = chunks.into_iter();
        let oldest = chunks.next().unwrap_or_default();
        for msgs in chunks {
            self.out.push(Action::Route {
                key,
                msg: TopicWire::Replay {
                    topic: name.to_owned(),
                    msgs,
                    heads: Vec::new(),
                },
            });
        }
        self.out.push(Action::Route {
            key,
            msg: TopicWire::Replay {
                topic: name.to_owned(),
                msgs: oldest,
                heads,
            },
        });
    }

    fn on_replay(&mut self, now: Instant, name: &str, msgs: Vec<Published>, heads: &[Cursor]) {
        let Some(t) = self.topics.get(name) else {
            return;
        };
        if !t.subscribed {
            return;
        }
        let msgs_empty = msgs.is_empty();
        tracing::debug!(topic = name, msgs = msgs.len(), ?heads, "replay");
        let mut checked: Vec<Published> = Vec::with_capacity(msgs.len());
        for msg in msgs {
            if self.verified(&msg) {
                checked.push(msg);
            } else {
                self.stats.refused += 1;
            }
        }
        checked.sort_by_key(|m| (m.stream, m.seq));
        let max_publishers = self.config.max_publishers;
        let Some(t) = self.topics.get_mut(name) else {
            return;
        };
        if !heads.is_empty() {
            // The chunk with the heads holds the window's oldest messages: a stream whose
            // oldest there is past this subscriber's cursor, and below the root's head, lost
            // the messages between (cut off longer than the window lasts, or in a hole no
            // publisher sends again). The subscriber goes on from the window rather than wait
            // forever for them. Messages at or past the root's head lie beyond a hole that
            // the publisher fills again (a root that took over with some copies missing):
            // nothing is lost there, and the subscriber waits for them.
            let mut oldest: HashMap<Stream, u64> = HashMap::new();
            for msg in &checked {
                oldest.entry(msg.stream).or_insert(msg.seq);
            }
            for (stream, first) in oldest {
                let below_head = heads.iter().any(|h| h.stream == stream && first < h.next);
                if !below_head {
                    continue;
                }
                if let Some(reader) = t.readers.get_mut(&stream) {
                    if let Some(next) = reader.next.filter(|next| *next < first) {
                        tracing::warn!(topic = name, publisher = %stream.publisher, missed = first - next,
                            "messages older than the root's window are lost to this subscriber");
                        self.stats.lost += first - next;
                        reader.next = Some(first);
                        reader.held = reader.held.split_off(&first);
                    }
                }
            }
        }
        // A stream this subscriber had no place in starts at the oldest message replayed, or
        // at the root's head when the window holds none of it.
        for msg in &checked {
            let reader = t.readers.entry(msg.stream).or_default();
            if reader.next.is_none() {
                reader.next = Some(msg.seq);
            }
        }
        // The last chunk of a replay carries the root's heads; a root with no stream yet
        // sends one chunk with neither heads nor messages (every earlier chunk holds
        // messages). Either way the replay is complete.
        if !heads.is_empty() || msgs_empty {
            t.replayed = true;
        }
        if !heads.is_empty() {
            for head in heads {
                if t.readers.len() >= max_publishers && !t.readers.contains_key(&head.stream) {
                    continue;
                }
                let reader = t.readers.entry(head.stream).or_default();
                if reader.next.is_none() {
                    reader.next = Some(reader.held.keys().next().copied().unwrap_or(head.next));
                }
            }
            t.merge_heads(heads, max_publishers);
        }
        for msg in checked {
            self.receive(now, msg);
        }
        self.release_held(now, name);
    }

    /// A subscriber delivers what the root's window holds past its cursors (it became root).
    pub(super) fn catch_up_from_window(&mut self, name: &str) {
        let Some(t) = self.topics.get_mut(name) else {
            return;
        };
        t.replayed = true;
        let msgs: Vec<Published> = t.window.iter().cloned().collect();
        for msg in msgs {
            self.receive(Instant::now(), msg);
        }
    }

    /// Asks the root for what this subscriber missed.
    pub(super) fn fetch(&mut self, now: Instant, name: &str) {
        let Some(t) = self.topics.get_mut(name) else {
            return;
        };
        t.fetched_at = Some(now);
        self.stats.fetches += 1;
        tracing::debug!(topic = name, cursors = ?t.cursors(), heads = ?t.heads(), "fetching");
        let msg = TopicWire::Fetch {
            topic: name.to_owned(),
            cursors: t.cursors(),
        };
        let key = t.key;
        self.out.push(Action::Route { key, msg });
    }

    /// A subscriber takes a message: delivered if it is the next of its stream (with any held
    /// ones it unblocks), held if it comes past a gap, dropped if already delivered.
    fn receive(&mut self, now: Instant, msg: Published) {
        let name = msg.topic.clone();
        let max_publishers = self.config.max_publishers;
        let max_held = self.config.max_in_flight.max(1) * 4;
        let Some(t) = self.topics.get_mut(&name) else {
            return;
        };
        if !t.subscribed {
            return;
        }
        if t.readers.len() >= max_publishers && !t.readers.contains_key(&msg.stream) {
            self.stats.refused += 1;
            return;
        }
        let reader = t.readers.entry(msg.stream).or_default();
        if reader.next.is_none() && msg.seq == 1 {
            reader.next = Some(1);
        }
        match reader.next {
            Some(next) if msg.seq < next => self.stats.duplicates += 1,
            _ if reader.held.contains_key(&msg.seq) => self.stats.duplicates += 1,
            // Full: the message is taken only if it is nearer the gap than the furthest one
            // held, which makes room for it (that one comes again with the next fetch). So the
            // messages that fill the gap always get in, and the bound holds.
            _ if reader.held.len() >= max_held => {
                match reader.held.last_key_value().map(|(seq, _)| *seq) {
                    Some(furthest) if msg.seq < furthest => {
                        reader.held.remove(&furthest);
                        reader.held.insert(msg.seq, msg);
                    }
                    _ => self.stats.refused += 1,
                }
            }
            _ => {
                reader.held.insert(msg.seq, msg);
                if t.lagging_since.is_none() {
                    t.lagging_since = Some(now);
                }
            }
        }
        self.release_held(now, &name);
    }

    /// Delivers every held message that is next in its stream.
    fn release_held(&mut self, _now: Instant, name: &str) {
        let Some(t) = self.topics.get_mut(name) else {
            return;
        };
        let mut progress = false;
        for (stream, reader) in &mut t.readers {
            let Some(mut next) = reader.next else {
                continue;
            };
            while let Some(msg) = reader.held.remove(&next) {
                next += 1;
                progress = true;
                self.stats.delivered += 1;
                self.delivered.push_back(TopicMessage {
                    topic: name.to_owned(),
                    from: stream.publisher,
                    seq: msg.seq,
                    payload: msg.payload,
                });
            }
            reader.next = Some(next);
        }
        if progress {
            // Messages still flow: a gap is only worth a fetch if it stays open while
            // nothing arrives.
            t.lagging_since = None;
        }
    }

    /// Publisher retries, and a subscriber's fetches when it lags (a gap held too long, or a
    /// head ahead of its cursor).
    pub(crate) fn tick_flow(&mut self, now: Instant) {
        let retry = self.config.retry;
        let gap_wait = self.config.gap_wait;
        let names: Vec<String> = self.topics.keys().cloned().collect();
        for name in names {
            let Some(t) = self.topics.get_mut(&name) else {
                continue;
            };
            let first_unacked = t.publisher.unacked.keys().next().copied();
            for (msg, sent) in t.publisher.unacked.values_mut() {
                if now.saturating_duration_since(*sent) >= retry {
                    *sent = now;
                    self.stats.retries += 1;
                    self.out.push(Action::Route {
                        key: t.key,
                        msg: TopicWire::Publish {
                            msg: msg.clone(),
                            first_unacked: first_unacked.unwrap_or(msg.seq),
                        },
                    });
                }
            }
            if !t.subscribed {
                continue;
            }
            if t.root {
                // A subscriber that became root (through routing, or a take-over) may lag
                // behind its own window (copies of messages it never had as data): it
                // delivers from there.
                let due = t
                    .fetched_at
                    .map_or(true, |at| now.saturating_duration_since(at) >= gap_wait);
                if due && lags(t) {
                    t.fetched_at = Some(now);
                    start_at_held(&mut t.readers);
                    self.catch_up_from_window(&name);
                    self.release_held(now, &name);
                }
                continue;
            }
            if lags(t) {
                let since = *t.lagging_since.get_or_insert(now);
                let fetched_long_ago = t
                    .fetched_at
                    .map_or(true, |at| now.saturating_duration_since(at) >= gap_wait);
                if now.saturating_duration_since(since) >= gap_wait && fetched_long_ago {
                    // Without a replay yet (the fetch or its answer was lost, or the root
                    // with it) the subscriber asks again rather than start a stream at the
                    // first message it holds: messages come out of order, and an earlier
                    // one may still be on its way.
                    self.fetch(now, &name);
                }
            } else {
                t.lagging_since = None;
            }
        }
    }
}

/// Whether a subscriber holds messages past a gap, or knows of messages it has not had.
fn lags(t: &Topic) -> bool {
    let behind = t.heads.iter().any(|(stream, head)| {
        t.readers
            .get(stream)
            .map_or(t.replayed, |r| r.next.is_some_and(|next| next < *head))
    });
    behind || t.readers.values().any(|r| !r.held.is_empty()) || (t.parent.is_some() && !t.replayed)
}

fn start_at_held(readers: &mut HashMap<Stream, Reader>) {
    for reader in readers.values_mut() {
        if reader.next.is_none() {
            reader.next = reader.held.keys().next().copied();
        }
    }
}
