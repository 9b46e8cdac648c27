//! The integration tests: one test binary, one module per concern.
//!
//! Each test binary links the whole crate, so one binary instead of one per file saves a link
//! and a copy of the crate's generic code per file on every build; the tests still run in
//! parallel. Select a module with its name: `cargo test --release --test integration cluster::`.
//! Tests that need separate processes start the built `wendy` binary (`common::process`) or
//! the examples (`chat`).

mod common;

mod auth;
mod bench_all;
mod bench_link;
mod chat;
mod cli_admin;
mod cli_identity;
mod cli_node;
mod cli_ops;
mod cluster;
mod cluster_closed;
mod cluster_failure;
mod cluster_proximity;
mod hostile;
mod mesh;
mod netns;
mod origin;
mod reach;
mod relay;
mod relay_dgram;
mod sim;
mod topics;
mod transport;
