//! Pastry's routing state machine: routing table, leaf set, neighbourhood set, join and repair.
//!
//! Sans-IO: no tokio, no quinn, no clock reads, no global RNG. Time comes in as an argument and
//! effects go out as values, so the simulator and the node runtime drive the same code.

pub mod message;

pub use message::{Message, PeerInfo};
