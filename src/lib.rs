//! Wendy: a Pastry overlay network where every link is a mutually authenticated QUIC connection.
#![deny(missing_docs)]
#![warn(unreachable_pub, clippy::use_self)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod bench;
pub mod id;
pub mod identity;
pub mod mesh;
pub mod node;
pub mod pastry;
pub mod sim;
pub mod testing;
pub mod transport;
pub mod wire;
