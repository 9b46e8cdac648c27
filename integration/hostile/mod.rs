//! Hostile peers: an admitted peer (any self-signed key in open mode) that speaks Wendy's wire
//! format and lies, against real `wendy node` processes on loopback. Each test performs one
//! attack, measures what it cost the nodes and whether legitimate traffic still flows, prints
//! one `hostile ...` line of numbers, and asserts the bound the node must stay within.
//!
//! The attacks: a peer list naming 2,000 made-up ids (dials and bytes sent to addresses the
//! attacker chose, memory); unfinished streams on one link and handshakes from fresh
//! identities (memory); a forged failure notice for a live node; a routed message with a
//! forged origin (and the duplicate filter it could poison); a second process with a live
//! member's key; a message dropped at its hop limit.
//!
//! `WENDY_HOSTILE_SCALE=full` runs the larger figures (see [`crate::common::hostile::scaled`]);
//! `--nocapture` shows the lines of numbers.
//!
//! The tests that measure a node's memory run one at a time, with no other test of this module
//! beside them (two cores are shared by the whole test binary: a concurrent attack would slow
//! the measured node's own work, not change its memory, but keeps the timing of each test
//! apart).

mod dials;
mod floods;
mod notices;
mod origins;
mod same_identity;

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static SERIAL: RwLock<()> = RwLock::new(());

/// Held by a test that measures memory: no other test of this module runs meanwhile.
fn measuring() -> RwLockWriteGuard<'static, ()> {
    SERIAL
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held by the other tests: they may run together, but not beside a measuring one.
fn sharing() -> RwLockReadGuard<'static, ()> {
    SERIAL
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The attacker's runtime (the nodes are processes; the test thread reads their output).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Asserts that no bound was broken, after every number was printed.
fn assert_within_bounds(attack: &str, broken: &[String]) {
    assert!(
        broken.is_empty(),
        "{attack}: bounds broken:\n  {}",
        broken.join("\n  ")
    );
}
