//! Pastry's routing state machine: routing table, leaf set, neighbourhood set, join and repair.
//!
//! Sans-IO: no tokio, no quinn, no clock reads, no global RNG. Time comes in as an argument
//! ([`Time`]) and effects go out as values ([`Output`]), so the simulator and the node runtime
//! drive the same code. A driver calls a `handle_*` method or a command ([`Pastry::route`],
//! [`Pastry::join`], ...), then drains [`Pastry::poll_output`] until `None`, and calls
//! [`Pastry::handle_timeout`] once its clock reaches [`Pastry::poll_timeout`].
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
//! # The tie rule
//!
//! Whenever two ids are equally distant from a key, the one met first walking clockwise from
//! the key wins ([`Key::cmp_closeness`](crate::id::Key::cmp_closeness)). It is used by the leaf
//! set, the route decision and every test oracle, so all agree on the root of a key.

mod leaf_set;
pub mod message;
mod neighbourhood;
mod node;
mod routing_table;
mod time;

#[cfg(test)]
mod harness;

pub use leaf_set::{LeafSet, Side};
pub use message::{Message, MessageKind, PeerInfo};
pub use neighbourhood::NeighbourhoodSet;
pub use node::{Config, Counter, Event, ForwardVerdict, Output, Pastry, Stats};
pub use routing_table::{Insertion, RoutingTable, Slot};
pub use time::Time;
