//! One user's chat program, as a state machine: the rooms the user is in, who is in them, and
//! what to show.
//!
//! Inputs come in as method calls with the current time (a typed line, a topic message, a
//! timer tick); effects go out as [`Action`]s that `main.rs` carries out with the Wendy node's
//! topics. Keeping the network out of this file keeps the chat rules in one readable place.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use wendy::id::NodeId;
use wendy::topics::TopicMessage;

use crate::protocol::{room_topic, topic_room, Presence, Wire, MAX_LINE, MAX_MEMBERS, MAX_NAME};

/// How often a member announces that it is still in a room.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(3);
/// A member not heard from (announcement or line) for this long is taken as gone: a few
/// announcements may be late while the room's tree repairs.
pub const PRESENCE_TTL: Duration = Duration::from_secs(10);

/// Something for `main.rs` to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Subscribe to a topic.
    Subscribe(String),
    /// Unsubscribe from a topic.
    Unsubscribe(String),
    /// Publish `msg` on `topic`.
    Publish {
        /// The room's topic.
        topic: String,
        /// The message.
        msg: Wire,
    },
    /// Answer `/who` for `room`: `main.rs` asks the topics for the room's root and calls
    /// [`Client::who`].
    Who {
        /// The room.
        room: String,
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

/// A member of a room as this node last heard of it.
struct Member {
    /// The display name it announced last.
    name: String,
    /// When it is taken as gone unless heard from again.
    expires: Instant,
}

/// A room the user is in.
struct Room {
    /// Whether our own `Joined` came back: what came before it is the room's past (the root's
    /// replay), shown as lines but not as arrivals.
    welcomed: bool,
    /// When to announce our presence next.
    next_presence: Instant,
    /// Who is in the room (us included, once our own announcement came back).
    members: BTreeMap<NodeId, Member>,
}

/// The state of one user's chat program.
pub struct Client {
    me: NodeId,
    name: String,
    /// Rooms the user is in; typed lines go to `current`.
    rooms: BTreeMap<String, Room>,
    current: Option<String>,
    actions: Vec<Action>,
}

impl Client {
    /// A client for the user `name` on node `me`.
    pub fn new(me: NodeId, name: String) -> Self {
        Self {
            me,
            name,
            rooms: BTreeMap::new(),
            current: None,
            actions: Vec::new(),
        }
    }

    /// The actions decided since the last call.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
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
                Some(room) => {
                    let room = room.clone();
                    self.actions.push(Action::Who { room });
                }
                None => self.print("*** you are not in a room: /join ROOM"),
            },
            "/help" => self.print("*** commands: /join ROOM, /leave, /who, /help, /quit"),
            _ if command.starts_with('/') => {
                self.print(&format!("*** unknown command {command}; try /help"));
            }
            _ => self.write(line),
        }
        Flow::Continue
    }

    /// Joins `room` (or makes it the current room if already in it).
    pub fn join(&mut self, now: Instant, room: &str) {
        if room.is_empty()
            || room.contains(|c: char| c.is_whitespace() || c.is_control())
            || room.len() > MAX_NAME
        {
            self.print(&format!(
                "*** usage: /join ROOM (one word, at most {MAX_NAME} bytes)"
            ));
            return;
        }
        self.current = Some(room.to_owned());
        if self.rooms.contains_key(room) {
            self.print(&format!("*** now talking in {room}"));
            return;
        }
        self.rooms.insert(
            room.to_owned(),
            Room {
                welcomed: false,
                next_presence: now + PRESENCE_EVERY,
                members: BTreeMap::new(),
            },
        );
        let topic = room_topic(room);
        self.actions.push(Action::Subscribe(topic.clone()));
        self.announce(topic, Presence::Joined);
        self.print(&format!("*** joining {room} ..."));
    }

    /// Leaves every room (before quitting).
    pub fn leave_all(&mut self) {
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.leave(&room);
        }
        self.current = None;
    }

    fn leave(&mut self, room: &str) {
        self.rooms.remove(room);
        let topic = room_topic(room);
        self.announce(topic.clone(), Presence::Left);
        self.actions.push(Action::Unsubscribe(topic));
    }

    fn leave_current(&mut self) {
        let Some(room) = self.current.take() else {
            self.print("*** you are not in a room");
            return;
        };
        self.leave(&room);
        self.print(&format!("*** you left {room}"));
        self.current = self.rooms.keys().next().cloned();
        match self.current.clone() {
            Some(next) => self.print(&format!("*** now talking in {next}")),
            None => self.print("*** you are not in a room: /join ROOM"),
        }
    }

    /// The user wrote a line for the current room.
    fn write(&mut self, text: &str) {
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
        let msg = Wire::Line {
            name: self.name.clone(),
            text: text.to_owned(),
        };
        self.actions.push(Action::Publish {
            topic: room_topic(&room),
            msg,
        });
    }

    fn announce(&mut self, topic: String, presence: Presence) {
        let msg = Wire::Presence {
            name: self.name.clone(),
            presence,
        };
        self.actions.push(Action::Publish { topic, msg });
    }

    /// A message of a room's topic (its sender verified by the topics).
    pub fn topic_message(&mut self, now: Instant, msg: TopicMessage) {
        let Some(room) = topic_room(&msg.topic).map(str::to_owned) else {
            return;
        };
        let Some(wire) = Wire::decode(&msg.payload) else {
            return; // not chat, or past the limits: nothing to show
        };
        let Some(state) = self.rooms.get_mut(&room) else {
            return; // a room we left: its last messages may still come
        };
        let from = msg.from;
        let (name, presence) = match &wire {
            Wire::Presence { name, presence } => (name.clone(), Some(*presence)),
            Wire::Line { name, .. } => (name.clone(), None),
        };
        // Whatever a node sends announces its name and that it is here (bounded table: a
        // node inventing members stops being heard once it is full).
        if presence != Some(Presence::Left)
            && (state.members.contains_key(&from) || state.members.len() < MAX_MEMBERS)
        {
            state.members.insert(
                from,
                Member {
                    name: name.clone(),
                    expires: now + PRESENCE_TTL,
                },
            );
        }
        let shown = display(&state.members, from, &name);
        let welcomed = state.welcomed;
        let line = match (wire, presence) {
            (Wire::Line { text, .. }, _) => Some(format!("[{room}] {shown}: {text}")),
            (_, Some(Presence::Joined)) if from == self.me && !welcomed => {
                state.welcomed = true;
                let others: Vec<String> = state
                    .members
                    .iter()
                    .filter(|(id, _)| **id != self.me)
                    .map(|(id, m)| display(&state.members, *id, &m.name))
                    .collect();
                let list = match others.is_empty() {
                    true => "nobody else".to_owned(),
                    false => others.join(", "),
                };
                Some(format!("*** you are in {room} with {list}"))
            }
            (_, Some(Presence::Joined)) if from != self.me && welcomed => {
                Some(format!("*** {shown} joined {room}"))
            }
            (_, Some(Presence::Left)) => {
                let known = state.members.remove(&from).is_some();
                (known && from != self.me && welcomed).then(|| format!("*** {shown} left {room}"))
            }
            _ => None,
        };
        if let Some(line) = line {
            self.print(&line);
        }
    }

    /// Time passes: announce our presence, forget members not heard from.
    pub fn tick(&mut self, now: Instant) {
        let mut due = Vec::new();
        let mut lines = Vec::new();
        for (room, state) in &mut self.rooms {
            if state.next_presence <= now {
                state.next_presence = now + PRESENCE_EVERY;
                due.push(room_topic(room));
            }
            let gone: Vec<NodeId> = state
                .members
                .iter()
                .filter(|(id, m)| **id != self.me && m.expires <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                let shown = state
                    .members
                    .get(&id)
                    .map(|m| display(&state.members, id, &m.name));
                state.members.remove(&id);
                if let (Some(shown), true) = (shown, state.welcomed) {
                    lines.push(format!("*** {shown} left {room} (timed out)"));
                }
            }
        }
        for topic in due {
            self.announce(topic, Presence::Here);
        }
        for line in lines {
            self.print(&line);
        }
    }

    /// The answer to `/who` in `room`, given the room's root as this node's place in the
    /// topic's tree says (`None` while detached).
    pub fn who(&mut self, room: &str, root: Option<NodeId>) {
        let Some(state) = self.rooms.get(room) else {
            return;
        };
        let mut names: Vec<String> = state
            .members
            .iter()
            .map(|(id, m)| display(&state.members, *id, &m.name))
            .collect();
        names.sort();
        let root = match root {
            Some(id) => match state.members.get(&id) {
                Some(m) => format!("{}, node {id}", display(&state.members, id, &m.name)),
                None => format!("node {id}, not in the room"),
            },
            None => "not known yet".to_owned(),
        };
        let line = format!("*** in {room}: {} (root: {root})", names.join(", "));
        self.print(&line);
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

/// How the node `id` that announced `name` is shown: its name, with a short id when another
/// member of the room announced the same name.
fn display(members: &BTreeMap<NodeId, Member>, id: NodeId, name: &str) -> String {
    let shared = members
        .iter()
        .any(|(other, m)| *other != id && m.name == name);
    match shared {
        true => format!("{name}#{}", short_id(id)),
        false => name.to_owned(),
    }
}

/// The first four hex digits of a node id.
pub fn short_id(id: NodeId) -> String {
    id.to_string().chars().take(4).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: &str = "lobby";

    fn prints(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Print(line) => Some(line.as_str()),
                _ => None,
            })
            .collect()
    }

    fn message(from: NodeId, wire: Wire) -> TopicMessage {
        TopicMessage {
            topic: room_topic(ROOM),
            from,
            seq: 1,
            payload: wire.encode(),
        }
    }

    fn presence(name: &str, presence: Presence) -> Wire {
        Wire::Presence {
            name: name.into(),
            presence,
        }
    }

    fn line(name: &str, text: &str) -> Wire {
        Wire::Line {
            name: name.into(),
            text: text.into(),
        }
    }

    /// A client of "me" in `ROOM`, welcomed (its own `Joined` came back).
    fn joined(t0: Instant) -> Client {
        let me = NodeId::from_u128(1);
        let mut client = Client::new(me, "me".into());
        client.join(t0, ROOM);
        client.topic_message(t0, message(me, presence("me", Presence::Joined)));
        client.take_actions();
        client
    }

    #[test]
    fn joining_subscribes_announces_and_welcomes_with_the_replayed_members() {
        let t0 = Instant::now();
        let me = NodeId::from_u128(1);
        let bob = NodeId::from_u128(2);
        let mut client = Client::new(me, "me".into());
        client.join(t0, ROOM);
        let actions = client.take_actions();
        assert!(actions.contains(&Action::Subscribe(room_topic(ROOM))));
        assert!(actions.contains(&Action::Publish {
            topic: room_topic(ROOM),
            msg: presence("me", Presence::Joined),
        }));
        // The replay: bob's past arrival and line come before our own announcement.
        client.topic_message(t0, message(bob, presence("bob", Presence::Joined)));
        client.topic_message(t0, message(bob, line("bob", "earlier")));
        client.topic_message(t0, message(me, presence("me", Presence::Joined)));
        assert_eq!(
            prints(&client.take_actions()),
            vec!["[lobby] bob: earlier", "*** you are in lobby with bob"]
        );
    }

    #[test]
    fn members_who_share_a_name_are_shown_with_a_short_id() {
        let t0 = Instant::now();
        let mut client = joined(t0);
        let a1 = NodeId::from_u128(0x3fa2 << 112);
        let a2 = NodeId::from_u128(0x91c0 << 112);
        client.topic_message(t0, message(a1, presence("alice", Presence::Joined)));
        client.topic_message(t0, message(a1, line("alice", "one")));
        client.topic_message(t0, message(a2, presence("alice", Presence::Joined)));
        client.topic_message(t0, message(a1, line("alice", "two")));
        client.topic_message(t0, message(a2, line("alice", "three")));
        client.who(ROOM, Some(a2));
        assert_eq!(
            prints(&client.take_actions()),
            vec![
                "*** alice joined lobby",
                "[lobby] alice: one",
                "*** alice#91c0 joined lobby",
                "[lobby] alice#3fa2: two",
                "[lobby] alice#91c0: three",
                &format!("*** in lobby: alice#3fa2, alice#91c0, me (root: alice#91c0, node {a2})"),
            ]
        );
    }

    #[test]
    fn the_sender_shown_is_the_verified_node_not_a_claimed_one() {
        let t0 = Instant::now();
        let mut client = joined(t0);
        let alice = NodeId::from_u128(0x3fa2 << 112);
        let mallory = NodeId::from_u128(0x0bad << 112);
        client.topic_message(t0, message(alice, presence("alice", Presence::Joined)));
        // Mallory claims alice's name: both are shown with their ids from then on.
        client.topic_message(t0, message(mallory, line("alice", "send money")));
        assert_eq!(
            prints(&client.take_actions()),
            vec!["*** alice joined lobby", "[lobby] alice#0bad: send money"]
        );
    }

    #[test]
    fn members_leave_by_saying_so_or_by_going_silent() {
        let t0 = Instant::now();
        let mut client = joined(t0);
        let (bob, carol) = (NodeId::from_u128(2), NodeId::from_u128(3));
        client.topic_message(t0, message(bob, presence("bob", Presence::Joined)));
        client.topic_message(t0, message(carol, presence("carol", Presence::Joined)));
        client.topic_message(t0, message(bob, presence("bob", Presence::Left)));
        // Carol goes silent; we keep announcing ourselves and never time ourselves out.
        let later = t0 + PRESENCE_TTL;
        client.tick(later);
        let actions = client.take_actions();
        assert_eq!(
            prints(&actions),
            vec![
                "*** bob joined lobby",
                "*** carol joined lobby",
                "*** bob left lobby",
                "*** carol left lobby (timed out)",
            ]
        );
        assert!(actions.contains(&Action::Publish {
            topic: room_topic(ROOM),
            msg: presence("me", Presence::Here),
        }));
        client.who(ROOM, None);
        assert_eq!(
            prints(&client.take_actions()),
            vec!["*** in lobby: me (root: not known yet)"]
        );
    }

    #[test]
    fn a_room_holds_a_bounded_number_of_members() {
        let t0 = Instant::now();
        let mut client = joined(t0);
        for i in 0..2 * MAX_MEMBERS as u128 {
            let id = NodeId::from_u128(1000 + i);
            client.topic_message(t0, message(id, presence("x", Presence::Here)));
        }
        assert_eq!(client.rooms[ROOM].members.len(), MAX_MEMBERS);
    }

    #[test]
    fn control_characters_from_peers_do_not_reach_the_terminal() {
        let t0 = Instant::now();
        let mut client = joined(t0);
        let evil = NodeId::from_u128(3);
        client.topic_message(t0, message(evil, line("\u{1b}[2Jevil", "hi\u{7}")));
        assert_eq!(
            prints(&client.take_actions()),
            vec!["[lobby] \u{fffd}[2Jevil: hi\u{fffd}"]
        );
    }

    #[test]
    fn typed_lines_are_published_on_the_current_room() {
        let t0 = Instant::now();
        let mut client = joined(t0);
        client.typed(t0, "hello");
        client.typed(t0, &"x".repeat(MAX_LINE + 1));
        let actions = client.take_actions();
        assert_eq!(
            actions[0],
            Action::Publish {
                topic: room_topic(ROOM),
                msg: line("me", "hello"),
            }
        );
        assert_eq!(actions.len(), 2);
        assert!(prints(&actions)[0].starts_with("*** line too long"));
    }
}
