//! Wendy: a Pastry overlay network where every link is a mutually authenticated QUIC connection.
//!
//! To embed it, start with [`node::Node::builder`]. `examples/embed.rs` is a complete, commented
//! program that builds nodes, joins them, handles the application hooks (deliver, a forward
//! hook that vetoes, node joined/left) and routes messages: `cargo run --example embed`.
//! `examples/chat/` is a larger application on the same API (rooms hosted at the root of a key).
//!
//! # Example
//!
//! A node that joins an overlay through a member at `127.0.0.1:4000`, routes a message to the
//! node responsible for a key, and prints what is delivered to it (the README's library
//! example, kept identical to it by a test):
//!
//! ```rust,no_run
//! use wendy::id::Key;
//! use wendy::identity::Identity;
//! use wendy::node::{Node, NodeEvent};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let (node, mut events) = Node::builder(Identity::generate())
//!         .listen("127.0.0.1:0".parse()?)
//!         .spawn()
//!         .await?;
//!     // Join through any member's address, or pass `&[]` to start a new overlay.
//!     node.join(&["127.0.0.1:4000".parse()?]).await?;
//!     node.route(Key::from_name("room:lobby"), b"hello".to_vec()).await?;
//!     while let Some(event) = events.recv().await {
//!         if let NodeEvent::Deliver(d) = event {
//!             println!("delivered after {} hops", d.hops);
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! The program's `Cargo.toml` needs `wendy = { ..., default-features = false }` and
//! `tokio = { version = "1", features = ["macros", "rt-multi-thread"] }`.
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
pub mod punch;
pub mod reach;
pub mod relay;
#[cfg(feature = "sim")]
pub mod sim;
mod task;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topics;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod readme_tests {
    /// The first fenced block of `lang` after `heading` in `text`.
    fn block<'a>(text: &'a str, heading: &str, lang: &str) -> &'a str {
        let section = &text[text.find(heading).expect("heading")..];
        let fence = format!("```{lang}\n");
        let body = &section[section.find(&fence).expect("block") + fence.len()..];
        &body[..body.find("```").expect("end of block")]
    }

    /// The README's library snippet is the crate root's doc example, which `cargo test --doc`
    /// compiles: pasted as written, it builds.
    #[test]
    fn the_readme_library_example_is_the_compiled_crate_example() {
        let readme = include_str!("../README.md");
        let snippet = block(readme, "## Using it as a library", "rust,no_run");
        let source = include_str!("lib.rs");
        let docs: String = source
            .lines()
            .filter_map(|line| line.strip_prefix("//!"))
            .map(|line| format!("{}\n", line.strip_prefix(' ').unwrap_or(line)))
            .collect();
        let example = block(&docs, "# Example", "rust,no_run");
        assert_eq!(snippet, example);
        assert!(!snippet
            .lines()
            .any(|l| l.starts_with('#') && !l.starts_with("#[")));
        let toml = block(readme, "## Using it as a library", "toml");
        assert!(toml.contains("default-features = false"), "{toml}");
        assert!(toml.contains("\"macros\", \"rt-multi-thread\""), "{toml}");
    }
}
