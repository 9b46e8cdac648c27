//! The interface the simulator drives, implemented for [`crate::pastry::Pastry`].
//!
//! The simulator speaks to a protocol instance only through [`SimNode`], in plain microseconds
//! and with its own small [`Effect`] type, so the event loop does not depend on details of the
//! Pastry API beyond this adapter (and unit tests can drive the event loop with a stand-in).

use std::time::Duration;

use bytes::Bytes;

use crate::id::{Key, NodeId};
use crate::pastry::{Config, Event, Message, Pastry, PeerInfo, Time, Transmit};

/// Protocol knobs the simulator sets on every node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProtocolOptions {
    /// Use proximity (RTT measurements) to choose routing-table entries.
    pub proximity: bool,
    /// Leaf-set size `L` (`L/2` each side).
    pub leaf_set_size: usize,
}

impl Default for ProtocolOptions {
    fn default() -> Self {
        Self {
            proximity: true,
            leaf_set_size: 16,
        }
    }
}

/// One effect a node asks the simulator to carry out, or reports.
#[derive(Debug)]
pub enum Effect {
    /// Send `msg` to `to`.
    Send {
        /// The destination.
        to: PeerInfo,
        /// The message.
        msg: Message,
    },
    /// Measure the round-trip time to `peer` and report it back.
    Measure {
        /// The peer.
        peer: PeerInfo,
    },
    /// This node is the root of `key`: deliver the payload to the application.
    Deliver {
        /// The key routed to.
        key: Key,
        /// The node that routed it.
        origin: NodeId,
        /// The origin's message id (as its `route` returned).
        id: u64,
        /// Hops the message took.
        hops: u8,
        /// The application payload.
        payload: Bytes,
    },
    /// A message is held for the application's verdict before it is forwarded (only if the
    /// protocol intercepts forwards, which the simulator turns off; the unit-test harness
    /// uses it).
    Forward {
        /// Identifies the held message.
        token: u64,
        /// The application payload.
        payload: Bytes,
    },
    /// Something the application may want to know; the simulator looks only at
    /// [`Event::RouteFailed`] (a route this node originated was given up).
    Event(Event),
}

/// A protocol instance the simulator can drive. Times are microseconds of virtual time.
pub trait SimNode: Sized {
    /// Shared construction parameters.
    type Config;
    /// Builds the protocol configuration from the simulator's options.
    fn protocol_config(options: &ProtocolOptions) -> Self::Config;
    /// A fresh, inactive node.
    fn create(me: PeerInfo, config: &Self::Config, seed: u64) -> Self;
    /// Starts a new overlay with this node alone.
    fn bootstrap_alone(&mut self, now: u64);
    /// Joins through `via`.
    fn join(&mut self, now: u64, via: PeerInfo);
    /// Routes `payload` towards `key`; returns the message id.
    fn route(&mut self, now: u64, key: Key, payload: Vec<u8>) -> u64;
    /// A message from an (authenticated) peer.
    fn handle_message(&mut self, now: u64, from: PeerInfo, msg: Message);
    /// A round-trip time measurement to `peer`.
    fn handle_proximity(&mut self, now: u64, peer: PeerInfo, rtt_us: u64);
    /// The transport could not reach `peer`.
    fn handle_link_down(&mut self, now: u64, peer: NodeId);
    /// A timer expired.
    fn handle_timeout(&mut self, now: u64);
    /// The earliest pending timer.
    fn poll_timeout(&self) -> Option<u64>;
    /// The next effect, if any.
    fn poll_effect(&mut self) -> Option<Effect>;
    /// Whether the node has joined (and may deliver as root).
    fn is_active(&self) -> bool;
    /// The peers in this node's leaf set (for repair and consistency checks).
    fn leaf_peers(&self) -> Vec<PeerInfo>;
    /// The peers in this node's routing table (for diagnostics).
    fn table_peers(&self) -> Vec<PeerInfo>;
    /// Diagnostics: puts `peer` (RTT `rtt_us`) into its routing-table slot whatever holds it
    /// (see [`Pastry::replace_table_entry`]). Default: no-op.
    fn replace_table_entry(&mut self, _peer: PeerInfo, _rtt_us: u64) {}
}

impl SimNode for Pastry {
    type Config = Config;

    fn protocol_config(options: &ProtocolOptions) -> Config {
        Config {
            proximity: options.proximity,
            leaf_set_size: options.leaf_set_size,
            intercept_forwards: false,
            ..Config::default()
        }
    }

    fn create(me: PeerInfo, config: &Config, seed: u64) -> Self {
        Self::new(me, config.clone(), seed)
    }

    fn bootstrap_alone(&mut self, now: u64) {
        Self::bootstrap_alone(self, Time::from_micros(now));
    }

    fn join(&mut self, now: u64, via: PeerInfo) {
        Self::join(self, Time::from_micros(now), via);
    }

    fn route(&mut self, now: u64, key: Key, payload: Vec<u8>) -> u64 {
        Self::route(self, Time::from_micros(now), key, payload)
    }

    fn handle_message(&mut self, now: u64, from: PeerInfo, msg: Message) {
        Self::handle_message(self, Time::from_micros(now), from, msg);
    }

    fn handle_proximity(&mut self, now: u64, peer: PeerInfo, rtt_us: u64) {
        Self::handle_proximity(
            self,
            Time::from_micros(now),
            peer,
            Duration::from_micros(rtt_us),
        );
    }

    fn handle_link_down(&mut self, now: u64, peer: NodeId) {
        Self::handle_link_down(self, Time::from_micros(now), peer);
    }

    fn handle_timeout(&mut self, now: u64) {
        Self::handle_timeout(self, Time::from_micros(now));
    }

    fn poll_timeout(&self) -> Option<u64> {
        Self::poll_timeout(self).map(Time::as_micros)
    }

    fn poll_effect(&mut self) -> Option<Effect> {
        // Transmits first, in the core's order (the order the network sees); events only
        // record outcomes, so where they fall among the transmits changes nothing.
        if let Some(transmit) = self.poll_transmit() {
            return Some(match transmit {
                Transmit::Send { to, msg } => Effect::Send { to, msg },
                Transmit::Measure { peer } => Effect::Measure { peer },
            });
        }
        Some(match self.poll_event()? {
            Event::Deliver {
                key,
                origin,
                id,
                hops,
                payload,
            } => Effect::Deliver {
                key,
                origin,
                id,
                hops,
                payload,
            },
            Event::Forward { token, payload, .. } => Effect::Forward { token, payload },
            other => Effect::Event(other),
        })
    }

    fn is_active(&self) -> bool {
        Self::is_active(self)
    }

    fn leaf_peers(&self) -> Vec<PeerInfo> {
        self.leaf_set().peers()
    }

    fn table_peers(&self) -> Vec<PeerInfo> {
        self.routing_table().iter().map(|slot| slot.peer).collect()
    }

    fn replace_table_entry(&mut self, peer: PeerInfo, rtt_us: u64) {
        Self::replace_table_entry(self, peer, Duration::from_micros(rtt_us));
    }
}
