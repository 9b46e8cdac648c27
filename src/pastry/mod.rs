//! Pastry's routing state machine: routing table, leaf set, neighbourhood set, join and repair.
//!
//! Sans-IO: no tokio, no quinn, no clock reads, no global RNG. Time comes in as an argument
//! ([`Time`]) and effects go out as values, so the simulator and the node runtime drive the same
//! code.
//!
//! # Driving it
//!
//! The entry points of [`Pastry`], in the shape of quinn-proto's `Connection`:
//!
//! * **Inputs.** [`Pastry::handle_message`] (a message from an authenticated peer),
//!   [`Pastry::handle_proximity`] (an RTT sample), [`Pastry::handle_link_down`] (a lost link or
//!   a failed dial), [`Pastry::handle_timeout`] (the clock reached [`Pastry::poll_timeout`]),
//!   and the commands [`Pastry::bootstrap_alone`], [`Pastry::join`], [`Pastry::route`],
//!   [`Pastry::leave`] and [`Pastry::resume_forward`].
//! * **Outputs, on two queues.** After every input, drain both until `None`:
//!   [`Pastry::poll_transmit`] gives the network's work ([`Transmit::Send`],
//!   [`Transmit::Measure`]) in the order the core asked for it, and [`Pastry::poll_event`] the
//!   application's ([`Event::Deliver`], [`Event::Forward`], [`Event::Joined`], ...). The
//!   queues are independent: a driver may hold transmits back (the node runtime does, after a
//!   delivery, until the application's task has run) while it takes events. Answering an
//!   [`Event::Forward`] with [`Pastry::resume_forward`] queues more transmits.
//! * **Timers.** [`Pastry::poll_timeout`] is the earliest deadline of any kind (one table holds
//!   them all); call [`Pastry::handle_timeout`] once the clock reaches it, and poll it again
//!   after every input.
//! * **Diagnostics.** [`Pastry::replace_table_entry`] installs a measured peer in its
//!   routing-table slot whatever holds it; the protocol never needs it (the simulator's
//!   `--oracle-tables` experiment uses it to give nodes ideal tables).
//!
//! ```
//! use wendy::id::{Key, NodeId};
//! use wendy::pastry::{Config, Event, Pastry, PeerInfo, Time, Transmit};
//!
//! let me = PeerInfo { id: NodeId::from_u128(7), addr: "127.0.0.1:4000".parse().unwrap() };
//! let mut node = Pastry::new(me, Config::default(), 1);
//! node.bootstrap_alone(Time::ZERO);
//! node.route(Time::ZERO, Key::from_u128(99), b"hi".to_vec());
//! while let Some(transmit) = node.poll_transmit() {
//!     match transmit {
//!         Transmit::Send { .. } => { /* hand the message to the transport */ }
//!         Transmit::Measure { .. } => { /* measure, then call `handle_proximity` */ }
//!     }
//! }
//! while let Some(event) = node.poll_event() {
//!     if let Event::Deliver { payload, .. } = event {
//!         assert_eq!(payload, b"hi"[..]); // alone, this node is the root of every key
//!     }
//! }
//! assert!(node.poll_timeout().is_some()); // the heartbeat, at the latest
//! ```
//!
//! The core's code is split by sub-protocol: `state` (the struct and its entry points),
//! `routing`, `custody`, `hedge`, `origin`, `join`, `membership`, `candidates`, `validate`,
//! `liveness`, `maintenance`, `route_cache`, `timers`, `config`, `stats` and `output`.
//!
//! # What this module owns
//!
//! * The three routing structures: [`RoutingTable`] (32 rows x 16 columns, b = 4, rows
//!   allocated lazily and sparsely), [`LeafSet`] (L/2 nearest ids each side, across zero) and
//!   [`NeighbourhoodSet`] (M nearest by proximity).
//! * The route decision of Pastry (Rowstron & Druschel 2001, Table 1), see
//!   [`Pastry::next_hop`].
//! * The protocol: join (section 2.4) with MSPastry's consistent join (a node becomes active,
//!   and may deliver as root, only once every leaf-set member has answered a probe), leaf-set
//!   heartbeats and repair, lazy and periodic routing-table repair, graceful leave, and
//!   MSPastry's per-hop acknowledged routing with re-routing around failed hops.
//!
//! It must not touch sockets, clocks or certificates: peers are identified by the
//! authenticated [`NodeId`](crate::id::NodeId) the driver hands in.
//!
//! # The protocol in brief
//!
//! * **Join.** The joiner sends [`Message::Join`] to its bootstrap; it is routed (acknowledged
//!   hop by hop) to the joiner's id. Hop `i` answers with [`Message::JoinState`] holding only
//!   the rows the joiner still lacks (`next_row..=shared prefix`), the first hop adds its
//!   neighbourhood set, the root adds its leaf set. The joiner measures the candidates
//!   ([`Transmit::Measure`]) and probes the nodes that belong in its leaf set; it becomes active
//!   ([`Event::Joined`]) once every probe was answered (new candidates learned from the replies
//!   are probed too), then announces itself to the rest of its state and asks the nearest
//!   entry of each row for its row. Until then it never delivers as root: messages for its keys
//!   are held and routed once it is active.
//! * **Leaf-set maintenance.** Every `probe_period` a node sends a [`Message::Heartbeat`]
//!   carrying its leaf set to its two immediate neighbours (about 0.13 msgs/s at the default
//!   15 s). A neighbour silent for `probe_period + probe_timeout` is probed; no answer (after
//!   `probe_retries`) declares it dead. Each of the dead node's neighbours tells the members
//!   on its far side that hold it, and the other neighbour ([`Message::NodeFailed`]); a member that a live neighbour's leaf set should contain but
//!   lacks is probed too, so far members learn of failures. Second-hand candidates are
//!   probed before admission, and only as many as the holes need. A short side asks its
//!   farthest member (a probe: the reply carries its leaf set).
//! * **Nothing a peer says is believed on its word.** A notice never removes a node by
//!   itself: a receiver that heard from the node within a probe timeout probes it at once and
//!   keeps it unless the probe fails; any other waits for a second account of the failure that
//!   shares no node with the first (the probe of the member that replaces it carries one, a
//!   [`FailureClaim`]), and probes it if none comes (see `witness`). Every peer list is checked against
//!   the shape of the structure it describes before use; a misshapen one is ignored and
//!   reported ([`Event::Misbehaved`], [`Misbehaviour`]). Whatever one message names yields a
//!   bounded number of measurements and probes, with node-wide and per-peer caps on those in
//!   flight (`candidates`).
//! * **Routing-table maintenance.** An entry found unresponsive is dropped at once and its
//!   row asked of another entry of the row (lazy repair). Every `maintenance_period` a node
//!   asks a random entry of a row for its row, alternating between improving proximity
//!   (candidates measured) and filling holes (only empty slots measured). An empty slot met
//!   while routing is asked of the next hop at once.
//! * **Reliable routing (MSPastry).** Every [`Message::Route`] hop is acknowledged
//!   ([`Message::RouteAck`]); the timeout is `3 * rtt + timeout_slack` when the next hop's RTT
//!   is known. On timeout the hop is dropped from the table (probed if a leaf) and the message
//!   re-routed to the next best candidate, up to `max_route_attempts` (the origin of a message
//!   then starts up to two fresh rounds, without exclusions, rather than give it up);
//!   unresponsive hops travel with the message (`avoid`) so later hops skip them. A hop keeps
//!   its copy until the next hop reports it passed the message on (`RouteAck { done: true }`),
//!   and re-routes after `custody_timeout` otherwise, so a hop dying with a message does not
//!   lose it. A message about to go straight back to its sender is routed around it (the two
//!   leaf sets disagree; the sender gets ours). The root drops duplicates (a ring of recent
//!   `(origin, id)`).
//! * **Hedged hops.** A message sent to a hop that was silent for a probe period and whose
//!   RTT is known is copied once to the next-best hop if no receipt came within
//!   `2 * rtt + timeout_slack / 4`, not after the whole acknowledgement timeout; never for a
//!   key our leaf set covers (see `hedge`). A re-route skips neighbour hints.
//! * **Authenticated origins.** With an [`OriginAuth`] installed ([`Pastry::set_origin_auth`];
//!   the node runtime always does, the simulator never), a routed message carries its origin's
//!   signature, checked on arrival by every hop that did not get it from the origin itself,
//!   before custody, delivery and the duplicate filter; ids are random. See [`origin`].
//! * **Leave.** [`Pastry::leave`] sends [`Message::Leave`] to the leaf set, the peers it is
//!   probing and its routing-table entries; receivers drop the node at once and report
//!   [`Event::NodeLeft`].
//!
//! # The tie rule
//!
//! Whenever two ids are equally distant from a key, the one met first walking clockwise from
//! the key wins ([`Key::cmp_closeness`](crate::id::Key::cmp_closeness)). It is used by the leaf
//! set, the route decision and every test oracle, so all agree on the root of a key.
//!
//! # Design notes
//!
//! This documentation is the module's contract. `docs/pastry-contract.md` logs how the API was
//! first agreed between the core, the simulator and the runtime, and each change since with its
//! reason; `docs/sim-findings.md` records what the simulator showed about the protocol while it
//! was built (problems, fixes tried, the numbers of the time).

mod candidates;
mod config;
mod custody;
mod hedge;
mod hints;
mod join;
mod leaf_set;
mod liveness;
mod maintenance;
mod membership;
pub mod message;
mod neighbourhood;
pub mod origin;
mod output;
mod route_cache;
mod routing;
mod routing_table;
mod state;
mod stats;
mod time;
mod timers;
mod validate;
mod witness;

#[cfg(all(test, feature = "sim"))]
mod harness;
#[cfg(all(test, feature = "sim"))]
mod protocol_tests;

pub use config::{Config, ConfigError};
pub use leaf_set::{ideal_leaf_set, LeafSet, Side};
pub use message::{FailureClaim, Message, MessageKind, PeerInfo, MAX_CLAIMS};
pub use neighbourhood::NeighbourhoodSet;
pub use origin::{route_digest, OriginAuth, OriginProof, ProofError};
pub use output::{Event, ForwardVerdict, Transmit};
pub use route_cache::LinkView;
pub use routing_table::{Insertion, RoutingTable, Slot};
pub use state::Pastry;
pub use stats::{Counter, Stats};
pub use time::Time;
pub use validate::Misbehaviour;
