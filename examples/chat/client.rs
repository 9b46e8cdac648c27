//! One user's chat program, as a state machine: the rooms the user is in, the messages they
//! write, and the rooms this node hosts because it is their root.
//!
//! Inputs come in as method calls with the current time (a typed line, a routed delivery, a
//! direct message, a timer tick); effects go out as [`Action`]s that `main.rs` carries out
//! with the Wendy node. Keeping the network out of this file keeps the chat rules in one
//! readable place.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use wendy::id::{Key, NodeId};

use crate::protocol::{room_key, Change, MsgId, Post, Wire, MAX_LINE, MAX_NAME, MAX_ROOMS};
use crate::room::{Recent, RoomHost, MEMBER_TTL, REFRESH};

/// A writer sends a post again if no root acknowledged it within this time.
const POST_RETRY: Duration = Duration::from_secs(1);
/// ... and gives up (telling the user) after this long.
const POST_GIVE_UP: Duration = Duration::from_secs(30);

/// Something for `main.rs` to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Route `msg` to the live node closest to `key`.
    Route {
        /// The destination key (a room's key).
        key: Key,
        /// The message.
        msg: Wire,
    },
    /// Send `msg` directly to the node `to`.
    Send {
        /// The destination node.
        to: NodeId,
        /// The message.
        msg: Wire,
    },
    /// Show a line to the user.
    Print(String),
}

/// What the program should do after a typed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// The user typed `/quit`.
    Quit,
}

/// A room the user is in.
struct Joined {
    /// Whether the root has welcomed our subscription yet.
    welcomed: bool,
    /// When to subscribe again.
    next_refresh: Instant,
}

/// A room's state copied here by its root, used if this node becomes the root.
struct Standby {
    received: Instant,
    members: Vec<(NodeId, String)>,
    history: Vec<Post>,
}

/// A post sent to its room's root and not yet acknowledged.
struct InFlight {
    post: Post,
    first_sent: Instant,
    last_sent: Instant,
}

/// The state of one user's chat program.
pub struct Client {
    me: NodeId,
    name: String,
    incarnation: u64,
    next_seq: u64,
    /// Rooms the user is in; typed lines go to `current`.
    joined: BTreeMap<String, Joined>,
    current: Option<String>,
    /// The user's posts, sent one at a time so that each room shows them in the order typed.
    outbox: VecDeque<Post>,
    in_flight: Option<InFlight>,
    /// Messages already shown (retries and replays arrive more than once).
    shown: Recent<MsgId>,
    /// Rooms whose root this node is (it may not be a member of them).
    hosted: HashMap<String, RoomHost>,
    /// Copies of rooms whose root would be this node if their root died.
    standby: HashMap<String, Standby>,
    /// The overlay's leaf set of this node: tells whether this node is still a room's root.
    leaf_set: Vec<NodeId>,
    /// When to copy the hosted rooms' state to their successors next.
    next_copy: Option<Instant>,
    /// Messages this node sends to itself (when it is the root of a room it is in).
    to_self: VecDeque<Wire>,
    actions: Vec<Action>,
}

impl Client {
    /// A client for the user `name` on node `me`; `incarnation` must differ between runs.
    pub fn new(me: NodeId, name: String, incarnation: u64) -> Self {
        Self {
            me,
            name,
            incarnation,
            next_seq: 0,
            joined: BTreeMap::new(),
            current: None,
            outbox: VecDeque::new(),
            in_flight: None,
            shown: Recent::new(65_536),
            hosted: HashMap::new(),
            standby: HashMap::new(),
            leaf_set: Vec::new(),
            next_copy: None,
            to_self: VecDeque::new(),
            actions: Vec::new(),
        }
    }

    /// The actions decided since the last call, after handling what this node sent itself.
    pub fn take_actions(&mut self, now: Instant) -> Vec<Action> {
        while let Some(msg) = self.to_self.pop_front() {
            self.direct(now, self.me, msg);
        }
        std::mem::take(&mut self.actions)
    }

    /// Whether some of the user's posts are not acknowledged yet.
    pub fn has_unsent_posts(&self) -> bool {
        self.in_flight.is_some() || !self.outbox.is_empty()
    }

    /// A line the user typed: a command or a message for the current room.
    pub fn typed(&mut self, now: Instant, line: &str) -> Flow {
        let line = line.trim();
        let (command, arg) = match line.split_once(' ') {
            Some((command, arg)) => (command, arg.trim()),
            None => (line, ""),
        };
        match command {
            "" => {}
            "/quit" => return Flow::Quit,
            "/join" => self.join(now, arg),
            "/leave" => self.leave_current(),
            "/who" => match &self.current {
                Some(room) => self.route(room_key(room), Wire::Who { room: room.clone() }),
                None => self.print("*** you are not in a room: /join ROOM"),
            },
            "/help" => self.print("*** commands: /join ROOM, /leave, /who, /help, /quit"),
            _ if command.starts_with('/') => {
                self.print(&format!("*** unknown command {command}; try /help"));
            }
            _ => self.write(now, line),
        }
        Flow::Continue
    }

    /// Joins `room` (or makes it the current room if already in it).
    pub fn join(&mut self, now: Instant, room: &str) {
        if room.is_empty() || room.contains(char::is_whitespace) || room.len() > MAX_NAME {
            self.print(&format!(
                "*** usage: /join ROOM (one word, at most {MAX_NAME} bytes)"
            ));
            return;
        }
        self.current = Some(room.to_owned());
        if self.joined.contains_key(room) {
            self.print(&format!("*** now talking in {room}"));
            return;
        }
        self.joined.insert(
            room.to_owned(),
            Joined {
                welcomed: false,
                next_refresh: now + REFRESH,
            },
        );
        self.subscribe(room, true);
        self.print(&format!("*** joining {room} ..."));
    }

    /// Leaves every room (before quitting).
    pub fn leave_all(&mut self) {
        let rooms: Vec<String> = self.joined.keys().cloned().collect();
        for room in rooms {
            self.route(room_key(&room), Wire::Unsubscribe { room });
        }
        self.joined.clear();
        self.current = None;
    }

    fn leave_current(&mut self) {
        let Some(room) = self.current.take() else {
            self.print("*** you are not in a room");
            return;
        };
        self.joined.remove(&room);
        self.route(room_key(&room), Wire::Unsubscribe { room: room.clone() });
        self.print(&format!("*** you left {room}"));
        self.current = self.joined.keys().next().cloned();
        match self.current.clone() {
            Some(next) => self.print(&format!("*** now talking in {next}")),
            None => self.print("*** you are not in a room: /join ROOM"),
        }
    }

    /// The user wrote a line for the current room.
    fn write(&mut self, now: Instant, text: &str) {
        let Some(room) = self.current.clone() else {
            self.print("*** you are not in a room: /join ROOM first");
            return;
        };
        if text.len() > MAX_LINE {
            self.print(&format!(
                "*** line too long (at most {MAX_LINE} bytes): not sent"
            ));
            return;
        }
        let id = MsgId {
            sender: self.me,
            incarnation: self.incarnation,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.outbox.push_back(Post {
            room,
            id,
            name: self.name.clone(),
            text: text.to_owned(),
        });
        self.send_next_post(now);
    }

    /// Sends the oldest queued post if none is waiting for its acknowledgement.
    fn send_next_post(&mut self, now: Instant) {
        if self.in_flight.is_some() {
            return;
        }
        if let Some(post) = self.outbox.pop_front() {
            self.route(room_key(&post.room), Wire::Post(post.clone()));
            self.in_flight = Some(InFlight {
                post,
                first_sent: now,
                last_sent: now,
            });
        }
    }

    /// A routed message arrived here, at the root of `key`.
    pub fn routed(&mut self, now: Instant, key: Key, origin: NodeId, msg: Wire) {
        if !msg.is_within_limits() {
            return;
        }
        let Some(room) = msg.room_bound().map(str::to_owned) else {
            // A message for this node that was routed to its id because the sender did not
            // know our address (see main.rs): treat it as direct.
            if key == self.me.to_key() {
                self.direct(now, origin, msg);
            }
            return;
        };
        if key != room_key(&room) {
            return; // routed to some other key: not a message for the room's root
        }
        if !self.hosted.contains_key(&room) && self.hosted.len() >= MAX_ROOMS {
            return; // a peer inventing rooms: host no more
        }
        let standby = &mut self.standby;
        let host = self.hosted.entry(room.clone()).or_insert_with(|| {
            // We are the room's root now. If the previous root copied its state here, carry
            // on with its members at once.
            let mut host = RoomHost::new(&room, now);
            if let Some(copy) = standby.remove(&room) {
                host.merge(now, copy.members, copy.history);
            }
            host
        });
        host.routed_here(now);
        let sends = match msg {
            Wire::Subscribe { name, fresh, .. } => host.subscribe(now, origin, name, fresh),
            Wire::Unsubscribe { .. } => host.unsubscribe(origin),
            Wire::Who { .. } => host.who(origin, self.me),
            // A post must come from the node its id names. `origin` is what the overlay
            // says (only the last hop is authenticated), so this keeps honest mistakes out,
            // not a malicious node: display names are not authenticated (see main.rs).
            Wire::Post(post) if post.id.sender == origin => host.post(now, origin, post),
            _ => Vec::new(),
        };
        for (to, msg) in sends {
            self.send(to, msg);
        }
    }

    /// A message sent directly to this node by `from` (authenticated by its certificate).
    pub fn direct(&mut self, now: Instant, from: NodeId, msg: Wire) {
        if !msg.is_within_limits() {
            return;
        }
        match msg {
            Wire::PostAck { id } => {
                if self.in_flight.as_ref().is_some_and(|f| f.post.id == id) {
                    self.in_flight = None;
                    self.send_next_post(now);
                }
            }
            Wire::Message(post) => {
                // Acknowledge every copy: the root may have missed our previous answer.
                self.send(
                    from,
                    Wire::MessageAck {
                        room: post.room.clone(),
                        id: post.id,
                    },
                );
                if self.joined.contains_key(&post.room) && self.shown.insert(post.id) {
                    self.print(&format!("[{}] {}: {}", post.room, post.name, post.text));
                }
            }
            Wire::MessageAck { room, id } => {
                if let Some(host) = self.hosted.get_mut(&room) {
                    for (to, msg) in host.message_ack(from, id) {
                        self.send(to, msg);
                    }
                }
            }
            Wire::Presence { room, name, change } => {
                if self.joined.contains_key(&room) {
                    let line = match change {
                        Change::Joined => format!("*** {name} joined {room}"),
                        Change::Left => format!("*** {name} left {room}"),
                        Change::TimedOut => format!("*** {name} left {room} (timed out)"),
                    };
                    self.print(&line);
                }
            }
            Wire::Members {
                room,
                names,
                welcome,
                root_name,
            } => {
                let others: Vec<&String> = names.iter().filter(|n| **n != self.name).collect();
                let list = match others.is_empty() {
                    true => "nobody else".to_owned(),
                    false => others
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                match self.joined.get_mut(&room) {
                    Some(joined) if welcome && !joined.welcomed => {
                        joined.welcomed = true;
                        self.print(&format!("*** you are in {room} with {list}"));
                    }
                    Some(_) if !welcome => {
                        // `from` is the room's root: worth showing, it is the node whose loss the
                        // room survives (try it: kill that program).
                        let names = names.join(", ");
                        let root = match root_name {
                            Some(name) => format!("{name}, node {from}"),
                            None => format!("node {from}, not in the room"),
                        };
                        self.print(&format!("*** in {room}: {names} (root: {root})"));
                    }
                    _ => {}
                }
            }
            Wire::RoomState {
                room,
                members,
                history,
            } => {
                // Only a leaf-set neighbour has a reason to send this (a room's successor and
                // a hand-over target are neighbours of the root): anyone else is ignored.
                if from != self.me && !self.leaf_set.contains(&from) {
                    return;
                }
                match self.hosted.get_mut(&room) {
                    Some(host) => host.merge(now, members, history),
                    None if self.standby.contains_key(&room) || self.standby.len() < MAX_ROOMS => {
                        let copy = Standby {
                            received: now,
                            members,
                            history,
                        };
                        self.standby.insert(room, copy);
                    }
                    None => {}
                }
            }
            // Room-bound messages are routed, never sent directly.
            Wire::Subscribe { .. }
            | Wire::Unsubscribe { .. }
            | Wire::Post(_)
            | Wire::Who { .. } => {}
        }
    }

    /// Time passes: refresh subscriptions, retry the post in flight, run the hosted rooms.
    pub fn tick(&mut self, now: Instant) {
        let due: Vec<(String, bool)> = self
            .joined
            .iter_mut()
            .filter(|(_, j)| j.next_refresh <= now)
            .map(|(room, j)| {
                j.next_refresh = now + REFRESH;
                (room.clone(), !j.welcomed)
            })
            .collect();
        for (room, fresh) in due {
            self.subscribe(&room, fresh);
        }

        if let Some(flight) = &mut self.in_flight {
            if now.duration_since(flight.first_sent) >= POST_GIVE_UP {
                let post = flight.post.clone();
                self.in_flight = None;
                self.print(&format!(
                    "*** error: could not deliver to {}: {}",
                    post.room, post.text
                ));
                self.send_next_post(now);
            } else if now.duration_since(flight.last_sent) >= POST_RETRY {
                flight.last_sent = now;
                let post = flight.post.clone();
                self.route(room_key(&post.room), Wire::Post(post));
            }
        }

        let mut sends = Vec::new();
        for host in self.hosted.values_mut() {
            sends.extend(host.tick(now));
        }
        self.hosted.retain(|_, host| !host.is_idle());
        for (to, msg) in sends {
            self.send(to, msg);
        }

        if self.next_copy.map_or(true, |t| t <= now) {
            self.next_copy = Some(now + REFRESH);
            self.copy_rooms(now);
        }
        self.standby
            .retain(|_, copy| now.duration_since(copy.received) < MEMBER_TTL);
    }

    /// The overlay's leaf set changed (a node joined or left near us).
    pub fn leaf_set_changed(&mut self, leaf_set: Vec<NodeId>) {
        self.leaf_set = leaf_set;
        // A newcomer may be closer to one of our rooms: hand it over now rather than later.
        self.next_copy = None;
    }

    /// For each hosted room: if a node in our leaf set is closer to the room's key and the
    /// room's messages stopped coming here (a closer node joined: the overlay routes to it
    /// now), hand the room over to it; otherwise copy the room's state to the node that would
    /// be its root if we died. Both follow the rule Pastry routes by: the live node closest to
    /// a key is in the leaf set of any node near the key. (A closer node that still receives
    /// nothing may be dead and not yet out of the leaf set: the overlay routes around it, to
    /// us, so we keep the room.)
    fn copy_rooms(&mut self, now: Instant) {
        let mut handed_over = Vec::new();
        let mut sends = Vec::new();
        for (room, host) in &self.hosted {
            let key = room_key(room);
            let mut nodes: Vec<NodeId> = self.leaf_set.clone();
            nodes.push(self.me);
            nodes.sort_by(|a, b| key.cmp_closeness(*a, *b));
            let closest = nodes[0]; // never empty: it holds this node
            if closest != self.me && !host.is_routed_here(now) {
                sends.push((closest, host.state()));
                handed_over.push(room.clone());
                continue;
            }
            // We act as the root: our successor is the next closest after us (nodes closer
            // than us are dead ones the overlay routes around, see above).
            let me = nodes.iter().position(|&id| id == self.me);
            if let Some(&successor) = me.and_then(|i| nodes.get(i + 1)) {
                sends.push((successor, host.state()));
            }
        }
        for room in handed_over {
            self.hosted.remove(&room);
        }
        for (to, msg) in sends {
            self.send(to, msg);
        }
    }

    fn subscribe(&mut self, room: &str, fresh: bool) {
        let msg = Wire::Subscribe {
            room: room.to_owned(),
            name: self.name.clone(),
            fresh,
        };
        self.route(room_key(room), msg);
    }

    fn route(&mut self, key: Key, msg: Wire) {
        self.actions.push(Action::Route { key, msg });
    }

    fn send(&mut self, to: NodeId, msg: Wire) {
        match to == self.me {
            true => self.to_self.push_back(msg),
            false => self.actions.push(Action::Send { to, msg }),
        }
    }

    /// Shows a line. Names and texts come from peers: control characters (terminal escape
    /// sequences) are replaced so that a peer cannot drive the user's terminal.
    fn print(&mut self, line: &str) {
        let safe = line
            .chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect();
        self.actions.push(Action::Print(safe));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prints(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Print(line) => Some(line.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_message_arriving_twice_shows_once_and_is_acknowledged_twice() {
        let t0 = Instant::now();
        let (me, root, writer) = (
            NodeId::from_u128(1),
            NodeId::from_u128(2),
            NodeId::from_u128(3),
        );
        let mut client = Client::new(me, "me".into(), 7);
        client.join(t0, "lobby");
        client.take_actions(t0);
        let post = Post {
            room: "lobby".into(),
            id: MsgId {
                sender: writer,
                incarnation: 1,
                seq: 0,
            },
            name: "w".into(),
            text: "hi".into(),
        };
        client.direct(t0, root, Wire::Message(post.clone()));
        client.direct(t0, root, Wire::Message(post.clone()));
        let actions = client.take_actions(t0);
        assert_eq!(prints(&actions), vec!["[lobby] w: hi"]);
        let ack = Action::Send {
            to: root,
            msg: Wire::MessageAck {
                room: "lobby".into(),
                id: post.id,
            },
        };
        assert_eq!(actions.iter().filter(|a| **a == ack).count(), 2);
    }

    #[test]
    fn posts_go_one_at_a_time_and_are_repeated_until_acknowledged() {
        let t0 = Instant::now();
        let me = NodeId::from_u128(1);
        let mut client = Client::new(me, "me".into(), 7);
        client.join(t0, "lobby");
        client.typed(t0, "one");
        client.typed(t0, "two");
        let posts = |actions: &[Action]| -> Vec<String> {
            actions
                .iter()
                .filter_map(|a| match a {
                    Action::Route {
                        msg: Wire::Post(p), ..
                    } => Some(p.text.clone()),
                    _ => None,
                })
                .collect()
        };
        let first = client.take_actions(t0);
        assert_eq!(posts(&first), vec!["one"]);
        client.tick(t0 + POST_RETRY);
        assert_eq!(posts(&client.take_actions(t0 + POST_RETRY)), vec!["one"]);
        let id = MsgId {
            sender: me,
            incarnation: 7,
            seq: 0,
        };
        client.direct(t0 + POST_RETRY, NodeId::from_u128(2), Wire::PostAck { id });
        assert_eq!(posts(&client.take_actions(t0 + POST_RETRY)), vec!["two"]);
        assert!(client.has_unsent_posts());
    }
}

#[cfg(test)]
mod peer_input_tests {
    use super::*;

    #[test]
    fn control_characters_from_peers_do_not_reach_the_terminal() {
        let t0 = Instant::now();
        let me = NodeId::from_u128(1);
        let mut client = Client::new(me, "me".into(), 7);
        client.join(t0, "lobby");
        client.take_actions(t0);
        let post = Post {
            room: "lobby".into(),
            id: MsgId {
                sender: NodeId::from_u128(3),
                incarnation: 1,
                seq: 0,
            },
            name: "\u{1b}[2Jevil".into(),
            text: "hi\u{7}".into(),
        };
        client.direct(t0, NodeId::from_u128(2), Wire::Message(post));
        let shown: Vec<Action> = client
            .take_actions(t0)
            .into_iter()
            .filter(|a| matches!(a, Action::Print(_)))
            .collect();
        assert_eq!(
            shown,
            vec![Action::Print("[lobby] \u{fffd}[2Jevil: hi\u{fffd}".into())]
        );
    }

    #[test]
    fn room_state_is_taken_only_from_leaf_set_neighbours() {
        let t0 = Instant::now();
        let (me, neighbour, stranger) = (
            NodeId::from_u128(1),
            NodeId::from_u128(2),
            NodeId::from_u128(3),
        );
        let mut client = Client::new(me, "me".into(), 7);
        client.leaf_set_changed(vec![neighbour]);
        let state = |room: &str| Wire::RoomState {
            room: room.into(),
            members: vec![(stranger, "x".into())],
            history: Vec::new(),
        };
        client.direct(t0, stranger, state("a"));
        client.direct(t0, neighbour, state("b"));
        assert!(!client.standby.contains_key("a"));
        assert!(client.standby.contains_key("b"));
        // Oversized fields are dropped whole.
        client.direct(t0, neighbour, state(&"r".repeat(MAX_NAME + 1)));
        assert_eq!(client.standby.len(), 1);
    }
}
