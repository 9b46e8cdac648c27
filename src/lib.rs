//! Wendy: a Pastry overlay network where every link is a mutually authenticated QUIC connection.
//!
//! To embed it, start with [`node::Node::builder`]. `examples/embed.rs` is a complete, commented
//! program that builds nodes, joins them, handles the application hooks (deliver, a forward
//! hook that vetoes, node joined/left) and routes messages: `cargo run --example embed`.
//! `examples/chat/` is a larger application on the same API (rooms hosted at the root of a key).
//!
//! # Features
//!
//! The library alone (`default-features = false`) is what a program embedding Wendy needs. The
//! default feature `cli` builds the `wendy` binary and turns on `bench` and `sim`:
//!
//! * `sim`: `wendy::sim`, the deterministic simulator behind `wendy sim`.
//! * `bench`: `wendy::bench`, the benchmark suites behind `wendy bench` (needs `sim`).
//! * `testing`: `wendy::testing` (a UDP socket emulating wide-area delays) and
//!   `wendy::identity::test_fixtures` (TEST-ONLY certificates); the crate's own tests and examples
//!   turn it on, a production build never needs it.
#![deny(missing_docs)]
#![warn(unreachable_pub, clippy::use_self)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "bench")]
pub mod bench;
pub mod id;
pub mod identity;
pub mod mesh;
pub mod node;
pub mod pastry;
#[cfg(feature = "sim")]
pub mod sim;
mod task;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
pub mod wire;
