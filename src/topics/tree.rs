//! The state of one node's topics and its place in each topic's tree: parent, children,
//! whether it is the root, and the joins, refreshes and repairs that keep the tree whole.
//! What flows along the tree (publishes, acknowledgements, replays) is in `flow.rs`.
//!
//! Handlers take the time as an argument, ask the overlay through [`View`] and queue
//! [`Action`]s; they never do IO.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::message::{Cursor, Published, Stream, TopicWire, MAX_CURSORS, MAX_PATH};
use super::{topic_key, TopicMessage, TopicsConfig};
use crate::id::{Key, NodeId};
use crate::identity::{OriginSigner, OriginVerifier};
use crate::pastry::PeerInfo;

/// How many times a join may be pushed down to a child before it is refused.
const MAX_REDIRECTS: u8 = 8;

/// What the topics layer asks of the overlay.
pub(crate) trait View {
    /// The next hop for `key`: `Some(None)` when this node is its root, `None` when this node
    /// is not part of an overlay.
    fn next_hop(&self, key: Key) -> Option<Option<PeerInfo>>;
    /// Up to `n` leaf-set members, closest to `key` first.
    fn closest_leaves(&self, key: Key, n: usize) -> Vec<PeerInfo>;
    /// The address of a peer this node knows or has a link to.
    fn address_of(&self, id: NodeId) -> Option<SocketAddr>;
}

/// What a handler asks the service to do.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send directly to a peer.
    Send { to: PeerInfo, msg: TopicWire },
    /// Route to a key.
    Route { key: Key, msg: TopicWire },
    /// Tell the overlay a peer seems gone (it probes it and routes around it meanwhile).
    Suspect(NodeId),
}

/// Counters of a node's topics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TopicStats {
    /// Messages this node sent down a tree (one per child per message).
    pub data_sent: u64,
    /// The most children this node sent one message to.
    pub max_fanout: u64,
    /// Messages delivered to this node as a subscriber.
    pub delivered: u64,
    /// Second copies a subscriber dropped.
    pub duplicates: u64,
    /// Messages accepted here as a topic's root.
    pub accepted_as_root: u64,
    /// Publishes sent again (no acknowledgement in time).
    pub retries: u64,
    /// Fetches of missed messages sent to a root.
    pub fetches: u64,
    /// Joins sent (first joins, repairs and refreshes).
    pub joins: u64,
    /// Times this node lost its parent in a tree and joined again.
    pub repairs: u64,
    /// Joins pushed down to a child because this node had `max_children` already.
    pub redirects: u64,
    /// Messages refused: bad signature, a bound exceeded, a sender not entitled to send it.
    pub refused: u64,
    /// Topic messages dropped because the application did not take them in time
    /// ([`TopicsConfig::delivery_queue`]).
    pub dropped: u64,
    /// Messages a subscriber never got: the root's window no longer held them when it asked
    /// (it was cut off longer than the window lasts, [`TopicsConfig::repair_window`]).
    pub lost: u64,
    /// Sends not made because 4,096 were already in flight (the
    /// trees' repairs make up for them).
    pub sends_dropped: u64,
}

#[derive(Debug)]
pub(super) struct Parent {
    pub(super) peer: PeerInfo,
    pub(super) heard: Instant,
    pub(super) asked: Instant,
}

#[derive(Debug)]
pub(super) struct Child {
    pub(super) addr: SocketAddr,
    pub(super) heard: Instant,
}

/// A subscriber's place in one stream.
#[derive(Debug, Default)]
pub(super) struct Reader {
    /// The next sequence number to deliver; `None` until this subscriber knows where the
    /// stream starts for it (a first message numbered 1, or the root's replay).
    pub(super) next: Option<u64>,
    /// Messages past a gap, waiting for it to fill.
    pub(super) held: BTreeMap<u64, Published>,
}

#[derive(Debug)]
pub(super) struct Publisher {
    /// The stream's session: fresh for each run of numbers, so that numbers starting again at
    /// 1 (after this state was forgotten) are a new stream to subscribers, not old copies.
    pub(super) session: u64,
    pub(super) next_seq: u64,
    pub(super) unacked: BTreeMap<u64, (Published, Instant)>,
    /// The last `max_in_flight` acknowledged messages: a new root that lacks some of them
    /// (its copies were lost with the root that acknowledged them) gets them again.
    pub(super) acked: VecDeque<Published>,
    /// When acknowledged messages were last sent again.
    pub(super) resent_at: Option<Instant>,
    /// Until when the numbers are kept after the last message ([`TopicsConfig::retain_for`],
    /// as long as the root keeps its window).
    pub(super) kept_until: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct Topic {
    pub(super) key: Key,
    pub(super) subscribed: bool,
    pub(super) root: bool,
    pub(super) parent: Option<Parent>,
    pub(super) joining: Option<(PeerInfo, Instant)>,
    /// A parent that said it leaves: not joined again until the instant.
    pub(super) avoid: Option<(NodeId, Instant)>,
    pub(super) children: BTreeMap<NodeId, Child>,
    /// From the root to this node's parent.
    pub(super) path: Vec<NodeId>,
    /// Each stream's next sequence number, as far as this node knows (the root's are exact).
    pub(super) heads: HashMap<Stream, u64>,
    pub(super) window: VecDeque<Published>,
    /// When each message of `window` came in here (same order).
    pub(super) window_at: VecDeque<Instant>,
    pub(super) window_bytes: usize,
    /// At the root: messages past a gap in their stream, until the publisher fills it.
    pub(super) pending: HashMap<Stream, BTreeMap<u64, Published>>,
    pub(super) readers: HashMap<Stream, Reader>,
    /// Whether a replay from the root came since this node subscribed or re-attached.
    pub(super) replayed: bool,
    pub(super) fetched_at: Option<Instant>,
    pub(super) lagging_since: Option<Instant>,
    pub(super) publisher: Publisher,
    /// Until when a window nobody subscribes to is kept (a root's, or a replica's).
    pub(super) kept_until: Option<Instant>,
    next_redirect: usize,
    /// How far below a stream's head a new root looks for holes in its window
    /// ([`super::flow::resend_span`]).
    resend_span: u64,
}

impl Topic {
    fn new(key: Key, resend_span: u64) -> Self {
        Self {
            key,
            subscribed: false,
            root: false,
            parent: None,
            joining: None,
            avoid: None,
            children: BTreeMap::new(),
            path: Vec::new(),
            heads: HashMap::new(),
            window: VecDeque::new(),
            window_at: VecDeque::new(),
            window_bytes: 0,
            pending: HashMap::new(),
            readers: HashMap::new(),
            replayed: false,
            fetched_at: None,
            lagging_since: None,
            publisher: Publisher {
                session: 0,
                next_seq: 1,
                unacked: BTreeMap::new(),
                acked: VecDeque::new(),
                resent_at: None,
                kept_until: None,
            },
            kept_until: None,
            next_redirect: 0,
            resend_span,
        }
    }

    /// Whether this node must be in the tree.
    pub(super) fn in_tree(&self) -> bool {
        self.subscribed || !self.children.is_empty()
    }

    /// Whether nothing is left to keep: not in the tree, nothing to publish, no window (or
    /// one kept long enough).
    fn idle(&self, now: Instant) -> bool {
        !self.in_tree()
            && self.publisher.unacked.is_empty()
            && self.publisher.kept_until.map_or(true, |until| now >= until)
            && (self.window.is_empty() || self.kept_until.map_or(true, |until| now >= until))
    }

    pub(super) fn cursors(&self) -> Vec<Cursor> {
        let mut cursors: Vec<Cursor> = self
            .readers
            .iter()
            .filter_map(|(stream, r)| {
                r.next.map(|next| Cursor {
                    stream: *stream,
                    next,
                })
            })
            .collect();
        cursors.truncate(MAX_CURSORS);
        cursors
    }

    pub(super) fn heads(&self) -> Vec<Cursor> {
        let mut heads: Vec<Cursor> = self
            .heads
            .iter()
            .map(|(stream, next)| Cursor {
                stream: *stream,
                next: *next,
            })
            .collect();
        heads.truncate(MAX_CURSORS);
        heads
    }

    /// Takes `msg` into the window.
    pub(super) fn retain(&mut self, now: Instant, msg: Published) {
        self.window_bytes += msg.size();
        self.window.push_back(msg);
        self.window_at.push_back(now);
    }

    /// Lets the oldest messages go: past [`TopicsConfig::max_retained_bytes`] always, past
    /// [`TopicsConfig::max_retained`] once they are older than
    /// [`TopicsConfig::repair_window`] (a subtree cut off by a failure fetches what it missed
    /// from here once it is attached again).
    pub(super) fn trim_window(&mut self, now: Instant, config: &TopicsConfig) {
        loop {
            let old_enough = self
                .window_at
                .front()
                .is_some_and(|at| now.saturating_duration_since(*at) >= config.repair_window);
            let over_count = self.window.len() > config.max_retained && old_enough;
            if !over_count && self.window_bytes <= config.max_retained_bytes {
                break;
            }
            self.window_at.pop_front();
            match self.window.pop_front() {
                Some(old) => self.window_bytes = self.window_bytes.saturating_sub(old.size()),
                None => break,
            }
        }
    }

    /// Takes the heads back to what the window holds, for a node that becomes root: a
    /// subscriber's heads are what its parents told it, a root's are what it accepted. Each
    /// stream goes on only as far as the window holds it without a hole within
    /// [`Topic::resend_span`] below its head (the publisher sends those messages again), and one the window holds nothing
    /// of starts where the publisher says.
    pub(super) fn heads_from_window(&mut self) {
        let span = self.resend_span;
        let held: std::collections::HashSet<(Stream, u64)> =
            self.window.iter().map(|m| (m.stream, m.seq)).collect();
        let mut first: HashMap<Stream, u64> = HashMap::new();
        for m in &self.window {
            let seq = first.entry(m.stream).or_insert(m.seq);
            *seq = (*seq).min(m.seq);
        }
        self.heads.retain(|stream, head| {
            let Some(start) = first.get(stream) else {
                return false;
            };
            let mut reach = (*start).max(head.saturating_sub(span));
            while held.contains(&(*stream, reach)) {
                reach += 1;
            }
            *head = (*head).min(reach);
            true
        });
    }

    /// Raises the known heads (never lowers them); new streams only while there is room.
    pub(super) fn merge_heads(&mut self, heads: &[Cursor], max: usize) {
        for head in heads {
            let room = self.heads.len() < max;
            match self.heads.get_mut(&head.stream) {
                Some(next) => *next = (*next).max(head.next),
                None if room => {
                    self.heads.insert(head.stream, head.next);
                }
                None => {}
            }
        }
    }
}

/// Every topic this node takes part in.
pub(crate) struct Tree {
    pub(super) me: NodeId,
    pub(super) config: TopicsConfig,
    pub(super) topics: HashMap<String, Topic>,
    pub(super) signer: OriginSigner,
    pub(super) verifier: OriginVerifier,
    /// The session the next new publisher stream takes (random at start, then counting): a
    /// restarted publisher's numbers start afresh, and so do a forgotten topic's.
    pub(super) session: u64,
    pub(crate) out: Vec<Action>,
    pub(crate) delivered: VecDeque<TopicMessage>,
    pub(crate) stats: TopicStats,
}

impl Tree {
    pub(crate) fn new(config: TopicsConfig, signer: OriginSigner, session: u64) -> Self {
        Self {
            me: signer.node_id(),
            config,
            topics: HashMap::new(),
            signer,
            verifier: OriginVerifier::new(),
            session,
            out: Vec::new(),
            delivered: VecDeque::new(),
            stats: TopicStats::default(),
        }
    }

    /// Whether the state of one more topic would fit.
    pub(super) fn has_room_for(&self, name: &str) -> bool {
        self.topics.contains_key(name) || self.topics.len() < self.config.max_topics
    }

    /// The topic's state, made if there is room for one more.
    pub(super) fn topic_mut(&mut self, name: &str) -> Option<&mut Topic> {
        if !self.has_room_for(name) {
            return None;
        }
        Some(self.topics.entry(name.to_owned()).or_insert_with(|| {
            Topic::new(
                topic_key(name),
                super::flow::resend_span(self.config.max_in_flight),
            )
        }))
    }

    /// Topics held (as member, root, replica or publisher).
    pub(crate) fn len(&self) -> usize {
        self.topics.len()
    }

    /// The topics this node subscribes to.
    pub(crate) fn subscriptions(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, t)| t.subscribed)
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// This node's place in `name`'s tree: its children, whether it is the root, its parent
    /// and its depth (hops to the root).
    pub(crate) fn place(&self, name: &str) -> Option<super::TopicPlace> {
        self.topics.get(name).map(|t| super::TopicPlace {
            subscribed: t.subscribed,
            root: t.root,
            parent: t.parent.as_ref().map(|p| p.peer.id),
            children: t.children.keys().copied().collect(),
            depth: if t.root { 0 } else { t.path.len() },
            root_node: match t.root {
                true => Some(self.me),
                false => t.path.first().copied(),
            },
        })
    }

    pub(crate) fn subscribe(&mut self, now: Instant, name: &str, view: &dyn View) -> bool {
        let me = self.me;
        if !self.has_room_for(name) {
            return false;
        }
        let t = self.topics.entry(name.to_owned()).or_insert_with(|| {
            Topic::new(
                topic_key(name),
                super::flow::resend_span(self.config.max_in_flight),
            )
        });
        if t.subscribed {
            return true;
        }
        t.subscribed = true;
        t.replayed = false;
        let attached = t.parent.is_some();
        if !attached && t.joining.is_none() && !t.root {
            start_join(&mut self.out, &mut self.stats, now, me, t, name, view);
        }
        let (root, attached) = self
            .topics
            .get(name)
            .map_or((false, false), |t| (t.root, t.parent.is_some()));
        if root {
            self.catch_up_from_window(name);
        } else if attached {
            self.fetch(now, name);
        }
        true
    }

    pub(crate) fn unsubscribe(&mut self, now: Instant, name: &str) {
        if let Some(t) = self.topics.get_mut(name) {
            t.subscribed = false;
            t.readers.clear();
        }
        self.drop_if_idle(now, name);
    }

    /// Forgets a topic this node has no more part in, telling its parent.
    fn drop_if_idle(&mut self, now: Instant, name: &str) {
        let Some(t) = self.topics.get(name) else {
            return;
        };
        if !t.idle(now) {
            return;
        }
        if let Some(parent) = &t.parent {
            let msg = TopicWire::Leave {
                topic: name.to_owned(),
            };
            self.out.push(Action::Send {
                to: parent.peer,
                msg,
            });
        }
        self.topics.remove(name);
    }

    /// A tree message sent directly by `from`.
    pub(crate) fn on_tree(&mut self, now: Instant, from: NodeId, msg: TopicWire, view: &dyn View) {
        match msg {
            TopicWire::Join { topic, redirects } => {
                self.on_join(now, from, &topic, redirects, view);
            }
            TopicWire::Accepted { topic, path, heads } => {
                self.on_accepted(now, from, &topic, path, &heads, view);
            }
            TopicWire::Redirect {
                topic,
                to,
                addr,
                redirects,
            } => {
                let Some(t) = self.topics.get_mut(&topic) else {
                    return;
                };
                if t.joining.is_some_and(|(p, _)| p.id == from) && to != self.me {
                    let peer = PeerInfo { id: to, addr };
                    t.joining = Some((peer, now));
                    self.stats.joins += 1;
                    self.out.push(Action::Send {
                        to: peer,
                        msg: TopicWire::Join { topic, redirects },
                    });
                }
            }
            TopicWire::Refused { topic, reason } => {
                if let Some(t) = self.topics.get_mut(&topic) {
                    if t.joining.is_some_and(|(p, _)| p.id == from) {
                        tracing::debug!(%from, %topic, %reason, "join refused");
                        // Tried again at the next tick that finds no parent.
                        t.joining = None;
                        t.avoid = Some((from, now + self.config.parent_timeout));
                    }
                }
            }
            TopicWire::Leave { topic } => self.on_leave(now, from, &topic, view),
            _ => {}
        }
    }

    fn on_join(&mut self, now: Instant, from: NodeId, name: &str, redirects: u8, view: &dyn View) {
        let me = self.me;
        let max_children = self.config.max_children;
        let Some(addr) = view.address_of(from) else {
            return;
        };
        let child_peer = PeerInfo { id: from, addr };
        if !self.has_room_for(name) {
            self.stats.refused += 1;
            let reason = format!("this node holds {} topics already", self.config.max_topics);
            let msg = TopicWire::Refused {
                topic: name.to_owned(),
                reason,
            };
            self.out.push(Action::Send {
                to: child_peer,
                msg,
            });
            return;
        }
        let t = self.topics.entry(name.to_owned()).or_insert_with(|| {
            Topic::new(
                topic_key(name),
                super::flow::resend_span(self.config.max_in_flight),
            )
        });
        if t.parent.as_ref().is_some_and(|p| p.peer.id == from) || t.path.contains(&from) {
            // An ancestor asks to be a child (routing changed under the tree): taking it would
            // close a loop, so this node lets go of its parent and joins anew (through
            // routing, which now leads closer to the root than the ancestor).
            t.parent = None;
            t.path.clear();
        }
        if !t.children.contains_key(&from) && t.children.len() >= max_children {
            let targets: Vec<(NodeId, SocketAddr)> = t
                .children
                .iter()
                .filter(|(id, _)| **id != from)
                .map(|(id, c)| (*id, c.addr))
                .collect();
            let msg = if redirects >= MAX_REDIRECTS || targets.is_empty() {
                TopicWire::Refused {
                    topic: name.to_owned(),
                    reason: format!("pushed down {redirects} times; every parent is full"),
                }
            } else {
                // The bottleneck remover: the newcomer goes one level down, under the
                // children in turn.
                let (to, addr) = targets[t.next_redirect % targets.len()];
                t.next_redirect = t.next_redirect.wrapping_add(1);
                self.stats.redirects += 1;
                TopicWire::Redirect {
                    topic: name.to_owned(),
                    to,
                    addr,
                    redirects: redirects.saturating_add(1),
                }
            };
            self.out.push(Action::Send {
                to: child_peer,
                msg,
            });
            return;
        }
        t.children.insert(from, Child { addr, heard: now });
        let mut path = if t.root { Vec::new() } else { t.path.clone() };
        path.push(me);
        path.truncate(MAX_PATH);
        let msg = TopicWire::Accepted {
            topic: name.to_owned(),
            path,
            heads: t.heads(),
        };
        self.out.push(Action::Send {
            to: child_peer,
            msg,
        });
        if !t.root && t.parent.is_none() && t.joining.is_none() {
            start_join(&mut self.out, &mut self.stats, now, me, t, name, view);
        }
    }

    fn on_accepted(
        &mut self,
        now: Instant,
        from: NodeId,
        name: &str,
        path: Vec<NodeId>,
        heads: &[Cursor],
        view: &dyn View,
    ) {
        let me = self.me;
        let max_publishers = self.config.max_publishers;
        let Some(t) = self.topics.get_mut(name) else {
            // Taken into a tree this node has left: cut the link.
            self.out.push(leave_to(view, from, name));
            return;
        };
        let from_parent = t.parent.as_ref().is_some_and(|p| p.peer.id == from);
        let from_joined = t.joining.is_some_and(|(p, _)| p.id == from);
        if !from_parent && !from_joined {
            self.out.push(leave_to(view, from, name));
            return;
        }
        if path.contains(&me) || t.children.contains_key(&from) {
            // This node is its own ancestor: the tree has a loop. Cut it here and join
            // anew once routing has moved on.
            tracing::debug!(%from, topic = name, "loop in a topic tree; joining anew");
            self.out.push(leave_to(view, from, name));
            t.parent = None;
            t.joining = None;
            t.avoid = Some((from, now + self.config.heartbeat));
            return;
        }
        if from_joined {
            if let Some((peer, _)) = t.joining.take() {
                tracing::debug!(topic = name, parent = %peer.id, ?heads, "attached");
                t.parent = Some(Parent {
                    peer,
                    heard: now,
                    asked: now,
                });
                t.replayed = false;
            }
        } else if let Some(parent) = t.parent.as_mut() {
            parent.heard = now;
        }
        t.path = path;
        t.merge_heads(heads, max_publishers);
        if from_joined && t.subscribed {
            self.fetch(now, name);
        }
    }

    fn on_leave(&mut self, now: Instant, from: NodeId, name: &str, view: &dyn View) {
        let me = self.me;
        let Some(t) = self.topics.get_mut(name) else {
            return;
        };
        t.children.remove(&from);
        let lost_parent = t.parent.as_ref().is_some_and(|p| p.peer.id == from)
            || t.joining.is_some_and(|(p, _)| p.id == from);
        if lost_parent {
            // The parent leaves the overlay (or the tree): join again at once, around it.
            t.parent = None;
            t.joining = None;
            t.avoid = Some((from, now + self.config.parent_timeout));
            self.stats.repairs += 1;
            if t.in_tree() && !t.root {
                start_join(&mut self.out, &mut self.stats, now, me, t, name, view);
            }
        }
        self.drop_if_idle(now, name);
    }

    /// The overlay says `peer` left (or failed): repair every tree it held a place in.
    pub(crate) fn peer_gone(&mut self, now: Instant, peer: NodeId, view: &dyn View) {
        let me = self.me;
        let names: Vec<String> = self.topics.keys().cloned().collect();
        for name in names {
            let Some(t) = self.topics.get_mut(&name) else {
                continue;
            };
            t.children.remove(&peer);
            let lost = t.parent.as_ref().is_some_and(|p| p.peer.id == peer)
                || t.joining.is_some_and(|(p, _)| p.id == peer);
            if lost {
                tracing::debug!(topic = %name, %peer, "parent gone");
                t.parent = None;
                t.joining = None;
                t.avoid = Some((peer, now + self.config.parent_timeout));
                self.stats.repairs += 1;
                if t.in_tree() && !t.root {
                    start_join(&mut self.out, &mut self.stats, now, me, t, &name, view);
                }
            }
            self.drop_if_idle(now, &name);
        }
    }

    /// Keeps the trees whole: refreshes parents, notices silent ones, moves a root whose key
    /// now belongs to a closer node, forgets silent children.
    pub(crate) fn tick_tree(&mut self, now: Instant, view: &dyn View) {
        let me = self.me;
        let heartbeat = self.config.heartbeat;
        let timeout = self.config.parent_timeout;
        let names: Vec<String> = self.topics.keys().cloned().collect();
        for name in names {
            let Some(t) = self.topics.get_mut(&name) else {
                continue;
            };
            t.children
                .retain(|_, c| now.saturating_duration_since(c.heard) < timeout * 2);
            if t.root {
                if let Some(Some(closer)) = view.next_hop(t.key) {
                    // A node closer to the key joined: it is the root now, with this node's
                    // window; this node joins it.
                    tracing::debug!(topic = %name, to = %closer.id, "handing the root over");
                    self.out.push(Action::Send {
                        to: closer,
                        msg: TopicWire::Replica {
                            topic: name.clone(),
                            msgs: t.window.iter().cloned().collect(),
                            heads: t.heads(),
                        },
                    });
                    t.root = false;
                }
            }
            if !t.in_tree() || t.root {
                continue;
            }
            if let Some(parent) = t.parent.as_mut() {
                if now.saturating_duration_since(parent.heard) >= timeout {
                    tracing::debug!(topic = %name, parent = %parent.peer.id, "parent silent");
                    self.out.push(Action::Suspect(parent.peer.id));
                    t.avoid = Some((parent.peer.id, now + timeout));
                    t.parent = None;
                    self.stats.repairs += 1;
                    start_join(&mut self.out, &mut self.stats, now, me, t, &name, view);
                } else if now.saturating_duration_since(parent.asked) >= heartbeat {
                    parent.asked = now;
                    self.stats.joins += 1;
                    self.out.push(Action::Send {
                        to: parent.peer,
                        msg: TopicWire::Join {
                            topic: name.clone(),
                            redirects: 0,
                        },
                    });
                }
            } else if let Some((peer, sent)) = t.joining {
                if now.saturating_duration_since(sent) >= timeout {
                    self.out.push(Action::Suspect(peer.id));
                    t.joining = None;
                    t.avoid = Some((peer.id, now + timeout));
                    start_join(&mut self.out, &mut self.stats, now, me, t, &name, view);
                }
            } else {
                start_join(&mut self.out, &mut self.stats, now, me, t, &name, view);
            }
        }
        let names: Vec<String> = self.topics.keys().cloned().collect();
        for name in names {
            self.drop_if_idle(now, &name);
        }
    }

    /// A send to `peer` failed: if it was a parent (or the node joined), look for another.
    pub(crate) fn send_failed(&mut self, now: Instant, peer: NodeId, view: &dyn View) {
        self.peer_gone(now, peer, view);
    }

    /// This node leaves the overlay: its children join elsewhere at once, its parents drop
    /// it, and the topics it is root of go, with their windows, to the nodes next in line.
    pub(crate) fn leave_all(&mut self, view: &dyn View) {
        for (name, t) in &self.topics {
            let leave = || TopicWire::Leave {
                topic: name.clone(),
            };
            for (id, child) in &t.children {
                let to = PeerInfo {
                    id: *id,
                    addr: child.addr,
                };
                self.out.push(Action::Send { to, msg: leave() });
            }
            if let Some(parent) = &t.parent {
                let to = parent.peer;
                self.out.push(Action::Send { to, msg: leave() });
            }
            if t.root && !t.window.is_empty() {
                for to in view.closest_leaves(t.key, super::REPLICAS) {
                    self.out.push(Action::Send {
                        to,
                        msg: TopicWire::Replica {
                            topic: name.clone(),
                            msgs: t.window.iter().cloned().collect(),
                            heads: t.heads(),
                        },
                    });
                }
            }
        }
    }
}

/// A [`TopicWire::Leave`] to `to`, wherever it is.
pub(super) fn leave_to(view: &dyn View, to: NodeId, name: &str) -> Action {
    let addr = view
        .address_of(to)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    Action::Send {
        to: PeerInfo { id: to, addr },
        msg: TopicWire::Leave {
            topic: name.to_owned(),
        },
    }
}

/// Joins `t`'s tree through its next hop towards the root (or becomes the root).
pub(super) fn start_join(
    out: &mut Vec<Action>,
    stats: &mut TopicStats,
    now: Instant,
    me: NodeId,
    t: &mut Topic,
    name: &str,
    view: &dyn View,
) {
    let Some(hop) = view.next_hop(t.key) else {
        return;
    };
    let Some(peer) = hop else {
        if !t.root {
            t.heads_from_window();
        }
        t.root = true;
        t.parent = None;
        t.joining = None;
        t.path.clear();
        return;
    };
    if peer.id == me {
        return;
    }
    if t.avoid
        .is_some_and(|(id, until)| id == peer.id && now < until)
    {
        // Routing still leads to a parent that left or went silent: wait for the overlay to
        // notice (told so, it probes the peer and routes around it meanwhile).
        out.push(Action::Suspect(peer.id));
        return;
    }
    if t.children.remove(&peer.id).is_some() {
        // The next hop towards the root is this node's own child: let it go first, so that
        // it joins through routing (which leads it closer to the root, never back here).
        out.push(Action::Send {
            to: peer,
            msg: TopicWire::Leave {
                topic: name.to_owned(),
            },
        });
    }
    stats.joins += 1;
    tracing::debug!(topic = name, to = %peer.id, "joining");
    t.joining = Some((peer, now));
    out.push(Action::Send {
        to: peer,
        msg: TopicWire::Join {
            topic: name.to_owned(),
            redirects: 0,
        },
    });
}
