//! A deterministic discrete-event simulator that drives many [`crate::pastry`] state machines.
//!
//! No sockets and no clock: nodes exchange [`crate::pastry::Message`] values through an event
//! queue in virtual time, each message arriving after the [`LatencyModel`]'s one-way delay
//! (plus optional jitter and loss). All randomness comes from ChaCha RNGs seeded from
//! [`SimConfig::seed`], so the same configuration gives the same [`Report`] (apart from its wall
//! time and memory fields). This module owns the simulated network, the latency models, the
//! scenarios (build by joins, lookups, silent failures, churn) and the oracle that checks each
//! delivery; it talks to a node only through [`SimNode`] and must not reach into the Pastry
//! state beyond the public API.
//!
//! # Layout
//!
//! - `net`: the simulated network — virtual clock, event queue (`queue`), messages in flight
//!   with their delays (`latency`: the models), jitter and loss, node timers, liveness and the
//!   oracle of live active ids (`oracle`). It holds no protocol state. The Pastry unit tests'
//!   harness (`pastry::harness::Net`) runs on it too.
//! - `engine`: [`Simulation`], which keeps the nodes on the network and runs the event loop;
//!   `scenario`: build, lookups, failure and churn on top of it; `diagnostics`: checks of the
//!   nodes' state against the oracle; `summary`: the traffic tallies and the [`Report`]
//!   (`report`: its types).
//! - `node`: the [`SimNode`] interface and its adapter for [`crate::pastry::Pastry`].
//!
//! # Scenarios and measurements
//!
//! The overlay is built by joins one at a time, each through the nearest active node (as in
//! the Pastry paper), the next join starting when the previous joiner is active. Then, after a
//! warm-up: **steady** routes the lookups over a window; **failure** routes a third of them
//! before a fraction of the nodes fails silently, a third during the repair window and a third
//! after it; **churn** has Poisson arrivals and exponential sessions, lookups throughout. Each
//! delivery is checked against the oracle (the live active node closest to the key, with the
//! id module's tie rule) and its route latency compared with the direct one-way delay (stretch).
//! Control traffic is every message but `Route`/`RouteAck`, RTT measurements counting as a
//! request and a reply; bytes are the encoded length plus [`SimConfig::overhead_bytes`].
//!
//! # The large runs (release build; their figures are in `BENCHMARKS.md`, and what the
//! simulator showed while the core was built is in `docs/sim-findings.md`)
//!
//! ```text
//! cargo build --release
//! target/release/wendy sim --nodes 100000 --lookups 100000 --seed 1 --json
//! target/release/wendy sim --nodes 100000 --lookups 100000 --seed 1 --json --no-proximity
//! target/release/wendy sim --nodes 5000 --lookups 15000 --seed 1 --fail-fraction 0.1 --json
//! target/release/wendy sim --nodes 1000 --lookups 20000 --seed 1 --churn-median-s 84 --duration-s 3600 --json
//! ```
//!
//! `--trace-routes` adds the longest routes and routing-table diagnostics (holes at the end and
//! when the first lookup was issued, dead entries, proximity quality by row, hop delays, stretch by
//! direct delay) to the report. `--oracle-tables` (diagnostics) gives every node perfect proximity
//! neighbour selection below row 0 right after the build, to measure what better tables would buy.
//!
//! ```
//! use wendy::sim::{Scenario, SimConfig, Simulation};
//! let config = SimConfig { nodes: 50, lookups: 100, ..SimConfig::default() };
//! let report = Simulation::new(config).run(&mut |_| {});
//! assert_eq!(report.delivered_correct, 100);
//! ```

mod diagnostics;
mod engine;
mod latency;
pub(crate) mod net;
mod node;
mod oracle;
mod queue;
mod report;
mod scenario;
mod summary;
#[cfg(test)]
mod tests;
mod topics;

pub use engine::{Phase, Progress, Simulation};
pub use latency::{
    LatencyModel, MatrixError, ModelSpec, RttMatrix, MIN_ONE_WAY_US, PLANE_SIDE_US, REGIONS,
};
pub use node::{Effect, ProtocolOptions, SimNode};
pub use report::{
    peak_rss_mib, proc_status_kib, ChurnReport, FailureReport, KindCount, Report, RouteTrace,
    StretchBucket, TableReport,
};
pub use topics::{topic_figure, TopicFigure, TopicFigureConfig};

/// What happens after the overlay is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scenario {
    /// Lookups on a stable overlay.
    Steady,
    /// A fraction of the nodes fail silently at once; lookups before, during and after repair.
    Failure {
        /// Fraction of nodes that fail, in `(0, 1)`.
        fraction: f64,
    },
    /// Poisson arrivals and exponential session times, lookups throughout.
    Churn {
        /// Median session time in seconds.
        median_session_s: f64,
        /// How long churn lasts, in seconds of virtual time.
        duration_s: f64,
    },
}

impl Scenario {
    /// The scenario's name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Steady => "steady",
            Self::Failure { .. } => "failure",
            Self::Churn { .. } => "churn",
        }
    }
}

/// Which keys the lookups go to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyPopularity {
    /// A fresh random key for every lookup.
    Uniform,
    /// `keys` random keys, the one of rank `r` (from 1) drawn with probability proportional to
    /// `1 / r^s` (Zipf's law, as the popularity of objects in a DHT is).
    Zipf {
        /// How many distinct keys.
        keys: usize,
        /// The exponent.
        s: f64,
    },
}

/// A simulation's parameters. [`Default`] is a small steady run on the plane model.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Nodes in the overlay (the initial population under churn).
    pub nodes: usize,
    /// Lookups to route (spread over the scenario's lookup windows).
    pub lookups: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// The latency model.
    pub model: ModelSpec,
    /// The scenario after the build.
    pub scenario: Scenario,
    /// Protocol options set on every node.
    pub protocol: ProtocolOptions,
    /// Each message's delay is multiplied by `1 + U(0, jitter)`.
    pub jitter: f64,
    /// Probability that a message is lost (after the build).
    pub loss: f64,
    /// A joining node bootstraps through the nearest active node (0, the default: exact on
    /// the plane and regions models, the nearest of 256 random ones on a matrix) or through the
    /// nearest of this many random active nodes.
    pub bootstrap_sample: usize,
    /// Build the overlay in real model delays instead of compressed time (see
    /// [`Simulation`]); slower, since maintenance runs while nodes join.
    pub realtime_build: bool,
    /// Virtual seconds between the build and the first lookup, for maintenance to settle.
    pub warmup_s: f64,
    /// Virtual seconds over which steady lookups (and each of the failure scenario's
    /// before/after thirds) are spread; also the control-traffic measurement window.
    pub lookup_window_s: f64,
    /// Failure scenario: virtual seconds between the failure and the "after" lookups.
    pub repair_window_s: f64,
    /// Virtual seconds after the last lookup for messages in flight to land.
    pub drain_s: f64,
    /// A join not complete after this many virtual seconds is counted failed (build moves on).
    pub join_timeout_s: f64,
    /// Record every lookup's path and report the longest routes (diagnostics; costs memory).
    pub trace_routes: bool,
    /// Transport overhead added to every message's encoded size (IP + UDP + QUIC), in bytes.
    pub overhead_bytes: u64,
    /// Diagnostics: right after the build, put into every occupied routing-table slot of rows
    /// `1..` the nearest live active node that qualifies for it (perfect proximity neighbour
    /// selection below row 0), to measure what better tables would buy. Off by default.
    pub oracle_tables: bool,
    /// Which keys the lookups go to. Default: uniform.
    pub key_popularity: KeyPopularity,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 100,
            lookups: 100,
            seed: 1,
            model: ModelSpec::Plane,
            scenario: Scenario::Steady,
            protocol: ProtocolOptions::default(),
            jitter: 0.0,
            loss: 0.0,
            bootstrap_sample: 0,
            realtime_build: false,
            warmup_s: 60.0,
            lookup_window_s: 60.0,
            repair_window_s: 300.0,
            drain_s: 30.0,
            join_timeout_s: 60.0,
            overhead_bytes: 60,
            trace_routes: false,
            oracle_tables: false,
            key_popularity: KeyPopularity::Uniform,
        }
    }
}
