//! Wendy: a Pastry overlay network where every link is a mutually authenticated QUIC connection.
//!
//! To embed it, start with [`node::Node::builder`]. `examples/embed.rs` is a complete, commented
//! program that builds nodes, joins them, handles the application hooks (deliver, a forward
//! hook that vetoes, node joined/left) and routes messages: `cargo run --example embed`.
//! `examples/chat/` is a larger application on the same API (rooms hosted at the root of a key).
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
mod task;
pub mod testing;
pub mod transport;
pub mod wire;
