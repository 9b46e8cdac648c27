//! Timers: one table holding every kind of deadline the core keeps, so that
//! [`Pastry::poll_timeout`] reads one structure, and the order in which
//! [`Pastry::handle_timeout`] runs the expired ones.
//!
//! Fixed timers (join, the watch on each immediate neighbour, heartbeat, maintenance) live
//! only here. Probes, messages in custody and measurements each carry their own deadline; the
//! table holds the earliest of each ([`Timer::Probe`], [`Timer::Custody`], [`Timer::Measure`]),
//! brought up to date by [`Pastry::sync_timers`] at the end of every entry point.

use std::time::Duration;

use rand::Rng;

use super::state::Pastry;
use super::{Side, Time};

/// A kind of deadline, in the order [`Pastry::handle_timeout`] runs them when several are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// The join attempt in progress is restarted ([`super::Config::join_timeout`]).
    Join,
    /// The earliest probe deadline: a reply is due (retry, or the peer is declared dead).
    Probe,
    /// The earliest custody deadline: an ack, or a next hop's `done`, is due (re-route), or a
    /// held receipt is due.
    Custody,
    /// The earliest deadline of a measurement the driver has not answered (its place in the
    /// caps is freed).
    Measure,
    /// The left immediate neighbour has been silent for `probe_period + probe_timeout`.
    WatchLeft,
    /// The right immediate neighbour has been silent for `probe_period + probe_timeout`.
    WatchRight,
    /// Send the leaf-set heartbeat (every `probe_period`).
    Heartbeat,
    /// Routing-table maintenance round (every `maintenance_period`).
    Maintenance,
}

impl Timer {
    const COUNT: usize = 8;

    /// The watch on the immediate neighbour on `side`.
    pub(super) fn watch(side: Side) -> Self {
        match side {
            Side::Left => Self::WatchLeft,
            Side::Right => Self::WatchRight,
        }
    }
}

/// Every deadline of one node, by [`Timer`] kind (`None`: not armed).
#[derive(Debug, Clone, Default)]
pub(super) struct TimerTable {
    deadlines: [Option<Time>; Timer::COUNT],
}

impl TimerTable {
    /// Arms `timer` for `at` (replacing any earlier setting).
    pub(super) fn set(&mut self, timer: Timer, at: Time) {
        self.deadlines[timer as usize] = Some(at);
    }

    /// Disarms `timer`.
    pub(super) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }

    /// Sets `timer` to `at`, or disarms it if `at` is `None`.
    pub(super) fn set_or_stop(&mut self, timer: Timer, at: Option<Time>) {
        self.deadlines[timer as usize] = at;
    }

    /// Disarms every timer.
    pub(super) fn stop_all(&mut self) {
        self.deadlines = [None; Timer::COUNT];
    }

    /// Whether `timer` is armed and due at `now`.
    pub(super) fn is_expired(&self, timer: Timer, now: Time) -> bool {
        self.deadlines[timer as usize].is_some_and(|at| now >= at)
    }

    /// The earliest armed deadline.
    pub(super) fn next(&self) -> Option<Time> {
        self.deadlines.iter().flatten().min().copied()
    }
}

impl Pastry {
    /// Arms the periodic timers of an active node: the heartbeat within one period (jittered,
    /// so neighbours do not beat in step), maintenance between half and one and a half periods,
    /// and the watch on both immediate neighbours.
    pub(super) fn start_timers(&mut self, now: Time) {
        let period = self.config.probe_period.as_micros().max(1) as u64;
        let jitter = Duration::from_micros(self.rng.gen_range(0..period));
        self.timers.set(Timer::Heartbeat, now + jitter);
        let maintenance = self.config.maintenance_period.as_micros().max(1) as u64;
        self.timers.set(
            Timer::Maintenance,
            now + Duration::from_micros(maintenance / 2 + self.rng.gen_range(0..maintenance)),
        );
        self.refresh_watches(now);
    }

    /// Brings the derived entries ([`Timer::Probe`], [`Timer::Custody`]) up to date with the
    /// probes and messages in custody. Called at the end of every entry point, so
    /// [`Pastry::poll_timeout`] reads the table alone.
    pub(super) fn sync_timers(&mut self) {
        let probe = self.probes.iter().map(|p| p.deadline).min();
        self.timers.set_or_stop(Timer::Probe, probe);
        let custody = self
            .in_flight
            .iter()
            .map(|f| f.hedge_at.map_or(f.deadline, |h| h.min(f.deadline)))
            .chain(self.receipts.iter().map(|r| r.due))
            .min();
        self.timers.set_or_stop(Timer::Custody, custody);
        let measure = self.measure_deadline();
        self.timers.set_or_stop(Timer::Measure, measure);
    }

    /// Runs every timer due at `now`, in [`Timer`] order. The derived entries are brought up
    /// to date before each is checked: an earlier timer may have changed them (a restarted join
    /// drops its candidates' probes; a node declared dead makes its messages due at once).
    pub(super) fn expire_timers(&mut self, now: Time) {
        if self.is_joining() && self.timers.is_expired(Timer::Join, now) {
            self.restart_join(now);
        }
        self.sync_timers();
        if self.timers.is_expired(Timer::Probe, now) {
            self.expire_probes(now);
        }
        self.sync_timers();
        if self.timers.is_expired(Timer::Custody, now) {
            self.expire_in_flight(now);
        }
        if self.timers.is_expired(Timer::Measure, now) {
            self.expire_measurements(now);
        }
        if !self.is_active() {
            return;
        }
        for side in [Side::Left, Side::Right] {
            if self.timers.is_expired(Timer::watch(side), now) {
                self.expire_watch(now, side);
            }
        }
        if self.timers.is_expired(Timer::Heartbeat, now) {
            self.timers
                .set(Timer::Heartbeat, now + self.config.probe_period);
            self.heartbeat(now);
            self.settle_hints(now);
        }
        if self.timers.is_expired(Timer::Maintenance, now) {
            self.timers
                .set(Timer::Maintenance, now + self.config.maintenance_period);
            self.maintain_table(now);
        }
    }
}
